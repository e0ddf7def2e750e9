"""Where the dense advantages of `prefixvalue distrl` come from (docs/design.md, "DistRL").

- `CheckpointValues`: a value checkpoint (any kind). Sampled tokens: δ_t = V(s_{t+1}) − V(s_t) at every token
  (`prefixvalue.rl.objective.td_advantages`). Candidates: A(s_t, y') = V(s_t ⊕ y') − V(s_t) through
  `ValueModel.token_candidate_values` (one forward pass per completion for the implicit model and the Q-head, one
  sequence per candidate for the head). With ``refresh`` it trains on the new rollouts' outcomes (off by default).
- `MCValues`: the Monte Carlo reference, V(s) = the verified success rate of m continuations of the current
  policy from s, at the step starts of each completion (the task's steps). Each token of step k gets the step's
  advantage V(s_{k+1}) − V(s_k) (VinePPO's credit: a step is one action); candidates are valued at step starts
  only, V(s ⊕ y') by m continuations too. Every continuation token counts in the run's sampled-token budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.collate import collated_batches
from ..sampling.mc import MCLabeller, TraceRef
from ..sampling.sampler import Sampler, SamplingParams, decode_completion
from ..tasks.base import Prompt, Task, char_to_token_spans, token_end_offsets
from ..value import ValueModel
from .objective import td_advantages


@dataclass
class Rollouts:
    """One generation batch: completion i answers prompt ``prompts[i]`` (groups of G consecutive rows)."""

    prompts: list[Prompt]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    rewards: torch.Tensor  # [N] verified scores in [0, 1]

    def __len__(self) -> int:
        return len(self.completion_ids)


class CheckpointValues:
    """Advantages from a value checkpoint (module docstring)."""

    #: whether the source spends policy samples of its own (counted in the sampled-token budget)
    samples = False

    def __init__(
        self,
        model: ValueModel,
        batch_size: int = 32,
        refresh_lr: float = 0.0,
        refresh_steps: int = 1,
    ) -> None:
        self.model = model
        self.batch_size = int(batch_size)
        self.refresh_steps = int(refresh_steps)
        self.optimizer = (
            torch.optim.AdamW(model.trainable_parameters(), lr=refresh_lr, weight_decay=0.0) if refresh_lr > 0 else None
        )
        self._values: list[np.ndarray] = []
        #: sampled tokens this source spent (none: it reads the rollouts only)
        self.sampled_tokens = 0

    def sampled_advantages(self, batch: Rollouts) -> list[torch.Tensor]:
        """TD errors [T_i] of every completion, V(s_T) replaced by its verified reward."""
        self._values = self.model.predict(batch.prompt_ids, batch.completion_ids, batch_size=self.batch_size)
        return td_advantages([torch.from_numpy(v) for v in self._values], batch.rewards)

    def candidate_advantages(
        self, batch: Rollouts, positions: list[np.ndarray], token_ids: list[np.ndarray]
    ) -> list[np.ndarray]:
        """A(s_p, y') = V(s_p ⊕ y') − V(s_p) of each candidate (NaN: not valued); after `sampled_advantages`."""
        q = self.model.token_candidate_values(
            batch.prompt_ids, batch.completion_ids, positions, token_ids, batch_size=self.batch_size
        )
        return [qi - vi[pos] for qi, vi, pos in zip(q, self._values, positions)]

    def refresh(self, batch: Rollouts) -> float | None:
        """Train the value model on the batch's outcomes (``refresh_steps`` steps of its own loss, every prefix's
        target the completion's verified reward); returns the last loss (None when refresh is off)."""
        if self.optimizer is None:
            return None
        model = self.model
        kind = type(model)
        model.train()
        last = float("nan")
        for _ in range(self.refresh_steps):
            self.optimizer.zero_grad(set_to_none=True)
            total, terms = torch.zeros(()), 0.0
            for start, b in collated_batches(batch.prompt_ids, batch.completion_ids, self.batch_size, model._device()):
                outcome = batch.rewards[start : start + b["input_ids"].shape[0]].to(b["targets"].dtype)
                b["targets"] = outcome.to(b["targets"].device)[:, None].expand_as(b["targets"]).clone()
                ls = kind.value_loss(model(b["input_ids"], b["attention_mask"], b["prompt_lengths"]), b)
                total = total + ls.total.float().cpu()
                terms += float(ls.count)
            loss = total / max(terms, 1.0)
            loss.backward()
            self.optimizer.step()
            last = float(loss.detach())
        model.eval()
        return last


