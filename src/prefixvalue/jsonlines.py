"""The one reader of the JSON-lines files a user gives (a task's prompts, rollouts to import, action states,
step data): records read lazily, a malformed line refused with the file and the line in one message; and the
one reader of a JSON record file a folder carries (`read_json_object`: a checkpoint's ``split.json``,
``value_config.json``, ``prompt_format.json``), refused the same way, naming the file.

A neutral low module (it depends on `prefixvalue.config` only), so tasks, data and evaluation read user files
the same way without importing each other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import ConfigError

#: longest line read from a JSON-lines file, in bytes; a longer one is refused before it is held in memory
MAX_LINE_BYTES = 1_000_000


def jsonl_records(
    path: str | Path, error: type[ConfigError] = ConfigError, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, str, Any]]:
    """``(line number, "FILE, line N", parsed JSON)`` for every non-blank line of the JSON-lines file at
    `path`, read lazily. A line that is not one UTF-8 JSON value raises `error` naming the file and the line:
    a UTF-16 file, a line over `max_line_bytes`, NUL bytes, bytes that are not UTF-8, invalid JSON. What a
    record must hold is the caller's check (a task's prompts, imported rollouts, action states, step data).

    The one reader of a JSON-lines file the user gives; logs this package appends itself (``metrics.jsonl``)
    are read by `prefixvalue.tracking.logged_rows`, which skips a line a kill cut off."""
    path = Path(path)
    resave = "re-save it as UTF-8 (e.g. iconv -t UTF-8)"
    with path.open("rb") as fh:
        for lineno, raw in enumerate(iter(lambda: fh.readline(max_line_bytes + 1), b""), start=1):
            where = f"{path}, line {lineno}"
            if lineno == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise error(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); {resave}")
            if len(raw) > max_line_bytes:
                raise error(
                    f"{where}: longer than {max_line_bytes} bytes; one record per line, and a record this long "
                    "would not fit a model's context"
                )
            if b"\x00" in raw:
                raise error(f"{where}: NUL bytes in the line: the file looks UTF-16 or binary; {resave}")
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise error(
                    f"{where}: not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1}); {resave}"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(
                    f"{where}: invalid JSON ({exc.msg} at column {exc.colno}): {short_text(line.strip())}"
                ) from None
            yield lineno, where, record


def read_json_object(path: str | Path, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """The JSON object in the file at `path`. A missing or unreadable file, text that is not UTF-8 JSON, or JSON
    that is not an object raises `error`, in one line naming the file; what the object must hold is the
    caller's check (`prefixvalue.config.record_from_mapping` reads it into a dataclass, naming the field)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing (no such file)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found {short_text(data)}")
    return data


def short_text(value: Any, limit: int = 60) -> str:
    """`value` (text as it is, anything else as JSON) cut to `limit` characters with ``...``, quoted: how an
    error message shows a bad record or field."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= limit else text[:limit] + "...")
