"""One small configuration mechanism for every recipe and CLI command.

A config is a typed dataclass whose fields carry ``metadata={"help": ...}``. `parse_config` fills it
from an optional YAML file (``--config FILE``) and then from ``key=value`` (or ``--key=value``)
overrides; nested dataclass fields are reached with dotted keys (``value_model.beta=5``). Unknown
keys are rejected with the closest valid name suggested; validation lives in each dataclass's
``__post_init__``. ``--help`` is generated from the field help texts. A renamed option keeps its old
name for one release as a refused alias (``field(..., renamed_from="samples")``): the old key, on the
command line or in YAML, is an error that names the new key. A synonym (``field(..., synonyms=("output_dir",))``)
is another spelling of the same option, accepted for good: either name may be given (both is an error), and the
field's own name is what is saved and compared (docs/design.md, "Reading inputs and configs").

A command-line value is read by the type of the field it sets: a text field takes the text as
written (``'{prompt}'`` and ``yes`` stay those characters), numbers and booleans are parsed, a list
is ``a,b,c`` or YAML ``[a, b]``, and a mapping is YAML. A number must be finite (NaN and infinities are
refused) unless its field is declared ``field(..., allow_inf=True)``. Values of a `RawMapping` (a task's
``task_args``) stay text until the task's own config types them. One rule for escapes: a text field
marked ``field(..., escapes=True)`` (templates, separators, stop strings) reads ``\n``, ``\t``,
``\r`` and ``\\`` in a command-line value (see `unescape`); every other field takes the text as
written, and YAML values are taken as YAML gives them (YAML double quotes read escapes already).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from . import __version__
from .atomic import write_atomic

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says which and why."""


class RawMapping(dict):
    """Type of a mapping option whose values a component types later (``task_args``: the task's
    config); command-line values inside it stay text until then."""


class _Text(str):
    """A value as written on the command line, not yet read by its field's type."""


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_ESCAPE = re.compile(r"\\([ntr\\])")

#: how ``--help`` marks a field that reads escapes on the command line
_ESCAPES_NOTE = "on the command line \\n, \\t, \\r, \\\\ are escapes"


def unescape(text: str) -> str:
    """`text` with the escapes ``\\n``, ``\\t``, ``\\r``, ``\\\\`` replaced by newline, tab, carriage
    return and one backslash, read left to right (``\\\\n`` is a backslash then ``n``); any other
    backslash stays as written. How command-line values of ``escapes=True`` fields are read."""
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(1)], text)


