"""Training throughput of value models, and the toolkit's overhead over the bare network.

    python benchmarks/bench_train.py

train_tokens_per_s: tokens (prompt + completion) per second through one full training step of the
recipe's path: collate → forward → value loss → normalise → backward → clip → AdamW step, with the
model and optimiser prepared by accelerate, for the default implicit (IPVRM, LoRA) value model.

train_overhead_ratio: time of a bare forward+backward of the same network on the same batches divided
by the time of that training step (1.0 = no overhead; target ≥ 0.8). The bare pass is what the method
cannot avoid: for the implicit model the adapted forward with autograd, the reference forward (adapters
disabled, no autograd), and backward of a trivial scalar of the logits; for the head, the backbone
forward and backward. Both are timed interleaved, in rounds, and the medians are compared, so load
from other processes on the machine affects both alike.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prefixvalue.data.collate import ValueCollator  # noqa: E402
from prefixvalue.tasks import ArithTask  # noqa: E402
from prefixvalue.tokenizer import build_char_tokenizer  # noqa: E402
from prefixvalue.value import ValueModelConfig, build_value_model, loss_mask, normalise_loss, value_loss  # noqa: E402

from common import SHIPPED_POLICY, record  # noqa: E402

BATCH, N_BATCHES, ROUNDS = 32, 6, 5


def make_rows(n: int) -> list[dict]:
    """Arith prompts with their correct solutions (realistic lengths), alternating outcomes."""
    tok, task = build_char_tokenizer(), ArithTask()
    rows = []
    for i in range(n):
        p = task.make_prompt("bench", i)
        rows.append(
            {
                "prompt_ids": tok(p.text)["input_ids"],
                "completion_ids": tok(p.meta["solution"])["input_ids"] + [tok.eos_token_id],
                "outcome": float(i % 2),
            }
        )
    return rows


def load_backbone():
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if SHIPPED_POLICY.exists():
        return AutoModelForCausalLM.from_pretrained(str(SHIPPED_POLICY)), "arith-tiny"
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=99, n_positions=128, n_embd=128, n_layer=4, n_head=4)
    return GPT2LMHeadModel(cfg), "random gpt2 (4 layers, hidden 128)"


def measure(kind: str, backbone_mode: str) -> dict:
    backbone, policy_name = load_backbone()
    model = build_value_model(ValueModelConfig(kind=kind, backbone=backbone_mode, base_rate=0.5), backbone)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    model, opt = accelerator.prepare(model, opt)
    model.train()
    inner = accelerator.unwrap_model(model)
    collate = ValueCollator(0)
    rows = make_rows(BATCH * N_BATCHES)
    chunks = [rows[i * BATCH : (i + 1) * BATCH] for i in range(N_BATCHES)]
    tokens = sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows)

    def train_pass() -> None:
        for chunk in chunks:
            b = {k: v.to(accelerator.device) for k, v in collate(chunk).items()}
            n_items = loss_mask(b, kind).sum().float()
            logits = model(b["input_ids"], b["attention_mask"], b["prompt_lengths"])
            ls = value_loss(logits, b, kind, "prefix", inner.config.margin)
            accelerator.backward(normalise_loss(ls.total, n_items, accelerator.num_processes))
            accelerator.clip_grad_norm_(inner.trainable_parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    pre = [{k: v.to(accelerator.device) for k, v in collate(c).items()} for c in chunks]

    def bare_pass() -> None:
        for b in pre:
            if kind == "implicit":
                out = inner.lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                with torch.no_grad(), inner.lm.disable_adapter():
                    inner.lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                out.float().mean().backward()
            else:
                out = inner.lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
                out.hidden_states[-1].float().mean().backward()
            inner.zero_grad(set_to_none=True)

    train_pass()
    bare_pass()  # warm-up
    t_train, t_bare = [], []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        bare_pass()
        t_bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        train_pass()
        t_train.append(time.perf_counter() - t0)
    mt, mb = statistics.median(t_train), statistics.median(t_bare)
    return {
        "tokens_per_s": tokens / mt,
        "bare_tokens_per_s": tokens / mb,
        "ratio": mb / mt,
        "policy": policy_name,
        "batch": BATCH,
        "device": str(accelerator.device),
    }


def main() -> None:
    torch.set_num_threads(1)  # stable figures on a shared CPU
    implicit = measure("implicit", "lora")
    head = measure("head", "lora")
    ctx = {"policy": implicit["policy"], "batch_size": BATCH, "device": implicit["device"], "torch_threads": 1}
    record(
        "train_tokens_per_s",
        round(implicit["tokens_per_s"], 1),
        unit="tokens/s",
        value_model="implicit (LoRA)",
        bare_tokens_per_s=round(implicit["bare_tokens_per_s"], 1),
        **ctx,
    )
    record(
        "train_overhead_ratio",
        round(implicit["ratio"], 3),
        target=">= 0.8",
        value_model="implicit (LoRA)",
        definition="bare forward(+reference forward)+backward time / full training-step time",
        **ctx,
    )
    record(
        "train_overhead_ratio_head",
        round(head["ratio"], 3),
        target=">= 0.8",
        value_model="head (LoRA)",
        train_tokens_per_s=round(head["tokens_per_s"], 1),
        **ctx,
    )


if __name__ == "__main__":
    main()
