"""Which prefixes to label: acquisition scores of candidate prefixes from value models' predictions, and the top N
of them (docs/design.md, "Active labelling").

A candidate is a (trace, position) pair of the positions ``prefixvalue label`` would label. Its score, from the
predictions P̂ of an ensemble of M value models at the trace's positions (`acquisition_scores`):

- ``spread``: the ensemble's standard deviation of P̂ at the prefix (population, over the M models); with one
  model, P̂(1 − P̂), the Bernoulli variance the model itself predicts
- ``jump``: |P̂(p) − P̂(p')| averaged over the models, p' the trace's previous candidate position (0 at the first)
- ``random``: 0 for every candidate, so the choice is the seeded order alone: N drawn uniformly, the matched
  baseline of the two above

`choose_prefixes` keeps the N best, ties (and ``random``) broken by an order drawn from a seed; scores are
rounded to `SCORE_DECIMALS` first, so a prediction that moves in its last bits between two runs (another thread
count) does not reorder them: the same inputs give the same prefixes, which a resumed run relies on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

#: the acquisition rules `acquisition_scores` knows
SELECT_BY = ("spread", "jump", "random")
#: decimals the scores are rounded to before ranking (ties then fall to the seeded order)
SCORE_DECIMALS = 6


def acquisition_scores(
    curves: Sequence[Sequence[Sequence[float]]], plan: Sequence[Sequence[int]], by: str
) -> list[np.ndarray]:
    """Scores of the candidate positions ``plan[t]`` (ascending) of every trace t: ``curves[m][t]`` is model m's
    P̂ at positions 0..T of trace t (`prefixvalue.value.ValueModel.predict`). ``random`` reads no curve."""
    if by not in SELECT_BY:
        raise ValueError(f"select_by must be one of {', '.join(SELECT_BY)}, got {by!r}")
    if by != "random" and not curves:
        raise ValueError(f"select_by={by} needs the predictions of at least one value model")
    out: list[np.ndarray] = []
    for t, pos in enumerate(plan):
        idx = np.asarray(pos, dtype=np.int64)
        if by == "random" or not len(idx):
            out.append(np.zeros(len(idx)))
            continue
        v = np.stack([np.asarray(c[t], dtype=np.float64)[idx] for c in curves])  # [M, P]
        if by == "spread":
            out.append(v.std(axis=0) if len(v) > 1 else v[0] * (1.0 - v[0]))
        else:
            prev = np.concatenate([v[:, :1], v[:, :-1]], axis=1)
            out.append(np.abs(v - prev).mean(axis=0))
    return out


@dataclass
class Selection:
    """The chosen prefixes: ``positions[t]`` ascending per trace (empty: none of trace t), the score of each
    chosen prefix best first, and how many candidates were scored and left out as already labelled."""

    positions: list[list[int]]
    scores: list[float]
    candidates: int
    excluded: int

    def digest(self, trace_ids: Sequence[str]) -> str:
        """SHA-256 of the chosen (trace id, position) pairs: a resumed run must choose the same."""
        text = "\n".join(f"{tid}\t{p}" for tid, pos in zip(trace_ids, self.positions) for p in pos)
        return hashlib.sha256(text.encode()).hexdigest()


def choose_prefixes(
    trace_ids: Sequence[str],
    plan: Sequence[Sequence[int]],
    scores: Sequence[np.ndarray],
    n: int,
    seed: int,
    exclude: Collection[tuple[str, int]] = (),
) -> Selection:
    """The `n` candidates of ``plan`` (positions of trace ``trace_ids[t]``) with the highest `scores`, those in
    `exclude` (``(trace_id, position)`` pairs) left out; ties broken by a permutation of the candidates drawn
    from `seed` (`numpy.random.default_rng`)."""
    if n < 1:
        raise ValueError(f"the number of prefixes to choose must be >= 1, got {n}")
    cand_t: list[int] = []
    cand_p: list[int] = []
    cand_s: list[float] = []
    excluded = 0
    for t, (tid, pos, sc) in enumerate(zip(trace_ids, plan, scores)):
        for p, s in zip(pos, sc):
            if (str(tid), int(p)) in exclude:
                excluded += 1
                continue
            cand_t.append(t)
            cand_p.append(int(p))
            cand_s.append(float(s))
    order = np.random.default_rng(seed).permutation(len(cand_t))
    tie = np.empty(len(cand_t), dtype=np.int64)
    tie[order] = np.arange(len(cand_t))
    rounded = np.round(np.asarray(cand_s, dtype=np.float64), SCORE_DECIMALS)
    top = np.lexsort((tie, -rounded))[:n]  # the last key sorts first: score descending, then the seeded order
    chosen: list[list[int]] = [[] for _ in plan]
    for i in top:
        chosen[cand_t[i]].append(cand_p[i])
    return Selection([sorted(c) for c in chosen], [float(rounded[i]) for i in top], len(cand_t), excluded)


__all__ = ["SCORE_DECIMALS", "SELECT_BY", "Selection", "acquisition_scores", "choose_prefixes"]
