"""Monte Carlo labellers for a traces dataset: the traces' task and sampling parameters, their `TraceRef`s, and
an `MCLabeller` on a loaded policy. The label stage, the quickstart's fork re-test and the advantages study build
their labellers here, so all of them continue a trace the same way (docs/design.md, "Objects and formulas")."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import datasets

from ..config import ConfigError
from ..data import DataFormatError, check_trace_ids, traces_fail_truncated
from ..tasks import Prompt, Task, build_task, task_class, task_options
from .hf import HFSampler
from .mc import MCLabeller, TraceRef
from .sampler import SamplingParams


@dataclass
class LabellerOptions:
    """What a labeller takes beside the traces: the task (default: the traces' own), the sampling overrides (None:
    as the traces were collected), the seed, the batch sizes and the verifier's time limit. `LabelConfig` has the
    same fields with the same defaults (a test keeps them equal), so a label config can be passed as it is."""

    seed: int = 0
    task: str | None = None
    task_args: dict | None = None
    allow_code_from_data: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int | None = None
    batch_rows: int = 256
    tree_rows: int = 4096
    verifier_timeout_s: float | None = 10.0


def sampling_from_traces(ds: datasets.Dataset, cfg: LabellerOptions, warn: bool = False) -> SamplingParams:
    """The traces' sampling parameters (column `sampling`), overridden by any set in `cfg`.

    ``max_new_tokens`` is raised to the longest trace's completion: the budget counts from the prompt, so a
    continuation of a prefix needs room for the trace's own tokens. With `warn`, a given ``max_new_tokens``
    that is raised is said in one line on stderr."""
    base: dict[str, Any] = {}
    if "sampling" in ds.column_names and len(ds) and ds[0]["sampling"]:
        base = json.loads(ds[0]["sampling"])
    merged = {
        "temperature": base.get("temperature", 1.0),
        "top_p": base.get("top_p", 1.0),
        "top_k": base.get("top_k", 0),
        "max_new_tokens": base.get("max_new_tokens", 64),
        "stop": tuple(base.get("stop", ())),
    }
    for key in ("temperature", "top_p", "top_k", "max_new_tokens"):
        if getattr(cfg, key) is not None:
            merged[key] = getattr(cfg, key)
    longest = max((len(c) for c in ds["completion_ids"]), default=0)
    if warn and cfg.max_new_tokens is not None and cfg.max_new_tokens < longest:
        print(
            f"warning: label: max_new_tokens={cfg.max_new_tokens} raised to {longest}, the longest trace's completion "
            "(the budget counts from the prompt, so continuing a prefix needs room for the trace's own tokens)",
            file=sys.stderr,
        )
    merged["max_new_tokens"] = max(int(merged["max_new_tokens"]), longest)
    try:
        return SamplingParams(seed=cfg.seed, **merged)
    except ValueError as exc:
        raise ConfigError(f"label: {exc}") from None


def trace_refs(ds: datasets.Dataset) -> list[TraceRef]:
    """`TraceRef`s of a traces dataset; raises DataFormatError on rows that cannot be labelled."""
    refs = []
    has_answer = "answer" in ds.column_names
    has_meta = "prompt_meta" in ds.column_names
    check_trace_ids(ds, "traces")
    for row in ds:
        tid = row["trace_id"]
        if not row["prompt_ids"]:
            raise DataFormatError(f"traces: trace {tid!r} has empty prompt_ids")
        if not row["completion_ids"]:
            raise DataFormatError(f"traces: trace {tid!r} has empty completion_ids (nothing to label)")
        meta = json.loads(row["prompt_meta"]) if has_meta and row["prompt_meta"] else {}
        prompt = Prompt(row["prompt_id"], row["prompt"], row["answer"] if has_answer else None, meta)
        refs.append(TraceRef(tid, prompt, tuple(row["prompt_ids"]), tuple(row["completion_ids"])))
    return refs


def traces_task(
    ds: datasets.Dataset, task: str | None = None, task_args: dict | None = None, allow_code_from_data: bool = False
) -> tuple[str, dict, Task]:
    """The task that verifies continuations of traces `ds`: `task` / `task_args` when given, else the
    traces' own `task` and `task_args` columns. Returns ``(name, typed task_args, task)``.

    Either way the options go through the task's typed config (ConfigError naming a bad key, with a
    suggestion). Options taken from the traces that name user code (`Task.code_references`, e.g. a
    verifier ``file.py:function``) are refused unless `allow_code_from_data`: data must not choose code.
    """
    name = task or (ds[0]["task"] if "task" in ds.column_names else None)
    if not name:
        raise ConfigError("label: the traces carry no `task` column; pass task=NAME")
    recorded = task_args is None
    if recorded:
        text = ds[0]["task_args"] if "task_args" in ds.column_names and ds[0]["task_args"] else "{}"
        try:
            task_args = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"label: the traces' task_args are not JSON ({exc}); pass task_args=...") from None
        if not isinstance(task_args, dict):
            raise ConfigError(f"label: the traces' task_args are not a mapping: {text[:80]!r}; pass task_args=...")
    try:
        args = task_options(name, task_args)
        refs = task_class(name).code_references(args) if recorded and not allow_code_from_data else []
    except KeyError as exc:
        raise ConfigError(f"label: {exc.args[0]}") from None
    except ConfigError as exc:
        if recorded:
            raise ConfigError(f"label: the traces' recorded task_args: {exc} (or pass task_args=...)") from None
        raise
    if refs:
        raise ConfigError(
            f"label: the traces' recorded task_args name the verifier function {refs[0]!r}: code named by "
            "the data is not run unless you pass allow_code_from_data=true (or give task_args=... yourself)"
        )
    return name, args, build_task(name, args)


def labeller_for(ds: datasets.Dataset, cfg: LabellerOptions, model: Any, tokenizer: Any) -> MCLabeller:
    """An `MCLabeller` on a loaded policy that continues traces `ds` as `cfg` says: the traces' task and
    sampling parameters unless `cfg` overrides them, seeded with ``cfg.seed``."""
    _, _, task = traces_task(ds, cfg.task, cfg.task_args, cfg.allow_code_from_data)
    return MCLabeller(
        HFSampler(model, tokenizer, max_batch_rows=cfg.batch_rows, max_tree_rows=cfg.tree_rows),
        tokenizer,
        task,
        sampling_from_traces(ds, cfg),
        cfg.verifier_timeout_s,
        fail_truncated=traces_fail_truncated(ds),
    )
