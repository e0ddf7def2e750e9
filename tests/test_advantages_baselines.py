"""The sign of counterfactual advantages against MC comes with its base rate (issue 28 item 6).

Most unsampled tokens are worse than their prefix, so "always negative" agrees with the MC sign for most of
them. `sign_scores` reports that majority-sign base rate beside every sign agreement, with balanced accuracy and
AUROC, which a constant guess holds at 0.5; the report names the checkpoint each figure belongs to.

    pytest tests/test_advantages_baselines.py
"""

from __future__ import annotations

import numpy as np
import pytest

from prefixvalue.evaluation.advantages import clear_sign, render_advantages_section, score_check, sign_scores
from prefixvalue.stats import wilson_interval


def _check(n_prompts: int = 20, per_prompt: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """A check table: `n_prompts` prompts of one prefix each, `per_prompt` unsampled candidates per prefix
    plus the sampled one; 9 of 10 unsampled candidates are clearly worse than the prefix, 1 clearly better."""
    rng = np.random.default_rng(seed)
    rows = n_prompts * (per_prompt + 1)
    prompt = np.repeat([f"q{i}" for i in range(n_prompts)], per_prompt + 1)
    sampled = np.tile([True] + [False] * per_prompt, n_prompts)
    prefix = np.full(rows, 0.5)
    better = np.tile([True] + [i % 10 == 0 for i in range(per_prompt)], n_prompts)
    mc = np.where(better, rng.uniform(0.7, 0.9, rows), rng.uniform(0.05, 0.3, rows))
    return {
        "prefix_id": np.array([f"{p}/t@3" for p in prompt]),
        "prompt_id": prompt,
        "sampled": sampled,
        "mc_mean": mc,
        "mc_ci_low": mc - 0.05,
        "mc_ci_high": mc + 0.05,
        "mc_prefix": prefix,
        "mc_advantage": mc - prefix,
        "fork": np.zeros(rows, bool),
        "logprob": np.log(rng.uniform(0.01, 1.0, rows)),
    }


def _add(check: dict[str, np.ndarray], name: str, advantage: np.ndarray) -> None:
    check[f"advantage_{name}"] = advantage
    check[f"value_{name}"] = check["mc_prefix"] + advantage


def test_constant_negative_guess_scores_the_base_rate_and_chance_balanced_accuracy():
    check = _check()
    rng = np.random.default_rng(1)
    _add(check, "always_neg", -rng.uniform(0.01, 0.02, len(check["mc_mean"])))  # negative, varied: Spearman works
    _add(check, "perfect", check["mc_advantage"].copy())
    _add(check, "reversed", -check["mc_advantage"])
    ckpts = {"always_neg": "runs/x/train_head/final", "perfect": "runs/x/train_head-pf-siblings/final"}
    sc = score_check(check, ["always_neg", "perfect", "reversed"], n_boot=200, seed=0, checkpoints=ckpts)
    neg = sc["models"]["always_neg"]["sign_agreement_counterfactual"]
    assert neg["n"] == 200 and (neg["n_positive"], neg["n_negative"]) == (20, 180)
    assert neg["base_rate"]["value"] == pytest.approx(0.9) and neg["base_rate"]["sign"] == "negative"
    assert neg["value"] == pytest.approx(neg["base_rate"]["value"])  # agreement = base rate ...
    assert neg["excess_over_base_rate"]["value"] == pytest.approx(0.0)
    assert neg["balanced_accuracy"]["value"] == pytest.approx(0.5)  # ... but chance balanced accuracy
    assert neg["balanced_accuracy"]["recall_negative"] == 1.0 and neg["balanced_accuracy"]["recall_positive"] == 0.0
    assert neg["unit"] == "prompt" and neg["balanced_accuracy"]["ci"] is not None
    # AUROC reads the advantage's magnitude too: unrelated to the MC sign, its CI covers 0.5
    lo, hi = neg["auroc"]["ci"]
    assert lo < 0.5 < hi
    good = sc["models"]["perfect"]["sign_agreement_counterfactual"]
    assert good["value"] == 1.0 and good["balanced_accuracy"]["value"] == 1.0 and good["auroc"]["value"] == 1.0
    assert good["excess_over_base_rate"]["value"] == pytest.approx(0.1)
    assert good["excess_over_base_rate"]["ci"][0] > 0  # beats the constant guess, paired over prompts
    bad = sc["models"]["reversed"]["sign_agreement_counterfactual"]
    assert bad["value"] == 0.0 and bad["balanced_accuracy"]["value"] == 0.0 and bad["auroc"]["value"] == 0.0
    # sampled tokens (all better than the prefix here): one MC sign only, balanced measures undefined and said so
    ss = sc["models"]["perfect"]["sign_agreement_sampled"]
    assert ss["n"] == 20 and ss["base_rate"]["sign"] == "positive" and ss["balanced_accuracy"]["value"] is None
    assert "undefined" in ss["note"]
    # every figure is named by its checkpoint
    assert sc["models"]["perfect"]["checkpoint"] == "runs/x/train_head-pf-siblings/final"
    assert sc["models"]["reversed"]["checkpoint"] is None


def test_base_rate_is_computed_not_fixed():
    """The base rate follows the data: with most candidates better than their prefix the majority is positive."""
    mc_adv = np.array([0.3, 0.2, 0.4, -0.3, 0.1, 0.2])
    clear = np.ones(6, bool)
    s = sign_scores(np.full(6, 0.01), mc_adv, clear, np.array(list("aabbcc")), n_boot=50)
    assert s["base_rate"] == {"value": pytest.approx(5 / 6), "ci": s["base_rate"]["ci"], "sign": "positive"}
    assert s["value"] == pytest.approx(5 / 6) and s["balanced_accuracy"]["value"] == pytest.approx(0.5)
    assert s["auroc"]["value"] == pytest.approx(0.5)  # a constant advantage: ties count half
    # candidates without a clear MC sign or with a NaN advantage are not counted
    s2 = sign_scores(
        np.array([0.1, np.nan, -0.1, 0.2]), np.array([0.2, 0.3, -0.2, -0.01]), np.array([1, 1, 1, 0], bool)
    )
    assert s2["n"] == 2 and s2["value"] == 1.0 and s2["balanced_accuracy"]["value"] == 1.0
    assert s2["unit"] == "candidate"
    empty = sign_scores(np.zeros(2), np.zeros(2), np.zeros(2, bool))
    assert empty["n"] == 0 and empty["value"] is None and empty["base_rate"]["value"] is None


def test_report_shows_the_base_rate_beside_every_agreement_and_names_checkpoints():
    check = _check(n_prompts=6)
    _add(check, "head-pf-siblings", -np.full(len(check["mc_mean"]), 0.01))
    _add(check, "implicit", check["mc_advantage"].copy())
    ckpts = {"head-pf-siblings": "runs/q/train_head-pf-siblings/final", "implicit": "runs/q/train_implicit/final"}
    kinds = {"head-pf-siblings": "head", "implicit": "implicit"}
    sc = score_check(check, ["head-pf-siblings", "implicit"], n_boot=50, checkpoints=ckpts, kinds=kinds)
    metrics = {"check": sc, "n_traces": 6, "top_k": 4, "n_rows": 66, "dataset": "advantages.parquet", "samples": 8}
    md = render_advantages_section(metrics)
    assert "`runs/q/train_head-pf-siblings/final`" in md and "`runs/q/train_implicit/final`" in md
    # a row names the model and its kind (once when the name is the kind)
    assert "| head-pf-siblings (head) |" in md and "| implicit |" in md and "implicit (implicit)" not in md
    sign_rows = [ln for ln in md.splitlines() if "| counterfactual |" in ln or "| sampled |" in ln]
    assert [ln.split(" | ")[0:2] for ln in sign_rows] == [
        ["| head-pf-siblings (head)", "counterfactual"],
        ["| head-pf-siblings (head)", "sampled"],
        ["| implicit", "counterfactual"],
        ["| implicit", "sampled"],
    ]
    head_cf = sc["models"]["head-pf-siblings"]["sign_agreement_counterfactual"]
    # the head's row: n (+/−), base rate 0.90 (negative), agreement 0.90, excess 0.00, balanced accuracy 0.50
    row = next(ln for ln in sign_rows if ln.startswith("| head-pf-siblings (head) | counterfactual"))
    assert f"{head_cf['n']} ({head_cf['n_positive']}/{head_cf['n_negative']})" in row
    assert "0.90" in row and "(negative)" in row and "| 0.50" in row
    assert "balanced accuracy" in md and "base rate" in md


def test_clear_sign_counts_the_prefix_estimates_noise_too():
    """A candidate's Wilson interval can exclude the prefix's *point* estimate while the two estimates, both from
    32 continuations, do not differ clearly: Newcombe's interval of the difference decides (docs/design.md,
    "Counterfactual token advantages"). An EOS candidate (n = 0, exact) is clear against a far prefix."""
    n = 32
    cand = np.array([24.0, 32.0, 0.0])  # successes: 0.75, 1.0, and an EOS candidate scored 0 exactly
    pref = np.array([18.0, 10.0, 16.0])  # 0.5625, 0.3125, 0.5
    lo, hi = zip(*(wilson_interval(k, n) for k in cand[:2]))
    plo, phi = zip(*(wilson_interval(k, n) for k in pref))
    check = {
        "mc_mean": cand / n,
        "mc_ci_low": np.array([*lo, 0.0]),
        "mc_ci_high": np.array([*hi, 0.0]),
        "mc_prefix": pref / n,
        "mc_prefix_ci_low": np.array(plo),
        "mc_prefix_ci_high": np.array(phi),
    }
    assert check["mc_ci_low"][0] > check["mc_prefix"][0]  # the point rule would call the first one clear
    clear, rule = clear_sign(check)
    assert clear.tolist() == [False, True, True] and "Newcombe" in rule
    old = {k: v for k, v in check.items() if not k.startswith("mc_prefix_ci")}
    clear_old, rule_old = clear_sign(old)  # a check written without the prefix's interval: the point rule
    assert clear_old.tolist() == [True, True, True] and "prefix's mean" in rule_old
