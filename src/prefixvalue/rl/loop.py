"""``prefixvalue distrl``: online RL of a policy with outcome, TD or DistRL advantages (docs/design.md, "DistRL").

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/distrl.py advantage=distrl value=checkpoint value_checkpoint=runs/quickstart/train_qhead-siblings/final out=runs/distrl/qhead
    prefixvalue distrl advantage=outcome split_from=runs/quickstart/train_qhead-siblings/final out=runs/distrl/grpo

One plain loop, read top to bottom in `run` → `_train`: each step draws ``prompts_per_step`` training prompts
(the training side of the split recorded by ``split_from``, default the value checkpoint), samples
``num_generations`` completions of each with the current policy, verifies them, gives every completion token an
advantage (`prefixvalue.rl.objective`: ``outcome`` = GRPO, ``td``, ``distrl``) from the value source
(`prefixvalue.rl.values`: a checkpoint, or Monte Carlo at step starts), and takes one optimiser step. The run
stops when the sampled tokens (the policy's completions, plus the Monte Carlo continuations of ``value=mc``) reach
``max_sampled_tokens``, or after ``max_steps``.

Every ``eval_every`` steps, and at the end, the policy is scored on ``eval_prompts`` prompts of the split's
``eval_split`` side (test for figures, validation for choices) × ``eval_samples`` samples
(`prefixvalue.rl.evaluation`), with its KL from the start policy. OUT holds config.yaml, metrics.jsonl (per
step), evals.jsonl (per evaluation, with per-prompt scores for paired comparisons), distrl.json (the curve and
the run's totals), checkpoints/step_N (resumable states: accelerate's save_state, safetensors) and final/ (the
policy, save_pretrained). A killed run restarted with the same command resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from .. import runfolder
from ..config import ConfigError, RawMapping, config_to_dict, field, parse_config, save_resolved_config
from ..data import load_split
from ..data.collate import collated_batches
from ..loading import ModelLoadConfig
from ..policies import load_policy
from ..prompting import choose_prompt_format
from ..sampling.hf import HFSampler
from ..sampling.sampler import SamplingParams
from ..steering.engine import Judge
from ..tasks import build_task, task_configs
from ..tasks.base import Prompt
from ..tracking import WandbConfig, build_logger, truncate_metrics
from ..training import checkpoint_problem, complete_checkpoints, rng_state_problem
from ..value import ValueEnsemble, load_value_model
from ..value.base import completion_logits
from .evaluation import eval_line, evaluate_policy, write_evals, write_result
from .objective import ARMS, group_advantages, policy_loss, reward_scale
from .values import CheckpointValues, MCValues, Rollouts

#: the top-level names a run writes into OUT (the run-folder contract, `prefixvalue.runfolder`)
OUTPUTS = (
    runfolder.CONFIG_FILE,
    *runfolder.LOGGER_OUTPUTS,
    "evals.jsonl",
    "distrl.json",
    "checkpoints",
    "final",
)
#: keys a resumed run may change: how long it runs and how it reports
RERUN_KEYS = runfolder.RERUN_KEYS | {
    "max_steps",
    "max_sampled_tokens",
    "checkpoint_every",
    "keep_checkpoints",
    "threads",
    "resume",
}
PATH_KEYS = ("policy", "value_checkpoint", "split_from")
#: the trainer's own state in a checkpoint, written last (marks it complete; `prefixvalue.training`'s name)
STATE_FILE = "trainer_state.json"
VALUE_SOURCES = ("checkpoint", "mc", "none")


@dataclass
class DistRLConfig(ModelLoadConfig):
    """Online RL of a policy with outcome (GRPO), TD or DistRL advantages from a value model."""

    out: str | None = field(None, help="output folder (metrics.jsonl, evals.jsonl, distrl.json, final/)")
    policy: str = field(
        "data/policies/arith-tiny", help="the policy to improve (hub name, local folder)", synonyms=("model",)
    )
    advantage: str = field(
        "distrl",
        help="outcome (GRPO) | td (dense TD on sampled tokens) | distrl (td + candidates) | outcome-distrl (GRPO + "
        "candidates)",
    )
    value: str = field("checkpoint", help="value source for td/distrl: checkpoint | mc (Monte Carlo at step starts)")
    value_checkpoint: str | None = field(None, help="value checkpoint (value=checkpoint); its split decides prompts")
    split_from: str | None = field(
        None, help="folder with split.json deciding training / held-out prompts (default: value_checkpoint)"
    )
    task: str = field("arith", help="task name in prefixvalue.tasks.TASKS")
    task_args: RawMapping = field(
        default_factory=RawMapping, help="options of the task's config (task_args.NAME=VALUE)", configs=task_configs
    )
    prompt_split: str = field("test", help="task split the prompts come from (the value checkpoint's pool)")
    num_prompts: int = field(2000, help="first N prompts of prompt_split, before the split filter")
    num_generations: int = field(8, help="G: completions per prompt (GRPO's group)")
    prompts_per_step: int = field(8, help="prompts per optimiser step (all processes together)")
    candidates: int = field(5, help="distrl: the policy's top-k candidate tokens at each position")
    candidate_coef: float = field(0.1, help="distrl: coefficient c of the candidate term")
    mc_samples: int = field(4, help="value=mc: continuations per prefix (counted in the sampled tokens)")
    learning_rate: float = field(1e-4, help="AdamW learning rate (constant)")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    max_grad_norm: float = field(1.0, help="gradient clipping (TRL's default 1.0)")
    epsilon: float = field(0.2, help="PPO clipping of the ratio to the sampling policy (TRL's default)")
    beta: float = field(0.0, help="KL coefficient to the start policy in the loss (TRL's default 0)")
    temperature: float = field(1.0, help="sampling temperature")
    max_new_tokens: int = field(64, help="longest completion, in tokens")
    fail_truncated: bool = field(True, help="a completion cut off at max_new_tokens scores 0 (as in collect)")
    max_steps: int = field(200, help="upper bound on optimiser steps")
    max_sampled_tokens: int = field(100_000, help="stop once this many tokens were sampled (0: max_steps only)")
    eval_every: int = field(10, help="evaluate every this many steps (and at step 0 and the end)")
    eval_split: str = field("test", help="side of the split the evaluation prompts are on: test | validation")
    eval_prompts: int = field(300, help="evaluation prompts (the first on eval_split)")
    eval_samples: int = field(4, help="samples per evaluation prompt")
    eval_seed: int = field(1234, help="sampling seed of the evaluations (the same for every arm: paired draws)")
    refresh_lr: float = field(0.0, help="> 0: refresh the value checkpoint online on each batch's outcomes (AdamW)")
    refresh_steps: int = field(1, help="value refresh: optimiser steps per policy step")
    value_batch_size: int = field(64, help="sequences per value-model forward")
    seed: int = field(0, help="seed of prompt order and sampling")
    checkpoint_every: int = field(10, help="save a resumable state every this many steps (0: at evaluations only)")
    keep_checkpoints: int = field(1, help="resumable states kept")
    resume: bool = field(True, help="resume from the last complete checkpoint in OUT/checkpoints")
    threads: int = field(0, help="torch CPU threads (0: leave torch's default)")
    device: str | None = field(None, help="torch device (default: accelerate's: cuda if present, else cpu)")
    report_to: str = field("disk", help="disk, stdout, wandb (comma-separated) or none")
    run_name: str | None = field(None, help="name of the wandb run")
    wandb: WandbConfig = field(default_factory=WandbConfig, help="where the wandb run goes")
    chat_template: bool | None = field(
        None, help="wrap prompts in the tokenizer's chat template (None: when it has one)"
    )
    system_prompt: str | None = field(None, help="system message with the chat template", escapes=True)

    def __post_init__(self) -> None:
        if self.advantage not in ARMS:
            raise ConfigError(f"advantage must be one of {', '.join(ARMS)}; got {self.advantage!r}")
        if self.value not in VALUE_SOURCES:
            raise ConfigError(f"value must be one of {', '.join(VALUE_SOURCES)}; got {self.value!r}")
        if self.advantage != "outcome" and self.value == "none":
            raise ConfigError(f"advantage={self.advantage} needs a value: value=checkpoint or value=mc")
        if self.value == "checkpoint" and self.advantage != "outcome" and not self.value_checkpoint:
            raise ConfigError("value=checkpoint needs value_checkpoint=PATH")
        if self.refresh_lr > 0 and (self.value != "checkpoint" or self.advantage == "outcome"):
            raise ConfigError("refresh_lr > 0 refreshes a value checkpoint: it needs value=checkpoint and td/distrl")
        if self.eval_split not in ("test", "validation"):
            raise ConfigError(f"eval_split must be test or validation; got {self.eval_split!r}")
        for name in ("num_generations", "prompts_per_step", "max_steps", "eval_prompts", "eval_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.num_generations < 2 and self.advantage.startswith("outcome"):
            raise ConfigError("advantage=outcome (GRPO) needs num_generations >= 2")
        if self.advantage.endswith("distrl") and self.candidates < 1:
            raise ConfigError("advantage=distrl needs candidates >= 1")
        if not 0.0 <= self.epsilon < 1.0 or self.beta < 0 or self.learning_rate <= 0:
            raise ConfigError("need 0 <= epsilon < 1, beta >= 0 and learning_rate > 0")

    @property
    def uses_value(self) -> bool:
        return self.advantage != "outcome"

    @property
    def split_path(self) -> str | None:
        return self.split_from or (self.value_checkpoint if self.value == "checkpoint" else None)


# ------------------------------------------------------------------------------------------ prompts
def split_prompts(cfg: DistRLConfig, task: Any) -> tuple[list[Prompt], list[Prompt], dict[str, Any]]:
    """(training prompts, evaluation prompts, what was checked): prompts of ``prompt_split`` on the training side
    of the recorded split, and the first ``eval_prompts`` on its ``eval_split`` side. ConfigError when no split
    is recorded (held-out accuracy needs prompts nobody trained on)."""
    path = cfg.split_path
    if path is None:
        raise ConfigError("distrl: give split_from=PATH (a value checkpoint or labels folder with split.json)")
    rec = load_split(Path(path))
    if rec is None:
        raise ConfigError(f"distrl: {path} records no split (split.json); its held-out prompts are unknown")
    if cfg.value == "checkpoint" and cfg.value_checkpoint and cfg.split_from:
        other = load_split(Path(cfg.value_checkpoint))
        if other is None or not other.same_split(rec):
            raise ConfigError(f"distrl: {cfg.value_checkpoint} was not trained on the split of {cfg.split_from}")
    prompts = list(task.prompts(cfg.num_prompts, cfg.prompt_split))
    train = [p for p in prompts if rec.side(p.text) == "train"]
    held = [p for p in prompts if rec.side(p.text) == cfg.eval_split][: cfg.eval_prompts]
    if not train or not held:
        raise ConfigError(
            f"distrl: {len(train)} training and {len(held)} {cfg.eval_split} prompts among the first "
            f"{cfg.num_prompts} of split {cfg.prompt_split!r}"
        )
    info = {"split_from": str(path), "drawn": len(prompts), "train": len(train), "eval": len(held)}
    info["eval_split"] = cfg.eval_split
    return train, held, info


def step_prompts(train: Sequence[Prompt], step: int, per_step: int, seed: int) -> list[Prompt]:
    """The prompts of optimiser step `step`: consecutive slices of a seeded shuffle of `train`, reshuffled each
    pass (a pure function of the step, so a resumed run draws what the uninterrupted one would)."""
    n = len(train)
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(k, n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(train[int(order[i])])
    return out


# ------------------------------------------------------------------------------------------ the run
@dataclass
class _Run:
    cfg: DistRLConfig
    accelerator: Accelerator
    out: Path
    policy: Any
    reference: Any
    tokenizer: Any
    optimizer: Any
    task: Any
    judge: Judge
    source: CheckpointValues | MCValues | None
    encode: Any
    step: int = 0
    sampled_tokens: int = 0  # the policy's completions (all processes)
    value_tokens: int = 0  # Monte Carlo continuations of value=mc (all processes)
    seconds: float = 0.0
    logger: Any = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def budget_tokens(self) -> int:
        return self.sampled_tokens + self.value_tokens


def run(cfg: DistRLConfig) -> dict[str, Any]:
    """Train with a config object (what the CLI, recipes/distrl.py and the benchmark call); returns distrl.json."""
    # without a GPU, CPU processes (gloo) under torchrun / accelerate launch, as in training
    accelerator = Accelerator(cpu=cfg.device == "cpu" or (cfg.device is None and not torch.cuda.is_available()))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.out is None:
        raise ConfigError("distrl: give out=FOLDER")
    out = Path(cfg.out)
    folder = None
    if accelerator.is_main_process:
        folder = runfolder.claim(out, "distrl", cfg, outputs=OUTPUTS, rerun_keys=RERUN_KEYS, path_keys=PATH_KEYS)
        save_resolved_config(cfg, out)
    accelerator.wait_for_everyone()
    try:
        result = _train(cfg, accelerator, out)
        if folder is not None:
            folder.finish()  # last: the record says complete once final/, evals.jsonl and distrl.json are in place
    finally:
        if folder is not None:
            folder.release()
    return result


def _build(cfg: DistRLConfig, accelerator: Accelerator, out: Path) -> tuple[_Run, list[Prompt], list[Prompt], dict]:
    task = build_task(cfg.task, cfg.task_args)
    train, held, info = split_prompts(cfg, task)
    device = accelerator.device
    policy, tok = load_policy(cfg.policy, "float32", device, cfg.load_options())
    reference, _ = load_policy(cfg.policy, "float32", device, cfg.load_options(), tokenizer=tok)
    for m in (policy, reference):  # dropout off (TRL's disable_dropout): the update's ratio is exactly 1
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    reference.requires_grad_(False)
    fmt = choose_prompt_format(tok, cfg.chat_template, cfg.system_prompt)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    policy.train()
    policy, optimizer = accelerator.prepare(policy, optimizer)
    judge = Judge(task, tok, cfg.fail_truncated)
    source: CheckpointValues | MCValues | None = None
    if cfg.uses_value and cfg.value == "checkpoint":
        model = load_value_model(str(cfg.value_checkpoint), device=str(device), options=cfg.load_options())
        if cfg.refresh_lr > 0 and isinstance(model, ValueEnsemble):
            raise ConfigError(
                f"distrl: refresh_lr > 0 trains the value checkpoint, and {cfg.value_checkpoint} is an ensemble: give "
                "one of its members, or refresh_lr=0"
            )
        model.eval()
        if model.tokenizer.get_vocab() != tok.get_vocab():  # the value reads the policy's token ids
            raise ConfigError(f"distrl: {cfg.value_checkpoint} has another vocabulary than the policy {cfg.policy}")
        source = CheckpointValues(model, cfg.value_batch_size, cfg.refresh_lr, cfg.refresh_steps)
        if cfg.refresh_lr > 0:
            accelerator.register_for_checkpointing(model, source.optimizer)
    elif cfg.uses_value:
        sampler = HFSampler(accelerator.unwrap_model(policy), tok, tree_attention=False)
        source = MCValues(sampler, tok, task, _params(cfg, cfg.seed + 7919), cfg.mc_samples, cfg.fail_truncated)
    r = _Run(cfg, accelerator, out, policy, reference, tok, optimizer, task, judge, source, fmt)
    return r, train, held, info


def _params(cfg: DistRLConfig, seed: int) -> SamplingParams:
    return SamplingParams(cfg.temperature, 1.0, 0, cfg.max_new_tokens, (), seed)


def _train(cfg: DistRLConfig, accelerator: Accelerator, out: Path) -> dict[str, Any]:
    r, train, held, info = _build(cfg, accelerator, out)
    state = _resume(r)
    evals: list[dict[str, Any]] = state.get("evals", [])
    if r.is_main:
        ckpts = [cfg.value_checkpoint] if cfg.uses_value and cfg.value == "checkpoint" else []  # linked to its training
        r.logger = build_logger(
            cfg.report_to, out, config_to_dict(cfg), cfg.run_name, cfg.wandb, "distrl", r.step > 0, checkpoints=ckpts
        )
        print(
            f"distrl: advantage={cfg.advantage} value={cfg.value if cfg.uses_value else 'none'}; {info['train']} "
            f"training / {info['eval']} {cfg.eval_split} prompts; from step {r.step}",
            flush=True,
        )
    held_enc = [(p, r.encode.encode(r.tokenizer, p.text)) for p in held]
    if not evals:
        evals.append(_evaluate(r, held_enc))
    while r.step < cfg.max_steps and not (cfg.max_sampled_tokens and r.budget_tokens >= cfg.max_sampled_tokens):
        t0 = time.perf_counter()
        metrics = _step(r, step_prompts(train, r.step, cfg.prompts_per_step, cfg.seed))
        r.step += 1
        r.seconds += time.perf_counter() - t0
        metrics.update(sampled_tokens=r.sampled_tokens, value_tokens=r.value_tokens, seconds=r.seconds)
        if r.is_main:
            r.logger.log(metrics, r.step)
        done = r.step >= cfg.max_steps or (cfg.max_sampled_tokens and r.budget_tokens >= cfg.max_sampled_tokens)
        if r.step % cfg.eval_every == 0 or done:
            evals.append(_evaluate(r, held_enc))
            _save(r, evals)
        elif cfg.checkpoint_every and r.step % cfg.checkpoint_every == 0:
            _save(r, evals)
    return _finish(r, evals, info)


def _step(r: _Run, prompts: list[Prompt]) -> dict[str, float]:
    """One optimiser step: sample, verify, advantages, loss, update. Returns the step's metrics."""
    cfg, acc = r.cfg, r.accelerator
    mine = prompts[acc.process_index :: acc.num_processes]
    policy = acc.unwrap_model(r.policy)
    policy.eval()
    sampler = HFSampler(policy, r.tokenizer, tree_attention=False)
    rows = [(p, r.encode.encode(r.tokenizer, p.text), j) for p in mine for j in range(cfg.num_generations)]
    gens = sampler.generate(
        [ids for _, ids, _ in rows], [f"{p.prompt_id}/step{r.step}/g{j}" for p, _, j in rows], _params(cfg, cfg.seed)
    )
    policy.train()
    rewards = torch.tensor([r.judge.score(p, g.token_ids, g.finish_reason) for (p, _, _), g in zip(rows, gens)])
    batch = Rollouts(
        [p for p, _, _ in rows], [list(ids) for _, ids, _ in rows], [list(g.token_ids) for g in gens], rewards
    )
    new_tokens = int(acc.reduce(torch.tensor(sum(len(c) for c in batch.completion_ids)), "sum"))
    all_rewards = acc.gather(rewards)

    logp_all, comp, cmask = completion_logprobs(r.policy, batch, acc.device)
    tmax = comp.shape[1]
    logprobs = torch.gather(logp_all, 2, comp[..., None])[..., 0]

    metrics: dict[str, float] = {"reward": float(all_rewards.float().mean())}
    cand_probs = cand_adv = None
    if cfg.advantage.startswith("outcome"):
        adv = group_advantages(rewards, cfg.num_generations)[:, None].expand(-1, tmax).to(acc.device)
    if cfg.uses_value:
        assert r.source is not None
        before = r.source.sampled_tokens if isinstance(r.source, MCValues) else 0
        scale = reward_scale(all_rewards.float())
        td = r.source.sampled_advantages(batch)  # also the prefix values the candidates' advantages start from
        if not cfg.advantage.startswith("outcome"):
            adv = torch.zeros(len(batch), tmax, dtype=torch.float64)
            for i, a in enumerate(td):
                adv[i, : len(a)] = a
            adv = (adv / scale).to(acc.device)
            metrics["td_abs_mean"] = float((adv.abs() * cmask.double()).sum() / cmask.sum())
        if cfg.advantage.endswith("distrl"):
            cand_probs, cand_adv = _candidates(r, batch, logp_all, comp, cmask, scale)
            metrics["candidate_adv_mean"] = float(cand_adv.sum() / max(1.0, float((cand_adv != 0).sum())))
        if isinstance(r.source, MCValues):
            r.value_tokens += int(acc.reduce(torch.tensor(r.source.sampled_tokens - before), "sum"))
    n_tokens = float(acc.reduce(cmask.sum(), "sum")) / acc.num_processes
    ref_logprobs = None
    if cfg.beta > 0:
        with torch.no_grad():
            ref_logprobs = torch.gather(completion_logprobs(r.reference, batch, acc.device)[0], 2, comp[..., None])[
                ..., 0
            ]
    loss, parts = policy_loss(
        logprobs,
        logprobs.detach(),
        adv,
        cmask,
        cfg.epsilon,
        cand_probs,
        cand_adv,
        cfg.candidate_coef,
        ref_logprobs,
        cfg.beta,
        n_tokens,
    )
    r.optimizer.zero_grad(set_to_none=True)
    acc.backward(loss)
    grad_norm = float(acc.clip_grad_norm_(r.policy.parameters(), cfg.max_grad_norm))
    if math.isfinite(grad_norm):
        r.optimizer.step()
    r.sampled_tokens += new_tokens
    if r.source is not None and cfg.refresh_lr > 0:
        refresh = r.source.refresh(batch)
        if refresh is not None:
            metrics["value_refresh_loss"] = refresh
    metrics.update(loss=float(loss.detach()), grad_norm=grad_norm, completion_tokens=n_tokens, **parts)
    return metrics


