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


# a policy-recipe run of seconds: 100 training prompts in batches of 40, a 1-layer model
TINY_POLICY_RUN = [
    "task.policy_train_prompts=100",
    "batch_size=40",
    "max_steps=10",
    "eval_every=1000",
    "report_prompts=2",
    "report_samples=1",
    "n_layer=1",
    "n_embd=16",
    "n_head=2",
    "warmup_steps=1",
]


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


def test_test_split_disjoint_from_policy_training_pool():
    """Item 3 of issue 14: the shipped policy trained on the first 550 x 64 = 35,200 prompts of
    `policy-train`; no `test` prompt (nor any other split's) may be one of those texts."""
    task = ArithTask()
    assert task.config.policy_train_prompts == 35200
    pool = {task.make_prompt("policy-train", i).text for i in range(35200)}
    assert task.policy_pool() == frozenset(pool)
    test = list(task.prompts(2000, split="test"))
    assert sum(p.text in pool for p in test) == 0
    assert not {p.text for p in task.prompts(500, split="policy-val")} & pool
    # ids stay dense and stable: they count kept prompts, and make_prompt agrees with prompts()
    assert [p.prompt_id for p in test[:3]] == ["arith-test-000000", "arith-test-000001", "arith-test-000002"]
    assert test[-1].prompt_id == "arith-test-001999"
    assert ArithTask().make_prompt("test", 1999).text == test[-1].text
    # policy-train itself is unchanged: the pool is its own first prompts
    assert task.make_prompt("policy-train", 0).prompt_id == "arith-policy-train-000000"
    # without the exclusion, today's generator collides (the audit counted 29)
    raw = [p.text for p in ArithTask(ArithConfig(policy_train_prompts=0)).prompts(2000, split="test")]
    assert sum(t in pool for t in raw) > 0


def test_train_policy_never_draws_past_the_pool(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    from prefixvalue.tokenizer import build_char_tokenizer

    path = Path(__file__).resolve().parents[1] / "recipes" / "train_policy.py"
    spec = importlib.util.spec_from_file_location("pv_train_policy", path)
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe  # dataclasses look their module up
    spec.loader.exec_module(recipe)
    task, tok = ArithTask(ArithConfig(policy_train_prompts=100)), build_char_tokenizer()
    ids, _, _ = recipe.encode_batch(task, tok, "policy-train", 64, 36)  # prompts 64..99: inside the pool
    assert ids.shape[0] == 36
    with pytest.raises(ValueError, match="past the policy's training pool"):
        recipe.encode_batch(task, tok, "policy-train", 64, 37)
    # the loop stops before the batch that would cross the pool: 2 steps of 40 fit in 100, a third does not
    report = recipe.main([f"out_dir={tmp_path / 'policy'}", *TINY_POLICY_RUN])
    assert report["steps"] == 2 and report["stopped_at_pool_end"] and report["policy_train_prompts_used"] == 80
