"""Every program the compiler produces survives text and binary round trips exactly."""

import pytest

from flowc import isa
from flowc.backend.container import load, save


@pytest.mark.parametrize("name,nm", [("mlp", (2, 4)), ("mlp", (1, 8)), ("mlp", None),
                                     ("block", (2, 4)), ("block", (4, 8))])
def test_compiled_programs_round_trip(compiled, name, nm):
    program = compiled(name, nm).program
    text = isa.disassemble(program)
    assert isa.assemble(text, "<compiled>") == program
    assert isa.disassemble(isa.assemble(text)) == text
    assert isa.decode(isa.encode(program)) == program


def test_fcim_round_trip_preserves_the_image(compiled, tmp_path):
    image = compiled("block", (2, 4))
    save(image, tmp_path / "b.fcim")
    back = load(tmp_path / "b.fcim")
    assert back.program == image.program
    assert back.inputs == image.inputs and back.outputs == image.outputs
    assert back.layers == image.layers
    assert sorted(back.tensors) == sorted(image.tensors)
    for k, v in image.tensors.items():
        assert back.tensors[k].dtype == v.dtype and (back.tensors[k] == v).all()
    assert back.reference_onnx == image.reference_onnx


def test_program_size_grows_with_layers_not_tiles(compiled):
    small = compiled("mlp", None).program  # dense: 7x more tiles than 1:8 on fc1
    sparse = compiled("mlp", (1, 8)).program
    assert len(small.instructions) == len(sparse.instructions)
