"""One run-folder contract for every command that writes (docs/design.md, "Run folders").

A command's output folder (``out=``, train's ``output_dir=``) holds one run of one command. `claim`
makes a folder this run's, or refuses it in one line (a `ConfigError`, exit 2 on the command line):

- an empty or missing folder becomes this run's: ``.prefixvalue-run.json`` (`RECORD_FILE`) names the
  command and its config and lists the files the run wrote;
- a folder holding this command's run with the same config (keys in `rerun_keys`, such as
  ``report_to`` or ``progress``, may differ) resumes it;
- a folder holding another command's run, a run with another config (the differing keys are named,
  at most `MAX_NAMED`), or a file no run of this command wrote (a user's ``NOTES.txt``) is refused and
  nothing in it is touched. ``overwrite=true``, where a command has it, replaces the files a run of
  the command wrote (its record's files and its outputs by name), never any other file. A run that
  stopped before it wrote anything but its config (a model that did not load) is no result: another
  config of the same command may take the folder over.

A folder written before this contract (no record) is taken as the command's when every entry in it is
one of the command's outputs by name (``outputs``, glob patterns of top-level names) and its config
(config.yaml, or the command's ``config_file``: collect's and label's ``run.json``) is of the command's
config class and equal in the compared keys. Without a config to compare, such a folder is refused
(``overwrite=true`` writes over it, deleting none of its files: their writer is unknown), except for a
command that adopts it as its own unfinished run (``adopt_unrecorded``: train, whose checkpoints decide
how it resumes).

One process at a time: a claim holds an exclusive lock (``fcntl.flock``) on ``.prefixvalue-run.lock``
(`LOCK_FILE`) until it is released, or the process ends, or the same process claims the folder again;
a second process is refused while it is held. The files a command writes go through `write_text`,
`write_json`, `write_bytes`, `write_with` and `replace_dir` (or the `RunFolder` methods of the same
names): each writes a temp name in the same folder and renames it into place (``os.replace``), so a
killed run or a full disk leaves the old file or none, never half of one, and records the file as the
run's. Temp names (``.prefixvalue-tmp-<pid>-...``) of a process no longer alive are removed at the
next claim.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import fnmatch
import json
import math
import os
import typing
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import TEMP_PREFIX, remove_entry, replace_entry, write_atomic
from .config import SAVED_META_KEYS, ConfigError, config_to_dict, read_yaml

RECORD_FILE = ".prefixvalue-run.json"  #: the run's record: command, config, files written, complete
LOCK_FILE = ".prefixvalue-run.lock"  #: held (flock) by the process that claimed the folder
CONFIG_FILE = "config.yaml"  #: the resolved config (`prefixvalue.config.save_resolved_config`)
#: keys that change no figure: they may differ when a command resumes its own run (matched against every
#: part of a dotted key, so ``train.report_to`` and ``evaluate.wandb.group`` are covered too)
RERUN_KEYS = frozenset({"out", "output_dir", "overwrite", "progress", "report_to", "run_name", "wandb"})
#: what the loggers (`prefixvalue.tracking`) write into a run folder besides a command's own files
LOGGER_OUTPUTS = ("metrics.jsonl", "wandb", "wandb_run_id")
MAX_NAMED = 8  #: most differing keys or strangers' files a refusal names

#: the command whose config.yaml names each config class (what a folder written before the record holds)
CONFIG_CLASSES: dict[str, str] = {
    "CollectConfig": "collect",
    "LabelConfig": "label",
    "TrainConfig": "train",
    "EvaluateConfig": "evaluate",
    "QuickstartConfig": "quickstart",
    "ActionsConfig": "actions",
    "AdvantagesConfig": "advantages",
    "DistanceConfig": "distance",
    "ExportConfig": "export",
    "ImportConfig": "import",
    "ExportModelConfig": "export-model",
}

#: an equality of config values by key: ``equal(key, there, now)``
Equal = Callable[[str, Any, Any], bool]


# ----------------------------------------------------------------------------------- the verdict
@dataclasses.dataclass(frozen=True)
class Verdict:
    """What `check` found in a folder: ``state`` is ``fresh`` (empty or missing), ``resume`` (this
    command's run with the same config, or one written before the record), ``takeover`` (this command's
    run with another config that wrote nothing but its config) or ``replace`` (another config, with
    ``overwrite``); ``ours`` are the top-level names the command's runs wrote (what ``replace`` removes)."""

    state: str
    ours: tuple[str, ...] = ()
    old_config: dict[str, Any] | None = None


