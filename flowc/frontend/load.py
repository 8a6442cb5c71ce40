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
from flowc.frontend.prepare import (  # noqa: F401  (module_path, annotate_layer_names: re-exported)
    annotate_layer_names,
    module_path,
    prepare_graph,
)

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
                       seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs: standard normal floats, small non-negative integers."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, shape in enumerate(shapes):
        dtype = dtypes[i] if dtypes else torch.float32
        if dtype.is_floating_point:
            out.append(torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype))
        else:
            out.append(torch.randint(0, 100, tuple(shape), generator=gen, dtype=dtype))
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


def load_model(path: str | Path, input_shapes: str | None = None,
               trust_pickle: bool = False) -> Captured:
    """Load `path` and capture it; `input_shapes` (e.g. '1x784') overrides recorded shapes."""
    path = Path(path)
    kind = archive_kind(path)
    shapes = parse_input_shapes(input_shapes) if input_shapes else None
    if kind == "exported":
        try:
            ep = torch.export.load(str(path))
        except Exception as exc:  # torch raises many types for a damaged archive
            raise ModelLoadError(f"{path}: cannot load ExportedProgram: {exc}") from exc
        specs = _exported_input_specs(ep)
        if shapes is None:
            inputs = example_inputs_for([s for s, _ in specs], [d for _, d in specs])
            return _finish(ep, inputs, f"exported:{path.name}")
        if len(shapes) != len(specs):
            raise UsageError(f"--input-shape gives {len(shapes)} shapes, the model takes {len(specs)}")
        module: torch.nn.Module = ep.module()
        inputs = example_inputs_for(shapes, [d for _, d in specs])
    elif kind == "torchscript":
        if shapes is None:
            raise UsageError(f"{path}: TorchScript archives record no input shapes; pass --input-shape")
        module = torch.jit.load(str(path))
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
    return capture(module, inputs, source=f"{kind}:{path.name}")


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
    module = module.eval()
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
    return Captured(gm=gm, example_inputs=tuple(inputs), input_names=input_names,
                    output_names=output_names, source=source, info=info)


# -- Hugging Face sources: hf:smollm2-135m, hf:tiny-<arch> -----------------------------------------
HF_PREFIX = "hf:"
SMOLLM2 = "smollm2-135m"
DEFAULT_PROMPT = (
    "The history of computing is a story of machines that learned to remember. Early "
    "calculators kept their numbers in gears and relays; later computers stored them in "
    "magnetic cores, then in tiny capacitors etched into silicon. For decades the processor "
    "and the memory lived apart, and every multiplication meant a trip across the bus between "
    "them. Moving the data cost far more energy than the arithmetic itself. Engineers "
    "therefore began to ask a simple question: what if the memory could compute? In a "
    "compute-in-memory array, each cell holds a weight and multiplies it by an input as the "
    "signal passes, so a whole matrix-vector product happens where the numbers already are. "
    "Language models, which spend most of their time in exactly these products, are the "
    "obvious customers for such chips, and the next step is to"
)


def is_hf_source(spec: str) -> bool:
    return str(spec).startswith(HF_PREFIX)


def hf_source_names() -> list[str]:
    from flowc.frontend.hf import ARCHS

    return [SMOLLM2] + [f"tiny-{a}" for a in ARCHS]


def check_hf_source(spec: str) -> str:
    """The source name after `hf:`, or a UsageError listing the known sources."""
    name = str(spec)[len(HF_PREFIX):]
    if name not in hf_source_names():
        raise UsageError(f"unknown model source {spec!r}; known: "
                         + ", ".join(HF_PREFIX + n for n in hf_source_names()))
    return name


def prompt_ids(tokenizer, prompt: str, seq_len: int | None) -> torch.Tensor:
    """[1, T] token ids of `prompt`; with seq_len, truncated or cycled to exactly T tokens."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UsageError("--prompt: the prompt has no tokens")
    if seq_len:
        ids = (ids * -(-seq_len // len(ids)))[:seq_len]
    return torch.tensor([ids], dtype=torch.long)


def calibration_windows(tokenizer, seq_len: int, count: int,
                        progress=None) -> list[tuple[torch.Tensor, ...]]:
    """`count` windows of seq_len tokens of the Brown corpus (calibration split), or of the
    Python docs (pydoc) when Brown cannot be fetched (no npm / offline)."""
    from flowc.frontend.text import TextSourceError, load_text, split_text

    try:
        text, source = split_text(load_text("brown"))[0], "brown"
    except TextSourceError as exc:
        if progress:
            progress(f"Brown corpus unavailable ({exc}); calibrating on pydoc text")
        text, source = load_text("pydoc"), "pydoc"
    ids = tokenizer(text[: 8 * seq_len * count + 4096], add_special_tokens=False)["input_ids"]
    if len(ids) < seq_len * count:
        raise UsageError(f"calibration text ({source}) has only {len(ids)} tokens")
    if progress:
        progress(f"calibration: {count} windows x {seq_len} tokens of {source}")
    return [(torch.tensor([ids[i * seq_len:(i + 1) * seq_len]], dtype=torch.long),)
            for i in range(count)]


def load_hf(spec: str, seq_len: int | None = None, prompt: str | None = None,
            calib_batches: int = 4, progress=None, seed: int = 0) -> Captured:
    """Capture `hf:smollm2-135m` (real weights, tokenised prompt) or `hf:tiny-<arch>` (random
    weights, seeded random token ids): torch.export -> fold_constants -> strip_noops.

    `Captured.info` carries `calib` (calibration input tuples) and `vocab` (the decoded text
    of every token id, for the report's next-token table; SmolLM2 only).
    """
    from flowc.frontend import hf

    name = check_hf_source(spec)
    say = progress or (lambda msg: None)
    info: dict = {}
    if name == SMOLLM2:
        say("loading SmolLM2-135M (GGUF weights, ~15 s) ...")
        model, tok = hf.load_smollm2()
        ids = prompt_ids(tok, prompt or DEFAULT_PROMPT, seq_len or (None if prompt else 128))
        info["calib"] = calibration_windows(tok, ids.shape[1], calib_batches, say)
        info["vocab"] = tuple(tok.batch_decode([[i] for i in range(len(tok))]))
        info["prompt_tokens"] = ids.shape[1]
    else:  # tiny-<arch>
        if prompt:
            raise UsageError(f"--prompt needs a tokenizer; {spec} has random weights and none")
        model = hf.tiny_model(name[5:], seed=seed)
        if name == "tiny-gpt2":
            hf.conv1d_to_linear(model)
        gen = torch.Generator().manual_seed(seed)
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (1, seq_len or 32), generator=gen)
        info["calib"] = [(torch.randint(0, vocab, tuple(ids.shape), generator=gen),)
                         for _ in range(calib_batches)]
    say(f"capturing {type(model).__name__} with torch.export ({ids.shape[1]} tokens) ...")
    ep = hf.export_program(model, ids)
    encoder = name[5:] in hf.ENCODER_ARCHS if name.startswith("tiny-") else False
    return _finish(ep, (ids,), str(spec), info=info,
                   output_names=("last_hidden_state",) if encoder else ("logits",))
