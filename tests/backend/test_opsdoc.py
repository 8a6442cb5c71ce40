"""The supported-ops table of docs/models.md is generated from the rule registry and the
architectures the rules declare are the ones that use them (captured graphs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowc.backend.lower import RULE_INFO, register_rules
from flowc.backend.opsdoc import BEGIN, END, _op_name, render, replace_block

DOC = Path(__file__).parents[2] / "docs" / "models.md"


def test_committed_table_is_the_generated_one():
    text = DOC.read_text(encoding="utf-8")
    block = BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert block == render(), "regenerate: python -m flowc.backend.opsdoc docs/models.md"
    assert replace_block(text, render()) == text


def test_every_registered_op_is_in_the_table_once():
    table = render()
    for target in register_rules():
        assert table.count(f"`{_op_name(target)}`") == 1, target
        assert target in RULE_INFO


@pytest.mark.slow
def test_declared_architectures_cover_the_ops_each_architecture_uses():
    """Capture every tiny architecture (transformers: eager and SDPA attention), prepare its
    graph like any source, and require a rule that declares the architecture for every op."""
    from flowc.frontend import hf
    from flowc.frontend.prepare import prepare_graph

    rules = register_rules()
    missing = []
    for arch in hf.ALL_ARCHS:
        for attn in ("eager",) if arch in hf.SSM_ARCHS else ("eager", "sdpa"):
            model = hf.tiny_model(arch, attn=attn)
            if arch == "gpt2":
                hf.conv1d_to_linear(model)
            gm = hf.export_program(model, torch.randint(0, 256, (2, 7))).module()
            prepare_graph(gm)
            for node in gm.graph.nodes:
                if node.op != "call_function":
                    continue
                if node.target not in rules:
                    missing.append((arch, attn, str(node.target), "no rule"))
                elif arch not in RULE_INFO[node.target][1]:
                    missing.append((arch, attn, str(node.target), "not declared"))
    assert not missing, sorted(set(missing))
