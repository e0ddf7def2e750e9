"""Labelling through ``executor=ray`` on this machine (figures -> benchmarks/results.json, key ``ray``).

    python benchmarks/bench_ray.py

The quickstart-sized label workload (the shipped policy, held-out-sized traces, positions=steps, 16 samples,
the default shard size chunk_traces=16) three ways: one plain process, a local Ray cluster with 1 worker, and
with 2 workers (1 CPU and 1 torch thread each). Wall clock from the command's start to its merged labels (Ray:
the cluster's start apart, started once before); rollouts/s from the labels' cost. Scheduling overhead per
shard, from the shards' ``done.json`` times: time from submit to the shard's start on an idle worker plus the
time from its end to the driver receiving the rows, against the shard's sampling time. Value: overhead / shard
sampling time at the default shard size (the goal: under 5%).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
import torch  # noqa: E402

from prefixvalue.stages import collect, label  # noqa: E402

from benchmarks.common import SHIPPED_POLICY, record  # noqa: E402

PROMPTS, TRACES_PER_PROMPT, SAMPLES, CHUNK = 64, 4, 16, 16  # 256 traces: 16 shards of the default size


def run_label(traces: Path, out: Path, *extra: str) -> float:
    args = [f"traces={traces}", "positions=steps", f"samples={SAMPLES}", "prompts=all", "seed=0"]
    t = time.perf_counter()
    assert label.main([*args, f"chunk_traces={CHUNK}", f"out={out}", "progress=false", *extra]) == 0
    return time.perf_counter() - t


def shard_times(out: Path) -> list[dict[str, float]]:
    return [json.loads(p.read_text()) for p in sorted((out / "shards").glob("shard-*/done.json"))]


def overheads(out: Path) -> tuple[float, float]:
    """Median per-shard scheduling overhead (s) and median shard sampling time (s) of a Ray run."""
    done = shard_times(out)
    by_worker: dict[float, list[dict[str, float]]] = {}
    for d in done:
        by_worker.setdefault(d["ray"]["pid"], []).append(d["ray"])
    over = []
    for runs in by_worker.values():
        runs.sort(key=lambda r: r["started"])
        prev_end = 0.0
        for r in runs:  # waiting behind the worker's previous shard is not scheduling
            over.append(max(0.0, r["started"] - max(r["submitted"], prev_end)) + (r["received"] - r["ended"]))
            prev_end = r["ended"]
    sampling = [d["ray"]["ended"] - d["ray"]["started"] for d in done]
    return statistics.median(over), statistics.median(sampling)


def main() -> None:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        traces = root / "traces"
        assert (
            collect.main(
                [
                    "task=arith",
                    f"model={SHIPPED_POLICY}",
                    f"num_prompts={PROMPTS}",
                    f"traces_per_prompt={TRACES_PER_PROMPT}",
                    "max_new_tokens=64",
                    "seed=0",
                    f"out={traces}",
                    "progress=false",
                ]
            )
            == 0
        )
        plain_s = run_label(traces, root / "plain")
        cost = json.loads((root / "plain" / "cost.json").read_text())
        rollouts = cost["rollouts"]
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        cluster_start_s = time.perf_counter() - t
        figures = {}
        for workers in (1, 2):
            out = root / f"ray{workers}"
            seconds = run_label(traces, out, "executor=ray", f"ray_workers={workers}")
            same = (out / "data-00000-of-00001.arrow").read_bytes() == (
                root / "plain" / "data-00000-of-00001.arrow"
            ).read_bytes()
            over, sampling = overheads(out)
            times = [d["ray"] for d in shard_times(out)]
            span = max(t["received"] for t in times) - min(t["started"] for t in times)
            figures[f"ray_{workers}_workers"] = {
                "seconds": round(seconds, 2),
                "rollouts_per_s": round(rollouts / seconds, 1),
                "sampling_span_s": round(span, 2),
                "rollouts_per_s_once_started": round(rollouts / span, 1),
                "same_labels_as_one_process": same,
                "overhead_per_shard_s": round(over, 4),
                "sampling_per_shard_s": round(sampling, 3),
                "overhead_ratio": round(over / sampling, 4),
            }
        ray.shutdown()
        first = figures["ray_1_workers"]
        record(
            "ray",
            first["overhead_ratio"],
            unit="scheduling overhead per shard / the shard's sampling time (1 worker, chunk_traces=16)",
            target="< 0.05",
            workload={
                "model": "data/policies/arith-tiny",
                "traces": PROMPTS * TRACES_PER_PROMPT,
                "positions": "steps",
                "samples": SAMPLES,
                "chunk_traces": CHUNK,
                "shards": (PROMPTS * TRACES_PER_PROMPT + CHUNK - 1) // CHUNK,
                "rollouts": rollouts,
            },
            one_process={"seconds": round(plain_s, 2), "rollouts_per_s": round(rollouts / plain_s, 1)},
            **figures,
            speedup_2_workers_vs_1=round(first["seconds"] / figures["ray_2_workers"]["seconds"], 2),
            local_cluster_start_s=round(cluster_start_s, 1),
            load_average_at_start=os.getloadavg()[0],
            note="wall clock of the whole label command (Ray: each worker's start, imports and policy load "
            "included, the cluster started before); once_started: from the first shard's start on a worker to the "
            "last shard's rows at the driver; overhead: submit -> start on an idle worker plus end -> rows at the driver",
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