def completion_logprobs(model: Any, batch: Rollouts, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward of `model` over the batch (right-padded prompt ⊕ completion, with grad when enabled):
    log π(·|s_t) at every completion position [B, T, V], the completion ids [B, T] (0 on padding) and their mask."""
    _, b = next(collated_batches(batch.prompt_ids, batch.completion_ids, len(batch), device))
    ids, mask, lengths = b["input_ids"], b["attention_mask"], b["completion_lengths"]
    tmax = int(lengths.max())
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    step_logits, comp = completion_logits(logits, ids, b["prompt_lengths"], tmax)  # [B, T, V], [B, T]
    cmask = (torch.arange(tmax, device=lengths.device)[None, :] < lengths[:, None]).float()
    return torch.log_softmax(step_logits, -1), comp * cmask.long(), cmask


def _candidates(
    r: _Run, batch: Rollouts, logp_all: torch.Tensor, comp: torch.Tensor, cmask: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's top-k tokens other than the sampled one at every position: π_θ of each (with grad) [B, T, K]
    and its advantage from the value source, divided by `scale` (0 where not valued) [B, T, K]."""
    k = r.cfg.candidates
    top = torch.topk(logp_all.detach(), k + 1, dim=-1).indices  # [B, T, k+1]
    keep = top != comp[..., None]
    # the first k of the k + 1 that are not the sampled token
    order = torch.cumsum(keep.long(), -1)
    keep &= order <= k
    positions, tokens = [], []
    for i, c in enumerate(batch.completion_ids):
        t = len(c)
        sel = keep[i, :t]
        pos = torch.nonzero(sel, as_tuple=False)  # (position, slot)
        positions.append(pos[:, 0].cpu().numpy())
        tokens.append(top[i, :t][sel].cpu().numpy())
    adv = r.source.candidate_advantages(batch, positions, tokens)  # type: ignore[union-attr]
    cand_adv = torch.zeros(top.shape, dtype=torch.float64)
    for i, a in enumerate(adv):
        sel = keep[i, : len(batch.completion_ids[i])].cpu()
        full = torch.zeros(sel.shape, dtype=torch.float64)
        full[sel] = torch.from_numpy(np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0))
        cand_adv[i, : sel.shape[0]] = full
    cand_adv = (cand_adv / scale).to(logp_all.device) * cmask[..., None].double()
    probs = torch.gather(logp_all, 2, top).exp() * keep.to(logp_all.dtype)
    return probs, cand_adv.to(probs.dtype)


