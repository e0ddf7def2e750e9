"""The shipped tiny policy loads through the standard Auto classes and samples sensible arith traces."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefixvalue.policies import load_policy
from prefixvalue.tasks import ArithTask, first_error

SHIPPED_POLICY = Path(__file__).resolve().parents[1] / "data" / "policies" / "arith-tiny"


def test_shipped_policy_files():
    files = {p.name for p in SHIPPED_POLICY.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert sum(p.stat().st_size for p in SHIPPED_POLICY.iterdir()) < 10 * 2**20
    report = json.loads((SHIPPED_POLICY / "training_report.json").read_text())
    assert 0.3 <= report["accuracy"] <= 0.7
    assert report["fraction_prompts_rate_in_(0.2,0.8)"] >= 0.2


def test_auto_classes_load_and_sample():
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_POLICY)
    tok = AutoTokenizer.from_pretrained(SHIPPED_POLICY)
    assert model.config.model_type == "gpt2"
    ids = torch.tensor([tok("Q:3+5*2-7=")["input_ids"]])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=40,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert text.startswith("3+5=") and "A:" in text


def test_sampled_errors_happen_inside_the_chain():
    torch.manual_seed(0)
    model, tok = load_policy(str(SHIPPED_POLICY), device="cpu")
    task = ArithTask()
    prompts = [p for p in task.prompts(24, split="test") if len(p.meta["operators"]) == 4]
    ids = torch.tensor([tok(p.text)["input_ids"] for p in prompts])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        max_new_tokens=40,
        num_return_sequences=4,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    texts = tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    scores, firsts = [], []
    for j, text in enumerate(texts):
        p = prompts[j // 4]
        scores.append(task.verify(p, text).score)
        firsts.append(first_error(task.step_labels(p, text)))
    acc = sum(scores) / len(scores)
    assert 0.1 < acc < 0.95, acc  # neither always right nor always wrong
    wrong_inside = [f for f, s in zip(firsts, scores) if s == 0 and 0 <= f < 4]
    assert len(wrong_inside) >= 1  # failures come from wrong steps within the chain
