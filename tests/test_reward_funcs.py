"""Rewards for RL frameworks (docs/design.md, "Reward interfaces"): `ValueModel.reward_func` as TRL's GRPO trainer
calls it, and verl's ``compute_score`` loaded from its file as verl loads it.

pytest tests/test_reward_funcs.py
"""

from __future__ import annotations

import importlib.util
import inspect

import numpy as np
import pytest

from prefixvalue import value
from prefixvalue.value.rewards import SCORES, step_char_ends, value_rewards
from prefixvalue.value.verl_reward import ENV_CHECKPOINT, ENV_SCORE, compute_score, compute_score_batch

from conftest import SHIPPED_POLICY

PROMPT = "Q:3+5*2="
#: two steps, each ending with the separator (a newline here; arith's own steps end with ';')
STEPS = ["3+5=8\n", "8*2=6\n"]
COMPLETION = "".join(STEPS)
PAIRS = [(PROMPT, COMPLETION), ("Q:1+2=", "1+2=3\nA:3"), ("Q:4-1*3=", "4-1=3\n3*3=9\nA:9"), ("Q:2+2=", "")]


@pytest.fixture(scope="module")
def checkpoint(random_head_checkpoint):
    return random_head_checkpoint


@pytest.fixture(scope="module")
def model(checkpoint):
    return value.load_value_model(checkpoint)


def test_final_is_the_value_at_the_end_of_each_completion(model):
    reward = model.reward_func()
    prompts, completions = zip(*PAIRS)
    got = reward(prompts=list(prompts), completions=list(completions))
    want = [model.score(p, c)[-1] for p, c in PAIRS]
    assert got == pytest.approx(want, abs=1e-6)
    assert len(set(np.round(got, 6))) > 1  # the values differ: the check compares something


def test_step_scores_equal_score_steps_on_a_two_step_completion(model):
    # a character tokenizer: the whole completion tokenises as its steps one by one (score_steps' way)
    steps = model.score_steps(PROMPT, STEPS, prompt_template="{prompt}", step_separator="")
    values = model.score(PROMPT, COMPLETION)
    assert steps.step_spans == [(0, 6), (6, 12)]
    (min_step,) = model.reward_func("min_step")([PROMPT], [COMPLETION])
    (td_sum,) = model.reward_func("td_sum")([PROMPT], [COMPLETION])
    (final,) = model.reward_func("final")([PROMPT], [COMPLETION])
    assert min_step == pytest.approx(steps.values.min(), abs=1e-6)
    assert min_step == pytest.approx(min(values[6], values[12]), abs=1e-6)
    assert td_sum == pytest.approx(steps.td.sum(), abs=1e-6)
    assert td_sum == pytest.approx(values[-1] - values[0], abs=1e-6)
    assert final == pytest.approx(values[-1], abs=1e-6)
    # one step when the separator never occurs; an empty completion scores its prompt's value and no gain
    (one,) = model.reward_func("min_step", step_separator="#")([PROMPT], [COMPLETION])
    assert one == pytest.approx(values[-1], abs=1e-6)
    empty = model.score("Q:2+2=", "")
    assert model.reward_func("min_step")(["Q:2+2="], [""]) == pytest.approx([empty[0]], abs=1e-6)
    assert model.reward_func("td_sum")(["Q:2+2="], [""]) == [0.0]


def test_trl_conversational_inputs_read_the_user_prompt_and_the_last_message(model):
    reward = model.reward_func("td_sum")
    plain = reward([p for p, _ in PAIRS], [c for _, c in PAIRS])
    prompts = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": p}] for p, _ in PAIRS]
    completions = [[{"role": "assistant", "content": c}] for _, c in PAIRS]
    assert reward(prompts=prompts, completions=completions) == pytest.approx(plain, abs=1e-9)
    parts = [[{"role": "user", "content": [{"type": "text", "text": p}]}] for p, _ in PAIRS]
    assert reward(prompts=parts, completions=completions) == pytest.approx(plain, abs=1e-9)
    with pytest.raises(ValueError, match="user"):
        reward(prompts=[[{"role": "system", "content": "x"}]], completions=[COMPLETION])
    with pytest.raises(TypeError, match="string or a list"):
        reward(prompts=[3], completions=[COMPLETION])


def test_the_signature_works_as_trl_calls_it(model):
    reward = model.reward_func()
    assert reward.__name__ == "prefixvalue_final"
    assert model.reward_func("min_step").__name__ == "prefixvalue_min_step"
    assert model.reward_func(name="value").__name__ == "value"
    params = inspect.signature(reward).parameters
    assert list(params)[:2] == ["prompts", "completions"]
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = reward(
        prompts=[PROMPT, PROMPT],
        completions=[COMPLETION, "3+5=8\n"],
        completion_ids=[[5, 6], [7]],
        trainer_state=object(),
        answer=["6", "6"],
        log_extra=None,
    )
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(x, float) for x in out)
    with pytest.raises(ValueError, match="unknown score"):
        model.reward_func("mean")
    with pytest.raises(ValueError, match="prompts"):
        reward(prompts=[PROMPT], completions=[COMPLETION, COMPLETION])


def test_one_predict_call_scores_the_batch(model, monkeypatch):
    calls = []
    predict = model.predict

    def counting(prompt_ids, completion_ids, batch_size=32):
        calls.append((len(prompt_ids), batch_size))
        return predict(prompt_ids, completion_ids, batch_size=batch_size)

    monkeypatch.setattr(model, "predict", counting)
    prompts, completions = zip(*PAIRS)
    model.reward_func("min_step", batch_size=3)(list(prompts), list(completions))
    assert calls == [(len(PAIRS), 3)]