def _evaluate(r: _Run, held: list[tuple[Prompt, list[int]]]) -> dict[str, Any]:
    """Score the policy on the held prompts (main process); returns the evals.jsonl line."""
    cfg, acc = r.cfg, r.accelerator
    row: dict[str, Any] = {}
    if r.is_main:
        t0 = time.perf_counter()
        score = evaluate_policy(
            acc.unwrap_model(r.policy),
            r.tokenizer,
            r.task,
            held,
            cfg.eval_samples,
            cfg.eval_seed,
            cfg.max_new_tokens,
            cfg.temperature,
            cfg.fail_truncated,
            reference=r.reference,
        )
        row = eval_line(score, r.step, r.sampled_tokens, r.value_tokens, r.seconds, time.perf_counter() - t0)
        if r.logger is not None:
            r.logger.log({f"eval/{k}": v for k, v in score.as_dict().items()}, r.step)
        print(
            f"step {r.step}: {cfg.eval_split} accuracy {score.accuracy:.3f} [{score.lo:.3f}, {score.hi:.3f}], "
            f"KL/token {score.kl_token:.4f}, {r.budget_tokens:,} sampled tokens",
            flush=True,
        )
    acc.wait_for_everyone()
    return row


# ------------------------------------------------------------------------------------------ checkpoints
def _save(r: _Run, evals: list[dict[str, Any]]) -> None:
    """A resumable state in ``checkpoints/step_N`` (accelerate's save_state, safetensors), complete once its
    trainer_state.json (step, token counts, the evaluations so far) is written, last; older ones removed."""
    acc, out = r.accelerator, r.out
    ckpt = out / "checkpoints" / f"step_{r.step}"
    if r.is_main:
        (ckpt / STATE_FILE).unlink(missing_ok=True)
    acc.wait_for_everyone()
    acc.save_state(str(ckpt), safe_serialization=True)
    if r.is_main:
        state = {
            "step": r.step,
            "sampled_tokens": r.sampled_tokens,
            "value_tokens": r.value_tokens,
            "seconds": r.seconds,
            "evals": evals,
        }
        if isinstance(r.source, MCValues):
            state["mc_round"] = r.source.rounds
        runfolder.write_text(ckpt / STATE_FILE, json.dumps(state) + "\n")
        for old, _ in complete_checkpoints(out / "checkpoints")[max(r.cfg.keep_checkpoints, 1) :]:
            shutil.rmtree(old, ignore_errors=True)
        write_evals(out, evals)
    acc.wait_for_everyone()