def _entries(out: Path) -> list[str]:
    """Top-level names in `out`, without the contract's own files (record, lock, temp names)."""
    if not out.is_dir():
        return []
    return sorted(
        p.name for p in out.iterdir() if p.name not in (RECORD_FILE, LOCK_FILE) and not p.name.startswith(TEMP_PREFIX)
    )


def _matches(name: str, patterns: Collection[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def _write_record(out: Path, record: Mapping[str, Any]) -> None:
    """Write `record` as folder `out`'s run record, atomically."""
    write_atomic(out / RECORD_FILE, lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))


def read_record(out: str | Path) -> dict[str, Any] | None:
    """The run record of folder `out` (a dict with ``command``, ``config``, ``files``, ``complete``), None
    when there is none; ConfigError naming the file when it cannot be read."""
    path = Path(out) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable run record ({exc}); remove it if the folder is yours") from None
    if not isinstance(record, dict) or not isinstance(record.get("command"), str):
        raise ConfigError(f"{path}: not a prefixvalue run record; remove it if the folder is yours")
    return record


def _saved_config(out: Path, name: str, where: str) -> dict[str, Any] | None:
    """The config a folder written before the record keeps in `name` (YAML, or JSON for ``.json``): a
    mapping, or None when the file is absent; ConfigError (after `where`) when it is not a mapping."""
    path = out / name
    if not path.is_file():
        return None
    try:
        text = path.read_text()
        data = json.loads(text) if name.endswith(".json") else read_yaml(text, str(path))
    except (OSError, ValueError):  # a ConfigError (not valid YAML) is a ValueError
        data = None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} holds a {name} no prefixvalue run wrote; move it away or choose another folder")
    return data


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`tree` with nested mappings as dotted keys (``value_model.kind``)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _ignored(key: str, rerun_keys: Collection[str]) -> bool:
    """Whether dotted `key` may differ on a rerun: one of its parts, or one of its dotted prefixes, is in
    `rerun_keys`."""
    parts = key.split(".")
    return any(p in rerun_keys for p in parts) or any(".".join(parts[:i]) in rerun_keys for i in range(2, len(parts)))


def _default_equal(path_keys: Collection[str]) -> Equal:
    def equal(key: str, a: Any, b: Any) -> bool:
        if key in path_keys and isinstance(a, str) and isinstance(b, str) and a and b:
            a, b = (str(Path(v).expanduser().resolve()) if Path(v).expanduser().exists() else v for v in (a, b))
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return bool(a == b)

    return equal


def config_differences(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    rerun_keys: Collection[str] = RERUN_KEYS,
    path_keys: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
    renames: Mapping[str, str] | None = None,
    equal: Equal | None = None,
) -> list[tuple[str, Any, Any]]:
    """``(key, value there, value now)`` of every dotted key whose values differ between config `old` (a
    folder's) and `new` (this run's), keys in `rerun_keys` aside; a key one side lacks takes its value in
    `defaults` (a config written by an older version); `renames` maps old dotted names to new ones;
    `path_keys` compare as resolved paths when they exist."""
    same = _default_equal(path_keys)
    flat_old = {(renames or {}).get(k, k): v for k, v in _flat(old).items() if k not in SAVED_META_KEYS}
    flat_new = {k: v for k, v in _flat(new).items() if k not in SAVED_META_KEYS}
    flat_defaults = _flat(defaults or {})
    diffs = []
    for key in sorted(flat_old.keys() | flat_new.keys()):
        if _ignored(key, rerun_keys):
            continue
        a, b = flat_old.get(key, flat_defaults.get(key)), flat_new.get(key, flat_defaults.get(key))
        if not (same(key, a, b) or (equal is not None and equal(key, a, b))):
            diffs.append((key, a, b))
    return diffs


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _named(names: list[str]) -> str:
    more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
    return ", ".join(names[:MAX_NAMED]) + more


