"""Metrics between a prefix-value estimator and Monte Carlo labels (docs/design.md, "Metrics").

Every function returns plain JSON-safe data. A metric that cannot be computed is ``None`` with a
``note`` in words that says why, with counts (a correlation on zero-variance labels is
named as such, never a bare NaN).

Correlations carry a cluster-bootstrap 95% percentile interval: `groups` gives each prefix's
resampling unit, and a replicate draws units with replacement and keeps all their prefixes.
Scoring passes prompt ids (the default ``bootstrap_unit: "prompt"``): the traces of one prompt share
their position-0 label and are not independent, so neither prefixes nor traces are. Every
estimator is resampled with the same seed and units, so the replicates are paired across
estimators (`paired_difference`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from ..tracking import jsonable

ArrayLike = Sequence[float] | np.ndarray
CORRELATIONS = ("pearson", "spearman", "kendall")


# --------------------------------------------------------------------------------------- basics
def _pearson_raw(x: np.ndarray, y: np.ndarray) -> float:
    xm = x - x.mean()
    ym = y - y.mean()
    den = math.sqrt(float(np.dot(xm, xm)) * float(np.dot(ym, ym)))
    if den == 0.0:
        return float("nan")
    return float(np.clip(np.dot(xm, ym) / den, -1.0, 1.0))


def _spearman_raw(x: np.ndarray, y: np.ndarray) -> float:
    return _pearson_raw(stats.rankdata(x), stats.rankdata(y))


def _kendall_raw(x: np.ndarray, y: np.ndarray) -> float:
    # Kendall tau-b; scipy's O(n log n) implementation (tests check it against brute-force pair counts)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.kendalltau(x, y, variant="b").statistic)


CORRELATION_FUNCS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": _pearson_raw,
    "spearman": _spearman_raw,
    "kendall": _kendall_raw,
}


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def constant_note(values: np.ndarray, what: str) -> str | None:
    """Words for "`values` have zero variance", with counts; None when they vary."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return f"no {what} values (0 prefixes)"
    if np.ptp(values) == 0:
        return (
            f"{what} has zero variance: all {len(values)} prefixes have the value {_fmt(float(values[0]))}, "
            f"so a correlation is undefined"
        )
    return None


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


# ---------------------------------------------------------------------------------- correlations
def correlation(
    pred: ArrayLike,
    labels: ArrayLike,
    groups: Sequence[Any] | np.ndarray | None = None,
    method: str = "spearman",
    n_boot: int = 1000,
    seed: int = 0,
    unit: str = "group",
) -> dict[str, Any]:
    """``{"value", "ci": [lo, hi] | None, "n"}`` (+ ``"note"``) for one correlation `method`.

    `groups` (one resampling unit per prefix, named `unit`: scoring passes prompt ids) drives the
    cluster bootstrap; without it each prefix is its own group. Zero variance in either input gives
    ``value: None`` and a note with counts.
    """
    if method not in CORRELATION_FUNCS:
        raise ValueError(f"unknown correlation {method!r}; choose from {list(CORRELATION_FUNCS)}")
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"pred and labels differ in shape: {x.shape} vs {y.shape}")
    out: dict[str, Any] = {"value": None, "ci": None, "n": len(x)}
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        out["note"] = f"{int((~finite).sum())} of {len(x)} prefixes have a non-finite value"
        return out
    if len(x) < 3:
        out["note"] = f"only {len(x)} prefixes; a correlation needs at least 3"
        return out
    for vals, what in ((y, "the MC labels"), (x, "the estimator")):
        note = constant_note(vals, what)
        if note:
            out["note"] = note
            return out
    fn = CORRELATION_FUNCS[method]
    out["value"] = jsonable(fn(x, y))
    g = np.arange(len(x)) if groups is None else np.asarray(groups)
    ci, note = cluster_bootstrap(lambda idx: fn(x[idx], y[idx]), g, n_boot=n_boot, seed=seed, unit=unit)
    out["ci"] = ci
    if note:
        out["note"] = note
    return out


def correlations(
    pred: ArrayLike,
    labels: ArrayLike,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    unit: str = "group",
) -> dict[str, dict[str, Any]]:
    """Pearson, Spearman and Kendall (tau-b), each from `correlation`."""
    return {m: correlation(pred, labels, groups, m, n_boot=n_boot, seed=seed, unit=unit) for m in CORRELATIONS}


