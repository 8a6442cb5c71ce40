"""The sweep specification: a TOML file (or a dict) -> a validated `SweepSpec` -> ordered `Point`s.

Why validate everything up front: a 10,000-point sweep that fails at point 7,000 because
`macro.rows = 48` is not a power of two wastes the 6,999 points before it and leaves a results
directory half full. So `points_of` builds every point's machine (`MachineConfig.replace`,
which checks it like a machine file; build.py) before any work starts, and a bad one is
reported with the point's values and the field path.

Keys of `[fixed]`, `[axes]` and `[[points]]` are either sweep inputs (`INPUTS`: target, model,
nm, phase, tokens, kv_len) or dotted paths into the machine description ("macros",
"macro.act_bw_bits", "energy.dram_read.pj"). docs/sweeps.md is the reference.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flowc.errors import UsageError
from flowc.machine import MachineConfig

INPUTS = ("target", "model", "nm", "phase", "tokens", "kv_len")
ANALYTIC_ONLY = ("phase", "tokens", "kv_len")
DEFAULTS: dict[str, Any] = {"target": "flexcim", "nm": "dense"}
ANALYTIC_DEFAULTS: dict[str, Any] = {"phase": "prefill", "tokens": 2048}
EVAL_WINDOWS = 4  # run mode default: enough for a perplexity, cheap beside the compile
OBJECTIVES = ("latency_s", "energy_pj", "edp_pj_s", "cycles", "perplexity")
PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


class SweepSection(BaseModel):
    """`[sweep]`: how points are drawn and evaluated."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = "sweep"
    mode: Literal["analytic", "run"] = "analytic"
    sample: Literal["grid", "random"] = "grid"
    samples: int | None = Field(None, gt=0)
    seed: int = 0
    prune: bool = False
    chunk: int | None = Field(None, gt=0)  # points per task (default: chosen from the size)
    objectives: list[Literal[OBJECTIVES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["latency_s", "energy_pj"], min_length=1)
    # run mode, hf: language models: held-out windows the compile measures perplexity on
    eval_windows: int = Field(EVAL_WINDOWS, ge=0)


class _SpecFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sweep: SweepSection = Field(default_factory=SweepSection)
    fixed: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list)


@dataclass
class SweepSpec:
    """A validated spec. `base_dir` resolves relative file names (machine, model, assignment
    files) against the spec file's folder; `text` is the spec as given (copied to OUT)."""

    sweep: SweepSection
    fixed: dict[str, Any]
    axes: dict[str, list[Any]]
    points: list[dict[str, Any]]
    source: str = "<dict>"
    base_dir: Path = field(default_factory=Path.cwd)
    text: str = ""

    @property
    def columns(self) -> list[str]:
        """Input columns of a result row: the sweep inputs in use, then machine paths."""
        keys = [*self.axes, *self.fixed, *(k for p in self.points for k in p)]
        inputs = [k for k in INPUTS if k in keys or k in self._defaults()]
        paths = list(dict.fromkeys(k for k in keys if k not in INPUTS))
        return inputs + paths

    @property
    def machine_paths(self) -> list[str]:
        return [c for c in self.columns if c not in INPUTS]

    def _defaults(self) -> dict[str, Any]:
        return {**DEFAULTS, **(ANALYTIC_DEFAULTS if self.sweep.mode == "analytic" else {})}

    def error(self, where: str, msg: str) -> UsageError:
        return UsageError(f"{self.source}: {where}: {msg}")


@dataclass
class Point:
    """One design point: `values` are the row's input columns (as given; nm in canonical
    text), `machine` the built machine object, `key` the sha256 resume key of the inputs."""

    index: int
    key: str
    values: dict[str, Any]
    machine: MachineConfig
    machine_hash: str
    model: str  # resolved: a built-in/example name, or an absolute file path
    nm: str  # canonical: "dense", "2:4", "assignment:FILE", "pipeline:TEXT"
    assignment: str | None = None  # resolved assignment file path

    def describe(self) -> str:
        return ", ".join(f"{k}={_show(v)}" for k, v in self.values.items())


# -- loading ------------------------------------------------------------------------------------


