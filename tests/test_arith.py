"""The arith task: stable prompts, exact verifier, step splitter and step labels on hand-made traces."""

from __future__ import annotations

import pytest

from prefixvalue.tasks import (
    TASKS,
    ArithConfig,
    ArithTask,
    Prompt,
    build_task,
    char_to_token_spans,
    first_error,
    safe_verify,
    token_end_offsets,
)

P = Prompt("p0", "Q:3+5*2-7=", answer="9")
RIGHT = "3+5=8;8*2=6;6-7=9;A:9"


def test_registry_and_stable_ids():
    assert TASKS["arith"] is ArithTask
    a = list(build_task("arith", {"seed": 3}).prompts(5))
    b = list(build_task("arith", {"seed": 3}).prompts(5))
    assert [p.prompt_id for p in a] == [p.prompt_id for p in b] and [p.text for p in a] == [p.text for p in b]
    assert len({p.prompt_id for p in a}) == 5
    assert [p.text for p in build_task("arith", {"seed": 4}).prompts(5)] != [p.text for p in a]
    train = {p.text for p in ArithTask().prompts(50, split="train")}
    assert train != {p.text for p in ArithTask().prompts(50, split="test")}


def test_generated_solutions_are_right():
    task = ArithTask(ArithConfig(min_steps=2, max_steps=6, operand_max=12))
    for p in task.prompts(50):
        sol = p.meta["solution"]
        assert task.verify(p, sol).score == 1.0
        assert all(task.step_labels(p, sol))
        assert len(task.split_steps(sol)) == len(p.meta["operators"]) + 1


def test_example_from_the_issue():
    task = ArithTask()
    assert task.solve([3, 5, 2, 7], ["+", "*", "-"]) == RIGHT
    assert task.verify(P, RIGHT).score == 1.0
    assert task.step_labels(P, RIGHT) == [True, True, True, True]
    assert first_error(task.step_labels(P, RIGHT)) == -1
    assert task.split_steps(RIGHT) == [(0, 6), (6, 12), (12, 18), (18, 21)]


@pytest.mark.parametrize(
    "completion, labels, first, score",
    [
        ("3+5=7;7*2=4;4-7=7;A:7", [False, True, True, True], 0, 0.0),  # first result wrong, rest consistent
        ("3+5=8;8*2=16;6-7=9;A:9", [True, False, False, True], 1, 1.0),  # modulus forgotten, next lhs mismatched
        ("3+5=8;8*3=4;4-7=7;A:7", [True, False, True, True], 1, 0.0),  # wrong operand copied
        ("3+5=8;8*2=6;6-7=9;A:8", [True, True, True, False], 3, 0.0),  # final answer not the last result
        ("3+5=8;8*2=6;A:6", [True, True, False], 2, 0.0),  # chain cut short
        ("3+5=8;8*2=6;6-7=9;A:9;1", [True, True, True, True, False], 4, 0.0),  # junk after the answer
        ("3+5=8;garbage;9-7=2;A:2", [True, False, False, True], 1, 0.0),
        ("", [], -1, 0.0),
    ],
)
def test_wrong_traces(completion, labels, first, score):
    task = ArithTask()
    assert task.step_labels(P, completion) == labels
    assert first_error(task.step_labels(P, completion)) == first
    assert task.verify(P, completion).score == score


def test_plain_integers_without_modulus():
    task = ArithTask(ArithConfig(modulus=None))
    assert task.solve([3, 5, 2, 9], ["+", "*", "-"]) == "3+5=8;8*2=16;16-9=7;A:7"
    sol = task.solve([1, 5], ["-"])
    assert sol == "1-5=-4;A:-4"
    assert task.step_labels(Prompt("x", "Q:1-5="), sol) == [True, True]


def test_token_spans_for_char_tokenizer(tiny_tokenizer):
    ids = tiny_tokenizer(RIGHT)["input_ids"] + [tiny_tokenizer.eos_token_id]
    ends = token_end_offsets(tiny_tokenizer, ids)
    assert ends[-1] == len(RIGHT)  # EOS adds no character
    spans = char_to_token_spans(ArithTask().split_steps(RIGHT), ends)
    assert spans == [(0, 6), (6, 12), (12, 18), (18, 22)]


def test_safe_verify_records_crash_and_timeout():
    import time

    class Crashing(ArithTask):
        def verify(self, prompt, completion):
            raise RuntimeError("boom")

    class Sleeping(ArithTask):
        def verify(self, prompt, completion):
            time.sleep(5)
            return 1.0

    res = safe_verify(Crashing(), P, RIGHT)
    assert res.score == 0.0 and "RuntimeError: boom" in res.error
    res = safe_verify(Sleeping(), P, RIGHT, timeout_s=0.2)
    assert res.score == 0.0 and "TimeoutError" in res.error
    assert safe_verify(ArithTask(), P, RIGHT).score == 1.0
