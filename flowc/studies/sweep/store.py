"""The results directory of a sweep: whole Parquet parts only, so a killed run can resume.

    OUT/spec.toml               the spec as given
    OUT/sweep.json              axis names, columns and their types, objectives, spec hash,
                                flowc version (what `--resume` checks against)
    OUT/parts/part-NNNNNN.parquet   one per finished chunk of points

Why parts and renames: a part is written to a temporary name in the same folder, flushed to
disk, then renamed (atomic on POSIX). A SIGKILL at any moment leaves whole parts and at most a
temporary file (removed on resume): never a half row, never a row twice, so resuming = reading
the keys of the parts there and evaluating the other points.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowc.backend.container import write_atomic
from flowc.errors import UsageError
from flowc.studies.sweep.point import OUTPUTS, PROVENANCE, UNITS
from flowc.studies.sweep.spec import INPUTS, Point, SweepSpec

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

IDENTITY = {"point": "int64", "key": "string", "status": "string", "reason": "string"}
PART_GLOB = "part-*.parquet"
TMP_PREFIX = ".tmp-"


def column_types(spec: SweepSpec, points: Sequence[Point]) -> dict[str, str]:
    """Every column's type, the same for every part of the sweep: inputs take the narrowest
    of bool / int64 / float64 / string that holds all their values (lists: JSON text)."""
    types = dict(IDENTITY)
    for col in spec.columns:
        types[col] = _infer([p.values.get(col) for p in points])
    return types | OUTPUTS | PROVENANCE


def _infer(values: list[Any]) -> str:
    vals = [v for v in values if v is not None]
    if vals and all(isinstance(v, bool) for v in vals):
        return "bool"
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return "int64"
    if vals and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
        return "float64"
    return "string"


def arrow_schema(types: dict[str, str]) -> pa.Schema:
    import pyarrow as pa

    kinds = {"bool": pa.bool_(), "int64": pa.int64(), "float64": pa.float64(),
             "string": pa.string()}
    fields = [pa.field(name, kinds[t]) for name, t in types.items()]
    return pa.schema(fields, metadata={"flowc.units": json.dumps(UNITS)})


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "string" and not isinstance(value, str):
        return json.dumps(value)
    if kind == "float64":
        return float(value)
    return value


class ResultStore:
    """One sweep's results directory (see the module docstring)."""

    def __init__(self, out: Path, types: dict[str, str]) -> None:
        self.out, self.parts = out, out / "parts"
        self.types = types
        self.schema = arrow_schema(types)
        self._lock = _lock(out)
        self._next = 1 + max((_part_number(p) for p in self.parts.glob(PART_GLOB)), default=0)

    def close(self) -> None:
        """Release the directory (the lock another `flowc sweep` on it would wait for)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @classmethod
    def open(cls, out: str | Path, spec: SweepSpec, points: Sequence[Point], spec_hash: str,
             resume: bool) -> ResultStore:
        """A new results directory, or (resume) the existing one of the same spec."""
        from flowc.studies.results import flowc_version

        out = Path(out)
        types = column_types(spec, points)
        meta = {"name": spec.sweep.name, "mode": spec.sweep.mode, "axes": list(spec.axes),
                "inputs": [c for c in spec.columns if c in INPUTS],
                "machine_paths": spec.machine_paths, "columns": types,
                "objectives": list(spec.sweep.objectives), "points": len(points),
                "spec_hash": spec_hash, "flowc_version": flowc_version(), "units": UNITS}
        existing = out.is_dir() and any(out.iterdir())
        if resume and existing:
            _check_same_sweep(out, spec_hash)
            for tmp in (out / "parts").glob(f"{TMP_PREFIX}*"):  # a part a kill interrupted
                tmp.unlink()
        elif existing:
            raise UsageError(f"{out}: exists and is not empty: pass --resume to continue the "
                             "sweep stored there, or give a new directory")
        else:
            (out / "parts").mkdir(parents=True, exist_ok=True)
            write_atomic(out / "spec.toml", spec.text.encode())
            write_atomic(out / "sweep.json", (json.dumps(meta, indent=1) + "\n").encode())
        return cls(out, types)

    def done_keys(self) -> set[str]:
        """Keys of the rows already stored."""
        return set(self.stored())

    def stored(self) -> dict[str, tuple[str, str | None]]:
        """{key: (status, check)} of the rows already stored (each part read for those three
        columns only): what resume skips, and what the exit code counts besides this run."""
        import pyarrow.parquet as pq

        out: dict[str, tuple[str, str | None]] = {}
        for part in sorted(self.parts.glob(PART_GLOB)):
            t = pq.read_table(part, columns=["key", "status", "check"]).to_pydict()
            out.update(zip(t["key"], zip(t["status"], t["check"], strict=True), strict=True))
        return out

    def write(self, rows: Sequence[dict[str, Any]]) -> Path:
        """One part holding `rows`, whole or absent (temp file, fsync, rename)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {name: [_cell(r.get(name), kind) for r in rows]
                for name, kind in self.types.items()}
        table = pa.Table.from_pydict(cols, schema=self.schema)
        final = self.parts / f"part-{self._next:06d}.parquet"
        tmp = self.parts / f"{TMP_PREFIX}{final.name}.{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.parts)
        self._next += 1
        return final


def _lock(out: Path) -> Any:
    """An exclusive lock on OUT/.lock for the life of the store: two drivers appending to one
    directory would number their parts alike. The OS drops it when the process dies."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks here: nothing to hold
        return None
    f = open(out / ".lock", "a")  # noqa: SIM115 (held open on purpose, closed by close())
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UsageError(f"{out}: another flowc sweep is writing to this directory") from None
    return f


def _check_same_sweep(out: Path, spec_hash: str) -> None:
    meta_path = out / "sweep.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(f"{out}: not a flowc sweep results directory (no readable "
                         "sweep.json): give a new directory") from None
    if meta.get("spec_hash") != spec_hash:
        raise UsageError(f"{out}: holds a different sweep (spec hash {str(meta.get('spec_hash'))[:12]}"
                         f", this spec {spec_hash[:12]}): --resume continues the same spec "
                         "only; give a new directory")


def _part_number(path: Path) -> int:
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        return 0


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_results(path: str | Path) -> pd.DataFrame:
    """Every stored row of a results directory as one DataFrame sorted by `point`.

    `df.attrs["units"]` names the unit of each numeric output, `df.attrs["sweep"]` is
    sweep.json (axes, objectives, ...). A key stored twice is an error (never expected)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(path)
    try:
        meta = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(f"{out}: not a flowc sweep results directory (no readable "
                         "sweep.json)") from None
    schema = arrow_schema(meta["columns"])
    parts = sorted((out / "parts").glob(PART_GLOB))
    tables = [pq.read_table(p, schema=schema) for p in parts]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    df = table.to_pandas().sort_values("point", kind="stable").reset_index(drop=True)
    dup = df["key"][df["key"].duplicated()]
    if len(dup):
        raise UsageError(f"{out}: point key {dup.iloc[0][:12]} is stored twice (parts were "
                         "copied in by hand?)")
    df.attrs["units"] = dict(meta.get("units", UNITS))
    df.attrs["sweep"] = meta
    return df

