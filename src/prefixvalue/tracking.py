"""Logging as a small protocol: disk (JSON lines), stdout and wandb implementations.

Metrics are keyed ``train/...`` and ``eval/...``. wandb is real but never required: with no API key
it runs offline and writes its run folder locally; ``WANDB_MODE=disabled`` turns it off entirely.
Where a run goes is `WandbConfig` (the ``wandb.*`` keys of every stage that tracks): project,
entity and group default to ``WANDB_PROJECT``, ``WANDB_ENTITY`` and ``WANDB_RUN_GROUP``. A value
checkpoint names the wandb run that trained it (``final/wandb_run.json``, `WANDB_RUN_FILE`); a run that
reads the checkpoint joins that run's group, records it as ``training_run`` in its wandb config and, online,
uses the checkpoint's artifact (docs/design.md, "Checkpoints that travel").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from .config import field

T = TypeVar("T")

#: wandb project when neither ``wandb.project`` nor ``WANDB_PROJECT`` names one
DEFAULT_PROJECT = "prefixvalue"
#: file in a run folder holding its wandb run id, so a resumed run continues the same wandb run
WANDB_ID_FILE = "wandb_run_id"
#: file in a value checkpoint (train's ``final/``) naming the wandb run that trained it (`training_run`)
WANDB_RUN_FILE = "wandb_run.json"


@dataclass
class WandbConfig:
    """Where a stage's wandb run goes (used when ``report_to`` includes wandb)."""

    project: str | None = field(None, help=f"wandb project; default: $WANDB_PROJECT, else {DEFAULT_PROJECT!r}")
    entity: str | None = field(None, help="wandb entity (user or team); default: $WANDB_ENTITY, else your own")
    group: str | None = field(
        None, help="wandb group; default: $WANDB_RUN_GROUP (the quickstart puts all its runs in one group)"
    )
    tags: list[str] = field(default_factory=list, help="wandb tags of the run")
    job_type: str | None = field(None, help="wandb job type; default: the stage's name (train, evaluate)")

    def init_kwargs(self, job_type: str | None = None) -> dict[str, Any]:
        """Keyword arguments of ``wandb.init``: these settings, else the environment, else defaults."""
        env = os.environ.get
        return {
            "project": self.project or env("WANDB_PROJECT") or DEFAULT_PROJECT,
            "entity": self.entity or env("WANDB_ENTITY") or None,
            "group": self.group or env("WANDB_RUN_GROUP") or None,
            "tags": list(self.tags) or None,
            "job_type": self.job_type or env("WANDB_JOB_TYPE") or job_type,
        }


