"""Stage configs nested in a parent config (the quickstart's ``collect``, ``label``, ``train``, ...).

The parent sets some keys of a nested config itself (where the stage writes, which model it loads). Those
keys are declared on the field (`nested`), named in ``--help``, and refused when given (`check_nested`): a
value the parent would replace without a word is a mistake the user should hear about in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .config import ConfigError


def nested(cls: type, help: str, sets: Mapping[str, str], **defaults: Any) -> Any:  # noqa: A002
    """A dataclass field holding config `cls` (built with `defaults`) of which the parent sets the keys
    `sets` (key → what it sets them to, for messages); ``--help`` shows `help` and names them."""
    text = f"{help} ({', '.join(sets)} are set here)" if sets else help
    return dataclasses.field(default_factory=lambda: cls(**defaults), metadata={"help": text, "sets": dict(sets)})


def check_nested(cfg: Any, command: str, every: Mapping[str, str]) -> None:
    """ConfigError, in one line, for a key of a `nested` field of `cfg` that the parent sets (its ``sets``,
    and `every` for each nested config that has the key) given with a value other than the field's
    default (a default value is harmless: it is what the parent replaces anyway)."""
    for f in dataclasses.fields(cfg):
        if "sets" not in f.metadata:
            continue
        given, default = getattr(cfg, f.name), f.default_factory()  # type: ignore[misc]
        for key, to in {**f.metadata["sets"], **every}.items():
            if getattr(given, key, None) != getattr(default, key, None):
                raise ConfigError(f"{command}: {f.name}.{key} is set by the {command} ({to}); remove it")
