"""The training loop: train a value model (implicit IPVRM or explicit head) on outcome-labelled traces.

    prefixvalue train --config recipes/configs/arith-tiny.yaml traces=runs/quickstart/traces out=runs/quickstart/train
    accelerate launch -m prefixvalue.cli train --config recipes/configs/arith-tiny.yaml ...
    accelerate launch recipes/train.py --config recipes/configs/arith-tiny.yaml ...   # the same loop

The training loop behind ``prefixvalue train`` (`prefixvalue.stages.train`), ``recipes/train.py``, the quickstart and
the distance study: `run`, one plain function for 1..N processes (accelerate), in the library because they all call it
in process. `_train` reads top to bottom, one named phase a line:
`_load_data` (traces, split by prompt, the signal's targets) → `_build_model` (value model, optimiser,
schedule, accelerator.prepare) → `_resume` → `_prepare_loader` → `_start_logging` → `_loop` ([forward,
loss, backward] × accumulation, clip, step, schedule, log, evaluate, checkpoint) → `_final_record` →
`_shutdown`. The training signal (outcome, siblings, td, reference) is an object of `prefixvalue.value.signals`;
what differs between value-model kinds is on their classes. The final value checkpoint (a
`save_pretrained` folder) is ``out/final``; resumable states are ``out/checkpoints/step_N``. A killed run
restarted with the same command resumes from the last complete checkpoint and ends where an
uninterrupted run would; an unreadable checkpoint is named in a warning and the one before it is used.
One run per run folder ``out`` (`prefixvalue.runfolder`): a run holds the folder's lock while it trains, and a
config that differs from the run there (beyond `RESUMABLE_KEYS`), another command's run or a file no
training wrote is refused. A non-finite loss or gradient
norm stops the run (`NonFiniteError`) before it can reach a checkpoint or ``final/``, unless
``skip_nonfinite=true`` skips such steps (at most `MAX_NONFINITE_IN_ROW` in a row).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from accelerate.utils import set_seed
from safetensors import safe_open
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from . import runfolder
from .config import ConfigError, config_to_dict, field, save_resolved_config
from .data import SplitRecord, load_labels, load_traces, split_three, within_max_length
from .data.bridges import step_separator
from .data.candidates import (
    TRAIN_COLUMNS,
    CandidateCollator,
    attach_candidate_labels,
    candidate_loss,
    has_candidate_labels,
    load_candidate_labels,
)
from .data.collate import ERROR_TARGETS, ResumableSampler, ValueCollator, attach_prefix_labels
from .loading import LoadOptions, ModelLoadConfig, traces_policy
from .policies import check_vocabulary, load_causal_lm, load_policy, load_tokenizer
from .prompting import PROMPT_FORMAT_FILE, STEP_FORMAT_FILE, PromptFormat, StepFormat, traces_prompt_format
from .tasks import build_task, task_class, task_options
from .tracking import (
    WANDB_RUN_FILE,
    MultiLogger,
    WandbConfig,
    build_logger,
    jsonable,
    logged_rows,
    truncate_metrics,
    wandb_artifact_name,
)
from .value import (
    ValueModel,
    ValueModelConfig,
    build_value_model,
    check_value_config,
    normalise_loss,
    value_model_class,
)
from .value.card import write_training_record
from .value.heldout import evaluate_heldout
from .value.signals import SIGNALS, TrainingSignal, build_signal
from .value.targets import attach_error_targets


@dataclass
class TrainConfig(ModelLoadConfig):
    """Train a value model on traces (see docs/design.md: implicit prefix value, explicit value head).

    Mixed precision is accelerate's setting (the accelerate config file, ``accelerate launch
    --mixed_precision bf16`` or ACCELERATE_MIXED_PRECISION); in-process callers train without it.
    """

    traces: str = field("", help="traces dataset folder (written by `prefixvalue collect`)")
    labels: str | None = field(
        None,
        help="optional prefix-labels folder, or several (DIR1,DIR2: rounds; a prefix labelled twice pools k and n): "
        "soft MC labels used as float targets",
    )
    labels_only: bool = field(
        False, help="with labels: train only on labelled positions (else `signal` fills the rest)"
    )
    candidate_weight: float = field(
        1.0,
        help="with labels holding candidate labels (label candidates=K): weight of the BCE of Q(s, y') against the "
        "MC value of s ⊕ y' beside the trace's own terms (kinds that train on them: qhead; others ignore them)",
    )
    signal: str = field(
        "outcome",
        help="target of prefixes without an MC label, a key of prefixvalue.value.signals.SIGNALS: outcome (the "
        "trace's), siblings (mean outcome of the prompt's traces through the prefix), td (λ-return of the model's "
        "own later predictions), reference (on the path of the prompt's reference solution the policy's probability "
        "of writing the rest of it, siblings elsewhere)",
    )
    td_lambda: float = field(0.8, help="signal=td: λ of the λ-return (1 = outcome only, 0 = TD(0))")
    policy: str | None = field(
        None,
        help="reference policy name or path (default: value_model.base_model, else the traces' `model` column "
        "with its recorded loading options); must be the traces' model unless allow_other_policy=true",
        synonyms=("model",),
    )
    allow_other_policy: bool = field(
        False, help="let the policy differ from the model that wrote the traces (another policy's values)"
    )
    out: str = field(
        "runs/train", help="run folder: config, metrics.jsonl, checkpoints/, final/", synonyms=("output_dir",)
    )
    value_model: ValueModelConfig = field(
        default_factory=ValueModelConfig,
        help="the value model: value_model.kind=implicit|head, value_model.beta=10, ...",
    )
    heldout_fraction: float = field(
        0.2, help="fraction of prompts held out (split by normalised prompt text, prefixvalue.data.is_heldout)"
    )
    split_seed: int = field(0, help="seed of the prompt split (recorded in final/split.json, which evaluate reads)")
    validation_fraction: float = field(
        0.1,
        help="fraction of the non-held-out prompts kept for validation (never trained on; the training monitor and "
        "every choice use them: docs/design.md, 'Choose on validation, report on test'); 0: none",
    )
    max_length: int = field(0, help="drop traces with more prompt+completion tokens than this (0: keep all)")
    max_steps: int = field(200, help="optimizer steps")
    per_device_batch_size: int = field(16, help="traces per micro-batch per process")
    gradient_accumulation_steps: int = field(1, help="micro-batches per optimizer step")
    lr: float = field(1e-3, help="peak learning rate (AdamW)")
    head_lr: float | None = field(
        None, help="peak learning rate of the value head's own weights (head, policy-feature head); None: lr"
    )
    weight_decay: float = field(0.0, help="AdamW weight decay")
    lr_scheduler: str = field("cosine", help="transformers scheduler name: cosine, linear, constant_with_warmup, ...")
    warmup_steps: int = field(10, help="linear warm-up steps")
    max_grad_norm: float = field(1.0, help="gradient clipping norm (0: off)")
    model_dtype: str = field("float32", help="backbone weights dtype: float32, bfloat16, auto (bf16 on a capable GPU)")
    gradient_checkpointing: bool = field(False, help="True saves activation memory, costs ~30% speed")
    eval_every: int = field(
        50, help="evaluate on validation traces (held-out ones when validation_fraction=0) every this many steps"
    )
    eval_batch_size: int = field(32, help="traces per evaluation batch")
    max_eval_traces: int = field(0, help="cap on validation (or held-out) traces per evaluation (0: all)")
    checkpoint_every: int = field(100, help="save_state every this many steps (0: only at the end)")
    keep_checkpoints: int = field(2, help="how many recent checkpoints to keep")
    resume: bool = field(True, help="resume from the last complete checkpoint in out/checkpoints")
    seed: int = field(0, help="seed for initialisation and data order")
    report_to: str = field(
        "disk,stdout,wandb", help="loggers: any of disk, stdout, wandb (offline without key), none (comma separated)"
    )
    run_name: str | None = field(None, help="wandb run name")
    wandb: WandbConfig = field(
        default_factory=WandbConfig, help="wandb project, entity, group, tags, job_type (wandb.project=NAME, ...)"
    )
    log_checkpoints: bool = field(
        False, help="with wandb: log each checkpoint and final/ as a wandb model artifact (uploads the weights)"
    )
    threads: int = field(0, help="torch CPU threads per process (0: torch's default)")
    skip_nonfinite: bool = field(
        False,
        help="skip optimizer steps whose loss or gradient norm is not finite (counted as train/skipped_nonfinite) "
        "instead of stopping; the run stops anyway after MAX_NONFINITE_IN_ROW (10) such steps in a row",
    )

    @property
    def output_dir(self) -> str:
        """`out`, under its other name (``output_dir=`` is a synonym; docs/design.md, "Reading inputs and configs")."""
        return self.out

    def __post_init__(self) -> None:
        if self.max_steps <= 0 or self.per_device_batch_size <= 0 or self.gradient_accumulation_steps <= 0:
            raise ConfigError("max_steps, per_device_batch_size and gradient_accumulation_steps must be positive")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ConfigError("heldout_fraction must be in [0, 1)")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError("validation_fraction must be in [0, 1)")
        if self.eval_every <= 0:
            raise ConfigError("eval_every must be positive")
        if self.device_map is not None:
            raise ConfigError("train places the model with accelerate: device_map is for collect, label and evaluate")
        if self.signal not in SIGNALS:
            raise ConfigError(f"signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if not 0.0 <= self.td_lambda <= 1.0:
            raise ConfigError(f"td_lambda must be in [0, 1], got {self.td_lambda}")
        if not math.isfinite(self.candidate_weight) or self.candidate_weight < 0:
            raise ConfigError(f"candidate_weight must be a finite number >= 0, got {self.candidate_weight}")
        if self.labels_only and not self.labels:
            raise ConfigError("labels_only=true needs labels=DIR (MC labels of training prefixes)")
        if SIGNALS[self.signal].replaces_outcome and self.labels_only:
            raise ConfigError(f"labels_only=true trains on MC labels alone: signal={self.signal} would fill nothing")
        if SIGNALS[self.signal].replaces_outcome and self.value_model.loss == "sequence":
            raise ConfigError("the sequence loss trains on the outcome alone: use signal=outcome with loss=sequence")
        try:  # the kind's own rules (e.g. the implicit model cannot train a full backbone)
            check_value_config(self.value_model)
        except ValueError as exc:
            raise ConfigError(f"value_model: {exc}") from None


#: config keys a run may change when it resumes in the same output_dir: how long it runs, how often it
#: evaluates, logs and checkpoints, where it reports, and speed-only settings. Any other difference
#: (lr, traces, value_model, ...) makes it another run, which train refuses to mix into the folder.
RESUMABLE_KEYS = frozenset(
    {
        "max_steps",
        "eval_every",
        "eval_batch_size",
        "max_eval_traces",
        "checkpoint_every",
        "keep_checkpoints",
        "resume",
        "report_to",
        "run_name",
        "wandb",
        "log_checkpoints",
        "threads",
        "gradient_checkpointing",
        "skip_nonfinite",
        "out",
    }
)
#: config keys holding paths: compared as resolved paths when they exist
_PATH_KEYS = ("traces", "labels", "policy")
#: with skip_nonfinite, a run stops anyway after this many non-finite steps in a row (it has diverged)
MAX_NONFINITE_IN_ROW = 10
_STATE = "trainer_state.json"  # the trainer's own state (step, data position), written last: marks completion


class NonFiniteError(ConfigError):
    """The loss or the gradient norm of a step is not finite (NaN or inf): the run stops there; the
    message names the step and the last good checkpoint."""


def complete_checkpoints(folder: Path) -> list[tuple[Path, int]]:
    """Complete checkpoints in `folder` (their trainer_state.json is written last), newest first."""
    done = [(int(p.name.split("_")[1]), p) for p in folder.glob("step_*") if (p / _STATE).exists()]
    return [(p, n) for n, p in sorted(done, reverse=True)]


def latest_checkpoint(folder: Path) -> tuple[Path, int] | None:
    """Newest complete checkpoint (its trainer_state.json is written last) and its step."""
    done = complete_checkpoints(folder)
    return done[0] if done else None


def checkpoint_problem(folder: Path) -> str | None:
    """Why the resumable state in `folder` cannot be restored (naming the file), or None. Reads each
    file as accelerate's load_state will, before it does (a failure there would leave the model half
    loaded): safetensors in full, the other states with ``torch.load(weights_only=True)``. The random
    states are not checked here (`rng_state_problem`): without them a run can still resume."""
    try:
        state = json.loads((folder / _STATE).read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{folder / _STATE}: {exc}"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not any(p.name.startswith(("model", "pytorch_model")) for p in files):
        return f"{folder}: no model weights"
    for p in files:
        if p.name.startswith("random_states"):
            continue
        try:
            if p.suffix == ".safetensors":
                with safe_open(str(p), "pt") as f:
                    for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                        f.get_tensor(key)
            elif p.suffix in (".bin", ".pkl", ".pt"):
                accelerate_load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # any reader's error: the file is named and the checkpoint skipped
            return f"{p}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def rng_state_problem(folder: Path, process_index: int) -> str | None:
    """Why this process's random states in `folder` cannot be restored with weights_only=True
    (accelerate then silently keeps the current ones), or None."""
    path = folder / f"random_states_{process_index}.pkl"
    try:
        accelerate_load(path, weights_only=True)
    except Exception as exc:  # a missing, truncated or refused pickle: reported, not fatal
        return f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


#: the top-level names a training writes into output_dir (``.lock``: the lock file of earlier versions)
OUTPUTS = (
    runfolder.CONFIG_FILE,
    *runfolder.LOGGER_OUTPUTS,
    "checkpoints",
    "final",
    "final_metrics.json",
    ".lock",
)


def _folder_rules(extra_outputs: tuple[str, ...] = ()) -> dict[str, Any]:
    """How output_dir is compared (`prefixvalue.runfolder.check`): train's outputs, `RESUMABLE_KEYS`,
    paths compared resolved."""
    return {
        "outputs": (*OUTPUTS, *extra_outputs),
        "rerun_keys": RESUMABLE_KEYS,
        "path_keys": _PATH_KEYS,
        "out_key": "out",
        "adopt_unrecorded": True,  # a run killed before its config.yaml: its checkpoints decide how it resumes
    }


def check_run_folder(cfg: TrainConfig, out: Path, extra_outputs: tuple[str, ...] = ()) -> None:
    """Refuse an output_dir that holds another run (`prefixvalue.runfolder.check`; changes nothing): a
    ConfigError naming the keys whose values differ from the run there (keys in `RESUMABLE_KEYS` may
    differ), another command's run, or a file no training wrote. `extra_outputs`: names a caller writes
    into the folder beside the training (the distance sweep's curve.json and cell.json)."""
    runfolder.check(out, "train", cfg, **_folder_rules(extra_outputs))


def claim_output_dir(cfg: TrainConfig, out: Path) -> runfolder.RunFolder:
    """Claim output_dir for this training (`prefixvalue.runfolder.claim`): refused as by `check_run_folder`,
    or when another process trains there; the folder is locked until the returned claim is released."""
    return runfolder.claim(out, "train", cfg, **_folder_rules())


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold output_dir's lock for the block (``fcntl.flock``, `prefixvalue.runfolder.lock`), so no second
    training writes into the same folder: it fails at once with a ConfigError. Released on exit (the
    kernel releases it too when the process dies)."""
    with runfolder.lock(out, "train", "out"):
        yield


def _artifact_name(cfg: TrainConfig, out: Path, what: str) -> str:
    """wandb artifact name of the run's checkpoints: ``<run name or folder>-<what>``."""
    return f"{cfg.run_name or out.resolve().name}-{what}"


def _rotate(folder: Path, keep: int, current: Path) -> None:
    """Remove complete checkpoints beyond the newest `keep` and leftovers of interrupted saves."""
    done = complete_checkpoints(folder)
    complete = {p for p, _ in done}
    for old, _ in done[max(keep, 1) :]:
        shutil.rmtree(old, ignore_errors=True)
    for p in folder.glob("step_*"):
        if p not in complete and p != current:
            shutil.rmtree(p, ignore_errors=True)


def run(cfg: TrainConfig) -> dict:
    """Train with a config object (what the train stage, the quickstart and the distance study call). Returns the final metrics,
    with ``eval_history``: ``{"step", **held-out metrics}`` for every held-out evaluation, the final
    one included (on the main process; empty on the others). Raises ConfigError when output_dir holds
    another run or is in use, and NonFiniteError when the loss or gradient norm stops being finite."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # mixed precision comes from accelerate (config file / --mixed_precision / env), default none;
    # we normalise the loss by the items in the whole step ourselves, so accelerate must not divide by
    # the accumulation steps, nor step the scheduler once per process
    # cpu=True without a GPU lets torchrun / accelerate launch on CPU processes use gloo (MULTI_CPU)
    accelerator = Accelerator(step_scheduler_with_optimizer=False, cpu=not torch.cuda.is_available())
    out = Path(cfg.out)
    # one run per output_dir: the main process claims it (locked while it trains), the others check it
    folder = claim_output_dir(cfg, out) if accelerator.is_main_process else None
    if folder is None:
        check_run_folder(cfg, out)
    try:
        done = finished_run(cfg, out)
        if done is not None:
            if accelerator.is_main_process:
                print(
                    f"train: {out} holds a finished run ({done['step']} of max_steps={cfg.max_steps} steps, "
                    f"checkpoint {done['checkpoint']}); nothing to do (raise max_steps to train on, or resume=false "
                    "to train again from scratch)"
                )
        else:
            done = _train(cfg, accelerator, out)
        if folder is not None:
            folder.finish()
        return done
    finally:
        if folder is not None:
            folder.release()


def finished_run(cfg: TrainConfig, out: Path) -> dict | None:
    """The result of a finished run in `out` (final/ and final_metrics.json at ``step >= max_steps``)
    as `run` returns it, its ``eval_history`` read back from metrics.jsonl; None when there is none
    or ``resume=false`` asks for a fresh run."""
    path = out / "final_metrics.json"
    if not cfg.resume or not (out / "final").is_dir() or not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
        step = int(result["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if step < cfg.max_steps:
        return None
    history: list[dict] = []
    for _, row in logged_rows(out / "metrics.jsonl"):
        if row is None:
            continue
        evals = {k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}
        if evals and isinstance(row.get("step"), int):
            history.append({"step": row["step"], **evals})
    return {**result, "eval_history": history}


def _train(cfg: TrainConfig, accelerator: Accelerator, out: Path) -> dict:
    """The training run of `run`, in an output_dir this process may write: its phases, top to bottom."""
    set_seed(cfg.seed)
    data = _load_data(cfg, accelerator.is_main_process)  # traces, split by prompt, the signal's targets
    run = _build_model(cfg, data, accelerator, out)  # value model, optimiser, scheduler, accelerator.prepare
    _resume(run)  # states of the last readable complete checkpoint, if any
    _prepare_loader(run, data)  # the sample stream, from where the checkpoint left it
    _start_logging(run, data)  # loggers, the resolved config, one line of sizes
    _loop(run, data)  # forward, backward, step, log, evaluate, checkpoint
    result = _final_record(run, data)  # held-out metrics, final/ and its records
    _shutdown(run)
    return result


# ---- the phases of `_train`, in the order it calls them ---------------------------------------------


@dataclass
class _Data:
    """What `_load_data` builds: the policy and its tokenizer, the traces split by prompt, the training signal."""

    traces: datasets.Dataset  #: every trace read (the vocabulary check)
    policy: str  #: the reference policy (name or path)
    load: LoadOptions  #: its loading options
    tokenizer: Any
    prompt_format: PromptFormat  #: how the traces' prompts were tokenised (copied into final/)
    train_ds: datasets.Dataset  #: training traces: the model's columns, the signal's targets attached
    held_ds: datasets.Dataset  #: held-out (test) traces, every column (one goes on the model card)
    held_rows: list[dict[str, Any]]  #: the rows the monitor evaluates (at most max_eval_traces): validation ones
    monitor_side: str  #: which side they are: validation, or test when there is no validation side
    split_record: SplitRecord  #: the split, saved as final/split.json (evaluate reads it back)
    signal: TrainingSignal  #: what a prefix without an MC label trains towards
    signal_info: dict[str, Any]  #: the signal's record (``training_signal`` of the result)
    base_rate: float  #: share of training traces that succeed, clipped to [1e-3, 1 - 1e-3]
    candidates: bool = False  #: the training rows carry candidate labels the kind trains on (`_attach_candidates`)


def label_folders(labels: str) -> list[str]:
    """The folders of ``labels=DIR1,DIR2,...`` (docs/design.md, "Active labelling"), in order."""
    return [f for f in (part.strip() for part in labels.split(",")) if f]


def _attach_candidates(
    cfg: TrainConfig, traces: datasets.Dataset, is_main: bool
) -> tuple[datasets.Dataset, dict[str, Any] | None]:
    """The candidate labels of ``cfg.labels`` (docs/design.md, "Candidate labels") attached to `traces` when the kind
    trains on them (`ValueModel.candidate_training`) and ``candidate_weight`` > 0; otherwise the traces as they
    are and, for a kind that does not train on them, a one-line note. Returns (traces, the record of what was
    done for ``training_signal``; None when the folder has no candidate labels)."""
    if not cfg.labels or not has_candidate_labels(cfg.labels):
        return traces, None
    labels = load_candidate_labels(cfg.labels)
    record: dict[str, Any] = {"labels": len(labels), "weight": cfg.candidate_weight}
    if not value_model_class(cfg.value_model.kind).candidate_training:
        note = (
            f"{cfg.labels} holds {len(labels)} candidate labels; a {cfg.value_model.kind} model does not train on "
            "them (the Q-head does): ignored"
        )
        if is_main:
            print(f"note: {note}", file=sys.stderr)
        return traces, {**record, "weight": 0.0, "note": note}
    if not cfg.candidate_weight:
        return traces, record
    return attach_candidate_labels(traces, labels, f"candidate labels of {cfg.labels}"), record


def _load_data(cfg: TrainConfig, is_main: bool) -> _Data:
    """Phase 1, data: the traces (with MC labels), the policy that wrote them, the split by prompt text (no
    prompt's traces straddle train and held-out) and the signal's fixed targets, from the training traces
    only. Raises ConfigError when no training trace is left."""
    if not cfg.traces:
        raise ConfigError("traces=DIR is required (a dataset written by `prefixvalue collect`)")
    traces = load_traces(cfg.traces)
    candidates: dict[str, Any] | None = None
    if cfg.labels:  # several folders (rounds of active labelling): a prefix labelled twice pools its k and n
        folders = label_folders(cfg.labels)
        if len(folders) > 1 and any(has_candidate_labels(f) for f in folders):
            raise ConfigError(f"labels={cfg.labels}: candidate labels are read from one labels folder, not several")
        traces = attach_prefix_labels(traces, [load_labels(f, traces) for f in folders])
        traces, candidates = _attach_candidates(cfg, traces, is_main)
    n_before = len(traces)
    traces = within_max_length(traces, cfg.max_length)
    if is_main and len(traces) < n_before:
        print(f"dropped {n_before - len(traces)} traces longer than max_length={cfg.max_length}")
    policy, load = traces_policy(
        traces, cfg.policy or cfg.value_model.base_model or None, cfg.load_options(), cfg.allow_other_policy, "train"
    )
    tokenizer = load_tokenizer(policy, load)
    prompt_format = traces_prompt_format(traces)
    cols = [c for c in ("prompt_ids", "completion_ids", "outcome", "prefix_targets") if c in traces.column_names]
    cand_cols = [c for c in TRAIN_COLUMNS if c in traces.column_names]
    sides = split_three(traces, cfg.heldout_fraction, cfg.validation_fraction, cfg.split_seed)
    train_ds, val_ds, held_ds = sides["train"], sides["validation"], sides["test"]
    split_record = SplitRecord.from_prompts(
        train_ds["prompt"],
        cfg.heldout_fraction,
        cfg.split_seed,
        val_ds["prompt"],
        cfg.validation_fraction,
        traces["prompt"],
    )
    # the monitor reads validation traces; only a split without validation prompts falls back to held-out ones
    monitor_side, monitor_ds = ("validation", val_ds) if len(val_ds) else ("test", held_ds)
    if is_main and cfg.validation_fraction > 0 and not len(val_ds):
        print(f"no validation prompt at validation_fraction={cfg.validation_fraction}: the monitor reads held-out ones")
    if cfg.labels_only:  # only labelled traces carry a loss term: keep the batches full of them
        train_ds = train_ds.filter(
            lambda r: any(v is not None and v == v for v in r["prefix_targets"] or []), keep_in_memory=True
        )
        if len(train_ds) == 0:
            raise ConfigError("labels_only=true but no training trace has an MC label (label with prompts=train)")
    signal = build_signal(cfg.signal, td_lambda=cfg.td_lambda)
    # held-out outcomes never enter a target; a signal that reads the policy loads it here (and frees it)
    train_ds, signal_info = signal.attach(
        train_ds, lambda: (load_policy(policy, cfg.model_dtype, None, load, tokenizer)[0], tokenizer)
    )
    if cfg.value_model.error_head:  # the error head's targets: the training traces' own step labels
        try:
            train_ds, errors = attach_error_targets(train_ds)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        signal_info = {**signal_info, "error_targets": errors}
    keep = (*cols, "prefix_targets", ERROR_TARGETS, *cand_cols)
    train_ds = train_ds.select_columns([c for c in keep if c in train_ds.column_names])
    if candidates is not None and candidates.get("weight"):  # what of them trains: the training side's
        counts = [len(x) for x in train_ds[TRAIN_COLUMNS[0]]]
        candidates.update(train_labels=sum(counts), train_traces=sum(1 for n in counts if n))
        signal_info = {**signal_info, "candidate_labels": candidates}
    elif candidates is not None:
        signal_info = {**signal_info, "candidate_labels": candidates}
    train_ds = train_ds.with_format(None)
    held_rows = monitor_ds.select_columns(cols).to_list()[: cfg.max_eval_traces or None]
    if len(train_ds) == 0:
        raise ConfigError(f"no training traces left after holding out {cfg.heldout_fraction:.0%} of prompts")
    # P̂ at the bare prompt for the implicit model; clipped so its logit stays finite
    base_rate = min(max(sum(train_ds["outcome"]) / len(train_ds), 1e-3), 1 - 1e-3)
    return _Data(
        traces=traces,
        policy=policy,
        load=load,
        tokenizer=tokenizer,
        prompt_format=prompt_format,
        train_ds=train_ds,
        held_ds=held_ds,
        held_rows=held_rows,
        monitor_side=monitor_side,
        split_record=split_record,
        signal=signal,
        signal_info=signal_info,
        base_rate=base_rate,
        candidates=bool(cand_cols),
    )


@dataclass
class _Run:
    """What the phases after the data share: the prepared model, optimiser and scheduler, and the counters
    a checkpoint records."""

    cfg: TrainConfig
    accelerator: Accelerator
    out: Path
    vcfg: ValueModelConfig  #: the value model's config as built (policy, its loading options, base rate)
    kind: type[ValueModel]  #: what differs between kinds: trained positions, loss readout
    model: Any  #: as prepared by accelerate (DDP-wrapped on N processes)
    optimizer: Any
    scheduler: Any
    params: list[torch.nn.Parameter]  #: the trainable weights
    loader: Any = None
    logger: Any = None  #: a MultiLogger (an empty one on processes other than the main one)
    bar: Any = None
    step: int = 0  #: optimizer steps done (skipped ones included)
    samples_seen: int = 0  #: position in the sample stream (see ResumableSampler)
    skipped: int = 0  #: non-finite steps skipped (skip_nonfinite)
    in_row: int = 0  #: non-finite steps in a row
    last_loss: float = math.nan  #: the last step's loss (mean over its terms)
    last_good: Path | None = None  #: the last checkpoint written or resumed
    eval_history: list[dict] = dataclasses.field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def samples_per_step(self) -> int:
        """Traces per optimizer step over all micro-batches and processes."""
        cfg = self.cfg
        return cfg.per_device_batch_size * cfg.gradient_accumulation_steps * self.accelerator.num_processes


def _build_model(cfg: TrainConfig, data: _Data, accelerator: Accelerator, out: Path) -> _Run:
    """Phase 2, model: the value model around the policy, AdamW (the head's own weights at head_lr) and the
    schedule, through ``accelerator.prepare``; returns the run at step 0."""
    backbone = load_causal_lm(data.policy, cfg.model_dtype, accelerator.device, data.load)
    check_vocabulary(data.tokenizer, data.traces, "train", backbone.get_output_embeddings().weight.shape[0])
    vcfg = dataclasses.replace(
        cfg.value_model, base_model=data.policy, base_load=data.load.record(), base_rate=data.base_rate
    )
    try:  # a rule that needs the backbone (a head layer it does not have): one line
        model = build_value_model(vcfg, backbone)
    except ValueError as exc:
        raise ConfigError(f"value_model: {exc}") from None
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    params = model.trainable_parameters()
    head_ids = {id(p) for p in model.head_parameters()}
    groups = [{"params": [p for p in params if id(p) not in head_ids], "lr": cfg.lr}]
    groups.append({"params": [p for p in params if id(p) in head_ids], "lr": cfg.head_lr or cfg.lr})
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return _Run(cfg, accelerator, out, vcfg, value_model_class(vcfg.kind), model, optimizer, scheduler, params)


def _resume(run: _Run) -> None:
    """Phase 3, resume: model, optimiser, scheduler and RNG states from the newest readable complete
    checkpoint (a warning names each one that cannot be read); sets the run's step and counters. With
    ``resume=false`` the old checkpoints are removed instead."""
    cfg, accelerator, out, is_main = run.cfg, run.accelerator, run.out, run.is_main
    state: dict[str, Any] = {}
    found = complete_checkpoints(out / "checkpoints")
    if found and not cfg.resume:  # a fresh run: the old states must not be resumed later, nor rotated in
        accelerator.wait_for_everyone()
        if is_main:
            print(f"resume=false: removing the {len(found)} checkpoint(s) in {out / 'checkpoints'}")
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        found = []
    for ckpt, ckpt_step in found:
        problem = checkpoint_problem(ckpt)
        if problem:
            if is_main:
                _warn(f"cannot resume from {ckpt} ({problem}); trying the checkpoint before it")
            continue
        rng_problem = rng_state_problem(ckpt, accelerator.process_index)
        if rng_problem:  # accelerate would skip it silently
            _warn(f"random states not restored ({rng_problem}); resuming with the current ones")
        accelerator.load_state(str(ckpt))
        run.step, state, run.last_good = ckpt_step, json.loads((ckpt / _STATE).read_text()), ckpt
        if is_main:
            print(f"resumed from {ckpt} (step {run.step})")
        break
    else:
        if found and is_main:
            _warn(f"no checkpoint in {out / 'checkpoints'} can be restored: starting from step 0")
    accelerator.wait_for_everyone()
    if is_main:
        for ckpt, ckpt_step in found:  # unreadable ones, newer than the resumed step: never chosen again
            if ckpt_step > run.step:
                (ckpt / _STATE).unlink(missing_ok=True)
        truncate_metrics(out, run.step)  # what this run logs again (after the resumed step) is dropped
    run.skipped = int(state.get("skipped_nonfinite", 0))
    run.samples_seen = int(state.get("samples_seen", run.step * run.samples_per_step))


def _prepare_loader(run: _Run, data: _Data) -> None:
    """Phase 4, the sample stream: restarts exactly where the checkpoint left it (see ResumableSampler) and
    stops after the steps left; prepared by accelerate (sharded over the processes)."""
    cfg, start = run.cfg, run.samples_seen
    sampler = ResumableSampler(
        len(data.train_ds), cfg.seed, start=start, stop=start + max(cfg.max_steps - run.step, 0) * run.samples_per_step
    )
    loader = DataLoader(
        data.train_ds,
        batch_size=cfg.per_device_batch_size,
        sampler=sampler,
        collate_fn=(CandidateCollator if data.candidates else ValueCollator)(0, labels_only=cfg.labels_only),
    )
    run.loader = run.accelerator.prepare(loader)


def _start_logging(run: _Run, data: _Data) -> None:
    """Phase 5: the loggers (main process only; resuming a wandb run after step 0), the resolved config in
    output_dir and one line of sizes."""
    cfg = run.cfg
    run.logger = (
        build_logger(
            cfg.report_to, run.out, config_to_dict(cfg), cfg.run_name, cfg.wandb, job_type="train", resume=run.step > 0
        )
        if run.is_main
        else MultiLogger([])
    )
    if run.is_main:
        save_resolved_config(cfg, run.out)
        print(
            f"{len(data.train_ds)} train / {len(data.held_ds)} held-out traces; base rate {data.base_rate:.3f}; "
            f"{sum(p.numel() for p in run.params):,} trainable parameters; "
            f"{run.accelerator.num_processes} process(es)" + _cpu_launcher_note(run.accelerator.num_processes)
        )


#: what accelerate's use_cpu launcher exports (accelerate 1.x); it runs one process and exports no process count
_ACCELERATE_USE_CPU = "ACCELERATE_USE_CPU"


def _cpu_launcher_note(num_processes: int) -> str:
    """The note train's start line adds when ``accelerate launch`` ran it with ``use_cpu`` (recipes/accelerate/cpu.yaml,
    ``--cpu``): that launcher starts one process whatever ``num_processes`` says, and tells the script nothing of
    the count asked for, so the note says it always (docs/design.md, "Scale")."""
    if num_processes != 1 or os.environ.get(_ACCELERATE_USE_CPU, "").lower() not in ("true", "1", "yes"):
        return ""
    return (
        " (accelerate's use_cpu launcher runs one process whatever num_processes says; "
        "for N CPU processes: recipes/accelerate/multi_cpu.yaml)"
    )


def _loop(run: _Run, data: _Data) -> None:
    """Phase 6, the training loop (one plain function, docs/style.md item 2): until max_steps, one optimizer
    step over gradient_accumulation_steps micro-batches, then log; evaluate every eval_every steps and
    checkpoint every checkpoint_every steps (at max_steps both are `_final_record`'s)."""
    cfg = run.cfg
    run.model.train()
    raw_model = run.accelerator.unwrap_model(run.model)
    batches = iter(run.loader)
    run.bar = tqdm(total=cfg.max_steps, initial=run.step, disable=not run.is_main, desc="train")
    while run.step < cfg.max_steps:
        t0 = time.perf_counter()
        micro = [next(batches) for _ in range(cfg.gradient_accumulation_steps)]
        run.last_loss, grad_norm = _forward_backward(run, micro, data.signal, raw_model)
        _optimizer_step(run, grad_norm)
        _log_step(run, micro, grad_norm, t0)
        if run.step % cfg.eval_every == 0 and run.step < cfg.max_steps:
            _evaluate(run, data.held_rows)
        if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0 and run.step < cfg.max_steps:
            _save_checkpoint(run)
    run.bar.close()


def _forward_backward(
    run: _Run, micro: list[dict[str, torch.Tensor]], signal: TrainingSignal, raw_model: ValueModel
) -> tuple[float, float]:
    """Forward and backward over one step's micro-batches, the loss normalised by the terms of the whole
    step (`normalise_loss`), then gradient clipping. Returns (the step's mean loss per term, the total
    gradient norm before clipping); both are the same on every process."""
    accelerator, kind, vcfg = run.accelerator, run.kind, run.vcfg
    # number of loss terms in the whole step (all micro-batches, all processes): the normaliser
    n_items = accelerator.reduce(sum(kind.loss_mask(b, vcfg.loss).sum() for b in micro).float(), "sum")
    # candidate labels (docs/design.md, "Candidate labels"): their own mean over the step, weighted, beside the loss
    with_candidates = "candidate_ids" in micro[0]
    with_errors = ERROR_TARGETS in micro[0]  # the error head (docs/design.md, "Error head")
    n_cand = accelerator.reduce(sum(b["candidate_mask"].sum() for b in micro).float(), "sum") if with_candidates else 0
    loss_sum = torch.zeros((), device=accelerator.device)
    for j, batch in enumerate(micro):
        # gradients are all-reduced once, on the last micro-batch of the step
        sync = contextlib.nullcontext() if j == len(micro) - 1 else accelerator.no_sync(run.model)
        with sync, accelerator.autocast():
            ids, mask, plens = batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"]
            if with_candidates:  # one forward pass: the trace's logits and its candidates' Q logits
                logits, cand_logits = run.model(ids, mask, plens, candidate_ids=batch["candidate_ids"])
            elif with_errors:  # one forward pass: the value's logits and the error head's
                logits, error_logits = run.model(ids, mask, plens, error_logits=True)
            else:
                logits = run.model(ids, mask, plens)
            if signal.per_step:  # e.g. TD: λ-returns of the model's own predictions
                batch["targets"] = signal.step_targets(batch, raw_model.values_from_logits(logits))
            ls = kind.value_loss(logits, batch, vcfg.loss, vcfg.margin)
            total = normalise_loss(ls.total, n_items, accelerator.num_processes)
            if with_errors:  # the error head's BCE against the step labels: the kind's loss, over the same positions
                err = kind.value_loss(error_logits, {**batch, "targets": batch[ERROR_TARGETS]}, vcfg.loss)
                total = total + normalise_loss(err.total, n_items, accelerator.num_processes)
            if with_candidates:
                cand_sum, _ = candidate_loss(cand_logits, batch)
                total = total + run.cfg.candidate_weight * normalise_loss(cand_sum, n_cand, accelerator.num_processes)
            accelerator.backward(total)
        loss_sum += ls.total.detach().float()
    loss = float(accelerator.reduce(loss_sum, "sum") / n_items.clamp_min(1))
    # max_norm inf: no clipping, but the total norm (every backend) for the finiteness check
    max_norm = run.cfg.max_grad_norm if run.cfg.max_grad_norm > 0 else math.inf
    return loss, float(accelerator.clip_grad_norm_(run.params, max_norm))


def _optimizer_step(run: _Run, grad_norm: float) -> None:
    """Step the optimiser and the schedule when the loss and the gradient norm are finite; otherwise skip
    the step (skip_nonfinite, at most MAX_NONFINITE_IN_ROW in a row) or raise NonFiniteError. Advances
    the step and the sample stream either way."""
    if math.isfinite(run.last_loss) and math.isfinite(grad_norm):  # the same on every process (reduced)
        run.optimizer.step()
        run.scheduler.step()
        run.in_row = 0
    else:  # never applied: the weights stay those of the last finite step
        bad = [
            f"{name} ({v})"
            for name, v in (("loss", run.last_loss), ("gradient norm", grad_norm))
            if not math.isfinite(v)
        ]
        what = f"non-finite {' and '.join(bad)} at step {run.step + 1}"
        run.skipped, run.in_row = run.skipped + 1, run.in_row + 1
        if not run.cfg.skip_nonfinite:
            raise _stop(run, what)
        if run.in_row > MAX_NONFINITE_IN_ROW:
            raise _stop(run, f"{what}, {run.in_row} such steps in a row (skip_nonfinite allows {MAX_NONFINITE_IN_ROW})")
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.samples_seen += run.samples_per_step
    run.bar.update(1)


def _log_step(run: _Run, micro: list[dict[str, torch.Tensor]], grad_norm: float, t0: float) -> None:
    """Log the step's ``train/...`` figures (tokens per second over every process since `t0`)."""
    tokens = run.accelerator.reduce(sum(b["attention_mask"].sum() for b in micro).float(), "sum")
    run.logger.log(
        {
            "train/loss": run.last_loss,
            "train/lr": run.scheduler.get_last_lr()[0],
            "train/grad_norm": grad_norm,
            "train/tokens_per_s": float(tokens) / (time.perf_counter() - t0),
            "train/samples_seen": run.samples_seen,
            "train/skipped_nonfinite": run.skipped,
        },
        run.step,
    )
    run.bar.set_postfix(loss=f"{run.last_loss:.4f}")


def _evaluate(run: _Run, held_rows: list[dict[str, Any]]) -> dict:
    """Held-out metrics (`evaluate_heldout`) on the main process, logged under ``eval/`` and kept in the
    run's eval_history; returns them (empty on other processes or without held-out traces)."""
    metrics: dict = {}
    if run.is_main and held_rows:
        with run.accelerator.autocast():
            metrics = evaluate_heldout(run.accelerator.unwrap_model(run.model), held_rows, run.cfg.eval_batch_size)
        run.logger.log({f"eval/{k}": v for k, v in metrics.items()}, run.step)
        run.eval_history.append({"step": run.step, **metrics})
    run.accelerator.wait_for_everyone()
    return metrics


def _all_finite(run: _Run) -> bool:
    """Whether every trainable weight on every process is finite."""
    bad = sum(int(not torch.isfinite(p).all()) for p in run.params)
    return float(run.accelerator.reduce(torch.tensor(float(bad), device=run.accelerator.device), "sum")) == 0


def _stop(run: _Run, why: str) -> NonFiniteError:
    """Close the loggers and the progress bar; the error to raise, naming the last good checkpoint."""
    run.logger.finish()
    run.bar.close()
    good = f"the last good checkpoint is {run.last_good}" if run.last_good else "no checkpoint was written"
    return NonFiniteError(
        f"train: {why}; {good}, and final/ was not written (lower lr or max_grad_norm, or set skip_nonfinite=true)"
    )


def _save_checkpoint(run: _Run) -> None:
    """A resumable state in ``checkpoints/step_N`` (accelerate's save_state, weights as safetensors), marked
    complete by its trainer_state.json, written last; older ones rotated. Raises NonFiniteError rather
    than checkpoint non-finite weights in place of good ones."""
    accelerator, cfg, out, step = run.accelerator, run.cfg, run.out, run.step
    ckpt = out / "checkpoints" / f"step_{step}"
    if not _all_finite(run):  # never a checkpoint of broken weights in place of good ones
        raise _stop(run, f"non-finite weights after step {step}")
    if run.is_main:  # incomplete until its state is written again
        (ckpt / _STATE).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(ckpt), safe_serialization=True)  # model weights as safetensors
    if run.is_main:  # the trainer's own state, as JSON, written last: marks the checkpoint complete
        trainer_state = {"step": step, "samples_seen": run.samples_seen, "skipped_nonfinite": run.skipped}
        (ckpt / (_STATE + ".tmp")).write_text(json.dumps(trainer_state) + "\n")
        (ckpt / (_STATE + ".tmp")).replace(ckpt / _STATE)
        _rotate(out / "checkpoints", cfg.keep_checkpoints, ckpt)
        if cfg.log_checkpoints:
            run.logger.log_artifact(_artifact_name(cfg, out, "state"), ckpt, "checkpoint", [f"step_{step}"])
    run.last_good = ckpt
    accelerator.wait_for_everyone()


def _task_step_end(traces: datasets.Dataset) -> str | None:
    """The one text after which a step of the traces' task ends (`Task.step_stops`, built from the traces' own
    `task` and `task_args`); None when the task has none or several, or cannot be built here (unknown, or its
    options name user code, which data does not choose)."""
    if "task" not in traces.column_names or not len(traces) or not traces[0]["task"]:
        return None
    try:
        name = traces[0]["task"]
        text = traces[0]["task_args"] if "task_args" in traces.column_names else None
        args = task_options(name, json.loads(text) if text else {})
        if task_class(name).code_references(args):
            return None
        stops = build_task(name, args).step_stops()
    except (ConfigError, KeyError, OSError, ValueError, TypeError):
        return None
    return stops[0] if stops and len(stops) == 1 else None


def traces_step_format(traces: datasets.Dataset, tokenizer: Any, sample: int = 256) -> StepFormat:
    """How `traces` wrote a prompt and its steps (recorded as the checkpoint's ``step_format.json``; docs/design.md,
    "Checkpoints that travel"): the prompt as collect wrote it (``{prompt}``), the text most often found between
    steps (in the first `sample` traces with several steps, as export measures it), and the task's step end
    (`_task_step_end`; else that separator, else a newline)."""
    joins: Counter[str] = Counter()
    if "step_spans" in traces.column_names:
        for row in traces.select_columns(["completion_ids", "step_spans"]):
            spans = row["step_spans"] or []
            if len(spans) > 1:
                joins.update(step_separator(tokenizer, row["completion_ids"], spans))
                sample -= 1
            if sample <= 0:
                break
    join = joins.most_common(1)[0][0] if joins else "\n"
    end = _task_step_end(traces)
    return StepFormat(
        prompt_template="{prompt}", step_separator=join, step_end=end if end is not None else join or "\n"
    )


def _final_record(run: _Run, data: _Data) -> dict:
    """Phase 7: the final held-out evaluation, the value checkpoint ``final/`` (save_pretrained, split,
    prompt format, tokenizer), final_metrics.json, training.json and the model card. Returns `run`'s result."""
    cfg, out, step = run.cfg, run.out, run.step
    if not _all_finite(run):
        raise _stop(run, f"non-finite weights after step {step}")
    metrics = _evaluate(run, data.held_rows)
    final = out / "final"
    if run.is_main:
        run.accelerator.unwrap_model(run.model).save_pretrained(final)
        data.split_record.save(final)
        runfolder.write_text(
            final / PROMPT_FORMAT_FILE, data.prompt_format.to_json() + "\n"
        )  # how its prompts were tokenised
        step_format = traces_step_format(data.traces, data.tokenizer)  # how its steps were written
        runfolder.write_text(final / STEP_FORMAT_FILE, step_format.to_json() + "\n")
        with contextlib.suppress(OSError, ValueError):  # a tokenizer beside the checkpoint, when the policy has one
            data.tokenizer.save_pretrained(final)
        result = {
            "step": step,
            "checkpoint": str(final),
            "train_loss": run.last_loss,
            "skipped_nonfinite": run.skipped,
            "train_traces": len(data.train_ds),
            "heldout_traces": len(data.held_ds),
            "monitor_traces": len(data.held_rows),
            "monitor_split": data.monitor_side,
            "base_rate": data.base_rate,
            "training_signal": data.signal_info,
            "split": data.split_record.to_dict(),
            **metrics,
        }
        # jsonable: a non-finite figure is written as null, never as a bare NaN
        runfolder.write_text(out / "final_metrics.json", json.dumps(jsonable(result), indent=2) + "\n")
        # training.json and the model card, README.md (docs/design.md, "Checkpoints that travel")
        example = data.held_ds[0] if len(data.held_ds) else None
        write_training_record(final, result, metrics, bool(cfg.labels), example)
        _write_wandb_run(run, final)
    else:
        result = {"step": step, "checkpoint": str(final), **metrics}
    result["eval_history"] = run.eval_history  # not in final_metrics.json (metrics.jsonl has every evaluation)
    if run.is_main and cfg.log_checkpoints:
        run.logger.log_artifact(_artifact_name(cfg, out, "value"), final, "model", ["final", f"step_{step}"])
    run.logger.finish()
    return result


def _write_wandb_run(run: _Run, final: Path) -> None:
    """``final/wandb_run.json``: the wandb run that trained the checkpoint and, with log_checkpoints, its
    artifact, so that evaluate, steer and distrl runs of it link to it (`prefixvalue.tracking.training_run`;
    docs/design.md, "Checkpoints that travel"). Nothing without a wandb run."""
    record = run.logger.wandb_record
    if record is None:
        return
    if run.cfg.log_checkpoints:
        name = wandb_artifact_name(_artifact_name(run.cfg, run.out, "value"))
        record["artifact"] = f"{name}:step_{run.step}"
    runfolder.write_json(final / WANDB_RUN_FILE, record)


def _shutdown(run: _Run) -> None:
    """Phase 8: wait for every process, release the prepared objects and end accelerate's training."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        # Gloo can deadlock at exit: ~ProcessGroupGloo joins its worker thread while holding the GIL,
        # and that thread may still be releasing the last barrier's tensors, which needs the GIL. So
        # let the worker finish (sleep releases the GIL) and drop the DDP model while the group lives.
        time.sleep(0.2)
        accelerator.free_memory()
        run.model = run.optimizer = run.scheduler = run.loader = None
        gc.collect()
    accelerator.end_training()
