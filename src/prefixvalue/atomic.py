"""Atomic writes: a file or folder is built under a temp name beside its final one and renamed into place, so a
killed or full-disk run leaves the old entry or the new one, never a half-written one. The lowest layer of the run
folders (`prefixvalue.runfolder`, which also records what a run wrote and removes temp names of dead processes)
and of `prefixvalue.config.save_resolved_config`; and `disk_error`, the one line for a full, read-only or forbidden
disk however a library wraps it (what the command line and the model loaders report)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".prefixvalue-tmp-"  #: temp names of the atomic writes: ``TEMP_PREFIX<pid>-<hex>-<name>``


def remove_entry(path: Path) -> None:
    """Remove a file or a folder (with what it holds), if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_entry(src: Path, dst: Path) -> None:
    """Move `src` to `dst` in one rename; a folder at `dst` is renamed aside first and then removed."""
    if dst.is_dir() and not dst.is_symlink():
        aside = dst.with_name(f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{dst.name}")
        os.replace(dst, aside)
        os.replace(src, dst)
        remove_entry(aside)
    else:
        os.replace(src, dst)


def write_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """``write(temp)`` beside `path`, then rename the temp to `path`; the temp goes on any error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        write(tmp)
        replace_entry(tmp, path)
    except BaseException:
        remove_entry(tmp)
        raise
    return path


#: file-system errors a command reports in one line, exit 2 (no traceback): a full or read-only disk, a
#: folder it may not write
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT})

#: the error number a library quotes in its own error's message: safetensors' Rust I/O errors ("... (os error 28)"),
#: Arrow's ("[errno 28] ...")
_QUOTED_ERRNO = re.compile(r"\(os error (\d+)\)|\[errno (\d+)\]", re.IGNORECASE)


def error_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors it was raised from or during (``__cause__``, else ``__context__``), outermost first,
    each once."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not e for e in chain):
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


def disk_error(exc: BaseException) -> str | None:
    """One line for a full, read-only or forbidden disk (`DISK_ERRNOS`): an OSError with such an errno, found
    in `exc` or in the errors it was raised from (a library's wrapper), or an errno a library's own error
    quotes in its message; None for any other error."""
    for cur in error_chain(exc):
        if isinstance(cur, OSError) and cur.errno in DISK_ERRNOS:
            where = f": {cur.filename}" if cur.filename else ""
            return f"{cur.strerror or cur}{where}"
        quoted = _QUOTED_ERRNO.search(str(cur))
        if quoted and int(quoted.group(1) or quoted.group(2)) in DISK_ERRNOS:
            return os.strerror(int(quoted.group(1) or quoted.group(2)))
    return None
