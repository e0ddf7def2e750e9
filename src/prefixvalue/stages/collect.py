"""``prefixvalue collect``: sample outcome-labelled traces from a policy.

    prefixvalue collect task=arith model=data/policies/arith-tiny num_prompts=64 samples=8 seed=0 out=runs/traces
    prefixvalue collect --config my_collect.yaml out=runs/traces
    accelerate launch -m prefixvalue.cli collect ...        # several processes: chunks split by process

Prompts are cut into fixed chunks of `chunk_prompts`; each chunk is written atomically as one shard
under ``OUT/shards/`` (temp folder, then rename). Process r of W takes chunks r, r+W, ..; a rerun
with the same arguments skips finished shards; the main process merges all shards into the traces
dataset at OUT (``load_traces(OUT)``). Every trace row's randomness is keyed by its trace id
(``{prompt_id}/s{j}``), so the result does not depend on the number of processes or on resuming.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .. import __version__
from ..config import ConfigError, RawMapping, field, parse_config, unescape
from ..data.shards import ShardWork, run_sharded_stage
from ..sampling.sampler import HFSampler, SamplingParams, decode_completion
from ..tasks import Prompt, Task, build_task, char_to_token_spans, safe_verify, task_options, token_end_offsets

#: schema of a traces dataset written by collect (contract fields first, then run metadata)
TRACE_FEATURES = datasets.Features(
    {
        "trace_id": datasets.Value("string"),
        "prompt_id": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "completion": datasets.Value("string"),
        "prompt_ids": datasets.List(datasets.Value("int32")),
        "completion_ids": datasets.List(datasets.Value("int32")),
        "outcome": datasets.Value("float64"),
        "verifier_error": datasets.Value("string"),
        "step_spans": datasets.List(datasets.List(datasets.Value("int32"))),
        "step_labels": datasets.List(datasets.Value("bool")),
        "logprobs": datasets.List(datasets.Value("float32")),
        "finish_reason": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "prompt_meta": datasets.Value("string"),
        "task": datasets.Value("string"),
        "task_args": datasets.Value("string"),
        "model": datasets.Value("string"),
        "sampling": datasets.Value("string"),
        "seed": datasets.Value("int64"),
        "prefixvalue_version": datasets.Value("string"),
    }
)


@dataclass
class CollectConfig:
    """Sample completions of a task's prompts from a policy and verify them (the traces dataset)."""

    out: str | None = field(None, help="output folder (the traces dataset; shards under OUT/shards)")
    model: str | None = field(None, help="policy: hub name or local folder loadable by AutoModelForCausalLM")
    task: str = field("arith", help="task name in prefixvalue.tasks.TASKS")
    task_args: RawMapping = field(
        default_factory=RawMapping, help="options of the task's config (task_args.NAME=VALUE, or a YAML mapping)"
    )
    split: str = field("train", help="task split to draw prompts from")
    num_prompts: int = field(64, help="number of prompts (the first N of the split)")
    samples: int = field(8, help="completions sampled per prompt")
    seed: int = field(0, help="sampling seed; the same command gives the same traces")
    temperature: float = field(1.0, help="sampling temperature (0 = greedy)")
    top_p: float = field(1.0, help="nucleus sampling mass (1 = off)")
    top_k: int = field(0, help="top-k sampling (0 = off)")
    max_new_tokens: int = field(64, help="longest completion, in tokens")
    stop: list[str] = field(
        default_factory=list,
        help="stop strings, kept at the end of the completion (escapes \\n, \\t, \\r read as newline, tab, CR)",
    )
    chunk_prompts: int = field(16, help="prompts per shard (fixes the shards; keep it when resuming)")
    batch_rows: int = field(256, help="most sequences decoded together")
    dtype: str = field("auto", help="model dtype: auto, float32, bfloat16, float16")
    device: str | None = field(None, help="device (default: this process's accelerate device)")
    verifier_timeout_s: float | None = field(10.0, help="verifier time limit per completion (None: no limit)")
    trust_remote_code: bool = field(False, help="allow custom model code from the model folder")
    progress: bool = field(True, help="show a progress bar with tokens/s")

    def __post_init__(self) -> None:
        try:
            self.task_args = task_options(self.task, self.task_args)
        except KeyError as exc:
            raise ConfigError(f"collect: {exc.args[0]}") from None
        for name in ("num_prompts", "samples", "chunk_prompts", "batch_rows", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"collect: {name} must be >= 1, got {getattr(self, name)}")
        self.stop = [unescape(str(s)) for s in self.stop]  # stop=\n means a newline
        try:
            self.params()
        except ValueError as exc:
            raise ConfigError(f"collect: {exc}") from None

    def check_inputs(self) -> None:
        """The inputs a run needs (left unset in the quickstart's nested config, which fills them)."""
        if not self.out:
            raise ConfigError("collect: out is required (out=DIR)")
        if not self.model:
            raise ConfigError("collect: model is required (model=NAME_OR_PATH)")

    def params(self) -> SamplingParams:
        return SamplingParams(
            self.temperature, self.top_p, self.top_k, self.max_new_tokens, tuple(self.stop), self.seed
        )