def _resume(r: _Run) -> dict[str, Any]:
    """Restore the newest readable complete checkpoint (policy, optimiser, value refresh, RNG) and the run's
    counters; ``resume=false`` removes the old checkpoints instead. Returns the saved state ({} when none)."""
    acc, out = r.accelerator, r.out
    found = complete_checkpoints(out / "checkpoints")
    if found and not r.cfg.resume:
        acc.wait_for_everyone()
        if r.is_main:
            print(f"resume=false: removing the {len(found)} checkpoint(s) in {out / 'checkpoints'}")
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return {}
    for ckpt, _ in found:
        problem = checkpoint_problem(ckpt)
        if problem:
            print(f"warning: cannot resume from {ckpt} ({problem}); trying the one before", file=sys.stderr)
            continue
        if rng_state_problem(ckpt, acc.process_index):
            print(f"warning: random states of {ckpt} not restored", file=sys.stderr)
        acc.load_state(str(ckpt))
        state = json.loads((ckpt / STATE_FILE).read_text())
        r.step, r.sampled_tokens = int(state["step"]), int(state["sampled_tokens"])
        r.value_tokens, r.seconds = int(state["value_tokens"]), float(state["seconds"])
        if isinstance(r.source, MCValues):
            r.source.rounds = int(state.get("mc_round", 0))
        if r.is_main:
            print(f"resumed from {ckpt} (step {r.step})", flush=True)
            truncate_metrics(out, r.step)
        return state
    return {}


