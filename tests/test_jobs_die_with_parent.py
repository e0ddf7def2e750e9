"""`run_jobs`' workers end with the process that started them: a quickstart stopped by a signal while it trains
two value models side by side left both training on their own (found killing a SmolLM2 benchmark with SIGTERM)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

SCRIPT = """
import time
from prefixvalue.processes import run_jobs
print("start", flush=True)
run_jobs(time.sleep, {"a": 120, "b": 120}, 2, lambda job: job)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_end_with_their_parent(sig):
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True)
    workers: list[psutil.Process] = []
    try:
        assert parent.stdout.readline().strip() == "start"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the pool's two workers and the spawn machinery's resource tracker
            workers = [
                p for p in psutil.Process(parent.pid).children() if "resource_tracker" not in " ".join(p.cmdline())
            ]
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert len(workers) >= 2, "the jobs did not start"
        time.sleep(1.0)  # the workers have run their initializer
        parent.send_signal(sig)
        parent.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers still running after their parent ended: {alive}"
    finally:  # only what this test started: other children of this process (a wandb service) live on
        for p in [*workers, psutil.Process(parent.pid)] if parent.poll() is None else workers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
