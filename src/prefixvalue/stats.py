"""Statistics shared by sampling, value models and evaluation (docs/design.md, "Metrics"): correlations
that are null with a note when undefined (never NaN), the cluster bootstrap, AUROC, Brier and the
Wilson interval of a success rate.

A statistic that cannot be computed is ``None`` with a ``note`` in words that says why, with counts.
`prefixvalue.evaluation.metrics` assembles these into metrics.json.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import kendalltau, pearsonr, rankdata, spearmanr

from .formatting import significant

ArrayLike = Sequence[float] | np.ndarray
CORRELATIONS = ("pearson", "spearman", "kendall")


# ---------------------------------------------------------------------------------- correlations
def _pearson_raw(x: np.ndarray, y: np.ndarray) -> float:
    xm = x - x.mean()
    ym = y - y.mean()
    den = math.sqrt(float(np.dot(xm, xm)) * float(np.dot(ym, ym)))
    if den == 0.0:
        return float("nan")
    return float(np.clip(np.dot(xm, ym) / den, -1.0, 1.0))


def _spearman_raw(x: np.ndarray, y: np.ndarray) -> float:
    return _pearson_raw(rankdata(x), rankdata(y))


def _kendall_raw(x: np.ndarray, y: np.ndarray) -> float:
    # Kendall tau-b; scipy's O(n log n) implementation (tests check it against brute-force pair counts)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(kendalltau(x, y, variant="b").statistic)


#: the correlations metrics.json reports, as raw functions (NaN when undefined) fast enough to bootstrap
CORRELATION_FUNCS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": _pearson_raw,
    "spearman": _spearman_raw,
    "kendall": _kendall_raw,
}


def constant_note(values: np.ndarray, what: str) -> str | None:
    """Words for "`values` have zero variance", with counts; None when they vary."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return f"no {what} values (0 prefixes)"
    if np.ptp(values) == 0:
        return (
            f"{what} has zero variance: all {len(values)} prefixes have the value {significant(float(values[0]))}, "
            f"so a correlation is undefined"
        )
    return None


def undefined_note(
    x: ArrayLike, y: ArrayLike, x_name: str = "the estimator", y_name: str = "the MC labels"
) -> str | None:
    """Why a correlation of `x` with `y` is undefined, in words with counts (a non-finite value, fewer
    than 3 points, zero variance in `y` or in `x`), or None when it is defined. ValueError when the shapes
    differ."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"pred and labels differ in shape: {x.shape} vs {y.shape}")
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        return f"{int((~finite).sum())} of {len(x)} prefixes have a non-finite value"
    if len(x) < 3:
        return f"only {len(x)} prefixes; a correlation needs at least 3"
    return constant_note(y, y_name) or constant_note(x, x_name)


def spearman(
    x: ArrayLike, y: ArrayLike, x_name: str = "the estimator", y_name: str = "the MC labels"
) -> tuple[float | None, str | None]:
    """Spearman's ρ of `x` with `y` as ``(value, None)``, or ``(None, note)`` when it is undefined
    (`undefined_note`): never NaN. The value is ``scipy.stats.spearmanr``'s, to the last bit (the figures
    of earlier versions); `CORRELATION_FUNCS`' ranked Pearson agrees with it to about 1e-15."""
    note = undefined_note(x, y, x_name, y_name)
    if note:
        return None, note
    return float(spearmanr(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)).statistic), None


def pearson(
    x: ArrayLike, y: ArrayLike, x_name: str = "the estimator", y_name: str = "the MC labels"
) -> tuple[float | None, str | None]:
    """Pearson's r of `x` with `y` as ``(value, None)`` (``scipy.stats.pearsonr``'s), or ``(None, note)``
    when it is undefined (`undefined_note`): never NaN."""
    note = undefined_note(x, y, x_name, y_name)
    if note:
        return None, note
    return float(pearsonr(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))[0]), None


# ------------------------------------------------------------------------------------ bootstrap
def _group_index(groups: Sequence[Any] | np.ndarray) -> list[np.ndarray]:
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    counts = np.bincount(inverse)
    return np.split(order, np.cumsum(counts)[:-1])


