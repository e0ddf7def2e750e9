"""Benchmarks of Monte Carlo prefix labelling on the shipped policy (figures -> benchmarks/results.json).

    python benchmarks/bench_label.py

- label_speedup_vs_naive: wall-clock of a naive labeller (for each prefix, re-encode it and call
  ``model.generate(num_return_sequences=M)``, then verify) divided by `MCLabeller.uniform` (prefill
  once, branch off the KV cache, batch across traces and positions, share identical prefixes), on
  the same traces, positions and M; fastest of 3 interleaved runs per side.
- adaptive_rollout_saving: rollouts that uniform labelling needs to locate the first large value
  jump of each trace to within 2 tokens (in 90% of traces), divided by what adaptive labelling
  needs. The true jump is exact: the first token of a failed trace that departs from the correct
  chain, kept when a 128-sample reference run (other seed) drops by at least SELECT = 0.5 across it
  (a margin over JUMP against the winner's curse of selecting on a noisy drop).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefixvalue.policies import load_policy  # noqa: E402
from prefixvalue.sampling.mc import AdaptiveConfig, MCLabeller, TraceRef, first_jump  # noqa: E402
from prefixvalue.sampling.positions import positions  # noqa: E402
from prefixvalue.sampling.sampler import HFSampler, SamplingParams  # noqa: E402
from prefixvalue.tasks import ArithTask, safe_verify  # noqa: E402

from benchmarks.common import SHIPPED_POLICY, record  # noqa: E402

JUMP = 0.4  # a "large" value jump
SELECT = 0.5  # traces kept when the reference drop is at least this: a margin over JUMP, since traces
# picked for a noisy reference drop >= JUMP regress below it in any independent run (winner's curse)
REF_SAMPLES = 128
TOL = 2  # located to within this many tokens
RATE = 0.9  # fraction of traces that must be located
REPEATS = 3  # timed runs per side of the speed comparison (fastest kept)


def make_traces(model, tok, task, num_prompts: int, samples: int, seed: int) -> list[TraceRef]:
    prompts = list(task.prompts(num_prompts, "test"))
    ids = [tok(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
    rows_p = [p for p in prompts for _ in range(samples)]
    rows_i = [i for i in ids for _ in range(samples)]
    keys = [f"{p.prompt_id}/s{j}" for p in prompts for j in range(samples)]
    gens = HFSampler(model, tok).generate(rows_i, keys, SamplingParams(max_new_tokens=64, seed=seed))
    return [TraceRef(k, p, tuple(i), tuple(g.token_ids)) for k, p, i, g in zip(keys, rows_p, rows_i, gens)]


def naive_label(model, tok, task, traces, pos, m: int, seed: int) -> list[float]:
    """The naive labeller: one `generate` call per prefix on the re-encoded prefix."""
    torch.manual_seed(seed)
    means = []
    for tr, ps in zip(traces, pos):
        for p in ps:
            prefix = list(tr.prompt_ids) + list(tr.completion_ids[:p])
            x = torch.tensor([prefix])
            with torch.no_grad():
                out = model.generate(
                    x,
                    attention_mask=torch.ones_like(x),
                    do_sample=True,
                    num_return_sequences=m,
                    max_new_tokens=64 - p,
                    pad_token_id=0,
                    eos_token_id=1,
                    top_k=0,
                    top_p=1.0,
                )
            scores = []
            for row in out[:, len(prefix) :].tolist():
                text = tok.decode(list(tr.completion_ids[:p]) + row, skip_special_tokens=True)
                scores.append(safe_verify(task, tr.prompt, text).score)
            means.append(sum(scores) / m)
    return means


def main() -> None:
    torch.set_num_threads(1)
    model, tok = load_policy(str(SHIPPED_POLICY), "float32", "cpu")
    task = ArithTask()
    params = SamplingParams(max_new_tokens=64, seed=0)

    # -- speed vs naive ---------------------------------------------------------------------
    n_prompts, n_samples, m = 6, 2, 16
    traces = make_traces(model, tok, task, n_prompts, n_samples, seed=0)
    pos = positions("all", [len(t.completion_ids) for t in traces])
    # Each side runs REPEATS times, interleaved, and keeps its fastest run: wall-clock on a shared
    # 2-core machine varies by tens of percent between runs.
    naive_runs, ours_runs, per_prefix_runs = [], [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        naive_label(model, tok, task, traces, pos, m, seed=0)
        naive_runs.append(time.perf_counter() - t0)
        lab = MCLabeller(HFSampler(model, tok, max_batch_rows=256), tok, task, params)
        t0 = time.perf_counter()
        lab.uniform(traces, pos, m)
        ours_runs.append(time.perf_counter() - t0)
        nodedup = MCLabeller(HFSampler(model, tok, max_batch_rows=256), tok, task, params)
        t0 = time.perf_counter()
        for tr, ps in zip(traces, pos):  # one trace at a time: no sharing across traces
            for p in ps:
                nodedup.uniform([tr], [[p]], m)
        per_prefix_runs.append(time.perf_counter() - t0)
    naive_s, ours_s, per_prefix_s = min(naive_runs), min(ours_runs), min(per_prefix_runs)
    record(
        "label_speedup_vs_naive",
        round(naive_s / ours_s, 2),
        unit="x (naive seconds / ours)",
        naive_seconds=round(naive_s, 2),
        ours_seconds=round(ours_s, 2),
        ours_one_prefix_at_a_time_seconds=round(per_prefix_s, 2),
        repeats=REPEATS,
        naive_runs_seconds=[round(x, 2) for x in naive_runs],
        ours_runs_seconds=[round(x, 2) for x in ours_runs],
        model=str(SHIPPED_POLICY.relative_to(SHIPPED_POLICY.parents[2])),
        traces=len(traces),
        prompts=n_prompts,
        samples_per_prompt=n_samples,
        positions="all",
        prefixes=sum(len(p) for p in pos),
        unique_prefixes=lab.cost.prefixes_unique,
        samples_per_prefix=m,
        seed=0,
        torch_threads=1,
        ours_cost=lab.cost.as_dict(),
        note="naive: model.generate(num_return_sequences=M) per re-encoded prefix + verify; ours: "
        "MCLabeller.uniform (prefill once, KV branching, cross-trace batching, prefix dedup)",
    )

    # -- adaptive vs uniform for locating the first large value jump ---------------------------
    # The true forking token of a failed arith trace is exact: the first completion token that departs
    # from the correct chain (char-level tokens, so token index = character index). A trace counts
    # when a high-sample reference run shows a drop of at least SELECT across that token.
    traces = make_traces(model, tok, task, 100, 2, seed=1)
    ref_lab = MCLabeller(
        HFSampler(model, tok, max_batch_rows=256), tok, task, SamplingParams(max_new_tokens=64, seed=99)
    )
    truth: dict[str, int] = {}
    for tr in traces:
        text = tok.decode(list(tr.completion_ids), skip_special_tokens=True)
        solution = tr.prompt.meta["solution"]
        d = next((i for i, (x, y) in enumerate(zip(text, solution)) if x != y), None)
        if d is not None and d + 1 < len(tr.completion_ids):
            truth[tr.trace_id] = d
    cand = [t for t in traces if t.trace_id in truth]
    ref = ref_lab.uniform(cand, [[truth[t.trace_id], truth[t.trace_id] + 1] for t in cand], REF_SAMPLES)
    at = {(e.trace_id, e.position): e.mean for e in ref}
    jumpy = [t for t in cand if at[(t.trace_id, truth[t.trace_id])] - at[(t.trace_id, truth[t.trace_id] + 1)] >= SELECT]

    def located(est) -> float:
        ok = 0
        for tr in jumpy:
            j = first_jump([(e.position, e.mean) for e in est if e.trace_id == tr.trace_id], JUMP)
            ok += j is not None and abs(j - truth[tr.trace_id]) <= TOL
        return ok / len(jumpy)

    lens_j = [len(t.completion_ids) for t in jumpy]
    uniform_runs = []
    for stride in (1, 2, 3):
        for m in (8, 16, 32, 64):
            lab = MCLabeller(HFSampler(model, tok, max_batch_rows=256), tok, task, params)
            est = lab.uniform(jumpy, positions(f"stride:{stride}", lens_j), m)
            uniform_runs.append(
                {"stride": stride, "samples": m, "rollouts": lab.cost.rollouts, "located": located(est)}
            )
    adaptive_runs = []
    for init_stride in (4, 8):
        for halfwidth in (0.15, 0.25):
            for budget in (128, 256, 512):
                lab = MCLabeller(HFSampler(model, tok, max_batch_rows=256), tok, task, params)
                cfg = AdaptiveConfig(
                    round_samples=8, budget=budget, target_halfwidth=halfwidth, jump=0.25, init_stride=init_stride
                )
                est = lab.adaptive(jumpy, positions("adaptive", lens_j, adaptive_stride=init_stride), cfg)
                adaptive_runs.append(
                    {
                        "init_stride": init_stride,
                        "target_halfwidth": halfwidth,
                        "budget": budget,
                        "rollouts": lab.cost.rollouts,
                        "located": located(est),
                    }
                )
    ok_u = [r for r in uniform_runs if r["located"] >= RATE]
    ok_a = [r for r in adaptive_runs if r["located"] >= RATE]
    best_u = min(ok_u, key=lambda r: r["rollouts"]) if ok_u else None
    best_a = min(ok_a, key=lambda r: r["rollouts"]) if ok_a else None
    value = round(best_u["rollouts"] / best_a["rollouts"], 2) if best_u and best_a else None
    record(
        "adaptive_rollout_saving",
        value,
        unit="x (uniform rollouts / adaptive rollouts)",
        criterion=f"first jump of >= {JUMP} located within {TOL} tokens in >= {RATE:.0%} of traces",
        truth=f"first token departing from the correct chain; kept if a {REF_SAMPLES}-sample reference (seed 99) "
        f"drops >= {SELECT} across it",
        traces=len(traces),
        failed_traces=len(cand),
        traces_with_jump=len(jumpy),
        best_uniform=best_u,
        best_adaptive=best_a,
        uniform_runs=uniform_runs,
        adaptive_runs=adaptive_runs,
        model=str(SHIPPED_POLICY.relative_to(SHIPPED_POLICY.parents[2])),
        seed=0,
        torch_threads=1,
        note=None if value is not None else "one of the methods never reached the criterion; see runs",
    )


if __name__ == "__main__":
    main()
