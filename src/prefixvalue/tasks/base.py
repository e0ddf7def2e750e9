"""The `Task` interface: prompts with stable ids, a verifier, a step splitter, optional step labels."""

from __future__ import annotations

import abc
import math
import numbers
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar


@dataclass(frozen=True)
class Prompt:
    """One task instance. `prompt_id` is stable across runs for the same task settings."""

    prompt_id: str
    text: str
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class VerifierResult:
    """Outcome of verifying one completion: `score` in [0, 1] (usually 0 or 1).

    `error` is None when the verifier ran cleanly, else a short text (exception or timeout); an
    errored verification always has score 0.
    """

    score: float
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Task(abc.ABC):
    """A verifiable task family.

    Subclasses yield prompts, verify completions Φ(prompt, completion) -> [0, 1], split a completion
    into steps (character spans), and may give exact per-step correctness labels.
    """

    name: str = "task"
    #: the dataclass its keyword options (``task_args``) build; None: plain keyword arguments
    config_class: ClassVar[type | None] = None

    @abc.abstractmethod
    def prompts(self, num: int | None = None, split: str = "train") -> Iterator[Prompt]:
        """Yield up to `num` prompts of `split` (all of them if None) in a fixed order."""

    @abc.abstractmethod
    def verify(self, prompt: Prompt, completion: str) -> VerifierResult:
        """Score `completion` as an answer to `prompt`."""

    def split_steps(self, completion: str) -> list[tuple[int, int]]:
        """Character spans [start, end) of the steps of `completion`; default: one step per line."""
        spans: list[tuple[int, int]] = []
        start = 0
        for i, ch in enumerate(completion):
            if ch == "\n":
                if i > start:
                    spans.append((start, i))
                start = i + 1
        if start < len(completion):
            spans.append((start, len(completion)))
        return spans

    def step_stops(self) -> tuple[str, ...] | None:
        """Strings that end a step of `split_steps` (generation stops there to steer step by step); None when
        steps have no such string. Default: a newline, as the default one-step-per-line split."""
        return ("\n",)

    def verify_with_limit(self, prompt: Prompt, completion: str, timeout_s: float | None) -> VerifierResult | None:
        """Score `completion` under a time limit this task enforces itself (e.g. in a worker process it can
        kill), or None when it cannot: `safe_verify` then runs `verify` in a thread it abandons on time-out."""
        return None

    @classmethod
    def code_references(cls, args: dict[str, Any]) -> list[str]:
        """User code that task options `args` name and building the task would import and run (e.g. a
        verifier ``module:function``); empty when the options name only built-in behaviour. Stages that
        take options from a dataset refuse these unless the user opts in on the command line."""
        return []

    def step_labels(self, prompt: Prompt, completion: str) -> list[bool] | None:
        """Exact correctness of each step of `split_steps(completion)`, or None if unknown (ValueError or
        LookupError when this completion cannot be labelled: collect then records no labels)."""
        return None


def first_error(step_labels: list[bool] | None) -> int | None:
    """ProcessBench label: index of the earliest wrong step, -1 if all are right, None if unknown."""
    if step_labels is None:
        return None
    for i, ok in enumerate(step_labels):
        if not ok:
            return i
    return -1


def char_to_token_spans(char_spans: list[tuple[int, int]], token_ends: list[int]) -> list[tuple[int, int]]:
    """Map character spans to token spans [start, end) given each token's end character offset.

    A token belongs to the step that contains its last character (a token that adds no character
    stays with the step before it). Steps that cover no token are dropped.
    """
    out: list[tuple[int, int]] = []
    for c0, c1 in char_spans:
        toks = [i for i, e in enumerate(token_ends) if c0 <= max(e - 1, 0) < c1]
        if toks:
            out.append((toks[0], toks[-1] + 1))
    return out


def token_end_offsets(tokenizer: Any, ids: list[int]) -> list[int]:
    """End character offset of each token in ``tokenizer.decode(ids)`` (incremental decoding).

    Works for any tokenizer, including byte-level BPE, because it decodes growing prefixes.
    """
    ends: list[int] = []
    for i in range(1, len(ids) + 1):
        ends.append(len(tokenizer.decode(ids[:i], skip_special_tokens=True)))
    return ends


def safe_verify(task: Task, prompt: Prompt, completion: str, timeout_s: float | None = 10.0) -> VerifierResult:
    """Run ``task.verify`` so that a crash or a time-out gives score 0 with the error recorded.

    The run goes on either way. A task that enforces the limit itself (`Task.verify_with_limit`, e.g. the
    jsonl task's user functions, which run in a worker process killed at the limit) is asked first.
    Otherwise a timed-out verifier is abandoned in a daemon thread (Python cannot kill a thread): a
    verifier that waits costs one idle thread, but one that keeps computing keeps the GIL busy and slows
    the run down, so only trusted, fast verifiers (the built-in ones) should run this way.
    """
    try:
        limited = task.verify_with_limit(prompt, completion, timeout_s)
    except Exception as exc:  # noqa: BLE001 - any verifier failure is recorded, not raised
        return VerifierResult(0.0, error=f"{type(exc).__name__}: {exc}")
    if limited is not None:
        return _checked(limited)
    if timeout_s is None:
        try:
            res = task.verify(prompt, completion)
        except Exception as exc:  # noqa: BLE001 - any verifier failure is recorded, not raised
            return VerifierResult(0.0, error=f"{type(exc).__name__}: {exc}")
        return _checked(res)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["res"] = task.verify(prompt, completion)
        except BaseException as exc:  # noqa: BLE001
            box["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return VerifierResult(0.0, error=f"TimeoutError: verifier exceeded {timeout_s:g}s")
    if "exc" in box:
        exc = box["exc"]
        return VerifierResult(0.0, error=f"{type(exc).__name__}: {exc}")
    return _checked(box["res"])


def as_score(value: Any) -> float:
    """`value` as a float score: any real number (int, float, bool as 1/0, Fraction, Decimal, numpy and
    other scalars that define ``__float__``). Raises TypeError for anything else (text included) and
    ValueError for NaN or a value outside [0, 1]."""
    real = isinstance(value, (numbers.Real, Decimal)) or hasattr(type(value), "__float__")
    if not real or isinstance(value, (str, bytes, numbers.Complex)) and not isinstance(value, numbers.Real):
        raise TypeError(f"verifier returned {type(value).__name__}, not a score")
    try:
        score = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"verifier returned {type(value).__name__} {value!r}, not a score ({exc})") from None
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        raise ValueError(f"verifier score {value!r} outside [0, 1]")
    return score


def _checked(res: Any) -> VerifierResult:
    """`res` (a VerifierResult or a bare score) as a VerifierResult with a float score in [0, 1]; a bad
    score gives score 0 with the error recorded (details kept)."""
    if not isinstance(res, VerifierResult):
        try:
            return VerifierResult(as_score(res))
        except (TypeError, ValueError) as exc:
            return VerifierResult(0.0, error=f"{type(exc).__name__}: {exc}")
    if res.error is not None:
        res.score = 0.0
        return res
    try:
        res.score = as_score(res.score)
    except (TypeError, ValueError) as exc:
        return VerifierResult(0.0, error=f"{type(exc).__name__}: {exc}", details=res.details)
    return res
