"""The anchor of `prefixvalue distrl`'s GRPO arm: TRL's own GRPOTrainer on the same policy, prompts, settings and
sampled-token budget, scored by the same evaluator (`prefixvalue.rl.evaluation`) at the same points.

    prefixvalue distrl-trl split_from=runs/quickstart/train_qhead-siblings/final out=runs/distrl/trl

It takes an `AnchorConfig` (a `DistRLConfig`; ``advantage`` and the value options are ignored) and maps it onto
`trl.GRPOConfig`:
G = ``num_generations``, ``prompts_per_step`` × G completions per optimiser step (one generation per step, TRL's
default), ``max_completion_length`` = ``max_new_tokens``, the same learning rate with a constant schedule, AdamW
without weight decay, gradient clipping 1.0, dropout off, temperature 1, top-k and top-p off, and TRL's defaults
for everything the arm compares: β = 0, ε = 0.2, ``loss_type="dapo"``, ``scale_rewards="group"``. The reward is
the task's verifier, 0 for a completion cut off at the length limit (as ``fail_truncated``). The run stops once the
completions' tokens reach ``max_sampled_tokens``.

One difference is repaired, by default: TRL scores its left-padded batches with a forward that passes no position
ids, while ``generate`` sampled them at positions counted from the attention mask. For a model with learned absolute
positions (GPT-2, the shipped policy) every padded row is then scored at positions shifted by its padding, so the
gradient is not the policy gradient of the distribution that sampled (TRL's trl#6800 for its online DPO trainers;
GRPOTrainer has the same forward). ``mask_position_ids=true`` hooks the policy's forward to pass the mask's positions
when none are given (`positions_from_mask`); ``false`` runs TRL as it is. RoPE models are unaffected either way. Needs TRL (``pip install "prefixvalue[rl]"``, in the test
environment by ``make install``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import runfolder
from ..config import ConfigError, field, parse_config, save_resolved_config
from ..policies import load_policy
from ..prompting import choose_prompt_format
from ..steering.engine import Judge
from ..tasks import build_task
from .evaluation import eval_line, evaluate_policy, write_result
from .loop import DistRLConfig, split_prompts

#: what a run writes into OUT
OUTPUTS = (runfolder.CONFIG_FILE, "evals.jsonl", "distrl.json", "trl", "final")


@dataclass
class AnchorConfig(DistRLConfig):
    """TRL's GRPOTrainer on the settings of a `prefixvalue distrl` run (its GRPO arm's anchor)."""

    mask_position_ids: bool = field(
        True,
        help="score log-probs at the positions generate uses (from the attention mask); false: TRL as it is, whose "
        "forward passes no position ids, so a left-padded prompt shifts the learned absolute positions of GPT-2-style "
        "models (trl#6800 for the online DPO trainers)",
    )


def positions_from_mask(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict]:
    """Forward pre-hook: ``position_ids = cumsum(attention_mask) − 1`` when the caller passes a mask and no position
    ids (what ``generate`` passes for left-padded rows; a bare forward otherwise counts the padding as positions)."""
    mask = kwargs.get("attention_mask")
    if kwargs.get("position_ids") is None and mask is not None and mask.dim() == 2:
        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return args, kwargs


def trl_config(cfg: DistRLConfig, out: Path) -> Any:
    """The `trl.GRPOConfig` of `cfg` (module docstring)."""
    from trl import GRPOConfig  # optional dependency: the anchor alone needs it

    return GRPOConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        gradient_accumulation_steps=1,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        max_steps=cfg.max_steps,
        temperature=cfg.temperature,
        top_k=0,
        top_p=1.0,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        disable_dropout=True,
        use_cpu=(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu",
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
    )


def run_trl(cfg: AnchorConfig) -> dict[str, Any]:
    """Train with TRL's GRPOTrainer and score the policy as `prefixvalue.rl.loop.run` does; returns distrl.json."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    if cfg.out is None:
        raise ConfigError("distrl-trl: give out=FOLDER")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    folder = runfolder.claim(out, "distrl-trl", cfg, outputs=OUTPUTS, path_keys=("policy", "split_from"))
    save_resolved_config(cfg, out)
    try:
        task = build_task(cfg.task, cfg.task_args)
        train, held, info = split_prompts(cfg, task)
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        policy, tok = load_policy(cfg.policy, "float32", device, cfg.load_options())
        reference, _ = load_policy(cfg.policy, "float32", device, cfg.load_options(), tokenizer=tok)
        if cfg.mask_position_ids:
            policy.register_forward_pre_hook(positions_from_mask, with_kwargs=True)
        fmt = choose_prompt_format(tok, cfg.chat_template, cfg.system_prompt)
        if fmt.chat_template:
            raise ConfigError("distrl-trl: the anchor feeds raw prompts (a chat-template policy is not supported yet)")
        by_id = {p.prompt_id: p for p in train}
        held_enc = [(p, fmt.encode(tok, p.text)) for p in held]
        counter = {"tokens": 0}
        judge = Judge(task, tok, cfg.fail_truncated)  # the loop's verdicts: a completion without EOS was cut off
        eos = set(int(t) for t in ([tok.eos_token_id] if tok.eos_token_id is not None else []))

        def arith_reward(
            prompts: list[str], completions: list[str], completion_ids: list[list[int]], prompt_id: list[str], **_: Any
        ) -> list[float]:
            """The task's verifier; 0 for a completion cut off at the length limit (no EOS) when fail_truncated."""
            counter["tokens"] += sum(len(ids) for ids in completion_ids)
            return [
                judge.score(by_id[pid], ids, "eos" if ids and int(ids[-1]) in eos else "length")
                for pid, ids in zip(prompt_id, completion_ids)
            ]

        evals: list[dict[str, Any]] = []
        t_train = {"seconds": 0.0, "t0": time.perf_counter()}

        def evaluate(step: int) -> None:
            t_train["seconds"] += time.perf_counter() - t_train["t0"]
            t0 = time.perf_counter()
            score = evaluate_policy(
                policy,
                tok,
                task,
                held_enc,
                cfg.eval_samples,
                cfg.eval_seed,
                cfg.max_new_tokens,
                cfg.temperature,
                cfg.fail_truncated,
                reference=reference,
            )
            evals.append(eval_line(score, step, counter["tokens"], 0, t_train["seconds"], time.perf_counter() - t0))
            print(
                f"trl step {step}: {cfg.eval_split} accuracy {score.accuracy:.3f}, {counter['tokens']:,} sampled tokens",
                flush=True,
            )
            t_train["t0"] = time.perf_counter()

        class Budget(TrainerCallback):
            """Evaluations every ``eval_every`` steps; stop at the sampled-token budget."""

            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
                evaluate(0)
                return control

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
                done = bool(cfg.max_sampled_tokens) and counter["tokens"] >= cfg.max_sampled_tokens
                if done or state.global_step >= cfg.max_steps:
                    control.should_training_stop = True
                    done = True
                if done or state.global_step % cfg.eval_every == 0:
                    evaluate(state.global_step)
                return control

        data = Dataset.from_list([{"prompt": p.text, "prompt_id": p.prompt_id} for p in train])
        trainer = GRPOTrainer(
            model=policy,
            reward_funcs=[arith_reward],
            args=trl_config(cfg, out),
            train_dataset=data,
            processing_class=tok,
            callbacks=[Budget()],
        )
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
        runfolder.replace_dir(
            out / "final", lambda tmp: (policy.save_pretrained(str(tmp)), tok.save_pretrained(str(tmp)))
        )
        result = write_result(
            out,
            evals,
            {
                "advantage": "outcome",
                "value": "none",
                "value_checkpoint": None,
                "implementation": "trl.GRPOTrainer",
                "mask_position_ids": cfg.mask_position_ids,
                "trl_version": _trl_version(),
                "seed": cfg.seed,
                "steps": int(trainer.state.global_step),
                "sampled_tokens": counter["tokens"],
                "value_tokens": 0,
                "budget_tokens": counter["tokens"],
                "train_seconds": round(t_train["seconds"], 3),
                "wall_seconds": round(wall, 3),
                "verifier_errors": judge.errors,
                "prompts": info,
            },
        )
        folder.finish()  # last: the record says complete once final/, evals.jsonl and distrl.json are in place
        return result
    finally:
        folder.release()


def _trl_version() -> str:
    import trl

    return str(trl.__version__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue distrl-trl``; returns the exit status."""
    args = ["advantage=outcome", *(list(argv) if argv is not None else sys.argv[1:])]  # GRPO's arm; no value
    run_trl(parse_config(AnchorConfig, args, prog="prefixvalue distrl-trl"))
    return 0
