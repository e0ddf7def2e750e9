"""Sharded, resumable stage runs: what `prefixvalue collect` and `prefixvalue label` share.

A stage cuts its work into fixed shards. Process r of W takes shards r, r+W, ..; each finished shard
is written atomically under ``OUT/shards/`` (temp folder, then rename), so a rerun with the same
arguments skips it. ``OUT/run.json`` records the arguments that fix the shards, and a rerun with
different ones is refused; OUT itself is claimed through the run-folder contract (`prefixvalue.runfolder`:
another command's run or a file no run of the stage wrote is refused, one run at a time). Once every
shard exists the main process merges them, in order, into the dataset at OUT. `run_sharded_stage` is the
whole scaffolding; the rest are its parts.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets

from .. import runfolder
from ..config import ConfigError, save_resolved_config
from ..loading import same_model

if TYPE_CHECKING:  # ray is an optional dependency: its module is imported only for executor=ray
    from .ray_shards import RayOptions

#: manifest keys whose change has a cause worth naming in the refusal (a stage's manifest may hold them)
MANIFEST_NOTES: dict[str, str] = {
    "traces_sha256": "the traces changed since this run began (re-collected in place?): the labels here "
    "were made from traces that no longer exist",
}
#: temp folders a killed run can leave: shard temp folders under shards/, merge temp folders and manifest temps
STALE_PATTERNS: tuple[str, ...] = ("shards/.tmp-shard-*", ".merge-*", ".run-*.json")
#: a temp folder touched within this many seconds before a run started may belong to a concurrent writer
STALE_GRACE_S = 60.0
#: the top-level names a sharded stage writes into OUT (a stage adds its own, e.g. collect's summary.json):
#: the run-folder contract's outputs (`prefixvalue.runfolder`), what a rerun may find there
SHARDED_OUTPUTS: tuple[str, ...] = (
    runfolder.CONFIG_FILE,
    "run.json",
    "shards",
    "data-*.arrow",
    "dataset_info.json",
    "state.json",
    ".merge-*",
    ".run-*.json",
)

#: a shard's work: ``work(index, progress_bar) -> (rows, extra)``; `extra` goes to the shard's done.json.
#: The work advances the bar as it goes (per decoded batch), by the shard's size in bar units in all
ShardWork = Callable[[int, Any], tuple[list[dict[str, Any]], dict[str, Any]]]


def dist_info() -> tuple[int, int, Any]:
    """``(process index, number of processes, PartialState)`` from accelerate (1 process without a launcher).

    Without a GPU the processes are CPU ones (gloo), as in training: accelerate's state counts processes
    started by torchrun or ``accelerate launch`` on the CPU only when asked for the CPU
    (recipes/accelerate/multi_cpu.yaml)."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
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


def _same_value(key: str, a: Any, b: Any) -> bool:
    """Whether manifest entries agree; model paths compare after resolving (``./m`` and ``m`` are one model)."""
    if a == b:
        return True
    return key == "model" and isinstance(a, str) and isinstance(b, str) and same_model(a, b)


def check_manifest(out: Path, manifest: dict[str, Any], write: bool = True) -> None:
    """Record the arguments that fix the shards in ``out/run.json`` (unless `write` is false), or check they
    match a previous run.

    Raises ConfigError when OUT holds shards of a different run (resuming it would mix two runs); the
    message names the differing keys (dotted inside a mapping: ``sampling.seed``) and, for those in
    `MANIFEST_NOTES`, why they differ.
    """
    path = out / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        # dotted keys inside mappings (``sampling.seed``), so the message names the option that changed
        diff = [k for k, _, _ in runfolder.config_differences(old, manifest, rerun_keys=(), equal=_same_value)]
        if diff:
            why = "; ".join(MANIFEST_NOTES[k] for k in diff if k in MANIFEST_NOTES)
            raise ConfigError(
                f"{out} holds a different run (differs in {diff}){'; ' + why if why else ''}; "
                "use a new out folder or delete it"
            )
        return
    if not write:
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".run-{uuid.uuid4().hex[:8]}.json"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temp(out: Path, started: float) -> list[Path]:
    """Remove temp folders (`STALE_PATTERNS`) a killed or disk-full run left in `out`; returns those removed.

    One is stale when nothing in it changed since `STALE_GRACE_S` before `started` (this run's start) and the
    process named in a shard temp's name (``.tmp-shard-N-PID-...``) is not alive here. Call it from the main
    process before other processes write: a concurrent writer's folder is newer, or its process alive.
    """
    removed = []
    for pattern in STALE_PATTERNS:
        for p in out.glob(pattern):
            parts = p.name.split("-")
            if (
                p.name.startswith(".tmp-shard-")
                and len(parts) >= 5
                and parts[3].isdigit()
                and _pid_alive(int(parts[3]))
            ):
                continue
            try:
                newest = max(
                    [p.stat().st_mtime] + [q.stat().st_mtime for q in p.rglob("*")]
                    if p.is_dir()
                    else [p.stat().st_mtime]
                )
            except OSError:  # removed meanwhile
                continue
            if newest >= started - STALE_GRACE_S:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


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


def claim_stage(out: Path, manifest: dict[str, Any], command: str, outputs: tuple[str, ...], started: float) -> None:
    """What the writing process does before any work: refuse a run with another manifest (writing nothing),
    claim OUT for `command` (`prefixvalue.runfolder.claim`, with the stage's `outputs` beside
    `SHARDED_OUTPUTS`) and remove temp folders a killed run left (`clean_stale_temp`)."""
    check_manifest(out, manifest, write=False)
    runfolder.claim(
        out,
        command,
        manifest,
        outputs=(*SHARDED_OUTPUTS, *outputs),
        equal=_same_value,
        config_file="run.json",
        notes=MANIFEST_NOTES,
    )
    clean_stale_temp(out, started)


