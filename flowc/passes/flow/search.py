"""Search refinement of an N:M allocation, scored end to end (EvoPress-style).

Why: per-layer errors are not additive (EvoPress, Sieberling et al., ICML 2025): the ILP over
the measured table (measured.py) optimises a proxy. The search scores *whole allocations* by
the KL divergence of the pruned model's next-token distribution from the dense model's on
held-in calibration tokens, and improves the best allocation by budget-preserving mutations.

Algorithm ((1 + lambda) evolution with two-stage selection, as EvoPress):
- start points: the current annotation (e.g. measured-select's answer) and every uniform
  pattern that meets the budgets; the best-scoring one is the parent;
- each generation makes `offspring` mutants of the parent. A mutation moves one random layer
  to a sparser level and another to a denser one, then repairs the sparsity window with
  random one-level moves; a mutant is kept only if it meets every budget exactly
  (`measured.within_budgets`), so no allocation the search ever returns breaks a budget;
- stage 1 scores every mutant on the first KL window, stage 2 the best `survivors` on all of
  them; a survivor replaces the parent only if its full score is lower (elitist: the score
  never increases).

Levels: per layer, the candidate patterns grouped by sparsity; within a level the pattern with
the lowest measured error is used (at equal sparsity a wider group is never worse, and on
FlexCiM equal-sparsity patterns cost the same cycles), so mutations move between levels.

Scoring uses the Wanda masks of the dense statistics (`nm-prune`'s one-shot masks) without a
weight update: masks are stored as bits (a few MB per layer and pattern), weights are swapped
only for the layers that changed. Candidate evaluations go through `flowc.executors`, so they
run in-process, on a local process pool or on Ray with the same code.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from flowc.passes.graph import LinearRef, get_param, set_param
from flowc.passes.prune import nm_mask

from .measured import MeasuredProblem, within_budgets
from .problem import Pattern

Choice = tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# Scoring


class KLScorer:
    """KL(dense || pruned) per token, averaged over held-in windows, for allocations.

    Holds the graph (weights swapped in place), the dense weights of the searched layers, their
    masks per pattern as packed bits, and the dense log-probabilities of the windows.
    """

    def __init__(self, gm: fx.GraphModule, layers: dict[str, LinearRef],
                 members: dict[str, Sequence[str]], norms: dict[str, np.ndarray],
                 patterns: Sequence[Pattern], windows: Sequence[tuple[Any, ...]],
                 masks: dict[tuple[str, Pattern], np.ndarray] | None = None) -> None:
        self.gm = gm
        self.targets = {name: ref.weight_target for name, ref in layers.items()}
        self.members = members
        self.patterns = list(patterns)
        self.windows = list(windows)
        self.dense: dict[str, torch.Tensor] = {}
        self.masks: dict[tuple[str, Pattern], np.ndarray] = {}
        known = masks or {}
        for name, ref in layers.items():
            w = get_param(gm, ref.weight_target).detach().clone()
            self.dense[name] = w
            todo = [p for p in patterns if p[0] != p[1] and w.shape[1] % p[1] == 0]
            self.masks.update({(name, p): known[(name, p)] for p in todo if (name, p) in known})
            todo = [p for p in todo if (name, p) not in known]
            if todo:  # the same Wanda masks as nm-prune's one-shot rule
                scores = np.abs(w.to(torch.float64).numpy()) * norms[name][None, :]
                for p in todo:
                    self.masks[(name, p)] = np.packbits(nm_mask(scores, p[0], p[1], name))
        self.current: dict[str, Pattern] = {}
        with torch.no_grad():
            self.reference = [torch.log_softmax(self._logits(w), -1) for w in self.windows]
        self.evaluations = 0

    def _logits(self, window: tuple[Any, ...]) -> torch.Tensor:
        out = self.gm(*window)
        out = out[0] if isinstance(out, tuple | list) else out
        return out.reshape(-1, out.shape[-1]).to(torch.float32)

    def apply(self, alloc: dict[str, Pattern]) -> None:
        """Swap in the weights of `alloc` (unit -> pattern); only changed layers are touched."""
        for unit, pattern in alloc.items():
            for name in self.members.get(unit, (unit,)):
                if self.current.get(name) == pattern:
                    continue
                w = self.dense[name]
                if pattern[0] != pattern[1]:
                    bits = np.unpackbits(self.masks[(name, pattern)], count=w.numel())
                    w = w * torch.from_numpy(bits.reshape(w.shape).astype(bool))
                set_param(self.gm, self.targets[name], w)
                self.current[name] = pattern

    def score(self, alloc: dict[str, Pattern], windows: int | None = None) -> float:
        self.apply(alloc)
        self.evaluations += 1
        total, count = 0.0, 0
        with torch.no_grad():
            for window, ref in zip(self.windows[:windows], self.reference, strict=False):
                logq = torch.log_softmax(self._logits(window), -1)
                total += float((ref.exp() * (ref - logq)).sum())
                count += ref.shape[0]
        return total / count

    def restore(self) -> None:
        """Put the dense weights back (the pass annotates; nm-prune cuts later)."""
        for name, target in self.targets.items():
            set_param(self.gm, target, self.dense[name])
        self.current.clear()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for process-pool and Ray workers: the graph travels as a plain
        GraphModule (code + parameters; torch.export's module class holds local lambdas and a
        tracer that cannot be rebuilt on the other side)."""
        state = dict(self.__dict__)
        graph = copy.deepcopy(self.gm.graph)
        graph._tracer_cls = None
        graph._tracer_extras = {}
        state["gm"] = fx.GraphModule(self.gm, graph)
        return state


