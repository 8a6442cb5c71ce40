"""Load a model file and capture it with torch.export into a torch.fx graph.

Three file formats are accepted, detected from the archive's contents, never from the suffix:
- a `torch.export` ExportedProgram (`torch.export.save`, .pt2/.pt): preferred and safe;
- a TorchScript archive (`torch.jit.save`): converted to an ExportedProgram;
- a pickled `nn.Module` (`torch.save(module)`): unpickling runs arbitrary code, so it is
  loaded only when the caller passes `trust_pickle=True` (`--trust-pickle`).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.fx

from flowc.errors import ModelLoadError, UsageError
from flowc.frontend.index_range import DEFAULT_HIGH, index_bounds
from flowc.frontend.prepare import (  # noqa: F401  (module_path, annotate_layer_names: re-exported)
    annotate_layer_names,
    module_path,
    prepare_graph,
)
from flowc.frontend.safe_pt2 import no_unpickling, scan_archive

LINEAR = torch.ops.aten.linear.default


@dataclass
class Captured:
    """A model captured into an unlifted fx.GraphModule plus the inputs that drive it."""

    gm: torch.fx.GraphModule
    example_inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    source: str
    info: dict = field(default_factory=dict)


def parse_input_shapes(text: str) -> list[tuple[int, ...]]:
    """Parse `1x784` or `1x784,1x10` (one shape per model input) into tuples."""
    shapes = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"\d+(x\d+)*", part):
            raise UsageError(f"--input-shape: expected shapes like 1x784 or 2x16,2x8, got {text!r}")
        shapes.append(tuple(int(d) for d in part.split("x")))
    return shapes


def archive_kind(path: Path) -> str:
    """Return 'exported', 'torchscript' or 'pickle' from the members of a torch zip archive."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path}: not a torch archive (expected torch.export.save, torch.jit.save or "
            "torch.save output)"
        )
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in tails or any(t.startswith("models/") for t in tails):
        return "exported"
    if any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        return "pickle"
    raise ModelLoadError(f"{path}: unrecognised torch archive layout")


def example_inputs_for(shapes: Sequence[Sequence[int]], dtypes: Sequence[torch.dtype] | None = None,
                       seed: int = 0, high: Sequence[int | None] | None = None
                       ) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs: standard normal floats; integers (token ids) in
    [0, high[i]), the rows of the smallest embedding table input i indexes
    (flowc.frontend.index_range), or [0, 100) when no table bounds it."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, shape in enumerate(shapes):
        dtype = dtypes[i] if dtypes else torch.float32
        if dtype.is_floating_point:
            out.append(torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype))
        else:
            top = (high[i] if high is not None and i < len(high) else None) or DEFAULT_HIGH
            out.append(torch.randint(0, top, tuple(shape), generator=gen, dtype=dtype))
    return tuple(out)


def _exported_input_specs(ep: torch.export.ExportedProgram) -> list[tuple[tuple[int, ...], torch.dtype]]:
    by_name = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    specs = []
    for name in ep.graph_signature.user_inputs:
        val = by_name[name].meta.get("val")
        if val is None or not hasattr(val, "shape"):
            raise ModelLoadError(f"exported program input {name!r} has no recorded shape")
        specs.append((tuple(int(d) for d in val.shape), val.dtype))
    return specs


def recorded_inputs(ep: torch.export.ExportedProgram,
                    specs: list[tuple[tuple[int, ...], torch.dtype]]) -> tuple | None:
    """The example inputs the user exported with (torch.export.save keeps them), when they
    are positional tensors of the recorded shapes and dtypes: real token ids and attention
    masks make better samples than random ones. None when absent or not of that form."""
    recorded = getattr(ep, "example_inputs", None)
    if not recorded:
        return None
    args, kwargs = recorded
    if kwargs or len(args) != len(specs):
        return None
    for arg, (shape, dtype) in zip(args, specs, strict=True):
        if not isinstance(arg, torch.Tensor) or tuple(arg.shape) != shape or arg.dtype != dtype:
            return None
    return tuple(a.detach().clone() for a in args)


def _static_shapes(ep: torch.export.ExportedProgram) -> bool:
    """No input dimension of `ep` is symbolic (exported without dynamic_shapes)."""
    for node in ep.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(val, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in val.shape):
            return False
    return True


