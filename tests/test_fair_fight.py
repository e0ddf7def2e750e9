"""A fair fight with the oracles (issue "Beat the oracle", item 3): the operator oracle (wrong step written ×
the kinds of the steps left) beside the step-label oracle, paired with the learned value, and error detection
by the policy's own log-probabilities beside the learned values' (docs/design.md, "The step-label oracle")."""

from __future__ import annotations

import numpy as np
import pytest
from test_oracle_steps import _half_split, _row, _rows

from prefixvalue.data import SplitRecord, is_heldout, rows_to_dataset
from prefixvalue.data.steps import step_facts, worst_step_drop
from prefixvalue.evaluation.analysis import error_diagnosis
from prefixvalue.evaluation.estimators import TraceRecord
from prefixvalue.evaluation.evaluator import evaluate, step_oracle_estimators
from prefixvalue.evaluation.oracle import StepOracle, kind_keys, step_kinds, training_oracles
from prefixvalue.evaluation.report import render_markdown
from prefixvalue.evaluation.report.prefix_metrics import error_detection_lines
from prefixvalue.evaluation.scoring import evaluate_prefixes
from prefixvalue.stages import evaluate as ev
from prefixvalue.stats import auroc

from test_evaluate import FakeValueModel, make_tiny_eval


def test_step_kinds_read_the_prompt_only():
    assert step_kinds("arith", "Q:3+5*2-7=") == ["+", "*", "-", "A"]
    assert step_kinds("arith", "what is 3+5?") is None and step_kinds("jsonl", "Q:3+5=") is None
    assert kind_keys(np.array([0, 1, 3, 4, 9]), ["+", "*", "-", "A"]) == ["+*-A", "*-A", "A", "", ""]


def test_operator_oracle_groups_by_the_operators_still_to_come():
    """Two prompts with the same step count but other operators fall in one step-oracle group and in two
    operator-oracle groups, so the operator oracle tells them apart where the step oracle cannot."""
    task, prompts, rows = _rows()
    # every trace of prompts whose first operator is '*' fails, the others keep their outcomes
    rows = [{**r, "outcome": 0.0} if task.parse_prompt(r["prompt"])[1][0] == "*" else r for r in rows]
    ops = StepOracle.fit_operators(rows)
    steps = StepOracle.fit(rows)
    assert ops is not None and ops.steps == "operators" and "operator oracle" in ops.estimator().description
    times = next(p for p in prompts if task.parse_prompt(p.text)[1][0] == "*")
    plus = next(
        p
        for p in prompts
        if task.parse_prompt(p.text)[1][0] != "*" and len(task.parse_prompt(p.text)[1]) == len(task.parse_prompt(times.text)[1])
    )  # fmt: skip
    a = ops.predict(TraceRecord.from_row(_row(task, times, task.solve(*task.parse_prompt(times.text)), "a")))
    b = ops.predict(TraceRecord.from_row(_row(task, plus, task.solve(*task.parse_prompt(plus.text)), "b")))
    assert a[0] == pytest.approx(0.0) and b[0] > 0
    sa = steps.predict(TraceRecord.from_row(_row(task, times, task.solve(*task.parse_prompt(times.text)), "a")))
    sb = steps.predict(TraceRecord.from_row(_row(task, plus, task.solve(*task.parse_prompt(plus.text)), "b")))
    assert sa[0] == sb[0]  # the step oracle sees only the count
    # no look-ahead: the value at p is the same whatever comes after p
    right = task.solve(*task.parse_prompt(plus.text))
    first = right.split(";")[0] + ";"
    c = ops.predict(TraceRecord.from_row(_row(task, plus, first, "c")))
    np.testing.assert_array_equal(b[: len(first) + 1], c)
    # a task without step kinds has no operator oracle
    assert StepOracle.fit_operators([{k: v for k, v in r.items() if k != "task"} for r in rows]) is None


def test_training_oracles_fit_both_on_the_training_side():
    _, _, rows = _rows()
    record = _half_split(rows)
    both = training_oracles(rows_to_dataset(rows), record)
    assert set(both) == {"step_oracle", "operator_oracle"}
    n_train = sum(len(r["completion_ids"]) + 1 for r in rows if record.side(r["prompt"]) == "train")
    assert both["operator_oracle"].n_prefixes == both["step_oracle"].n_prefixes == n_train
    no_task = training_oracles(rows_to_dataset([{k: v for k, v in r.items() if k != "task"} for r in rows]), record)
    assert set(no_task) == {"step_oracle"}


