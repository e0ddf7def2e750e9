"""Processes: jobs run side by side in spawned processes (how the quickstart trains its value models and the
distance sweep its cells, `workers` at a time, each process with one CPU thread: small models train faster two
at a time than with two threads each), and a launched worker's tie to its launcher (`exit_with_launcher`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

K = TypeVar("K")
A = TypeVar("A")
R = TypeVar("R")


def timed_call(fn: Callable[[A], R], job: A) -> tuple[R, float]:
    """``(fn(job), wall-clock seconds)``, the seconds rounded to 0.1."""
    t = time.perf_counter()
    out = fn(job)
    return out, round(time.perf_counter() - t, 1)


def run_jobs(
    fn: Callable[[A], R], jobs: Mapping[K, A], workers: int, in_worker: Callable[[A], A]
) -> dict[K, tuple[R, float]]:
    """``(fn(job), seconds)`` (`timed_call`) for every job of `jobs`: in this process, one after another,
    when `workers` is 1 or there is one job; else `workers` at a time in spawned processes (`fn` must be
    importable by name), each job passed through `in_worker` first (e.g. its thread count set to 1).
    Returns them by key, in the order of `jobs`; the first job that raises raises here."""
    if workers == 1 or len(jobs) <= 1:
        return {key: timed_call(fn, job) for key, job in jobs.items()}
    ctx = multiprocessing.get_context("spawn")
    # a worker ends with this process: killed or stopped by a signal, it leaves no job training on its own
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=exit_with_parent) as pool:
        futures = {key: pool.submit(timed_call, fn, in_worker(job)) for key, job in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


#: set by a launcher in the environment of each process it starts: ``LOCAL_RANK`` by torchrun (so by
#: ``accelerate launch`` with several processes) and DeepSpeed's launcher, ``ACCELERATE_USE_CPU`` by
#: ``accelerate launch``'s one-process launcher
LAUNCHER_ENV: tuple[str, ...] = ("LOCAL_RANK", "ACCELERATE_USE_CPU")
_PR_SET_PDEATHSIG = 1  #: prctl option (linux/prctl.h): the signal this process gets when its parent exits


def launched() -> bool:
    """Whether a launcher (torchrun, ``accelerate launch``) started this process (`LAUNCHER_ENV`)."""
    return any(name in os.environ for name in LAUNCHER_ENV)


def exit_with_launcher() -> None:
    """Under a launcher (`launched`), end this process when the launcher is gone (`exit_with_parent`): torchrun
    starts each worker in a session of its own, so a launcher killed with SIGKILL (or dead by any means that
    skips its own shutdown of the workers) would leave them training, holding their run folder's lock. A killed
    run resumes from its run folder as after any kill (docs/design.md, "Run folders"). A process no launcher
    started is left alone (a ``nohup`` run outlives its shell)."""
    if launched():
        exit_with_parent()


def exit_with_parent() -> None:
    """End this process when its parent is gone: on Linux the kernel sends SIGKILL when the parent exits
    (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the parent's pid every second. `run_jobs`'
    workers call it first, so a quickstart stopped by a signal leaves no model training on its own."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent:  # it died before the request: no signal will come
                    os.kill(os.getpid(), signal.SIGKILL)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
