"""Builders of small traces datasets for the value-model and train-recipe tests (no tests here).

Rows come from the collect stage's own row builder (`prefixvalue.stages.collect.trace_rows`), so they
follow the traces contract by construction. `random_traces` uses a char tokenizer and an outcome that
is a function of the completion (so a value model can learn it); `policy_traces` samples the shipped
tiny policy with plain ``model.generate`` on `arith` prompts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from prefixvalue.data import rows_to_dataset
from prefixvalue.data.collate import ValueCollator
from prefixvalue.sampling.sampler import Generation
from prefixvalue.stages.collect import trace_rows
from prefixvalue.tasks import ArithTask, Prompt, Task, VerifierResult


class EvenAnswer(Task):
    """Outcome 1 iff the completion's final answer digit (``A:d``) is even: learnable from the tokens."""

    name = "even-answer"

    def prompts(self, num: int | None = None, split: str = "train") -> Iterator[Prompt]:
        return iter(())

    def verify(self, prompt: Prompt, completion: str) -> VerifierResult:
        return VerifierResult(float(int(completion.rsplit("A:", 1)[1]) % 2 == 0))


def _rows(
    task: Task,
    tokenizer: Any,
    prompts: list[Prompt],
    prompt_ids: list[list[int]],
    completions: list[list[int]],
    trace_ids: list[str],
    meta: dict[str, Any],
) -> list[dict[str, Any]]:
    """Traces rows exactly as `prefixvalue collect` builds them (its own `trace_rows`)."""
    eos = tokenizer.eos_token_id
    gens = [Generation(c, [0.0] * len(c), "eos" if c and c[-1] == eos else "length") for c in completions]
    return trace_rows(task, tokenizer, prompts, prompt_ids, gens, trace_ids, meta, verifier_timeout_s=None)


def random_traces(tokenizer: Any, n_prompts: int = 8, per_prompt: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Traces rows (collect's row builder) whose outcome is 1 iff the completion's answer digit is even."""
    rng = random.Random(seed)
    prompts, prompt_ids, completions, tids = [], [], [], []
    for i in range(n_prompts):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        prompt = Prompt(f"p{i}", f"Q:{a}+{b}=")
        for j in range(per_prompt):
            ans = rng.randint(0, 9)
            completion = f"{a}+{b}={ans};" * rng.randint(1, 2) + f"A:{ans}"
            prompts.append(prompt)
            prompt_ids.append(tokenizer(prompt.text)["input_ids"])
            completions.append(tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id])
            tids.append(f"t{i}-{j}")
    return _rows(EvenAnswer(), tokenizer, prompts, prompt_ids, completions, tids, {})


def collated(rows: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """`rows` as one ValueCollator batch, and the (input_ids, attention_mask, prompt_lengths) a value model takes."""
    batch = ValueCollator(0)(rows)
    return batch, (batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])


def save_traces(rows: list[dict[str, Any]], path: Path) -> Path:
    rows_to_dataset(rows).save_to_disk(str(path))
    return path


@torch.no_grad()
def policy_traces(
    policy_dir: Path, n_prompts: int, samples: int, seed: int = 0, split: str = "train"
) -> list[dict[str, Any]]:
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
        seqs = []
        for seq in out[:, ids.shape[1] :].tolist():
            if tok.eos_token_id in seq:  # keep the EOS the generation stopped on
                seq = seq[: seq.index(tok.eos_token_id) + 1]
            seqs.append([t for t in seq if t != tok.pad_token_id])
        ps = [group[k // samples] for k in range(len(seqs))]
        rows += _rows(
            task,
            tok,
            ps,
            [tok(p.text)["input_ids"] for p in ps],
            seqs,
            [f"{p.prompt_id}-{k % samples}" for k, p in enumerate(ps)],
            {"model": str(policy_dir)},
        )
    return rows
