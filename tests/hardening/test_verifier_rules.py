"""The verifier covers the whole ISA: every instruction has a typing rule, the buffers it
writes are buffer operands of the definition, and the type-level operand checks follow the
definition's operand types (flowc/isa/flexcim.isa), not a list kept by hand."""

from __future__ import annotations

import dataclasses

import pytest

from flowc import isa
from flowc.backend.container import load_bytes, to_bytes
from flowc.runtime.verifier import ProgramInvalid, verify
from flowc.runtime.verifier_rules import RULES, WRITES


def test_every_instruction_has_a_rule_and_writes_only_buffers():
    for insn in isa.ISA.insns:
        assert insn.mnemonic in RULES, insn.mnemonic
        types = {op.name: op.type for op in insn.operands}
        assert all(types.get(w) == "buf" for w in WRITES[insn.mnemonic]), insn.mnemonic


def test_reads_follow_the_isa_operand_types(compiled):
    """Renaming any operand the ISA types as `buf` (and the rule does not write) to an unknown
    buffer is refused at that instruction and operand; likewise every `tensor` operand."""
    image = load_bytes(to_bytes(compiled("mlp", (2, 4), "magnitude")))
    checked = 0
    for i, ins in enumerate(image.program.instructions):
        for op in ins.definition.operands:
            if op.type not in ("buf", "tensor") or op.name in WRITES[ins.mnemonic]:
                continue
            instrs = list(image.program.instructions)
            instrs[i] = dataclasses.replace(ins, **{op.name: "missing"})
            bad = dataclasses.replace(image, program=isa.Program(tuple(instrs)))
            with pytest.raises(ProgramInvalid) as err:
                verify(bad)
            text = str(err.value)
            # loop bodies are checked when the loop closes: the index is the body instruction
            assert f"instruction {i} ({ins.mnemonic}) operand {op.name}:" in text, text
            checked += 1
    assert checked >= 20