def score_item(scorer: KLScorer, item: tuple[dict[str, Pattern], int | None]) -> float:
    """Executor work function: (allocation, windows) -> KL."""
    alloc, windows = item
    return scorer.score(alloc, windows)


# ---------------------------------------------------------------------------------------------
# Search


@dataclass
class SearchResult:
    choice: Choice
    score: float
    start_scores: dict[str, float]
    history: list[float] = field(default_factory=list)  # parent score after each generation
    generations: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    stopped: str = "generations"


def levels(prob: MeasuredProblem) -> list[list[int]]:
    """Per free layer: candidate indices ordered by sparsity, one per distinct sparsity
    (the lowest-cost pattern of that sparsity), unusable candidates left out."""
    out = []
    for i, row in enumerate(prob.costs):
        best: dict[int, int] = {}
        for j, c in enumerate(row):
            if math.isinf(c):
                continue
            s = prob.steps[i][j]
            if s not in best or c < row[best[s]]:
                best[s] = j
        out.append([best[s] for s in sorted(best)])
    return out


def mutate(prob: MeasuredProblem, lv: list[list[int]], choice: Choice, rng: random.Random,
           attempts: int = 50, repairs: int = 200) -> Choice | None:
    """A budget-respecting neighbour of `choice`, or None if none was found."""
    pos = [{j: k for k, j in enumerate(row)} for row in lv]
    n = len(choice)
    for _ in range(attempts):
        c = list(choice)
        a, b = rng.randrange(n), rng.randrange(n)
        ka, kb = pos[a].get(c[a], 0), pos[b].get(c[b], 0)
        if ka + 1 < len(lv[a]):
            c[a] = lv[a][rng.randrange(ka + 1, len(lv[a]))]
        if a != b and kb > 0:
            c[b] = lv[b][rng.randrange(0, kb)]
        for _ in range(repairs):
            s = prob.start + sum(prob.steps[i][j] for i, j in enumerate(c))
            if s < prob.s_lo:
                up = [i for i in range(n) if pos[i].get(c[i], 0) + 1 < len(lv[i])]
                if not up:
                    break
                i = rng.choice(up)
                c[i] = lv[i][pos[i].get(c[i], 0) + 1]
            elif s > prob.s_hi:
                down = [i for i in range(n) if pos[i].get(c[i], 0) > 0]
                if not down:
                    break
                i = rng.choice(down)
                c[i] = lv[i][pos[i].get(c[i], 0) - 1]
            else:
                break
        if tuple(c) != tuple(choice) and within_budgets(prob, c):
            return tuple(c)
    return None


def evolve(prob: MeasuredProblem, starts: dict[str, Choice],
           evaluate: Callable[[list[Choice], int | None], list[float]], full_windows: int,
           generations: int = 50, offspring: int = 8, survivors: int = 2, seed: int = 0,
           max_time: float = 0.0, on_generation: Callable[[int, float], None] | None = None
           ) -> SearchResult:
    """(1 + lambda) search from the best start; `evaluate(choices, windows)` scores choices
    (windows=None: all of them). Never returns a choice that breaks a budget."""
    t0 = time.perf_counter()
    valid = {k: c for k, c in starts.items() if within_budgets(prob, c)}
    if not valid:
        raise ValueError("search: no start point meets the budgets")
    names = list(valid)
    scores = evaluate([valid[k] for k in names], None)
    start_scores = dict(zip(names, scores, strict=True))
    best_name = min(names, key=lambda k: start_scores[k])
    parent, parent_score = valid[best_name], start_scores[best_name]
    rng = random.Random(seed)
    lv = levels(prob)
    result = SearchResult(parent, parent_score, start_scores)
    evaluations = len(names)
    for gen in range(generations):
        if max_time and time.perf_counter() - t0 > max_time:
            result.stopped = "time"
            break
        kids = list(dict.fromkeys(k for k in (mutate(prob, lv, parent, rng)
                                              for _ in range(offspring)) if k is not None))
        if not kids:
            result.stopped = "no valid mutation"
            break
        if full_windows > 1 and len(kids) > survivors:
            first = evaluate(kids, 1)
            evaluations += len(kids)
            kids = [k for _, k in sorted(zip(first, kids, strict=True))[:survivors]]
        full = evaluate(kids, None)
        evaluations += len(kids)
        score, kid = min(zip(full, kids, strict=True))
        if score < parent_score:
            parent, parent_score = kid, score
        result.history.append(parent_score)
        result.generations = gen + 1
        if on_generation:
            on_generation(gen + 1, parent_score)
    result.choice, result.score = parent, parent_score
    result.evaluations = evaluations
    result.seconds = time.perf_counter() - t0
    return result
