"""``prefixvalue collect``: sample outcome-labelled traces from a policy.

    prefixvalue collect --task arith --model data/policies/arith-tiny --num-prompts 64 --samples 8 --seed 0 --out runs/traces
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
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .. import __version__
from ..config import ConfigError, field, parse_config, save_resolved_config
from ..sampling.sampler import HFSampler, SamplingParams, decode_completion
from ..tasks import Prompt, Task, build_task, char_to_token_spans, safe_verify, token_end_offsets

#: schema of a traces dataset written by collect (contract fields first, then run metadata)
TRACE_FEATURES = datasets.Features({
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
})


# ---------------------------------------------------------------------------------------------
# shards (shared with `prefixvalue label`)


def dist_info() -> tuple[int, int, Any]:
    """``(process index, number of processes, PartialState)`` from accelerate (1 process without a launcher)."""
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes, state


def shard_path(out: Path, index: int) -> Path:
    """Folder of shard `index` under ``out/shards``."""
    return out / "shards" / f"shard-{index:05d}"


def shard_done(out: Path, index: int) -> bool:
    """Whether shard `index` was written completely (it exists only after the atomic rename)."""
    return (shard_path(out, index) / "done.json").exists()


def write_shard(out: Path, index: int, rows: list[dict[str, Any]], features: datasets.Features,
                extra: dict[str, Any] | None = None) -> Path:
    """Write `rows` as shard `index` atomically: save to a temp folder, then rename it into place.

    `extra` is written beside the data as ``done.json`` (e.g. cost accounting). Returns the path.
    """
    final = shard_path(out, index)
    tmp = out / "shards" / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp / "data"))
    (tmp / "done.json").write_text(json.dumps({"rows": len(rows), **(extra or {})}, indent=1))
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished the same shard first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def merge_shards(out: Path, num_shards: int) -> datasets.Dataset:
    """Concatenate shards 0..num_shards-1 in order and save them as the dataset at `out`.

    The merged files are written to a temp folder and moved into `out`, ``state.json`` last, so a
    reader never sees a half-written dataset. Returns the merged dataset (loaded from `out`).
    """
    parts = [datasets.load_from_disk(str(shard_path(out, i) / "data")) for i in range(num_shards)]
    merged = datasets.concatenate_datasets(parts) if parts else None
    if merged is None:
        raise ValueError(f"{out}: no shards to merge")
    tmp = out / f".merge-{uuid.uuid4().hex[:8]}"
    merged.save_to_disk(str(tmp))
    for old in out.glob("data-*.arrow"):
        old.unlink()
    names = sorted(p.name for p in tmp.iterdir())
    for name in [n for n in names if n != "state.json"] + ["state.json"]:
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(out))


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Record the arguments that fix the shards in ``out/run.json``, or check they match a previous run.

    Raises ConfigError when OUT holds shards of a different run (resuming it would mix two runs).
    """
    path = out / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise ConfigError(f"{out} holds a different run (differs in {diff}); use a new out folder or delete it")
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".run-{uuid.uuid4().hex[:8]}.json"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)


def run_shards(out: Path, num_shards: int, work: Callable[[int], tuple[list[dict[str, Any]], dict[str, Any]]],
               features: datasets.Features, state: Any, rank: int, world: int,
               on_shard: Callable[[dict[str, Any]], None] | None = None) -> datasets.Dataset | None:
    """Run `work(i)` for this process's unfinished shards (i % world == rank), write each, then merge.

    Returns the merged dataset on the main process once every shard exists, else None.
    """
    for i in range(num_shards):
        if i % world != rank or shard_done(out, i):
            continue
        rows, extra = work(i)
        write_shard(out, i, rows, features, extra)
        if on_shard is not None:
            on_shard(extra)
    if world > 1:
        state.wait_for_everyone()
    if rank != 0:
        return None
    missing = [i for i in range(num_shards) if not shard_done(out, i)]
    if missing:
        raise RuntimeError(f"{out}: shards {missing[:10]} are missing after the run")
    return merge_shards(out, num_shards)


# ---------------------------------------------------------------------------------------------
# collect


@dataclass
class CollectConfig:
    """Sample completions of a task's prompts from a policy and verify them (the traces dataset)."""

    out: str | None = field(None, help="output folder (the traces dataset; shards under OUT/shards)")
    model: str | None = field(None, help="policy: hub name or local folder loadable by AutoModelForCausalLM")
    task: str = field("arith", help="task name in prefixvalue.tasks.TASKS")
    task_args: dict = field(default_factory=dict, help="keyword arguments of the task (YAML mapping)")
    split: str = field("train", help="task split to draw prompts from")
    num_prompts: int = field(64, help="number of prompts (the first N of the split)")
    samples: int = field(8, help="completions sampled per prompt")
    seed: int = field(0, help="sampling seed; the same command gives the same traces")
    temperature: float = field(1.0, help="sampling temperature (0 = greedy)")
    top_p: float = field(1.0, help="nucleus sampling mass (1 = off)")
    top_k: int = field(0, help="top-k sampling (0 = off)")
    max_new_tokens: int = field(64, help="longest completion, in tokens")
    stop: list = field(default_factory=list, help="stop strings (kept at the end of the completion)")
    chunk_prompts: int = field(16, help="prompts per shard (fixes the shards; keep it when resuming)")
    batch_rows: int = field(256, help="most sequences decoded together")
    dtype: str = field("auto", help="model dtype: auto, float32, bfloat16, float16")
    device: str | None = field(None, help="device (default: this process's accelerate device)")
    verifier_timeout_s: float | None = field(10.0, help="verifier time limit per completion (None: no limit)")
    trust_remote_code: bool = field(False, help="allow custom model code from the model folder")
    progress: bool = field(True, help="show a progress bar with tokens/s")

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("collect: out is required (--out DIR)")
        if not self.model:
            raise ConfigError("collect: model is required (--model NAME_OR_PATH)")
        for name in ("num_prompts", "samples", "chunk_prompts", "batch_rows", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"collect: {name} must be >= 1, got {getattr(self, name)}")
        self.stop = [str(s) for s in self.stop]
        try:
            self.params()
        except ValueError as exc:
            raise ConfigError(f"collect: {exc}") from None

    def params(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.top_k, self.max_new_tokens, tuple(self.stop), self.seed)


