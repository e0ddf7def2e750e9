"""benchmarks/counterfactual_bound.py: the continuation oracle completes an arith chain correctly from what is
written, so every prefix of a correct solution continues to the expected answer, and a wrong digit carries through
the rest of the chain."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the script imports its `common`

import counterfactual_bound  # noqa: E402
import counterfactual_frontier  # noqa: E402

from prefixvalue.tasks.arith import ArithTask  # noqa: E402


def test_every_prefix_of_a_correct_solution_continues_to_the_answer():
    task = ArithTask()
    for prompt in task.prompts(20, split="test"):
        nums, ops = task.parse_prompt(prompt.text)
        solution = task.solve(nums, ops)
        expected = int(solution.rsplit("A:", 1)[1])
        for k in range(len(solution) + 1):
            assert counterfactual_bound.continued_answer(prompt.text, solution[:k]) == expected, solution[:k]


def test_written_mistakes_carry_through_and_malformed_text_is_unreadable():
    answer = counterfactual_bound.continued_answer
    p = "Q:3+5*2-7="  # 3+5=8;8*2=6;6-7=9;A:9
    assert answer(p, "4") == 1  # 4+5=9, 9*2=8, 8-7=1
    assert answer(p, "3*") == 3  # 3*5=5, 5*2=0, 0-7=3
    assert answer(p, "3+5=7") == 7  # 7*2=4, 4-7=7 (mod 10)
    assert answer(p, "3+5=8;8*2=1") == 4
    assert answer(p, "3+5=8;8*2=6;6-7=9;A:2") == 2
    assert answer("Q:3*0+1=", "3*0=7") == 8  # no multiplier left: the wrong digit decides
    assert answer("Q:3+4*0=", "3+4=2") == 0  # a later *0 maps every digit to the same answer
    for bad in ("x", "3+5=8;;", "=", "3+5=8;A", "3+5=8;8*2=6;6-7=9;A:9;", "3+5=8;8*2=6;6-7=9;:"):
        assert answer(p, bad) is None, bad


def _model_entry(kind: str, within: float) -> dict:
    return {
        "kind": kind,
        "within_spearman": {"value": within, "ci": [within - 0.1, within + 0.1], "n_prefixes": 10},
        "within_by_prefix": {"decision": {"value": within + 0.1}, "confident": {"value": within - 0.1}},
        "sign_agreement_counterfactual": {"n": 30, "balanced_accuracy": {"value": 0.7, "ci": [0.6, 0.8]}},
        "calibration_counterfactual": {"brier": 0.1},
    }


def test_counterfactual_frontier_rows(tmp_path):
    """One-pass models first, best within-prefix first; the prefix Spearman comes from the evaluation's learned_<name>
    estimator, or from `learned` for the checkpoint the evaluation chose; references keep their ceilings."""
    run = tmp_path / "run"
    (run / "advantages").mkdir(parents=True)
    ceiling = {"value": 0.9, "n_prefixes": 10}
    check = {
        "n_prefixes": 10,
        "n_clear_sign": {"counterfactual": 30},
        "models": {
            "head-x": _model_entry("head", 0.5),
            "q-a": _model_entry("qhead", 0.3),
            "q-b": _model_entry("qhead", 0.4),
        },
        "policy_prob": {"within_spearman": {"value": 0.35, "ci": None}, "within_by_prefix": {}},
        "within_noise_ceiling": ceiling,
        "within_noise_ceiling_by_prefix": {"decision": ceiling, "confident": ceiling},
        "within_value_ceiling": {"value": 0.8, "n_prefixes": 10},
        "within_value_ceiling_by_prefix": {"decision": {"value": 0.75}, "confident": {"value": 0.82}},
    }
    adv = {
        "check": check,
        "cost": {
            "head-x": {"one_pass": False, "tokens": 1000},
            "q-a": {"one_pass": True, "tokens": 20},
            "q-b": {"one_pass": True, "tokens": 20, "passes": 2},
        },
        "checkpoints": {"head-x": "ck/head", "q-a": "ck/qa", "q-b": "ck/qb"},
        "split": "test",
        "n_traces": 3,
        "samples": 32,
        "top_k": 5,
    }
    (run / "advantages" / "metrics.json").write_text(json.dumps({"advantages": adv}))
    sp = {"value": 0.7, "fraction_of_ceiling": 0.71}
    evaluation = {"checkpoint": "ck/head", "estimators": {"learned": {"spearman": sp}, "learned_q-a": {"spearman": sp}}}
    (run / "metrics.json").write_text(json.dumps(evaluation))
    rows, meta = counterfactual_frontier.rows_of(run, run / "advantages")
    assert [r["model"] for r in rows] == ["q-b", "q-a", "head-x"]
    assert rows[2]["prefix_share"] == 0.71 and rows[1]["prefix_share"] == 0.71 and rows[0]["prefix_share"] is None
    assert "checker probability" not in meta["references"]
    text = counterfactual_frontier.markdown(rows, meta)
    assert "| q-b | qhead | yes | 20 | 0.400 [0.30, 0.50] | 0.500 | 0.300 | 0.700 [0.60, 0.80] | 0.100 | – |" in text
    assert "| value ceiling: the true values against MC | – | – | – | 0.800 | 0.750 | 0.820 |" in text
