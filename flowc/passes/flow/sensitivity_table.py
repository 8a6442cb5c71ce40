"""The sensitivity table: the relative output error of each layer pruned to each pattern, as
measured by the `sensitivity` pass, and its JSON form (`save=` / `load=` on the pass).

Computing the table is the expensive part of measured selection; the table itself serves every
target, budget and machine, so it is a file format of its own (`TABLE_VERSION`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from flowc.errors import UsageError

from .problem import Pattern

TABLE_VERSION = 1
UPDATES = ("none", "obs", "both")


def pattern_key(pattern: Pattern) -> str:
    return f"{pattern[0]}:{pattern[1]}"


@dataclass
class SensitivityTable:
    """Relative output error per layer and pattern, plus what the selection needs per layer.

    `errors[layer][pattern_key]` = {"none": e, "obs": e} (the keys measured); a dense pattern
    (n == m) always costs 0. `params[layer]` and `in_features[layer]` describe the layer;
    `shape[layer]` = (out, K).
    """

    errors: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    shape: dict[str, tuple[int, int]] = field(default_factory=dict)
    tokens: int = 0  # tokens the Gram matrices were estimated on
    updates: tuple[str, ...] = ("none",)
    info: dict[str, Any] = field(default_factory=dict)
    scale: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> level -> w
    # the Wanda masks the errors were measured with, packed bits (in memory only: the KL
    # scales and nm-search reuse them instead of sorting every layer again)
    masks: dict[tuple[str, Pattern], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def layers(self) -> list[str]:
        return list(self.shape)

    def params(self, layer: str) -> int:
        out, k = self.shape[layer]
        return out * k

    def error(self, layer: str, pattern: Pattern, update: str = "none") -> float:
        """Relative error of `layer` pruned to `pattern` (0 for dense; inf if not measured)."""
        n, m = pattern
        if n == m:
            return 0.0
        row = self.errors.get(layer, {}).get(pattern_key(pattern))
        if row is None or update not in row:
            return math.inf
        return row[update]

    def cost(self, layer: str, pattern: Pattern, update: str = "none") -> float:
        """What selection minimises: the relative error times the layer's end-to-end weight at
        the pattern's sparsity level (`scale`, 1 when not calibrated; see `kl_scales`; a
        level not measured takes the nearest measured one)."""
        err = self.error(layer, pattern, update)
        levels = self.scale.get(layer)
        if err == 0 or math.isinf(err) or not levels:
            return err
        want = 1 - Fraction(pattern[0], pattern[1])
        key = min(levels, key=lambda k: (abs(Fraction(k) - want), Fraction(k)))
        return err * levels[key]

    def to_dict(self) -> dict[str, Any]:
        return {"version": TABLE_VERSION, "tokens": self.tokens, "updates": list(self.updates),
                "info": self.info, "scale": self.scale,
                "layers": {name: {"shape": list(self.shape[name]),
                                  "errors": self.errors.get(name, {})} for name in self.shape}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> SensitivityTable:
        if d.get("version") != TABLE_VERSION or "layers" not in d:
            raise UsageError(f"{source}: not a flowc sensitivity table (version "
                             f"{TABLE_VERSION} expected)")
        table = cls(tokens=int(d.get("tokens", 0)), updates=tuple(d.get("updates", ("none",))),
                    info=dict(d.get("info", {})),
                    scale={k: {lv: float(x) for lv, x in v.items()}
                           for k, v in d.get("scale", {}).items()})
        for name, row in d["layers"].items():
            table.shape[name] = (int(row["shape"][0]), int(row["shape"][1]))
            table.errors[name] = {k: {u: float(v) for u, v in e.items()}
                                  for k, e in row["errors"].items()}
        return table

    def save(self, path: str | Path) -> None:
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> SensitivityTable:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), str(path))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: cannot read the sensitivity table ({exc})") from None


def level_key(pattern: Pattern) -> str:
    """The sparsity level of a pattern as an exact fraction: (2, 8) -> '3/4'."""
    return str(1 - Fraction(pattern[0], pattern[1]))