def check(
    out: str | Path,
    command: str,
    config: Any,
    *,
    outputs: Collection[str],
    rerun_keys: Collection[str] = RERUN_KEYS,
    path_keys: Collection[str] = (),
    equal: Equal | None = None,
    overwrite: bool | None = None,
    config_file: str = CONFIG_FILE,
    out_key: str = "out",
    notes: Mapping[str, str] | None = None,
    adopt_unrecorded: bool = False,
) -> Verdict:
    """What folder `out` holds for a run of `command` with `config` (a config dataclass or a mapping), by
    the rules of this module; changes nothing. Raises ConfigError, in one line naming what differs, when
    the folder holds another command's run, a file no run of `command` wrote, or a run with another
    config (unless `overwrite` is true; None: the command has no such option). `outputs`: glob patterns of
    the top-level names the command writes (`LOGGER_OUTPUTS` and config.yaml included where it writes
    them); `config_file`: where a folder written before the record keeps the config compared (a mapping
    of the same keys as `config`); `notes`: why a differing key matters, said after it;
    `adopt_unrecorded`: take a folder of the command's outputs with no record and no config to compare as
    an unfinished run (else it is refused, or written over with `overwrite`, none of its files deleted)."""
    out = Path(out)
    where = f"{command}: {out_key} {out}"
    entries = _entries(out)
    if not entries:
        return Verdict("fresh")
    new, defaults, renames = _config_view(config)
    record = read_record(out)
    if record is not None:
        if record["command"] != command:
            raise ConfigError(
                f"{where} holds a `prefixvalue {record['command']}` run; choose another {out_key} (nothing was changed)"
            )
        recorded = {str(f).split("/")[0] for f in record.get("files", [])}
        old = record.get("config") if isinstance(record.get("config"), dict) else {}
    else:
        saved = _saved_config(out, CONFIG_FILE, where) if CONFIG_FILE in entries else None
        if saved is not None:
            owner = CONFIG_CLASSES.get(str(saved.get("config_class")))
            expected = _config_class(config)
            if owner != command or (expected is not None and saved.get("config_class") != expected):
                what = (
                    f"a `prefixvalue {owner}` run" if owner else f"a {CONFIG_FILE} no prefixvalue {command} run wrote"
                )
                raise ConfigError(f"{where} holds {what}; choose another {out_key} (nothing was changed)")
        recorded = set()
        old = saved if config_file == CONFIG_FILE else _saved_config(out, config_file, where)
    ours = tuple(e for e in entries if e in recorded or _matches(e, outputs))
    strangers = [e for e in entries if e not in ours]
    if strangers:
        raise ConfigError(
            f"{where} holds {_named(strangers)}, which no prefixvalue {command} run wrote; move "
            f"{'it' if len(strangers) == 1 else 'them'} away or choose another {out_key} (nothing was deleted)"
        )
    if old is None:  # written before the record, with no config to compare
        if adopt_unrecorded:  # an unfinished run of the command, whose own checks decide how it resumes
            return Verdict("resume", ours)
        if overwrite:  # written over; nothing whose writer is unknown is deleted
            return Verdict("replace")
        hint = "set overwrite=true to write over them, or choose" if overwrite is False else "move them away or choose"
        raise ConfigError(
            f"{where} holds {_named(ours)} but no record or {config_file} of a prefixvalue {command} run; "
            f"{hint} another {out_key} (nothing was deleted)"
        )
    diffs = config_differences(
        old, new, rerun_keys=rerun_keys, path_keys=path_keys, defaults=defaults, renames=renames, equal=equal
    )
    if not diffs:
        return Verdict("resume", ours, old)
    if not [e for e in ours if e not in (CONFIG_FILE, config_file)]:  # it wrote nothing but its config
        return Verdict("takeover", ours, old)
    if overwrite:
        return Verdict("replace", ours, old)
    shown = "; ".join(f"{k}: {_short(a)} there, {_short(b)} now" for k, a, b in diffs[:MAX_NAMED])
    more = f" (and {len(diffs) - MAX_NAMED} more)" if len(diffs) > MAX_NAMED else ""
    why = "; ".join(notes[k] for k, _, _ in diffs if notes and k in notes)
    hint = (
        "set overwrite=true to replace its outputs, or choose another " + out_key
        if overwrite is False
        else f"choose another {out_key}, or remove it to start over"
    )
    raise ConfigError(
        f"{where} holds another run, with another config ({shown}{more}){'; ' + why if why else ''}; {hint}"
    )


