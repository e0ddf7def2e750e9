"""verl's custom reward function over a value checkpoint: ``compute_score(data_source, solution_str, ground_truth,
extra_info=None) -> float`` (docs/design.md, "Reward interfaces").

verl loads a reward function from a file (``custom_reward_function.path``) by name (``.name``, default
``compute_score``) and passes it ``custom_reward_function.reward_kwargs``::

    python -m verl.trainer.main_ppo ... \\
        custom_reward_function.path=$(python -c "import prefixvalue.value.verl_reward as m; print(m.__file__)") \\
        custom_reward_function.name=compute_score \\
        +custom_reward_function.reward_kwargs.checkpoint=runs/quickstart/train_head/final \\
        +custom_reward_function.reward_kwargs.score=final

(``reward_model.reward_manager=batch`` with ``custom_reward_function.name=compute_score_batch`` scores a whole
batch in one forward pass.) Instead of ``reward_kwargs``, the environment may name the checkpoint
(``PREFIXVALUE_REWARD_CHECKPOINT``), the score (``PREFIXVALUE_REWARD_SCORE``) and the device
(``PREFIXVALUE_REWARD_DEVICE``). The checkpoint is loaded on first use, once per process (verl may run reward
functions in several processes; each loads its own copy).

**The prompt.** verl passes the decoded response, not the prompt; a value depends on both. The prompt is read from
``extra_info[prompt_key]`` (default ``"prompt"``): put the prompt's text there when preparing the parquet files (the
text the checkpoint's prompt format wraps, as collect recorded it; a list of chat messages is read as its last
``user`` content). verl's example preprocessors record the raw question as ``extra_info["question"]``:
``prompt_key=question`` reads it, but only when that is the whole prompt. A row without it is a ValueError naming
the key. ``data_source`` and ``ground_truth`` are not read.

verl executes this file outside the package (``importlib`` from its path), so its imports are absolute.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from prefixvalue.policies import default_device
from prefixvalue.value.base import ValueModel
from prefixvalue.value.rewards import check_score, prompt_text, value_rewards

#: environment variables read when the reward kwargs do not say
ENV_CHECKPOINT = "PREFIXVALUE_REWARD_CHECKPOINT"
ENV_SCORE = "PREFIXVALUE_REWARD_SCORE"
ENV_DEVICE = "PREFIXVALUE_REWARD_DEVICE"

_MODELS: dict[tuple[str, str], ValueModel] = {}
_LOCK = threading.Lock()  # one model call at a time: verl's thread-pool reward managers share the process


def reward_model(checkpoint: str | None = None, device: str | None = None) -> ValueModel:
    """The value model of `checkpoint` (default: ``$PREFIXVALUE_REWARD_CHECKPOINT``) on `device` (default:
    ``$PREFIXVALUE_REWARD_DEVICE``, else cuda if present), loaded once per process. ValueError without one."""
    path = checkpoint or os.environ.get(ENV_CHECKPOINT)
    if not path:
        raise ValueError(
            f"no value checkpoint: set custom_reward_function.reward_kwargs.checkpoint or ${ENV_CHECKPOINT}"
        )
    dev = device or os.environ.get(ENV_DEVICE) or str(default_device())
    key = (str(path), dev)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = ValueModel.from_pretrained(path, device=dev)
        return _MODELS[key]


def extra_info_prompt(extra_info: Any, prompt_key: str = "prompt") -> str:
    """The prompt text recorded in verl's ``extra_info`` under `prompt_key` (see the module docstring)."""
    if not isinstance(extra_info, dict) or extra_info.get(prompt_key) is None:
        have = sorted(extra_info) if isinstance(extra_info, dict) else type(extra_info).__name__
        raise ValueError(
            f"extra_info has no {prompt_key!r} (it has {have}): a value needs the prompt; record it as "
            f"extra_info[{prompt_key!r}] when preparing the data, or name the key with reward_kwargs.prompt_key"
        )
    return prompt_text(extra_info[prompt_key])


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    checkpoint: str | None = None,
    score: str | None = None,
    step_separator: str | None = None,
    prompt_key: str = "prompt",
    device: str | None = None,
    batch_size: int = 32,
    **kwargs: Any,
) -> list[float]:
    """Rewards of a batch (verl's ``batch`` reward manager): the value checkpoint's `score` (``final``, the
    default or ``$PREFIXVALUE_REWARD_SCORE``; ``min_step``; ``td_sum``: `prefixvalue.value.rewards`) of each
    response after the prompt in its ``extra_info``, from one batched forward pass. Probability units. Steps end
    after `step_separator`, default the checkpoint's step end (`prefixvalue.value.rewards.model_step_end`)."""
    score = score or os.environ.get(ENV_SCORE) or "final"
    check_score(score)
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    prompts = [extra_info_prompt(info, prompt_key) for info in infos]
    model = reward_model(checkpoint, device)
    with _LOCK:
        return value_rewards(model, prompts, list(solution_strs), score, step_separator, batch_size)


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    checkpoint: str | None = None,
    score: str | None = None,
    step_separator: str | None = None,
    prompt_key: str = "prompt",
    device: str | None = None,
    **kwargs: Any,
) -> float:
    """verl's custom reward function: the value checkpoint's `score` of `solution_str` after the prompt in
    `extra_info` (see the module docstring and `compute_score_batch`). Probability units."""
    return compute_score_batch(
        [data_source],
        [solution_str],
        [ground_truth],
        [extra_info],
        checkpoint=checkpoint,
        score=score,
        step_separator=step_separator,
        prompt_key=prompt_key,
        device=device,
    )[0]


__all__ = ["ENV_CHECKPOINT", "ENV_DEVICE", "ENV_SCORE", "compute_score", "compute_score_batch", "reward_model"]
