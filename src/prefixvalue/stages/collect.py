"""``prefixvalue collect``: sample outcome-labelled traces from a policy.

    prefixvalue collect task=arith model=data/policies/arith-tiny num_prompts=64 traces_per_prompt=8 seed=0 out=runs/traces
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
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .. import __version__, runfolder
from ..config import ConfigError, RawMapping, field, parse_config
from ..data import finish_summary
from ..data.schema import TRACE_FEATURES
from ..data.shards import ShardWork, run_sharded_stage, shard_extra
from ..loading import recorded_model, resolve_model_path
from ..policies import check_context, load_policy, load_tokenizer, model_context
from ..prompting import PromptFormat, choose_prompt_format
from ..sampling.backend import SamplerBackendConfig, backend_record
from ..sampling.hf import HFSampler
from ..sampling.sampler import Sampler, SamplingParams, decode_completion
from ..tasks import (
    Prompt,
    Task,
    build_task,
    char_to_token_spans,
    safe_verify,
    task_configs,
    task_options,
    token_end_offsets,
)
from ..tasks.steps import single_step_warning, step_count_summary

#: what collect writes into OUT beside the shards and the merged dataset (`prefixvalue.data.shards.SHARDED_OUTPUTS`)
OUTPUTS = ("summary.json",)


@dataclass
class CollectConfig(SamplerBackendConfig):
    """Sample completions of a task's prompts from a policy and verify them (the traces dataset)."""

    out: str | None = field(None, help="output folder (the traces dataset; shards under OUT/shards)")
    model: str | None = field(
        None,
        help="policy: hub name, local folder loadable by AutoModelForCausalLM, or a .gguf file",
        synonyms=("policy",),
    )
    chat_template: bool | None = field(
        None,
        help="wrap each prompt in the tokenizer's chat template as a user message (None: on when the tokenizer has "
        "one; false: the raw prompt text); recorded in the traces",
    )
    system_prompt: str | None = field(
        None,
        help="system message before the prompt when the chat template is on (None: the template's default)",
        escapes=True,
    )
    fail_truncated: bool = field(
        True,
        help="score a completion cut off at max_new_tokens as a failure (outcome 0, the reason in outcome_note); "
        "false: verify it like a finished one. Label continues the traces under the same rule",
    )
    task: str = field("arith", help="task name in prefixvalue.tasks.TASKS")
    task_args: RawMapping = field(
        default_factory=RawMapping,
        help="options of the task's config (task_args.NAME=VALUE, or a YAML mapping; listed below per task)",
        configs=task_configs,
    )
    split: str = field("train", help="task split to draw prompts from")
    num_prompts: int = field(64, help="number of prompts (the first N of the split)")
    traces_per_prompt: int = field(8, help="completions sampled per prompt (the traces)", renamed_from="samples")
    seed: int = field(0, help="sampling seed; the same command gives the same traces")
    temperature: float = field(1.0, help="sampling temperature (0 = greedy)")
    top_p: float = field(1.0, help="nucleus sampling mass (1 = off)")
    top_k: int = field(0, help="top-k sampling (0 = off)")
    max_new_tokens: int = field(64, help="longest completion, in tokens")
    stop: list[str] = field(
        default_factory=list,
        help="stop strings, kept at the end of the completion",
        escapes=True,
    )
    chunk_prompts: int = field(16, help="prompts per shard (fixes the shards; keep it when resuming)")
    batch_rows: int = field(256, help="most sequences decoded together")
    share_prompts: bool = field(
        True,
        help="backend=hf: the samples of one prompt share its prefill and, where their tokens coincide, their "
        "forwards (the trie path of label; the same traces). false: every sample decodes alone (the baseline)",
    )
    dtype: str = field("auto", help="model dtype: auto, float32, bfloat16, float16")
    device: str | None = field(None, help="device (default: this process's accelerate device)")
    verifier_timeout_s: float | None = field(10.0, help="verifier time limit per completion (None: no limit)")
    progress: bool = field(True, help="show a progress bar with tokens/s")

    def __post_init__(self) -> None:
        try:
            self.task_args = task_options(self.task, self.task_args)
        except KeyError as exc:
            raise ConfigError(f"collect: {exc.args[0]}") from None
        self.check_backend("collect")
        for name in ("num_prompts", "traces_per_prompt", "chunk_prompts", "batch_rows", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"collect: {name} must be >= 1, got {getattr(self, name)}")
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
    fail_truncated: bool = False,
) -> list[dict[str, Any]]:
    """Verify generations and build traces rows (every contract field plus `meta` columns).

    With `fail_truncated`, a generation whose finish reason is ``length`` scores 0 and its
    ``outcome_note`` says so, with what the verifier would have given.
    """
    rows = []
    for prompt, pids, gen, tid in zip(prompts, prompt_ids, gens, trace_ids):
        text = decode_completion(tokenizer, gen.token_ids)
        res = safe_verify(task, prompt, text, verifier_timeout_s)
        score, note = float(res.score), None
        if fail_truncated and gen.finish_reason == "length":
            score, note = 0.0, f"truncated: cut off at the token budget; scored 0 (the verifier gave {res.score:g})"
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
                "outcome": score,
                "verifier_error": res.error,
                "step_spans": [list(s) for s in spans],
                "step_labels": None if labels is None else [bool(x) for x in labels],
                "logprobs": [float(x) for x in gen.logprobs],
                "finish_reason": gen.finish_reason,
                "outcome_note": note,
                "answer": prompt.answer,
                "prompt_meta": json.dumps(prompt.meta, sort_keys=True, default=str),
                **meta,
            }
        )
    return rows