def run_sharded_stage(
    cfg: Any,
    out: Path,
    manifest: dict[str, Any],
    num_shards: int,
    shard_items: Callable[[int], int],
    setup: Callable[[Any], ShardWork],
    features: datasets.Features,
    *,
    command: str,
    outputs: tuple[str, ...] = (),
    desc: str,
    unit: str,
    progress: bool,
    ray_options: RayOptions | None = None,
) -> datasets.Dataset | None:
    """The scaffolding of a sharded stage, from the resume check to the merged dataset.

    The main process checks the run manifest (``run.json``: a different run is refused, naming the keys),
    claims OUT for `command` (`prefixvalue.runfolder.claim`: another command's run or a file no run of
    `command` wrote is refused; `outputs` are the stage's own files beside `SHARDED_OUTPUTS`; the stage
    releases the claim with ``runfolder.finish(out)`` once it has written its summary), removes stale temp
    folders of killed runs (`clean_stale_temp`), runs its `setup`, and only then records the manifest and
    saves the resolved `cfg` (so a run whose model does not load leaves no manifest to refuse the corrected
    command); the other processes check the manifest once it exists. `setup(device)` (load the model, check
    the inputs against it, build the worker) runs only when this process has unfinished shards and returns
    ``work(i, bar)``; `shard_items(i)` is shard i's size in progress-bar units, by which ``work(i, bar)``
    advances the bar as it goes (a work that knows only a bound lowers ``bar.total`` by what it did not
    use). Returns the merged dataset on the main process (which then writes the stage's summary), None on
    the others. With `ray_options` (``executor=ray``) this one process is the driver: `setup` and the works
    run on the workers of a Ray cluster, the driver writes and merges the shards (`run_ray_stage`).
    """
    started = time.time()
    rank, world, state = dist_info()
    if ray_options is not None:
        if world > 1:
            raise ConfigError(
                f"{command}: executor=ray runs from one driver process, not under a launcher ({world} processes); "
                "start it as a plain command"
            )
        return run_ray_stage(
            cfg, out, manifest, num_shards, shard_items, setup, features, ray_options, started,
            command=command, outputs=outputs, desc=desc, unit=unit, progress=progress,
        )  # fmt: skip
    todo = [i for i in range(num_shards) if i % world == rank and not shard_done(out, i)]
    work = None
    if rank == 0:
        claim_stage(out, manifest, command, outputs, started)  # refuse a different run before loading anything
        work = setup(state.device) if todo else None
        check_manifest(out, manifest)
        save_resolved_config(cfg, out)
    if world > 1:
        state.wait_for_everyone()
        check_manifest(out, manifest)
        if rank != 0:
            work = setup(state.device) if todo else None
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(shard_items(i) for i in todo), unit=unit, desc=desc, disable=not progress or rank != 0)

    def run_one(i: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        assert work is not None
        return work(i, bar)

    merged = run_shards(out, num_shards, run_one, features, state, rank, world)
    bar.close()
    return merged


def run_ray_stage(
    cfg: Any,
    out: Path,
    manifest: dict[str, Any],
    num_shards: int,
    shard_items: Callable[[int], int],
    setup: Callable[[Any], ShardWork],
    features: datasets.Features,
    opts: RayOptions,
    started: float,
    *,
    command: str,
    outputs: tuple[str, ...],
    desc: str,
    unit: str,
    progress: bool,
) -> datasets.Dataset:
    """`run_sharded_stage` with the shards' work on a Ray cluster (docs/design.md, "Scale: Ray").

    The same checks, claim and manifest as the main process's; `setup` runs on every worker before the
    manifest is written (a worker whose node lacks the model fails in one line and leaves no manifest); each
    finished shard comes back as rows and is written here, atomically, so a worker killed mid-shard leaves
    nothing, and a rerun skips the shards written. Returns the merged dataset.
    """
    from . import ray_shards  # ray is optional: imported only for executor=ray

    claim_stage(out, manifest, command, outputs, started)
    todo = [i for i in range(num_shards) if not shard_done(out, i)]
    connected = ray_shards.connect(opts, command)
    pool = None
    try:
        if todo:
            pool = ray_shards.ShardPool(setup, opts, command, len(todo), opts.gpus())
            pool.start()
        check_manifest(out, manifest)
        save_resolved_config(cfg, out)
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(shard_items(i) for i in todo), unit=unit, desc=desc, disable=not progress)
        if pool is not None:
            for i, rows, extra, done, total, times in pool.run(todo):
                write_shard(out, i, rows, features, {**extra, "ray": times})
                bar.total += total
                bar.update(done)
        bar.close()
    finally:
        if pool is not None:
            pool.close()
        if connected:
            ray_shards.disconnect()
    missing = [i for i in range(num_shards) if not shard_done(out, i)]
    if missing:
        raise RuntimeError(f"{out}: shards {missing[:10]} are missing after the run")
    return merge_shards(out, num_shards)


__all__ = [
    "SHARDED_OUTPUTS",
    "ShardWork",
    "check_manifest",
    "claim_stage",
    "clean_stale_temp",
    "dist_info",
    "merge_shards",
    "run_ray_stage",
    "run_shards",
    "run_sharded_stage",
    "shard_done",
    "shard_extra",
    "shard_path",
    "write_shard",
]
