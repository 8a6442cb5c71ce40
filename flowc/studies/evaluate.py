"""Accuracy of pruned LLMs: perplexity and achieved sparsity, dense vs pruned (SPEC.md 2.9).

`flowc eval` and `bench/flow_accuracy.py` both run `evaluate_methods`: load and capture the
model once (static [1, seq_len] shapes), calibrate once on the dense model (the `input_norm`
statistics every selection uses), then for each method prune a fresh copy with the same pass
pipeline a compile would use (`method_pipeline`) and measure perplexity on held-out windows
with the pruned fp32 GraphModule in PyTorch. Nothing here runs the simulator.

Perplexity: non-overlapping windows, each scored on its own (no context carried over),
ppl = exp(total NLL / predicted tokens), with seq_len - 1 predicted tokens per window.

Sparsity is reported over the *prunable* layers (all linears but the `skip` ones; by default
lm_head is skipped, as in Wanda/FLOW, which report the sparsity of the transformer blocks)
and over all linears; target and achieved are always shown side by side.
"""

from __future__ import annotations

import copy
import gc
import math
import resource
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from flowc.errors import UsageError
from flowc.passes.graph import flowc_meta, get_param, linear_nodes, matches

METHODS = ("dense", "uniform", "magnitude", "owl", "flow", "flow-repo", "measured",
           "measured-search")
REPO_MODE = "preset=repo"  # FLOW's public code in every point (docs/flow.md)


class EvalError(UsageError):
    """An evaluation cannot run as asked (unknown method, model or option)."""


# ---------------------------------------------------------------------------------------------
# Model


def load_lm(spec: str) -> tuple[torch.nn.Module, Any]:
    """(causal LM in eval mode, tokenizer) for `hf:smollm2-135m` or `hf:tiny-<decoder arch>`.

    Tiny models have random weights and vocab 256, so they read text as UTF-8 bytes
    (`ByteTokenizer`): useless for accuracy, right for fast end-to-end tests.
    """
    from flowc.frontend import hf
    from flowc.frontend.text import ByteTokenizer

    name = spec.removeprefix("hf:")
    if name == "smollm2-135m":
        return hf.load_smollm2()
    arch = name.removeprefix("tiny-")
    if name.startswith("tiny-") and arch in hf.ARCHS and arch not in hf.ENCODER_ARCHS:
        model = hf.tiny_model(arch)
        if arch == "gpt2":
            hf.conv1d_to_linear(model)
        return model, ByteTokenizer()
    raise EvalError(f"unknown language model {spec!r}; known: hf:smollm2-135m, "
                    + ", ".join(f"hf:tiny-{a}" for a in hf.ARCHS if a not in hf.ENCODER_ARCHS))


def capture_lm(model: torch.nn.Module, seq_len: int) -> fx.GraphModule:
    """input_ids [1, seq_len] -> logits, captured and prepared exactly as `flowc compile`
    prepares a model (frontend.load.capture: torch.export + prepare_graph)."""
    from flowc.frontend.load import capture

    ids = torch.zeros(1, seq_len, dtype=torch.long)
    return capture(model, (ids,), source="eval", output_names=("logits",)).gm


# ---------------------------------------------------------------------------------------------
# Measurements


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    nll: float  # mean token NLL (nats)
    tokens: int  # predicted tokens
    windows: int


def perplexity(forward: Callable[[torch.Tensor], torch.Tensor],
               windows: Sequence[tuple[torch.Tensor, ...]], bar: bool = False) -> Perplexity:
    """exp(mean NLL) of next-token prediction over non-overlapping windows [1, T]."""
    from tqdm import tqdm

    if not windows:
        raise EvalError("no evaluation windows")
    total, count = 0.0, 0
    with torch.no_grad():
        # a bar on a terminal only (disable=None): logs and CI output stay free of it
        for (ids,) in tqdm(windows, desc="perplexity", unit="win", disable=None if bar else True,
                           leave=False):
            logits = forward(ids)
            nll = torch.nn.functional.cross_entropy(
                logits[0, :-1].to(torch.float32), ids[0, 1:], reduction="sum")
            total += float(nll)
            count += ids.shape[1] - 1
    return Perplexity(math.exp(total / count), total / count, count, len(windows))