def _config_class(config: Any) -> str | None:
    return type(config).__name__ if dataclasses.is_dataclass(config) and not isinstance(config, type) else None


def _config_view(config: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """``(config as plain data, its class's defaults, {old dotted name: new} of renamed fields)``; for a
    mapping, ``(the mapping, {}, {})``."""
    if _config_class(config) is None:
        return dict(config), {}, {}
    return config_to_dict(config), _defaults(type(config)), _renames(type(config))


def _defaults(cls: type) -> dict[str, Any]:
    """The defaults of the fields of config class `cls` as plain data (a field without one is left out),
    read field by field, so a class whose own checks need values (the quickstart's policy) has them too."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            try:
                value = f.default_factory()
            except (TypeError, ValueError):  # a nested config that cannot be built bare
                continue
        else:
            continue
        out[f.name] = config_to_dict(value) if dataclasses.is_dataclass(value) else value
    return json.loads(json.dumps(out, default=str))


def _renames(cls: type, prefix: str = "") -> dict[str, str]:
    """``{old dotted name: new dotted name}`` of the fields of `cls` declared with ``renamed_from``, and of each
    ``synonyms`` name to its field's (a folder's config saved under a synonym compares as the field)."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve: no nested renames read
        hints = {}
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        old = f.metadata.get("renamed_from")
        if old:
            out[prefix + old] = prefix + f.name
        for synonym in f.metadata.get("synonyms", ()):
            out[prefix + synonym] = prefix + f.name
        tp = hints.get(f.name)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.update(_renames(tp, f"{prefix}{f.name}."))
    return out


# ----------------------------------------------------------------------------------- the claim
#: this process's claims, by resolved folder: a new claim of the same folder supersedes the old one
_HELD: dict[str, RunFolder] = {}