def cluster_bootstrap(
    stat: Callable[[np.ndarray], float],
    groups: Sequence[Any] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    unit: str = "group",
) -> tuple[list[float] | None, str | None]:
    """Percentile CI of ``stat(indices)`` under resampling of groups with replacement.

    `groups` names each element's resampling unit (`unit` names it in notes: "prompt", "trace").
    The draws depend only on (`seed`, number of groups), so two statistics bootstrapped with the
    same seed and groups see the same replicates (paired). Returns ``([lo, hi], note)``; replicates
    where the statistic is undefined (e.g. a resample whose labels are all equal) are dropped and
    counted in the note. The CI is None (with a note) when there is only one group, `n_boot` is 0,
    or fewer than half the replicates are defined.
    """
    members = _group_index(groups)
    if n_boot <= 0:
        return None, "bootstrap disabled (n_bootstrap = 0)"
    if len(members) < 2:
        return None, f"no bootstrap interval: only {len(members)} {unit}(s), resampling over {unit}s needs >= 2"
    rng = np.random.default_rng(seed)
    vals: list[float] = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), size=len(members))
        v = stat(np.concatenate([members[j] for j in pick]))
        if math.isfinite(v):
            vals.append(v)
    dropped = n_boot - len(vals)
    if len(vals) < n_boot / 2:
        return None, (
            f"no bootstrap interval: the statistic was undefined in {dropped} of {n_boot} "
            f"{unit} resamples (zero variance in the resample)"
        )
    lo, hi = np.quantile(np.asarray(vals), [alpha / 2, 1 - alpha / 2])
    note = None
    if dropped:
        note = f"{dropped} of {n_boot} {unit} resamples had an undefined statistic and were dropped from the CI"
    return [float(lo), float(hi)], note


# ------------------------------------------------------------------------------ classification
def auroc(scores: ArrayLike, outcomes: ArrayLike) -> tuple[float | None, str | None]:
    """Area under the ROC curve of `scores` for binary `outcomes` (>= 0.5 is positive).

    Equals the Mann–Whitney U of the positives divided by n_pos·n_neg (ties count half).
    Returns ``(value, None)`` or ``(None, note)`` when one class is absent.
    """
    s = np.asarray(scores, dtype=np.float64)
    o = np.asarray(outcomes, dtype=np.float64) >= 0.5
    n_pos, n_neg = int(o.sum()), int((~o).sum())
    if n_pos == 0 or n_neg == 0:
        return None, (
            f"AUROC undefined: all {len(o)} prefixes belong to traces with the same final outcome "
            f"({n_pos} successful, {n_neg} failed)"
        )
    if not np.isfinite(s).all():
        return None, f"AUROC undefined: {int((~np.isfinite(s)).sum())} non-finite scores"
    ranks = rankdata(s)
    u = ranks[o].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg)), None


def brier(prob: ArrayLike, target: ArrayLike) -> float:
    """Mean squared error between probabilities and targets in [0, 1] (MC means or outcomes)."""
    p = np.asarray(prob, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    return float(np.mean((p - t) ** 2))


# ---------------------------------------------------------------------------------- rates
def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a success rate: ``(low, high)`` in [0, 1]; ``(0, 1)`` when n = 0.

    `successes` may be fractional (a sum of scores in [0, 1]).
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    z2 = z * z
    den = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / den
    half = z * math.sqrt(max(p * (1 - p) / n + z2 / (4 * n * n), 0.0)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def spearman_brown(r: float, factor: float = 2.0) -> float:
    """Spearman–Brown prophecy: reliability of a test `factor` times longer than one with reliability r."""
    return factor * r / (1 + (factor - 1) * r)


__all__ = [
    "ArrayLike",
    "CORRELATIONS",
    "CORRELATION_FUNCS",
    "auroc",
    "brier",
    "cluster_bootstrap",
    "constant_note",
    "pearson",
    "spearman",
    "spearman_brown",
    "undefined_note",
    "wilson_interval",
]
