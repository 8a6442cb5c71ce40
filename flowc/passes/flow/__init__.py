"""FLOW: per-layer N:M selection from outlier statistics (SPEC.md section 2), as a library.

The pure functions live here; the pass wrappers are in `flowc.passes.flow.passes`.
"""

from .baselines import magnitude_scores, owl_nm, uniform_nm
from .ilp import select_nm, select_nm_dp
from .outliers import (
    LayerOutliers,
    RawOutliers,
    analyse_layers,
    mean_pairwise_l1,
    measure_layer,
    measure_scores,
    merge_blocks,
    normalise_layers,
    normalise_minmax,
    outlier_ratio,
    repo_locality,
    wanda_scores,
)
from .problem import (
    REPO_CANDIDATES,
    InfeasibleTarget,
    Selection,
    SolverError,
    default_candidates,
    flexcim_supported,
    parse_pattern,
    resolve_candidates,
)

__all__ = [
    "REPO_CANDIDATES", "InfeasibleTarget", "LayerOutliers", "RawOutliers", "Selection",
    "SolverError", "analyse_layers", "default_candidates", "flexcim_supported",
    "magnitude_scores", "mean_pairwise_l1", "measure_layer", "measure_scores", "merge_blocks",
    "normalise_layers", "normalise_minmax", "outlier_ratio", "owl_nm", "parse_pattern",
    "repo_locality", "resolve_candidates", "select_nm", "select_nm_dp", "uniform_nm",
    "wanda_scores",
]
