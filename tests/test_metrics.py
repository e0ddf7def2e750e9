"""Metrics cross-checked against scipy and hand computations; the zero-variance path."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats

from prefixvalue.evaluation import metrics as M


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 60
    x = rng.normal(size=n)
    y = np.round(np.clip(0.5 + 0.3 * x + rng.normal(scale=0.3, size=n), 0, 1) * 8) / 8  # k/n-like, with ties
    groups = np.repeat(np.arange(12), 5)
    return x, y, groups


def test_correlations_match_scipy(data):
    x, y, g = data
    res = M.correlations(x, y, g, n_boot=200)
    assert res["pearson"]["value"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert res["spearman"]["value"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert res["kendall"]["value"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    for m in res.values():
        lo, hi = m["ci"]
        assert lo <= m["value"] <= hi and hi - lo > 0


def test_kendall_tau_b_brute_force(data):
    x, y, _ = data
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif dx == dy:
            conc += 1
        else:
            disc += 1
    tau_b = (conc - disc) / np.sqrt((conc + disc + tx) * (conc + disc + ty))
    assert M.correlation(x, y, method="kendall", n_boot=0)["value"] == pytest.approx(tau_b, abs=1e-12)


def test_bootstrap_resamples_traces_not_prefixes():
    # trace 0's prefixes are all 0, trace 1's all 1. Resampling the 2 traces gives means 0, 1/2 or 1
    # only (probabilities 1/4, 1/2, 1/4), so the 95% CI is [0, 1]; resampling the 6 prefixes would
    # give means k/6 and a CI of about [1/6, 5/6] (all six prefixes from one trace has chance 1/32).
    values = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    seen = set()

    def mean(idx):
        seen.add(float(values[idx].mean()))
        return float(values[idx].mean())

    ci, note = M.cluster_bootstrap(mean, [0, 0, 0, 1, 1, 1], n_boot=400)
    assert seen == {0.0, 0.5, 1.0} and ci == [0.0, 1.0] and note is None
    x = np.array([0.0, 1.0, 2.0, 10.0, 11.0, 12.0])
    assert M.correlation(x, x**2, [0, 0, 0, 1, 1, 1], "pearson", n_boot=50)["ci"] is not None


def test_zero_variance_labels_give_words_not_nan():
    x = np.linspace(0, 1, 20)
    y = np.ones(20)
    res = M.correlations(x, y, np.arange(20) // 4, n_boot=50)
    for m in res.values():
        assert m["value"] is None and m["ci"] is None
        assert "zero variance" in m["note"] and "all 20 prefixes" in m["note"]
    json.dumps(res, allow_nan=False)
    sat = M.saturation(y, np.full(20, 12))
    assert sat["saturated"] and sat["n_at_one"] == 20
    assert "all 20 prefixes" in sat["note"] and "12 samples" in sat["note"]
    nc = M.split_half_noise_ceiling(np.full(20, 12), np.full(20, 12), repeats=10)
    assert nc["spearman"] is None and "zero variance" in nc["note"]
    em = M.estimator_metrics(x, y, np.ones(20), np.arange(20) // 4, n_boot=20)
    assert em["auroc_outcome"] is None and "20 successful, 0 failed" in em["auroc_outcome_note"]
    json.dumps(em, allow_nan=False)


def test_constant_estimator_is_named():
    y = np.array([0.0, 0.5, 1.0, 0.25, 0.75, 0.5])
    res = M.correlation(np.full(6, 0.3), y, method="spearman")
    assert res["value"] is None and "estimator has zero variance" in res["note"]


def test_auroc_equals_mann_whitney(data):
    x, y, _ = data
    o = (y >= 0.5).astype(float)
    value, note = M.auroc(x, o)
    u = stats.mannwhitneyu(x[o == 1], x[o == 0]).statistic
    assert note is None
    assert value == pytest.approx(u / ((o == 1).sum() * (o == 0).sum()))
    assert M.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])[0] == 1.0
    assert M.auroc([0.5, 0.5, 0.5], [0, 1, 1])[0] == 0.5


def test_brier_and_ece_by_hand():
    assert M.brier([0.2, 0.8], [0.0, 1.0]) == pytest.approx(0.04)
    # bins of width 1/15: 0.1 and 0.12 share bin 1; 0.9 is in bin 13; 1.0 goes to the last bin
    p = [0.1, 0.12, 0.9, 1.0]
    t = [0.0, 0.5, 1.0, 1.0]
    expected = 2 / 4 * abs(0.11 - 0.25) + 1 / 4 * abs(0.9 - 1.0) + 1 / 4 * 0.0
    assert M.ece(p, t) == pytest.approx(expected)
    assert M.ece([0.3, 0.3], [0.3, 0.3]) == pytest.approx(0.0)
    bins = M.calibration_bins(p, t)
    assert [b["bin"] for b in bins] == [1, 13, 14] and sum(b["count"] for b in bins) == 4
    # ECE with one bin is |mean p - mean t|
    assert M.ece([0.2, 0.6], [1.0, 1.0], n_bins=1) == pytest.approx(0.6)


def test_wilson_interval_matches_scipy():
    for n in (1, 2, 7, 32, 64, 1000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            ci = stats.binomtest(k, n).proportion_ci(method="wilson")
            assert M.wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12), (k, n)


def test_wilson_and_spearman_brown():
    lo, hi = M.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert M.wilson_interval(0, 10)[0] == 0.0
    assert M.spearman_brown(0.5) == pytest.approx(2 / 3)


def test_noise_ceiling_tracks_sample_count():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 300)
    few = M.split_half_noise_ceiling(np.full(300, 4), rng.binomial(4, p), repeats=20)
    many = M.split_half_noise_ceiling(np.full(300, 64), rng.binomial(64, p), repeats=20)
    assert few["method"] == "hypergeometric" and "hypergeometric" in few["note"]
    assert 0 < few["spearman"] < many["spearman"] <= 1
    # the real predictor (the truth) reaches about the ceiling, not beyond it by much
    k = rng.binomial(16, p)
    truth_r = stats.spearmanr(p, k / 16).statistic
    ceil = M.split_half_noise_ceiling(np.full(300, 16), k, repeats=30)["spearman"]
    assert abs(truth_r - ceil) < 0.08


def test_noise_ceiling_of_disagreeing_halves_is_null_not_zero_or_a_crash():
    """Issue 14 item 8: split-half r = -1 (k = 1 of n = 2 everywhere: the halves are complements) crashed in
    Spearman–Brown; reliability <= 0 is null with a note, not 0.0."""
    exact = M.split_half_noise_ceiling(np.full(30, 2), np.full(30, 1), repeats=9)
    assert exact["split_half"] == -1.0 and exact["spearman"] is None and exact["reliability"] is None
    assert "undefined" in exact["note"]
    k = np.array([1] * 30 + [0, 2, 0, 2])
    neg = M.split_half_noise_ceiling(np.full(len(k), 2), k, repeats=21)
    assert -1 < neg["split_half"] <= 0 and neg["reliability"] <= 0
    assert neg["spearman"] is None and "no measurable signal" in neg["note"]


def test_noise_ceiling_keeps_fractional_successes():
    """Issue 14 item 10: fractional successes (verifier scores in (0, 1)) are not truncated to integers."""
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 200)
    k = rng.binomial(16, p) + 0.5 * (rng.random(200) < 0.5)
    k = np.minimum(k, 16)
    res = M.split_half_noise_ceiling(np.full(200, 16), k, repeats=10)
    assert "randomly rounded" in res["method"] and "fractional" in res["note"]
    assert 0 < res["spearman"] <= 1


def test_nan_labels_and_estimators_get_the_right_words():
    """Issue 14 item 9: NaN labels do not print "variance nan"; a NaN estimator is named as non-finite."""
    sat = M.saturation(np.array([0.5, np.nan, 1.0, 0.25]), np.array([4, 0, 4, 4]))
    assert "nan" not in sat["note"].lower() and "no finite value" in sat["note"]
    assert sat["definition"].startswith(">= 95%")
    x = np.array([0.1, np.nan, 0.5, 0.7])
    m = M.estimator_metrics(
        x, np.array([0.0, 0.5, 0.5, 1.0]), np.array([0, 1, 0, 1]), np.arange(4), probability=True, n_boot=0
    )
    assert m["brier"] is None and "non-finite" in m["brier_note"] and "outside [0, 1]" not in m["brier_note"]
    m = M.estimator_metrics(
        np.array([0.1, 0.2, 0.5, 0.7]),
        np.array([0.0, np.nan, 0.5, 1.0]),
        np.array([0, 1, 0, 1]),
        np.arange(4),
        probability=True,
        n_boot=0,
    )
    assert m["brier"] is None and "labels with no samples" in m["brier_note"]


def test_paired_difference_uses_the_same_replicates():
    rng = np.random.default_rng(0)
    y = rng.uniform(size=60)
    a, b = y + rng.normal(scale=0.1, size=60), y + rng.normal(scale=0.5, size=60)
    g = np.repeat(np.arange(15), 4)
    d = M.paired_difference(a, b, y, g, n_boot=200, seed=1, unit="prompt")
    ca, cb = M.correlation(a, y, g, n_boot=0), M.correlation(b, y, g, n_boot=0)
    assert d["value"] == pytest.approx(ca["value"] - cb["value"]) and d["unit"] == "prompt"
    assert d["ci"][0] > 0  # paired: the clearly better estimator wins on every resample


def _copy_by_copy(stat, groups, n_boot, seed):
    """The cluster bootstrap written out: each replicate draws groups and concatenates their elements."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
    rng, vals = np.random.default_rng(seed), []
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), size=len(members))
        vals.append(stat(np.concatenate([members[j] for j in pick])))
    return np.asarray(vals)


