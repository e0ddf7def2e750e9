"""benchmarks/record_smollm2.py: the `smollm2` entry of results.json is read from a run's metrics.json, and its
goals are decided by the CIs' lower bounds, never set by hand."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the recorder imports its `common`

import record_smollm2  # noqa: E402


def _metrics(spearman_ci, share_ci, paired_ci) -> dict:
    """The parts of a quickstart metrics.json the recorder reads."""
    sp = {
        "value": 0.4,
        "ci": spearman_ci,
        "fraction_of_ceiling": 0.5,
        "fraction_of_ceiling_ci": share_ci,
        "paired_vs_mellowmax": {"value": 0.3, "ci": paired_ci},
    }
    recipes = {"head-pf-siblings": {"value_model.kind": "head"}, "implicit": {"value_model.kind": "implicit"}}
    return {
        "quickstart": {
            "config": {
                "policy": "smollm2.gguf",
                "collect": {"task": "jsonl", "task_args": {"path": "data/arith_chains/arith_chains.jsonl"},
                            "num_prompts": 440, "traces_per_prompt": 8, "max_new_tokens": 64},
                "value_models": recipes,
            },
            "quality": {"mellowmax_spearman": 0.1, "limits": ["label noise"]},
            "policy_accuracy": 0.32,
            "train_prompts": 290,
            "seeds": {"spearman_per_seed": {"0": 0.4, "1": 0.38, "2": 0.41}, "spearman_mean": 0.397},
            "seconds": {"total": 4000.0},
            "fresh_run": True,
        },
        "estimators": {"learned": {"spearman": sp}, "learned_implicit": {"spearman": {"value": 0.1, "ci": [0.0, 0.2]}}},
        "selection": [{"what": "learned: ...", "chosen": "head-pf-siblings",
                       "candidates": {"head-pf-siblings": 0.35, "implicit": 0.12}}],
        "traces_finish": {"truncated_fraction": 0.045},
        "split": {"heldout_prompts": 102},
        "n_prefixes": 444,
        "mc": {"samples_per_prefix": 16, "noise_ceiling": {"spearman": 0.8}},
        "step_verification": {"f1": 0.5, "label_source": "mc: ...", "n_test": 51},
    }  # fmt: skip


def test_goals_follow_the_ci_lower_bounds():
    f = record_smollm2.figures(_metrics([0.2, 0.6], [0.52, 0.7], [0.1, 0.5]))
    assert f["goals"] == {
        "spearman_ci_lower_above_0": True,
        "share_of_ceiling_ci_lower_at_least_0.5": True,
        "above_mellowmax_by_paired_ci": True,
    }
    missed = record_smollm2.figures(_metrics([-0.05, 0.6], [0.3, 0.7], [-0.1, 0.5]))["goals"]
    assert not any(missed.values())
    assert record_smollm2.figures(_metrics(None, None, None))["goals"] == dict.fromkeys(missed, False)


def test_every_recipe_is_recorded_with_its_validation_and_test_figures():
    f = record_smollm2.figures(_metrics([0.2, 0.6], [0.52, 0.7], [0.1, 0.5]))
    assert f["learned"] == "head-pf-siblings" and f["heldout_prompts_labelled"] == 102
    assert f["recipes"]["head-pf-siblings"]["test_spearman"] == 0.4
    assert f["recipes"]["implicit"] == {
        "validation_spearman": 0.12,
        "test_spearman": 0.1,
        "test_spearman_ci": [0.0, 0.2],
        "overrides": {"value_model.kind": "implicit"},
    }
    assert f["step_verification"]["label_source"].startswith("mc")