def plain(value: Any) -> Any:
    """`value` with command-line text left in free-form mappings and lists read with YAML rules."""
    if isinstance(value, _Text):
        return _parse_scalar(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def field(
    default: Any = dataclasses.MISSING,
    *,
    help: str,  # noqa: A002
    default_factory: Any = dataclasses.MISSING,
    escapes: bool = False,
    configs: Callable[[], dict[str, type]] | None = None,
    renamed_from: str | None = None,
    allow_inf: bool = False,
    synonyms: tuple[str, ...] = (),
) -> Any:
    """`dataclasses.field` with a required help text (shown by ``--help``).

    `escapes`: a text field (or list of texts) whose command-line values read the escapes of
    `unescape` (templates, separators, stop strings; never paths). `configs`: for a `RawMapping`
    field typed later by a component, a function returning ``{name: config dataclass}`` of the
    choices (``task_args``: each registered task's config); ``--help`` lists their options.
    `renamed_from`: the option's name before a rename, kept for one release as a refused alias: giving
    it is a ConfigError naming this field (`renamed_key_error`), never a silent synonym. `allow_inf`: a
    number field (or list of numbers) that takes ``inf`` (MellowMax ω = ∞ is the max); every other number
    must be finite, and NaN never passes. `synonyms`: other names of this option, accepted on the command line
    and in YAML as this field (giving two names of one option is a ConfigError; `resolve_synonyms`).
    """
    metadata: dict[str, Any] = {"help": help}
    if escapes:
        metadata["escapes"] = True
    if configs is not None:
        metadata["configs"] = configs
    if renamed_from is not None:
        metadata["renamed_from"] = renamed_from
    if allow_inf:
        metadata["allow_inf"] = True
    if synonyms:
        metadata["synonyms"] = tuple(synonyms)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str, escapes: bool = False, allow_inf: bool = False) -> Any:
    """Convert `value` (from YAML or the command line) to type `tp`, or raise ConfigError; with
    `escapes`, command-line text read as text has its escapes read (`unescape`); a number must be finite
    (``inf`` passes with `allow_inf`, NaN never)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    cli = isinstance(value, _Text)
    if tp is Any:
        return plain(value)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null", "~") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, escapes, allow_inf)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: cannot read {value!r} as {tp}: " + "; ".join(errors))
    if origin is typing.Literal:
        for arg in args:
            if value == arg or (cli and str(arg) == value):
                return arg
        raise ConfigError(f"{key}: {str(value) if cli else value!r} is not one of {list(args)}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            hint = f" (set its fields with dotted keys, e.g. {key}.NAME=VALUE)" if cli else ""
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}{hint}")
        return build_config(tp, value, prefix=f"{key}.")
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            if value.strip().startswith("["):
                value = read_yaml(value, key)
                if cli and escapes and isinstance(value, list):  # still command-line text, item by item
                    value = [_Text(v) if isinstance(v, str) else v for v in value]
            else:
                value = [_Text(v) if cli else v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{key}[{i}]", escapes, allow_inf) for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin is dict or tp is dict or tp is RawMapping:
        if isinstance(value, str):
            value = read_yaml(value, key) if value.strip() else {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return RawMapping(value) if tp is RawMapping else plain(dict(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if math.isnan(number) or (math.isinf(number) and not allow_inf):
            allowed = "a number or inf" if allow_inf else "a finite number"
            raise ConfigError(f"{key}: expected {allowed}, got {value if cli else repr(value)}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected text, got {value!r}")
        return unescape(str(value)) if cli and escapes else str(value)
    return plain(value)


def _coerce_field(value: Any, tp: Any, key: str, f: dataclasses.Field[Any]) -> Any:
    """`_coerce` for the dataclass field `f` (its ``escapes`` and ``allow_inf`` metadata)."""
    return _coerce(value, tp, key, bool(f.metadata.get("escapes")), bool(f.metadata.get("allow_inf")))


def _words_match(key: list[str], name: list[str]) -> bool:
    """Whether the words of `name` spell the words of `key` in order, each name word either close to
    one key word or the initials of several (``lerning_rate`` ~ ``lr``, ``head_learning_rate`` ~ ``head_lr``)."""
    if not name:
        return not key
    for n in range(1, len(key) + 1):
        word = key[0] if n == 1 else "".join(w[:1] for w in key[:n])
        close = difflib.SequenceMatcher(None, key[0], name[0]).ratio() >= 0.8 if n == 1 else word == name[0]
        if close and _words_match(key[n:], name[1:]):
            return True
    return False


def unknown_key_error(key: str, valid: list[str], where: str) -> ConfigError:
    """The ConfigError for an unknown config key `key` in `where`: the valid keys, and a suggestion only when
    one is close."""
    # only a close suggestion (a far one, lerning_rate -> run_name, misleads more than none)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.75)
    if not close:
        words = re.split(r"[._]", key)
        close = [v for v in valid if _words_match(words, re.split(r"[._]", v))][:1]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(
        f"unknown config key '{key}' in {where}{hint} (valid keys: {', '.join(sorted(valid))}; --help describes them)"
    )


def renamed_key_error(
    key: str, value: Any, fields: dict[str, dataclasses.Field[Any]], prefix: str = ""
) -> ConfigError | None:
    """The ConfigError for `key`, the old name of a renamed field among `fields` (a field declared with
    ``renamed_from=key``), given `value`; None when `key` is no old name. One line: the new key, what it
    means (its help text up to the first parenthesis or semicolon) and how to write it (``new=VALUE`` for a
    command-line value, the key to rename otherwise: YAML, or a caller's mapping)."""
    for name, f in fields.items():
        if f.metadata.get("renamed_from") != key:
            continue
        meaning = re.split(r" \(|; ", str(f.metadata.get("help", "")), maxsplit=1)[0].strip()
        what = f" ({meaning})" if meaning else ""
        use = f"use {prefix}{name}={value}" if isinstance(value, _Text) else f"rename the key to {name}"
        return ConfigError(f"{prefix}{key} is now {prefix}{name}{what}; {use}")
    return None


def _key_error(key: str, value: Any, fields: dict[str, dataclasses.Field[Any]], prefix: str, where: str) -> ConfigError:
    """The ConfigError for a key that is no field: a renamed option's old name, else an unknown key."""
    renamed = renamed_key_error(key, value, fields, prefix)
    return renamed or unknown_key_error(prefix + key, [prefix + n for n in fields], where)


def synonym_names(fields: Mapping[str, dataclasses.Field[Any]]) -> dict[str, str]:
    """``{synonym: field name}`` of the fields declared with ``synonyms``."""
    return {syn: name for name, f in fields.items() for syn in f.metadata.get("synonyms", ())}


def resolve_synonyms(
    values: Mapping[str, Any], fields: Mapping[str, dataclasses.Field[Any]], prefix: str = ""
) -> dict[str, Any]:
    """`values` with each synonym key replaced by its field's name; ConfigError when one option is given
    under two of its names (``out`` and ``output_dir``)."""
    names = synonym_names(fields)
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in values.items():
        name = names.get(key, key)
        if name in given:
            raise ConfigError(
                f"{prefix}{given[name]} and {prefix}{key} are two names of one option ({prefix}{name}); give one"
            )
        given[name] = key
        out[name] = value
    return out


def canonical_key(cls: type, key: str) -> str:
    """Dotted `key` of config class `cls` with each synonym replaced by its field's name (a key that names no
    field is returned as far as it resolves, for the unknown-key message to name)."""
    parts = key.split(".")
    tp: Any = cls
    for i, part in enumerate(parts):
        if not _is_dataclass_type(tp):
            break
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        parts[i] = synonym_names(fields).get(part, part)
        tp = _hints(tp).get(parts[i]) if parts[i] in fields else None
    return ".".join(parts)


def _canonical_tree(cls: Any, tree: Any, prefix: str = "") -> Any:
    """A mapping of `cls`'s options (a YAML file's) with synonyms replaced by field names, nested configs
    included; ConfigError when one option is given under two names (`resolve_synonyms`)."""
    if not _is_dataclass_type(cls) or not isinstance(tree, dict):
        return tree
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    resolved = resolve_synonyms(tree, fields, prefix)
    return {k: _canonical_tree(hints[k], v, f"{prefix}{k}.") if k in fields else v for k, v in resolved.items()}


def build_config(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping (YAML or command-line values, dotted-key `prefix` for
    messages): values read by the field types, unknown keys rejected, ConfigError on any problem."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in resolve_synonyms(values, fields, prefix).items():
        if key not in fields:
            raise _key_error(key, value, fields, prefix, cls.__name__)
        default_factory = fields[key].default_factory
        if _is_dataclass_type(hints[key]) and isinstance(value, dict) and default_factory is not dataclasses.MISSING:
            # a nested config given in part keeps the other values of its field's default, not of its class
            default = default_factory()
            value = {**{f.name: getattr(default, f.name) for f in dataclasses.fields(default) if f.init}, **value}
        kwargs[key] = _coerce_field(value, hints[key], prefix + key, fields[key])
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a missing argument, or a rule of the dataclass's __post_init__
        raise ConfigError(f"{prefix[:-1] if prefix else cls.__name__}: {exc}") from None


def record_from_mapping(
    cls: type[T],
    data: Mapping[str, Any],
    where: str | Path,
    required: Collection[str] = (),
    ignore_unknown: bool = False,
) -> T:
    """Dataclass `cls` from a mapping read from the record file `where` (a file a command wrote, e.g. a
    checkpoint's ``split.json``): each field read by its type (`build_config`), fields without a default and the
    `required` ones must be present, unknown keys are refused unless `ignore_unknown`. Any problem is a
    ConfigError in one line naming the file and the field."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = resolve_synonyms(data, fields)
    needed = [
        n
        for n, f in fields.items()
        if n in required or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    ]
    missing = [n for n in needed if n not in data]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(k for k in data if k not in fields)
    if unknown and not ignore_unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    try:
        return build_config(cls, {k: v for k, v in data.items() if k in fields})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def coerce_fields(cls: type, values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`values` read by the field types of dataclass `cls` (unknown keys rejected), without building
    it: the mapping as given, typed. How a task's ``task_args`` are checked and recorded."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    out: dict[str, Any] = {}
    for key, value in resolve_synonyms(values, fields, prefix).items():
        if key not in fields:
            raise _key_error(key, value, fields, prefix, cls.__name__)
        out[key] = _coerce_field(value, hints[key], prefix + key, fields[key])
    return out


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _parse_scalar(text: str) -> Any:
    """Read a command-line value with YAML rules (numbers, booleans, lists) but keep plain text."""
    try:
        value = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader (see _ConfigLoader)
    except (yaml.YAMLError, RecursionError):
        return text
    return text if value is None and text.lower() not in ("null", "none", "~") else value


def format_help(cls: type, prog: str | None = None, prefix: str = "") -> str:
    """Return ``--help`` text listing every field, its type, default and help; then, for each
    `RawMapping` field with ``configs`` (``task_args``), the options of every config it may build."""
    lines = []
    if not prefix:
        lines.append(f"usage: {prog or cls.__name__} [--config FILE.yaml] [key=value ...]")
        doc = inspect.cleandoc(cls.__doc__ or "")
        if doc:
            lines += ["", doc]
        lines += ["", "options (set in the YAML file or as key=value; nested keys are dotted):"]
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            lines.append(f"  {prefix}{f.name}.*  {f.metadata.get('help', '')}")
            lines.append(format_help(tp, prefix=f"{prefix}{f.name}."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        lines.append(f"  {prefix}{f.name} ({tname}, default: {default!r})")
        note = f" ({_ESCAPES_NOTE})" if f.metadata.get("escapes") else ""
        if f.metadata.get("synonyms"):
            note += f" (also {', '.join(prefix + n for n in f.metadata['synonyms'])})"
        if f.metadata.get("renamed_from"):
            note += f" (formerly {prefix}{f.metadata['renamed_from']}, now refused)"
        lines.append(f"      {f.metadata.get('help', '')}{note}")
    if not prefix:
        lines += _configs_help(cls)
    return "\n".join(lines)


def _configs_help(cls: type, prefix: str = "") -> list[str]:
    """Help lines for the ``configs`` of `cls`'s mapping fields (nested configs included), each
    choice's options listed once under the first key that offers it."""
    found: dict[Any, list[str]] = {}

    def walk(c: type, pre: str) -> None:
        hints = _hints(c)
        for f in dataclasses.fields(c):
            if not f.init:
                continue
            if _is_dataclass_type(hints[f.name]):
                walk(hints[f.name], f"{pre}{f.name}.")
            elif f.metadata.get("configs") is not None:
                found.setdefault(f.metadata["configs"], []).append(pre + f.name)

    walk(cls, prefix)
    lines: list[str] = []
    for configs, keys in found.items():
        key = keys[0]
        also = f"; also {', '.join(k + '.NAME' for k in keys[1:])}" if keys[1:] else ""
        lines += ["", f"{key} options of each registered config ({key}.NAME=VALUE{also}):"]
        for name, sub in configs().items():
            doc = " ".join(inspect.cleandoc(sub.__doc__ or "").split("\n\n")[0].split())
            lines += ["", f"  {name} ({sub.__name__}): {doc}"]
            lines += ["  " + line for line in format_help(sub, prefix=f"{key}.").split("\n")]
    return lines


def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None) -> T:
    """Build a `cls` config from ``argv``: ``[--config FILE] [key=value | --key=value ...]``.

    Later values win: dataclass defaults < YAML file < command line. Raises ConfigError on unknown
    keys (with a suggestion) and on values of the wrong type; prints help and exits on ``--help``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(format_help(cls, prog))
        raise SystemExit(0)
    tree: dict[str, Any] = {}
    overrides: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a YAML file")
            tree = _without_saved_meta(cls, load_yaml(argv[i + 1]), argv[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            tree = _without_saved_meta(cls, load_yaml(arg.split("=", 1)[1]), arg.split("=", 1)[1])
            i += 1
            continue
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif arg.startswith("--"):
            nxt = (
                argv[i + 1]
                if i + 1 < len(argv) and "=" not in argv[i + 1] and not argv[i + 1].startswith("-")
                else "VALUE"
            )
            raise ConfigError(f"'{arg} {nxt}' is not read: write {arg[2:].replace('-', '_')}={nxt} (key=value)")
        elif "=" in arg:
            key, value = arg.split("=", 1)
        else:
            raise ConfigError(f"cannot read argument {arg!r}: expected key=value")
        i += 1
        overrides.append((key.replace("-", "_"), _Text(value)))
    # either name of an option with synonyms sets it; the command line wins over the YAML file under any name
    tree = _canonical_tree(cls, tree)
    given: dict[str, str] = {}
    for key, value in overrides:
        name = canonical_key(cls, key)
        if given.get(name, key) != key:
            raise ConfigError(f"{given[name]} and {key} are two names of one option ({name}); give one")
        given[name] = key
        _set_dotted(tree, name, value)
    return build_config(cls, tree)


def with_overrides(cfg: T, overrides: dict[str, Any], where: str = "") -> T:
    """A copy of config `cfg` with `overrides` applied: dotted keys (``value_model.kind``) or nested
    mappings, read by the field types as on the command line; ConfigError (naming `where`) on a bad key."""
    tree = dataclasses.asdict(cfg)
    for key, value in overrides.items():
        name = canonical_key(type(cfg), str(key).replace("-", "_"))
        _set_dotted(tree, name, _Text(value) if isinstance(value, str) else value)
    try:
        return build_config(type(cfg), tree)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what went wrong and where (line and column, 1-based)."""
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else what


#: how many values a YAML text's aliases (``*name``) may add by repeating what they name: a config is small,
#: and aliases of aliases (a "billion laughs") would otherwise grow without bound once the values are copied
MAX_ALIAS_VALUES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_aliases(root: yaml.Node) -> None:
    """Raise a YAML error when the document `root`, its aliases expanded, holds more than
    `MAX_ALIAS_VALUES` values beyond its written nodes, or when an alias holds itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # depth first, without recursion: a node's size once its children's are known
        node, done = stack.pop()
        if done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[id(node)] > MAX_ALIAS_VALUES + len(sizes):
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"its aliases (*name) expand to more than {MAX_ALIAS_VALUES} values (nested aliases?)",
                    node.start_mark,
                )
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias (*name) inside the value it names", node.start_mark
            )
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader for configs: a key given twice in one mapping is an error (not last-wins), and
    so are aliases that expand past `MAX_ALIAS_VALUES` values or hold themselves (`_check_aliases`)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_aliases(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue  # merged keys (<<) may be overridden; a non-scalar key is the parent's to refuse
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (a key may be given once)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, where: str) -> Any:
    """`text` read as YAML by the config loader (safe; no duplicate keys, bounded aliases); a one-line
    ConfigError starting with `where` (a file or a key) when it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader (see _ConfigLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {yaml_error_line(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from `path` (UTF-8 text); a one-line ConfigError naming the file if it is missing,
    unreadable, not UTF-8, not valid YAML (`read_yaml`) or not a mapping."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start} cannot be read: {exc.reason}); save the config as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    data = read_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


#: what `save_resolved_config` writes beside the options: a saved config.yaml is read back as a config file
SAVED_META_KEYS = ("prefixvalue_version", "config_class")


def _without_saved_meta(cls: type, tree: Any, path: str) -> Any:
    """A config file's mapping without the keys `save_resolved_config` adds, so a run's own config.yaml is a
    ``--config`` file again; ConfigError when it was saved by another command's config class."""
    if not isinstance(tree, dict) or not any(k in tree for k in SAVED_META_KEYS):
        return tree
    saved = tree.get("config_class")
    if saved is not None and saved != cls.__name__:
        raise ConfigError(f"{path}: saved by {saved}, not {cls.__name__}: it is another command's config")
    return {k: v for k, v in tree.items() if k not in SAVED_META_KEYS}


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Return the config as plain JSON/YAML-safe data."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def save_resolved_config(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config and the package version to ``out_dir/name`` atomically (`prefixvalue.atomic`:
    a kill leaves the old file or the new one); return the path."""
    data = {"prefixvalue_version": __version__, "config_class": type(cfg).__name__, **config_to_dict(cfg)}
    text = yaml.safe_dump(data, sort_keys=False)
    return write_atomic(Path(out_dir) / name, lambda p: p.write_text(text))