def sparsity_table(gm: fx.GraphModule, skip: Sequence[str] = ()) -> dict[str, Any]:
    """Per-linear pattern and achieved sparsity, plus parameter-weighted totals over the
    prunable linears (not matching `skip`) and over all linears."""
    rows, tot = [], {"prunable": [0, 0], "all": [0, 0]}
    for ref in linear_nodes(gm):
        w = get_param(gm, ref.weight_target)
        zeros, size = int((w == 0).sum()), w.numel()
        pattern = flowc_meta(ref.node).get("pattern")
        rows.append({"name": ref.name, "pattern": list(pattern) if pattern else None,
                     "params": size, "sparsity": zeros / size})
        for key in ("all",) if matches(ref.name, skip) else ("all", "prunable"):
            tot[key][0] += zeros
            tot[key][1] += size
    return {"layers": rows,
            "sparsity": tot["prunable"][0] / max(tot["prunable"][1], 1),
            "sparsity_all": tot["all"][0] / max(tot["all"][1], 1)}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# Methods


@dataclass(frozen=True)
class MethodSpec:
    """One row of an accuracy table: a method, its target and its options."""

    method: str
    target: float = 0.5
    nm: tuple[int, int] | None = None  # uniform / magnitude pattern; owl uses its M
    keep_dense: tuple[str, ...] = ()
    skip: tuple[str, ...] = ("lm_head",)
    update: str = "none"  # none | obs
    sequential: bool = True
    tau: float | None = None  # None: the method's own (5; FLOW's 0.5 for flow-repo)
    granularity: str | None = None  # None: the method's own (layer; block for flow-repo)
    solver: str = "cbc"
    extra: str = ""  # more selection options, pipeline syntax (e.g. "beta=2.0")
    label: str = ""
    latency: float = 0.0  # measured methods: latency budget, fraction of dense (0 = none)
    search: str = ""  # measured-search: nm-search options, pipeline syntax
    pipeline: str = ""  # method "pipeline": any pass pipeline (plugins included), as given

    def name(self) -> str:
        return self.label or method_label(self)


def method_label(spec: MethodSpec) -> str:
    nm = f" {spec.nm[0]}:{spec.nm[1]}" if spec.nm and spec.method in ("uniform", "magnitude") \
        else ""
    obs = " +OBS" if spec.update == "obs" else ""
    return f"{spec.method}{nm}{obs}"


def _opts(*items: str) -> str:
    return ",".join(i for i in items if i)


def _list(values: Sequence[str]) -> str:
    return "|".join(values)


def method_pipeline(spec: MethodSpec) -> str:
    """The pass pipeline (after `calibrate`) that prunes the model for `spec`."""
    common = _opts(f"keep_dense={_list(spec.keep_dense)}" if spec.keep_dense else "",
                   f"skip={_list(spec.skip)}" if spec.skip else "",
                   f"granularity={spec.granularity}" if spec.granularity else "")
    if spec.method == "dense":
        return ""
    if spec.method == "pipeline":  # calibrate already ran: its dense statistics are in meta
        items = spec.pipeline.split(",", 1)
        return items[1].strip() if items[0].strip() == "calibrate" and len(items) > 1 \
            else spec.pipeline
    if spec.method in ("uniform", "magnitude"):
        n, m = spec.nm or (2, 4)
        select = f"uniform-nm{{{_opts(f'n={n},m={m}', common)}}}"
    elif spec.method == "owl":
        m = spec.nm[1] if spec.nm else 8
        tau = 5.0 if spec.tau is None else spec.tau
        select = f"owl-nm{{{_opts(f'm={m},target={spec.target},tau={tau}', common)}}}"
    elif spec.method in ("measured", "measured-search"):
        # selection minimises the plain-mask errors whatever the update (like every other
        # method, the choice is made on masks; the OBS update then applies to it)
        select = "measured-select{" + _opts(f"target={spec.target}",
                                            f"latency={spec.latency}" if spec.latency else "",
                                            common, spec.extra) + "}"
        if spec.method == "measured-search":
            select += ",nm-search{" + _opts(f"target={spec.target}",
                                            f"latency={spec.latency}" if spec.latency else "",
                                            common, spec.search) + "}"
    elif spec.method in ("flow", "flow-repo"):
        repo = REPO_MODE if spec.method == "flow-repo" else ""
        tau = spec.tau if spec.tau is not None or repo else 5.0  # None: the preset's
        select = "flow-select{" + _opts(f"target={spec.target}",
                                         f"tau={tau}" if tau is not None else "",
                                         f"solver={spec.solver}", repo, common,
                                         spec.extra) + "}"
    else:
        raise EvalError(f"unknown method {spec.method!r}; known: {', '.join(METHODS)}")
    score = "magnitude" if spec.method == "magnitude" else "wanda"
    prune = _opts(f"score={score}", "sequential=true" if spec.sequential else "",
                  f"update={spec.update}" if spec.update != "none" else "",
                  f"skip={_list(spec.skip)}" if spec.skip else "")
    return f"{select},nm-prune{{{prune}}},verify-nm"


