"""Train the tiny arithmetic policy that ships at data/policies/arith-tiny (the embedded default).

    python recipes/train_policy.py out_dir=data/policies/arith-tiny

A GPT-2-style causal LM with a character-level tokenizer is trained on correct `arith` traces
(teacher forcing, loss on completion tokens only). Training stops at the first evaluation whose
accuracy at temperature 1 reaches `target_accuracy`: a policy that is right about half the time,
with errors made inside the chain (a wrong step result), so outcomes have real variance and early
tokens can be forks. It never draws past the first `task.policy_train_prompts` prompts of split
`policy-train` (the pool every other arith split excludes): it stops there instead. The model card records the measured accuracy on held-out prompts.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from prefixvalue import __version__
from prefixvalue.config import ConfigError, field, parse_config, save_resolved_config
from prefixvalue.tasks import ArithConfig, ArithTask
from prefixvalue.tokenizer import build_char_tokenizer

#: the policy's architecture (arith-tiny's); a model card names any other in its command
SHAPE_DEFAULTS = {"n_layer": 4, "n_embd": 128, "n_head": 4}


@dataclass
class TrainPolicyConfig:
    """Train a tiny character-level GPT-2 on arithmetic chains."""

    out_dir: str = field("data/policies/arith-tiny", help="where the model and tokenizer are saved")
    task: ArithConfig = field(default_factory=ArithConfig, help="arith task knobs")
    n_layer: int = field(SHAPE_DEFAULTS["n_layer"], help="transformer layers")
    n_embd: int = field(SHAPE_DEFAULTS["n_embd"], help="hidden size")
    n_head: int = field(SHAPE_DEFAULTS["n_head"], help="attention heads")
    max_steps: int = field(6000, help="upper bound on optimisation steps")
    batch_size: int = field(64, help="sequences per step")
    lr: float = field(2e-3, help="peak learning rate (AdamW, cosine decay to 10% over max_steps)")
    warmup_steps: int = field(100, help="linear warm-up steps")
    eval_every: int = field(50, help="evaluate accuracy at temperature 1 every this many steps")
    eval_prompts: int = field(200, help="held-out prompts for the stopping rule (split 'policy-val')")
    target_accuracy: float = field(0.45, help="stop at the first evaluation with accuracy >= this")
    report_prompts: int = field(500, help="held-out prompts (split 'test') measured for the model card")
    report_samples: int = field(16, help="samples per prompt for the model card's per-prompt rates")
    seed: int = field(0, help="seed for initialisation, data order and sampling")
    threads: int = field(0, help="torch CPU threads (0: leave torch's default)")
    epochs: int = field(
        1,
        help="passes over the first task.policy_train_prompts prompts of 'policy-train' (1: stop at the pool's end; "
        "more: revisit the same prompts, never new ones, e.g. for a better-trained checker backbone)",
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.target_accuracy < 1.0:
            raise ConfigError("target_accuracy must be in (0, 1)")
        if self.eval_every <= 0 or self.max_steps <= 0:
            raise ConfigError("eval_every and max_steps must be positive")
        if self.epochs < 1:
            raise ConfigError("epochs must be >= 1")


def encode_batch(
    task: ArithTask, tok, split: str, start: int, n: int, wrap: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels) of n correct traces; labels mask the prompt.

    With `wrap`, prompt i of `policy-train` is prompt i mod `task.config.policy_train_prompts` (a later epoch over
    the same pool); without it, raises ValueError when the batch would draw past the pool."""
    pool = task.config.policy_train_prompts
    if split == "policy-train" and not wrap and start + n > pool:
        raise ValueError(
            f"prompts {start}..{start + n - 1} of 'policy-train' lie past the policy's training pool "
            f"(task.policy_train_prompts={pool})"
        )
    seqs, plens = [], []
    for i in range(start, start + n):
        p = task.make_prompt(split, i % pool if split == "policy-train" else i)
        ids = tok(p.text)["input_ids"] + tok(p.meta["solution"])["input_ids"] + [tok.eos_token_id]
        seqs.append(ids)
        plens.append(len(tok(p.text)["input_ids"]))
    width = max(len(s) for s in seqs)
    ids = torch.full((n, width), tok.pad_token_id)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), -100)
    for r, (s, pl) in enumerate(zip(seqs, plens)):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
        labels[r, pl : len(s)] = torch.tensor(s[pl:])
    return ids, mask, labels


