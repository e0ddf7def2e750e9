"""Twists: what guides value-guided sampling (docs/design.md, "Values that steer").

A twist ψ(s) ≥ 0 scores a partial (or finished) completion s of a prompt: an estimate of the probability that
the policy, continuing from s, ends in a verified-correct answer. Every twist returns log ψ for a batch of
`State` s, one number per state, and counts what it cost:

- `ValueTwist`: a value checkpoint's P̂(s)^β (head or implicit; `prefixvalue.value.ValueModel.predict`; β = 1 by
  default);
- `SoftValueTwist`: the policy's own MellowMax soft value β·mm_ω(q(s, ·)) of its next-token logits (nats, the
  seed's intensive operator; log ψ directly);
- `MCTwist`: the Monte Carlo value (k + ½)/(M + 1) from M continuations of s by the policy, verified (the
  "perfect twist" reference; its continuation tokens count in `cost.tokens`);
- `FunctionTwist`: any function of a state (an exact value in tests, a user's own critic);
- `ConstantTwist`: ψ ≡ 1 (twisted SMC then is plain sampling: every weight stays equal).

A finished state's value is the twist's value of the whole completion: P̂ after its last token for a value
checkpoint, the verifier-free estimate; for `MCTwist` its own outcome (its M continuations are itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..evaluation.softvalues import SoftValueSpec, policy_soft_values
from ..sampling.sampler import BranchRequest, Sampler, SamplingParams
from ..tasks.base import Prompt

#: smallest ψ a probability-valued twist returns (log ψ stays finite, so no particle's weight is exactly 0)
PSI_FLOOR = 1e-6


@dataclass
class State:
    """One partial completion: the prompt (task instance and its token ids) and the completion's token ids so
    far; `done` once it ended (EOS or its token budget)."""

    prompt: Prompt
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    done: bool = False
    finish_reason: str = ""

    def copy(self) -> State:
        return State(self.prompt, self.prompt_ids, list(self.completion_ids), self.done, self.finish_reason)


@dataclass
class TwistCost:
    """What a twist spent: states scored, forward tokens of its model (prompt + completion per state), and
    tokens generated for it (Monte Carlo continuations; 0 for the others)."""

    states: int = 0
    forward_tokens: int = 0
    tokens: int = 0


class Twist(Protocol):
    """log ψ of a batch of states; `cost` accumulates what the calls spent."""

    name: str
    cost: TwistCost

    def log_values(self, states: Sequence[State], tag: str) -> np.ndarray:
        """float64 [len(states)]: log ψ(s) (may be −inf only for `FunctionTwist`). `tag` names the call (a seed
        for twists that sample)."""
        ...


def _log_probability(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, dtype=np.float64), PSI_FLOOR, 1.0))


class ValueTwist:
    """ψ(s) = P̂(s)^β of a value checkpoint (`prefixvalue.value.ValueModel`), read after the state's last token; the
    inverse temperature `beta` (1: P̂ itself) sharpens (> 1) or flattens (< 1) the twist, and with it the target
    π(τ)·P̂(τ)^β."""

    def __init__(self, name: str, model: Any, batch_size: int = 64, beta: float = 1.0) -> None:  # noqa: D107
        self.name = name
        self.model = model
        self.beta = float(beta)
        self.batch_size = int(batch_size)
        self.cost = TwistCost()

    @torch.no_grad()
    def log_values(self, states: Sequence[State], tag: str) -> np.ndarray:
        if not states:
            return np.zeros(0)
        preds = self.model.predict(
            [s.prompt_ids for s in states], [s.completion_ids for s in states], batch_size=self.batch_size
        )
        self.cost.states += len(states)
        self.cost.forward_tokens += sum(len(s.prompt_ids) + len(s.completion_ids) for s in states)
        return self.beta * _log_probability(np.array([float(p[-1]) for p in preds]))


class SoftValueTwist:
    """log ψ(s) = β·mm_ω(q(s, ·)): the policy's MellowMax soft value of its logits after s (nats), at inverse
    temperature `beta` (`prefixvalue.evaluation.softvalues`)."""

    def __init__(self, name: str, policy: Any, omega: float = 1.0, beta: float = 1.0, batch_size: int = 64) -> None:  # noqa: D107
        self.name = name
        self.policy = policy
        self.beta = float(beta)
        self.spec = SoftValueSpec(omegas=(), default_omega=float(omega), top_k=(), logsumexp=False)
        self.batch_size = int(batch_size)
        self.cost = TwistCost()

    def log_values(self, states: Sequence[State], tag: str) -> np.ndarray:
        if not states:
            return np.zeros(0)
        values, tokens = policy_soft_values(
            self.policy,
            [s.prompt_ids for s in states],
            [s.completion_ids for s in states],
            self.spec,
            batch_size=self.batch_size,
        )
        self.cost.states += len(states)
        self.cost.forward_tokens += tokens
        return self.beta * np.array([float(v["mellowmax"][-1]) for v in values])


class MCTwist:
    """The Monte Carlo value of s: (k + ½)/(M + 1), k the verified successes among `samples` continuations of s
    by `sampler` at `params` (a finished s counts as its own M continuations). `verify(prompt, completion_ids)`
    scores one completion (the steering run's verifier, truncation rule included)."""

    def __init__(
        self,
        name: str,
        sampler: Sampler,
        params: SamplingParams,
        samples: int,
        verify: Callable[[Prompt, list[int], str], float],
    ) -> None:  # noqa: D107
        self.name = name
        self.sampler = sampler
        self.params = params
        self.samples = int(samples)
        self.verify = verify
        self.cost = TwistCost()
        #: continuation tokens generated per prompt id
        self.tokens_by_prompt: dict[str, int] = {}

    def log_values(self, states: Sequence[State], tag: str) -> np.ndarray:
        m = self.samples
        succ = np.zeros(len(states))
        rows, keys, owners = [], [], []
        for i, s in enumerate(states):
            if s.done:
                succ[i] = m * self.verify(s.prompt, s.completion_ids, s.finish_reason)
                continue
            left = self.params.max_new_tokens - len(s.completion_ids)
            for j in range(m):
                rows.append((s.prompt_ids + s.completion_ids, left))
                keys.append(f"{s.prompt.prompt_id}/{tag}/{i}/mc{j}")
                owners.append(i)
        if rows:
            p = self.params
            params = SamplingParams(p.temperature, p.top_p, p.top_k, max(left for _, left in rows), (), p.seed)
            seqs = [seq for seq, _ in rows]
            requests = [BranchRequest(r, len(seq), key, left) for r, ((seq, left), key) in enumerate(zip(rows, keys))]
            for r, g in enumerate(self.sampler.branch(seqs, requests, params)):
                s = states[owners[r]]
                self.cost.tokens += len(g.token_ids)
                pid = s.prompt.prompt_id
                self.tokens_by_prompt[pid] = self.tokens_by_prompt.get(pid, 0) + len(g.token_ids)
                reason = "length" if g.finish_reason == "length" else "eos"
                succ[owners[r]] += self.verify(s.prompt, s.completion_ids + g.token_ids, reason)
        self.cost.states += len(states)
        return np.log((succ + 0.5) / (m + 1))


class FunctionTwist:
    """ψ(s) = fn(state) (a probability; 0 gives log ψ = −inf: a particle that can no longer succeed)."""

    def __init__(self, name: str, fn: Callable[[State], float]) -> None:  # noqa: D107
        self.name = name
        self.fn = fn
        self.cost = TwistCost()

    def log_values(self, states: Sequence[State], tag: str) -> np.ndarray:
        self.cost.states += len(states)
        with np.errstate(divide="ignore"):
            return np.log(np.array([float(self.fn(s)) for s in states], dtype=np.float64))


class ConstantTwist:
    """ψ ≡ 1: no guidance (twisted SMC reduces to plain sampling)."""

    def __init__(self, name: str = "constant") -> None:  # noqa: D107
        self.name = name
        self.cost = TwistCost()

    def log_values(self, states: Sequence[State], tag: str) -> np.ndarray:
        return np.zeros(len(states))


def check_finite_floor(log_psi: np.ndarray) -> np.ndarray:
    """`log_psi` with NaN (a twist that failed on a state) read as the floor ψ = `PSI_FLOOR`."""
    out = np.asarray(log_psi, dtype=np.float64).copy()
    out[np.isnan(out)] = math.log(PSI_FLOOR)
    return out


__all__ = [
    "PSI_FLOOR",
    "ConstantTwist",
    "FunctionTwist",
    "MCTwist",
    "SoftValueTwist",
    "State",
    "Twist",
    "TwistCost",
    "ValueTwist",
    "check_finite_floor",
]