def load_spec(spec: str | Path | Mapping[str, Any] | SweepSpec) -> SweepSpec:
    """A TOML file path (or a dict of the same shape) -> SweepSpec; errors are one line with
    the file and the field path."""
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, Mapping):
        raw, source, base, text = dict(spec), "<dict>", Path.cwd(), _dict_to_toml(spec)
    else:
        path = Path(spec)
        try:
            text = path.read_text(encoding="utf-8")
            raw = tomllib.loads(text)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the sweep spec ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path}: not valid TOML ({exc})") from None
        source, base = str(path), path.resolve().parent
    try:
        parsed = _SpecFile.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(f"{source}: {_pydantic_line(exc)}") from None
    out = SweepSpec(parsed.sweep, parsed.fixed, parsed.axes, parsed.points, source, base, text)
    _check_structure(out)
    return out


def _pydantic_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = _path(err["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    got = f", got {err['input']!r}" if err["type"] != "missing" and "input" in err else ""
    return f"{where}: {err['msg']}{got}{more}"


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = f'"{part}"' if "." in str(part) or " " in str(part) else str(part)
            out += f".{text}" if out else text
    return out or "spec"


def _check_structure(spec: SweepSpec) -> None:
    """Keys and values of [fixed], [axes], [[points]] (types; machines come in points_of)."""
    s = spec.sweep
    if s.sample == "random" and s.samples is None:
        raise spec.error("sweep.samples", "required when sample = \"random\"")
    if s.sample == "grid" and s.samples is not None:
        raise spec.error("sweep.samples", "only for sample = \"random\" (grid takes every point)")
    if s.mode == "analytic" and "eval_windows" in s.model_fields_set:
        raise spec.error("sweep.eval_windows", "run mode only (an analytic point has no "
                         "weights to measure a perplexity on)")
    for key, values in spec.axes.items():
        if key in spec.fixed:
            raise spec.error(_path(("axes", key)), "also in [fixed]: give it in one place")
        if not values:
            raise spec.error(_path(("axes", key)), "empty list: an axis needs at least one value")
        for i, v in enumerate(values):
            _check_value(spec, key, v, ("axes", key, i))
    for key, v in spec.fixed.items():
        _check_value(spec, key, v, ("fixed", key))
    known = set(spec.axes) | set(spec.fixed)
    for i, point in enumerate(spec.points):
        for key, v in point.items():
            if key not in known and key not in INPUTS:
                raise spec.error(_path(("points", i, key)), "not an axis or fixed key (add it "
                                 "to [axes] or [fixed] so every row has the column)")
            _check_value(spec, key, v, ("points", i, key))
        missing = [k for k in spec.axes if k not in point and k not in spec.fixed]
        if missing:
            raise spec.error(_path(("points", i)), f"missing axis {missing[0]!r} (every "
                             "explicit point gives a value for every axis)")
    if "model" not in known and not any("model" in p for p in spec.points):
        raise spec.error("fixed.model", "required (or an axis 'model')")
    if s.mode == "analytic" and any(_nm_kind(v) == "pipeline" for v in _all_values(spec, "nm")):
        raise spec.error("nm", "{ pipeline = ... } needs mode = \"run\" (analytic mode prices "
                         "uniform patterns and assignment files)")


def _all_values(spec: SweepSpec, key: str) -> list[Any]:
    return ([spec.fixed[key]] if key in spec.fixed else []) + spec.axes.get(key, []) + [
        p[key] for p in spec.points if key in p]


def _check_value(spec: SweepSpec, key: str, v: Any, loc: tuple[Any, ...]) -> None:
    where = _path(loc)
    if key in ANALYTIC_ONLY and spec.sweep.mode == "run":
        raise spec.error(where, "analytic mode only (a run uses the model's own inputs)")
    if key in ("target", "model") and not (isinstance(v, str) and v):
        raise spec.error(where, f"expected a non-empty string, got {v!r}")
    if key == "phase" and v not in ("prefill", "decode"):
        raise spec.error(where, f"expected \"prefill\" or \"decode\", got {v!r}")
    if key in ("tokens", "kv_len") and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise spec.error(where, f"expected a positive integer, got {v!r}")
    if key == "nm":
        try:
            canonical_nm(v)
        except UsageError as exc:
            raise spec.error(where, str(exc)) from None
    if key not in INPUTS:
        if not PATH_RE.match(key):
            raise spec.error(where, "not a sweep input (" + ", ".join(INPUTS) + ") nor a "
                             "dotted machine path such as macro.rows")
        if isinstance(v, dict):
            raise spec.error(where, f"a machine field takes a value, got a table {v!r}")


def _nm_kind(v: Any) -> str:
    if isinstance(v, dict):
        return next(iter(v), "?")
    return "pattern"


def canonical_nm(v: Any) -> str:
    """'dense', 'n:m', [n, m], {assignment = FILE} or {pipeline = TEXT} -> one text form."""
    if isinstance(v, dict):
        if len(v) == 1 and isinstance(next(iter(v.values())), str):
            kind, text = next(iter(v.items()))
            if kind in ("assignment", "pipeline") and text:
                return f"{kind}:{text}"
        raise UsageError(f"expected {{ assignment = \"FILE.json\" }} or {{ pipeline = \"...\" }}, "
                         f"got {v!r}")
    if v == "dense":
        return "dense"
    parts = v.split(":") if isinstance(v, str) else list(v) if isinstance(v, list) else []
    if len(parts) == 2 and all(str(p).strip().isdigit() for p in parts):
        n, m = (int(str(p)) for p in parts)
        if 1 <= n <= m:
            return "dense" if n == m else f"{n}:{m}"
    raise UsageError(f"expected \"n:m\" (1 <= n <= m), [n, m], \"dense\", {{ assignment = ... }} "
                     f"or {{ pipeline = ... }}, got {v!r}")


# -- points -------------------------------------------------------------------------------------


def grid_size(spec: SweepSpec) -> int:
    """Points of the full product of the axes (1 without axes: the [fixed] point)."""
    size = 1
    for values in spec.axes.values():
        size *= len(values)
    return size


def combos(spec: SweepSpec) -> list[dict[str, Any]]:
    """Axis values of every drawn point, in spec order: the grid (last axis fastest) or a
    seeded sample of its indices (sorted), then the explicit [[points]]. Without axes the
    grid is the one point of [fixed], unless [[points]] list the points themselves."""
    names, lists = list(spec.axes), list(spec.axes.values())
    if not names and spec.points:
        return [dict(p) for p in spec.points]
    size = grid_size(spec)
    if spec.sweep.sample == "grid":
        drawn = [dict(zip(names, c, strict=True)) for c in itertools.product(*lists)]
    else:
        k = min(spec.sweep.samples or 0, size)
        picks = sorted(random.Random(spec.sweep.seed).sample(range(size), k))
        drawn = [_unrank(names, lists, i) for i in picks]
    return drawn + [dict(p) for p in spec.points]


def _unrank(names: list[str], lists: list[list[Any]], i: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in zip(reversed(names), reversed(lists), strict=True):
        i, r = divmod(i, len(values))
        out[name] = values[r]
    return {n: out[n] for n in names}


def points_of(spec: SweepSpec | str | Path | Mapping[str, Any]) -> list[Point]:
    """Every point of the spec with its machine built and validated, in spec order."""
    spec = load_spec(spec)
    from flowc.studies.sweep.build import PointBuilder

    builder = PointBuilder(spec)
    points, seen = [], {}
    for i, combo in enumerate(combos(spec)):
        p = builder.point(len(points), {**spec._defaults(), **spec.fixed, **combo})
        if p.key in seen:
            raise spec.error(f"point {i} ({p.describe()})", f"same inputs as point "
                             f"{seen[p.key]}: every point must differ")
        seen[p.key] = p.index
        points.append(p)
    return points


def spec_hash(spec: SweepSpec, points: list[Point]) -> str:
    """What resume compares: the evaluation settings and every point's key, in order (not
    the TOML text, so comments and key order do not matter; not `chunk`, which does not
    change any result)."""
    # eval_windows only changes run-mode rows (left out in analytic mode, as before it existed)
    settings = spec.sweep.model_dump(exclude={"chunk"} | (
        {"eval_windows"} if spec.sweep.mode == "analytic" else set()))
    return hashlib.sha256(_canonical({"sweep": settings, "points": [p.key for p in points]})
                          .encode()).hexdigest()


def _canonical(x: Any) -> str:
    return json.dumps(x, sort_keys=True, separators=(",", ":"), default=str)


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _dict_to_toml(d: Mapping[str, Any]) -> str:
    """A spec given as a dict, recorded as JSON inside a TOML comment-free string (OUT/spec.toml
    must say what ran; a dict has no TOML text of its own)."""
    return "# flowc sweep spec given as a Python dict (JSON below)\n# " + json.dumps(
        d, sort_keys=True, default=str).replace("\n", "\n# ") + "\n"