@dataclasses.dataclass
class RunFolder:
    """A folder claimed for one run (`claim`): it holds the lock until `release`, and its write methods
    write atomically and record each file in the run record. ``state`` is the `Verdict` state the claim
    found (``fresh``, ``resume``, ``takeover``, ``replace``)."""

    path: Path
    command: str
    state: str
    record: dict[str, Any]
    outputs: tuple[str, ...] = ()  #: glob patterns of the top-level names the command writes
    _lock: Any = None

    # -- writing
    def write_with(self, name: str, write: Callable[[Path], Any]) -> Path:
        """Write file ``path/name`` with ``write(temp_path)``, then rename it into place; returns the path."""
        return write_with(self.path / name, write)

    def write_text(self, name: str, text: str, encoding: str = "utf-8") -> Path:
        """Write text to ``path/name`` atomically; returns the path."""
        return write_text(self.path / name, text, encoding)

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write bytes to ``path/name`` atomically; returns the path."""
        return write_bytes(self.path / name, data)

    def write_json(self, name: str, data: Any, indent: int | None = 1) -> Path:
        """Write `data` as JSON (with a final newline) to ``path/name`` atomically; returns the path."""
        return write_json(self.path / name, data, indent)

    def replace_dir(self, name: str, build: Callable[[Path], Any]) -> Path:
        """Build folder ``path/name`` with ``build(temp_folder)``, then put it in place of the old one."""
        return replace_dir(self.path / name, build)

    def install(
        self, build: Callable[[Path], Any], *, last: Collection[str] = (), stale: Collection[str] = ()
    ) -> list[str]:
        """Build files with ``build(temp_folder)`` and move each into the run folder (the names in `last`
        last, e.g. a dataset's ``state.json``); then files of earlier runs matching `stale` that this
        build did not write again are removed (``*``: every one). Returns the names installed."""
        tmp = self.path / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-install"
        try:
            build(tmp)
            names = sorted(p.name for p in tmp.iterdir())
            first = [n for n in names if n not in last]
            for name in first:
                replace_entry(tmp / name, self.path / name)
            self.record_files(*first)
            self.remove(*stale, keep=names)
            for name in [n for n in names if n in last]:
                replace_entry(tmp / name, self.path / name)
            self.record_files(*names)
        finally:
            remove_entry(tmp)
        return names

    # -- the record
    def record_files(self, *names: str) -> None:
        """Add top-level `names` to the files the record lists as this run's."""
        files = self.record.setdefault("files", [])
        new = [n for n in names if n not in files]
        if new:
            files.extend(new)
            self._save()

    def remove(self, *patterns: str, keep: Collection[str] = ()) -> list[str]:
        """Remove the run's files (recorded, top-level) matching `patterns`, but those in `keep`; never a
        file the record does not list. Returns the names removed."""
        files = self.record.get("files", [])
        gone = [n for n in files if _matches(n, patterns) and n not in keep and n != CONFIG_FILE]
        for name in gone:
            remove_entry(self.path / name)
        if gone:
            self.record["files"] = [n for n in files if n not in gone]
            self._save()
        return gone

    def finish(self) -> None:
        """Mark the run complete in its record, listing every output it holds (the command's outputs by
        name included), and release the folder."""
        files = self.record.setdefault("files", [])
        files.extend(e for e in _entries(self.path) if e not in files and _matches(e, self.outputs))
        self.record["complete"] = True
        self._save()
        self.release()

    def _save(self) -> None:
        _write_record(self.path, self.record)

    # -- the lock
    def release(self) -> None:
        """Release the lock (other processes may claim the folder); the record stays."""
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        key = _key(self.path)
        if _HELD.get(key) is self:
            del _HELD[key]

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _key(out: Path) -> str:
    return str(out.expanduser().resolve())


def _open_lock(out: Path, where: str, out_key: str) -> Any:
    """The lock file of `out`, opened and locked (non-blocking); ConfigError when another process holds it."""
    f = open(out / LOCK_FILE, "a+")  # noqa: SIM115 (held open for the run: closed by RunFolder.release)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ConfigError(
            f"{where} is in use by another run (a process holds {out / LOCK_FILE}); wait for it to finish or "
            f"choose another {out_key}"
        ) from None
    return f


