"""``prefixvalue label``: Monte Carlo prefix labels (k/n with Wilson 95% intervals) for traces.

    prefixvalue label traces=runs/traces model=data/policies/arith-tiny positions=steps samples=16 max_traces=64 seed=0 out=runs/labels
    prefixvalue label traces=runs/traces model=data/policies/arith-tiny prompts=train out=runs/labels_train   # MC labels for training
    prefixvalue label traces=runs/traces model=data/policies/arith-tiny positions=adaptive budget=256 out=runs/labels_adaptive
    accelerate launch -m prefixvalue.cli label ...          # several processes: trace chunks split by process

Positions: ``all`` | ``stride:K`` | ``steps`` | ``short:K`` | ``adaptive`` (see `prefixvalue.sampling.positions`).
Which traces: by default only those of held-out prompts (``prompts=heldout``), by the same split of
prompt texts that training uses (``heldout_fraction``, ``validation_fraction``, ``split_seed``, the defaults of
`train`), so labels meant for evaluation never come from a training prompt; ``prompts=validation`` labels the
validation side (where choices are made: docs/design.md, "Choose on validation, report on test"),
``prompts=train`` the training side (soft MC targets for training), ``prompts=all`` every trace. ``max_traces`` counts after this choice. The split
is recorded in ``OUT/split.json`` (`prefixvalue.data.SplitRecord`, plus ``prompts``).
Each prefix is continued `samples` times (adaptive: in rounds of `round_samples`, within `budget`
rollouts per trace) with the sampling parameters the traces were collected with unless overridden.
Each trace is prefilled once and continuations branch off its KV cache; identical prefixes are
sampled once. Output: the labels dataset at OUT (shards under OUT/shards, resumable like collect)
and ``OUT/cost.json`` (prefill tokens, generated tokens, rollouts, verifier calls, seconds).

``candidates=K`` also labels, at each labelled position p, the counterfactual prefixes s_p ⊕ y' for the policy's
K most likely next tokens y' other than the one the trace wrote (whose value is the label at p + 1), `samples`
continuations each through the same sampler path, into ``OUT/candidates.parquet``
(`prefixvalue.data.candidates`; docs/design.md, "Candidate labels"); cost.json's ``candidates`` says what they
cost, a part of its totals.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np

from .. import runfolder
from ..config import ConfigError, RawMapping, field, parse_config
from ..data import (
    DataFormatError,
    SplitRecord,
    load_labels,
    load_split,
    load_traces,
    normalise_prompt,
    split_three,
    traces_digest,
    traces_fail_truncated,
)
from ..data.candidates import CANDIDATE_FILE, write_candidate_labels
from ..data.schema import LABEL_FEATURES
from ..data.shards import ShardWork, dist_info, run_sharded_stage, shard_extra
from ..evaluation.advantages import TraceInput, policy_candidates
from ..evaluation.evaluator import load_value_models
from ..loading import traces_policy
from ..policies import (
    check_context,
    check_vocabulary,
    default_device,
    load_policy,
    load_tokenizer,
    model_context,
)
from ..sampling.acquisition import SELECT_BY, acquisition_scores, choose_prefixes
from ..sampling.backend import SamplerBackendConfig, backend_record
from ..sampling.hf import HFSampler
from ..sampling.labelling import labeller_for, sampling_from_traces, trace_refs, traces_task
from ..sampling.mc import AdaptiveConfig, LabelCost, MCLabeller, TraceRef, distinct_prefixes
from ..sampling.positions import (
    PositionSpecError,
    parse_positions,
    parse_step_fallback,
    positions_for_trace,
    uses_step_fallback,
)
from ..sampling.sampler import Sampler
from ..tasks import task_configs, task_options
from ..tasks.steps import single_step_warning, step_count_summary

#: what label writes into OUT beside the shards and the merged dataset (`prefixvalue.data.shards.SHARDED_OUTPUTS`)
OUTPUTS = ("cost.json", "split.json", CANDIDATE_FILE)


@dataclass
class LabelConfig(SamplerBackendConfig):
    """Label trace prefixes with Monte Carlo success rates of the policy continuing from them."""

    traces: str | None = field(None, help="traces dataset folder (written by `prefixvalue collect`)")
    model: str | None = field(
        None,
        help="policy that continues the prefixes (default: the traces' model, with its recorded loading options)",
        synonyms=("policy",),
    )
    allow_other_policy: bool = field(
        False, help="let `model` differ from the model that wrote the traces (another policy's values)"
    )
    out: str | None = field(None, help="output folder (labels dataset, cost.json; shards under OUT/shards)")
    positions: str = field("steps", help="all | stride:K | steps | short:K | adaptive")
    step_fallback: str | None = field(
        "stride:16",
        help="positions=steps: a trace of fewer than 2 steps is labelled at these positions instead "
        "(all | stride:K | short:K; none: at its step boundaries, often the bare prompt alone)",
    )
    samples: int = field(16, help="MC continuations per prefix (uniform specs)")
    candidates: int = field(
        0,
        help="also label s_p ⊕ y' at each labelled prefix for the policy's top-K next tokens y' other than the "
        "written one, `samples` continuations each (OUT/candidates.parquet: training targets of a Q-head); 0: none",
    )
    prompts: Literal["heldout", "validation", "train", "all"] = field(
        "heldout",
        help="which traces: heldout (the test prompts train holds out; for the figures reported), validation (the "
        "prompts choices are made on), train (MC targets for training), all",
    )
    heldout_fraction: float = field(0.2, help="fraction of prompts held out (as train's heldout_fraction)")
    split_seed: int = field(0, help="seed of the prompt split (as train's split_seed)")
    validation_fraction: float = field(
        0.1, help="fraction of the non-held-out prompts on the validation side (as train's validation_fraction)"
    )
    traces_per_prompt: int | None = field(
        None, help="label at most K traces of each prompt, the first in order (None: all); before max_traces"
    )
    max_traces: int | None = field(None, help="label only the first K traces of those `prompts` selects (None: all)")
    seed: int = field(0, help="sampling seed; the same command gives the same labels")
    task: str | None = field(None, help="task name (default: the traces' `task` column)")
    task_args: RawMapping | None = field(
        None,
        help="options of the task's config (default: the traces' `task_args` column; listed below per task)",
        configs=task_configs,
    )
    allow_code_from_data: bool = field(
        False,
        help="run user code that the traces' recorded task_args name (a verifier 'module:function' or "
        "'file.py:function'); off: such traces are refused unless task_args=... is given here",
    )
    temperature: float | None = field(None, help="sampling temperature (default: as the traces were collected)")
    top_p: float | None = field(None, help="nucleus mass (default: as collected)")
    top_k: int | None = field(None, help="top-k (default: as collected)")
    max_new_tokens: int | None = field(
        None, help="completion budget in tokens, counted from the prompt (default: as collected)"
    )
    chunk_traces: int = field(16, help="traces per shard (fixes the shards; keep it when resuming)")
    batch_rows: int = field(
        256,
        help="most continuations decoded together on the plain path (CPU: 256; each row holds a copy of its prefix's KV)",
    )
    tree_rows: int = field(
        4096,
        help="most continuations sampled together on the trie path (a row is a seed and a node id; nodes share forwards)",
    )
    round_samples: int = field(8, help="adaptive: continuations added to a prefix per round")
    target_halfwidth: float = field(0.1, help="adaptive: stop sampling a prefix below this Wilson half-width")
    budget: int = field(256, help="adaptive: most continuations per trace")
    jump: float = field(0.25, help="adaptive: bisect between neighbours whose values differ by this much")
    init_stride: int = field(8, help="adaptive: starting grid is step boundaries plus every init_stride tokens")
    dtype: str = field("auto", help="model dtype: auto, float32, bfloat16, float16")
    device: str | None = field(None, help="device (default: this process's accelerate device)")
    verifier_timeout_s: float | None = field(10.0, help="verifier time limit per continuation (None: no limit)")
    progress: bool = field(
        True,
        help="show a progress bar of rollouts (adaptive: its total starts at the budget and drops to what is spent)",
    )
    select_prefixes: int | None = field(
        None,
        help="active labelling: label only these many of the prefixes `positions` gives (the candidates), the "
        'ones `select_by` scores highest (docs/design.md, "Active labelling"); None: every candidate',
    )
    select: list[str] | None = field(
        None,
        help="value checkpoints that score the candidates (one, or an ensemble: CKPT1,CKPT2,...), each trained on "
        "this run's split of these traces",
    )
    select_by: Literal["spread", "jump", "random"] = field(
        "spread",
        help="spread: the ensemble's standard deviation of P̂ (one checkpoint: P̂(1-P̂)); jump: |P̂(p) - P̂ at the "
        "previous candidate|, mean over the ensemble; random: uniformly with `seed` (the matched baseline)",
    )
    exclude: list[str] | None = field(
        None, help="labels folders of earlier rounds (DIR1,DIR2,...): the prefixes they label are not candidates"
    )
    select_batch_size: int = field(32, help="traces per forward pass when the checkpoints score the candidates")

    def check_inputs(self) -> None:
        """The inputs a run needs (left unset in the quickstart's nested config, which fills them)."""
        for name in ("traces", "out"):
            if not getattr(self, name):
                raise ConfigError(f"label: {name} is required ({name}=...)")

    def __post_init__(self) -> None:
        if self.task_args is not None and self.task:  # else checked in `run`, against the traces' task
            try:
                self.task_args = task_options(self.task, self.task_args)
            except KeyError as exc:
                raise ConfigError(f"label: {exc.args[0]}") from None
        if self.candidates < 0:
            raise ConfigError(f"label: candidates must be >= 0 (0: none), got {self.candidates}")
        if self.candidates and self.positions.strip() == "adaptive":
            raise ConfigError("label: candidates=K needs fixed positions (all, steps, stride:K, short:K), not adaptive")
        if self.candidates and self.backend != "hf":
            raise ConfigError(
                f"label: candidates=K reads the policy's next-token ranking: backend=hf, not {self.backend}"
            )
        self.check_backend("label")
        try:
            parse_positions(self.positions)
        except PositionSpecError as exc:
            raise ConfigError(f"label: {exc}") from None
        try:
            parse_step_fallback(self.step_fallback)
        except PositionSpecError as exc:
            raise ConfigError(f"label: step_fallback: {exc}") from None
        self.check_selection()
        for name in ("samples", "chunk_traces", "batch_rows", "tree_rows", "round_samples", "budget", "init_stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"label: {name} must be >= 1, got {getattr(self, name)}")
        if self.prompts not in ("heldout", "validation", "train", "all"):
            raise ConfigError(f"label: prompts must be heldout, validation, train or all, got {self.prompts!r}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ConfigError("label: heldout_fraction must be in [0, 1)")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError("label: validation_fraction must be in [0, 1)")
        if self.prompts == "validation" and self.validation_fraction == 0:
            raise ConfigError("label: prompts=validation needs validation_fraction > 0 (as train's)")
        if self.traces_per_prompt is not None and self.traces_per_prompt < 1:
            raise ConfigError("label: traces_per_prompt must be >= 1 (or None for all)")
        if self.max_traces is not None and self.max_traces < 1:
            raise ConfigError("label: max_traces must be >= 1 (or None for all)")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"label: max_new_tokens must be >= 1 (or None: as collected), got {self.max_new_tokens}")
        try:
            self.adaptive_config()
        except ValueError as exc:
            raise ConfigError(f"label: {exc}") from None

    def check_selection(self) -> None:
        """The active-labelling options (docs/design.md, "Active labelling") agree with each other."""
        if self.select_prefixes is None:
            for name in ("select", "exclude"):
                if getattr(self, name):
                    raise ConfigError(f"label: {name}=... chooses prefixes: it needs select_prefixes=N")
            return
        if self.select_prefixes < 1:
            raise ConfigError(
                f"label: select_prefixes must be >= 1 (or None: every candidate), got {self.select_prefixes}"
            )
        if self.select_by not in SELECT_BY:
            raise ConfigError(f"label: select_by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.select_by != "random" and not self.select:
            raise ConfigError(
                f"label: select_by={self.select_by} scores prefixes with value checkpoints: pass select=CKPT[,CKPT...]"
            )
        if self.positions.strip() == "adaptive":
            raise ConfigError(
                "label: select_prefixes=N chooses among fixed positions (all, steps, stride:K, short:K), not adaptive"
            )
        if self.select_batch_size < 1:
            raise ConfigError(f"label: select_batch_size must be >= 1, got {self.select_batch_size}")

    def adaptive_config(self) -> AdaptiveConfig:
        return AdaptiveConfig(
            round_samples=self.round_samples,
            target_halfwidth=self.target_halfwidth,
            budget=self.budget,
            jump=self.jump,
            init_stride=self.init_stride,
        )


def main(argv: list[str] | None = None) -> int:
    """Run ``prefixvalue label``; returns the exit status."""
    return run(parse_config(LabelConfig, argv, prog="prefixvalue label"))


def run(cfg: LabelConfig) -> int:
    """Run ``prefixvalue label`` with a config object (what the quickstart calls); returns the exit status."""
    cfg.check_inputs()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    datasets.disable_progress_bars()
    out = Path(str(cfg.out))
    ds = load_traces(str(cfg.traces))
    # the split train uses (by prompt text); labels for evaluation come from held-out (or validation) prompts only
    sides = split_three(ds, cfg.heldout_fraction, cfg.validation_fraction, cfg.split_seed)
    split_record = SplitRecord.from_prompts(
        sides["train"]["prompt"],
        cfg.heldout_fraction,
        cfg.split_seed,
        sides["validation"]["prompt"],
        cfg.validation_fraction,
        ds["prompt"],
    )
    n_given, given_prompts = len(ds), ds["prompt"]
    if cfg.prompts != "all":
        ds = sides[{"heldout": "test"}.get(cfg.prompts, cfg.prompts)]
    if cfg.traces_per_prompt is not None:  # spread the labels over prompts (first traces of each, in order)
        seen: dict[str, int] = {}
        keep = []
        for i, text in enumerate(ds["prompt"]):
            key = normalise_prompt(text)
            if seen.get(key, 0) < cfg.traces_per_prompt:
                keep.append(i)
            seen[key] = seen.get(key, 0) + 1
        ds = ds.select(keep)
    if cfg.max_traces is not None:
        ds = ds.select(range(min(cfg.max_traces, len(ds))))
    if len(ds) == 0:
        raise DataFormatError(
            f"{cfg.traces}: no traces to label (prompts={cfg.prompts}: {len(ds)} of {n_given} traces; "
            f"heldout_fraction={cfg.heldout_fraction}, validation_fraction={cfg.validation_fraction}, "
            f"split_seed={cfg.split_seed})"
        )
    refs = trace_refs(ds)
    model_name, load = traces_policy(ds, cfg.model, cfg.load_options(), cfg.allow_other_policy, "label")
    fail_truncated = traces_fail_truncated(ds)
    task_name, task_args, task = traces_task(ds, cfg.task, cfg.task_args, cfg.allow_code_from_data)
    if cfg.task_args is not None:
        cfg = dataclasses.replace(cfg, task_args=RawMapping(task_args))  # the resolved config records them typed
    params = sampling_from_traces(ds, cfg, warn=dist_info()[0] == 0)
    spec = parse_positions(cfg.positions)
    spans = ds["step_spans"]
    plan = [
        positions_for_trace(spec, len(r.completion_ids), sp, cfg.init_stride, cfg.step_fallback)
        for r, sp in zip(refs, spans)
    ]
    if spec.kind == "steps" and dist_info()[0] == 0:  # one line, from the main process
        warning = single_step_warning(step_count_summary(spans), f"label ({len(refs)} traces, positions=steps)")
        if warning:
            used = sum(uses_step_fallback(spec, sp, cfg.step_fallback) for sp in spans)
            fallback = parse_step_fallback(cfg.step_fallback)
            how = f"{used} of them labelled at step_fallback={fallback}" if fallback else "step_fallback=none"
            print(f"warning: {warning}; here: {how}", file=sys.stderr)
    digest = traces_digest(ds)  # of the traces `prompts` selects: the candidates' traces when prefixes are chosen
    selection: dict[str, Any] | None = None
    if cfg.select_prefixes is not None:  # active labelling: only the chosen prefixes; a trace without any is skipped
        chosen, selection = select_prefixes(cfg, ds, refs, plan, split_record, given_prompts)
        keep = [i for i, pos in enumerate(chosen) if pos]
        ds, refs, plan = ds.select(keep), [refs[i] for i in keep], [chosen[i] for i in keep]
    manifest = {
        "traces": str(Path(str(cfg.traces)).resolve()),
        "traces_sha256": digest,  # a traces folder re-collected in place is refused on resume
        "prompts": cfg.prompts,
        "heldout_fraction": cfg.heldout_fraction,
        "split_seed": cfg.split_seed,
        # the held-out (test) side does not depend on it: recorded where it moves the traces chosen
        **({"validation_fraction": cfg.validation_fraction} if cfg.prompts in ("train", "validation") else {}),
        "model": model_name,
        "model_load": load.record(),
        "fail_truncated": fail_truncated,
        "positions": str(spec),
        **({"step_fallback": str(parse_step_fallback(cfg.step_fallback) or "none")} if spec.kind == "steps" else {}),
        "samples": cfg.samples,
        **({"candidates": cfg.candidates} if cfg.candidates else {}),  # only when asked: older runs resume
        "chunk_traces": cfg.chunk_traces,
        "task": task_name,
        "task_args": task_args,
        "sampling": json.loads(params.to_json()),
        "adaptive": cfg.adaptive_config().__dict__ if spec.kind == "adaptive" else None,
        # only when not the default, so runs made before the option resume as they were
        **({"backend": cfg.backend} if cfg.backend != "hf" else {}),
        # only when prefixes are chosen; its digest of the chosen prefixes refuses a resume that would choose others
        **({"select": {k: v for k, v in selection.items() if k in SELECTION_MANIFEST}} if selection else {}),
    }
    num_shards = (len(refs) + cfg.chunk_traces - 1) // cfg.chunk_traces

    def shard_rollouts(i: int) -> int:
        """Continuations shard i samples, the progress bar's unit (adaptive: at most, its budget)."""
        lo, hi = i * cfg.chunk_traces, (i + 1) * cfg.chunk_traces
        if spec.kind == "adaptive":
            return cfg.budget * len(refs[lo:hi])
        # candidates: at most K per labelled prefix (fewer when an EOS candidate needs no continuation)
        most = cfg.samples * cfg.candidates * sum(len(p) for p in plan[lo:hi])
        return cfg.samples * distinct_prefixes(refs[lo:hi], plan[lo:hi]) + most

    def setup(device: Any) -> ShardWork:
        """Load the policy and return the work of one shard (only when this process has shards to do)."""
        sampler: Sampler
        model: Any = None  # the policy, on the hf backend (candidates rank its next tokens)
        if cfg.backend == "vllm":
            from ..sampling.vllm_sampler import vllm_sampler_for

            tokenizer = load_tokenizer(model_name, load)
            sampler = vllm_sampler_for(cfg, model_name, load, tokenizer)
            vocab_size = sampler.vocab_size
            context: tuple[int | None, str] = (sampler.max_model_len, "the vLLM engine's max_model_len")
        else:
            model, tokenizer = load_policy(model_name, cfg.dtype, cfg.device or device, load)
            sampler = HFSampler(model, tokenizer, max_batch_rows=cfg.batch_rows, max_tree_rows=cfg.tree_rows)
            vocab_size = model.get_output_embeddings().weight.shape[0]
            context = model_context(model, tokenizer)
        check_vocabulary(tokenizer, ds, "label", vocab_size)
        # every continuation is checked before any is sampled (and before the run's manifest is written): one from
        # prefix p runs to max_new_tokens completion tokens (at least p + 1), after the prompt
        m = params.max_new_tokens
        longest = [(r, max(p)) for r, p in zip(refs, plan) if p]
        check_context(
            "label",
            [len(r.prompt_ids) + max(m, top + 1) for r, top in longest],
            *context,
            lambda i: (
                f"trace {longest[i][0].trace_id!r} (prompt {len(longest[i][0].prompt_ids)} tokens, longest "
                f"labelled prefix {longest[i][1]} tokens) continued to max_new_tokens={m}"
            ),
            "lower max_new_tokens (it counts from the prompt)",
        )
        labeller = MCLabeller(
            sampler,
            tokenizer,
            task,
            params,
            cfg.verifier_timeout_s,
            fail_truncated=fail_truncated,
        )
        t0 = time.perf_counter()
        sampled = [0]  # rollouts sampled by this process so far

        def work(i: int, bar: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            lo, hi = i * cfg.chunk_traces, (i + 1) * cfg.chunk_traces
            chunk, pos = refs[lo:hi], plan[lo:hi]

            def advance(rollouts: int, _tokens: int) -> None:  # per batch of continuations
                sampled[0] += rollouts
                bar.update(rollouts)
                elapsed = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(
                    rollouts_s=f"{sampled[0] / elapsed:.0f}",
                    tok_s=f"{labeller.sampler.stats.generated_tokens / elapsed:.0f}",
                )

            labeller.on_batch = advance
            before = LabelCost(**labeller.cost.as_dict())
            if spec.kind == "adaptive":
                est = labeller.adaptive(chunk, pos, cfg.adaptive_config())
            else:
                est = labeller.uniform(chunk, pos, cfg.samples, method=str(spec))
            extra: dict[str, Any] = {}
            if cfg.candidates:
                extra = label_candidates(labeller, model, chunk, pos, cfg.candidates, cfg.samples)
            cost = {k: v - getattr(before, k) for k, v in labeller.cost.as_dict().items()}
            pid = {r.trace_id: r.prompt.prompt_id for r in chunk}
            rows = [{**e.as_row(), "prompt_id": pid[e.trace_id]} for e in est]
            if spec.kind == "adaptive" or cfg.candidates:  # the bar counted a bound: what was not spent leaves it
                bar.total -= shard_rollouts(i) - cost["rollouts"]
                bar.refresh()
            return rows, {"cost": cost, **extra}

        return work

    merged = run_sharded_stage(
        cfg,
        out,
        manifest,
        num_shards,
        shard_rollouts,
        setup,
        LABEL_FEATURES,
        command="label",
        outputs=OUTPUTS,
        desc=f"label {spec}",
        unit="rollout",
        progress=cfg.progress,
        ray_options=cfg.ray_options(),
    )
    if merged is not None:
        total_cost = LabelCost()
        for i in range(num_shards):
            total_cost.add(LabelCost(**shard_extra(out, i)["cost"]))
        cost = {
            **total_cost.as_dict(),
            "labels": len(merged),
            "traces": len(refs),
            "positions": str(spec),
            "samples": cfg.samples if spec.kind != "adaptive" else None,
            "shards": num_shards,
            "backend": backend_record(cfg.backend),
            **({"selection": selection} if selection else {}),
            "note": "sums over shards; seconds is sampling+verification time summed over processes",
        }
        if cfg.candidates:
            cand_rows = [r for i in range(num_shards) for r in shard_extra(out, i)["candidates"]]
            cand_cost = LabelCost()
            for i in range(num_shards):
                cand_cost.add(LabelCost(**shard_extra(out, i)["candidate_cost"]))
            write_candidate_labels(out, cand_rows)
            cost["candidates"] = {
                "k": cfg.candidates,
                "labels": len(cand_rows),
                "terminal": sum(bool(r["terminal"]) for r in cand_rows),
                **cand_cost.as_dict(),
                "note": "candidate labels (candidates.parquet): already counted in the totals above",
            }
        runfolder.write_text(out / "cost.json", json.dumps(cost, indent=1))
        split_record.save(out, prompts=cfg.prompts, n_traces_given=n_given, n_traces_labelled=len(refs))
        runfolder.finish(out)
        print(
            f"label: {len(merged)} prefix labels of {len(refs)} traces, {total_cost.rollouts} rollouts, "
            f"{total_cost.generated_tokens} generated tokens -> {out}"
        )
    return 0


#: the keys of a selection record (`select_prefixes`) that the run's manifest holds (the rest is in cost.json)
SELECTION_MANIFEST = ("checkpoints", "select_by", "prefixes", "exclude", "seed", "selection_sha256")


def check_select_split(checkpoint: str, mine: SplitRecord, prompts: list[str], traces: str) -> None:
    """Refuse, in one line, a `select` checkpoint whose recorded split (``split.json``, `load_split`: its digests
    checked against `prompts`, every prompt of `traces`) is not this run's `mine`: the same fractions and seed
    and the same training and validation prompts. Scores of a model trained on other traces or another split
    would choose prefixes by what it never saw, or by what it memorised."""
    record = load_split(checkpoint, prompts, f"the traces {traces}")
    if record is None:
        raise ConfigError(
            f"label: select checkpoint {checkpoint} has no split.json: which prompts it trained on cannot be told "
            "(select with checkpoints `prefixvalue train` wrote)"
        )
    same = record.same_split(mine) and (
        record.n_train_prompts,
        record.train_prompts_sha256,
        record.n_validation_prompts,
        record.validation_prompts_sha256,
    ) == (mine.n_train_prompts, mine.train_prompts_sha256, mine.n_validation_prompts, mine.validation_prompts_sha256)
    if not same:
        what = "{} training prompts, heldout_fraction={}, validation_fraction={}, split_seed={}"
        theirs = what.format(
            record.n_train_prompts, record.heldout_fraction, record.validation_fraction, record.split_seed
        )
        ours = what.format(mine.n_train_prompts, mine.heldout_fraction, mine.validation_fraction, mine.split_seed)
        raise ConfigError(
            f"label: select checkpoint {checkpoint} was trained on another split or other traces ({theirs}) than "
            f"this run splits {traces} by ({ours}): pass the traces and the split it was trained with"
        )


def _summary(x: np.ndarray) -> dict[str, float] | None:
    """min, mean and max of the scores `x` (None when there are none)."""
    return {"min": float(x.min()), "mean": float(x.mean()), "max": float(x.max())} if len(x) else None


def select_prefixes(
    cfg: LabelConfig,
    ds: datasets.Dataset,
    refs: list[TraceRef],
    plan: list[list[int]],
    split_record: SplitRecord,
    prompts: list[str],
) -> tuple[list[list[int]], dict[str, Any]]:
    """Active labelling (docs/design.md, "Active labelling"): the ``select_prefixes`` candidates (positions `plan`
    of traces `refs`, rows `ds`) that ``select_by`` scores highest (`acquisition_scores`, `choose_prefixes`), the
    prefixes of the ``exclude`` folders left out. The ``select`` checkpoints must hold this run's split
    (`check_select_split`) and value the traces' policy; they score through `ValueModel.predict`. Returns the
    chosen positions per trace (ascending; empty: none) and the selection's record (manifest and cost.json)."""
    checkpoints = list(cfg.select or [])
    for ckpt in checkpoints:
        check_select_split(ckpt, split_record, prompts, str(cfg.traces))
    excluded: set[tuple[str, int]] = set()
    for folder in cfg.exclude or []:
        done = load_labels(folder)
        excluded.update((str(t), int(p)) for t, p in zip(done["trace_id"], done["position"]))
    plan = [sorted(set(int(p) for p in pos)) for pos in plan]
    curves = []
    if cfg.select_by != "random":
        load = cfg.load_options()
        device = cfg.device or str(default_device())
        prompt_ids, completion_ids = [list(r.prompt_ids) for r in refs], [list(r.completion_ids) for r in refs]
        for ckpt, model in load_value_models({c: c for c in checkpoints}, device, load).items():
            traces_policy(ds, str(model.config.base_model), load, cfg.allow_other_policy, f"label (select {ckpt})")
            curves.append(model.predict(prompt_ids, completion_ids, batch_size=cfg.select_batch_size))
    scores = acquisition_scores(curves, plan, cfg.select_by)
    trace_ids = [r.trace_id for r in refs]
    chosen = choose_prefixes(trace_ids, plan, scores, int(cfg.select_prefixes or 0), cfg.seed, excluded)
    picked = np.asarray(chosen.scores, dtype=np.float64)
    every = np.concatenate(scores) if scores else np.zeros(0)
    record = {
        "checkpoints": [str(Path(c).resolve()) if Path(c).exists() else c for c in checkpoints],
        "select_by": cfg.select_by,
        "prefixes": cfg.select_prefixes,
        "exclude": [str(Path(f).resolve()) for f in cfg.exclude or []],
        "seed": cfg.seed,
        "selection_sha256": chosen.digest(trace_ids),
        "chosen": sum(len(p) for p in chosen.positions),
        "chosen_traces": sum(1 for p in chosen.positions if p),
        "candidates_scored": chosen.candidates + chosen.excluded,
        "candidates_excluded": chosen.excluded,
        "candidate_traces": len(refs),
        # random scores nothing: its record says so instead of a column of zeros
        "score_chosen": _summary(picked) if cfg.select_by != "random" else None,
        "score_candidates": _summary(every) if cfg.select_by != "random" else None,
    }
    return chosen.positions, record


def label_candidates(
    labeller: MCLabeller, policy: Any, traces: list[TraceRef], positions: list[list[int]], k: int, samples: int
) -> dict[str, Any]:
    """Candidate labels of one shard (docs/design.md, "Candidate labels"): at each position p of ``positions[t]``,
    the policy's top-`k` next tokens at s_p (`policy_candidates`, temperature 1) less the token trace t wrote,
    labelled by `MCLabeller.candidates` with `samples` continuations each. Returns the shard's extra record:
    ``candidates`` (rows of `prefixvalue.data.candidates.CANDIDATE_COLUMNS`) and ``candidate_cost``."""
    before = LabelCost(**labeller.cost.as_dict())
    inputs = [TraceInput(r.trace_id, r.prompt.prompt_id, list(r.prompt_ids), list(r.completion_ids)) for r in traces]
    cands = policy_candidates(policy, inputs, k)
    where, toks, meta = [], [], []
    for c, pos in zip(cands, positions):
        want = set(int(p) for p in pos)
        keep = [j for j, (p, s) in enumerate(zip(c["position"], c["sampled"])) if int(p) in want and not s]
        where.append([int(c["position"][j]) for j in keep])
        toks.append([int(c["token_id"][j]) for j in keep])
        meta += [(int(c["rank"][j]), float(c["logprob"][j])) for j in keep]
    eos = labeller.tokenizer.eos_token_id
    est = labeller.candidates(traces, where, toks, samples, [eos] if eos is not None else [])
    pid = {r.trace_id: r.prompt.prompt_id for r in traces}
    rows = [
        {**e.as_row(), "prompt_id": pid[e.trace_id], "rank": rank, "logprob": lp} for e, (rank, lp) in zip(est, meta)
    ]
    cost = {key: v - getattr(before, key) for key, v in labeller.cost.as_dict().items()}
    return {"candidates": rows, "candidate_cost": cost}


__all__ = [
    "LabelConfig",
    "check_select_split",
    "label_candidates",
    "labeller_for",
    "main",
    "select_prefixes",
    "trace_refs",
]