@torch.no_grad()
def sample_accuracy(model, tok, task: ArithTask, split: str, num_prompts: int, samples: int, seed: int) -> list[float]:
    """Per-prompt success rate over `samples` completions at temperature 1 (prompts grouped by length)."""
    model.eval()
    prompts = list(task.prompts(num_prompts, split=split))
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p.text), []).append(i)
    rates = [0.0] * len(prompts)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for _, idx in sorted(by_len.items()):
        ids = torch.tensor([tok(prompts[i].text)["input_ids"] for i in idx])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=48,
            num_return_sequences=samples,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        texts = tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        for j, i in enumerate(idx):
            wins = sum(task.verify(prompts[i], t).score for t in texts[j * samples : (j + 1) * samples])
            rates[i] = wins / samples
    del gen
    model.train()
    return rates


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(TrainPolicyConfig, argv, prog="python recipes/train_policy.py")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    task = ArithTask(cfg.task)
    tok = build_char_tokenizer()
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=128,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # warm-up, then cosine to 10% of the peak over max_steps
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    model.train()
    t0, history, step = time.time(), [], 0
    stopped_at_target = False
    stopped_at_pool_end = False
    while step < cfg.max_steps:
        # never train past the pool: every other split skips exactly these prompts (arith's policy_train_prompts)
        if (step + 1) * cfg.batch_size > cfg.epochs * cfg.task.policy_train_prompts:
            print(
                f"step {step}: the next batch would draw past {cfg.epochs} epoch(s) over the first "
                f"task.policy_train_prompts={cfg.task.policy_train_prompts} prompts of 'policy-train' (the pool other "
                "splits exclude); stopping. Raise epochs to train longer on the same prompts.",
                flush=True,
            )
            stopped_at_pool_end = True
            break
        ids, mask, labels = encode_batch(
            task, tok, "policy-train", step * cfg.batch_size, cfg.batch_size, wrap=cfg.epochs > 1
        )
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % cfg.eval_every == 0:
            acc = sum(sample_accuracy(model, tok, task, "policy-val", cfg.eval_prompts, 1, cfg.seed)) / cfg.eval_prompts
            history.append(
                {"step": step, "loss": round(loss.item(), 4), "accuracy": acc, "seconds": round(time.time() - t0, 1)}
            )
            print(f"step {step} loss {loss.item():.4f} val accuracy {acc:.3f} ({time.time() - t0:.0f}s)", flush=True)
            if acc >= cfg.target_accuracy:
                stopped_at_target = True
                break

    rates = sample_accuracy(model, tok, task, "test", cfg.report_prompts, cfg.report_samples, cfg.seed + 1)
    accuracy = sum(rates) / len(rates)
    mixed = sum(1 for r in rates if 0.2 < r < 0.8) / len(rates)
    report = {
        "prefixvalue_version": __version__,
        "steps": step,
        "stopped_at_target": stopped_at_target,
        "stopped_at_pool_end": stopped_at_pool_end,
        "policy_train_prompts_used": min(step * cfg.batch_size, cfg.task.policy_train_prompts),
        "epochs": round(step * cfg.batch_size / cfg.task.policy_train_prompts, 3),
        "train_seconds": round(time.time() - t0, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_prompts": cfg.report_prompts,
        "samples_per_prompt": cfg.report_samples,
        "temperature": 1.0,
        "accuracy": round(accuracy, 4),
        "fraction_prompts_rate_in_(0.2,0.8)": round(mixed, 4),
        "fraction_prompts_always_right": round(sum(r == 1.0 for r in rates) / len(rates), 4),
        "fraction_prompts_always_wrong": round(sum(r == 0.0 for r in rates) / len(rates), 4),
        "history": history,
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # safetensors
    tok.save_pretrained(out)
    save_resolved_config(cfg, out, "train_config.yaml")
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(model_card(cfg, report))
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))
    return report


def model_card(cfg: TrainPolicyConfig, r: dict) -> str:
    t = cfg.task
    if cfg.epochs == 1:
        what = "The embedded default policy of prefixvalue"
        why = "It is deliberately undertrained: its mistakes are wrong step results inside the chain."
    else:
        what = 'A checker for prefixvalue\'s value heads (`value_model.checker`, docs/design.md "Checker features")'
        why = (
            f"Trained for up to {cfg.epochs} epochs over the same pool ({r['epochs']} used), it knows the step results "
            "the policy gets wrong."
        )
    shape = [(k, getattr(cfg, k)) for k in ("n_layer", "n_embd", "n_head") if getattr(cfg, k) != SHAPE_DEFAULTS[k]]
    command = " ".join(
        f"{k}={v}"
        for k, v in [
            ("out_dir", cfg.out_dir),
            *shape,  # the architecture, when not the policy's
            ("target_accuracy", cfg.target_accuracy),
            ("epochs", cfg.epochs),
            ("max_steps", cfg.max_steps),
            ("eval_every", cfg.eval_every),
        ]
    )
    return f"""# {Path(cfg.out_dir).name}

{what}: a GPT-2-style causal LM ({r["parameters"]:,} parameters,
{cfg.n_layer} layers, hidden {cfg.n_embd}, {cfg.n_head} heads) with a character-level tokenizer, trained on
CPU by `python recipes/train_policy.py {command}` (prefixvalue {r["prefixvalue_version"]}).

Task: `arith` with {t.min_steps}-{t.max_steps} operations, operands {t.operand_min}-{t.operand_max}, operators
`{t.operators}`, modulus {t.modulus}; prompt `Q:3+5*2-7=`, completion `3+5=8;8*2=6;6-7=9;A:9<eos>`.
Training: teacher forcing on correct traces (split `policy-train`), loss on completion tokens, AdamW
lr {cfg.lr}, batch {cfg.batch_size}; stopped after {r["steps"]} steps ({r["train_seconds"]} s) at the first
evaluation whose accuracy at temperature 1 on {cfg.eval_prompts} `policy-val` prompts reached
{cfg.target_accuracy}. {why}

Measured on {r["heldout_prompts"]} held-out prompts (split `test`), {r["samples_per_prompt"]} samples each, temperature 1:

| metric | value |
|---|---|
| accuracy | {r["accuracy"]:.3f} |
| prompts with success rate in (0.2, 0.8) | {r["fraction_prompts_rate_in_(0.2,0.8)"]:.3f} |
| prompts always right | {r["fraction_prompts_always_right"]:.3f} |
| prompts always wrong | {r["fraction_prompts_always_wrong"]:.3f} |

Load it with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` on this folder, or with
`prefixvalue.policies.load_policy`.
"""


if __name__ == "__main__":
    main(sys.argv[1:])
