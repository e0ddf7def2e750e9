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

The statistics underneath (the raw correlations, the null-with-note `prefixvalue.stats.spearman`, the
cluster bootstrap, AUROC, Brier, the Wilson interval) are `prefixvalue.stats`'s, shared with sampling
and the value models; they are importable from here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..formatting import significant
from ..stats import (
    CORRELATION_FUNCS,
    CORRELATIONS,
    ArrayLike,
    _spearman_raw,
    auroc,
    brier,
    cluster_bootstrap,
    constant_note,
    spearman_brown,
    undefined_note,
    weighted_auroc,
    weighted_correlation,
    weighted_spearman,
    wilson_interval,
)
from ..tracking import jsonable


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
    undefined = undefined_note(x, y)
    out: dict[str, Any] = {"value": None, "ci": None, "n": len(x)}
    if undefined:
        out["note"] = undefined
        return out
    fn = CORRELATION_FUNCS[method]
    out["value"] = jsonable(fn(x, y))
    g = np.arange(len(x)) if groups is None else np.asarray(groups)
    multiset = weighted_correlation(method, x, y)  # the same replicates without a copy of each (Spearman)
    if multiset is not None:
        ci, note = cluster_bootstrap(multiset, g, n_boot=n_boot, seed=seed, unit=unit, multiset=True)
    else:
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
    wa, wb = weighted_correlation(method, a, y), weighted_correlation(method, b, y)
    if wa is not None and wb is not None:
        ci, note = cluster_bootstrap(
            lambda w: wa(w) - wb(w), np.asarray(groups), n_boot, seed, unit=unit, multiset=True
        )
    else:
        ci, note = cluster_bootstrap(
            lambda idx: fn(a[idx], y[idx]) - fn(b[idx], y[idx]), np.asarray(groups), n_boot, seed, unit=unit
        )
    out["ci"] = ci
    if note:
        out["note"] = note
    return out


# ------------------------------------------------------------------------------ calibration
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
            f"saturated: all {total} prefixes have MC success {significant(float(y[0]))}{samples}. The labels have "
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
        ci, bnote = cluster_bootstrap(weighted_auroc(x, o), g, n_boot=n_boot, seed=seed, unit=unit, multiset=True)
        out["auroc_outcome_ci"] = ci
        if bnote:
            out["auroc_outcome_note"] = bnote
    return out


__all__ = [
    "CORRELATIONS",
    "CORRELATION_FUNCS",
    "SATURATION_SHARE",
    "ArrayLike",
    "_spearman_raw",
    "auroc",
    "brier",
    "calibration_bins",
    "cluster_bootstrap",
    "constant_note",
    "correlation",
    "correlations",
    "ece",
    "estimator_metrics",
    "is_probability",
    "paired_difference",
    "saturation",
    "spearman_brown",
    "split_half_noise_ceiling",
    "weighted_auroc",
    "weighted_correlation",
    "weighted_spearman",
    "wilson_interval",
]
