"""Sharded, resumable stage runs: what `prefixvalue collect` and `prefixvalue label` share.

A stage cuts its work into fixed shards. Process r of W takes shards r, r+W, ..; each finished shard
is written atomically under ``OUT/shards/`` (temp folder, then rename), so a rerun with the same
arguments skips it. ``OUT/run.json`` records the arguments that fix the shards, and a rerun with
different ones is refused. Once every shard exists the main process merges them, in order, into
the dataset at OUT. `run_sharded_stage` is the whole scaffolding; the rest are its parts.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from ..config import ConfigError, save_resolved_config

#: a shard's work: ``work(index, progress_bar) -> (rows, extra)``; `extra` goes to the shard's done.json.
#: The work advances the bar as it goes (per decoded batch), by the shard's size in bar units in all
ShardWork = Callable[[int, Any], tuple[list[dict[str, Any]], dict[str, Any]]]


def dist_info() -> tuple[int, int, Any]:
    """``(process index, number of processes, PartialState)`` from accelerate (1 process without a launcher)."""
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes, state


def shard_path(out: Path, index: int) -> Path:
    """Folder of shard `index` under ``out/shards``."""
    return out / "shards" / f"shard-{index:05d}"


def shard_done(out: Path, index: int) -> bool:
    """Whether shard `index` was written completely (it exists only after the atomic rename)."""
    return (shard_path(out, index) / "done.json").exists()


def shard_extra(out: Path, index: int) -> dict[str, Any]:
    """The ``done.json`` of a finished shard: ``{"rows": N, **extra}``."""
    return json.loads((shard_path(out, index) / "done.json").read_text())


def write_shard(
    out: Path, index: int, rows: list[dict[str, Any]], features: datasets.Features, extra: dict[str, Any] | None = None
) -> Path:
    """Write `rows` as shard `index` atomically: save to a temp folder, then rename it into place.

    `extra` is written beside the data as ``done.json`` (e.g. cost accounting). Returns the path.
    """
    final = shard_path(out, index)
    tmp = out / "shards" / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp / "data"))
    (tmp / "done.json").write_text(json.dumps({"rows": len(rows), **(extra or {})}, indent=1))
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished the same shard first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def merge_shards(out: Path, num_shards: int) -> datasets.Dataset:
    """Concatenate shards 0..num_shards-1 in order and save them as the dataset at `out`.

    The merged files are written to a temp folder and moved into `out`, ``state.json`` last, so a
    reader never sees a half-written dataset. Returns the merged dataset (loaded from `out`).
    """
    parts = [datasets.load_from_disk(str(shard_path(out, i) / "data")) for i in range(num_shards)]
    if not parts:
        raise ValueError(f"{out}: no shards to merge")
    merged = datasets.concatenate_datasets(parts)
    tmp = out / f".merge-{uuid.uuid4().hex[:8]}"
    merged.save_to_disk(str(tmp))
    for old in out.glob("data-*.arrow"):
        old.unlink()
    names = sorted(p.name for p in tmp.iterdir())
    for name in [n for n in names if n != "state.json"] + ["state.json"]:
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(out))


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Record the arguments that fix the shards in ``out/run.json``, or check they match a previous run.

    Raises ConfigError when OUT holds shards of a different run (resuming it would mix two runs).
    """
    path = out / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise ConfigError(f"{out} holds a different run (differs in {diff}); use a new out folder or delete it")
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".run-{uuid.uuid4().hex[:8]}.json"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)


def run_shards(
    out: Path,
    num_shards: int,
    work: Callable[[int], tuple[list[dict[str, Any]], dict[str, Any]]],
    features: datasets.Features,
    state: Any,
    rank: int,
    world: int,
) -> datasets.Dataset | None:
    """Run `work(i)` for this process's unfinished shards (i % world == rank), write each, then merge.

    Returns the merged dataset on the main process once every shard exists, else None.
    """
    for i in range(num_shards):
        if i % world != rank or shard_done(out, i):
            continue
        rows, extra = work(i)
        write_shard(out, i, rows, features, extra)
    if world > 1:
        state.wait_for_everyone()
    if rank != 0:
        return None
    missing = [i for i in range(num_shards) if not shard_done(out, i)]
    if missing:
        raise RuntimeError(f"{out}: shards {missing[:10]} are missing after the run")
    return merge_shards(out, num_shards)


def run_sharded_stage(
    cfg: Any,
    out: Path,
    manifest: dict[str, Any],
    num_shards: int,
    shard_items: Callable[[int], int],
    setup: Callable[[Any], ShardWork],
    features: datasets.Features,
    *,
    desc: str,
    unit: str,
    progress: bool,
) -> datasets.Dataset | None:
    """The scaffolding of a sharded stage, from the resume check to the merged dataset.

    The main process checks (or records) the run manifest and saves the resolved `cfg`; the other
    processes check the manifest once it exists. `setup(device)` (load the model, build the worker)
    runs only when this process has unfinished shards and returns ``work(i, bar)``; `shard_items(i)`
    is shard i's size in progress-bar units, by which ``work(i, bar)`` advances the bar as it goes (a
    work that knows only a bound lowers ``bar.total`` by what it did not use). Returns the merged dataset on the main process (which
    then writes the stage's summary), None on the others.
    """
    rank, world, state = dist_info()
    if rank == 0:
        check_manifest(out, manifest)
        save_resolved_config(cfg, out)
    if world > 1:
        state.wait_for_everyone()
        check_manifest(out, manifest)
    todo = [i for i in range(num_shards) if i % world == rank and not shard_done(out, i)]
    work = setup(state.device) if todo else None
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(shard_items(i) for i in todo), unit=unit, desc=desc, disable=not progress or rank != 0)

    def run_one(i: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        assert work is not None
        return work(i, bar)

    merged = run_shards(out, num_shards, run_one, features, state, rank, world)
    bar.close()
    return merged


__all__ = [
    "ShardWork",
    "check_manifest",
    "dist_info",
    "merge_shards",
    "run_shards",
    "run_sharded_stage",
    "shard_done",
    "shard_extra",
    "shard_path",
    "write_shard",
]
