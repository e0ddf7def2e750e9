"""Monte Carlo prefix values: Ẑ_Φ(prefix) = k/n from n continuations, with Wilson 95% intervals.

`MCLabeller` turns traces into prefix labels with any `Sampler`:

- `MCLabeller.uniform`: a fixed list of positions per trace, M continuations each;
- `MCLabeller.adaptive`: rounds of samples that bisect between positions whose values differ (to
  find the tokens where the value jumps: forking tokens, first errors) and then tighten every
  interval to a target half-width, within a per-trace rollout budget.

Identical prefixes are labelled once: all traces of a prompt share position 0, and traces that
agree on their first tokens share those prefixes too. A continuation's randomness is keyed by the
prefix's content and the sample index, so a prefix gets the same samples wherever it occurs
(in any shard, any process, any round).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..stats import wilson_interval
from ..tasks.base import Prompt, Task, VerifierResult, safe_verify
from .sampler import BranchRequest, OnBatch, Sampler, SamplingParams, text_decoder


def wilson_halfwidth(successes: float, n: int, z: float = 1.959963984540054) -> float:
    """Half the width of `wilson_interval` (0.5 when n == 0)."""
    lo, hi = wilson_interval(successes, n, z)
    return (hi - lo) / 2


@dataclass(frozen=True)
class TraceRef:
    """What the labeller needs of one trace: its id, prompt object and token ids."""

    trace_id: str
    prompt: Prompt
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]


@dataclass
class PrefixEstimate:
    """Monte Carlo label of one prefix: `successes` is the sum of verifier scores over `n`
    continuations, `mean` = successes / n, `[ci_low, ci_high]` the Wilson 95% interval."""

    trace_id: str
    position: int
    n: int
    successes: float
    mean: float
    ci_low: float
    ci_high: float
    prefix_tokens: int
    method: str

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CandidateEstimate(PrefixEstimate):
    """Monte Carlo label of a counterfactual prefix s_p ⊕ y': `position` is p (the prefix the candidate follows),
    `token_id` is y', `prefix_tokens` counts s_p ⊕ y'. A `terminal` candidate (an EOS token) ends the completion:
    its value is the verifier's score of s_p ⊕ y', exact, with n = 0 (docs/design.md, "Candidate labels")."""

    token_id: int = -1
    terminal: bool = False


@dataclass
class AdaptiveConfig:
    """Knobs of adaptive labelling (per trace)."""

    round_samples: int = 8  # continuations added to a prefix per round
    target_halfwidth: float = 0.1  # stop sampling a prefix once its Wilson half-width is below this
    budget: int = 256  # most continuations spent on one trace
    jump: float = 0.25  # bisect between neighbours whose means differ by at least this
    z_bisect: float = 1.5  # ... and whose difference is this many standard errors (else resample both)
    init_stride: int = 8  # starting grid: step boundaries plus every init_stride tokens plus the last
    max_rounds: int = 64

    def __post_init__(self) -> None:
        if self.round_samples < 1 or self.budget < 1 or self.init_stride < 1:
            raise ValueError("adaptive: round_samples, budget and init_stride must be >= 1")
        if not 0 < self.target_halfwidth < 0.5:
            raise ValueError("adaptive: target_halfwidth must be in (0, 0.5)")
        if not 0 < self.jump <= 1:
            raise ValueError("adaptive: jump must be in (0, 1]")


@dataclass
class LabelCost:
    """Cost of labelling, in tokens and calls (all counts are totals for the run or shard)."""

    prefill_tokens: int = 0  # tokens run through prefill forwards (each trace once per batch)
    generated_tokens: int = 0  # tokens sampled in continuations
    decode_steps: int = 0  # batched decode forward calls
    decode_tokens: int = 0  # rows (or, on the trie path, distinct token histories) run through decode forwards
    rollouts: int = 0  # continuations sampled (after deduplication)
    prefixes_requested: int = 0  # (trace, position) pairs labelled
    prefixes_unique: int = 0  # distinct prefixes actually sampled
    verifier_calls: int = 0  # verifier runs (identical completions of a prompt are verified once)
    verifier_errors: int = 0  # continuations whose verification crashed or timed out (scored 0)
    truncated: int = 0  # continuations cut off at the token budget (scored 0 when fail_truncated)
    seconds: float = 0.0  # wall-clock time

    def add(self, other: LabelCost) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Unit:
    """A distinct prefix: a representative trace and position, and the scores sampled so far."""

    key: str
    trace: int
    position: int
    scores: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def successes(self) -> float:
        return float(sum(self.scores))


def prefix_key(prompt_id: str, prompt_ids: Sequence[int], completion_prefix: Sequence[int]) -> str:
    """Content hash naming a prefix (prompt and prefix tokens); continuation seeds derive from it."""
    h = hashlib.sha256()
    h.update(prompt_id.encode())
    h.update(b"|")
    h.update(",".join(map(str, prompt_ids)).encode())
    h.update(b"|")
    h.update(",".join(map(str, completion_prefix)).encode())
    return h.hexdigest()[:32]


def distinct_prefixes(traces: Sequence[TraceRef], positions: Sequence[Sequence[int]]) -> int:
    """How many distinct prefixes the (trace, position) pairs name: `MCLabeller.uniform` samples each
    once, so it spends ``samples * distinct_prefixes(...)`` rollouts on them."""
    return len(
        {
            prefix_key(tr.prompt.prompt_id, tr.prompt_ids, tr.completion_ids[:p])
            for tr, pos in zip(traces, positions)
            for p in pos
        }
    )


class MCLabeller:
    """Monte Carlo labelling of trace prefixes with a `Sampler`, a tokenizer and a task's verifier.

    `params.max_new_tokens` is the completion budget of the policy: a continuation from position p
    may add ``max_new_tokens - p`` tokens, so every rollout sees the same total budget as the trace.
    Verifier crashes and time-outs score 0 and are counted in `cost.verifier_errors`. With
    `fail_truncated` (what collect recorded for the traces), a continuation cut off at the budget scores 0
    without verification, as collect scored the traces themselves. `on_batch`
    (an attribute, settable between calls) is handed to the sampler: ``on_batch(rollouts, tokens)``
    after each batch of continuations, for progress bars.
    """

    def __init__(
        self,
        sampler: Sampler,
        tokenizer: Any,
        task: Task,
        params: SamplingParams,
        verifier_timeout_s: float | None = 10.0,
        on_batch: OnBatch | None = None,
        fail_truncated: bool = False,
    ) -> None:
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.task = task
        self.params = params
        self.verifier_timeout_s = verifier_timeout_s
        self.on_batch = on_batch
        self.fail_truncated = fail_truncated
        self.cost = LabelCost()
        self._verified: dict[tuple[str, str], VerifierResult] = {}
        self._decode = text_decoder(tokenizer)

    # -- shared machinery -------------------------------------------------------------------
    def _units(
        self, traces: Sequence[TraceRef], wanted: Sequence[Sequence[int]]
    ) -> tuple[dict[str, _Unit], list[list[str]]]:
        """Deduplicate (trace, position) pairs into units; returns units and each pair's unit key."""
        units: dict[str, _Unit] = {}
        keys: list[list[str]] = []
        for t, (tr, pos) in enumerate(zip(traces, wanted)):
            row = []
            for p in pos:
                if not 0 <= p < len(tr.completion_ids):
                    raise ValueError(f"{tr.trace_id}: position {p} outside [0, {len(tr.completion_ids) - 1}]")
                k = prefix_key(tr.prompt.prompt_id, tr.prompt_ids, tr.completion_ids[:p])
                units.setdefault(k, _Unit(k, t, int(p)))
                row.append(k)
            keys.append(row)
        return units, keys

    def _sample(self, traces: Sequence[TraceRef], work: Sequence[tuple[_Unit, int]]) -> None:
        """Add `count` continuations to each unit of `work` ((unit, count) pairs), in place."""
        if not work:
            return
        t0 = time.perf_counter()
        before = (
            self.sampler.stats.prefill_tokens,
            self.sampler.stats.generated_tokens,
            self.sampler.stats.decode_steps,
            self.sampler.stats.decode_tokens,
        )
        seq_index: dict[int, int] = {}
        sequences: list[list[int]] = []
        requests: list[BranchRequest] = []
        owners: list[_Unit] = []
        budget = self.params.max_new_tokens
        for unit, count in work:
            tr = traces[unit.trace]
            if unit.trace not in seq_index:
                seq_index[unit.trace] = len(sequences)
                sequences.append(list(tr.prompt_ids) + list(tr.completion_ids))
            cut = len(tr.prompt_ids) + unit.position
            for m in range(unit.n, unit.n + count):
                requests.append(
                    BranchRequest(seq_index[unit.trace], cut, f"{unit.key}/m{m}", max(1, budget - unit.position))
                )
                owners.append(unit)
        gens = self.sampler.branch(sequences, requests, self.params, on_batch=self.on_batch)
        for unit, gen in zip(owners, gens):
            tr = traces[unit.trace]
            if gen.finish_reason == "length":
                self.cost.truncated += 1
                if self.fail_truncated:
                    unit.scores.append(0.0)
                    continue
            text = self._decode(list(tr.completion_ids[: unit.position]) + gen.token_ids)
            unit.scores.append(self._verify(tr.prompt, text))
        st = self.sampler.stats
        self.cost.prefill_tokens += st.prefill_tokens - before[0]
        self.cost.generated_tokens += st.generated_tokens - before[1]
        self.cost.decode_steps += st.decode_steps - before[2]
        self.cost.decode_tokens += st.decode_tokens - before[3]
        self.cost.rollouts += len(requests)
        self.cost.seconds += time.perf_counter() - t0

    def _verify(self, prompt: Prompt, text: str) -> float:
        key = (prompt.prompt_id, text)
        res = self._verified.get(key)
        if res is None:
            res = safe_verify(self.task, prompt, text, self.verifier_timeout_s)
            self.cost.verifier_calls += 1
            self._verified[key] = res
        if res.error is not None:
            self.cost.verifier_errors += 1
        return float(res.score)

    @staticmethod
    def _estimate(tr: TraceRef, unit: _Unit, method: str) -> PrefixEstimate:
        lo, hi = wilson_interval(unit.successes, unit.n)
        return PrefixEstimate(
            tr.trace_id,
            unit.position,
            unit.n,
            unit.successes,
            unit.successes / unit.n if unit.n else float("nan"),
            lo,
            hi,
            len(tr.prompt_ids) + unit.position,
            method,
        )

    # -- uniform ----------------------------------------------------------------------------
    def uniform(
        self, traces: Sequence[TraceRef], positions: Sequence[Sequence[int]], samples: int, method: str = "uniform"
    ) -> list[PrefixEstimate]:
        """`samples` continuations at each listed position of each trace; one estimate per
        (trace, position), in input order."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if len(positions) != len(traces):
            raise ValueError(f"{len(traces)} traces but {len(positions)} position lists")
        units, keys = self._units(traces, positions)
        self.cost.prefixes_requested += sum(len(k) for k in keys)
        self.cost.prefixes_unique += len(units)
        self._sample(traces, [(u, samples) for u in units.values()])
        return [self._estimate(traces[t], units[k], method) for t, row in enumerate(keys) for k in row]

    # -- counterfactual candidates ----------------------------------------------------------
    def candidates(
        self,
        traces: Sequence[TraceRef],
        positions: Sequence[Sequence[int]],
        tokens: Sequence[Sequence[int]],
        samples: int,
        eos_ids: Sequence[int],
        method: str = "candidate",
    ) -> list[CandidateEstimate]:
        """MC labels of counterfactual prefixes s_p ⊕ y': for trace t, ``positions[t][j]`` is p and ``tokens[t][j]``
        is y'. Each is labelled as position p + 1 of a trace whose completion is ``completion[:p] + [y']`` (one more
        token after it that is never read), through `uniform`, so a candidate gets the samples (keyed by its
        content) it gets wherever it is labelled: here, in `prefixvalue advantages`' MC check, or as the next
        on-trace prefix when y' is the token the trace wrote. An `eos_ids` candidate is terminal: the verifier's
        score of s_p ⊕ y', n = 0. One estimate per (trace, candidate), in input order."""
        if len(positions) != len(traces) or len(tokens) != len(traces):
            raise ValueError(f"{len(traces)} traces but {len(positions)} position and {len(tokens)} token lists")
        eos = [int(e) for e in eos_ids]
        refs: list[TraceRef] = []
        owners: list[tuple[TraceRef, int, int]] = []
        out: list[CandidateEstimate | None] = []
        for tr, pos, toks in zip(traces, positions, tokens):
            if len(pos) != len(toks):
                raise ValueError(f"{tr.trace_id}: {len(pos)} candidate positions but {len(toks)} tokens")
            for p, y in zip(pos, toks):
                p, y = int(p), int(y)
                if not 0 <= p < len(tr.completion_ids):
                    raise ValueError(f"{tr.trace_id}: position {p} outside [0, {len(tr.completion_ids) - 1}]")
                if y in eos:
                    text = self._decode(list(tr.completion_ids[:p]) + [y])
                    s = self._verify(tr.prompt, text)
                    est = CandidateEstimate(tr.trace_id, p, 0, s, s, s, s, len(tr.prompt_ids) + p + 1, method, y, True)
                    out.append(est)
                    continue
                comp = (*tr.completion_ids[:p], y, eos[0] if eos else y)
                refs.append(TraceRef(f"{tr.trace_id}@{p}#{y}", tr.prompt, tr.prompt_ids, comp))
                owners.append((tr, p, y))
                out.append(None)
        est = self.uniform(refs, [[p + 1] for _, p, _ in owners], samples, method=method) if refs else []
        sampled = iter(zip(owners, est))
        done: list[CandidateEstimate] = []
        for e in out:
            if e is None:
                (tr, p, y), m = next(sampled)
                e = CandidateEstimate(
                    tr.trace_id, p, m.n, m.successes, m.mean, m.ci_low, m.ci_high, m.prefix_tokens, method, y
                )
            done.append(e)
        return done

    # -- adaptive ---------------------------------------------------------------------------
    def adaptive(
        self,
        traces: Sequence[TraceRef],
        start: Sequence[Sequence[int]],
        cfg: AdaptiveConfig,
        budgets: Sequence[int] | None = None,
    ) -> list[PrefixEstimate]:
        """Adaptive labelling from the starting positions `start` (per trace).

        Each round, per trace and within what is left of ``cfg.budget``: (1) between neighbouring
        labelled positions whose means differ by >= ``cfg.jump`` with z >= ``cfg.z_bisect``, label
        the midpoint (bisection, down to adjacent tokens); if they differ by >= jump but z is
        smaller, resample both ends; (2) only when (1) found nothing to do for the trace, add samples to
        prefixes whose Wilson half-width is above ``cfg.target_halfwidth``, the widest first. Stops when nothing is left to do or the
        budget is spent. `budgets` (per trace) overrides ``cfg.budget``. Returns one estimate per
        labelled position, sorted by trace then position.
        """
        if len(start) != len(traces):
            raise ValueError(f"{len(traces)} traces but {len(start)} position lists")
        budget = [cfg.budget] * len(traces) if budgets is None else [int(b) for b in budgets]
        if len(budget) != len(traces):
            raise ValueError(f"{len(traces)} traces but {len(budget)} budgets")
        m0 = cfg.round_samples
        # per trace: position -> unit (units are shared between traces with identical prefixes)
        all_units: dict[str, _Unit] = {}
        by_trace: list[dict[int, _Unit]] = [dict() for _ in traces]
        spent = [0] * len(traces)

        def unit_for(t: int, p: int) -> _Unit:
            tr = traces[t]
            k = prefix_key(tr.prompt.prompt_id, tr.prompt_ids, tr.completion_ids[:p])
            return all_units.setdefault(k, _Unit(k, t, p))

        work: dict[str, tuple[_Unit, int]] = {}

        def add(t: int, u: _Unit, count: int) -> None:
            count = min(count, budget[t] - spent[t])
            if count <= 0:
                return
            spent[t] += count
            by_trace[t][u.position] = u
            prev = work.get(u.key)
            work[u.key] = (u, count if prev is None else max(prev[1], count))

        for t, pos in enumerate(start):
            for p in sorted(set(pos)):
                if not 0 <= p < len(traces[t].completion_ids):
                    raise ValueError(
                        f"{traces[t].trace_id}: position {p} outside [0, {len(traces[t].completion_ids) - 1}]"
                    )
                add(t, unit_for(t, p), m0)
        for _ in range(cfg.max_rounds):
            if not work:
                break
            self._sample(traces, list(work.values()))
            work = {}
            for t in range(len(traces)):
                if spent[t] >= budget[t]:
                    continue
                spent_before = spent[t]
                pts = sorted(by_trace[t].items())
                near_jump: set[int] = set()
                mids: list[tuple[float, int]] = []
                for (a, ua), (b, ub) in zip(pts, pts[1:]):
                    diff = abs(ua.successes / ua.n - ub.successes / ub.n)
                    if diff < cfg.jump:
                        continue
                    pa, pb = (ua.successes + 0.5) / (ua.n + 1), (ub.successes + 0.5) / (ub.n + 1)
                    z = diff / math.sqrt(pa * (1 - pa) / ua.n + pb * (1 - pb) / ub.n)
                    if z >= cfg.z_bisect and b - a > 1:
                        mids.append((-diff, (a + b) // 2))
                    elif z < cfg.z_bisect:
                        near_jump.update((a, b))
                for _neg, mid in sorted(mids):  # the largest jumps first, in case the budget runs out
                    add(t, unit_for(t, mid), m0)
                for p in sorted(near_jump):
                    add(t, by_trace[t][p], m0)
                if spent[t] > spent_before:
                    continue  # locate jumps first; tighten intervals once the jumps are found
                wide = [(wilson_halfwidth(u.successes, u.n), p, u) for p, u in by_trace[t].items() if u.key not in work]
                for hw, _p, u in sorted(wide, key=lambda x: (-x[0], x[1])):
                    if hw > cfg.target_halfwidth:
                        add(t, u, m0)
        seen_pairs = sum(len(d) for d in by_trace)
        self.cost.prefixes_requested += seen_pairs
        self.cost.prefixes_unique += len(all_units)
        out = []
        for t, d in enumerate(by_trace):
            for p in sorted(d):
                out.append(self._estimate(traces[t], d[p], "adaptive"))
        return out


def first_jump(points: Sequence[tuple[int, float]], threshold: float) -> int | None:
    """Locate the first value jump in a labelled curve.

    `points` are (position, value) pairs; returns the position p of the first neighbouring pair
    (a, b) with |value_b - value_a| >= threshold, as a token index: the jump happens when one of
    completion tokens a..b-1 is appended, estimated as the middle one ``(a + b - 1) // 2`` (exactly
    a when b == a + 1); None if there is no such pair.
    """
    pts = sorted(points)
    for (a, va), (b, vb) in zip(pts, pts[1:]):
        if abs(vb - va) >= threshold:
            return (a + b - 1) // 2
    return None


__all__ = [
    "AdaptiveConfig",
    "CandidateEstimate",
    "LabelCost",
    "MCLabeller",
    "PrefixEstimate",
    "TraceRef",
    "distinct_prefixes",
    "first_jump",
    "prefix_key",
    "wilson_halfwidth",
    "wilson_interval",
]