def trace_rows(task: Task, tokenizer: Any, prompts: Sequence[Prompt], prompt_ids: Sequence[Sequence[int]],
               gens: Sequence[Any], trace_ids: Sequence[str], meta: dict[str, Any],
               verifier_timeout_s: float | None) -> list[dict[str, Any]]:
    """Verify generations and build traces rows (every contract field plus `meta` columns)."""
    rows = []
    for prompt, pids, gen, tid in zip(prompts, prompt_ids, gens, trace_ids):
        text = decode_completion(tokenizer, gen.token_ids)
        res = safe_verify(task, prompt, text, verifier_timeout_s)
        spans = char_to_token_spans(task.split_steps(text), token_end_offsets(tokenizer, gen.token_ids))
        try:
            labels = task.step_labels(prompt, text)
        except Exception:  # noqa: BLE001 - a task that cannot label this completion gives no labels
            labels = None
        rows.append({
            "trace_id": tid, "prompt_id": prompt.prompt_id, "prompt": prompt.text, "completion": text,
            "prompt_ids": list(pids), "completion_ids": list(gen.token_ids), "outcome": float(res.score),
            "verifier_error": res.error, "step_spans": [list(s) for s in spans],
            "step_labels": None if labels is None else [bool(x) for x in labels],
            "logprobs": [float(x) for x in gen.logprobs], "finish_reason": gen.finish_reason,
            "answer": prompt.answer, "prompt_meta": json.dumps(prompt.meta, sort_keys=True, default=str),
            **meta,
        })
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
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    datasets.disable_progress_bars()
    rank, world, state = dist_info()
    out = Path(cfg.out)
    task = build_task(cfg.task, cfg.task_args)
    prompts = list(task.prompts(cfg.num_prompts, cfg.split))
    if not prompts:
        raise ConfigError(f"collect: task {cfg.task!r} gave no prompts for split {cfg.split!r}")
    params = cfg.params()
    manifest = {"task": cfg.task, "task_args": cfg.task_args, "split": cfg.split, "num_prompts": len(prompts),
                "samples": cfg.samples, "chunk_prompts": cfg.chunk_prompts, "model": cfg.model,
                "sampling": json.loads(params.to_json())}
    if rank == 0:
        check_manifest(out, manifest)
        save_resolved_config(cfg, out)
    if world > 1:
        state.wait_for_everyone()
        check_manifest(out, manifest)
    num_shards = (len(prompts) + cfg.chunk_prompts - 1) // cfg.chunk_prompts
    todo = [i for i in range(num_shards) if i % world == rank and not shard_done(out, i)]
    meta = {"task": cfg.task, "task_args": json.dumps(cfg.task_args, sort_keys=True), "model": cfg.model,
            "sampling": params.to_json(), "seed": cfg.seed, "prefixvalue_version": __version__}
    sampler: HFSampler | None = None
    tokenizer: Any = None
    if todo:
        from ..policies import load_policy

        model, tokenizer = load_policy(cfg.model, cfg.dtype, cfg.device or state.device, cfg.trust_remote_code)
        sampler = HFSampler(model, tokenizer, max_batch_rows=cfg.batch_rows)
    from tqdm.auto import tqdm

    total = sum(len(prompts[i * cfg.chunk_prompts:(i + 1) * cfg.chunk_prompts]) for i in todo) * cfg.samples
    bar = tqdm(total=total, unit="trace", disable=not cfg.progress or rank != 0,
               desc="collect")
    t0 = time.perf_counter()

    def work(i: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        assert sampler is not None
        chunk = prompts[i * cfg.chunk_prompts:(i + 1) * cfg.chunk_prompts]
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

    ds = run_shards(out, num_shards, work, TRACE_FEATURES, state, rank, world)
    bar.close()
    if ds is not None:
        summary = {"traces": len(ds), "prompts": len(prompts), "accuracy": float(sum(ds["outcome"]) / max(len(ds), 1)),
                   "verifier_errors": sum(e is not None for e in ds["verifier_error"]),
                   "generated_tokens": int(sum(len(c) for c in ds["completion_ids"]))}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"collect: {summary['traces']} traces, accuracy {summary['accuracy']:.3f} -> {out}")
    return 0


__all__ = ["CollectConfig", "TRACE_FEATURES", "check_manifest", "dist_info", "encode_prompt", "main",
           "merge_shards", "run_shards", "shard_done", "shard_path", "trace_rows", "write_shard"]
