"""What a sampling backend is: the `Sampler` protocol, its parameter and result types, the checks on its
arguments and the decoding of token ids to text.

Two operations cover every stage of the toolkit:

- ``generate(prompts, keys, params)``: one continuation per prompt (``collect``);
- ``branch(sequences, requests, params)``: continuations of *prefixes* ``sequences[i][:cut]``
  (``label``).

The backends are `prefixvalue.sampling.hf.HFSampler` (any transformers causal LM: it runs one forward
over each sequence and continues its prefixes from that KV cache, so a prefix is never re-encoded) and
`prefixvalue.sampling.vllm_sampler.VLLMSampler` (vLLM with prefix caching). Every row carries a string key
(e.g. ``"arith-train-000003/s5"``) that, with ``params.seed``, seeds its randomness
(`prefixvalue.sampling.noise`): the same command gives the same traces.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

#: progress callback of `Sampler.generate` / `Sampler.branch`: ``on_batch(rows, tokens)`` after each
#: batch of rows finishes, with the rows of that batch and the tokens it generated (the rows of all
#: calls of one `generate` / `branch` sum to the rows asked for)
OnBatch = Callable[[int, int], None]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` disable them."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        # NaN passes every comparison test below, and would sample all-pad rows with NaN log-probs
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        object.__setattr__(self, "stop", tuple(self.stop))

    def to_json(self) -> str:
        """The parameters as compact JSON text (stored beside every trace)."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class Generation:
    """One sampled continuation.

    `token_ids` include the EOS token when generation stopped on EOS; `logprobs[i]` is the natural
    log-probability of `token_ids[i]` under the distribution it was drawn from (after temperature,
    top-k and top-p; the raw model distribution when greedy). `finish_reason` is ``"eos"``,
    ``"stop"`` (a stop string appeared; it is kept in the tokens) or ``"length"``.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


@dataclass(frozen=True)
class BranchRequest:
    """Continue ``sequences[seq][:cut]`` with row key `key`, for at most `max_new_tokens` tokens
    (None: ``params.max_new_tokens``)."""

    seq: int
    cut: int
    key: str
    max_new_tokens: int | None = None

    def budget(self, params: SamplingParams) -> int:
        """Most tokens this row may generate: its own `max_new_tokens`, else ``params.max_new_tokens``."""
        return params.max_new_tokens if self.max_new_tokens is None else int(self.max_new_tokens)


@dataclass
class SamplerStats:
    """Work done so far, in tokens: `prefill_tokens` run through prefill forwards (padding
    excluded), `generated_tokens` sampled, `decode_steps` batched decode forwards, `decode_tokens`
    the rows (or trie nodes) those forwards ran: fewer than `generated_tokens` when continuations
    share token histories (see `HFSampler.branch`)."""

    prefill_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    decode_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@runtime_checkable
class Sampler(Protocol):
    """What callers need from a sampling backend (`hf.HFSampler`, `vllm_sampler.VLLMSampler`)."""

    stats: SamplerStats

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        keys: Sequence[str],
        params: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]:
        """One continuation of each prompt (token ids); row `i` is seeded by ``(params.seed, keys[i])``.
        `on_batch` (see `OnBatch`) reports progress as batches finish."""
        ...

    def branch(
        self,
        sequences: Sequence[Sequence[int]],
        requests: Sequence[BranchRequest],
        params: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]:
        """One continuation of ``sequences[r.seq][:r.cut]`` per request, in request order; `on_batch`
        as in `generate`."""
        ...


def check_generate(prompts: Sequence[Sequence[int]], keys: Sequence[str]) -> None:
    """ValueError unless every prompt has a key and at least one token (what `Sampler.generate` takes)."""
    if len(prompts) != len(keys):
        raise ValueError(f"{len(prompts)} prompts but {len(keys)} keys")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")


def check_branch(sequences: Sequence[Sequence[int]], requests: Sequence[BranchRequest]) -> None:
    """ValueError unless every request names a sequence, a cut in [1, its length] and a budget >= 1
    (what `Sampler.branch` takes)."""
    for r in requests:
        if not 0 <= r.seq < len(sequences):
            raise ValueError(f"branch request refers to sequence {r.seq}, only {len(sequences)} given")
        if not 1 <= r.cut <= len(sequences[r.seq]):
            raise ValueError(f"cut {r.cut} outside [1, {len(sequences[r.seq])}] for sequence {r.seq}")
        if r.max_new_tokens is not None and r.max_new_tokens < 1:
            raise ValueError("branch max_new_tokens must be >= 1")


def text_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """``decode(ids, skip_special_tokens=True)`` of `tokenizer` as a function of a list of ints.

    For a fast tokenizer that does not clean up spaces this calls the Rust tokenizer directly (what
    ``tokenizer.decode`` ends in); transformers' own ``decode`` first checks every element of the list
    in Python, which costs more than the decoding when Monte Carlo verifies thousands of continuations.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if (
        backend is not None
        and type(backend).__name__ == "Tokenizer"
        and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
    ):
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def decode_completion(tokenizer: Any, token_ids: Sequence[int]) -> str:
    """Completion text of `token_ids` without special tokens (EOS is dropped from the text)."""
    return tokenizer.decode(list(token_ids), skip_special_tokens=True)


__all__ = [
    "BranchRequest",
    "Generation",
    "OnBatch",
    "Sampler",
    "SamplerStats",
    "SamplingParams",
    "check_branch",
    "check_generate",
    "decode_completion",
    "text_decoder",
]
