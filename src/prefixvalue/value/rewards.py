"""Rewards for RL frameworks from a value model: one number per (prompt, completion), read off the value curve
(docs/design.md, "Reward interfaces").

    from prefixvalue.value import load_value_model

    model = load_value_model("runs/quickstart/train_head/final")
    trainer = GRPOTrainer(model=policy, reward_funcs=[model.reward_func()], ...)   # TRL

`ValueModel.reward_func` returns `make_reward_func`'s callable (TRL's GRPO signature); `prefixvalue serve`
(`prefixvalue.serving`) and verl's ``compute_score`` (`prefixvalue.value.verl_reward`) score through
`value_rewards` and `item_scores` here. Texts are encoded with the checkpoint's own prompt format
(`ValueModel.encode`); one `ValueModel.predict` call scores a whole batch.

Scores (``score=``), in probability units:

- ``final``: P̂ at the end of the completion, the value model's estimate that the completion is verified correct;
- ``min_step``: the smallest P̂ right after a step (`prefixvalue.data.steps.prefix_step_scores`), the weakest
  point of the solution;
- ``td_sum``: the sum of the steps' TD scores P̂(after) − P̂(before) (`prefixvalue.data.steps.td_errors`, γ = 1),
  which telescopes to P̂(end) − P̂(prompt): the completion's gain over what the prompt alone promised.

Steps are the pieces of the completion that end with `step_separator` (default the checkpoint's step end,
`model_step_end`: ``";"`` for arith, a newline for line steps; the last piece needs none); ``step_separator=""``
makes the whole completion one step. A
step ends at the completion token holding its last character (the tokenizer's offsets; a tokenizer without them
counts the tokens of the text up to the step's end). This module knows value models only by what it calls on them (`encode`,
`tokenizer`, `predict`, `steps_format`), so that `prefixvalue.value.base` can import it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.steps import prefix_step_scores, td_errors

#: the reward a (prompt, completion) gets from its value curve; see the module docstring
SCORES = ("final", "min_step", "td_sum")
#: a prompt or completion as RL frameworks pass it: text, or TRL's conversational messages
Text = str | Sequence[Mapping[str, Any]]


def check_score(score: str) -> None:
    """ValueError naming the choices when `score` is not one of `SCORES`."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose from {', '.join(SCORES)}")


# ------------------------------------------------------------------------------------------- texts
def _content(message: Mapping[str, Any]) -> str:
    """The text of one chat message: its ``content`` string, or the text parts of a multimodal content list."""
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    raise TypeError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def _messages(item: Any, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(item, Sequence) or isinstance(item, str) or not all(isinstance(m, Mapping) for m in item):
        raise TypeError(f"a {what} must be a string or a list of {{'role', 'content'}} messages, got {item!r:.80}")
    return list(item)


def prompt_text(prompt: Text) -> str:
    """The prompt's text: the string itself, or the content of the last ``user`` message of a conversation (TRL's
    conversational form; a system message is left out: the checkpoint's prompt format supplies its own)."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in _messages(prompt, "prompt") if m.get("role") == "user"]
    if not users:
        raise ValueError("a conversational prompt needs a message with role 'user'")
    return _content(users[-1])


def completion_text(completion: Text) -> str:
    """The completion's text: the string itself, or the content of the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    messages = _messages(completion, "completion")
    return _content(messages[-1]) if messages else ""


# ------------------------------------------------------------------------------------------- steps
def model_step_end(model: Any) -> str:
    """The text after which a step ends for `model`: its checkpoint's recorded step end (`ValueModel.steps_format`,
    which warns once for a checkpoint that records none), a newline for a model without one."""
    steps_format = getattr(model, "steps_format", None)
    return str(steps_format().step_end) if callable(steps_format) else "\n"


def step_char_ends(completion: str, step_separator: str = "\n") -> list[int]:
    """Character offset where each step of `completion` ends (exclusive): after each `step_separator`, and at the
    end for a last piece without one. An empty `step_separator` gives one step; an empty completion none."""
    if not completion:
        return []
    ends: list[int] = []
    if step_separator:
        at = completion.find(step_separator)
        while at != -1:
            ends.append(at + len(step_separator))
            at = completion.find(step_separator, ends[-1])
    if not ends or ends[-1] < len(completion):
        ends.append(len(completion))
    return ends


def step_token_ends(tokenizer: Any, completion: str, char_ends: Sequence[int], num_tokens: int) -> list[int]:
    """Completion token count after each step (`step_char_ends`), nondecreasing, the last one `num_tokens`."""
    if not char_ends:
        return []
    offsets = None
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) == num_tokens:
            offsets = [int(s) for s, _ in enc["offset_mapping"]]
    ends = []
    for c in char_ends:
        if offsets is not None:  # the tokens that start before the step's end belong to it or earlier steps
            n = bisect_left(offsets, c)
        else:
            n = len(tokenizer(completion[:c], add_special_tokens=False)["input_ids"])
        ends.append(min(max(n, ends[-1] if ends else 0), num_tokens))
    ends[-1] = num_tokens
    return ends


