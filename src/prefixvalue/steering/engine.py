"""Value-guided sampling over any `prefixvalue.sampling.Sampler`: iid samples (for majority vote, best-of-N and
value-weighted vote), step-level beam search and twisted sequential Monte Carlo, batched over prompts.

The estimator (docs/design.md, "Values that steer"): N particles start at the bare prompt; each round every
unfinished particle is extended by one chunk (up to the next step boundary, or `every` tokens) sampled from the
policy π, and its weight is multiplied by the twist ratio ψ(s_t)/ψ(s_{t−1}). Since the proposal is π itself,
that ratio is the whole incremental importance weight of the target γ_t(s) ∝ π(s)·ψ(s). When the effective
sample size (Σw)²/Σw² falls below `ess_threshold`·N, the particles are resampled (systematic resampling) and
their weights set equal. A particle that finished keeps its last weight, whose twist is then the value of the
whole completion, so the final particles target π(τ)·ψ(τ) (π(τ | correct) when ψ is the exact value). The answer
is the one with the most final weight. With ψ ≡ 1 every weight stays equal and no resampling happens: N plain
samples.

Every generated token is counted per prompt (`Generator.tokens`), so methods compare at the same budget; the
tokens a Monte Carlo twist spends on its continuations count apart (`MCTwist.tokens_by_prompt`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sampling.noise import row_seed
from ..sampling.sampler import BranchRequest, Sampler, SamplingParams, text_decoder
from ..tasks.base import Prompt, Task, safe_verify
from ..tasks.verifiers import normalize_answer
from .twists import State, Twist, check_finite_floor


class Judge:
    """The task's verifier over token ids, with the truncation rule of ``collect`` (a completion cut off by its
    token budget fails when `fail_truncated`), and the answer a completion gives (the verifier's ``predicted``
    detail, else its normalised last line) for votes. Verdicts are cached per (prompt, completion)."""

    def __init__(self, task: Task, tokenizer: Any, fail_truncated: bool = True, timeout_s: float | None = 10.0) -> None:  # noqa: D107
        self.task = task
        self.decode = text_decoder(tokenizer)
        self.fail_truncated = bool(fail_truncated)
        self.timeout_s = timeout_s
        self.errors = 0
        self._cache: dict[tuple[str, tuple[int, ...], bool], tuple[float, str]] = {}

    def judge(self, prompt: Prompt, completion_ids: Sequence[int], finish_reason: str) -> tuple[float, str]:
        """(score in [0, 1], answer key) of one finished completion."""
        truncated = finish_reason == "length"
        key = (prompt.prompt_id, tuple(completion_ids), truncated)
        if key not in self._cache:
            text = self.decode(list(completion_ids))
            res = safe_verify(self.task, prompt, text, self.timeout_s)
            if res.error is not None:
                self.errors += 1
            predicted = res.details.get("predicted") if isinstance(res.details, dict) else None
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            answer = (
                normalize_answer(str(predicted))
                if predicted is not None
                else (normalize_answer(lines[-1]) if lines else "")
            )
            score = 0.0 if (truncated and self.fail_truncated) else float(res.score)
            self._cache[key] = (score, answer)
        return self._cache[key]

    def score(self, prompt: Prompt, completion_ids: Sequence[int], finish_reason: str) -> float:
        return self.judge(prompt, completion_ids, finish_reason)[0]


@dataclass
class Chunking:
    """How a particle grows per round: up to the first of the `stops` strings (a step boundary), or `every`
    tokens when set; never past `max_new_tokens` in all."""

    max_new_tokens: int
    stops: tuple[str, ...] = ()
    every: int | None = None

    def __post_init__(self) -> None:
        if self.every is None and not self.stops:
            raise ValueError("chunking needs step stop strings or every=K tokens")
        if self.every is not None and self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")


class Generator:
    """Grows `State` s with `sampler` at `params` (its temperature, top-p/k and seed; its `max_new_tokens` is the
    whole completion's budget) and counts every generated token per prompt id (`tokens`)."""

    def __init__(self, sampler: Sampler, params: SamplingParams, chunking: Chunking) -> None:  # noqa: D107
        self.sampler = sampler
        self.params = params
        self.chunking = chunking
        self.tokens: dict[str, int] = {}
        self.calls = 0

    def _grow(self, states: Sequence[State], keys: Sequence[str], chunk: bool) -> None:
        if not states:
            return
        steps = []
        for s in states:
            left = self.chunking.max_new_tokens - len(s.completion_ids)
            steps.append(min(left, self.chunking.every) if (chunk and self.chunking.every) else left)
        stops = self.chunking.stops if (chunk and self.chunking.every is None) else ()
        p = self.params
        params = SamplingParams(p.temperature, p.top_p, p.top_k, max(steps), stops, p.seed)
        seqs = [s.prompt_ids + s.completion_ids for s in states]
        requests = [BranchRequest(i, len(seq), key, step) for i, (seq, key, step) in enumerate(zip(seqs, keys, steps))]
        gens = self.sampler.branch(seqs, requests, params)  # one call: every row has its own token budget
        self.calls += 1
        for s, g in zip(states, gens):
            s.completion_ids.extend(int(t) for t in g.token_ids)
            pid = s.prompt.prompt_id
            self.tokens[pid] = self.tokens.get(pid, 0) + len(g.token_ids)
            if g.finish_reason == "eos":
                s.done, s.finish_reason = True, "eos"
            elif len(s.completion_ids) >= self.chunking.max_new_tokens:
                s.done, s.finish_reason = True, "length"

    def extend(self, states: Sequence[State], keys: Sequence[str]) -> None:
        """Grow each unfinished state by one chunk, in place (row `i` seeded by ``keys[i]``)."""
        live = [i for i, s in enumerate(states) if not s.done]
        self._grow([states[i] for i in live], [keys[i] for i in live], chunk=True)

    def complete(self, states: Sequence[State], keys: Sequence[str]) -> None:
        """Grow each unfinished state to its end (EOS or the budget) in one go."""
        live = [i for i, s in enumerate(states) if not s.done]
        self._grow([states[i] for i in live], [keys[i] for i in live], chunk=False)


def ess(log_w: np.ndarray) -> float:
    """Effective sample size (Σw)²/Σw² of unnormalised log-weights (0 when every weight is 0)."""
    lw = np.asarray(log_w, dtype=np.float64)
    if not np.isfinite(lw).any():
        return 0.0
    w = np.exp(lw - lw[np.isfinite(lw)].max())
    return float(w.sum() ** 2 / (w**2).sum())


def normalised(log_w: np.ndarray) -> np.ndarray:
    """Weights summing to 1 (uniform when every weight is 0)."""
    lw = np.asarray(log_w, dtype=np.float64)
    if not np.isfinite(lw).any():
        return np.full(len(lw), 1.0 / len(lw))
    w = np.exp(lw - lw[np.isfinite(lw)].max())
    return w / w.sum()


def systematic_resample(weights: np.ndarray, u: float) -> np.ndarray:
    """Indices of N systematic draws from normalised `weights` with offset `u` in [0, 1)."""
    n = len(weights)
    cum = np.cumsum(weights)
    cum[-1] = 1.0
    return np.minimum(np.searchsorted(cum, (u + np.arange(n)) / n, side="right"), n - 1)


def uniform(seed: int, key: str) -> float:
    """A number in [0, 1) drawn from (seed, key) (`prefixvalue.sampling.noise.row_seed`)."""
    return row_seed(seed, key) / 2.0**64


def vote(answers: Sequence[str], weights: Sequence[float]) -> int:
    """Index of the first completion giving the answer with the most total weight (ties: the earliest
    answer). Completions with no answer ("") vote only when no other does."""
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (a, w) in enumerate(zip(answers, weights)):
        totals[a] = totals.get(a, 0.0) + float(w)
        first.setdefault(a, i)
    named = [a for a in totals if a != ""] or list(totals)
    best = max(named, key=lambda a: (totals[a], -first[a]))
    return first[best]


def start_states(prompts: Sequence[tuple[Prompt, list[int]]], n: int) -> list[list[State]]:
    """`n` empty completions of each prompt."""
    return [[State(p, list(ids)) for _ in range(n)] for p, ids in prompts]


def iid_samples(gen: Generator, prompts: Sequence[tuple[Prompt, list[int]]], n: int, tag: str) -> list[list[State]]:
    """`n` independent complete samples of each prompt (row key ``{prompt_id}/{tag}/{i}``)."""
    groups = start_states(prompts, n)
    flat = [s for g in groups for s in g]
    keys = [f"{s.prompt.prompt_id}/{tag}/{i}" for g in groups for i, s in enumerate(g)]
    gen.complete(flat, keys)
    return groups


@dataclass
class SMCRun:
    """The final particles of one prompt, their log-weights, the ESS after each round (before resampling), the
    rounds that resampled, and the rounds run."""

    particles: list[State]
    log_weights: np.ndarray
    ess: list[float]
    resampled: list[int]
    rounds: int


def twisted_smc(
    gen: Generator,
    prompts: Sequence[tuple[Prompt, list[int]]],
    n: int,
    twist: Twist,
    tag: str,
    ess_threshold: float = 0.5,
    seed: int = 0,
    max_rounds: int = 10_000,
) -> list[SMCRun]:
    """Twisted SMC with `n` particles per prompt (see the module docstring); batched over prompts, one round
    of chunks per sampler call. Particle `j` of round `t` is seeded by ``{prompt_id}/{tag}/p{j}/t{t}``."""
    groups = start_states(prompts, n)
    log_w = [np.zeros(n) for _ in groups]
    log_psi = [np.zeros(n) for _ in groups]  # ψ(bare prompt) is the same for all particles: it cancels
    history: list[tuple[list[float], list[int]]] = [([], []) for _ in groups]
    rounds = 0
    while rounds < max_rounds and any(not s.done for g in groups for s in g):
        rounds += 1
        live = [(g, j) for g, group in enumerate(groups) for j, s in enumerate(group) if not s.done]
        states = [groups[g][j] for g, j in live]
        gen.extend(states, [f"{s.prompt.prompt_id}/{tag}/p{j}/t{rounds}" for (_, j), s in zip(live, states)])
        new = check_finite_floor(twist.log_values(states, f"{tag}/t{rounds}"))
        for (g, j), lp in zip(live, new):
            # a weight already 0 (ψ was 0: that particle cannot succeed) stays 0
            log_w[g][j] = log_w[g][j] + lp - log_psi[g][j] if np.isfinite(log_psi[g][j]) else -math.inf
            log_psi[g][j] = lp
        touched = sorted({g for g, _ in live})
        for g in touched:
            e = ess(log_w[g])
            history[g][0].append(round(e, 4))
            if e < ess_threshold * n and any(not s.done for s in groups[g]):
                idx = systematic_resample(
                    normalised(log_w[g]), uniform(seed, f"{groups[g][0].prompt.prompt_id}/{tag}/r{rounds}")
                )
                groups[g] = [groups[g][i].copy() for i in idx]
                log_psi[g] = log_psi[g][idx]
                finite = log_w[g][np.isfinite(log_w[g])]
                mean = (np.logaddexp.reduce(finite) - math.log(n)) if len(finite) else 0.0
                log_w[g] = np.full(n, mean)
                history[g][1].append(rounds)
    return [SMCRun(groups[g], log_w[g], history[g][0], history[g][1], rounds) for g in range(len(groups))]


@dataclass
class BeamRun:
    """The final beams of one prompt (best first) and their log-values."""

    beams: list[State]
    log_values: np.ndarray
    rounds: int


def beam_search(
    gen: Generator,
    prompts: Sequence[tuple[Prompt, list[int]]],
    width: int,
    expand: int,
    twist: Twist,
    tag: str,
    max_rounds: int = 10_000,
) -> list[BeamRun]:
    """Step-level beam search: the bare prompt is expanded `width`·`expand` times, then each unfinished beam
    `expand` times per round; finished beams stay in the pool; the `width` best by the twist's value are kept.
    It stops when every kept beam has finished. Child `c` of beam `b` in round `t` is seeded by
    ``{prompt_id}/{tag}/b{b}c{c}/t{t}``."""
    beams: list[list[State]] = [[State(p, list(ids))] for p, ids in prompts]
    values: list[np.ndarray] = [np.zeros(1) for _ in prompts]
    rounds = 0
    while rounds < max_rounds and any(not s.done for g in beams for s in g):
        rounds += 1
        children: list[tuple[int, State, str]] = []
        for g, group in enumerate(beams):
            k = width * expand if rounds == 1 else expand
            for b, s in enumerate(group):
                if not s.done:
                    children += [(g, s.copy(), f"{s.prompt.prompt_id}/{tag}/b{b}c{c}/t{rounds}") for c in range(k)]
        states = [c for _, c, _ in children]
        gen.extend(states, [key for _, _, key in children])
        new = check_finite_floor(twist.log_values(states, f"{tag}/t{rounds}"))
        for g in range(len(beams)):
            kept = [(v, s) for v, s in zip(values[g], beams[g]) if s.done]
            kept += [(v, c) for (h, c, _), v in zip(children, new) if h == g]
            if not any(h == g for h, _, _ in children):
                continue
            order = sorted(range(len(kept)), key=lambda i: -kept[i][0])[:width]  # stable: earlier first on ties
            beams[g] = [kept[i][1] for i in order]
            values[g] = np.array([kept[i][0] for i in order])
    return [BeamRun(b, v, rounds) for b, v in zip(beams, values)]


__all__ = [
    "BeamRun",
    "Chunking",
    "Generator",
    "Judge",
    "SMCRun",
    "beam_search",
    "ess",
    "iid_samples",
    "normalised",
    "start_states",
    "systematic_resample",
    "twisted_smc",
    "uniform",
    "vote",
]
