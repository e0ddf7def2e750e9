"""How a task's prompt text becomes the policy's prompt token ids: the chat template, or the raw text.

Collect chooses a `PromptFormat` once (``chat_template``: on by default when the tokenizer has a
template; ``system_prompt``) and records it in every trace (the ``prompt_format`` column). Later stages
never re-tokenise trace prompts, they read ``prompt_ids``; whatever tokenises new prompt text for a
checkpoint (evaluate's step data) reads the recorded format, so every stage sees the same ids. The
``prompt`` column keeps the user-facing text, which reports and heatmaps show.

Train also records how the traces' steps are written (`StepFormat`, ``step_format.json`` beside the
checkpoint): what `ValueModel.score_steps`, its reward function and ``prefixvalue serve`` use unless told
otherwise (docs/design.md, "Checkpoints that travel").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, record_from_mapping
from .jsonlines import read_json_object

#: the file beside a value checkpoint that records how its training prompts were formatted
PROMPT_FORMAT_FILE = "prompt_format.json"


@dataclass(frozen=True)
class PromptFormat:
    """`chat_template`: wrap the prompt as one user message (after an optional system message) with the
    tokenizer's chat template and the generation prompt; otherwise the text is tokenised as is.
    `system_prompt` None keeps the template's own default (some templates insert one)."""

    chat_template: bool = False
    system_prompt: str | None = None

    def render(self, tokenizer: Any, text: str) -> str:
        """The prompt as the model reads it (templated text, special tokens written out)."""
        if not self.chat_template:
            return text
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": text})
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def encode(self, tokenizer: Any, text: str) -> list[int]:
        """Token ids of the rendered prompt; the template's special tokens come from its text, and the
        tokenizer adds none of its own. ValueError when the prompt encodes to no tokens."""
        ids = list(tokenizer(self.render(tokenizer, text), add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"prompt {text!r} encodes to no tokens")
        return ids

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> PromptFormat:
        """Read a recorded format; None or empty (traces written before formats were recorded) is raw text."""
        if not text:
            return cls()
        data = json.loads(text)
        return cls(bool(data.get("chat_template", False)), data.get("system_prompt"))


#: the file beside a value checkpoint that records how its training traces wrote their steps
STEP_FORMAT_FILE = "step_format.json"


@dataclass(frozen=True)
class StepFormat:
    """How a checkpoint's training traces wrote a prompt and its steps (docs/design.md, "Checkpoints that
    travel"). `prompt_template`: the prompt text before the steps (``{prompt}``: the prompt as collect wrote
    it); `step_separator`: the text joining step texts (empty when each step carries its own end, as arith's
    ``;``); `step_end`: the text after which a step of a completion ends (rewards and ``serve`` split on it:
    the task's step stop, ``;`` for arith). The defaults are the ones used before checkpoints recorded it."""

    prompt_template: str = "{prompt}\n"
    step_separator: str = "\n"
    step_end: str = "\n"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def checkpoint_step_format(path: str | Path) -> StepFormat | None:
    """The step format recorded beside a value checkpoint (`STEP_FORMAT_FILE`); None when absent (checkpoints
    trained before it was recorded). ConfigError in one line naming the file (and the field) when malformed."""
    file = Path(path) / STEP_FORMAT_FILE
    return record_from_mapping(StepFormat, read_json_object(file), file) if file.exists() else None


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def choose_prompt_format(tokenizer: Any, chat_template: bool | None, system_prompt: str | None) -> PromptFormat:
    """The format a run uses: `chat_template` None means on exactly when the tokenizer has a template.

    ConfigError when a template is asked for and the tokenizer has none, or when a system prompt is given
    without a template (it would be silently dropped).
    """
    has = has_chat_template(tokenizer)
    use = has if chat_template is None else bool(chat_template)
    if use and not has:
        raise ConfigError("chat_template=true but the model's tokenizer has no chat template")
    if system_prompt is not None and not use:
        raise ConfigError(
            "system_prompt is set but no chat template is applied "
            f"({'chat_template=false' if has else 'the tokenizer has no chat template'})"
        )
    return PromptFormat(use, system_prompt if use else None)


def checkpoint_prompt_format(path: str | Path) -> PromptFormat:
    """The prompt format a value checkpoint's traces used (`PROMPT_FORMAT_FILE`; raw text when absent, as in
    checkpoints written before it was recorded). ConfigError in one line naming the file (and the field) when it
    is not a JSON object or a field has the wrong type."""
    file = Path(path) / PROMPT_FORMAT_FILE
    return record_from_mapping(PromptFormat, read_json_object(file), file) if file.exists() else PromptFormat()


def traces_prompt_format(traces: Any) -> PromptFormat:
    """The prompt format recorded in a traces dataset (raw text when it records none); ValueError when
    its rows disagree (traces merged from runs with different formats)."""
    if "prompt_format" not in traces.column_names:
        return PromptFormat()
    kinds = set(traces.unique("prompt_format"))
    if len(kinds) > 1:
        raise ValueError(f"traces mix prompt formats {sorted(str(k) for k in kinds)}")
    return PromptFormat.from_json(next(iter(kinds), None))


__all__ = [
    "PROMPT_FORMAT_FILE",
    "STEP_FORMAT_FILE",
    "PromptFormat",
    "StepFormat",
    "checkpoint_prompt_format",
    "checkpoint_step_format",
    "choose_prompt_format",
    "has_chat_template",
    "traces_prompt_format",
]
