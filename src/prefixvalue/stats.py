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
def _bootstrap_ci(vals: np.ndarray, n_boot: int, alpha: float, unit: str) -> tuple[list[float] | None, str | None]:
    """The percentile CI of the replicates' values (NaN: undefined, dropped and counted in the note)."""
    vals = vals[np.isfinite(vals)]
    dropped = n_boot - len(vals)
    if len(vals) < n_boot / 2:
        return None, (
            f"no bootstrap interval: the statistic was undefined in {dropped} of {n_boot} "
            f"{unit} resamples (zero variance in the resample)"
        )
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    note = None
    if dropped:
        note = f"{dropped} of {n_boot} {unit} resamples had an undefined statistic and were dropped from the CI"
    return [float(lo), float(hi)], note


#: cells of one block of replicates of a multiset statistic ([R, n] multiplicities; measured fastest near 2^17)
_WEIGHT_CELLS = 1 << 17


def _replicates_of_copies(
    stat: Callable[[np.ndarray], float], inverse: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Each replicate's ``stat(indices)``: the drawn groups' elements, group after group."""
    order = np.argsort(inverse, kind="mergesort")
    sizes = np.bincount(inverse)
    starts, n_groups = np.cumsum(sizes) - sizes, len(sizes)
    vals = np.empty(n_boot)
    for r in range(n_boot):
        pick = rng.integers(0, n_groups, size=n_groups)
        n = sizes[pick]
        # one concatenation of the picked groups' index ranges
        vals[r] = stat(order[np.repeat(starts[pick] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))])
    return vals


def _replicates_of_multiset(
    stat: Callable[[np.ndarray], np.ndarray], inverse: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Each replicate's ``stat(w)`` from each element's multiplicity, blocks of replicates at a time."""
    n_groups = int(inverse.max()) + 1  # np.unique's indices: 0 .. n_groups - 1
    block = max(1, _WEIGHT_CELLS // len(inverse))
    vals = np.empty(n_boot)
    for first in range(0, n_boot, block):
        rows = min(block, n_boot - first)
        picks = np.stack([rng.integers(0, n_groups, size=n_groups) for _ in range(rows)])  # the same draws
        drawn = np.bincount((picks + n_groups * np.arange(rows)[:, None]).ravel(), minlength=rows * n_groups)
        vals[first : first + rows] = stat(drawn.reshape(rows, n_groups)[:, inverse].astype(np.float64))
    return vals


def cluster_bootstrap(
    stat: Callable[[np.ndarray], Any],
    groups: Sequence[Any] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    unit: str = "group",
    multiset: bool = False,
) -> tuple[list[float] | None, str | None]:
    """Percentile CI of ``stat(indices)`` under resampling of groups with replacement.

    `groups` names each element's resampling unit (`unit` names it in notes: "prompt", "trace").
    The draws depend only on (`seed`, number of groups), so two statistics bootstrapped with the
    same seed and groups see the same replicates (paired). Returns ``([lo, hi], note)``; replicates
    where the statistic is undefined (e.g. a resample whose labels are all equal) are dropped and
    counted in the note. The CI is None (with a note) when there is only one group, `n_boot` is 0,
    or fewer than half the replicates are defined.

    With `multiset`, ``stat(w)`` takes a block of R replicates as each element's multiplicity, ``w`` [R, n]
    (how many copies of its group a replicate drew), and returns the R values, NaN where undefined: the same
    draws, and for a statistic of the multiset alone (`weighted_spearman`, `weighted_auroc`) the same CI to
    rounding, with no copy of the data per replicate.
    """
    distinct, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse, n_groups = inverse.reshape(-1), len(distinct)
    if n_boot <= 0:
        return None, "bootstrap disabled (n_bootstrap = 0)"
    if n_groups < 2:
        return None, f"no bootstrap interval: only {n_groups} {unit}(s), resampling over {unit}s needs >= 2"
    rng = np.random.default_rng(seed)
    vals = (_replicates_of_multiset if multiset else _replicates_of_copies)(stat, inverse, n_boot, rng)
    return _bootstrap_ci(vals, n_boot, alpha, unit)


class _Ties:
    """The distinct values of `x` and each element's index among them, for multiset statistics of many
    replicates at once (`weighted_spearman`, `weighted_auroc`)."""

    def __init__(self, x: np.ndarray) -> None:
        distinct, inverse = np.unique(x, return_inverse=True)
        self.inverse, self.k = inverse.reshape(-1), len(distinct)
        self._flat: dict[int, np.ndarray] = {}

    def weights(self, w: np.ndarray) -> np.ndarray:
        """[R, k]: the total multiplicity of each distinct value in each of the R replicates of `w` [R, n]."""
        rows = w.shape[0]
        if rows not in self._flat:  # the bincount's cells, value by replicate (the same for every full block)
            self._flat[rows] = (self.inverse[None, :] + self.k * np.arange(rows)[:, None]).ravel()
        return np.bincount(self._flat[rows], weights=w.ravel(), minlength=rows * self.k).reshape(rows, self.k)

    def centred_ranks(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per distinct value and replicate, [R, k]: its average rank in the replicate's multiset (``rankdata``'s:
        ties share their mean rank) minus the mean rank (N + 1) / 2, and its multiplicity; and [R] whether the
        replicate's values are all equal."""
        per_value = self.weights(w)
        total = per_value.sum(axis=1, keepdims=True)
        centred = np.cumsum(per_value, axis=1) - per_value + (per_value - total) / 2.0
        return centred, per_value, (per_value > 0).sum(axis=1) < 2


def weighted_spearman(x: ArrayLike, y: ArrayLike) -> Callable[[np.ndarray], np.ndarray]:
    """`CORRELATION_FUNCS["spearman"]` of `x` with `y` as a ``cluster_bootstrap(..., multiset=True)`` statistic:
    Pearson of the multiset's average ranks, NaN where a replicate's x or y are all equal."""
    tx, ty = _Ties(np.asarray(x, dtype=np.float64)), _Ties(np.asarray(y, dtype=np.float64))

    def stat(w: np.ndarray) -> np.ndarray:
        (rx, wx, const_x), (ry, wy, const_y) = tx.centred_ranks(w), ty.centred_ranks(w)
        # the ranks' mean is (N + 1) / 2 exactly, so they are centred per value; only the cross term is per element
        cov = np.einsum("rn,rn,rn->r", w, rx[:, tx.inverse], ry[:, ty.inverse])
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.clip(cov / np.sqrt((wx * rx * rx).sum(axis=1) * (wy * ry * ry).sum(axis=1)), -1.0, 1.0)
        r[const_x | const_y] = np.nan
        return r

    return stat


def weighted_correlation(method: str, x: ArrayLike, y: ArrayLike) -> Callable[[np.ndarray], np.ndarray] | None:
    """`method`'s ``cluster_bootstrap(..., multiset=True)`` statistic (`weighted_spearman`), or None where resampling
    copy by copy is as fast or faster: Pearson (no ranks) and Kendall."""
    return weighted_spearman(x, y) if method == "spearman" else None


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


def weighted_auroc(scores: ArrayLike, outcomes: ArrayLike) -> Callable[[np.ndarray], np.ndarray]:
    """`auroc` of `scores` for `outcomes` as a ``cluster_bootstrap(..., multiset=True)`` statistic (the multiset's
    average ranks); NaN where a replicate holds one class only. The scores must be finite (`auroc`'s point value
    defined)."""
    o = np.asarray(outcomes, dtype=np.float64) >= 0.5
    ties = _Ties(np.asarray(scores, dtype=np.float64))
    positive = ties.inverse[o]

    def stat(w: np.ndarray) -> np.ndarray:
        centred, _, _ = ties.centred_ranks(w)
        n_pos = w[:, o].sum(axis=1)
        n_neg = w.sum(axis=1) - n_pos
        mean_rank = (n_pos + n_neg + 1) / 2.0
        u = (w[:, o] * (centred[:, positive] + mean_rank[:, None])).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)

    return stat


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
