"""Step verification on MC-derived step labels, for tasks that give no exact ones (docs/design.md,
"Step verification (ProcessBench protocol)")."""

from __future__ import annotations

from prefixvalue.evaluation import scoring
from prefixvalue.evaluation.estimators import TraceRecord
from prefixvalue.evaluation.report.steps import step_verification_lines
from prefixvalue.evaluation.scoring import MC_STEP_LABELS, evaluate_prefixes, mc_step_labelled, step_labelled
from prefixvalue.stages import evaluate as ev
from prefixvalue.tasks.base import first_error

from test_evaluate import FakeValueModel, make_tiny_eval


def _step_end_labels(traces: list[dict], samples: int = 16) -> list[dict]:
    """MC labels at every step end that agree with the exact step labels: every continuation of a prefix
    before the first wrong step succeeds, none after it."""
    rows = []
    for t in traces:
        fe = first_error(t["step_labels"])
        for j, (_, end) in enumerate(t["step_spans"]):
            k = samples if fe == -1 or j < fe else 0
            rows.append({"trace_id": t["trace_id"], "position": end, "n": samples, "successes": k,
                         "mean": k / samples, "ci_low": 0.0, "ci_high": 1.0})  # fmt: skip
    return rows


def test_mc_step_labels_give_the_first_error_of_consistent_mc_labels(tiny_tokenizer):
    traces, _ = make_tiny_eval(tiny_tokenizer, n_prompts=6)
    labels = _step_end_labels(traces)
    records = [TraceRecord.from_row(t) for t in traces]
    exact_keep, exact, _ = step_labelled(records)
    by_trace: dict[str, list[dict]] = {}
    for r in labels:
        by_trace.setdefault(r["trace_id"], []).append(r)
    keep, mc, missing = mc_step_labelled(records, by_trace)
    assert keep == exact_keep and mc == exact and missing == 0
    assert any(x >= 0 for x in mc) and any(x == -1 for x in mc)  # both classes present

    # a step end without a label (not the last step, which takes the outcome) skips its trace
    first = traces[0]
    end0 = first["step_spans"][0][1]
    by_trace[first["trace_id"]] = [r for r in by_trace[first["trace_id"]] if r["position"] != end0]
    keep2, _, missing2 = mc_step_labelled(records, by_trace)
    assert 0 not in keep2 and missing2 == 1


def test_evaluate_verifies_steps_on_mc_labels_when_the_task_gives_none(tiny_tokenizer):
    traces, _ = make_tiny_eval(tiny_tokenizer, n_prompts=8)
    labels = _step_end_labels(traces)
    for t in traces:
        t["step_labels"] = None  # a task without exact step labels (word problems, any jsonl task)
    cfg = ev.EvaluateConfig(n_bootstrap=20, noise_ceiling_repeats=5)
    res = evaluate_prefixes(traces, labels, options=cfg, value_model=FakeValueModel("unused"))
    sv = res.metrics["step_verification"]
    assert sv["label_source"] == MC_STEP_LABELS
    assert sv["threshold_split"] == "calibration"
    assert sv["n_traces_with_step_labels"] == len(traces)
    assert sv["f1"] is not None and sv["n_calibration"] + sv["n_test"] == len(traces)
    assert "Step labels: mc:" in "\n".join(step_verification_lines(sv))

    # exact labels win where the traces carry them: the same data with its labels back is scored on them
    exact_traces, _ = make_tiny_eval(tiny_tokenizer, n_prompts=8)
    res2 = evaluate_prefixes(exact_traces, labels, options=cfg, value_model=FakeValueModel("unused"))
    assert res2.metrics["step_verification"]["label_source"] == "exact"


def test_without_step_end_labels_the_note_says_how_to_get_them(tiny_tokenizer):
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=3)
    for t in traces:
        t["step_labels"] = None
    ends = {(t["trace_id"], e) for t in traces for _, e in t["step_spans"][:-1]}
    labels = [r for r in labels if (r["trace_id"], r["position"]) not in ends]
    cfg = ev.EvaluateConfig(n_bootstrap=20, noise_ceiling_repeats=5)
    sv = evaluate_prefixes(traces, labels, options=cfg, value_model=FakeValueModel("unused")).metrics[
        "step_verification"
    ]
    assert sv["f1"] is None and "positions=steps" in sv["note"]
    assert scoring.MC_STEP_LABELS not in str(sv)
