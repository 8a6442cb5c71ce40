"""PassManager ordering, requires, instruments and one-line failures; registry and plugins."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint

import pytest
import torch
import torch.nn as nn

from flowc.errors import CompileError, UsageError
from flowc.passes import registry
from flowc.passes.base import (
    CompileContext,
    Pass,
    PassError,
    PassManager,
    PassResult,
    ProgressInstrument,
    TimingInstrument,
)
from flowc.passes.pipeline import parse_pipeline


@dataclass(frozen=True)
class Mark(Pass):
    """Appends its label to the context (records order)."""

    name = "mark"
    label: str = "m"

    def __call__(self, gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
        ctx.options.setdefault("order", []).append(self.label)
        return PassResult(gm, modified=False)


@dataclass(frozen=True)
class Boom(Pass):
    name = "boom"

    def __call__(self, gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
        raise ValueError("kaput\nsecond line")


@dataclass(frozen=True)
class NeedsMark(Pass):
    name = "needs-mark"
    requires = ("mark",)

    def __call__(self, gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
        return PassResult(gm, modified=True)


def _gm() -> torch.fx.GraphModule:
    return torch.export.export(nn.Sequential(nn.Linear(4, 4)), (torch.randn(1, 4),)).module()


def test_runs_in_order_with_instruments() -> None:
    timing, stream = TimingInstrument(), io.StringIO()
    ctx = CompileContext()
    pm = PassManager([Mark(label="a"), NeedsMark(), Mark(label="b")],
                     instruments=[timing, ProgressInstrument(stream)])
    result = pm.run(_gm(), ctx)
    assert result.modified
    assert ctx.options["order"] == ["a", "b"]
    assert ctx.completed == ["mark", "needs-mark", "mark"]
    assert [n for n, _ in timing.timings] == ["mark", "needs-mark", "mark"]
    assert timing.total() >= timing.total("mark") >= 0
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert all(re.fullmatch(r"\[flowc\] [a-z-]+ \.\.\. \d+\.\d\d s", line) for line in lines)
    assert lines[1].startswith("[flowc] needs-mark ... ")


def test_failure_names_pass_and_history() -> None:
    pm = PassManager([Mark(), NeedsMark(), Boom(), Mark()])
    with pytest.raises(PassError) as info:
        pm.run(_gm(), CompileContext())
    err = info.value
    assert str(err) == "pass 'boom' failed (ran before: mark, needs-mark): ValueError: kaput"
    assert err.pass_name == "boom" and err.ran == ("mark", "needs-mark")
    assert isinstance(err, CompileError) and err.exit_code == 3
    assert isinstance(err.__cause__, ValueError)


def test_missing_requirement() -> None:
    with pytest.raises(PassError) as info:
        PassManager([NeedsMark()]).run(_gm(), CompileContext())
    assert str(info.value) == "pass 'needs-mark' requires 'mark' to run first (ran before: none)"
    assert info.value.exit_code == 2
    ctx = CompileContext(completed=["mark"])  # an earlier manager on the same context
    assert PassManager([NeedsMark()]).run(_gm(), ctx).modified


def test_rejects_non_pass() -> None:
    with pytest.raises(TypeError, match="PassManager takes Pass instances"):
        PassManager([lambda gm, ctx: None])  # type: ignore[list-item]


@pytest.fixture()
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    registry.available_passes()  # built-ins into the real registry first: they load once
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_BROKEN", {})


def _entry_points(*eps: EntryPoint):  # noqa: ANN202
    def fake(group: str) -> tuple[EntryPoint, ...]:
        assert group == "flowc.passes"
        return eps
    return fake


def test_builtins_and_close_matches(fresh_registry: None) -> None:
    assert {"calibrate", "nm-prune", "verify-nm", "quantize"} <= set(registry.available_passes())
    with pytest.raises(UsageError, match=r"^unknown pass 'quantise'; did you mean quantize\b"):
        registry.get_pass("quantise")


def test_entry_point_plugins_load_once(
    fresh_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    ep = EntryPoint(name="mark", value=f"{__name__}:Mark", group="flowc.passes")

    def fake(group: str) -> tuple[EntryPoint, ...]:
        calls.append(group)
        return (ep,)

    monkeypatch.setattr(registry, "entry_points", fake)
    assert registry.get_pass("mark") is Mark
    assert "mark" in registry.available_passes()
    assert calls == ["flowc.passes"]  # lazily, once
    assert parse_pipeline("mark{label=z},quantize")[0] == Mark(label="z")


def test_entry_point_errors(fresh_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = EntryPoint(name="gone", value="no_such_module_xyz:P", group="flowc.passes")
    monkeypatch.setattr(registry, "entry_points", _entry_points(bad))
    message = r"cannot load pass plugin 'gone' \(no_such_module_xyz:P\): ModuleNotFoundError"
    # a plugin that does not import is a warning: pipelines without its passes still work
    with pytest.warns(registry.PluginWarning, match=message):
        assert registry.get_pass("quantize").name == "quantize"
    assert parse_pipeline("calibrate,quantize")[1].name == "quantize"
    # ... and an error naming the cause when a pipeline asks for one of its passes
    with pytest.raises(UsageError, match=r"^pass 'gone': " + message):
        parse_pipeline("calibrate,gone{x=1}")
    with pytest.raises(UsageError, match="plugins that failed to load: gone$"):
        registry.get_pass("quantise")
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    wrong = EntryPoint(name="other", value=f"{__name__}:Mark", group="flowc.passes")
    monkeypatch.setattr(registry, "entry_points", _entry_points(wrong))
    with pytest.raises(UsageError, match="entry point 'other' .* loads a pass named 'mark'"):
        registry.available_passes()


def test_register_rejects_bad_classes(fresh_registry: None) -> None:
    class NotFrozen(Pass):
        name = "nf"

    with pytest.raises(UsageError, match=r"must be @dataclass\(frozen=True\)"):
        registry.register_pass(NotFrozen)

    @dataclass(frozen=True)
    class Clash(Pass):
        name = "quantize"

    with pytest.raises(UsageError, match="pass name 'quantize' is taken by"):
        registry.register_pass(Clash)
