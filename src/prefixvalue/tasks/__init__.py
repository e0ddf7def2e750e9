"""Task registry: a plain dict from name to task class, filled by ordinary imports."""

from __future__ import annotations

from typing import Any

from .arith import ArithConfig, ArithTask
from .base import (
    Prompt,
    Task,
    VerifierResult,
    char_to_token_spans,
    first_error,
    safe_verify,
    token_end_offsets,
)
from .jsonl import JsonlConfig, JsonlFormatError, JsonlTask

TASKS: dict[str, type[Task]] = {
    "arith": ArithTask,
    "jsonl": JsonlTask,
}


def build_task(name: str, args: dict[str, Any] | None = None) -> Task:
    """Instantiate the task registered as `name` with keyword `args`."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}")
    return TASKS[name](**(args or {}))


__all__ = [
    "TASKS",
    "ArithConfig",
    "ArithTask",
    "JsonlConfig",
    "JsonlFormatError",
    "JsonlTask",
    "Prompt",
    "Task",
    "VerifierResult",
    "build_task",
    "char_to_token_spans",
    "first_error",
    "safe_verify",
    "token_end_offsets",
]
