"""Record a `make smollm2-bench` run as ``smollm2`` in benchmarks/results.json.

    python benchmarks/record_smollm2.py runs/smollm2-bench      # after the quickstart on recipes/smollm2-bench.yaml

Reads RUN_DIR/metrics.json (the quickstart's one evaluator on the held-out labels) and records the figures the
real-model issue asks for, each with its 95% CI: the learned value's Spearman with MC and its share of the noise
ceiling, learned − MellowMax (paired bootstrap), every recipe's validation and test Spearman, the spread over
training seeds, and the step-verification F1 with its label source. The goals are evaluated from those CIs' lower
bounds, never set by hand. The wall clock is recorded only for a fresh run (a resumed run understates it).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from common import record, run_metrics

#: the issue's goals on the held-out prefixes: CI lower bounds
SHARE_GOAL = 0.5


def figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``smollm2`` entry of results.json from a quickstart run's metrics.json."""
    q = metrics["quickstart"]
    cfg = q["config"]
    quality = q["quality"]
    sp = metrics["estimators"]["learned"]["spearman"]
    share_ci = sp.get("fraction_of_ceiling_ci") or [None, None]
    paired = sp.get("paired_vs_mellowmax") or {}
    choice = next(s for s in metrics["selection"] if s["what"].startswith("learned"))
    recipes = {
        name: {
            "validation_spearman": choice["candidates"].get(name),
            "test_spearman": (metrics["estimators"].get(est) or {}).get("spearman", {}).get("value"),
            "test_spearman_ci": (metrics["estimators"].get(est) or {}).get("spearman", {}).get("ci"),
            "overrides": cfg["value_models"][name],
        }
        for name in cfg["value_models"]
        for est in ["learned" if name == choice["chosen"] else f"learned_{name}"]
    }
    sv = metrics.get("step_verification") or {}
    lower = lambda ci: None if not ci or ci[0] is None else float(ci[0])  # noqa: E731
    goals = {
        "spearman_ci_lower_above_0": (lower(sp.get("ci")) or 0.0) > 0,
        "share_of_ceiling_ci_lower_at_least_0.5": (lower(share_ci) or 0.0) >= SHARE_GOAL,
        "above_mellowmax_by_paired_ci": (lower(paired.get("ci")) or 0.0) > 0,
    }
    return {
        "model": cfg["policy"],
        "task": cfg["collect"].get("task_args", {}).get("path") or cfg["collect"]["task"],
        "system_prompt": cfg["collect"].get("system_prompt"),
        "prompts": cfg["collect"]["num_prompts"],
        "traces_per_prompt": cfg["collect"]["traces_per_prompt"],
        "max_new_tokens": cfg["collect"]["max_new_tokens"],
        "policy_accuracy": q["policy_accuracy"],
        "truncated_fraction": metrics["traces_finish"]["truncated_fraction"],
        "train_prompts": q["train_prompts"],
        "validation_prompts": q.get("validation_prompts"),
        "heldout_prompts_labelled": metrics["split"].get("heldout_prompts"),
        "labelled_prefixes": metrics["n_prefixes"],
        "mc_samples_per_prefix": metrics["mc"]["samples_per_prefix"],
        "noise_ceiling": metrics["mc"]["noise_ceiling"]["spearman"],
        "learned": choice["chosen"],
        "learned_spearman": sp["value"],
        "learned_spearman_ci": sp.get("ci"),
        "share_of_ceiling": sp.get("fraction_of_ceiling"),
        "share_of_ceiling_ci": share_ci,
        "mellowmax_spearman": quality.get("mellowmax_spearman"),
        "learned_minus_mellowmax": paired.get("value"),
        "learned_minus_mellowmax_ci": paired.get("ci"),
        "seeds": {k: q["seeds"].get(k) for k in ("spearman_per_seed", "spearman_mean", "spearman_sd", "spearman_ci")},
        "recipes": recipes,
        "step_verification": {
            k: sv.get(k) for k in ("f1", "acc_erroneous", "acc_correct", "n_test", "label_source", "note")
        },
        "goals": goals,
        "limits": quality.get("limits"),
        "stage_seconds": q["seconds"],
        "fresh_run": bool(q.get("fresh_run")),
    }


def main(argv: list[str]) -> int:
    metrics = run_metrics(argv, __doc__)
    if metrics is None:
        return 2
    f = figures(metrics)
    if not f["fresh_run"]:
        f["stage_seconds_note"] = "this run resumed an existing folder: the stage times cover the last part only"
    record("smollm2", f["share_of_ceiling"], unit="share of the noise ceiling (learned Spearman / ceiling)", **f)
    print(json.dumps({k: f[k] for k in ("learned", "learned_spearman_ci", "share_of_ceiling_ci", "goals")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