def sampling_summary(extras: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the shards were sampled (``summary.json`` ``sampling``), from their ``done.json`` records: shards per
    path (``shared``: the samples of a prompt shared its prefill and their common forwards; ``generate``: each
    sample decoded alone, with the reason in `reasons`; ``unrecorded``: a shard written by an older version),
    the sampler's token counts and the sampling seconds summed over shards. docs/design.md ("Collect on the
    trie path")."""
    paths: dict[str, int] = {}
    for e in extras:
        paths[e.get("path", "unrecorded")] = paths.get(e.get("path", "unrecorded"), 0) + 1
    counts = ("generated_tokens", "prefill_tokens", "decode_tokens", "decode_steps")
    out: dict[str, Any] = {
        "paths": paths,
        "reasons": sorted({e["path_reason"] for e in extras if e.get("path_reason")}),
        **{k: int(sum(e.get(k, 0) for e in extras)) for k in counts},
        "seconds": round(float(sum(e.get("seconds", 0.0) for e in extras)), 3),
    }
    out["generated_tokens_per_s"] = round(out["generated_tokens"] / out["seconds"], 1) if out["seconds"] else None
    return out


def encode_prompt(tokenizer: Any, text: str, fmt: PromptFormat | None = None) -> list[int]:
    """Token ids of a prompt in format `fmt` (default: the raw text), without special tokens added by the
    tokenizer itself."""
    return (fmt or PromptFormat()).encode(tokenizer, text)


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
    model_name, load = resolve_model_path(cfg.model, cfg.load_options())
    # the prompt format is fixed before any shard runs, so a resumed run cannot change it
    tokenizer = load_tokenizer(model_name, load)  # loaded once (a GGUF tokenizer takes seconds), used by setup
    fmt = choose_prompt_format(tokenizer, cfg.chat_template, cfg.system_prompt)
    model_record = recorded_model(cfg.model)  # a local path absolute: later stages find it from any folder
    manifest = {
        "task": cfg.task,
        "task_args": cfg.task_args,
        "split": cfg.split,
        "num_prompts": len(prompts),
        "samples": cfg.traces_per_prompt,  # the manifest key of runs made before the rename, so they resume
        "chunk_prompts": cfg.chunk_prompts,
        "model": model_record,
        "sampling": json.loads(params.to_json()),
        "prompt_format": json.loads(fmt.to_json()),
        "model_load": load.record(),
        "fail_truncated": cfg.fail_truncated,
        # only when not the default, so runs made before the option resume as they were
        **({"backend": cfg.backend} if cfg.backend != "hf" else {}),
    }
    backend = backend_record(cfg.backend)
    meta = {
        "task": cfg.task,
        "task_args": json.dumps(cfg.task_args, sort_keys=True),
        "model": model_record,
        "sampling": params.to_json(),
        "prompt_format": fmt.to_json(),
        "model_load": json.dumps(load.record(), sort_keys=True),
        "backend": json.dumps(backend, sort_keys=True),
        "fail_truncated": cfg.fail_truncated,
        "seed": cfg.seed,
        "prefixvalue_version": __version__,
    }
    num_shards = (len(prompts) + cfg.chunk_prompts - 1) // cfg.chunk_prompts

    def chunk_of(i: int) -> list[Prompt]:
        return prompts[i * cfg.chunk_prompts : (i + 1) * cfg.chunk_prompts]

    def setup(device: Any) -> ShardWork:
        """Load the policy and return the work of one shard (only when this process has shards to do)."""
        sampler: Sampler
        if cfg.backend == "vllm":
            from ..sampling.vllm_sampler import vllm_sampler_for

            sampler = vllm_sampler_for(cfg, model_name, load, tokenizer)
            context: tuple[int | None, str] = (sampler.max_model_len, "the vLLM engine's max_model_len")
        else:
            model, _ = load_policy(model_name, cfg.dtype, cfg.device or device, load, tokenizer=tokenizer)
            context = model_context(model, tokenizer)
            sampler = HFSampler(model, tokenizer, max_batch_rows=cfg.batch_rows, max_tree_rows=cfg.batch_rows)
        # every prompt is checked before any is generated (and before the run's manifest is written)
        encoded = [encode_prompt(tokenizer, p.text, fmt) for p in prompts]
        m = params.max_new_tokens
        check_context(
            "collect",
            [len(ids) + m for ids in encoded],
            *context,
            lambda i: f"prompt {prompts[i].prompt_id!r} ({len(encoded[i])} tokens) with max_new_tokens={m}",
            "shorten the prompts or lower max_new_tokens",
        )
        t0 = time.perf_counter()

        def work(i: int, bar: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            chunk = chunk_of(i)
            enc = encoded[i * cfg.chunk_prompts : (i + 1) * cfg.chunk_prompts]
            rows_p = [p for p in chunk for _ in range(cfg.traces_per_prompt)]
            rows_ids = [e for e in enc for _ in range(cfg.traces_per_prompt)]
            tids = [f"{p.prompt_id}/s{j}" for p in chunk for j in range(cfg.traces_per_prompt)]
            ts = time.perf_counter()

            def advance(n_rows: int, _tokens: int) -> None:  # per decoded batch: the bar ends at the shard's traces
                bar.update(n_rows)
                bar.set_postfix(tok_s=f"{sampler.stats.generated_tokens / max(time.perf_counter() - t0, 1e-9):.0f}")

            stats = sampler.stats.as_dict()
            if isinstance(sampler, HFSampler) and cfg.share_prompts:
                gens = sampler.generate_shared(rows_ids, tids, params, on_batch=advance)
                path = "shared" if sampler.tree_attention else "generate"
            else:
                gens = sampler.generate(rows_ids, tids, params, on_batch=advance)
                path = "generate" if isinstance(sampler, HFSampler) else cfg.backend
            rows = trace_rows(
                task, tokenizer, rows_p, rows_ids, gens, tids, meta, cfg.verifier_timeout_s, cfg.fail_truncated
            )
            extra = {k: v - stats[k] for k, v in sampler.stats.as_dict().items()}
            reason = None
            if path == "generate":
                reason = sampler.tree_attention_reason if cfg.share_prompts else "share_prompts=false"
            return rows, {
                **extra,
                "seconds": time.perf_counter() - ts,
                "path": path,
                **({"path_reason": reason} if reason else {}),
            }

        return work

    ds = run_sharded_stage(
        cfg,
        out,
        manifest,
        num_shards,
        lambda i: len(chunk_of(i)) * cfg.traces_per_prompt,
        setup,
        TRACE_FEATURES,
        command="collect",
        outputs=OUTPUTS,
        desc="collect",
        unit="trace",
        progress=cfg.progress,
        ray_options=cfg.ray_options(),
    )
    if ds is not None:
        summary = {
            "traces": len(ds),
            "prompts": len(prompts),
            "accuracy": float(sum(ds["outcome"]) / max(len(ds), 1)),
            "verifier_errors": sum(e is not None for e in ds["verifier_error"]),
            "generated_tokens": int(sum(len(c) for c in ds["completion_ids"])),
            "prompt_format": json.loads(fmt.to_json()),
            "backend": backend,
            "sampling": sampling_summary([shard_extra(out, i) for i in range(num_shards)]),
            **finish_summary(ds["finish_reason"], ds["outcome_note"]),
            "steps": step_count_summary(ds["step_spans"]),
        }
        runfolder.write_text(out / "summary.json", json.dumps(summary, indent=1))
        runfolder.finish(out)
        reasons = ", ".join(f"{k} {v}" for k, v in summary["finish_reasons"].items())
        print(
            f"collect: {summary['traces']} traces, accuracy {summary['accuracy']:.3f} (finish reasons: {reasons}; "
            f"{summary['failed_as_truncated']} cut off and scored 0) -> {out}"
        )
        warning = single_step_warning(summary["steps"], "collect")
        if warning:
            print(warning, file=sys.stderr)
    return 0


__all__ = [
    "CollectConfig",
    "encode_prompt",
    "main",
    "run",
    "sampling_summary",
    "trace_rows",
]
