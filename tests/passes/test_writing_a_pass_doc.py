"""The complete example in docs/writing-a-pass.md runs and behaves as described."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from flowc.passes import registry
from flowc.passes.base import CompileContext, PassManager
from flowc.passes.graph import get_param, linear_nodes
from flowc.passes.pipeline import format_pipeline, parse_pipeline

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-a-pass.md"


def test_doc_example_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    example = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    module = types.ModuleType("doc_example")
    monkeypatch.setitem(sys.modules, "doc_example", module)
    exec(compile(example, str(DOC), "exec"), module.__dict__)  # our own doc

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    gm = torch.export.export(model, (torch.randn(1, 8),)).module()
    passes = parse_pipeline("zero-small{threshold=0.3,skip=2},quantize")
    assert format_pipeline(passes) == "zero-small{threshold=0.3,skip=2},quantize"
    ctx = CompileContext()
    PassManager(passes).run(gm, ctx)
    w0 = model[0].weight.detach()
    expected = int((w0.abs() < 0.3).sum())
    assert expected > 0
    assert ctx.reports["zero-small"] == {"zeroed": {"0": expected}}
    assert int((get_param(gm, linear_nodes(gm)[0].weight_target) == 0).sum()) == expected
