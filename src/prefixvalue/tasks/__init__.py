"""Task registry: a plain dict from name to task class, filled by ordinary imports."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from ..config import ConfigError, build_config, coerce_fields, plain, unknown_key_error
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


def task_class(name: str) -> type[Task]:
    """The task class registered as `name`; KeyError naming the registered tasks otherwise."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}")
    return TASKS[name]


def task_configs() -> dict[str, type]:
    """``{task name: config dataclass}`` of the registered tasks that have a typed config (what
    ``--help`` lists under ``task_args``)."""
    return {name: cls.config_class for name, cls in TASKS.items() if cls.config_class is not None}


def task_options(name: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """`args` checked against task `name`'s typed config (ConfigError on a bad key or value) and
    returned as the user gave them: what collect records as ``task_args``.

    Command-line text becomes the text itself for a text field (its escapes read where the field
    says ``escapes=True``) and its YAML reading otherwise (a number, a boolean, a list), so a
    recorded value rebuilds the same config.
    """
    given = dict(args or {})
    cls = task_class(name)
    if cls.config_class is None:
        return _check_kwargs(cls, plain(given))
    typed = coerce_fields(cls.config_class, given, prefix="task_args.")
    build_config(cls.config_class, typed, prefix="task_args.")  # the config's own rules
    hints = typing.get_type_hints(cls.config_class)
    return {k: typed[k] if isinstance(v, str) and _is_text(hints[k]) else plain(v) for k, v in given.items()}


def _is_text(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def build_task(name: str, args: dict[str, Any] | None = None) -> Task:
    """Instantiate the task registered as `name`, its config built from keyword `args`."""
    cls = task_class(name)
    if cls.config_class is None:
        return cls(**_check_kwargs(cls, plain(dict(args or {}))))
    return cls(build_config(cls.config_class, dict(args or {}), prefix="task_args."))


def _check_kwargs(cls: type[Task], args: dict[str, Any]) -> dict[str, Any]:
    """`args` when the constructor of a task without a typed config accepts them; else ConfigError naming
    the unknown key, with a suggestion, as typed configs do."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return args
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return args
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in args:
        if key not in valid:
            raise unknown_key_error(f"task_args.{key}", [f"task_args.{n}" for n in valid], cls.__name__)
    try:
        sig.bind(**args)
    except TypeError as exc:
        raise ConfigError(f"task_args: {exc}") from None
    return args


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
    "task_class",
    "task_configs",
    "task_options",
    "char_to_token_spans",
    "first_error",
    "safe_verify",
    "token_end_offsets",
]