def test_step_ends_keep_the_separator_with_its_step():
    assert step_char_ends("a\nbc\n") == [2, 5]
    assert step_char_ends("a\nbc") == [2, 4]
    assert step_char_ends("3+5=8;8*2=6;A:6", ";") == [6, 12, 15]
    assert step_char_ends("abc", "") == [3]
    assert step_char_ends("") == []
    assert SCORES == ("final", "min_step", "td_sum")


def test_verl_compute_score_reads_the_prompt_from_extra_info(model, checkpoint, monkeypatch):
    want = model.score(PROMPT, COMPLETION)
    extra = {"prompt": PROMPT, "split": "train", "index": 0}
    kw = {"checkpoint": str(checkpoint), "device": "cpu"}
    got = compute_score("arith", COMPLETION, "6", extra, **kw)
    assert isinstance(got, float) and got == pytest.approx(want[-1], abs=1e-6)
    assert compute_score("arith", COMPLETION, "6", extra, score="td_sum", **kw) == pytest.approx(
        want[-1] - want[0], abs=1e-6
    )
    # the environment names the checkpoint and the score when the reward kwargs do not
    monkeypatch.setenv(ENV_CHECKPOINT, str(checkpoint))
    monkeypatch.setenv(ENV_SCORE, "min_step")
    assert compute_score("arith", COMPLETION, "6", extra, device="cpu") == pytest.approx(
        min(want[6], want[12]), abs=1e-6
    )
    # verl's chat-message prompt, another key, a batch for the batch reward manager
    chat = {"prompt": [{"role": "user", "content": PROMPT}]}
    assert compute_score("arith", COMPLETION, "6", chat, score="final", **kw) == pytest.approx(want[-1], abs=1e-6)
    q = {"question": PROMPT}
    assert compute_score("a", COMPLETION, "6", q, score="final", prompt_key="question", **kw) == pytest.approx(
        want[-1], abs=1e-6
    )
    prompts, completions = zip(*PAIRS)
    batch = compute_score_batch(
        ["arith"] * len(PAIRS), list(completions), ["?"] * len(PAIRS), [{"prompt": p} for p in prompts], **kw
    )
    assert batch == pytest.approx(value_rewards(model, list(prompts), list(completions), "min_step"), abs=1e-6)
    with pytest.raises(ValueError, match="extra_info has no 'prompt'"):
        compute_score("arith", COMPLETION, "6", {"question": PROMPT}, **kw)
    with pytest.raises(ValueError, match="extra_info has no 'prompt'"):
        compute_score("arith", COMPLETION, "6", None, **kw)
    monkeypatch.delenv(ENV_CHECKPOINT)
    with pytest.raises(ValueError, match=ENV_CHECKPOINT):
        compute_score("arith", COMPLETION, "6", extra, device="cpu")


def test_verl_loads_the_function_from_its_file(checkpoint, model):
    """verl imports ``custom_reward_function.path`` with importlib under another module name."""
    from prefixvalue.value import verl_reward

    spec = importlib.util.spec_from_file_location("custom_module", verl_reward.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = module.compute_score
    got = fn(data_source="arith", solution_str=COMPLETION, ground_truth="6", extra_info={"prompt": PROMPT},
             checkpoint=str(checkpoint), score="final", device="cpu")  # fmt: skip
    assert got == pytest.approx(model.score(PROMPT, COMPLETION)[-1], abs=1e-6)


def test_trl_grpo_trainer_calls_the_reward_function(checkpoint, tmp_path):
    """One real GRPOTrainer step on the shipped policy with the checkpoint's reward function: TRL calls it with
    its own arguments and logs the reward under the function's name."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from prefixvalue.policies import load_policy

    vm = value.load_value_model(str(checkpoint), device="cpu")
    reward = vm.reward_func(score="final")
    calls: list[int] = []

    def counted(prompts, completions, **kw):
        out = reward(prompts, completions, **kw)
        calls.append(len(out))
        assert len(out) == len(prompts) and all(0.0 <= x <= 1.0 for x in out)
        return out

    counted.__name__ = reward.__name__
    policy, tok = load_policy(str(SHIPPED_POLICY), "float32", "cpu")
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=12,
        max_steps=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    data = Dataset.from_list([{"prompt": p} for p, _ in PAIRS])
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=[counted], args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    assert calls == [4]
    logged = trainer.state.log_history[0]
    assert f"rewards/{reward.__name__}/mean" in logged


def test_score_takes_batches_of_completions_of_different_lengths(model):
    # issue 34: vm.score(list_of_prompts, list_of_completions) failed on rows of different lengths
    prompts, completions = [p for p, _ in PAIRS], [c for _, c in PAIRS]
    assert len({len(c) for c in completions}) > 1  # rows of different lengths: padding is exercised
    got = model.score(prompts, completions, batch_size=2)
    assert len(got) == len(PAIRS)
    for values, (p, c) in zip(got, PAIRS):
        np.testing.assert_allclose(values, model.score(p, c), atol=1e-6)
    with pytest.raises(ValueError, match="prompt"):
        model.score(prompts, completions[:-1])
    with pytest.raises(ValueError, match="list"):
        model.score(prompts[0], completions)