@dataclass
class MethodResult:
    spec: MethodSpec
    pipeline: str
    ppl: Perplexity
    sparsity: float  # achieved over the prunable linears
    sparsity_all: float
    seconds: dict[str, float]
    layers: list[dict[str, Any]]
    selection: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.spec.method, "label": self.spec.name(),
                "update": self.spec.update, "sequential": self.spec.sequential,
                "target": self.spec.target if self.spec.method not in ("dense",) else 0.0,
                "pipeline": self.pipeline, "ppl": self.ppl.ppl, "nll": self.ppl.nll,
                "tokens": self.ppl.tokens, "sparsity": self.sparsity,
                "sparsity_all": self.sparsity_all, "seconds": self.seconds,
                "layers": self.layers, "selection": self.selection}


# ---------------------------------------------------------------------------------------------
# Driver


@dataclass
class Calibrated:
    """A captured dense model with its dense calibration statistics and the data."""

    gm: fx.GraphModule
    calib: list[tuple[torch.Tensor, ...]]
    windows: list[tuple[torch.Tensor, ...]]
    norms: dict[str, Any]  # layer name -> input_norm (dense)
    calib_seconds: float
    tables: dict[str, Any] = field(default_factory=dict)  # sensitivity tables, by updates
    table_seconds: dict[str, float] = field(default_factory=dict)
    price: Callable[..., tuple[float, float]] | None = None  # ctx.price for measured methods


def calibrate_dense(gm: fx.GraphModule, calib: list[tuple[torch.Tensor, ...]],
                    windows: list[tuple[torch.Tensor, ...]], bar: bool = False) -> Calibrated:
    """One-shot dense statistics (the `calibrate` pass's norms), timed: the reference time
    of "the calibration forward passes alone"."""
    from tqdm import tqdm

    from flowc.passes.calibrate import collect_input_norms

    with tqdm(total=len(calib), desc="calibrate", unit="win", disable=None if bar else True,
              leave=False) as progress:
        start = time.perf_counter()
        by_node = collect_input_norms(gm, calib, progress=lambda _msg: progress.update(1))
        seconds = time.perf_counter() - start
    norms = {r.name: by_node[r.node.name] for r in linear_nodes(gm)}
    from flowc.machine import load_machine
    from flowc.studies.analytic import gemm_pricer

    price = gemm_pricer(load_machine("flexcim"), int(calib[0][0].numel()))
    return Calibrated(gm, calib, windows, norms, seconds, price=price)


def _fresh_copy(base: Calibrated) -> fx.GraphModule:
    """A deep copy of the dense graph with clean flowc meta (deepcopy shares meta dicts)."""
    with warnings.catch_warnings():  # torch's pytree deprecation noise from deepcopy
        warnings.simplefilter("ignore", FutureWarning)
        gm = copy.deepcopy(base.gm)
    for ref in linear_nodes(gm):
        layer = ref.node.meta.get("flowc", {}).get("layer")
        ref.node.meta["flowc"] = {"input_norm": base.norms[ref.name]}
        if layer:
            ref.node.meta["flowc"]["layer"] = layer
    return gm


