"""Atomic writes: a file or folder is built under a temp name beside its final one and renamed into place, so a
killed or full-disk run leaves the old entry or the new one, never a half-written one. The lowest layer of the run
folders (`prefixvalue.runfolder`, which also records what a run wrote and removes temp names of dead processes)
and of `prefixvalue.config.save_resolved_config`."""

from __future__ import annotations

import os
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