def paired_difference(
    pred_a: ArrayLike,
    pred_b: ArrayLike,
    labels: ArrayLike,
    groups: Sequence[Any] | np.ndarray,
    method: str = "spearman",
    n_boot: int = 1000,
    seed: int = 0,
    unit: str = "group",
) -> dict[str, Any]:
    """corr(a, labels) − corr(b, labels) with a paired cluster-bootstrap 95% CI.

    Both correlations are computed on the same resampled units in every replicate (the replicates
    `correlation` draws with the same seed and groups), so the CI reflects the difference, not two
    independent intervals. Returns ``{"value", "ci", "n", "unit"}`` (+ ``"note"``); ``value: None``
    with a note when either correlation is undefined.
    """
    fn = CORRELATION_FUNCS[method]
    a = np.asarray(pred_a, dtype=np.float64)
    b = np.asarray(pred_b, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    out: dict[str, Any] = {"value": None, "ci": None, "n": len(y), "unit": unit}
    ca = correlation(a, y, None, method, n_boot=0)
    cb = correlation(b, y, None, method, n_boot=0)
    if ca["value"] is None or cb["value"] is None:
        out["note"] = "difference undefined: " + "; ".join(
            c["note"] for c in (ca, cb) if c["value"] is None and c.get("note")
        )
        return out
    out["value"] = float(ca["value"] - cb["value"])
    ci, note = cluster_bootstrap(
        lambda idx: fn(a[idx], y[idx]) - fn(b[idx], y[idx]), np.asarray(groups), n_boot=n_boot, seed=seed, unit=unit
    )
    out["ci"] = ci
    if note:
        out["note"] = note
    return out


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
    ranks = stats.rankdata(s)
    u = ranks[o].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg)), None


