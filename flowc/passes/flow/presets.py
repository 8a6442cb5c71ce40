"""Presets of `flow-select`: the paper's formula, or FLOW's public code point by point.

A preset only supplies defaults: an option given explicitly (not None) always wins, so
`flow-select{preset=repo,tau=5}` is FLOW's code at OWL's threshold. Every way the two readings
differ is an option of its own (docs/flow.md, "FLOW's code, exactly"):

| option | paper | repo (FLOW af60401) |
|---|---|---|
| tau | 5.0 | 0.5 (ilp_solver.py `--Hyper_m` default and README) |
| tolerance | 0.005 | 0.0 (exact equality) |
| threshold | layer (tau x mean of one Linear) | block (tau x mean of the block's scores) |
| locality | exact | repo-block (first 10k outliers of the block vector) |
| normalise | minmax | repo (percent, lambda-centred, re-min-maxed) |
| direction | paper | repo |
| candidates | default (machine) | repo (4:8, 4:4, 2:8, 2:4, 8:8) |
| granularity | layer | block |
| constraint | weighted-window | repo-equality (unweighted block mean == target) |
| solver_status | check | ignore (read z == 1 rows, pad 4:8) |
| force_dense_ends | false | true (first/last block 8:8 after the ILP) |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowc.errors import UsageError

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"tau": 5.0, "tolerance": 0.005, "threshold": "layer", "locality": "exact",
              "normalise": "minmax", "direction": "paper", "candidates": "default",
              "granularity": "layer", "constraint": "weighted-window",
              "solver_status": "check", "force_dense_ends": False},
    "repo": {"tau": 0.5, "tolerance": 0.0, "threshold": "block", "locality": "repo-block",
             "normalise": "repo", "direction": "repo", "candidates": "repo",
             "granularity": "block", "constraint": "repo-equality",
             "solver_status": "ignore", "force_dense_ends": True},
}
CONSTRAINTS = ("weighted-window", "repo-equality")


def resolve_preset(preset: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The preset's defaults overridden by every option given (not None), then checked."""
    if preset not in PRESETS:
        raise UsageError(f"flow-select: preset must be one of {', '.join(PRESETS)}, "
                         f"got {preset!r}")
    out = dict(PRESETS[preset])
    out.update({k: v for k, v in given.items() if v is not None})
    check_combination(out)
    return out


CHOICES: dict[str, tuple[str, ...]] = {
    "threshold": ("layer", "block"), "locality": ("exact", "repo", "repo-block"),
    "normalise": ("minmax", "repo"), "direction": ("paper", "repo"),
    "granularity": ("layer", "block"), "constraint": CONSTRAINTS,
    "solver_status": ("check", "ignore"),
}


def check_combination(o: Mapping[str, Any]) -> None:
    """Reject unknown values and option mixes that have no meaning (one line each)."""
    for key, allowed in CHOICES.items():
        if o[key] not in allowed:
            raise UsageError(f"flow-select: {key} must be one of {', '.join(allowed)}, "
                             f"got {o[key]!r}")
    if o["locality"] == "repo-block" and o["granularity"] != "block":
        raise UsageError("flow-select: locality=repo-block measures a whole block; it needs "
                         "granularity=block (or give locality=repo or exact)")
    if o["normalise"] == "repo" and o["locality"] == "exact":
        raise UsageError("flow-select: normalise=repo works on FLOW's locality index; use "
                         "locality=repo or repo-block (or normalise=minmax)")
    if o["constraint"] == "repo-equality" and o["tolerance"] != 0:
        raise UsageError(f"flow-select: constraint=repo-equality is an exact equality; "
                         f"tolerance must be 0, got {o['tolerance']}")
    if o["solver_status"] == "ignore" and o["constraint"] != "repo-equality":
        raise UsageError("flow-select: solver_status=ignore reads FLOW's model as FLOW does; "
                         "it needs constraint=repo-equality")
