"""One result model for every command: typed reports with one JSON form and one DataFrame form.

flowrun, `flowc compare` and `flowc analytic` produce a `CostReport` (cycles, time and energy
per target, per phase and per layer); `flowc eval` produces an `EvalReport` (perplexity and
sparsity per method). Both share the envelope written by `Report.to_dict`: `schema_version`,
`flowc_version`, `kind`, `model`, `pipeline`, the machines with their hashes, and `units`, the
one place units are named (the fields themselves carry none: `energy` is in `units["energy"]`).
`results.schema.json` beside this module is the JSON schema (docs/results-format.md), and
tests/studies/test_results_schema.py validates real outputs of all four commands against it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from flowc.runtime.report import RunReport
    from flowc.studies.analytic import AnalyticReport
    from flowc.studies.compare import Comparison
    from flowc.studies.evaluate import MethodResult

SCHEMA_VERSION = 1
# The units of every number in a report, named once (docs/results-format.md).
UNITS: dict[str, str] = {"cycles": "cycles", "time": "s", "energy": "pJ", "macs": "MAC",
                         "edp": "pJ*s", "seconds": "s", "sparsity": "fraction"}


def flowc_version() -> str:
    from flowc import __version__

    return __version__


def machine_entry(config: dict[str, Any]) -> dict[str, Any]:
    """A machine as reports record it: its description and the sha256 of its canonical JSON
    (sorted keys, no spaces), so two reports on "the same" machine can be checked to be."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return {"hash": hashlib.sha256(text.encode()).hexdigest(), "config": config}


@dataclass
class LayerRow:
    """One layer's cost: `pattern` is what the layer runs as ("2:4", "1:8->1:4" when the
    machine rounds up to a supported pattern, "dense", "attn" or "-" for vector work)."""

    name: str
    kind: str
    pattern: str
    macs: int
    cycles: int
    energy: float
    # CiM layers of a program: K, the zero columns padding K to whole N:M groups, and the K
    # the macro passes cover (None elsewhere and in analytic mode)
    in_features: int | None = None
    k_pad: int | None = None
    padded_in: int | None = None


@dataclass
class CostResult:
    """Totals and layers of one program (or one phase of one model) on one target."""

    target: str
    cycles: int
    time: float
    energy: float
    macs: int
    setup_cycles: int
    setup_energy: float
    layers: list[LayerRow]
    phase: str | None = None  # analytic: prefill | decode
    tokens: int | None = None  # analytic: vectors per Linear
    kv_len: int | None = None  # analytic: cached tokens attended to

    @property
    def edp(self) -> float:
        return self.energy * self.time