# ------------------------------------------------------------------------------------------ scores
@dataclass
class EncodedItem:
    """One (prompt, completion) as the value model reads it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    #: completion token count after each step (empty when no step scores were asked for)
    step_ends: list[int]


def encode_item(
    model: Any, prompt: str, completion: str, step_separator: str | None = "\n", rendered_prompt: bool = False
) -> EncodedItem:
    """Token ids of `prompt` and `completion` (`ValueModel.encode`: the prompt through the checkpoint's prompt
    format; with `rendered_prompt`, a prompt the trainer already formatted, tokenised as written) and, unless
    `step_separator` is None, the token ends of its steps."""
    prompt_ids, completion_ids = model.encode(prompt, completion)
    if rendered_prompt:
        prompt_ids = list(model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if not prompt_ids:
            raise ValueError(f"prompt {prompt!r} encodes to no tokens")
    ends: list[int] = []
    if step_separator is not None:
        ends = step_token_ends(
            model.tokenizer, completion, step_char_ends(completion, step_separator), len(completion_ids)
        )
    return EncodedItem(prompt_ids, list(completion_ids), ends)


def item_scores(values: np.ndarray, step_ends: Sequence[int]) -> dict[str, Any]:
    """Every reading of one value curve (P̂ at positions 0..T, `ValueModel.predict`) with its step ends: each
    score of `SCORES` (floats), and per step the value after it (``step_values``) and its TD score
    (``step_td``). A completion without steps (empty) scores ``min_step`` = ``final`` and ``td_sum`` = 0."""
    v = np.asarray(values, dtype=np.float64)
    spans = list(zip([0, *step_ends[:-1]], step_ends))
    step_values = prefix_step_scores(v, spans)
    td = td_errors(v)
    step_td = np.array([td[s0:s1].sum() for s0, s1 in spans], dtype=np.float64)
    return {
        "final": float(v[-1]),
        "min_step": float(step_values.min()) if len(step_values) else float(v[-1]),
        "td_sum": float(step_td.sum()),
        "step_values": step_values,
        "step_td": step_td,
    }


def value_rewards(
    model: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    score: str = "final",
    step_separator: str | None = None,
    batch_size: int = 32,
) -> list[float]:
    """The `score` of each (prompt, completion) text pair, from one batched `predict` over all of them; steps end
    after `step_separator` (None: `model_step_end`)."""
    check_score(score)
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    sep = None if score == "final" else step_separator if step_separator is not None else model_step_end(model)
    items = [encode_item(model, p, c, sep) for p, c in zip(prompts, completions)]
    values = model.predict([i.prompt_ids for i in items], [i.completion_ids for i in items], batch_size=batch_size)
    if score == "final":
        return [float(v[-1]) for v in values]
    return [item_scores(v, i.step_ends)[score] for v, i in zip(values, items)]


def make_reward_func(
    model: Any, score: str = "final", step_separator: str | None = None, batch_size: int = 32, name: str | None = None
) -> Callable[..., list[float]]:
    """A reward function with TRL's GRPO signature ``reward(prompts, completions, **kwargs) -> list[float]``
    (`ValueModel.reward_func` documents it); its ``__name__`` is `name`, default ``prefixvalue_<score>``. Steps
    end after `step_separator` (None: `model_step_end`, read once here)."""
    check_score(score)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if step_separator is None and score != "final":
        step_separator = model_step_end(model)

    def reward(prompts: Sequence[Text], completions: Sequence[Text], **kwargs: Any) -> list[float]:
        # TRL also passes completion_ids, trainer_state and the dataset's other columns: unused, since the
        # checkpoint reads text through its own prompt format and tokenizer
        return value_rewards(
            model,
            [prompt_text(p) for p in prompts],
            [completion_text(c) for c in completions],
            score,
            step_separator,
            batch_size,
        )

    reward.__name__ = reward.__qualname__ = name or f"prefixvalue_{score}"
    return reward


__all__ = [
    "SCORES",
    "EncodedItem",
    "check_score",
    "completion_text",
    "encode_item",
    "item_scores",
    "make_reward_func",
    "model_step_end",
    "prompt_text",
    "step_char_ends",
    "step_token_ends",
    "value_rewards",
]