def load_model(path: str | Path, input_shapes: str | None = None,
               trust_pickle: bool = False) -> Captured:
    """Load `path` and capture it; `input_shapes` (e.g. '1x784') overrides recorded shapes."""
    path = Path(path)
    kind = archive_kind(path)
    shapes = parse_input_shapes(input_shapes) if input_shapes else None
    scan_archive(path, trust_pickle=trust_pickle or kind == "pickle")
    if kind == "exported":
        ep = _load_exported(path, trust_pickle)
        specs = _exported_input_specs(ep)
        high = index_bounds(ep.graph, tuple(ep.graph_signature.user_inputs))
        if shapes is not None and [tuple(x) for x in shapes] == [s for s, _ in specs]:
            shapes = None  # the recorded shapes: use the recorded inputs, as without the option
        if shapes is None:
            inputs = recorded_inputs(ep, specs)
            info = {"example_inputs": "recorded" if inputs else "synthetic"}
            if inputs is None:
                inputs = example_inputs_for([s for s, _ in specs], [d for _, d in specs],
                                            high=high)
            return _finish(ep, inputs, f"exported:{path.name}", info=info)
        if len(shapes) != len(specs):
            raise UsageError(f"--input-shape gives {len(shapes)} shapes, the model takes {len(specs)}")
        recorded = [s for s, _ in specs]
        if [tuple(x) for x in shapes] != recorded and _static_shapes(ep):
            raise UsageError(
                f"--input-shape {input_shapes}: {path.name} was exported with static shapes "
                f"{', '.join('x'.join(map(str, s)) for s in recorded)}; give those, or export "
                "with dynamic_shapes")
        module: torch.nn.Module = ep.module()
        inputs = example_inputs_for(shapes, [d for _, d in specs], high=high)
    elif kind == "torchscript":
        if shapes is None:
            raise UsageError(f"{path}: TorchScript archives record no input shapes; pass --input-shape")
        with no_unpickling(path, trust_pickle=True):  # TorchScript's own restricted reader
            try:
                module = torch.jit.load(str(path))
            except Exception as exc:
                raise ModelLoadError(f"{path}: cannot load TorchScript: {_first_line(exc)}") from exc
        inputs = example_inputs_for(shapes)
        ep = _torchscript_to_exported(module, inputs, path)
        return _finish(ep, inputs, f"torchscript:{path.name}")
    else:
        if not trust_pickle:
            raise ModelLoadError(
                f"{path}: is a pickled nn.Module; unpickling runs arbitrary code, so flowc loads it "
                "only with --trust-pickle (safer: save it with torch.export.save)"
            )
        module = torch.load(str(path), weights_only=False)
        if not isinstance(module, torch.nn.Module):
            raise ModelLoadError(f"{path}: the pickle holds a {type(module).__name__}, not an nn.Module")
        if shapes is None:
            raise UsageError(f"{path}: a pickled module records no input shapes; pass --input-shape")
        inputs = example_inputs_for(shapes)
    cap = capture(module, inputs, source=f"{kind}:{path.name}")
    # the ids were drawn before the graph was known: redraw them inside the tables' rows
    cap.example_inputs = example_inputs_for(shapes, [x.dtype for x in inputs],
                                            high=cap.info["index_high"])
    return cap


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_exported(path: Path, trust_pickle: bool) -> torch.export.ExportedProgram:
    """torch.export.load under no_unpickling (flowc.frontend.safe_pt2): a crafted archive
    cannot run code, and torch's warnings stay off the terminal."""
    with no_unpickling(path, trust_pickle=trust_pickle):
        try:
            return torch.export.load(str(path))
        except ModelLoadError:
            raise
        except Exception as exc:  # torch raises many types for a damaged archive
            raise ModelLoadError(f"{path}: cannot load ExportedProgram: "
                                 f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _torchscript_to_exported(module, inputs, path: Path) -> torch.export.ExportedProgram:
    from torch._export.converter import TS2EPConverter

    try:
        return TS2EPConverter(module, inputs).convert()
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot convert TorchScript to torch.export: {exc}") from exc


def capture(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], source: str = "module",
            output_names: tuple[str, ...] | None = None) -> Captured:
    """Capture a Python model object: torch.export (non-strict) + prepare_graph.

    A Hugging Face model (a transformers PreTrainedModel) is exported through its wrapper
    (input_ids -> logits or last_hidden_state, no KV cache) like the hf: sources.
    """
    if not isinstance(module, torch.fx.GraphModule):  # ep.module() refuses eval(); it is
        module = module.eval()  # already in the mode it was exported in
    if _is_transformers_model(module):
        from flowc.frontend import hf

        if len(inputs) != 1:
            raise UsageError(f"{type(module).__name__}: a Hugging Face model is captured from "
                             f"input_ids alone, got {len(inputs)} inputs")
        ep = hf.export_program(module, inputs[0])
        if output_names is None:
            output_names = ("logits",) if hf.is_causal_lm(module) else ("last_hidden_state",)
        return _finish(ep, inputs, source, output_names=output_names)
    try:
        with torch.no_grad():
            ep = torch.export.export(module, tuple(inputs), strict=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"torch.export failed for {type(module).__name__}: {type(exc).__name__}: {first}"
        ) from exc
    return _finish(ep, inputs, source, output_names=output_names)


def _is_transformers_model(module: torch.nn.Module) -> bool:
    return any(c.__module__.startswith("transformers.") and c.__name__ == "PreTrainedModel"
               for c in type(module).__mro__)


def _finish(ep: torch.export.ExportedProgram, inputs: tuple[torch.Tensor, ...], source: str,
            output_names: tuple[str, ...] | None = None, info: dict | None = None) -> Captured:
    """The one exit of every source: unlift, prepare (prepare_graph), wrap as Captured."""
    gm = ep.module()
    report = prepare_graph(gm, tuple(inputs))
    input_names = tuple(n.name for n in gm.graph.nodes if n.op == "placeholder")
    if output_names is None:
        output_names = tuple(ep.graph_signature.user_outputs)
    info = dict(info or {})
    info["prepare"] = report.to_dict()
    info["index_high"] = index_bounds(gm.graph, gm=gm)  # valid id range per input
    return Captured(gm=gm, example_inputs=tuple(inputs), input_names=input_names,
                    output_names=output_names, source=source, info=info)


# -- Hugging Face sources live in flowc.frontend.sources (imported lazily: transformers is slow)
HF_PREFIX = "hf:"


def is_hf_source(spec: str) -> bool:
    return str(spec).startswith(HF_PREFIX)


def check_hf_source(spec: str) -> str:
    from flowc.frontend.sources import check_hf_source as check

    return check(spec)


def load_hf(spec: str, **kwargs) -> Captured:
    """See flowc.frontend.sources.load_hf."""
    from flowc.frontend.sources import load_hf as load

    return load(spec, **kwargs)
