"""Analyses of an evaluation: the traces with the largest Monte Carlo value jumps and their forking
tokens, the short-prefix study (soft and learned values on the first K tokens), and the quality goal.

The quickstart reports all three (`prefixvalue.stages.quickstart`); `prefixvalue.evaluation.report`
renders them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .estimators import Estimator
from .scoring import EvalResult, evaluate_prefixes

#: share of the noise ceiling the learned value should reach (the quality goal)
CEILING_GOAL = 0.8

if TYPE_CHECKING:  # the stage's config; the stage imports this module, not the reverse
    from ..stages.evaluate import EvaluateConfig


def largest_jumps(result: EvalResult, k: int, tokenizer: Any = None) -> list[dict[str, Any]]:
    """The `k` traces whose MC curve has the largest jump between neighbouring labelled prefixes.

    For each trace the jump is the largest |mean(b) - mean(a)| over neighbouring labelled positions
    a < b; when b = a + 1 the forking token is completion token a (appending it moves the success
    rate). `separated` says whether the two Wilson intervals are disjoint.
    """
    rows = []
    for i, (t, mc) in enumerate(zip(result.traces, result.mc)):
        pos, mean = np.asarray(mc["position"]), np.asarray(mc["mean"])
        if len(pos) < 2:
            continue
        order = np.argsort(pos)
        pos, mean, lo, hi = pos[order], mean[order], np.asarray(mc["ci_low"])[order], np.asarray(mc["ci_high"])[order]
        d = np.diff(mean)
        j = int(np.argmax(np.abs(d)))
        a, b = int(pos[j]), int(pos[j + 1])
        token_ids = t.completion_ids[a:b]
        text = tokenizer.decode(token_ids) if tokenizer is not None else str(token_ids)
        cur = result.curves[i]
        row = {"trace_index": i, "trace_id": t.trace_id, "prompt_id": t.prompt_id, "outcome": t.outcome,
               "from_position": a, "to_position": b, "token_index": a, "token_ids": token_ids, "token": text,
               "jump": float(d[j]), "mc_before": float(mean[j]), "mc_after": float(mean[j + 1]),
               "ci_before": [float(lo[j]), float(hi[j])], "ci_after": [float(lo[j + 1]), float(hi[j + 1])],
               "separated": bool(hi[j] < lo[j + 1] or hi[j + 1] < lo[j]),
               "prompt": t.prompt, "completion": t.completion}
        for name in ("learned", "mellowmax"):
            if name in cur:
                row[f"{name}_before"], row[f"{name}_after"] = float(cur[name][a]), float(cur[name][b])
        rows.append(row)
    rows.sort(key=lambda r: (-abs(r["jump"]), r["trace_id"]))
    return rows[:k]


def _corr_summary(m: dict[str, Any]) -> dict[str, Any]:
    """Value and CI of the Spearman and Pearson correlations of one estimator's metrics."""
    return {c: {"value": m[c].get("value"), "ci": m[c].get("ci")} for c in ("spearman", "pearson")}


def short_prefix_study(traces: Any, labels: Any, k_max: int, value_model: Any, policy: Any, tokenizer: Any,
                       ecfg: EvaluateConfig, extra: dict[str, Estimator]) -> dict[str, Any]:
    """The short-prefix study: for K = 1..k_max, soft and learned values vs MC success on prefixes of
    at most K completion tokens (positions 0..K, one trace per prompt), with bootstrap CIs.

    `ecfg` is the `EvaluateConfig` and `extra` the estimators beside the built-in ones. Returns
    ``{"short:K": {"n_prefixes", "n_traces", "samples_per_prefix", "label_mean", "label_variance",
    "saturated", "noise_ceiling_spearman", "estimators": {name: {spearman, pearson}}}}``."""
    rows = [dict(r) for r in labels]
    out: dict[str, Any] = {}
    for k in range(1, k_max + 1):
        sub = [r for r in rows if int(r["position"]) <= k]
        res = evaluate_prefixes(traces, sub, value_model=value_model, policy=policy, tokenizer=tokenizer,
                                config=ecfg, estimators=extra)
        mc = res.metrics["mc"]
        out[f"short:{k}"] = {
            "n_prefixes": res.metrics["n_prefixes"], "n_traces": res.metrics["n_traces"],
            "samples_per_prefix": mc["samples_per_prefix"], "label_mean": mc["label_mean"],
            "label_variance": mc["label_variance"], "saturated": mc["saturated"],
            "noise_ceiling_spearman": mc["noise_ceiling"].get("spearman"),
            "estimators": {n: _corr_summary(m) for n, m in res.metrics["estimators"].items()},
        }
    return out