@dataclass
class Report:
    """The envelope shared by every report (see the module docstring)."""

    kind: str
    model: str
    pipeline: str | None
    machines: dict[str, dict[str, Any]]

    def envelope(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "flowc_version": flowc_version(),
                "kind": self.kind, "model": self.model, "pipeline": self.pipeline,
                "machines": self.machines, "units": dict(UNITS)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class CostReport(Report):
    """flowrun (`kind="run"`), compare and analytic: one `CostResult` per target and phase."""

    results: list[CostResult] = field(default_factory=list)
    check: dict[str, Any] | None = None  # run: the ONNX Runtime verdict (docs/numerics.md)
    agreement: dict[str, float] | None = None  # compare: max |output - primary's output|
    primary: str | None = None  # compare: the target the ratios are taken against
    numerics: str = "int8"  # run: int8 (the machine) or fp32 (CiM GEMMs unquantised)
    notes: dict[str, str] = field(default_factory=dict)

    def result(self, target: str | None = None, phase: str | None = None) -> CostResult:
        """The result of `target` (default: the first) in `phase` (default: the first)."""
        for r in self.results:
            if target in (None, r.target) and phase in (None, r.phase):
                return r
        raise KeyError(f"no result for target {target!r}, phase {phase!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**self.envelope(), "results": [asdict(r) for r in self.results],
                "check": self.check, "agreement": self.agreement, "primary": self.primary,
                "numerics": self.numerics, "notes": self.notes}

    def to_dataframe(self, layers: bool = False) -> pd.DataFrame:
        """One row per target and phase (totals), or with `layers` one per layer; the units
        are `UNITS` (also in `df.attrs["units"]`)."""
        import pandas as pd

        rows = []
        for r in self.results:
            base = {"target": r.target, "phase": r.phase}
            if layers:
                rows += [{**base, **asdict(lay)} for lay in r.layers]
            else:
                rows.append({**base, "cycles": r.cycles, "time": r.time, "energy": r.energy,
                             "edp": r.edp, "macs": r.macs, "setup_cycles": r.setup_cycles,
                             "setup_energy": r.setup_energy, "tokens": r.tokens,
                             "kv_len": r.kv_len})
        df = pd.DataFrame(rows)
        df.attrs["units"] = dict(UNITS)
        return df


@dataclass
class Evaluation:
    """One method's perplexity and sparsity (`flowc eval`)."""

    method: str
    label: str
    pipeline: str
    target_sparsity: float | None  # None for the dense model and for a given pipeline
    sparsity: float  # achieved over the prunable layers
    sparsity_all: float  # over every Linear
    ppl: float
    nll: float
    tokens: int
    seconds: dict[str, float]
    layers: list[dict[str, Any]]  # name, pattern ("n:m" or "dense"), sparsity


@dataclass
class EvalReport(Report):
    calib_text: str = ""
    eval_text: str = ""
    seq_len: int = 0
    calib_windows: int = 0
    eval_windows: int = 0
    calib_seconds: float = 0.0
    evaluations: list[Evaluation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.envelope(), "calib_text": self.calib_text, "eval_text": self.eval_text,
                "seq_len": self.seq_len, "calib_windows": self.calib_windows,
                "eval_windows": self.eval_windows, "calib_seconds": self.calib_seconds,
                "evaluations": [asdict(e) for e in self.evaluations]}

    def to_dataframe(self, layers: bool = False) -> pd.DataFrame:
        import pandas as pd

        if layers:
            rows = [{"method": e.label, **lay} for e in self.evaluations for lay in e.layers]
        else:
            rows = [{k: v for k, v in asdict(e).items() if k not in ("layers", "seconds")}
                    | {f"seconds_{k}": v for k, v in e.seconds.items()}
                    for e in self.evaluations]
        df = pd.DataFrame(rows)
        df.attrs["units"] = dict(UNITS)
        return df


# -- builders from the objects the stages return ------------------------------------------------


def pass_name(label: str) -> str:
    """The layer name passes use (`0`, `0.fc`) for a program label: assembly names cannot
    start with a digit, so the lowering writes `_0` (flowc.backend.lower.label); reports undo
    that, so a name in a report can be given to a pass option such as `layers=`."""
    return label[1:] if re.match(r"_\d", label) else label


def cost_result(report: RunReport, target: str, clock_mhz: float) -> CostResult:
    from flowc.runtime.report import pattern_text

    layers = [LayerRow(pass_name(lc.name), lc.kind, pattern_text(report.infos.get(lc.name)), int(lc.macs),
                       int(lc.cycles), float(lc.energy_pj), *_padding(report.infos.get(lc.name)))
              for lc in report.layers]
    return CostResult(target, int(report.total_cycles), report.total_cycles / (clock_mhz * 1e6),
                      float(report.total_energy_pj), sum(lay.macs for lay in layers),
                      int(report.setup_cycles), float(report.setup_energy_pj), layers)


def _padding(info: Any) -> tuple[int | None, int | None, int | None]:
    if info is None or info.kind != "gemm":
        return None, None, None
    return int(info.in_features), int(info.k_pad), int(info.padded_in)


def from_run(report: RunReport, machine: dict[str, Any], model: str,
             pipeline: str | None) -> CostReport:
    """flowrun's report: one result on the image's machine, the check, the notes."""
    name = str(machine["name"])
    notes = {k: str(v) for k, v in report.extra.get("notes", {}).items()}
    padded = [i for i in report.infos.values() if i.kind == "gemm" and i.k_pad]
    if padded:
        notes["zero-padded K (whole N:M groups; the zero columns fill macro rows and are "
              "priced)"] = ", ".join(f"{i.name} K={i.in_features} -> {i.in_features + i.k_pad}"
                                     for i in padded)
    return CostReport("run", model, pipeline, {name: machine_entry(machine)},
                      [cost_result(report, name, report.clock_mhz)],
                      check=report.check.to_dict() if report.check else None,
                      numerics=report.numerics, notes=notes)


def from_comparison(cmp: Comparison) -> CostReport:
    results = [cost_result(run.report, name, run.machine.clock_mhz)
               for name, run in cmp.runs.items()]
    machines = {name: machine_entry(run.machine.to_dict()) for name, run in cmp.runs.items()}
    return CostReport("compare", cmp.model, cmp.pipeline, machines, results,
                      agreement=dict(cmp.agreement), primary=cmp._primary())


def from_analytic(reports: dict[str, dict[str, AnalyticReport]], model: str) -> CostReport:
    """`flowc analytic`: {phase: {target: AnalyticReport}} -> one result per target and phase."""
    results, machines, notes, assignment = [], {}, {}, None
    for phase, by_target in reports.items():
        for name, r in by_target.items():
            layers = [LayerRow(lc.name, lc.kind, r.patterns.get(lc.name, "-"), int(lc.macs),
                               int(lc.cycles), float(lc.energy_pj)) for lc in r.layers]
            setup_cycles, setup_energy = r.setup()
            results.append(CostResult(name, r.cycles(), r.seconds(), r.energy_pj(),
                                      sum(lay.macs for lay in layers), int(setup_cycles),
                                      float(setup_energy), layers, phase, r.tokens, r.kv_len))
            machines[name] = machine_entry(r.machine.to_dict())
            notes.update({f"{phase}: {k}": str(v) for k, v in r.notes.items()})
            assignment = r.assignment
    return CostReport("analytic", model, f"N:M {assignment}", machines, results, notes=notes)


def from_eval(results: list[MethodResult], model: str, calib_text: str, eval_text: str | None,
              seq_len: int, calib_windows: int, eval_windows: int,
              calib_seconds: float) -> EvalReport:
    evals = [Evaluation(r.spec.method, r.spec.name(), r.pipeline,
                        None if r.spec.method in ("dense", "pipeline") else float(r.spec.target),
                        float(r.sparsity), float(r.sparsity_all), float(r.ppl.ppl),
                        float(r.ppl.nll), int(r.ppl.tokens),
                        {k: float(v) for k, v in r.seconds.items()},
                        [_eval_layer(row) for row in r.layers]) for r in results]
    pipeline = next((e.pipeline for e in reversed(evals)), None)
    return EvalReport("eval", model, pipeline, {}, calib_text=calib_text,
                      eval_text=eval_text or calib_text, seq_len=seq_len,
                      calib_windows=calib_windows, eval_windows=eval_windows,
                      calib_seconds=float(calib_seconds), evaluations=evals)


def _eval_layer(row: dict[str, Any]) -> dict[str, Any]:
    pat = row.get("pattern")
    return {"name": str(row["name"]), "pattern": "dense" if pat is None else f"{pat[0]}:{pat[1]}",
            "sparsity": float(row["sparsity"])}


def schema() -> dict[str, Any]:
    """The JSON schema of every report (`results.schema.json`, docs/results-format.md)."""
    from importlib.resources import files

    return json.loads(files("flowc.studies").joinpath("results.schema.json").read_text())


def validate(data: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` (with the field path) if `data` is not a report."""
    import jsonschema

    jsonschema.Draft202012Validator(schema()).validate(data)
