"""Benchmarks of Monte Carlo prefix labelling on the shipped policy (figures -> benchmarks/results.json).

    python benchmarks/bench_label.py [speed] [adaptive]

- label_speedup_vs_naive: wall-clock of labelling every position of the traces with M continuations,
  on two workloads (`WORKLOADS`: 8 traces of 8 distinct prompts; 6 prompts x 2 traces), by four
  labellers: naive (re-encode each prefix, ``model.generate(num_return_sequences=M)``, verify), batched
  ``generate`` over left-padded prefixes, and `MCLabeller.uniform` on the HF sampler's plain KV path and
  on its trie path; fastest of 3 interleaved runs each, with tokens/s and the peak memory a run adds
  (one run per method in a fresh process). Value: naive / trie on the distinct-prompt workload.
- adaptive_rollout_saving: rollouts that uniform labelling needs to locate the first large value
  jump of each trace (in 90% of traces), divided by what adaptive labelling needs, with the best
  setting of each from its grid; located exactly (the forking token; the value) and within 2 tokens.
  The true jump is exact: the first token of a failed trace that departs from the correct chain,
  kept when a 128-sample reference run (other seed) drops by at least SELECT = 0.5 across it (a
  margin over JUMP against the winner's curse of selecting on a noisy drop).
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefixvalue.policies import load_policy  # noqa: E402
from prefixvalue.sampling.hf import HFSampler  # noqa: E402
from prefixvalue.sampling.mc import AdaptiveConfig, MCLabeller, TraceRef, first_jump  # noqa: E402
from prefixvalue.sampling.positions import positions  # noqa: E402
from prefixvalue.sampling.sampler import SamplingParams  # noqa: E402
from prefixvalue.tasks import ArithTask, safe_verify  # noqa: E402

from benchmarks.common import SHIPPED_POLICY, record  # noqa: E402

JUMP = 0.4  # a "large" value jump
SELECT = 0.5  # traces kept when the reference drop is at least this: a margin over JUMP, since traces
# picked for a noisy reference drop >= JUMP regress below it in any independent run (winner's curse)
REF_SAMPLES = 128
TOLS = (0, 2)  # located exactly (the forking token itself), and to within 2 tokens
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


def batched_generate_label(
    model, tok, task, traces, pos, m: int, seed: int, prefixes_per_call: int = 16
) -> list[float]:
    """What a competent user writes: prefixes sorted by length, left-padded, `prefixes_per_call` of
    them per `model.generate(num_return_sequences=M)` call; each continuation is cut to its own
    budget (64 - p tokens) before it is verified."""
    torch.manual_seed(seed)
    items = sorted(
        ((t, p) for t, ps in enumerate(pos) for p in ps), key=lambda x: -(len(traces[x[0]].prompt_ids) + x[1])
    )
    means: dict[tuple[int, int], float] = {}
    for b0 in range(0, len(items), prefixes_per_call):
        chunk = items[b0 : b0 + prefixes_per_call]
        rows = [list(traces[t].prompt_ids) + list(traces[t].completion_ids[:p]) for t, p in chunk]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=mask,
                do_sample=True,
                num_return_sequences=m,
                max_new_tokens=64 - min(p for _, p in chunk),
                pad_token_id=0,
                eos_token_id=1,
                top_k=0,
                top_p=1.0,
            )
        new = out[:, width:].tolist()
        for i, (t, p) in enumerate(chunk):
            tr = traces[t]
            scores = []
            for row in new[i * m : (i + 1) * m]:
                row = row[: 64 - p]
                if 1 in row:
                    row = row[: row.index(1) + 1]
                text = tok.decode(list(tr.completion_ids[:p]) + row, skip_special_tokens=True)
                scores.append(safe_verify(task, tr.prompt, text).score)
            means[(t, p)] = sum(scores) / m
    return [means[(t, p)] for t, ps in enumerate(pos) for p in ps]


WORKLOADS = {
    # the measurement: 8 traces of 8 different prompts, every position, 16 continuations each
    "distinct": {"prompts": 8, "samples_per_prompt": 1, "seed": 0},
    # the quickstart's kind of labels with traces that share prompts: 6 prompts x 2 traces
    "mix": {"prompts": 6, "samples_per_prompt": 2, "seed": 0},
}


def _peak_rss_mb(method: str, workload: str, m: int) -> float:
    """Peak resident memory (MB) that one run of `method` adds, measured in a fresh process."""
    import json as _json
    import subprocess

    here = str(Path(__file__).resolve().parent)
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); import bench_label as b; "
        f"print(json.dumps(b._one_run({method!r}, {workload!r}, {m})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(_json.loads(out.stdout.strip().splitlines()[-1])["added_mb"], 1)


def _setup(workload: str):
    torch.set_num_threads(1)
    model, tok = load_policy(str(SHIPPED_POLICY), "float32", "cpu")
    w = WORKLOADS[workload]
    traces = make_traces(model, tok, ArithTask(), w["prompts"], w["samples_per_prompt"], seed=w["seed"])
    pos = positions("all", [len(t.completion_ids) for t in traces])
    return model, tok, traces, pos


def _run(method: str, model, tok, traces, pos, m: int, params: SamplingParams):
    task = ArithTask()
    if method == "naive":
        return naive_label(model, tok, task, traces, pos, m, seed=0), None
    if method == "batched_generate":
        return batched_generate_label(model, tok, task, traces, pos, m, seed=0), None
    lab = MCLabeller(HFSampler(model, tok, tree_attention=method == "ours"), tok, task, params)
    return lab.uniform(traces, pos, m), lab


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _one_run(method: str, workload: str, m: int) -> dict:
    """One run in this process, for `_peak_rss_mb`: the peak resident set (VmHWM, reset after the set-up
    through /proc/self/clear_refs, Linux) minus the resident set before the run."""
    model, tok, traces, pos = _setup(workload)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kb("VmRSS")
    _run(method, model, tok, traces, pos, m, SamplingParams(max_new_tokens=64, seed=0))
    return {"added_mb": (_status_kb("VmHWM") - before) / 1024}


def speed(workload: str, m: int = 16) -> dict:
    """Wall-clock of the four labellers on one workload, fastest of REPEATS interleaved runs each."""
    model, tok, traces, pos = _setup(workload)
    params = SamplingParams(max_new_tokens=64, seed=0)
    methods = ("naive", "batched_generate", "ours_plain_kv", "ours")
    runs: dict[str, list[float]] = {k: [] for k in methods}
    labs = {}
    for _ in range(REPEATS):
        for method in methods:
            t0 = time.perf_counter()
            _, lab = _run(method if method != "ours_plain_kv" else "plain", model, tok, traces, pos, m, params)
            runs[method].append(time.perf_counter() - t0)
            if lab is not None:
                labs[method] = lab
    best = {k: min(v) for k, v in runs.items()}
    ours = labs["ours"].cost
    return {
        "workload": workload,
        "traces": len(traces),
        **{k: WORKLOADS[workload][k] for k in ("prompts", "samples_per_prompt")},
        "positions": "all",
        "prefixes": sum(len(p) for p in pos),
        "unique_prefixes": ours.prefixes_unique,
        "samples_per_prefix": m,
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "runs_seconds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "speedup_vs_naive": round(best["naive"] / best["ours"], 2),
        "speedup_vs_batched_generate": round(best["batched_generate"] / best["ours"], 2),
        "speedup_vs_plain_kv": round(best["ours_plain_kv"] / best["ours"], 2),
        "generated_tokens": ours.generated_tokens,
        "tokens_per_s": {k: round(ours.generated_tokens / v) for k, v in best.items()},
        "decode_tokens": {k: labs[k].cost.decode_tokens for k in ("ours_plain_kv", "ours")},
        "peak_added_rss_mb": {k: _peak_rss_mb(k if k != "ours_plain_kv" else "plain", workload, m) for k in methods},
        "ours_cost": ours.as_dict(),
    }


def adaptive_saving(n_prompts: int = 400) -> None:
    """Rollouts to locate the first large value jump: uniform vs adaptive (see the module docstring)."""
    torch.set_num_threads(1)
    model, tok = load_policy(str(SHIPPED_POLICY), "float32", "cpu")
    task = ArithTask()
    params = SamplingParams(max_new_tokens=64, seed=0)
    # The true forking token of a failed arith trace is exact: the first completion token that departs
    # from the correct chain (char-level tokens, so token index = character index). A trace counts
    # when a high-sample reference run shows a drop of at least SELECT across that token.
    traces = make_traces(model, tok, task, n_prompts, 2, seed=1)
    ref_lab = MCLabeller(HFSampler(model, tok), tok, task, SamplingParams(max_new_tokens=64, seed=99))
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

    def located(est) -> dict[str, float]:
        found = {
            tr.trace_id: first_jump([(e.position, e.mean) for e in est if e.trace_id == tr.trace_id], JUMP)
            for tr in jumpy
        }
        return {
            f"tol{tol}": sum(j is not None and abs(j - truth[t]) <= tol for t, j in found.items()) / len(jumpy)
            for tol in TOLS
        }

    lens_j = [len(t.completion_ids) for t in jumpy]
    uniform_runs = []
    for stride in (1, 2, 3, 4):
        for m in (8, 16, 24, 32, 48, 64):
            lab = MCLabeller(HFSampler(model, tok), tok, task, params)
            est = lab.uniform(jumpy, positions(f"stride:{stride}", lens_j), m)
            uniform_runs.append(
                {"stride": stride, "samples": m, "rollouts": lab.cost.rollouts, "located": located(est)}
            )
    adaptive_runs = []
    for init_stride, round_samples, halfwidth, budget in itertools.product(
        (4, 8), (8,), (0.15, 0.25), (192, 256, 384, 512)
    ):
        lab = MCLabeller(HFSampler(model, tok), tok, task, params)
        cfg = AdaptiveConfig(
            round_samples=round_samples,
            budget=budget,
            target_halfwidth=halfwidth,
            jump=0.25,
            init_stride=init_stride,
        )
        est = lab.adaptive(jumpy, positions("adaptive", lens_j, adaptive_stride=init_stride), cfg)
        adaptive_runs.append(
            {
                "init_stride": init_stride,
                "round_samples": round_samples,
                "target_halfwidth": halfwidth,
                "budget": budget,
                "rollouts": lab.cost.rollouts,
                "located": located(est),
            }
        )
    by_tol = {}
    for tol in TOLS:
        key = f"tol{tol}"
        ok_u = [r for r in uniform_runs if r["located"][key] >= RATE]
        ok_a = [r for r in adaptive_runs if r["located"][key] >= RATE]
        best_u = min(ok_u, key=lambda r: r["rollouts"]) if ok_u else None
        best_a = min(ok_a, key=lambda r: r["rollouts"]) if ok_a else None
        by_tol[key] = {
            "saving": round(best_u["rollouts"] / best_a["rollouts"], 2) if best_u and best_a else None,
            "best_uniform": best_u,
            "best_adaptive": best_a,
        }
    value = by_tol["tol0"]["saving"]
    record(
        "adaptive_rollout_saving",
        value,
        unit="x (uniform rollouts / adaptive rollouts), forking token located exactly",
        criterion=f"first jump of >= {JUMP} located exactly (tol0) or within 2 tokens (tol2) in >= {RATE:.0%} of "
        "traces; value: tol0",
        saving_within_2_tokens=by_tol["tol2"]["saving"],
        by_tolerance=by_tol,
        truth=f"first token departing from the correct chain; kept if a {REF_SAMPLES}-sample reference (seed 99) "
        f"drops >= {SELECT} across it",
        traces=len(traces),
        failed_traces=len(cand),
        traces_with_jump=len(jumpy),
        uniform_runs=uniform_runs,
        adaptive_runs=adaptive_runs,
        model=str(SHIPPED_POLICY.relative_to(SHIPPED_POLICY.parents[2])),
        seed=0,
        torch_threads=1,
        note="Within 2 tokens a stride-4 uniform grid needs no bisection (first_jump reports the middle of the "
        "interval), so uniform is cheaper there; adaptive pays off when the forking token itself is wanted."
        if value is not None
        else "one of the methods never reached the criterion; see runs",
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parts = set(argv) or {"speed", "adaptive"}
    if "speed" in parts:
        results = {w: speed(w) for w in WORKLOADS}
        d = results["distinct"]
        record(
            "label_speedup_vs_naive",
            d["speedup_vs_naive"],
            unit="x (naive seconds / ours), distinct-prompt traces",
            speedup_vs_batched_generate=d["speedup_vs_batched_generate"],
            targets={"vs_naive": ">= 10", "vs_batched_generate": ">= 8"},
            workloads=results,
            model=str(SHIPPED_POLICY.relative_to(SHIPPED_POLICY.parents[2])),
            repeats=REPEATS,
            seed=0,
            torch_threads=1,
            note="naive: model.generate(num_return_sequences=M) per re-encoded prefix + verify; batched_generate: "
            "prefixes sorted by length, left-padded, 16 per generate(num_return_sequences=M) call; ours_plain_kv: "
            "MCLabeller on the plain KV-slicing path (prefill once, one KV copy per row); ours: MCLabeller on the "
            "trie path (prefill once, shared-prefix attention, one forward per distinct token history). "
            "Fastest of REPEATS interleaved runs; peak memory from one run per method in a fresh process.",
        )
    if "adaptive" in parts:
        adaptive_saving()


if __name__ == "__main__":
    main()
