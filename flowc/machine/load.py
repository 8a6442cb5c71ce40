"""Reading and validating machine descriptions (dicts, TOML/JSON files, built-in targets).

A file may start from a built-in target with `extends = "flexcim"`: its tables are merged key by
key onto that target's (lists and values replace), so a variant states only what differs.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flowc.machine.config import (
    PAIR_SELECTS,
    RESIDENCIES,
    MachineConfig,
    MacroConfig,
    VectorConfig,
)
from flowc.machine.energy import parse_energy
from flowc.machine.errors import MachineConfigError, suggest

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "machines"

Check = Callable[[object, str], object]


def _pos_int(v: object, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise MachineConfigError(f"{path}: expected a positive integer, got {v!r}")
    return v


def _nonneg_int(v: object, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise MachineConfigError(f"{path}: expected a non-negative integer, got {v!r}")
    return v


def _pow2(v: object, path: str) -> int:
    v = _pos_int(v, path)
    if v & (v - 1):
        raise MachineConfigError(f"{path}: expected a power of two, got {v}")
    return v


def _pos_num(v: object, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < float("inf"):
        raise MachineConfigError(f"{path}: expected a positive finite number, got {v!r}")
    return float(v)


def _bool(v: object, path: str) -> bool:
    if not isinstance(v, bool):
        raise MachineConfigError(f"{path}: expected true or false, got {v!r}")
    return v


def _str(v: object, path: str) -> str:
    if not isinstance(v, str):
        raise MachineConfigError(f"{path}: expected a string, got {v!r}")
    return v


def _choice(options: tuple[str, ...]) -> Check:
    def check(v: object, path: str) -> str:
        if v not in options:
            raise MachineConfigError(f"{path}: expected one of {', '.join(options)}, got {v!r}")
        return v  # type: ignore[return-value]

    return check


def _pattern(v: object, path: str) -> tuple[int, int]:
    parts = v.split(":") if isinstance(v, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise MachineConfigError(f"{path}: expected 'n:m' with integers, got {v!r}")
    return int(parts[0]), int(parts[1])


def _patterns(v: object, path: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(v, list | tuple):
        raise MachineConfigError(f"{path}: expected a list of 'n:m' strings, got {v!r}")
    out = tuple(_pattern(p, f"{path}[{i}]") for i, p in enumerate(v))
    if len(set(out)) != len(out):
        raise MachineConfigError(f"{path}: a pattern is listed twice")
    return out


MACRO_FIELDS: dict[str, Check] = {
    "subarrays": _pow2, "rows": _pow2, "cols": _pos_int, "weight_bits": _pos_int,
    "act_bits": _pos_int, "meta_bits": _nonneg_int, "input_bits": _pos_int,
    "pairs": _pos_int, "act_bw_bits": _pos_int,
}
VECTOR_FIELDS: dict[str, Check] = {f.name: _nonneg_int for f in dataclasses.fields(VectorConfig)}
VECTOR_FIELDS["lanes"] = _pos_int
TOP_FIELDS: dict[str, Check] = {
    "name": _str, "description": _str, "patterns": _patterns, "dense": _bool,
    "metadata": _bool, "pair_select": _choice(PAIR_SELECTS), "residency": _choice(RESIDENCIES),
    "load_overlap": _bool, "macros": _pos_int, "clock_mhz": _pos_num,
}
TABLES = ("macro", "vector", "energy")


def _read(raw: object, path: str, checks: Mapping[str, Check]) -> dict[str, Any]:
    """Check a table's keys (unknown keys get a close-match hint) and each value's type."""
    if not isinstance(raw, Mapping):
        raise MachineConfigError(f"{path or 'machine'}: expected a table, got {raw!r}")
    known = tuple(checks)
    out = {}
    for key, value in raw.items():
        where = f"{path}.{key}" if path else key
        if key not in checks:
            raise MachineConfigError(f"{where}: unknown key{suggest(key, known)} "
                                     f"(known: {', '.join(sorted(known))})")
        out[key] = checks[key](value, where)
    return out


def parse_machine(d: Mapping[str, Any]) -> MachineConfig:
    """Validate a machine dict (after resolving `extends`) into a MachineConfig."""
    d = resolve_extends(d)
    top_checks = {**TOP_FIELDS, **{t: (lambda v, p: v) for t in TABLES}}
    top = _read(d, "", top_checks)
    macro = MacroConfig(**_read(top.pop("macro", {}), "macro", MACRO_FIELDS))
    vector = VectorConfig(**_read(top.pop("vector", {}), "vector", VECTOR_FIELDS))
    energy = parse_energy(top.pop("energy", {}))
    cfg = MachineConfig(macro=macro, vector=vector, energy=energy, **top)
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: MachineConfig) -> None:
    """Cross-field rules: what the macro can physically run, and a complete energy table."""
    mc = cfg.macro
    if mc.input_bits not in (1, 2):
        raise MachineConfigError(f"macro.input_bits: expected 1 (bit-serial) or 2 (radix-4 "
                                 f"Booth), got {mc.input_bits}")
    if mc.act_bits % mc.input_bits:
        raise MachineConfigError(f"macro.act_bits: {mc.act_bits} is not a multiple of "
                                 f"input_bits {mc.input_bits}")
    if not cfg.metadata and cfg.patterns:
        raise MachineConfigError("patterns: a machine without metadata runs dense only; "
                                 "use patterns = [] and dense = true")
    if not cfg.dense and not cfg.patterns:
        raise MachineConfigError("patterns: the machine supports no pattern at all")
    for i, (n, m) in enumerate(cfg.patterns):
        _check_supported(cfg, n, m, f"patterns[{i}]")
    missing = [a for a in cfg.required_actions() if a not in cfg.energy]
    if missing:
        raise MachineConfigError(f"energy.{missing[0]}: missing value for action "
                                 f"'{missing[0]}' (this machine needs: {', '.join(missing)})")


def _check_supported(cfg: MachineConfig, n: int, m: int, path: str) -> None:
    p, pairs = cfg.macro.subarrays, cfg.macro.pairs
    why = ""
    if not 1 <= n < m:
        why = "needs 1 <= n < m (dense is the 'dense' flag)"
    elif n & (n - 1) or m & (m - 1):
        why = "n and m must be powers of two"
    elif p % n:
        why = f"a gang of n sub-macros must divide P = {p}"
    elif m > 2 * pairs:
        why = f"m must be at most 2 * pairs = {2 * pairs}"
    if why:
        raise MachineConfigError(f"{path}: pattern {n}:{m} cannot run on this macro: {why}")


def resolve_extends(d: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """Merge `d` onto the built-in it extends (recursively), dropping the `extends` key."""
    d = dict(d)
    base_name = d.pop("extends", None)
    if base_name is None:
        return d
    if depth > 8:
        raise MachineConfigError("extends: chain longer than 8 (a cycle?)")
    base = resolve_extends(_builtin_dict(_str(base_name, "extends")), depth + 1)
    return _merge(base, d)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def builtin_machines() -> tuple[str, ...]:
    """Names of the built-in targets (the TOML files in flowc/machines/)."""
    return tuple(sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")))


def _builtin_dict(name: str) -> dict[str, Any]:
    names = builtin_machines()
    path = BUILTIN_DIR / f"{name}.toml"
    if name not in names:  # a name, never a path: `extends` cannot reach other files
        raise MachineConfigError(f"extends: unknown built-in machine '{name}'"
                                 f"{suggest(name, names)} (known: {', '.join(names)})")
    return _read_file(path)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return json.loads(text)
        return tomllib.loads(text)
    except (OSError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise MachineConfigError(f"{path}: {exc}") from None


def load_file(path: str | Path) -> MachineConfig:
    """Load a .toml or .json machine file; errors are prefixed with the file name."""
    path = Path(path)
    if path.suffix not in (".toml", ".json"):
        raise MachineConfigError(f"{path}: expected a .toml or .json machine file")
    try:
        return parse_machine(_read_file(path))
    except MachineConfigError as exc:
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def load_machine(name_or_path: str | Path) -> MachineConfig:
    """A built-in target by name ("flexcim", "dcim-dense", "vegeta", "sdp", "stc24") or a file."""
    text = str(name_or_path)
    if text in builtin_machines():
        return parse_machine(_builtin_dict(text))
    if text.endswith((".toml", ".json")):
        return load_file(text)
    names = builtin_machines()
    raise MachineConfigError(f"machine '{text}': not a built-in{suggest(text, names)} "
                             f"(known: {', '.join(names)}) and not a .toml/.json file")


def machine_to_dict(cfg: MachineConfig) -> dict[str, Any]:
    """The inverse of parse_machine (patterns as 'n:m' strings, energy as nested tables)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "patterns":
            value = [f"{n}:{m}" for n, m in value]
        elif f.name == "energy":
            value = value.to_dict()
        elif dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        out[f.name] = value
    return out


def replace_fields(cfg: MachineConfig, changes: Mapping[str, Any]) -> MachineConfig:
    """`MachineConfig.replace`: merge `changes` into the machine's dict form and validate it."""
    d = machine_to_dict(cfg)
    for key, value in changes.items():
        if key == "patterns" and isinstance(value, list | tuple):
            value = [f"{p[0]}:{p[1]}" if isinstance(p, list | tuple) else p for p in value]
        elif key == "energy" and hasattr(value, "to_dict"):
            value = value.to_dict()
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if key in TABLES and isinstance(value, Mapping) and isinstance(d.get(key), Mapping):
            value = _merge(d[key], value)
        d[key] = value
    return parse_machine(d)