def trace_rows(
    task: Task,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    prompt_ids: Sequence[Sequence[int]],
    gens: Sequence[Any],
    trace_ids: Sequence[str],
    meta: dict[str, Any],
    verifier_timeout_s: float | None,
) -> list[dict[str, Any]]:
    """Verify generations and build traces rows (every contract field plus `meta` columns)."""
    rows = []
    for prompt, pids, gen, tid in zip(prompts, prompt_ids, gens, trace_ids):
        text = decode_completion(tokenizer, gen.token_ids)
        res = safe_verify(task, prompt, text, verifier_timeout_s)
        spans = char_to_token_spans(task.split_steps(text), token_end_offsets(tokenizer, gen.token_ids))
        try:
            labels = task.step_labels(prompt, text)
        except (ValueError, LookupError):  # a task that cannot label this completion gives no labels
            labels = None
        rows.append(
            {
                "trace_id": tid,
                "prompt_id": prompt.prompt_id,
                "prompt": prompt.text,
                "completion": text,
                "prompt_ids": list(pids),
                "completion_ids": list(gen.token_ids),
                "outcome": float(res.score),
                "verifier_error": res.error,
                "step_spans": [list(s) for s in spans],
                "step_labels": None if labels is None else [bool(x) for x in labels],
                "logprobs": [float(x) for x in gen.logprobs],
                "finish_reason": gen.finish_reason,
                "answer": prompt.answer,
                "prompt_meta": json.dumps(prompt.meta, sort_keys=True, default=str),
                **meta,
            }
        )
    return rows


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt, without special tokens added by the tokenizer."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {text!r} encodes to no tokens")
    return list(ids)


def main(argv: list[str] | None = None) -> int:
    """Run ``prefixvalue collect``; returns the exit status."""
    return run(parse_config(CollectConfig, argv, prog="prefixvalue collect"))


def run(cfg: CollectConfig) -> int:
    """Run ``prefixvalue collect`` with a config object (what the quickstart calls); returns the exit status."""
    cfg.check_inputs()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    datasets.disable_progress_bars()
    out = Path(cfg.out)
    task = build_task(cfg.task, cfg.task_args)
    prompts = list(task.prompts(cfg.num_prompts, cfg.split))
    if not prompts:
        raise ConfigError(f"collect: task {cfg.task!r} gave no prompts for split {cfg.split!r}")
    params = cfg.params()
    manifest = {
        "task": cfg.task,
        "task_args": cfg.task_args,
        "split": cfg.split,
        "num_prompts": len(prompts),
        "samples": cfg.samples,
        "chunk_prompts": cfg.chunk_prompts,
        "model": cfg.model,
        "sampling": json.loads(params.to_json()),
    }
    meta = {
        "task": cfg.task,
        "task_args": json.dumps(cfg.task_args, sort_keys=True),
        "model": cfg.model,
        "sampling": params.to_json(),
        "seed": cfg.seed,
        "prefixvalue_version": __version__,
    }
    num_shards = (len(prompts) + cfg.chunk_prompts - 1) // cfg.chunk_prompts

    def chunk_of(i: int) -> list[Prompt]:
        return prompts[i * cfg.chunk_prompts : (i + 1) * cfg.chunk_prompts]

    def setup(device: Any) -> ShardWork:
        """Load the policy and return the work of one shard (only when this process has shards to do)."""
        from ..policies import load_policy

        model, tokenizer = load_policy(cfg.model, cfg.dtype, cfg.device or device, cfg.trust_remote_code)
        sampler = HFSampler(model, tokenizer, max_batch_rows=cfg.batch_rows)
        t0 = time.perf_counter()

        def work(i: int, bar: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            chunk = chunk_of(i)
            enc = [encode_prompt(tokenizer, p.text) for p in chunk]
            rows_p = [p for p in chunk for _ in range(cfg.samples)]
            rows_ids = [e for e in enc for _ in range(cfg.samples)]
            tids = [f"{p.prompt_id}/s{j}" for p in chunk for j in range(cfg.samples)]
            before = sampler.stats.generated_tokens
            ts = time.perf_counter()
            gens = sampler.generate(rows_ids, tids, params)
            rows = trace_rows(task, tokenizer, rows_p, rows_ids, gens, tids, meta, cfg.verifier_timeout_s)
            gen_tokens = sampler.stats.generated_tokens - before
            bar.update(len(rows))
            bar.set_postfix(tok_s=f"{sampler.stats.generated_tokens / max(time.perf_counter() - t0, 1e-9):.0f}")
            return rows, {"generated_tokens": gen_tokens, "seconds": time.perf_counter() - ts}

        return work

    ds = run_sharded_stage(
        cfg,
        out,
        manifest,
        num_shards,
        lambda i: len(chunk_of(i)) * cfg.samples,
        setup,
        TRACE_FEATURES,
        desc="collect",
        unit="trace",
        progress=cfg.progress,
    )
    if ds is not None:
        summary = {
            "traces": len(ds),
            "prompts": len(prompts),
            "accuracy": float(sum(ds["outcome"]) / max(len(ds), 1)),
            "verifier_errors": sum(e is not None for e in ds["verifier_error"]),
            "generated_tokens": int(sum(len(c) for c in ds["completion_ids"])),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"collect: {summary['traces']} traces, accuracy {summary['accuracy']:.3f} -> {out}")
    return 0


__all__ = ["CollectConfig", "TRACE_FEATURES", "encode_prompt", "main", "run", "trace_rows"]
