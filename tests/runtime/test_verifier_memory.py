"""The verifier's memory estimate is the plan's: buffers freed after their last use.

Long prompts made the old estimate (every buffer ever written, none freed) refuse programs
the plan runs in a fraction of it: SmolLM2 at 2,048 tokens was refused on a 24 GB host at
12.7 GB of "live" buffers, while the plan needs 1.3 GB with its weights."""

from __future__ import annotations

import math

import pytest

from flowc.backend import limits
from flowc.runtime.interpreter import Interpreter, Loop
from flowc.runtime.plan import dead_after
from flowc.runtime.session import run_image
from flowc.runtime.verifier import ProgramInvalid, verify
from flowc.runtime.verifier_rules import WRITES
from flowc.studies.examples import build


class _Step:
    def __init__(self, item) -> None:
        self.item = item


def _measured_peak(image, arrays) -> int:
    """Live bytes of the real buffers (a reference run's arrays), walked step by step as
    the plan frees them (flowc.runtime.plan.dead_after): the most held at once."""
    it = Interpreter(image, mode="reference")
    state = it.execute(arrays)
    dead = dead_after([_Step(s) for s in it.steps], {o.buffer for o in image.outputs})
    live = {spec.buffer: state.bufs[spec.buffer].nbytes for spec in image.inputs}
    peak = sum(live.values())
    for step, gone in zip(it.steps, dead, strict=True):
        for ins in step.body if isinstance(step, Loop) else [step]:
            for operand in WRITES[ins.mnemonic]:
                live[getattr(ins, operand)] = state.bufs[getattr(ins, operand)].nbytes
        peak = max(peak, sum(live.values()))
        for name in gone:
            live.pop(name, None)
    return peak


@pytest.mark.parametrize("name", ["mlp", "block"])
def test_peak_is_the_plans_live_bytes_and_keeping_all_is_more(compiled, name):
    image = compiled(name, (2, 4), "magnitude")
    arrays = [x.numpy() for x in build(name)[1]]
    v = verify(image)
    weights = sum(math.prod(image.tensors[f"{k}.values"].shape) for k in image.packed) * 4
    assert v.peak_bytes - weights == _measured_peak(image, arrays)
    assert v.kept_bytes > 2 * v.peak_bytes - weights  # the reference mode keeps all


def test_the_limit_applies_to_the_mode_that_runs(compiled, monkeypatch):
    """Between the two peaks: the plan runs, the reference mode is refused before it starts,
    with both numbers and the way out."""
    image = compiled("block", (2, 4), "magnitude")
    arrays = [x.numpy() for x in build("block")[1]]
    v = verify(image)
    between = (v.peak_bytes + v.kept_bytes) // 2
    monkeypatch.setattr(limits, "_CURRENT", [])
    limits.configure(peak_bytes=between)
    report = run_image(image, arrays, mode="plan", check=False)
    assert report.mode == "plan" and report.total_cycles > 0 and report.layers
    with pytest.raises(ProgramInvalid, match=rf"reference mode keeps every buffer, "
                       rf"{v.kept_bytes} bytes .* plan mode frees .*: {v.peak_bytes} bytes"):
        run_image(image, arrays, mode="reference", check=False)
    limits.configure(peak_bytes=v.peak_bytes - 1)
    with pytest.raises(ProgramInvalid, match="over the memory limit"):
        verify(image)
