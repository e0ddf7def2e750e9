"""Benchmark of trace collection on the shipped policy (figure -> benchmarks/results.json).

    python benchmarks/bench_collect.py

collect_speedup_vs_loop: wall-clock of a one-prompt-at-a-time loop of
``model.generate(num_return_sequences=samples)`` divided by `HFSampler.generate` over all prompts
(batched KV-cache decode, finished rows compacted out), same prompts, samples and sampling params.
Generation time only (verification is the same for both).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefixvalue.policies import load_policy  # noqa: E402
from prefixvalue.sampling.hf import HFSampler  # noqa: E402
from prefixvalue.sampling.sampler import SamplingParams  # noqa: E402
from prefixvalue.tasks import ArithTask  # noqa: E402

from benchmarks.common import SHIPPED_POLICY, record  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    model, tok = load_policy(str(SHIPPED_POLICY), "float32", "cpu")
    num_prompts, samples, max_new = 48, 8, 64
    prompts = list(ArithTask().prompts(num_prompts, "test"))
    ids = [tok(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
    torch.manual_seed(0)
    t0 = time.perf_counter()
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
    loop_s = time.perf_counter() - t0
    sampler = HFSampler(model, tok, max_batch_rows=256)
    rows = [x for x in ids for _ in range(samples)]
    keys = [f"{p.prompt_id}/s{j}" for p in prompts for j in range(samples)]
    t0 = time.perf_counter()
    sampler.generate(rows, keys, SamplingParams(max_new_tokens=max_new, seed=0))
    ours_s = time.perf_counter() - t0
    record(
        "collect_speedup_vs_loop",
        round(loop_s / ours_s, 2),
        unit="x (loop seconds / ours)",
        loop_seconds=round(loop_s, 2),
        ours_seconds=round(ours_s, 2),
        ours_tokens_per_s=round(sampler.stats.generated_tokens / ours_s),
        loop_tokens_per_s=round(loop_tokens / loop_s),
        model=str(SHIPPED_POLICY.relative_to(SHIPPED_POLICY.parents[2])),
        prompts=num_prompts,
        samples=samples,
        max_new_tokens=max_new,
        batch_rows=256,
        seed=0,
        torch_threads=1,
        note="loop: model.generate(num_return_sequences=samples) one prompt at a time",
    )


if __name__ == "__main__":
    main()