def _finish(r: _Run, evals: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """distrl.json (the curve without per-prompt scores, the totals), evals.jsonl and the final policy."""
    cfg, acc, out = r.cfg, r.accelerator, r.out
    result: dict[str, Any] = {}
    if r.is_main:
        final = out / "final"

        def save(tmp: Path) -> None:
            acc.unwrap_model(r.policy).save_pretrained(str(tmp), safe_serialization=True)
            r.tokenizer.save_pretrained(str(tmp))

        runfolder.replace_dir(final, save)
        result = write_result(
            out,
            evals,
            {
                "advantage": cfg.advantage,
                "value": cfg.value if cfg.uses_value else "none",
                "value_checkpoint": cfg.value_checkpoint if cfg.uses_value and cfg.value == "checkpoint" else None,
                "seed": cfg.seed,
                "steps": r.step,
                "sampled_tokens": r.sampled_tokens,
                "value_tokens": r.value_tokens,
                "budget_tokens": r.budget_tokens,
                "train_seconds": round(r.seconds, 3),
                "prompts": info,
            },
        )
        r.logger.__exit__(None, None, None)
    acc.wait_for_everyone()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue distrl``; returns the exit status."""
    run(parse_config(DistRLConfig, list(argv) if argv is not None else None, prog="prefixvalue distrl"))
    return 0
