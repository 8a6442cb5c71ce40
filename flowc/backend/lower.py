"""Lower an annotated fx graph to a FlexCiM Program.

Every static-weight GEMM (aten.linear) becomes a tile loop on the CiM macros with its N:M
pattern; every other op becomes vector-unit instructions. Rules live in a table keyed by ATen
op (`RULES`), so supporting a new op is one function with `@rule(op)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import torch
import torch.fx

from flowc import isa
from flowc.backend.image import Image, IOSpec, LayerInfo
from flowc.errors import CompileError, UnsupportedOpError
from flowc.frontend.diagnose import unsupported_op_message
from flowc.frontend.load import Captured, module_path

aten = torch.ops.aten
Rule = Callable[["Lowering", torch.fx.Node], None]
RULES: dict[object, Rule] = {}
# per target: (family, architectures known to use it) declared next to the rule; the supported
# ops table of docs/models.md is generated from RULES and this (flowc.backend.opsdoc)
RULE_INFO: dict[object, tuple[str, tuple[str, ...]]] = {}


def rule(*targets: object, family: str | None = None,
         archs: tuple[str, ...] = ()) -> Callable[[Rule], Rule]:
    """Register `fn` as the lowering of each ATen target; `family` (default: the rule's module)
    and `archs` (model families known to use the op) only feed the generated docs."""
    def deco(fn: Rule) -> Rule:
        fam = family or fn.__module__.rsplit(".", 1)[-1].removeprefix("rules_").removeprefix("rules")
        for t in targets:
            if t in RULES and RULES[t] is not fn:
                raise CompileError(f"two lowering rules for {t}: {RULES[t].__module__}."
                                   f"{RULES[t].__name__} and {fn.__module__}.{fn.__name__}")
            RULES[t] = fn
            RULE_INFO[t] = (fam or "core", tuple(archs))
        return fn

    return deco


def label(text: str) -> str:
    """A report/tensor name valid in assembly: dotted identifier, never starting with a digit."""
    text = re.sub(r"[^A-Za-z0-9_.]", "_", text).strip(".") or "_"
    return text if re.match(r"[A-Za-z_]", text) else "_" + text


class Lowering:
    """State of one lowering: the instruction list, tensors and the buffer of every fx node."""

    def __init__(self, cap: Captured, machine, keep_fp32: bool = True) -> None:
        self.cap = cap
        self.gm = cap.gm
        self.machine = machine
        self.keep_fp32 = keep_fp32
        self.instrs: list = []
        self.tensors: dict[str, np.ndarray] = {}
        self.layers: dict[str, LayerInfo] = {}
        self.bufs: dict[str, str] = {}  # fx node name -> buffer
        self.quantised: dict[str, tuple[str, str]] = {}  # float buffer -> (int8 buffer, scales)
        self.packed: dict[str, dict] = {}  # packed weight -> pattern and true shape
        self.mm_counts: dict[str, int] = {}  # activation matmuls seen per module (qk, av)
        self.current: str | None = None
        from flowc.backend.fusions import find_fusions

        self.fused, self.skipped = find_fusions(self.gm)

    # -- helpers used by rules -------------------------------------------------------------
    def emit(self, instr) -> None:
        self.instrs.append(instr)

    def enter(self, name: str, kind: str) -> None:
        name = label(name)
        if name != self.current:
            self.emit(isa.Layer(name=name, kind=kind))
            self.current = name
            if name not in self.layers:
                self.layers[name] = LayerInfo(name=name, kind=kind)

    def buf(self, node: torch.fx.Node) -> str:
        if node.op == "get_attr":
            return self.const_buffer(node)
        if node.name not in self.bufs:
            raise CompileError(f"node {node.name} is used before it is computed")
        return self.bufs[node.name]

    def out(self, node: torch.fx.Node) -> str:
        self.bufs[node.name] = label(node.name)
        return self.bufs[node.name]

    def alias(self, node: torch.fx.Node, src: torch.fx.Node) -> None:
        self.bufs[node.name] = self.buf(src)

    def param(self, node: torch.fx.Node) -> np.ndarray:
        if node.op != "get_attr":
            raise UnsupportedOpError(f"node {node.name}: expected a constant parameter, got {node.op}")
        obj = self.gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj.detach().to(torch.float32).numpy()

    def tensor(self, name: str, array: np.ndarray) -> str:
        name = label(name)
        if name in self.tensors and not np.array_equal(self.tensors[name], array):
            raise CompileError(f"tensor name clash: {name}")
        self.tensors[name] = np.ascontiguousarray(array)
        return name

    def const_buffer(self, node: torch.fx.Node) -> str:
        """A constant's buffer, loaded by one v.const per parameter (shared by every reader:
        RoPE cos/sin and masks are read by every layer)."""
        if node.name not in self.bufs:
            key = f"@const:{node.target}"
            if key not in self.bufs:
                t = self.tensor(f"const.{node.target}", self.param(node).astype(np.float32))
                self.bufs[key] = self.out(node)
                self.emit(isa.VConst(dst=self.bufs[key], t=t))
            self.bufs[node.name] = self.bufs[key]
        return self.bufs[node.name]

    def layer_of(self, node: torch.fx.Node) -> str:
        return (node.meta.get("flowc") or {}).get("layer") or module_path(node) or node.name

    # -- driver ----------------------------------------------------------------------------
    def run(self) -> Image:
        inputs, outputs = [], []
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                val = node.meta.get("val")
                idx = len(inputs)
                ex = self.cap.example_inputs[idx]
                shape = tuple(val.shape) if val is not None else tuple(ex.shape)
                inputs.append(IOSpec(node.name, self.out(node), tuple(int(s) for s in shape),
                                     str(ex.dtype).replace("torch.", "")))
            elif node.op == "get_attr":
                continue  # materialised on first use
            elif node.op == "call_function":
                if node.name in self.skipped:
                    continue  # folded into a fused instruction emitted at its final node
                fn = self.fused.get(node) or RULES.get(node.target)
                if fn is None:
                    raise UnsupportedOpError(
                        unsupported_op_message(node, supported=supported_ops_summary()))
                fn(self, node)
            elif node.op == "output":
                for i, arg in enumerate(_flatten(node.args[0])):
                    if not isinstance(arg, torch.fx.Node):
                        raise UnsupportedOpError(f"output {i} is a constant, not a tensor")
                    val = arg.meta.get("val")
                    name = self.cap.output_names[i] if i < len(self.cap.output_names) else f"out{i}"
                    outputs.append(IOSpec(name, self.buf(arg), tuple(int(s) for s in val.shape),
                                          "float32"))
            else:
                raise UnsupportedOpError(f"unsupported node kind {node.op} at node '{node.name}'")
        self.emit(isa.Halt())
        program = isa.Program(tuple(self.instrs))
        return Image(program=program, tensors=dict(sorted(self.tensors.items())),
                     inputs=tuple(inputs), outputs=tuple(outputs),
                     layers=tuple(self.layers.values()), machine=self.machine.to_dict(),
                     packed=dict(sorted(self.packed.items())))


def _flatten(x) -> list:
    if isinstance(x, (list, tuple)):
        return [y for item in x for y in _flatten(item)]
    return [x]


def supported_ops_summary() -> str:
    names = sorted({str(t).replace("aten.", "").split(".")[0] for t in RULES})
    return ", ".join(names)


def register_rules() -> dict[object, Rule]:
    """Import every rule module (each registers its rules into RULES); returns RULES. The
    one list of rule modules: lowering and the generated ops table (opsdoc) both use it."""
    import flowc.backend.rules  # noqa: F401  (registers the op rules)
    import flowc.backend.rules_attention  # noqa: F401  (masks, casts, indexing)
    import flowc.backend.rules_ops  # noqa: F401  (plain ops: math, reductions, scans)
    import flowc.backend.rules_ssm  # noqa: F401  (state-space models: conv1d, select, pad)
    import flowc.backend.rules_tf  # noqa: F401  (transformer ops)

    return RULES


def lower(cap: Captured, machine, keep_fp32: bool = True) -> Image:
    """Lower a captured, pruned and quantised graph to an Image for `machine`."""
    register_rules()
    return Lowering(cap, machine, keep_fp32).run()
