"""Builders of small traces datasets for the value-model and train-recipe tests (no tests here).

`random_traces` makes contract-shaped rows from a char tokenizer whose outcome is a function of the
completion (so a value model can learn it); `policy_traces` samples the shipped tiny policy with plain
``model.generate`` on `arith` prompts and verifies them, like `prefixvalue collect` would.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from prefixvalue.data import rows_to_dataset
from prefixvalue.tasks import ArithTask, char_to_token_spans, token_end_offsets


def random_traces(tokenizer: Any, n_prompts: int = 8, per_prompt: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Rows with every traces field; outcome = 1 iff the completion's answer digit is even."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_prompts):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        prompt = f"Q:{a}+{b}="
        for j in range(per_prompt):
            ans = rng.randint(0, 9)
            completion = f"{a}+{b}={ans};" * rng.randint(1, 2) + f"A:{ans}"
            cids = tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]
            rows.append({
                "trace_id": f"t{i}-{j}", "prompt_id": f"p{i}", "prompt": prompt, "completion": completion,
                "prompt_ids": tokenizer(prompt)["input_ids"], "completion_ids": cids,
                "outcome": float(ans % 2 == 0), "verifier_error": None,
                "step_spans": [[0, len(cids)]], "step_labels": None, "logprobs": [0.0] * len(cids),
            })
    return rows


def save_traces(rows: list[dict[str, Any]], path: Path) -> Path:
    rows_to_dataset(rows).save_to_disk(str(path))
    return path


@torch.no_grad()
def policy_traces(policy_dir: Path, n_prompts: int, samples: int, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """Sample `samples` completions per arith prompt from the policy at temperature 1 and verify them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(policy_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(policy_dir))
    task = ArithTask()
    torch.manual_seed(seed)
    rows = []
    prompts = list(task.prompts(n_prompts, split=split))
    by_len: dict[int, list] = {}
    for p in prompts:
        by_len.setdefault(len(p.text), []).append(p)
    for _, group in sorted(by_len.items()):
        ids = torch.tensor([tok(p.text)["input_ids"] for p in group])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                             top_k=0, top_p=1.0, max_new_tokens=48, num_return_sequences=samples,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for k, seq in enumerate(out[:, ids.shape[1]:].tolist()):
            p = group[k // samples]
            if tok.eos_token_id in seq:  # keep the EOS the generation stopped on
                seq = seq[: seq.index(tok.eos_token_id) + 1]
            seq = [t for t in seq if t != tok.pad_token_id]
            text = tok.decode(seq, skip_special_tokens=True)
            res = task.verify(p, text)
            spans = char_to_token_spans(task.split_steps(text), token_end_offsets(tok, seq)) if seq else []
            rows.append({
                "trace_id": f"{p.prompt_id}-{k % samples}", "prompt_id": p.prompt_id, "prompt": p.text,
                "completion": text, "prompt_ids": tok(p.text)["input_ids"], "completion_ids": seq,
                "outcome": float(res.score), "verifier_error": res.error,
                "step_spans": [list(s) for s in spans], "step_labels": task.step_labels(p, text),
                "logprobs": [0.0] * len(seq), "model": str(policy_dir),
            })
    return rows
