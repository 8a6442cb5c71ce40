"""An int8 reference: the fp32 reference graph rewritten to quantise exactly as the simulator.

Checking int8 numerics against the fp32 reference mixes quantisation error with simulator
bugs (SmolLM2: ~0.8 top-1 agreement). This module rewrites the same ONNX graph so that ONNX
Runtime applies the simulator's quantisation operation by operation, in the same float32 op
order (flowc.runtime.interpreter / vector). Given the same inputs each rewritten op is
bit-identical to the simulator's. End to end, the fp32 ops (norms, softmax, SiLU) differ by
reassociation (~1e-7); in a shallow model that stays ~1e-7 (tiny test models: 2e-7, the MLP
is bit-exact), but a 1-ulp difference can flip a rounding, a flip is a whole quantisation
step, and a deep model spreads it: SmolLM2's 30 blocks end at int8 noise level (cosine 0.992
to the simulator; the simulator against itself with a numpy RMSNorm: 0.997).

Mapping (every other op stays float32, as in the simulator, including a depthwise Conv:
`v.dwconv` runs on the vector unit in float32):
- CiM linear: MatMul with weight [in, out] (recipe form `dense_t`) or Gemm with transB and
  weight [out, in] (form `dense`) of packed weight W ->
  `q, s = quant(x, axis=-1)`; `y = MatMulInteger(q, Wq^T) -> float * s * wscale[:out]`,
  then `+ C` for a Gemm bias (a MatMul's bias is the exporter's separate Add, kept as is).
  quant: `amax = ReduceMax(|x|)`, `s = Where(amax > 0, Max(amax / 127, FLT_MIN), 1)`,
  `q = Cast<int8>(Clip(Round(x / s), -127, 127))` (Round is half to even, as np.rint).
- Activation x activation MatMul (both inputs computed: attention's Q K^T and A V, `mm.act`):
  `a` quantised per row (axis -1), `b` per column (axis -2), `MatMulInteger` (batched; exact
  int32 for any K) -> float * sa * sb.
- Gather on a packed table (embedding, `v.embed`): the table becomes the dequantised rows
  `Wq[r].astype(f32) * wscale[r]` (one product per element, bit-equal to the simulator's).
Weights are identified by their recipe in `image.reference_onnx` (matched by initialiser name
and shape) or, for small inline initialisers, by exact bytes against the packed weights' fp32
forms. Each consumer is mapped on its own (a tied table serves a Gather and a MatMul). A
MatMul, Gemm or packed-weight use that cannot be mapped raises ImageError naming the node:
no fp32 op is ever left where the simulator quantises.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from flowc.backend.image import Image
from flowc.backend.pack import unpack
from flowc.backend.reference import _digest, dense_weight, rebuild_recipes, recipe_of
from flowc.errors import ImageError

QMAX = 127.0
TINY = float(np.finfo(np.float32).tiny)  # the scale's floor (flowc.runtime.vector.TINY)
PREFIX = "flowc.i8"
FLOAT_GEMMS = ("Conv", "ConvTranspose", "Einsum", "QLinearMatMul", "MatMulInteger")


def int8_reference(image: Image, fp32_onnx: bytes | None = None) -> bytes:
    """Self-contained ONNX bytes of the reference with the simulator's int8 quantisation.

    `fp32_onnx`: the image's reference graph, materialised (`materialise(image)`) or not; by
    default `image.reference_onnx`, whose weight recipes are replaced without ever building
    the fp32 weights (only the recipes still read afterwards are rebuilt).
    """
    if fp32_onnx is None:
        if image.reference_onnx is None:
            raise ImageError("this .fcim carries no reference model")
        fp32_onnx = image.reference_onnx
    model = onnx.load_from_string(fp32_onnx)
    # a materialised model has lost its recipes: look them up in the image's graph (parsed
    # once more); the image's own graph carries them on its initialisers
    recipes = {} if fp32_onnx is image.reference_onnx else _recipes(image)
    _Rewriter(image, model, recipes).run()
    rebuild_recipes(image, model)
    return model.SerializeToString()


def _recipes(image: Image) -> dict[str, tuple[dict, tuple[int, ...]]]:
    """Initialiser name -> (recipe, shape) of the image's externalised reference."""
    if image.reference_onnx is None:
        return {}
    graph = onnx.load_from_string(image.reference_onnx).graph
    return {t.name: (r, tuple(t.dims)) for t in graph.initializer
            if (r := recipe_of(t)) is not None}