def run_method(base: Calibrated, spec: MethodSpec, bar: bool = False,
               progress: Callable[[str], None] | None = None) -> MethodResult:
    """Prune a fresh copy of the dense model for `spec` and measure it (the copy is freed)."""
    from flowc.passes.base import CompileContext, PassManager, TimingInstrument
    from flowc.passes.pipeline import parse_pipeline

    pipeline = method_pipeline(spec)
    gm = _fresh_copy(base)
    ctx = CompileContext(calib_inputs=base.calib, progress=progress if bar else None,
                         price=base.price)
    ctx.completed.append("calibrate")  # the dense statistics are in meta already
    if spec.method.startswith("measured") or any(
            p in pipeline for p in ("measured-select", "nm-search")):
        ctx.options["sensitivity_table"] = sensitivity_table(base, "none", spec.skip, bar)
        ctx.completed.append("sensitivity")
    timing = TimingInstrument()
    PassManager(parse_pipeline(pipeline), instruments=[timing]).run(gm, ctx)
    select = sum(t for n, t in timing.timings if n not in ("nm-prune", "verify-nm"))
    start = time.perf_counter()
    ppl = perplexity(gm, base.windows, bar)
    seconds = {"select": select, "prune": timing.total("nm-prune"),
               "verify": timing.total("verify-nm"), "eval": time.perf_counter() - start}
    table = sparsity_table(gm, spec.skip)
    sel_report = next((ctx.reports[n] for n in ("nm-search", "measured-select", "flow-select",
                                                 "owl-nm", "uniform-nm") if n in ctx.reports), {})
    selection = {"layers": {r["name"]: r["pattern"] for r in table["layers"] if r["pattern"]},
                 "target": sel_report.get("target", spec.target),
                 "achieved": table["sparsity"], "method": sel_report.get("method", spec.method)}
    if "search" in sel_report:  # nm-search: what the search did, for reports
        srch = sel_report["search"]
        selection["search"] = {"kl": srch["kl"], "start": min(srch["start_kl"].values()),
                               "generations": srch["generations"],
                               "evaluations": srch["evaluations"], "stopped": srch["stopped"],
                               "seconds": ctx.options.get("search_seconds", 0.0)}
    del gm, ctx
    gc.collect()  # GraphModules hold reference cycles: free the pruned copy now
    return MethodResult(spec, pipeline, ppl, table["sparsity"], table["sparsity_all"], seconds,
                        table["layers"], selection)


def sensitivity_table(base: Calibrated, update: str, skip: Sequence[str] = ("lm_head",),
                      bar: bool = False) -> Any:
    """The measured table of the dense model (measured once per update kind, then reused:
    it serves every target and budget; its time is `base.table_seconds[kind]`)."""
    from flowc.passes.flow.problem import resolve_candidates
    from flowc.passes.flow.sensitivity import kl_scales, measure_graph
    from flowc.passes.graph import select_layers

    kind = "obs" if update == "obs" else "none"
    if kind not in base.tables:
        refs, _ = select_layers(linear_nodes(base.gm), None, skip, what="sensitivity")
        start = time.perf_counter()
        table = measure_graph(base.gm, refs, base.calib, resolve_candidates(None),
                              ("none",) if kind == "none" else ("none", "obs"), 4096, 0.01,
                              128, bar, norms=base.norms)
        table.scale = kl_scales(base.gm, refs, base.norms, table, base.calib[:1])
        base.tables[kind] = table
        base.table_seconds[kind] = time.perf_counter() - start
        if kind == "obs":  # the obs table holds the plain errors too
            base.tables.setdefault("none", base.tables["obs"])
    return base.tables[kind]


def dense_result(base: Calibrated, bar: bool = False) -> MethodResult:
    start = time.perf_counter()
    ppl = perplexity(base.gm, base.windows, bar)
    table = sparsity_table(base.gm, ("lm_head",))
    return MethodResult(MethodSpec("dense", 0.0), "", ppl, table["sparsity"],
                        table["sparsity_all"], {"eval": time.perf_counter() - start},
                        table["layers"])


def prepare(model_spec: str, calib_text: str = "brown", eval_text: str | None = None,
            calib_windows: int = 32, eval_windows: int = 40, seq_len: int = 512,
            bar: bool = False, say: Callable[[str], None] | None = None) -> Calibrated:
    """Load, capture at [1, seq_len], build calibration (first 90 %) and evaluation (last
    10 %, or all of `eval_text` when it is another source) windows, and calibrate."""
    from flowc.frontend.text import calibration_windows, evaluation_windows

    say = say or (lambda _msg: None)
    say(f"loading {model_spec} ...")
    model, tokenizer = load_lm(model_spec)
    say(f"capturing at 1 x {seq_len} tokens ...")
    gm = capture_lm(model, seq_len)
    calib = calibration_windows(tokenizer, calib_text, calib_windows, seq_len)
    windows = evaluation_windows(tokenizer, eval_text or calib_text, eval_windows, seq_len,
                                 calib_spec=calib_text)
    say(f"calibrating on {calib_windows} x {seq_len} tokens of {calib_text} ...")
    return calibrate_dense(gm, calib, windows, bar)
