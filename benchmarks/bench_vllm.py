"""Benchmark of the vLLM backend against the HF sampler, collect and label (figures -> benchmarks/results.json).

    make bench-vllm                                  # = .venv-vllm/bin/python benchmarks/bench_vllm.py
    .venv-vllm/bin/python benchmarks/bench_vllm.py model=Qwen/Qwen2.5-0.5B-Instruct dtype=bfloat16   # a GPU machine

Recorded under ``vllm_vs_hf_{device}`` (``cpu`` or ``cuda``), value = HF label seconds / vLLM label seconds:

- collect: `generate` over the same prompts x samples (the arith test split through the model's tokenizer),
  sampling time only, tokens/s;
- label: `MCLabeller.uniform` at every position of HF-sampled traces, M continuations per prefix, sampling
  and verification, tokens/s and rollouts/s;
- engine start-up (``vllm.LLM`` construction: model load, compilation, KV cache) and the HF model load,
  reported apart: they are paid once per process.

Each side runs REPEATS times, interleaved, after one untimed warm-up call, and keeps its fastest run. On
CPU, HF runs one torch thread and vLLM binds its own OpenMP threads (``VLLM_CPU_OMP_THREADS_BIND=auto``:
every core but one, so one on a 2-core machine). The tiny policy is far too small for vLLM's strengths
(continuous batching over long sequences, paged KV on a GPU); the CPU figures show the overhead of the
engine at this scale, the GPU ones (a real model) what it is for.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefixvalue.policies import load_policy  # noqa: E402
from prefixvalue.sampling.hf import HFSampler  # noqa: E402
from prefixvalue.sampling.mc import MCLabeller, TraceRef  # noqa: E402
from prefixvalue.sampling.positions import positions  # noqa: E402
from prefixvalue.sampling.sampler import SamplingParams  # noqa: E402
from prefixvalue.sampling.vllm_sampler import VLLMSampler  # noqa: E402
from prefixvalue.tasks import ArithTask  # noqa: E402

from benchmarks.common import SHIPPED_POLICY, record  # noqa: E402

REPEATS = 3
COLLECT_PROMPTS, COLLECT_SAMPLES = 48, 8  # as bench_collect
LABEL_PROMPTS, LABEL_SAMPLES, M = 6, 2, 16  # as bench_label's speed comparison
MAX_NEW = 64


def main(argv: list[str]) -> None:
    opts = dict(a.split("=", 1) for a in argv)
    model_name = opts.get("model", str(SHIPPED_POLICY))
    dtype = opts.get("dtype", "float32")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)

    t0 = time.perf_counter()
    model, tok = load_policy(model_name, dtype, device)
    hf_load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    vl = VLLMSampler(model_name, tok, dtype=dtype)
    engine_s = time.perf_counter() - t0
    hf = HFSampler(model, tok, max_batch_rows=256)

    task = ArithTask()
    params = SamplingParams(max_new_tokens=MAX_NEW, seed=0)
    prompts = list(task.prompts(COLLECT_PROMPTS, "test"))
    ids = [tok(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
    rows = [x for x in ids for _ in range(COLLECT_SAMPLES)]
    keys = [f"{p.prompt_id}/s{j}" for p in prompts for j in range(COLLECT_SAMPLES)]

    # -- collect ------------------------------------------------------------------------------
    figures: dict[str, dict[str, float]] = {}
    for sampler in (hf, vl):
        sampler.generate(rows[:8], keys[:8], params)  # warm-up
    tokens = {}
    runs: dict[str, list[float]] = {"hf": [], "vllm": []}
    for _ in range(REPEATS):  # interleaved: the shared machine's load hits both sides alike
        for name, sampler in (("hf", hf), ("vllm", vl)):
            before = sampler.stats.generated_tokens
            t0 = time.perf_counter()
            sampler.generate(rows, keys, params)
            runs[name].append(round(time.perf_counter() - t0, 3))
            tokens[name] = sampler.stats.generated_tokens - before
    for name in ("hf", "vllm"):
        best = min(runs[name])
        figures[f"collect_{name}"] = {
            "seconds": best,
            "runs_seconds": runs[name],
            "generated_tokens": tokens[name],
            "tokens_per_s": round(tokens[name] / best),
        }

    # -- label --------------------------------------------------------------------------------
    lp = list(task.prompts(LABEL_PROMPTS, "test"))
    lids = [tok(p.text, add_special_tokens=False)["input_ids"] for p in lp]
    trows = [x for x in lids for _ in range(LABEL_SAMPLES)]
    tkeys = [f"{p.prompt_id}/s{j}" for p in lp for j in range(LABEL_SAMPLES)]
    gens = hf.generate(trows, tkeys, params)
    traces = [
        TraceRef(k, p, tuple(i), tuple(g.token_ids))
        for k, p, i, g in zip(tkeys, [p for p in lp for _ in range(LABEL_SAMPLES)], trows, gens)
    ]
    pos = positions("all", [len(t.completion_ids) for t in traces])
    runs = {"hf": [], "vllm": []}
    costs: dict[str, dict] = {}
    means: dict[str, float] = {}
    for _ in range(REPEATS):
        for name, sampler in (("hf", hf), ("vllm", vl)):
            lab = MCLabeller(sampler, tok, task, params, None)
            t0 = time.perf_counter()
            est = lab.uniform(traces, pos, M)
            runs[name].append(round(time.perf_counter() - t0, 3))
            costs[name] = lab.cost.as_dict()
            means[name] = sum(e.mean for e in est) / len(est)
    for name in ("hf", "vllm"):
        best = min(runs[name])
        figures[f"label_{name}"] = {
            "seconds": best,
            "runs_seconds": runs[name],
            "generated_tokens": costs[name]["generated_tokens"],
            "rollouts": costs[name]["rollouts"],
            "tokens_per_s": round(costs[name]["generated_tokens"] / best),
            "rollouts_per_s": round(costs[name]["rollouts"] / best),
            "mean_label": round(means[name], 4),
        }
    speedup = figures["label_hf"]["seconds"] / figures["label_vllm"]["seconds"]
    model_rel = (
        str(Path(model_name).resolve().relative_to(SHIPPED_POLICY.parents[2]))
        if Path(model_name).exists()
        else model_name
    )
    record(
        f"vllm_vs_hf_{device}",
        round(speedup, 2),
        unit="x (HF label seconds / vLLM label seconds)",
        device=device if device == "cpu" else torch.cuda.get_device_name(0),
        model=model_rel,
        dtype=dtype,
        vllm_engine_startup_seconds=round(engine_s, 1),
        hf_model_load_seconds=round(hf_load_s, 2),
        collect_speedup=round(figures["collect_hf"]["seconds"] / figures["collect_vllm"]["seconds"], 2),
        **figures,
        collect_prompts=COLLECT_PROMPTS,
        collect_samples=COLLECT_SAMPLES,
        label_traces=len(traces),
        label_positions="all",
        label_samples_per_prefix=M,
        max_new_tokens=MAX_NEW,
        repeats=REPEATS,
        note="fastest of REPEATS interleaved runs after a warm-up; start-up and model load apart; HF on 1 torch "
        "thread, vLLM's OpenMP threads bound by vLLM (auto: all cores but one); labels differ in their samples "
        "(each backend its own noise), mean_label compares their level",
    )


if __name__ == "__main__":  # vLLM starts its engine core in a spawned process: the guard is required
    main(sys.argv[1:])
