"""Train a value model (implicit IPVRM or explicit head) on outcome-labelled traces.

    prefixvalue train --config recipes/configs/arith-tiny.yaml traces=runs/quickstart/traces output_dir=runs/quickstart/train
    accelerate launch -m prefixvalue.cli train --config recipes/configs/arith-tiny.yaml ...
    accelerate launch recipes/train.py --config recipes/configs/arith-tiny.yaml ...   # the same loop

The training loop behind ``prefixvalue train``, ``recipes/train.py`` and the quickstart: one plain
function for 1..N processes (accelerate). It reads top to bottom: config → data split by prompt →
value model → accelerator.prepare → [forward, loss, backward] × accumulation, clip,
step, schedule, log, evaluate, checkpoint. The final value checkpoint (a `save_pretrained` folder)
is ``output_dir/final``; resumable states are ``output_dir/checkpoints/step_N``. A killed run
restarted with the same command resumes from the last complete checkpoint and ends where an
uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..config import ConfigError, config_to_dict, field, parse_config, save_resolved_config
from ..data import SplitRecord, load_labels, load_traces, split_by_prompt
from ..data.collate import ResumableSampler, ValueCollator, attach_prefix_labels
from ..loading import ModelLoadConfig, check_vocabulary, traces_policy
from ..policies import load_causal_lm, load_tokenizer
from ..prompting import PROMPT_FORMAT_FILE, traces_prompt_format
from ..tracking import MultiLogger, build_logger
from ..value import ValueModelConfig, build_value_model, check_value_config, normalise_loss, value_model_class
from ..value.heldout import evaluate_heldout
from ..value.targets import SIGNALS, attach_sibling_targets, td_lambda_targets


@dataclass
class TrainConfig(ModelLoadConfig):
    """Train a value model on traces (see docs/design.md: implicit prefix value, explicit value head).

    Mixed precision is accelerate's setting (the accelerate config file, ``accelerate launch
    --mixed_precision bf16`` or ACCELERATE_MIXED_PRECISION); in-process callers train without it.
    """

    traces: str = field("", help="traces dataset folder (written by `prefixvalue collect`)")
    labels: str | None = field(None, help="optional prefix-labels folder: soft MC labels used as float targets")
    labels_only: bool = field(
        False, help="with labels: train only on labelled positions (else `signal` fills the rest)"
    )
    signal: str = field(
        "outcome",
        help="target of prefixes without an MC label: outcome (the trace's), siblings (mean outcome of the "
        "prompt's traces through the prefix), td (λ-return of the model's own later predictions)",
    )
    td_lambda: float = field(0.8, help="signal=td: λ of the λ-return (1 = outcome only, 0 = TD(0))")
    policy: str | None = field(
        None,
        help="reference policy name or path (default: value_model.base_model, else the traces' `model` column "
        "with its recorded loading options); must be the traces' model unless allow_other_policy=true",
    )
    allow_other_policy: bool = field(
        False, help="let the policy differ from the model that wrote the traces (another policy's values)"
    )
    output_dir: str = field("runs/train", help="run folder: config, metrics.jsonl, checkpoints/, final/")
    value_model: ValueModelConfig = field(
        default_factory=ValueModelConfig,
        help="the value model: value_model.kind=implicit|head, value_model.beta=10, ...",
    )
    heldout_fraction: float = field(
        0.2, help="fraction of prompts held out (split by normalised prompt text, prefixvalue.data.is_heldout)"
    )
    split_seed: int = field(0, help="seed of the prompt split (recorded in final/split.json, which evaluate reads)")
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
    eval_every: int = field(50, help="evaluate on held-out traces every this many steps (and at the end)")
    eval_batch_size: int = field(32, help="traces per evaluation batch")
    max_eval_traces: int = field(0, help="cap on held-out traces per evaluation (0: all)")
    checkpoint_every: int = field(100, help="save_state every this many steps (0: only at the end)")
    keep_checkpoints: int = field(2, help="how many recent checkpoints to keep")
    resume: bool = field(True, help="resume from the last complete checkpoint in output_dir/checkpoints")
    seed: int = field(0, help="seed for initialisation and data order")
    report_to: str = field("disk,stdout", help="loggers: disk, stdout, wandb, none (comma separated)")
    run_name: str | None = field(None, help="wandb run name")
    threads: int = field(0, help="torch CPU threads per process (0: torch's default)")

    def __post_init__(self) -> None:
        if self.max_steps <= 0 or self.per_device_batch_size <= 0 or self.gradient_accumulation_steps <= 0:
            raise ConfigError("max_steps, per_device_batch_size and gradient_accumulation_steps must be positive")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ConfigError("heldout_fraction must be in [0, 1)")
        if self.eval_every <= 0:
            raise ConfigError("eval_every must be positive")
        if self.device_map is not None:
            raise ConfigError("train places the model with accelerate: device_map is for collect, label and evaluate")
        if self.signal not in SIGNALS:
            raise ConfigError(f"signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if not 0.0 <= self.td_lambda <= 1.0:
            raise ConfigError(f"td_lambda must be in [0, 1], got {self.td_lambda}")
        if self.labels_only and not self.labels:
            raise ConfigError("labels_only=true needs labels=DIR (MC labels of training prefixes)")
        if self.signal != "outcome" and self.labels_only:
            raise ConfigError(f"labels_only=true trains on MC labels alone: signal={self.signal} would fill nothing")
        if self.signal != "outcome" and self.value_model.loss == "sequence":
            raise ConfigError("the sequence loss trains on the outcome alone: use signal=outcome with loss=sequence")
        try:  # the kind's own rules (e.g. the implicit model cannot train a full backbone)
            check_value_config(self.value_model)
        except ValueError as exc:
            raise ConfigError(f"value_model: {exc}") from None


def latest_checkpoint(folder: Path) -> tuple[Path, int] | None:
    """Newest complete checkpoint (its trainer_state.json is written last) and its step."""
    done = [(int(p.name.split("_")[1]), p) for p in folder.glob("step_*") if (p / "trainer_state.json").exists()]
    return (max(done)[1], max(done)[0]) if done else None


def main(argv: list[str] | None = None) -> int:
    """Run ``prefixvalue train`` (or ``recipes/train.py``) from the command line; returns the exit
    status. The final metrics are in output_dir/final_metrics.json; `run` returns them."""
    run(parse_config(TrainConfig, argv, prog="prefixvalue train"))
    return 0


def run(cfg: TrainConfig) -> dict:
    """Train with a config object (what `main` and the quickstart call). Returns the final metrics,
    with ``eval_history``: ``{"step", **held-out metrics}`` for every held-out evaluation, the final
    one included (on the main process; empty on the others)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # mixed precision comes from accelerate (config file / --mixed_precision / env), default none;
    # we normalise the loss by the items in the whole step ourselves, so accelerate must not divide by
    # the accumulation steps, nor step the scheduler once per process
    # cpu=True without a GPU lets torchrun / accelerate launch on CPU processes use gloo (MULTI_CPU)
    accelerator = Accelerator(step_scheduler_with_optimizer=False, cpu=not torch.cuda.is_available())
    is_main = accelerator.is_main_process
    out = Path(cfg.output_dir)
    set_seed(cfg.seed)

    # ---- data: split by prompt text, so no prompt's traces straddle train and held-out -------------
    if not cfg.traces:
        raise ConfigError("traces=DIR is required (a dataset written by `prefixvalue collect`)")
    traces = load_traces(cfg.traces)
    if cfg.labels:
        traces = attach_prefix_labels(traces, load_labels(cfg.labels))
    if cfg.max_length:
        n_before = len(traces)
        traces = traces.filter(lambda r: len(r["prompt_ids"]) + len(r["completion_ids"]) <= cfg.max_length)
        if is_main and len(traces) < n_before:
            print(f"dropped {n_before - len(traces)} traces longer than max_length={cfg.max_length}")
    policy, load = traces_policy(
        traces, cfg.policy or cfg.value_model.base_model or None, cfg.load_options(), cfg.allow_other_policy, "train"
    )
    tokenizer = load_tokenizer(policy, load)
    prompt_format = traces_prompt_format(traces)
    cols = [c for c in ("prompt_ids", "completion_ids", "outcome", "prefix_targets") if c in traces.column_names]
    train_ds, held_ds = split_by_prompt(traces, cfg.heldout_fraction, cfg.split_seed)
    # the split travels with the checkpoint (final/split.json), which evaluate reads back
    split_record = SplitRecord.from_prompts(train_ds["prompt"], cfg.heldout_fraction, cfg.split_seed)
    if cfg.labels_only:  # only labelled traces carry a loss term: keep the batches full of them
        train_ds = train_ds.filter(lambda r: any(v is not None and v == v for v in r["prefix_targets"] or []))
        if len(train_ds) == 0:
            raise ConfigError("labels_only=true but no training trace has an MC label (label with prompts=train)")
    signal_info: dict = {"signal": cfg.signal}
    if cfg.signal == "siblings":  # from the training traces only: held-out outcomes never enter a target
        train_ds, signal_info["siblings"] = attach_sibling_targets(train_ds)
    elif cfg.signal == "td":
        signal_info["td_lambda"] = cfg.td_lambda
    train_ds = train_ds.select_columns([c for c in (*cols, "prefix_targets") if c in train_ds.column_names])
    train_ds = train_ds.with_format(None)
    held_rows = held_ds.select_columns(cols).to_list()[: cfg.max_eval_traces or None]
    if len(train_ds) == 0:
        raise ConfigError(f"no training traces left after holding out {cfg.heldout_fraction:.0%} of prompts")
    # P̂ at the bare prompt for the implicit model; clipped so its logit stays finite
    base_rate = min(max(sum(train_ds["outcome"]) / len(train_ds), 1e-3), 1 - 1e-3)

    # ---- model and optimiser ----------------------------------------------------------------------
    backbone = load_causal_lm(policy, cfg.model_dtype, accelerator.device, load)
    check_vocabulary(tokenizer, traces, "train", backbone.get_output_embeddings().weight.shape[0])
    vcfg = dataclasses.replace(cfg.value_model, base_model=policy, base_load=load.record(), base_rate=base_rate)
    kind = value_model_class(vcfg.kind)  # what differs between kinds: trained positions, loss readout
    model = build_value_model(vcfg, backbone)
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

    # ---- resume: model, optimiser, scheduler and RNG from the last complete checkpoint ------------
    step = 0
    found = latest_checkpoint(out / "checkpoints") if cfg.resume else None
    if found:
        accelerator.load_state(str(found[0]))
        step = found[1]
        if is_main:
            print(f"resumed from {found[0]} (step {step})")

    # the sample stream restarts exactly where the checkpoint left it (see ResumableSampler)
    samples_per_step = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
    sampler = ResumableSampler(
        len(train_ds), cfg.seed, start=step * samples_per_step, stop=max(cfg.max_steps, step) * samples_per_step
    )
    loader = accelerator.prepare(
        DataLoader(
            train_ds,
            batch_size=cfg.per_device_batch_size,
            sampler=sampler,
            collate_fn=ValueCollator(0, labels_only=cfg.labels_only),
        )
    )

    logger = (
        build_logger(cfg.report_to, out, config_to_dict(cfg), run_name=cfg.run_name) if is_main else MultiLogger([])
    )
    if is_main:
        save_resolved_config(cfg, out)
        print(
            f"{len(train_ds)} train / {len(held_ds)} held-out traces; base rate {base_rate:.3f}; "
            f"{sum(p.numel() for p in params):,} trainable parameters; {accelerator.num_processes} process(es)"
        )

    eval_history: list[dict] = []

    def evaluate() -> dict:
        metrics: dict = {}
        if is_main and held_rows:
            with accelerator.autocast():
                metrics = evaluate_heldout(accelerator.unwrap_model(model), held_rows, cfg.eval_batch_size)
            logger.log({f"eval/{k}": v for k, v in metrics.items()}, step)
            eval_history.append({"step": step, **metrics})
        accelerator.wait_for_everyone()
        return metrics

    # ---- the loop ---------------------------------------------------------------------------------
    model.train()
    raw_model = accelerator.unwrap_model(model)
    batches = iter(loader)
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not is_main, desc="train")
    loss_type, margin = vcfg.loss, vcfg.margin
    last_loss = float("nan")
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        micro = [next(batches) for _ in range(cfg.gradient_accumulation_steps)]
        # number of loss terms in the whole step (all micro-batches, all processes): the normaliser
        n_items = accelerator.reduce(sum(kind.loss_mask(b, loss_type).sum() for b in micro).float(), "sum")
        loss_sum = torch.zeros((), device=accelerator.device)
        for j, batch in enumerate(micro):
            # gradients are all-reduced once, on the last micro-batch of the step
            sync = contextlib.nullcontext() if j == len(micro) - 1 else accelerator.no_sync(model)
            with sync, accelerator.autocast():
                logits = model(batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
                if cfg.signal == "td":  # λ-returns of the model's own predictions, MC labels kept where given
                    td = td_lambda_targets(
                        raw_model.values_from_logits(logits),
                        batch["outcome"],
                        batch["completion_lengths"],
                        cfg.td_lambda,
                    )
                    batch["targets"] = torch.where(batch["label_mask"], batch["targets"], td)
                ls = kind.value_loss(logits, batch, loss_type, margin)
                accelerator.backward(normalise_loss(ls.total, n_items, accelerator.num_processes))
            loss_sum += ls.total.detach().float()
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)

        tokens = accelerator.reduce(sum(b["attention_mask"].sum() for b in micro).float(), "sum")
        last_loss = float(accelerator.reduce(loss_sum, "sum") / n_items.clamp_min(1))
        logger.log(
            {
                "train/loss": last_loss,
                "train/lr": scheduler.get_last_lr()[0],
                "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "train/tokens_per_s": float(tokens) / (time.perf_counter() - t0),
                "train/samples_seen": step * samples_per_step,
            },
            step,
        )
        bar.set_postfix(loss=f"{last_loss:.4f}")
        if step % cfg.eval_every == 0 and step < cfg.max_steps:
            evaluate()
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            ckpt = out / "checkpoints" / f"step_{step}"
            accelerator.save_state(str(ckpt))
            if is_main:  # written last: marks the checkpoint complete
                (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}) + "\n")
                done = sorted((int(p.name.split("_")[1]), p) for p in (out / "checkpoints").glob("step_*"))
                for _, old in done[: max(0, len(done) - cfg.keep_checkpoints)]:
                    shutil.rmtree(old, ignore_errors=True)
            accelerator.wait_for_everyone()
    bar.close()

    # ---- final: held-out metrics and the value checkpoint (save_pretrained folder) ----------------
    metrics = evaluate()
    final = out / "final"
    if is_main:
        accelerator.unwrap_model(model).save_pretrained(final)
        split_record.save(final)
        (final / PROMPT_FORMAT_FILE).write_text(prompt_format.to_json() + "\n")  # how its prompts were tokenised
        with contextlib.suppress(OSError, ValueError):  # a tokenizer beside the checkpoint, when the policy has one
            tokenizer.save_pretrained(final)
        result = {
            "step": step,
            "checkpoint": str(final),
            "train_loss": last_loss,
            "train_traces": len(train_ds),
            "heldout_traces": len(held_rows),
            "base_rate": base_rate,
            "training_signal": signal_info,
            "split": split_record.to_dict(),
            **metrics,
        }
        (out / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    else:
        result = {"step": step, "checkpoint": str(final), **metrics}
    result["eval_history"] = eval_history  # not in final_metrics.json (metrics.jsonl has every evaluation)
    logger.finish()
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        # Gloo can deadlock at exit: ~ProcessGroupGloo joins its worker thread while holding the GIL,
        # and that thread may still be releasing the last barrier's tensors, which needs the GIL. So
        # let the worker finish (sleep releases the GIL) and drop the DDP model while the group lives.
        time.sleep(0.2)
        accelerator.free_memory()
        del model, optimizer, scheduler, loader
        gc.collect()
    accelerator.end_training()
    return result