def quality_verdict(metrics: dict[str, Any], train_results: dict[str, dict[str, Any]],
                    n_train_traces: int) -> dict[str, Any]:
    """The quality goal (learned Spearman >= `CEILING_GOAL` of the noise ceiling, and above MellowMax),
    measured, with what limits it when it is missed.

    `train_results` maps each value-model kind to its training result with ``eval_curve``, the
    (step, held-out Brier) pairs of its held-out evaluations; `n_train_traces` is the size of the
    training set. Returns the verdict dict (``met``, ``limits`` in words, ...)."""
    ests = metrics["estimators"]
    ceiling = metrics["mc"]["noise_ceiling"].get("spearman")
    learned = ests.get("learned", {}).get("spearman", {}).get("value")
    mellow = ests.get("mellowmax", {}).get("spearman", {}).get("value")
    frac = learned / ceiling if (learned is not None and ceiling) else None
    reached = frac is not None and frac >= CEILING_GOAL
    beats = learned is not None and mellow is not None and learned > mellow
    verdict: dict[str, Any] = {"goal": f"learned Spearman >= {CEILING_GOAL:.0%} of the noise ceiling and > MellowMax",
                               "learned_spearman": learned, "noise_ceiling": ceiling, "fraction_of_ceiling": frac,
                               "mellowmax_spearman": mellow, "reaches_ceiling_goal": reached,
                               "beats_mellowmax": beats, "met": bool(reached and beats)}
    for name, m in ests.items():
        if name.startswith("learned_"):
            v = m["spearman"].get("value")
            verdict[f"{name}_fraction_of_ceiling"] = v / ceiling if (v is not None and ceiling) else None
    limits = []
    if ceiling is not None and ceiling < 0.6:
        limits.append(f"label noise: the split-half noise ceiling is only {ceiling:.2f}; more MC samples per "
                      "prefix (label_samples) raise it")
    if metrics["mc"].get("saturated"):
        limits.append("labels are saturated (variance <= 0.05): the held-out prefixes barely differ in value")
    for kind, r in train_results.items():
        tl, hl = r.get("train_loss"), r.get("loss")
        if tl is not None and hl is not None and hl > tl + 0.03:
            limits.append(f"overfitting ({kind}): held-out loss {hl:.3f} vs training loss {tl:.3f} at the end; "
                          "more traces per parameter (num_prompts) or a smaller LoRA rank would help")
        curve = r.get("eval_curve") or []
        if len(curve) >= 2 and curve[-1][1] is not None and curve[-2][1] is not None and curve[-1][1] < curve[-2][1] - 0.002:
            limits.append(f"training ({kind}): held-out Brier still fell by {curve[-2][1] - curve[-1][1]:.4f} over "
                          "the last evaluation interval; more steps (train.max_steps) or more traces would help")
    if not verdict["met"]:
        limits.append(f"data: {n_train_traces} training traces of one tiny policy; the value model sees each "
                      "outcome once, so the prefix signal is 1-bit per trace. Scaling num_prompts (and "
                      "train.max_steps with it) 4-10x is the first lever, then a larger policy on a GPU")
    verdict["limits"] = limits if not verdict["met"] else []
    return verdict