class Logger(Protocol):
    """What every logging backend implements."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None: ...
    def log_html(self, key: str, html: str, step: int | None = None) -> None: ...
    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None: ...
    def log_artifact(
        self, name: str, path: str | Path, kind: str = "model", aliases: list[str] | None = None
    ) -> None: ...
    def finish(self) -> None: ...


def jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy and torch scalars to Python, arrays to lists, dict keys to str, and
    non-finite floats to None (metrics.json and the loggers never hold a bare NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if hasattr(obj, "item"):  # a torch scalar
        return jsonable(obj.item())
    return obj


class DiskLogger:
    """Appends one JSON object per `log` call to ``out_dir/metrics.jsonl``; tables go to parquet."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"

    def log(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, "time": time.time(), **{k: jsonable(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        pass  # images already live on disk where the caller wrote them

    def log_html(self, key: str, html: str, step: int | None = None) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
        pq.write_table(table, self.dir / f"{key.replace('/', '_')}.parquet")

    def log_artifact(self, name: str, path: str | Path, kind: str = "model", aliases: list[str] | None = None) -> None:
        pass  # the folder is already on disk

    def finish(self) -> None:
        pass


def logged_rows(path: str | Path) -> list[tuple[str, dict[str, Any] | None]]:
    """``(line, row)`` for every line of a JSON-lines log this package appends (`DiskLogger`'s
    ``metrics.jsonl``): `row` is the line's JSON object, None for a line that is not one (a line a kill cut
    off); [] when the file is absent. A log is read leniently; a JSON-lines file the user gives is read by
    `prefixvalue.jsonlines.jsonl_records`, which refuses a bad line."""
    path = Path(path)
    if not path.exists():
        return []
    rows: list[tuple[str, dict[str, Any] | None]] = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        rows.append((line, row if isinstance(row, dict) else None))
    return rows


def truncate_metrics(out_dir: str | Path, step: int, name: str = "metrics.jsonl") -> int:
    """Keep only the rows of ``out_dir/name`` logged at ``step`` or before (what a run resumed from
    the checkpoint at `step` logs again is dropped, and a line cut off by a kill with it); rewritten
    atomically. Returns the number of rows removed (0 when the file is absent)."""
    path = Path(out_dir) / name
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line, row in logged_rows(path):
        if row is not None and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
    return dropped


class StdoutLogger:
    """Prints a compact line per `log` call."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout

    def log(self, metrics: dict[str, float], step: int) -> None:
        parts = []
        for k, v in metrics.items():
            v = jsonable(v)
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        print(f"[step {step}] " + " ".join(parts), file=self.stream, flush=True)

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        pass

    def log_html(self, key: str, html: str, step: int | None = None) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        pass

    def log_artifact(self, name: str, path: str | Path, kind: str = "model", aliases: list[str] | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger:
    """wandb run; offline when no API key is configured (``WANDB_MODE`` wins when set).

    `settings` (a `WandbConfig`) says where the run goes; `resume_id` continues an earlier run
    (``resume="allow"``: a run of that id is created when none exists yet)."""

    def __init__(
        self,
        out_dir: str | Path,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        resume_id: str | None = None,
        settings: WandbConfig | None = None,
        job_type: str | None = None,
        uses: Sequence[str] = (),
    ) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE")
        if mode is None:
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.wandb = wandb
        self.mode = mode
        self.run = wandb.init(
            **(settings or WandbConfig()).init_kwargs(job_type),
            name=name,
            config=config,
            dir=str(out_dir),
            mode=mode,
            id=resume_id,
            resume="allow" if resume_id else None,
            reinit="finish_previous",
        )
        for ref in uses if mode == "online" else ():  # wandb has no artifacts offline: the config names the run
            try:
                self.run.use_artifact(ref)
            except Exception as exc:  # noqa: BLE001 - lineage is a courtesy: an unsynced artifact stops nothing
                print(f"wandb: not linked to artifact {ref}: {str(exc).splitlines()[0]}", file=sys.stderr)

    @property
    def run_id(self) -> str:
        """The wandb run's id (what `resume_id` takes to continue it)."""
        return str(self.run.id)

    def record(self) -> dict[str, Any]:
        """Where this run is: id, project, entity, group, name, job type and mode (`WANDB_RUN_FILE`'s fields)."""
        run = self.run
        fields = {"id": run.id, "project": run.project, "entity": run.entity, "group": run.group, "name": run.name}
        out = {k: (str(v) if v else None) for k, v in fields.items()}
        return {**out, "job_type": getattr(run, "job_type", None) or None, "mode": self.mode}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({k: jsonable(v) for k, v in metrics.items()}, step=step)

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        self.run.log({key: self.wandb.Image(str(path))}, step=step)

    def log_html(self, key: str, html: str, step: int | None = None) -> None:
        self.run.log({key: self.wandb.Html(html)}, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        self.run.log({key: self.wandb.Table(columns=columns, data=[[jsonable(x) for x in r] for r in rows])}, step=step)

    def log_artifact(self, name: str, path: str | Path, kind: str = "model", aliases: list[str] | None = None) -> None:
        """Log the folder (or file) at `path` as a wandb artifact `name` of type `kind`."""
        artifact = self.wandb.Artifact(wandb_artifact_name(name), type=kind)
        if Path(path).is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact, aliases=aliases)

    def finish(self) -> None:
        self.run.finish()


def wandb_artifact_name(name: str) -> str:
    """`name` with the characters wandb refuses in artifact names (anything but letters, digits,
    ``-``, ``_`` and ``.``) replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "artifact"


class MultiLogger:
    """Fans every call out to several loggers; as a context manager (``with build_logger(...) as logger:``)
    it finishes them when the block ends, also on an error."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def __enter__(self) -> MultiLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def log(self, metrics: dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        for lg in self.loggers:
            lg.log_image(key, path, step)

    def log_html(self, key: str, html: str, step: int | None = None) -> None:
        for lg in self.loggers:
            lg.log_html(key, html, step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        for lg in self.loggers:
            lg.log_table(key, columns, rows, step)

    def log_artifact(self, name: str, path: str | Path, kind: str = "model", aliases: list[str] | None = None) -> None:
        for lg in self.loggers:
            lg.log_artifact(name, path, kind, aliases)

    def finish(self) -> None:
        for lg in self.loggers:
            lg.finish()

    @property
    def wandb_run_id(self) -> str | None:
        """The id of the wandb run among these loggers, or None."""
        return next((lg.run_id for lg in self.loggers if isinstance(lg, WandbLogger)), None)

    @property
    def wandb_record(self) -> dict[str, Any] | None:
        """`WandbLogger.record` of the wandb run among these loggers; None without one or when it is disabled."""
        return next((lg.record() for lg in self.loggers if isinstance(lg, WandbLogger) and lg.mode != "disabled"), None)


def training_run(checkpoint: str | Path | None) -> dict[str, Any] | None:
    """The wandb run that trained the value checkpoint folder `checkpoint` (its `WANDB_RUN_FILE`, which
    train writes into ``final/`` when it logs to wandb); None when there is none (no wandb, a Hub id, a
    file that is not a JSON object)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser() / WANDB_RUN_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("id") else None


def artifact_ref(record: dict[str, Any]) -> str | None:
    """The full name (``entity/project/name:alias``) of the checkpoint artifact a `training_run` record
    names, None when the training logged none (``log_checkpoints=false``)."""
    name = record.get("artifact")
    if not name:
        return None
    where = "/".join(str(p) for p in (record.get("entity"), record.get("project")) if p)
    return f"{where}/{name}" if where else str(name)


def build_logger(
    report_to: str | list[str],
    out_dir: str | Path,
    config: dict[str, Any] | None = None,
    run_name: str | None = None,
    wandb: WandbConfig | None = None,
    job_type: str | None = None,
    resume: bool = False,
    checkpoints: Sequence[str | Path | None] = (),
) -> MultiLogger:
    """Build loggers from ``"disk,stdout,wandb"`` (or a list); ``none`` gives a logger that drops all.

    The wandb run goes where `wandb` says (its `job_type` defaults to `job_type`, the stage). Its id
    is written to ``out_dir/wandb_run_id``; with `resume`, an id found there is continued (a training
    run resumed from a checkpoint logs into the same wandb run). `checkpoints`: the value checkpoints the
    run reads; the wandb runs that trained them (`training_run`) link it to them: it joins the first one's
    group unless ``wandb.group`` or ``$WANDB_RUN_GROUP`` names one, its config gets ``training_run`` (one
    record, or a list for several checkpoints), and online it uses their checkpoint artifacts. With
    ``WANDB_MODE=disabled`` no wandb logger is made (nor wandb imported)."""
    names = report_to.split(",") if isinstance(report_to, str) else list(report_to)
    names = [n.strip() for n in names if n.strip() and n.strip() != "none"]
    loggers: list[Logger] = []
    for n in names:
        if n == "disk":
            loggers.append(DiskLogger(out_dir))
        elif n == "stdout":
            loggers.append(StdoutLogger())
        elif n == "wandb" and os.environ.get("WANDB_MODE") == "disabled":
            continue  # off: no run, and no second spent importing wandb (the tests run this way)
        elif n == "wandb":
            id_file = Path(out_dir) / WANDB_ID_FILE
            resume_id = id_file.read_text().strip() or None if resume and id_file.exists() else None
            settings, config, uses = _linked(wandb or WandbConfig(), config, checkpoints)
            lg = WandbLogger(
                out_dir, run_name, config, resume_id=resume_id, settings=settings, job_type=job_type, uses=uses
            )
            if lg.mode != "disabled":  # a disabled run is never continued
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                id_file.write_text(lg.run_id + "\n")
            loggers.append(lg)
        else:
            raise ValueError(f"unknown logger {n!r}; choose from disk, stdout, wandb, none")
    return MultiLogger(loggers)


def _linked(
    settings: WandbConfig, config: dict[str, Any] | None, checkpoints: Sequence[str | Path | None]
) -> tuple[WandbConfig, dict[str, Any] | None, list[str]]:
    """`build_logger`'s link to the training runs of `checkpoints`: the settings with their group, the
    config with ``training_run``, and the artifacts to use."""
    runs = [r for r in (training_run(c) for c in checkpoints) if r is not None]
    if not runs:
        return settings, config, []
    if not (settings.group or os.environ.get("WANDB_RUN_GROUP")) and runs[0].get("group"):
        settings = dataclasses.replace(settings, group=runs[0]["group"])
    config = {**(config or {}), "training_run": runs[0] if len(runs) == 1 else runs}
    return settings, config, [ref for ref in map(artifact_ref, runs) if ref]


# ------------------------------------------------------------------------- benchmark results file
@contextlib.contextmanager
def timed(seconds: dict[str, float], name: str, command: str = "quickstart") -> Iterator[None]:
    """Run the block as stage `name` of `command`: its start and its wall-clock seconds are printed, and the
    seconds (rounded to 0.1) stored in ``seconds[name]``; a block that raises stores nothing."""
    print(f"\n== {command}: {name}", flush=True)
    t = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - t, 1)
    print(f"== {name}: {seconds[name]:.1f} s", flush=True)


#: file in a run folder holding the wandb group shared by the runs a command starts (kept for a rerun)
WANDB_GROUP_FILE = "wandb_group"


def with_wandb_group(cfg: T, out: Path, sections: Sequence[str] = ("evaluate", "train"), name: str = "quickstart") -> T:
    """`cfg` with one wandb group for the runs of its nested configs `sections` (each with a ``wandb``
    `WandbConfig`): the first of their ``wandb.group`` that is set, else $WANDB_RUN_GROUP, else
    ``<name>-<folder>-<id>``, made once and kept in ``out/wandb_group`` so that a resumed command logs
    into the same group. Returns a copy; `cfg` is left as it is."""
    import secrets

    group = next((getattr(cfg, s).wandb.group for s in sections if getattr(cfg, s).wandb.group), None)
    group = group or os.environ.get("WANDB_RUN_GROUP")
    path = Path(out) / WANDB_GROUP_FILE
    if not group:
        group = path.read_text().strip() if path.exists() else ""
        group = group or f"{name}-{Path(out).resolve().name}-{secrets.token_hex(3)}"
        path.write_text(group + "\n")
    grouped = {
        s: dataclasses.replace(getattr(cfg, s), wandb=dataclasses.replace(getattr(cfg, s).wandb, group=group))
        for s in sections
    }
    return dataclasses.replace(cfg, **grouped)


def machine_info() -> dict[str, Any]:
    """What a figure was measured on (platform, Python, torch, cores, threads, GPU)."""
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def record_result(path: str | Path, name: str, value: float | None, **context: Any) -> None:
    """Merge ``{name: {"value": value, **context, "machine": ..., "measured_at": ...}}`` into the JSON
    file at `path` (``benchmarks/results.json``), atomically."""
    path = Path(path)
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data[name] = {
        "value": value,
        **context,
        "machine": machine_info(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
