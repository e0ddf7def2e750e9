"""Jobs run side by side in spawned processes: how the quickstart trains its value models and the distance
sweep its cells, `workers` at a time, each process with one CPU thread (small models train faster two at a
time than with two threads each).
"""

from __future__ import annotations

import multiprocessing
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
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {key: pool.submit(timed_call, fn, in_worker(job)) for key, job in jobs.items()}
        return {key: f.result() for key, f in futures.items()}