class MCValues:
    """The Monte Carlo reference at step starts (module docstring), with the current policy's sampler."""

    samples = True

    def __init__(
        self, sampler: Sampler, tokenizer: Any, task: Task, params: SamplingParams, rollouts: int, fail_truncated: bool
    ) -> None:
        self.labeller = MCLabeller(sampler, tokenizer, task, params, fail_truncated=fail_truncated)
        self.tokenizer = tokenizer
        self.task = task
        self.rollouts = int(rollouts)
        #: candidates that end the completion are not continued (their value would need the verifier alone)
        self.eos_ids = set(int(t) for t in getattr(sampler, "eos_token_ids", ()))
        self._starts: list[list[int]] = []
        self._values: list[np.ndarray] = []
        #: batches labelled so far (part of every continuation's key; a resumed run restores it)
        self.rounds = 0

    @property
    def sampled_tokens(self) -> int:
        return int(self.labeller.cost.generated_tokens)

    def step_starts(self, completion_ids: Sequence[int]) -> list[int]:
        """Token positions where the completion's steps start (0 first), each < T."""
        ids = list(completion_ids)
        text = decode_completion(self.tokenizer, ids)
        spans = char_to_token_spans(self.task.split_steps(text), token_end_offsets(self.tokenizer, ids))
        starts = sorted({0, *(int(s0) for s0, _ in spans if 0 <= s0 < len(ids))})
        return starts

    def _refs(self, batch: Rollouts, tag: str, completions: Sequence[Sequence[int]]) -> list[TraceRef]:
        return [
            TraceRef(f"{p.prompt_id}/{tag}/{self.rounds}/{i}", p, tuple(pi), tuple(c))
            for i, (p, pi, c) in enumerate(zip(batch.prompts, batch.prompt_ids, completions))
        ]

    def sampled_advantages(self, batch: Rollouts) -> list[torch.Tensor]:
        """Per token, its step's advantage MC(s_{k+1}) − MC(s_k) (the verified reward at the end)."""
        self.rounds += 1
        self._starts = [self.step_starts(c) for c in batch.completion_ids]
        est = self.labeller.uniform(self._refs(batch, "v", batch.completion_ids), self._starts, self.rollouts)
        out, self._values, k = [], [], 0
        for starts, comp, r in zip(self._starts, batch.completion_ids, batch.rewards):
            v = np.array([e.mean for e in est[k : k + len(starts)]], dtype=np.float64)
            k += len(starts)
            self._values.append(v)
            ends = [*starts[1:], len(comp)]
            nxt = np.append(v[1:], float(r))
            adv = torch.zeros(len(comp), dtype=torch.float64)
            for s0, s1, a in zip(starts, ends, nxt - v):
                adv[s0:s1] = float(a)
            out.append(adv)
        return out

    def candidate_advantages(
        self, batch: Rollouts, positions: list[np.ndarray], token_ids: list[np.ndarray]
    ) -> list[np.ndarray]:
        """MC(s_p ⊕ y') − MC(s_p) for candidates at step starts other than EOS; NaN elsewhere (not valued)."""
        refs: list[TraceRef] = []
        where: list[tuple[int, int]] = []
        for i, (pos, toks) in enumerate(zip(positions, token_ids)):
            starts = set(self._starts[i])
            for j, (p, y) in enumerate(zip(pos, toks)):
                if int(p) in starts and int(y) not in self.eos_ids:
                    # the prefix s_p ⊕ y' as a trace cut after y' (the trailing token is never read)
                    comp = (*batch.completion_ids[i][: int(p)], int(y), 0)
                    refs.append(
                        TraceRef(
                            f"{batch.prompts[i].prompt_id}/c/{self.rounds}/{i}/{j}",
                            batch.prompts[i],
                            tuple(batch.prompt_ids[i]),
                            comp,
                        )
                    )
                    where.append((i, j))
        out = [np.full(len(pos), np.nan) for pos in positions]
        if refs:
            est = self.labeller.uniform(refs, [[len(r.completion_ids) - 1] for r in refs], self.rollouts)
            for (i, j), e in zip(where, est):
                p = int(positions[i][j])
                out[i][j] = e.mean - self._values[i][self._starts[i].index(p)]
        return out

    def refresh(self, batch: Rollouts) -> float | None:
        return None
