"""Building the points of a sweep spec: each point's machine (target + dotted-path fields via
`MachineConfig.replace`, validated), its inputs checked, its resume key.

Kept apart from spec.py (the file format) because this is the part that costs: 10,000 points
build in a few seconds, so machines, file names, file hashes and input checks are cached
per distinct value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowc.errors import UsageError
from flowc.machine import MachineConfig, load_machine
from flowc.machine.errors import MachineConfigError
from flowc.studies.sweep.spec import Point, SweepSpec, _canonical, _show, canonical_nm


class PointBuilder:
    """Builds points, caching base machines, built machines and file hashes."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec
        self.columns = spec.columns
        self.bases: dict[str, MachineConfig] = {}
        self.machines: dict[str, tuple[MachineConfig, str]] = {}
        self.hashes: dict[str, str | None] = {}
        self.resolved: dict[str, str] = {}
        self.checked: set[tuple[str, str | None]] = set()

    def resolve(self, name: str) -> str:
        """A relative file name against the spec's folder; other names unchanged."""
        if name not in self.resolved:
            p = Path(name)
            if p.suffix in (".toml", ".json", ".pt2", ".pt", ".fcim") or "/" in name:
                self.resolved[name] = str(p if p.is_absolute() else self.spec.base_dir / p)
            else:
                self.resolved[name] = name
        return self.resolved[name]

    def file_hash(self, path: str) -> str | None:
        if path not in self.hashes:
            p = Path(path)
            h = None
            if p.is_file():
                digest = hashlib.sha256()
                with p.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                h = digest.hexdigest()
            self.hashes[path] = h
        return self.hashes[path]

    def point(self, index: int, values: dict[str, Any]) -> Point:
        row = {c: values.get(c) for c in self.columns}
        row["nm"] = canonical_nm(row["nm"])
        machine, mhash = self.machine(index, row)
        model = self.resolve(row["model"])
        assignment = None
        if row["nm"].startswith("assignment:"):
            assignment = self.resolve(row["nm"].split(":", 1)[1])
        self.check_inputs(index, row, model, assignment)
        files = {k: self.file_hash(f) for k, f in (("model", model), ("assignment", assignment))
                 if f is not None and f != row.get(k)}
        key_doc = {"mode": self.spec.sweep.mode, "inputs": row, "machine": mhash, "files": files}
        key = hashlib.sha256(_canonical(key_doc).encode()).hexdigest()
        return Point(index, key, row, machine, mhash, model, row["nm"], assignment)

    def check_inputs(self, index: int, row: dict[str, Any], model: str,
                     assignment: str | None) -> None:
        """The model (and assignment file) can be read: checked once per distinct value, so
        a typo fails before any work, not in every row."""
        if (model, assignment) in self.checked:
            return
        try:
            if self.spec.sweep.mode == "analytic":
                from flowc.studies.analytic import load_assignment
                from flowc.studies.analytic_models import shapes_of

                shapes_of(model)
                if assignment is not None:
                    load_assignment(assignment)
            else:
                _check_run_model(model)
        except UsageError as exc:
            desc = ", ".join(f"{k}={_show(v)}" for k, v in row.items())
            field = "nm" if assignment is not None and "assignment" in str(exc) else "model"
            raise self.spec.error(f"point {index} ({desc})", f"{field}: {exc}") from None
        self.checked.add((model, assignment))

    def machine(self, index: int, row: dict[str, Any]) -> tuple[MachineConfig, str]:
        """The point's machine, built and validated once per distinct (target, fields)."""
        from flowc.studies.results import machine_entry

        paths = [p for p in self.spec.machine_paths if p in row]
        cache_key = repr([row["target"], *(row[p] for p in paths)])
        if cache_key in self.machines:
            return self.machines[cache_key]
        flat = {p: row[p] for p in paths}
        for path in paths:  # an energy value the sweep sets cites the sweep, not the file
            parts = path.split(".")
            if parts[0] == "energy" and len(parts) == 3 and parts[2] == "pj":
                flat.setdefault(f"energy.{parts[1]}.source", f"flowc sweep: {path} = {flat[path]}")
        changes = nested_changes(flat)
        target = row["target"]
        try:
            if target not in self.bases:
                self.bases[target] = load_machine(self.resolve(target))
            m = self.bases[target].replace(**changes) if changes else self.bases[target]
        except (MachineConfigError, UsageError) as exc:
            desc = ", ".join(f"{k}={_show(v)}" for k, v in row.items())
            raise self.spec.error(f"point {index} ({desc})", str(exc)) from None
        self.machines[cache_key] = (m, machine_entry(m.to_dict())["hash"])
        return self.machines[cache_key]


def _check_run_model(model: str) -> None:
    from flowc.frontend.load import is_hf_source
    from flowc.studies.examples import EXAMPLES

    if model in EXAMPLES or is_hf_source(model) or Path(model).is_file():
        return
    raise UsageError(f"{model!r} is not a built-in example ({', '.join(EXAMPLES)}), an hf: "
                     "source or an existing model file")


def nested_changes(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"macro.rows": 64, "macros": 8} -> {"macro": {"rows": 64}, "macros": 8} (for replace)."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        parts = path.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out