def test_evaluate_pairs_the_learned_value_with_both_oracles(tmp_path, tiny_tokenizer):
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=16)
    for t in traces:
        t["task"] = "arith"
    texts = sorted({t["prompt"] for t in traces})
    seed = next(s for s in range(100) if 4 <= sum(not is_heldout(t, 0.5, s) for t in texts) <= len(texts) - 4)
    record = SplitRecord.from_prompts([t for t in texts if not is_heldout(t, 0.5, seed)], 0.5, seed)
    record.save(tmp_path)
    test = [t for t in traces if record.side(t["prompt"]) == "test"]
    cfg = ev.EvaluateConfig(n_bootstrap=30, noise_ceiling_repeats=5, split_record=str(tmp_path))
    ests = step_oracle_estimators(cfg, rows_to_dataset(test), rows_to_dataset(traces))
    assert set(ests) == {"step_oracle", "operator_oracle"}
    res = evaluate_prefixes(test, labels, options=cfg, value_model=FakeValueModel("unused"), estimators=ests)
    sp = res.metrics["estimators"]["learned"]["spearman"]
    assert {"paired_vs_step_oracle", "paired_vs_operator_oracle"} <= set(sp)
    assert "operator oracle" in res.metrics["estimators"]["operator_oracle"]["description"]
    # the one evaluator adds the error-detection diagnosis of `learned` (step labels here), and the report shows it
    full = evaluate({"fake": FakeValueModel("unused")}, test, labels, cfg, oracle_traces=rows_to_dataset(traces))
    d = full.metrics["error_diagnosis"]
    assert d["estimator"] == "learned" and d == error_diagnosis(full)
    assert "## Error detection" in render_markdown(full.metrics, {})
    assert "error_diagnosis" not in evaluate(None, test, labels, cfg).metrics  # no value model, no diagnosis


def test_error_diagnosis_reports_the_policy_logprob_auroc(tiny_tokenizer):
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=8)
    # log-probabilities that mark the wrong step: a very unlikely token where a step first goes wrong
    for t in traces:
        lp = [-0.1] * len(t["completion_ids"])
        for (s, _), ok in zip(t["step_spans"], t["step_labels"]):
            if not ok:
                lp[s] = -9.0
                break
        t["logprobs"] = lp
    cfg = ev.EvaluateConfig(n_bootstrap=10, noise_ceiling_repeats=5)
    res = evaluate_prefixes(traces, labels, options=cfg, value_model=FakeValueModel("unused"))
    d = error_diagnosis(res)
    assert d is not None
    pol = d["auroc_error_written_policy"]
    assert pol["logprob_min"] > 0.95  # the minimum sees the unlikely token at once
    assert 0 <= pol["logprob_sum"] <= 1
    # the MC labels' own AUROC: what a value equal to the labels reaches, recomputed by hand here
    cols, recs = res.prefixes, {x.trace_id: x for x in res.traces}
    ok = [
        not step_facts(recs[t].step_spans, recs[t].step_labels, recs[t].length)[0][int(p)]
        for t, p in zip(cols["trace_id"], cols["position"])
    ]
    mc = np.asarray(cols["mc_mean"])
    assert d["auroc_error_written_mc"] == pytest.approx(auroc(mc, np.asarray(ok, dtype=float))[0])
    assert d["auroc_error_written_of_mc"] == pytest.approx(d["auroc_error_written"] / d["auroc_error_written_mc"])
    # the value model's own detector: the worst fall of its curve across a written step, recomputed by hand
    drops = {x.trace_id: worst_step_drop(c["learned"], x.step_spans) for x, c in zip(res.traces, res.curves)}
    by_hand = np.array([drops[t][int(p)] for t, p in zip(cols["trace_id"], cols["position"])])
    assert d["auroc_error_written_step_drop"] == pytest.approx(auroc(by_hand, np.asarray(ok, dtype=float))[0])
    assert "own step scores" in "\n".join(error_detection_lines(d))
    # a value that halves across each wrong step and stays level elsewhere: its step drops flag every error
    for x, c in zip(res.traces, res.curves):
        curve = np.full(x.length + 1, 0.5)
        for (_, e), good in zip(x.step_spans, x.step_labels):
            curve[e:] *= 1.0 if good else 0.5
        c["learned"] = curve
    assert error_diagnosis(res)["auroc_error_written_step_drop"] == pytest.approx(1.0)
    section = "\n".join(error_detection_lines(d))
    assert section.startswith("## Error detection") and "of the MC labels themselves" in section
    assert "their minimum" in section and error_detection_lines(None) == []
    for t in res.traces:
        t.logprobs = None
    d2 = error_diagnosis(res)
    assert d2["auroc_error_written_policy"] is None and "no per-token" in d2["auroc_error_written_policy_note"]
    res.curves = [{k: c for k, c in curve.items() if k != "learned"} for curve in res.curves]
    d3 = error_diagnosis(res)
    assert d3["auroc_error_written_step_drop"] is None and "no value curve" in d3["auroc_error_written_step_drop_note"]
    assert "its step drops: `learned` has no value curve" in "\n".join(error_detection_lines(d3))