def test_multiset_bootstrap_is_the_cluster_bootstrap_without_copies():
    """Spearman and AUROC of each resample from its multiplicities (``cluster_bootstrap(..., multiset=True)``)
    equal the same statistic of the concatenated copies, replicate by replicate, ties included (groups of
    unequal size)."""
    rng = np.random.default_rng(5)
    n = 90
    groups = rng.integers(0, 17, size=n).astype(str)
    x = np.round(rng.normal(size=n), 1)
    y = np.round(np.clip(0.5 + 0.3 * x + rng.normal(scale=0.3, size=n), 0, 1) * 4) / 4
    o = (rng.random(n) < y).astype(float)
    spearman = M.CORRELATION_FUNCS["spearman"]

    def area(i):
        v, _ = M.auroc(x[i], o[i])
        return float("nan") if v is None else v

    for stat, multiset in (
        (lambda i: spearman(x[i], y[i]), M.weighted_spearman(x, y)),
        (area, M.weighted_auroc(x, o)),
    ):
        seen = []

        def record(w, multiset=multiset, seen=seen):
            seen.append(multiset(w))
            return seen[-1]

        got = M.cluster_bootstrap(record, groups, n_boot=300, seed=3, multiset=True)
        np.testing.assert_allclose(np.concatenate(seen), _copy_by_copy(stat, groups, 300, 3), rtol=0, atol=1e-12)
        want = M.cluster_bootstrap(stat, groups, n_boot=300, seed=3)
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-12)
    # a replicate that holds one tie group of x (or one class) is undefined: dropped and counted alike
    xs, ys, gs = np.array([0, 0, 0, 1, 1, 1.0]), np.array([0, 0, 0, 1, 2, 3.0]), [0, 0, 0, 1, 1, 1]
    slow = M.cluster_bootstrap(lambda i: spearman(xs[i], ys[i]), gs, n_boot=200)
    assert M.cluster_bootstrap(M.weighted_spearman(xs, ys), gs, n_boot=200, multiset=True) == slow
    assert slow[0] is None and "undefined in" in slow[1]
    assert np.isnan(M.weighted_auroc(xs, ys >= 2)(np.array([[3.0, 3, 3, 0, 0, 0]]))).all()  # one class only


def test_cluster_bootstrap_draws_unchanged():
    """The replicates `cluster_bootstrap` feeds its statistic are those of the concatenation written out (the
    figures of earlier versions)."""
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 9, size=40)
    v = rng.normal(size=40)
    want = _copy_by_copy(lambda i: float(v[i].mean() + 0.01 * len(i)), groups, 200, 7)
    seen = []

    def record(i):
        seen.append(float(v[i].mean() + 0.01 * len(i)))
        return seen[-1]

    M.cluster_bootstrap(record, groups, 200, 7)
    np.testing.assert_array_equal(np.asarray(seen), want)
