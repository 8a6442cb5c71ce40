"""Masks, casts and indexing (rules_attention; v.where, v.cast, v.gather) on small models whose
outputs are checked against torch itself (fp32, independent of flowc) and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flowc import isa
from flowc.errors import UnsupportedOpError
from flowc.frontend.decompose_tf import sdpa
from flowc.frontend.load import capture
from flowc.runtime.session import check_outputs, simulate
from flowc.studies.compiler import CompileOptions, compile_captured


class MaskedMix(nn.Module):
    """Every rule of rules_attention on a run-time input: an int mask cast to bool, combined
    with a constant mask by and/or/not, used by where and masked_fill; a constant-index gather
    (a permutation, which no simplification can turn into a view); index_select and W[ids]
    embeddings of a parameter table."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(16, 8))
        self.proj = nn.Linear(8, 8)
        self.register_buffer("perm", torch.tensor([[3, 0, 2, 1, 7, 5, 6, 4]] * 5))
        self.register_buffer("keep", torch.tensor([1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.index_select(self.table, 0, ids) + self.table[ids]  # [5, 8]
        x = self.proj(x)
        m = mask.to(torch.bool)  # [5, 8] ints -> bool
        both, either = m & self.keep, m | self.keep
        y = torch.where(both, x, -1.5).masked_fill(~either, 2.0)
        y = torch.where(m, torch.gather(y, 1, self.perm), y)
        return y + m.to(torch.float32)


def _compile(module: nn.Module, inputs: tuple):
    cap = capture(module.eval(), inputs)
    return compile_captured(cap, CompileOptions(), progress=None)


def test_masks_casts_and_gathers_match_torch_and_ort():
    torch.manual_seed(0)
    module = MaskedMix().eval()
    ids = torch.tensor([3, 15, 0, 7, 7])
    mask = torch.tensor([[0, 2, 1, 0, 1, 1, 0, 5]] * 4 + [[1, 0, 0, 0, 0, 0, 0, 1]])
    image = _compile(module, (ids, mask))
    ops = {i.mnemonic for i in image.program.instructions}
    assert {"v.cast", "v.where", "v.gather", "v.embed", "v.mul", "v.max"} <= ops
    with torch.no_grad():
        ref = module(ids, mask).numpy()
    arrays = [ids.numpy(), mask.numpy()]
    y, _ = simulate(image, arrays, numerics="fp32")
    assert np.abs(y[0] - ref).max() <= 1e-5 * np.abs(ref).max()
    check = check_outputs(image, arrays, y, "fp32")
    assert check.passed and check.max_abs_error <= 1e-5 * check.outputs[0].max_abs_reference
    y8, _ = simulate(image, arrays, numerics="int8")
    assert check_outputs(image, arrays, y8, "int8").passed


def test_gather_instruction_reads_the_flat_indices():
    """torch.gather(y, 1, perm) on y [5, 8] is v.gather with idx[r, c] = 8 r + perm[r, c]."""
    module = MaskedMix()
    image = _compile(module, (torch.tensor([1, 2, 3, 4, 5]), torch.ones(5, 8, dtype=torch.long)))
    g = next(i for i in image.program.instructions if isinstance(i, isa.VGather))
    want = 8 * np.arange(5)[:, None] + module.perm.numpy()
    np.testing.assert_array_equal(image.tensors[g.idx], want)


class Attn(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.kw = kw

    def forward(self, q, k, v, mask=None):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                **self.kw)


def test_sdpa_decomposition_equals_torch_sdpa():
    """The frontend's SDPA (eager attention ops) against torch's own kernel: causal, scale,
    GQA, float and boolean masks."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=gen)
    k, v = torch.randn(2, 2, 5, 8, generator=gen), torch.randn(2, 2, 5, 8, generator=gen)
    bool_mask = torch.rand(2, 1, 5, 5, generator=gen) > 0.3
    bool_mask[..., 0] = True  # no fully masked row (torch gives NaN/0 there, eager uniform)
    cases = [
        ({"is_causal": True, "enable_gqa": True}, None),
        ({"scale": 0.3, "enable_gqa": True}, torch.randn(5, 5, generator=gen)),
        ({"enable_gqa": True}, bool_mask),
    ]
    for kw, mask in cases:
        with torch.no_grad():
            want = Attn(**kw)(q, k, v, mask)
            got = sdpa(q, k, v, mask, **kw)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_sdpa_with_dropout_is_refused_with_node_and_module():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = Attn(dropout_p=0.1)

        def forward(self, q):
            return self.attn(q, q, q)

    with pytest.raises(UnsupportedOpError) as err:
        capture(Block().eval(), (torch.randn(1, 2, 3, 4),))
    msg = str(err.value)
    assert "dropout_p=0.1" in msg and "node 'scaled_dot_product_attention'" in msg, msg
    assert "(in attn)" in msg, msg


class Layouts(nn.Module):
    """unbind, t, movedim, repeat_interleave and baddbmm as a user's code writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)

    def forward(self, x):  # x [2, 3, 6]
        a, b = self.proj(x).unbind(0)  # [3, 6] each
        kv = b.reshape(3, 2, 3).repeat_interleave(2, dim=1)  # [3, 4, 3]
        s = torch.baddbmm(kv.movedim(1, 0)[:, :, :1], kv.movedim(1, 0), kv.permute(1, 2, 0))
        return s.sum(-1) + (a.t() @ a).sum()


def test_layout_decompositions_lower_and_match_torch():
    torch.manual_seed(0)
    module, x = Layouts().eval(), torch.randn(2, 3, 6)
    ops = {"aten.unbind.int", "aten.t.default", "aten.movedim.int",
           "aten.repeat_interleave.self_int", "aten.baddbmm.default"}
    exported = torch.export.export(module, (x,), strict=False).graph.nodes
    assert ops <= {str(n.target) for n in exported if n.op == "call_function"}
    cap = capture(module, (x,))
    left = {str(n.target) for n in cap.gm.graph.nodes if n.op == "call_function"}
    assert not left & ops, left
    image = compile_captured(cap, CompileOptions(), progress=None)
    y, _ = simulate(image, [x.numpy()], numerics="fp32")
    with torch.no_grad():
        ref = module(x).numpy()
    assert np.abs(y[0] - ref).max() <= 1e-5 * np.abs(ref).max()
    assert check_outputs(image, [x.numpy()], y, "fp32").passed


class MatmulWeight(nn.Module):
    """x @ W and torch.addmm with a parameter W[in, out]: static-weight GEMMs."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 16) / 4)
        self.w2 = nn.Parameter(torch.randn(16, 8) / 4)
        self.b2 = nn.Parameter(torch.randn(8))

    def forward(self, x):  # [3, 8]
        return torch.addmm(self.b2, torch.relu(x @ self.w1), self.w2)


def test_matmul_and_addmm_over_parameters_become_prunable_gemms():
    torch.manual_seed(0)
    module, x = MatmulWeight().eval(), torch.randn(3, 8)
    with torch.no_grad():
        ref = module(x).numpy()
    cap = capture(module, (x,))
    assert sum(n.target is torch.ops.aten.linear.default for n in cap.gm.graph.nodes) == 2
    image = compile_captured(cap, CompileOptions(), progress=None)
    assert sorted((v["in"], v["out"]) for v in image.packed.values()) == [(8, 16), (16, 8)]
    assert not any(i.mnemonic == "mm.act" for i in image.program.instructions)
    y, _ = simulate(image, [x.numpy()], numerics="fp32")
    assert np.abs(y[0] - ref).max() <= 1e-5 * np.abs(ref).max()
    y8, _ = simulate(image, [x.numpy()], numerics="int8")
    assert check_outputs(image, [x.numpy()], y8, "int8").passed


def test_mask_and_gather_instructions_are_priced_by_their_class():
    """cycles = ceil(max(elements, in_elements) / lanes) x cycles-per-element of the class
    (docs/hardware.md): v.where / v.cast elementwise, v.gather permute reading 2 per output."""
    from flowc.machine import load_machine
    from flowc.runtime.cost import CostModel
    from flowc.runtime.events import ExecEvent
    from flowc.runtime.vector_masks import register

    machine = load_machine("flexcim")
    model, vec = CostModel(machine), machine.vector
    handlers = {}
    register(lambda name: lambda fn: handlers.setdefault(name, fn))

    class St:
        bufs = {"c": np.ones((4, 50), np.float32), "x": np.arange(200, dtype=np.float32)}

    class It:
        class image:  # noqa: N801
            tensors = {"idx": np.arange(300, dtype=np.int32).reshape(3, 100) % 200}

    cases = [("v.where", isa.VWhere(dst="y", c="c", a="c", b="c"), vec.elementwise),
             ("v.cast", isa.VCast(dst="y", src="c", to="bool"), vec.elementwise),
             ("v.gather", isa.VGather(dst="y", src="x", idx="idx"), vec.permute)]
    for name, ins, per in cases:
        sizes = handlers[name](It, St, ins)
        ev = ExecEvent(ins, "l", elements=sizes["elements"], in_elements=sizes["in_elements"])
        work = max(sizes["elements"], sizes["in_elements"])
        assert model.instr_cost(ev).cycles == -(-work // vec.lanes) * per > 0
    assert sizes["in_elements"] == 2 * sizes["elements"] == 600
    np.testing.assert_array_equal(St.bufs["y"], It.image.tensors["idx"].astype(np.float32))


def test_causal_gqa_sdpa_compiles_to_two_mm_act_and_matches_torch():
    """is_causal and enable_gqa through the whole path: preparation folds the causal mask,
    the two matmuls run as mm.act, fp32 equals torch's SDPA kernel."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 6, 8, generator=gen)
    k, v = torch.randn(1, 2, 6, 8, generator=gen), torch.randn(1, 2, 6, 8, generator=gen)
    module = Attn(is_causal=True, enable_gqa=True)
    image = _compile(module, (q, k, v))
    names = [i.mnemonic for i in image.program.instructions]
    assert names.count("mm.act") == 2 and "v.softmax" in names
    arrays = [t.numpy() for t in (q, k, v)]
    y, _ = simulate(image, arrays, numerics="fp32")
    with torch.no_grad():
        ref = module(q, k, v).numpy()
    assert np.abs(y[0] - ref).max() <= 1e-5 * np.abs(ref).max()
    assert check_outputs(image, arrays, y, "fp32").passed


class FalconStyle(nn.Module):
    """x @ W.T + b over a parameter W [out, in] (FalconLinear) and in-place score scaling
    (`scores.div_(...)`, `scores.add_(bias)`) on fresh activations."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(24, 8) / 3)
        self.bias = nn.Parameter(torch.randn(24))

    def forward(self, x):  # [2, 5, 8]
        qkv = x @ self.weight.T + self.bias
        q, k, v = qkv.split(8, dim=-1)
        scores = q @ k.transpose(-1, -2)
        scores.div_(2.0)
        scores.add_(torch.ones(5, 5).triu(1) * -1e4)
        return scores.softmax(-1) @ v


def test_transposed_parameter_matmul_and_inplace_ops_compile():
    torch.manual_seed(0)
    module, x = FalconStyle().eval(), torch.randn(2, 5, 8)
    cap = capture(module, (x,))
    targets = [n.target for n in cap.gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.aten.linear.default) == 1
    assert not [t for t in targets if str(t).endswith("_.Tensor")], targets
    image = compile_captured(cap, CompileOptions(nm=(2, 4)), progress=None)
    assert [(v["out"], v["in"], v["n"]) for v in image.packed.values()] == [(24, 8, 2)]
    y, _ = simulate(image, [x.numpy()], numerics="fp32")
    assert check_outputs(image, [x.numpy()], y, "fp32").passed
    y8, _ = simulate(image, [x.numpy()], numerics="int8")
    assert check_outputs(image, [x.numpy()], y8, "int8").passed


def test_inplace_op_on_a_view_is_left_for_the_backend_to_refuse():
    """x[:, :2].mul_(2) mutates x through a view: not functionalised, refused with its node."""
    class ViewMutation(nn.Module):
        def forward(self, x):
            y = x * 1.0
            y[:, :2].mul_(2.0)
            return y + 1

    cap = capture(ViewMutation().eval(), (torch.randn(3, 4),))
    assert any(str(n.target) == "aten.mul_.Tensor" for n in cap.gm.graph.nodes)
    with pytest.raises(UnsupportedOpError, match=r"aten.mul_.Tensor at node 'mul_'"):
        compile_captured(cap, CompileOptions(), progress=None)