class _Rewriter:
    """One rewrite of `model.graph` in place: nodes replaced in order, new initialisers."""

    def __init__(self, image: Image, model: onnx.ModelProto,
                 recipes: dict[str, tuple[dict, tuple[int, ...]]]) -> None:
        self.image = image
        self.graph = model.graph
        self.recipes = recipes
        self.inits = {t.name: t for t in self.graph.initializer}
        self.consts = {n.output[0]: n for n in self.graph.node if n.op_type == "Constant"}
        self.nodes: list[onnx.NodeProto] = []
        self.added: dict[str, np.ndarray] = {}
        self.quantised: dict[tuple[str, int], tuple[str, str]] = {}
        self.uid = 0

    # -- driver --------------------------------------------------------------------------------
    def run(self) -> None:
        for key, value in (("zero", 0.0), ("one", 1.0), ("qmax", QMAX), ("qmin", -QMAX),
                           ("tiny", TINY)):
            self.added[f"{PREFIX}.{key}"] = np.array(value, dtype=np.float32)
        for node in self.graph.node:
            op = node.op_type
            if op == "MatMul":
                self._matmul(node)
            elif op == "Gemm":
                self._gemm(node)
            elif op == "Gather" and self._is_float_table(node.input[0]):
                self._gather(node)
            elif op == "Conv" and self._depthwise(node):
                self.nodes.append(node)  # v.dwconv: float32 on the vector unit
            elif op in FLOAT_GEMMS:
                raise ImageError(f"int8 reference: node {node.name} ({op}) has no int8 mapping")
            else:
                self._check_no_weight(node)
                self.nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        self.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in self.added.items())
        self._drop_unused()

    def _depthwise(self, node: onnx.NodeProto) -> bool:
        """A Conv with one filter per channel (group = channels): the simulator's v.dwconv,
        which runs float32 on the vector unit, so the reference keeps it float32 too."""
        w = self._const_value(node.input[1])
        group = next((helper.get_attribute_value(at) for at in node.attribute
                      if at.name == "group"), 1)
        return w is not None and w.ndim == 3 and w.shape[1] == 1 and w.shape[0] == group

    def _drop_unused(self) -> None:
        used = {i for n in self.graph.node for i in n.input} | {o.name for o in self.graph.output}
        keep = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)

    # -- node rewrites -------------------------------------------------------------------------
    def _matmul(self, node: onnx.NodeProto) -> None:
        a, b = node.input
        if not self._is_const(a) and not self._is_const(b):
            qa, sa = self._quantise(a, -1)
            qb, sb = self._quantise(b, -2)
            psum = self._emit("MatMulInteger", [qa, qb], node.name)
            y = self._emit("Cast", [psum], node.name, to=TensorProto.FLOAT)
            y = self._emit("Mul", [y, sa], node.name)
            self._emit("Mul", [y, sb], node.name, out=node.output[0])
            return
        if self._is_const(a):
            raise ImageError(f"int8 reference: node {node.name} (MatMul) has a constant left "
                             "operand; the simulator runs no such GEMM")
        self._linear(node, a, self._packed(node, b, "dense_t"), node.output[0])

    def _gemm(self, node: onnx.NodeProto) -> None:
        attrs = {at.name: helper.get_attribute_value(at) for at in node.attribute}
        plain = attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and \
            attrs.get("beta", 1.0) == 1.0
        if not plain or not self._is_const(node.input[1]):
            raise ImageError(f"int8 reference: node {node.name} (Gemm {attrs}) is not a linear "
                             "layer x W^T + b over a packed weight")
        form = "dense" if attrs.get("transB", 0) else "dense_t"
        name = self._packed(node, node.input[1], form)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        out = node.output[0]
        y = self._linear(node, node.input[0], name, None if bias else out)
        if bias:
            self._emit("Add", [y, bias], node.name, out=out)

    def _linear(self, node: onnx.NodeProto, x: str, name: str, out: str | None) -> str:
        """x @ W^T on the macro: psum = q_x @ Wq^T (int32), then psum * s_x * wscale."""
        q, s = self._quantise(x, -1)
        wt, scale = self._int8_weight(name)
        psum = self._emit("MatMulInteger", [q, wt], node.name)
        y = self._emit("Cast", [psum], node.name, to=TensorProto.FLOAT)
        y = self._emit("Mul", [y, s], node.name)
        return self._emit("Mul", [y, scale], node.name, out=out)

    def _gather(self, node: onnx.NodeProto) -> None:
        axis = next((helper.get_attribute_value(at) for at in node.attribute
                     if at.name == "axis"), 0)
        if axis != 0:
            raise ImageError(f"int8 reference: node {node.name} gathers a constant on axis "
                             f"{axis}; only embedding rows (axis 0) map to v.embed")
        name = self._packed(node, node.input[0], "dense")
        table = f"{PREFIX}.{name}.table"
        if table not in self.added:
            wq, scale = self._int8(name)
            self.added[table] = wq.astype(np.float32) * scale[:, None]
        node.input[0] = table
        self.nodes.append(node)

    def _check_no_weight(self, node: onnx.NodeProto) -> None:
        for name in node.input:
            recipe = self._recipe(name)
            if recipe is not None and recipe["form"] != "tensor":
                raise ImageError(f"int8 reference: packed weight {recipe['tensor']} feeds node "
                                 f"{node.name} ({node.op_type}), which has no int8 mapping")

    # -- weights -------------------------------------------------------------------------------
    def _is_const(self, name: str) -> bool:
        return name in self.inits or name in self.consts or name in self.added

    def _is_float_table(self, name: str) -> bool:
        """A constant float matrix (an embedding table; shape gathers read int vectors)."""
        t = self.inits.get(name)
        if t is None and name in self.consts:
            t = helper.get_attribute_value(self.consts[name].attribute[0])
        return t is not None and t.data_type == TensorProto.FLOAT and len(t.dims) == 2

    def _recipe(self, name: str) -> dict | None:
        """The recipe of initialiser `name`: its own, or the image's for that name and shape."""
        if name in self.inits and (own := recipe_of(self.inits[name])) is not None:
            return own
        entry = self.recipes.get(name)
        if entry is None or name not in self.inits or tuple(self.inits[name].dims) != entry[1]:
            return None
        return entry[0]

    def _packed(self, node: onnx.NodeProto, name: str, form: str) -> str:
        """The packed weight whose fp32 `form` ([out, in] dense, [in, out] dense_t) is `name`."""
        recipe = self._recipe(name)
        if recipe is not None and recipe["form"] == form:
            return recipe["tensor"]
        arr = self._const_value(name) if recipe is None else None
        if arr is not None and arr.dtype == np.float32 and arr.ndim == 2:
            want = _digest(arr)
            for packed, w in self._fp32_candidates(arr.shape, form):
                if _digest(w) == want:
                    return packed
        raise ImageError(f"int8 reference: node {node.name} ({node.op_type}) reads {name}, "
                         f"which is no packed weight in {form} form")

    def _const_value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        if name in self.consts:
            return numpy_helper.to_array(helper.get_attribute_value(self.consts[name].attribute[0]))
        return None

    def _fp32_candidates(self, shape: tuple[int, ...], form: str) -> Iterable[tuple[str, np.ndarray]]:
        for packed, info in sorted(self.image.packed.items()):
            dims = (info["out"], info["in"]) if form == "dense" else (info["in"], info["out"])
            if dims == tuple(shape) and f"{packed}.fvalues" in self.image.tensors:
                w = dense_weight(self.image, packed)
                yield packed, np.ascontiguousarray(w if form == "dense" else w.T)

    def _int8(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(Wq [out, in] int8, wscale [out] float32) of packed weight `name`."""
        info = self.image.packed[name]
        try:
            values = self.image.tensors[f"{name}.values"]
            meta = self.image.tensors[f"{name}.meta"]
            scale = self.image.tensors[f"{name}.scale"]
        except KeyError as exc:
            raise ImageError(f"int8 reference: the .fcim lacks tensor {exc}") from exc
        wq = unpack(values, meta, info["n"], info["m"])[: info["out"], : info["in"]]
        return wq.astype(np.int8), np.ascontiguousarray(scale[: info["out"]], dtype=np.float32)

    def _int8_weight(self, name: str) -> tuple[str, str]:
        """Initialiser names of Wq^T [in, out] int8 and wscale [out] of packed weight `name`."""
        wt, scale = f"{PREFIX}.{name}.wt", f"{PREFIX}.{name}.scale"
        if wt not in self.added:
            wq, s = self._int8(name)
            self.added[wt], self.added[scale] = np.ascontiguousarray(wq.T), s
        return wt, scale

    # -- emitted subgraphs ---------------------------------------------------------------------
    def _quantise(self, x: str, axis: int) -> tuple[str, str]:
        """(int8 q, float32 scale with the reduced axis kept) of x, symmetric over `axis`."""
        key = (x, axis)
        if key not in self.quantised:
            c = {k: f"{PREFIX}.{k}" for k in ("zero", "one", "qmax", "qmin", "tiny")}
            tag = f"{x}/quant{axis}"
            amax = self._emit("ReduceMax", [self._emit("Abs", [x], tag)], tag, axes=[axis],
                              keepdims=1)
            positive = self._emit("Greater", [amax, c["zero"]], tag)
            # floored at the smallest normal float32, as vector.quantise_per_token
            step = self._emit("Max", [self._emit("Div", [amax, c["qmax"]], tag), c["tiny"]], tag)
            s = self._emit("Where", [positive, step, c["one"]], tag)
            r = self._emit("Round", [self._emit("Div", [x, s], tag)], tag)
            q = self._emit("Cast", [self._emit("Clip", [r, c["qmin"], c["qmax"]], tag)], tag,
                           to=TensorProto.INT8)
            self.quantised[key] = (q, s)
        return self.quantised[key]

    def _emit(self, op: str, inputs: list[str], tag: str, out: str | None = None,
              **attrs) -> str:
        self.uid += 1
        name = f"{PREFIX}/{tag}/{op}_{self.uid}"
        out = out or f"{name}:0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out