def brier(prob: ArrayLike, target: ArrayLike) -> float:
    """Mean squared error between probabilities and targets in [0, 1] (MC means or outcomes)."""
    p = np.asarray(prob, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    return float(np.mean((p - t) ** 2))


def calibration_bins(prob: ArrayLike, target: ArrayLike, n_bins: int = 15) -> list[dict[str, float]]:
    """Equal-width bins on [0, 1] (the last bin includes 1.0): count, mean prediction, mean target.

    Empty bins are omitted. Used by `ece` and by the calibration plot.
    """
    p = np.clip(np.asarray(prob, dtype=np.float64), 0.0, 1.0)
    t = np.asarray(target, dtype=np.float64)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            out.append(
                {
                    "bin": b,
                    "lo": b / n_bins,
                    "hi": (b + 1) / n_bins,
                    "count": int(m.sum()),
                    "mean_pred": float(p[m].mean()),
                    "mean_target": float(t[m].mean()),
                }
            )
    return out


def ece(prob: ArrayLike, target: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error: Σ_b (n_b / n) |mean pred_b − mean target_b| over equal-width bins."""
    p = np.asarray(prob, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    return float(
        sum(b["count"] / len(p) * abs(b["mean_pred"] - b["mean_target"]) for b in calibration_bins(p, target, n_bins))
    )


def is_probability(values: ArrayLike) -> bool:
    """Whether every value lies in [0, 1] (the estimator can be scored by Brier and ECE)."""
    v = np.asarray(values, dtype=np.float64)
    return bool(len(v) and np.isfinite(v).all() and v.min() >= 0.0 and v.max() <= 1.0)


# ------------------------------------------------------------------------------- MC diagnostics
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


def split_half_noise_ceiling(
    n: ArrayLike,
    successes: ArrayLike,
    repeats: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Split-half reliability of the MC labels and the correlation ceiling it implies.

    Each prefix's samples are split into two random halves by drawing the first half's successes
    from the hypergeometric distribution of the recorded k of n, which is exactly how a random split
    of those samples falls (the labels record k of n, not the order of the samples). Fractional k
    (verifier scores in (0, 1)) cannot be split exactly without the per-sample scores: each split
    first rounds k at random to floor(k) or ceil(k) with the probability that keeps its expectation
    (the most variable 0/1 samples with that sum), and the note says so. Per repeat:
    r = Spearman(half A means, half B means) over prefixes; Spearman–Brown gives the full-n
    reliability R = 2r / (1 + r); the best Spearman correlation any predictor can reach with the MC
    labels is √R (the truth itself correlates with the noisy labels by √R).
    Returns ``{"spearman": √R, "reliability": R, "split_half": r, "method", "repeats", "note"}``,
    medians over repeats. ``spearman`` is None with a note when it cannot be computed, and when
    R <= 0 (the halves do not agree: no ceiling can be stated, which is not a ceiling of 0).
    """
    n = np.asarray(n, dtype=np.int64)
    k = np.asarray(successes, dtype=np.float64)
    fractional = bool(np.any(np.abs(k - np.round(k)) > 1e-9))
    out: dict[str, Any] = {
        "spearman": None,
        "reliability": None,
        "split_half": None,
        "method": "hypergeometric" + (" (fractional successes randomly rounded)" if fractional else ""),
        "repeats": repeats,
    }
    usable = (n >= 2) & np.isfinite(k)
    if usable.sum() < 3:
        out["note"] = (
            f"noise ceiling undefined: only {int(usable.sum())} of {len(n)} prefixes have >= 2 MC "
            f"samples to split in halves (need >= 3 prefixes)"
        )
        return out
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(usable)
    nn, kk = n[idx], np.clip(k[idx], 0, n[idx])
    halves = nn // 2
    rs: list[float] = []
    for _ in range(repeats):
        if fractional:
            low = np.floor(kk)
            ki = (low + (rng.random(len(kk)) < (kk - low))).astype(np.int64)
        else:
            ki = np.round(kk).astype(np.int64)
        ka = rng.hypergeometric(ki, nn - ki, halves)
        a = ka / halves
        b = (ki - ka) / (nn - halves)
        r = _spearman_raw(a, b)
        if math.isfinite(r):
            rs.append(r)
    if len(rs) < repeats / 2:
        out["note"] = (
            f"noise ceiling undefined: the two halves had zero variance in {repeats - len(rs)} of "
            f"{repeats} random splits (labels saturated)"
        )
        return out
    r = float(np.median(rs))
    out["split_half"] = r
    how = (
        "no per-sample outcomes were recorded, so each split draws half A's successes from the "
        "hypergeometric distribution of the recorded k of n"
    )
    if fractional:
        how += (
            "; successes are fractional (verifier scores in (0, 1)), so each split first rounds k at random "
            "to an integer with the same expectation, which treats the samples as 0/1 (an approximation)"
        )
    if r <= -1.0:
        out["note"] = (
            f"noise ceiling undefined: the split-half correlation is r = {r:.3f}, so the Spearman–Brown "
            f"reliability 2r / (1 + r) is undefined; the halves disagree completely ({how})"
        )
        return out
    rel = float(spearman_brown(r))
    out["reliability"] = rel
    if rel <= 0:
        out["note"] = (
            f"noise ceiling undefined: split-half over {len(idx)} prefixes ({how}); median over "
            f"{repeats} random splits r = {r:.3f}, Spearman–Brown reliability R = {rel:.3f} <= 0: the "
            f"halves do not agree, so the labels carry no measurable signal and √R does not exist"
        )
        return out
    out["spearman"] = float(math.sqrt(rel))
    out["note"] = (
        f"split-half over {len(idx)} prefixes ({how}); median over {repeats} random splits: "
        f"Spearman of the halves r = {r:.3f}, Spearman–Brown reliability R = {rel:.3f}, "
        f"ceiling √R = {out['spearman']:.3f} is the highest Spearman any estimator can expect "
        f"against these labels"
    )
    return out


#: share of prefixes at one extreme (0 or 1) from which the MC labels are called saturated
SATURATION_SHARE = 0.95


def saturation(labels: ArrayLike, n: ArrayLike | None = None, threshold: float = SATURATION_SHARE) -> dict[str, Any]:
    """Describe saturation of MC labels in words with counts.

    ``saturated`` is True when the labels have zero variance (every correlation is undefined) or
    when at least `threshold` (`SATURATION_SHARE`, 95%) of the prefixes sit at one extreme (0 or 1);
    this is the one definition of "saturated" the reports use. Labels that are not finite (a label
    with n = 0 samples) are left out and counted in the note. Returns
    ``{"saturated", "n_at_one", "n_at_zero", "definition", "note"}``.
    """
    y_all = np.asarray(labels, dtype=np.float64)
    finite = np.isfinite(y_all)
    y = y_all[finite]
    if n is not None:
        n = np.asarray(n)[finite] if len(np.asarray(n)) == len(y_all) else n
    skipped = (
        f" {int((~finite).sum())} label(s) with no finite value (no MC samples) are left out."
        if (~finite).any()
        else ""
    )
    res = _saturation(y, n, threshold)
    res["note"] += skipped
    res["definition"] = f">= {threshold:.0%} of prefixes at MC success 0 or at 1, or zero variance"
    return res


def _saturation(y: np.ndarray, n: ArrayLike | None, threshold: float) -> dict[str, Any]:
    total = len(y)
    at1 = int((y >= 1.0).sum())
    at0 = int((y <= 0.0).sum())
    samples = ""
    if n is not None and len(np.asarray(n)):
        nn = np.asarray(n)
        samples = (
            f" ({int(nn.min())} samples each)"
            if nn.min() == nn.max()
            else f" ({int(nn.min())}–{int(nn.max())} samples each)"
        )
    if total == 0:
        return {"saturated": True, "n_at_one": 0, "n_at_zero": 0, "note": "no labelled prefixes"}
    if np.ptp(y) == 0:
        note = (
            f"saturated: all {total} prefixes have MC success {_fmt(float(y[0]))}{samples}. The labels have "
            f"zero variance, so every correlation with them is undefined (reported as null). The task is "
            f"too easy or too hard for this policy, or the prefixes come too late, after the outcome is "
            f"decided; label earlier prefixes or use a harder task."
        )
        return {"saturated": True, "n_at_one": at1, "n_at_zero": at0, "note": note}
    frac = max(at1, at0) / total
    sat = frac >= threshold
    note = (
        f"{at1} of {total} prefixes have MC success 1, {at0} have 0, {total - at1 - at0} are in between"
        f"{samples}; label variance {float(y.var()):.4g}."
    )
    if sat:
        side = "1" if at1 >= at0 else "0"
        note += (
            f" Nearly saturated: {frac:.0%} of the prefixes sit at {side}, so correlations rest on the few "
            f"remaining prefixes and have wide intervals."
        )
    return {"saturated": bool(sat), "n_at_one": at1, "n_at_zero": at0, "note": note}


# ---------------------------------------------------------------------------------- assembled
def estimator_metrics(
    pred: ArrayLike,
    mc_mean: ArrayLike,
    outcomes: ArrayLike,
    groups: Sequence[Any] | np.ndarray,
    probability: bool | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
    unit: str = "group",
) -> dict[str, Any]:
    """Every metric of one estimator against MC labels, in the metrics.json shape.

    ``{"pearson"|"spearman"|"kendall": {"value", "ci", "n", ["note"]}, "brier", "ece",
    "auroc_outcome", "auroc_outcome_ci", "probability": bool}``; null scalar metrics have a
    ``"<metric>_note"`` beside them. Brier and ECE are against the MC means (the prefix value) and
    need a probability-valued estimator (`probability`, default: all values in [0, 1]).
    """
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(mc_mean, dtype=np.float64)
    o = np.asarray(outcomes, dtype=np.float64)
    g = np.asarray(groups)
    out: dict[str, Any] = correlations(x, y, g, n_boot=n_boot, seed=seed, unit=unit)
    prob = is_probability(x) if probability is None else bool(probability) and is_probability(x)
    out["probability"] = prob
    bad_y = int((~np.isfinite(y)).sum())
    if prob and len(x) and not bad_y:
        out["brier"] = brier(x, y)
        out["ece"] = ece(x, y, n_bins)
    else:
        out["brier"] = out["ece"] = None
        bad_x = int((~np.isfinite(x)).sum())
        if not len(x):
            why = "no prefixes"
        elif bad_x:
            why = f"the estimator has {bad_x} non-finite value(s) (NaN or inf) among {len(x)} prefixes"
        elif bad_y:
            why = f"{bad_y} of {len(y)} MC labels have no finite value (labels with no samples, n = 0)"
        elif probability is False or not ((x >= 0).all() and (x <= 1).all()):
            why = (
                "the estimator does not output a probability (values outside [0, 1], e.g. a raw logit-scale soft value)"
            )
        else:
            why = "the estimator is not registered as a probability"
        out["brier_note"] = out["ece_note"] = why
    value, note = auroc(x, o)
    out["auroc_outcome"] = value
    out["auroc_outcome_ci"] = None
    if note:
        out["auroc_outcome_note"] = note
    else:

        def _auc(idx: np.ndarray) -> float:
            v, _ = auroc(x[idx], o[idx])
            return float("nan") if v is None else v

        ci, bnote = cluster_bootstrap(_auc, g, n_boot=n_boot, seed=seed, unit=unit)
        out["auroc_outcome_ci"] = ci
        if bnote:
            out["auroc_outcome_note"] = bnote
    return out