@contextlib.contextmanager
def lock(out: str | Path, command: str, out_key: str = "out") -> Iterator[None]:
    """Hold the folder's lock for the block without claiming it (what a second process meets); ConfigError
    when another process holds it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    f = _open_lock(out, f"{command}: {out_key} {out}", out_key)
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def claim(
    out: str | Path,
    command: str,
    config: Any,
    *,
    outputs: Collection[str],
    rerun_keys: Collection[str] = RERUN_KEYS,
    path_keys: Collection[str] = (),
    equal: Equal | None = None,
    overwrite: bool | None = None,
    config_file: str = CONFIG_FILE,
    out_key: str = "out",
    notes: Mapping[str, str] | None = None,
    adopt_unrecorded: bool = False,
) -> RunFolder:
    """Make folder `out` this run's (creating it), or refuse it: see the module docstring and `check`,
    whose arguments these are. Holds the folder's lock (ConfigError when another process holds it), removes
    temp names of dead processes, and with ``overwrite`` and another config removes the files the earlier
    run wrote (only those). Returns the `RunFolder`, its record written (files kept from a resumed run)."""
    out = Path(out)
    where = f"{command}: {out_key} {out}"
    previous = _HELD.pop(_key(out), None)
    if previous is not None:  # this process claimed it before: that run is over
        previous.release()
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = _open_lock(out, where, out_key)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot write there ({exc.strerror or exc})") from None
    try:
        verdict = check(
            out,
            command,
            config,
            outputs=outputs,
            rerun_keys=rerun_keys,
            path_keys=path_keys,
            equal=equal,
            overwrite=overwrite,
            config_file=config_file,
            out_key=out_key,
            notes=notes,
            adopt_unrecorded=adopt_unrecorded,
        )
        clean_temp(out)
        old = read_record(out) or {}
        files = [n for n in old.get("files", []) if (out / n).exists()] + list(verdict.ours)
        if verdict.state == "replace":
            if old.get("complete"):  # a kill while its files go must not leave them listed as a finished run
                _write_record(out, {**old, "complete": False})
            for name in dict.fromkeys(files):
                if name != CONFIG_FILE:
                    remove_entry(out / name)
            files = []
        config_data = _config_view(config)[0]
        record = {
            "command": command,
            "config_class": _config_class(config),
            "config": config_data,
            "files": list(dict.fromkeys(files)),
            "complete": False,
            "prefixvalue_version": __version__,
        }
        folder = RunFolder(out, command, verdict.state, record, tuple(outputs), handle)
        folder._save()
    except OSError as exc:
        handle.close()
        raise ConfigError(f"{where}: cannot write there ({exc.strerror or exc})") from None
    except BaseException:
        handle.close()
        raise
    _HELD[_key(out)] = folder
    return folder


def held(out: str | Path) -> RunFolder | None:
    """This process's claim of folder `out`, or None."""
    return _HELD.get(_key(Path(out)))


def finish(out: str | Path) -> None:
    """Mark this process's run in `out` complete and release the folder (nothing when it holds no claim)."""
    folder = held(out)
    if folder is not None:
        folder.finish()


# ----------------------------------------------------------------------------------- atomic writes
def _record_in_parent(path: Path) -> None:
    """List `path` in the run record of its folder, when the folder has one."""
    folder = held(path.parent)
    if folder is not None:
        folder.record_files(path.name)
        return
    record_path = path.parent / RECORD_FILE
    if not record_path.is_file():
        return
    try:
        record = read_record(path.parent)
    except ConfigError:
        return
    if record is not None and path.name not in record.setdefault("files", []):
        record["files"].append(path.name)
        _write_record(path.parent, record)


def write_with(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write `path` with ``write(temp_path)`` (the temp name ends with the file's name, so writers that go
    by the suffix work), rename it into place and record it in its folder's run record; returns `path`."""
    path = Path(path)
    write_atomic(path, write)
    _record_in_parent(path)
    return path


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `write_with`); returns `path`."""
    return write_with(path, lambda p: p.write_text(text, encoding=encoding))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `write_with`); returns `path`."""
    return write_with(path, lambda p: p.write_bytes(data))


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    """Write `data` as JSON with a final newline to `path` atomically (see `write_with`); returns `path`."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def replace_dir(path: str | Path, build: Callable[[Path], Any]) -> Path:
    """Build a folder with ``build(temp_folder)`` beside `path`, then put it in place of `path` (the old
    one is renamed aside and removed) and record it; returns `path`."""
    return write_with(path, build)


def clean_temp(out: str | Path) -> list[Path]:
    """Remove temp names (`TEMP_PREFIX`) in `out` left by processes no longer alive; returns those removed."""
    removed = []
    for p in Path(out).glob(TEMP_PREFIX + "*"):
        pid = p.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        remove_entry(p)
        removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


__all__ = [
    "CONFIG_CLASSES",
    "CONFIG_FILE",
    "LOCK_FILE",
    "LOGGER_OUTPUTS",
    "RECORD_FILE",
    "RERUN_KEYS",
    "TEMP_PREFIX",
    "RunFolder",
    "Verdict",
    "check",
    "claim",
    "clean_temp",
    "config_differences",
    "finish",
    "held",
    "lock",
    "read_record",
    "replace_dir",
    "write_bytes",
    "write_json",
    "write_text",
    "write_with",
]
