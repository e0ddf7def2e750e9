"""The step-label oracle reads the prefix and the prompt, never the rest of the completion (issue 28 item 10).

"Steps left" once counted the trace's own step spans, so the oracle knew at the first token how many steps the
trace would end up writing. It now counts the task's known number of steps for the prompt (arith: one per
operator, then ``A:x``) minus the steps written, and groups by the steps written when that count is unknown,
saying so in its description.

    pytest tests/test_oracle_steps.py
"""

from __future__ import annotations

import numpy as np
import pytest

from prefixvalue.data import SplitRecord, is_heldout, rows_to_dataset, split_side
from prefixvalue.evaluation.estimators import TraceRecord
from prefixvalue.evaluation.oracle import (
    StepOracle,
    known_steps,
    step_facts,
    training_oracle,
)
from prefixvalue.tasks import ArithTask


def _row(task: ArithTask, prompt, completion: str, tid: str, with_task: bool = True) -> dict:
    """A trace row of `completion` with one token per character (so character spans are token spans)."""
    row = {
        "trace_id": tid,
        "prompt_id": prompt.prompt_id,
        "prompt": prompt.text,
        "completion": completion,
        "prompt_ids": [ord(c) for c in prompt.text],
        "completion_ids": [ord(c) for c in completion],
        "outcome": task.verify(prompt, completion).score,
        "step_spans": [list(s) for s in task.split_steps(completion)],
        "step_labels": task.step_labels(prompt, completion),
    }
    if with_task:
        row["task"] = "arith"
    return row


def _rows(with_task: bool = True) -> tuple[ArithTask, list, list[dict]]:
    """Training rows over prompts of 2 to 4 operations: the right solution, one that stops after its first
    step (fails), one with a wrong final answer (fails)."""
    task = ArithTask(min_steps=2, max_steps=4)
    prompts = list(task.prompts(30, split="test"))
    rows = []
    for prm in prompts:
        right = task.solve(*task.parse_prompt(prm.text))
        steps = right.split(";")
        stopped = steps[0] + ";"
        wrong_final = ";".join(steps[:-1]) + f";A:{(int(steps[-1][2:]) + 1) % 10}"
        for j, c in enumerate((right, stopped, wrong_final)):
            rows.append(_row(task, prm, c, f"{prm.prompt_id}-{j}", with_task))
    return task, prompts, rows


def test_arith_known_step_count_reads_the_prompt():
    assert known_steps("arith", "Q:3+5*2-7=") == 4  # three operations, then A:x
    assert known_steps("arith", "Q:4=") == 1
    assert known_steps("arith", "not a prompt") is None
    assert known_steps("jsonl", "Q:3+5=") is None and known_steps(None, "Q:3+5=") is None
    wrong, written = step_facts([[0, 3], [3, 6], [6, 8]], [True, False, True], 8)
    assert wrong.tolist() == [False] * 6 + [True] * 3
    assert written.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3]


def test_oracle_prediction_does_not_look_ahead():
    """The value at p is the same whatever the completion writes after p: a trace that goes on to solve the
    chain and one that stops after its first step share their prefix, so they share the oracle's values there."""
    task, prompts, rows = _rows()
    oracle = StepOracle.fit(rows)
    assert oracle.steps == "known" and oracle.task == "arith" and oracle.note is None
    assert "known step count" in oracle.estimator().description
    prm = next(p for p in prompts if len(task.parse_prompt(p.text)[1]) == 3)
    right = task.solve(*task.parse_prompt(prm.text))
    first = right.split(";")[0] + ";"
    variants = [
        right,  # solves the chain
        first,  # stops after one step
        first + first + first,  # repeats its first step
        first + "A:0",  # answers at once
    ]
    curves = [oracle.predict(TraceRecord.from_row(_row(task, prm, c, "t"))) for c in variants]
    shared = len(first)  # positions 0..len(first) see the same prefix in every variant
    for c in curves[1:]:
        np.testing.assert_array_equal(c[: shared + 1], curves[0][: shared + 1])
    # the shared prefix is scored by the known count: 4 steps, 0 written at p = 0, so steps left 4
    assert curves[0][0] == pytest.approx(oracle.means[(False, 4)])
    # the groups differ (the test can fail): the trace's own step count (the old "steps left") gives other values
    own = {len(task.split_steps(c)) for c in variants}
    assert len(own) > 1 and len({oracle.means.get((False, k)) for k in own}) > 1


def test_without_a_known_count_the_oracle_groups_by_steps_written_and_says_so():
    task, prompts, rows = _rows(with_task=False)
    oracle = StepOracle.fit(rows)
    assert oracle.steps == "written" and "no task" in oracle.note
    desc = oracle.estimator().description
    assert "steps written so far" in desc and "look-ahead" in desc
    # still no look-ahead: the value at p depends on the prefix only
    prm = prompts[0]
    right = task.solve(*task.parse_prompt(prm.text))
    first = right.split(";")[0] + ";"
    a = oracle.predict(TraceRecord.from_row(_row(task, prm, right, "a", False)))
    b = oracle.predict(TraceRecord.from_row(_row(task, prm, first, "b", False)))
    np.testing.assert_array_equal(a[: len(first) + 1], b)
    # the task given by the caller gives the known count
    assert StepOracle.fit(rows, task="arith").steps == "known"
    assert "no known step count" in StepOracle.fit(rows, task="jsonl").note


def test_known_count_oracle_refuses_a_prompt_it_cannot_read():
    task, prompts, rows = _rows()
    oracle = StepOracle.fit(rows)
    rec = TraceRecord.from_row({**rows[0], "prompt": "what is 3+5?"})
    with pytest.raises(ValueError, match="gives no arith step count"):
        oracle.predict(rec)
    # one unreadable training prompt: steps written for all, with the count in the note
    mixed = StepOracle.fit([{**rows[0], "prompt": "what is 3+5?"}, *rows[1:]])
    assert mixed.steps == "written" and "1 of 90 training traces" in mixed.note


def _half_split(rows: list[dict]) -> SplitRecord:
    """A split of `rows`' prompts, half held out, by the first seed that puts prompts on both sides."""
    texts = sorted({r["prompt"] for r in rows})
    seed = next(s for s in range(100) if 0 < sum(not is_heldout(t, 0.5, s) for t in texts) < len(texts))
    return SplitRecord.from_prompts([t for t in texts if not is_heldout(t, 0.5, seed)], 0.5, seed)


def test_training_oracle_reads_prompt_and_task_columns_of_a_dataset():
    _, _, rows = _rows()
    record = _half_split(rows)
    oracle = training_oracle(rows_to_dataset(rows), record)
    assert oracle is not None and oracle.steps == "known"
    no_task = training_oracle(rows_to_dataset([{k: v for k, v in r.items() if k != "task"} for r in rows]), record)
    assert no_task is not None and no_task.steps == "written"


def test_training_oracle_fits_on_the_training_side_only():
    """Neither test nor validation outcomes reach the oracle: with a validation side, only training prompts fit it."""
    _, _, rows = _rows()
    record = SplitRecord.from_prompts([], 0.3, 0, validation_fraction=0.3)
    sides = [split_side(r["prompt"], 0.3, 0.3, 0) for r in rows]
    assert {"train", "validation", "test"} <= set(sides)
    oracle = training_oracle(rows_to_dataset(rows), record)
    assert oracle.n_prefixes == sum(len(r["completion_ids"]) + 1 for r, s in zip(rows, sides) if s == "train")
