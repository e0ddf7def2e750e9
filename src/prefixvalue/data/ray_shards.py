"""Shards of `collect` and `label` run on a Ray cluster (``executor=ray``; docs/design.md, "Scale: Ray").

The driver (the ``prefixvalue`` process) does what the main process does under accelerate: it checks and
claims OUT, writes every shard atomically (`prefixvalue.data.shards.write_shard`) and merges them in order.
Only the sampling moves: each Ray worker is an actor that runs the stage's ``setup(device)`` once (loads the
policy: one sampler or vLLM engine per worker) and then ``work(i)`` for the shards it is handed, returning
the rows. A shard's rows depend only on its index and the per-row seeds, never on the worker, so the files
are those of one process. A worker killed mid-shard is restarted by Ray and the shard rerun there or on
another worker (nothing of it was written); a driver killed and restarted resumes from the finished shards.

Ray is an optional dependency (``pip install prefixvalue[ray]``, ``make install-ray``); this module imports
it, so it is imported only for ``executor=ray``.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
import ray.exceptions

from ..config import ConfigError

#: shards handed to one worker at a time: the next one waits in the worker's queue while one runs, so the
#: worker never idles for a round trip to the driver
IN_FLIGHT = 2
#: how often Ray restarts a killed worker (and reruns its shards) before the driver gives it up
MAX_RESTARTS = 3


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the shards run (the ``ray_*`` options of collect and label)."""

    address: str | None = None  # None: RAY_ADDRESS, else a local cluster started in this process
    workers: int | None = None  # None: as many as the cluster's CPUs (GPUs) hold
    worker_cpus: float = 1.0
    worker_gpus: float | None = None  # None: `default_gpus` on a cluster with GPUs, else 0
    default_gpus: float = 1.0  # what one worker's sampler needs of a GPU cluster (vLLM: its tensor-parallel size)

    def gpus(self) -> float:
        """GPUs one worker asks for (`worker_gpus`, else `default_gpus` when the cluster has any)."""
        if self.worker_gpus is not None:
            return self.worker_gpus
        return self.default_gpus if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


class Progress:
    """A progress bar's stand-in on a worker: counts what the shard's work reports, for the driver's bar."""

    def __init__(self) -> None:
        self.n = 0
        self.total = 0  # a work lowers the bar's total by what it did not use (adaptive labelling)

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def refresh(self) -> None:
        pass


class ShardWorker:
    """One Ray worker: the stage's sampler, loaded once, and the shards it runs (a Ray actor)."""

    def __init__(self, setup: Callable[[Any], Any]) -> None:
        self._setup = setup
        self._work: Any = None

    def start(self) -> dict[str, Any]:
        """Run the stage's setup (load the policy, check the inputs) on this worker; where it runs."""
        import torch  # the worker's own torch (the driver may have none loaded)

        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self._work = self._setup(device)
        return {"node": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def run(self, index: int) -> tuple[list[dict[str, Any]], dict[str, Any], int, int, dict[str, float]]:
        """Shard `index`: ``(rows, extra, progress done, progress total change, times)``."""
        if self._work is None:  # a restarted worker (Ray reruns __init__ only) loads the policy again
            self.start()
        bar = Progress()
        started = time.time()
        rows, extra = self._work(index, bar)
        return rows, extra, bar.n, bar.total, {"started": started, "ended": time.time(), "pid": float(os.getpid())}


def connect(opts: RayOptions, command: str) -> bool:
    """Connect to the cluster at ``opts.address`` (or RAY_ADDRESS; neither: start a local one in this process).

    Returns whether this call connected (and so should disconnect at the end)."""
    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(address=address, log_to_driver=False, include_dashboard=False, logging_level="WARNING")
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{command}: cannot reach the Ray cluster at {address!r}: {first}") from None
    return True


def disconnect() -> None:
    """Leave the cluster (a local one started by `connect` stops)."""
    ray.shutdown()


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _raise_user_error(exc: ray.exceptions.RayTaskError, command: str, where: str) -> None:
    """A worker's ConfigError (a bad input, a model path missing on its node) as one line on the driver."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ConfigError):
        msg = _one_line(cause)
        if not msg.startswith(f"{command}:"):
            msg = f"{command}: {msg}"
        raise ConfigError(f"{msg} (on the Ray worker at {where})") from None


def worker_count(opts: RayOptions, gpus: float, todo: int) -> int:
    """How many workers to start: ``opts.workers``, else as many as the cluster's CPUs (GPUs) hold, at most
    one per shard to do and at least one."""
    if opts.workers is not None:
        return max(1, min(opts.workers, todo))
    res = ray.cluster_resources()
    fit = int(res.get("GPU", 0) // gpus) if gpus > 0 else int(res.get("CPU", 0) // max(opts.worker_cpus, 1e-9))
    return max(1, min(fit, todo))


class ShardPool:
    """Workers on the cluster and the shards they run; `run` hands out shards and yields finished ones."""

    def __init__(self, setup: Callable[[Any], Any], opts: RayOptions, command: str, todo: int, gpus: float) -> None:
        self.command = command
        remote = ray.remote(
            num_cpus=opts.worker_cpus, num_gpus=gpus, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS
        )(ShardWorker)
        # each worker holds its own copy of `setup`, so that Ray can restart it after the driver's copy is gone
        self.workers = [remote.remote(setup) for _ in range(worker_count(opts, gpus, todo))]
        self.where: dict[int, str] = {}

    def start(self) -> None:
        """Run setup on every worker; a worker's ConfigError (its node lacks the model, ...) in one line."""
        for k, w in enumerate(self.workers):
            try:
                info = ray.get(w.start.remote())
            except ray.exceptions.RayTaskError as exc:
                _raise_user_error(exc, self.command, f"worker {k}")
                raise
            self.where[k] = f"{info['ip']} (pid {info['pid']})"

    def run(self, todo: list[int]) -> Any:
        """Run shards `todo` on the workers; yields ``(index, rows, extra, done, total change, times)`` as each
        finishes (in any order). A worker that dies for good (past Ray's restarts) leaves its shards to the others."""
        queue = deque(todo)
        alive = list(range(len(self.workers)))
        pending: dict[Any, tuple[int, int, float]] = {}  # object ref -> (worker, shard, submitted at)

        def fill() -> None:
            for k in alive:
                busy = sum(1 for w, _, _ in pending.values() if w == k)
                while queue and busy < IN_FLIGHT:
                    i = queue.popleft()
                    pending[self.workers[k].run.remote(i)] = (k, i, time.time())
                    busy += 1

        fill()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            k, i, submitted = pending.pop(ref)
            try:
                rows, extra, done, total, times = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                _raise_user_error(exc, self.command, self.where.get(k, f"worker {k}"))
                raise
            except ray.exceptions.RayActorError:  # past its restarts: its shards go to the others
                if k in alive:
                    alive.remove(k)
                if not alive:
                    raise RuntimeError(f"{self.command}: every Ray worker died; rerun to resume") from None
                queue.appendleft(i)
                fill()
                continue
            times = {**times, "submitted": submitted, "received": time.time()}
            yield i, rows, extra, done, total, times
            fill()

    def close(self) -> None:
        for w in self.workers:
            ray.kill(w)


__all__ = ["IN_FLIGHT", "MAX_RESTARTS", "Progress", "RayOptions", "ShardPool", "ShardWorker", "connect", "disconnect"]
