"""Held-out accuracy of a policy, and its KL from the policy it started as (docs/design.md, "DistRL").

Every arm of `prefixvalue distrl` and TRL's GRPOTrainer anchor are scored here, on the same prompts with the same
sampling keys (common random numbers: two policies at the same point draw from the same uniform stream, so paired
differences are tighter than the CIs of each).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import runfolder
from ..sampling.hf import HFSampler
from ..sampling.sampler import SamplingParams
from ..stats import wilson_interval
from ..steering.engine import Judge
from ..tasks.base import Prompt, Task


@dataclass
class PolicyScore:
    """One evaluation: mean verified score over prompts × samples, its Wilson CI (over all draws), the mean
    score per prompt (for paired, prompt-clustered comparisons), and the KL from the start policy."""

    accuracy: float
    lo: float
    hi: float
    n: int
    per_prompt: dict[str, float]
    kl_token: float  # mean over completion tokens of KL(π_θ(·|s) ‖ π_0(·|s)), nats
    kl_sequence: float  # mean over completions of the summed per-token KL
    tokens: int  # completion tokens sampled by the evaluation (not counted in any training budget)
    verifier_errors: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "lo": self.lo,
            "hi": self.hi,
            "n": self.n,
            "kl_token": self.kl_token,
            "kl_sequence": self.kl_sequence,
            "eval_tokens": self.tokens,
            "verifier_errors": self.verifier_errors,
        }


@torch.no_grad()
def sequence_kl(
    policy: Any, reference: Any, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
) -> list[np.ndarray]:
    """Exact KL(π(·|s_t) ‖ π_ref(·|s_t)) over the vocabulary at every completion position, per completion."""
    out = []
    for p, c in zip(prompt_ids, completion_ids):
        if not c:
            out.append(np.zeros(0))
            continue
        ids = torch.tensor([list(p) + list(c)], device=next(policy.parameters()).device)
        sl = slice(len(p) - 1, len(p) + len(c) - 1)
        lp = torch.log_softmax(policy(input_ids=ids).logits[0, sl].float(), -1)
        lq = torch.log_softmax(reference(input_ids=ids).logits[0, sl].float(), -1)
        out.append((lp.exp() * (lp - lq)).sum(-1).double().cpu().numpy())
    return out


def evaluate_policy(
    policy: Any,
    tokenizer: Any,
    task: Task,
    prompts: Sequence[tuple[Prompt, list[int]]],
    samples: int,
    seed: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    fail_truncated: bool = True,
    reference: Any | None = None,
    batch_rows: int = 256,
    verifier_timeout_s: float | None = 10.0,
) -> PolicyScore:
    """Sample `samples` completions per prompt (keys ``eval/<prompt_id>/<j>``, seed `seed`) and verify them; with
    `reference`, the KL of the policy from it on those completions. The policy is put in eval mode and restored."""
    was_training = policy.training
    policy.eval()
    try:
        sampler = HFSampler(policy, tokenizer, max_batch_rows=batch_rows, tree_attention=False)
        judge = Judge(task, tokenizer, fail_truncated, verifier_timeout_s)
        rows = [(p, ids, j) for p, ids in prompts for j in range(samples)]
        params = SamplingParams(temperature, 1.0, 0, max_new_tokens, (), seed)
        gens = sampler.generate([r[1] for r in rows], [f"eval/{r[0].prompt_id}/{r[2]}" for r in rows], params)
        scores = np.array([judge.score(p, g.token_ids, g.finish_reason) for (p, _, _), g in zip(rows, gens)])
        per_prompt: dict[str, list[float]] = {}
        for (p, _, _), s in zip(rows, scores):
            per_prompt.setdefault(p.prompt_id, []).append(float(s))
        kl_tok = kl_seq = float("nan")
        if reference is not None:
            kls = sequence_kl(policy, reference, [r[1] for r in rows], [g.token_ids for g in gens])
            flat = np.concatenate(kls) if kls else np.zeros(0)
            kl_tok = float(flat.mean()) if flat.size else 0.0
            kl_seq = float(np.mean([k.sum() for k in kls])) if kls else 0.0
        lo, hi = wilson_interval(float(scores.sum()), len(scores))
        return PolicyScore(
            float(scores.mean()) if len(scores) else float("nan"),
            lo,
            hi,
            len(scores),
            {k: float(np.mean(v)) for k, v in per_prompt.items()},
            kl_tok,
            kl_seq,
            int(sum(len(g.token_ids) for g in gens)),
            judge.errors,
        )
    finally:
        policy.train(was_training)


def eval_line(
    score: PolicyScore, step: int, sampled_tokens: int, value_tokens: int, train_seconds: float, eval_seconds: float
) -> dict[str, Any]:
    """One line of evals.jsonl: where the run stood (step, tokens, seconds) and the score, per-prompt means included."""
    return {
        "step": step,
        "sampled_tokens": sampled_tokens,
        "value_tokens": value_tokens,
        "budget_tokens": sampled_tokens + value_tokens,
        "train_seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        **score.as_dict(),
        "per_prompt": score.per_prompt,
    }


def write_evals(out: Path, evals: Sequence[dict[str, Any]]) -> None:
    """OUT/evals.jsonl, one line per evaluation so far (rewritten whole, atomically)."""
    runfolder.write_text(out / "evals.jsonl", "".join(json.dumps(e) + "\n" for e in evals))


def write_result(out: Path, evals: Sequence[dict[str, Any]], fields: dict[str, Any]) -> dict[str, Any]:
    """The run's distrl.json: `fields` (what ran, its totals), the evaluations' seconds, the curve and the final
    evaluation without per-prompt scores (those stay in evals.jsonl, also written). Returns it."""
    result = {
        **fields,
        "eval_seconds": round(sum(float(e.get("eval_seconds", 0.0)) for e in evals), 3),
        "curve": [{k: v for k, v in e.items() if k != "per_prompt"} for e in evals],
        "final": {k: v for k, v in evals[-1].items() if k != "per_prompt"},
    }
    write_evals(out, evals)
    runfolder.write_json(out / "distrl.json", result)
    return result
