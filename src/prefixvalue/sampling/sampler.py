"""Batched sampling from causal LMs behind a small `Sampler` protocol.

Two operations cover every stage of the toolkit:

- ``generate(prompts, keys, params)``: one continuation per prompt (``collect``);
- ``branch(sequences, requests, params)``: continuations of *prefixes* ``sequences[i][:cut]``
  (``label``). `HFSampler` runs one forward over each sequence and slices its KV cache per cut, so
  a prefix is never re-encoded; a vLLM backend can implement the same call with prefix caching.

Randomness is counter-based: every row carries a string key (e.g. ``"arith-train-000003/s5"``) and
the Gumbel noise for (row, step, token) is a hash of (seed, key, step, token). A row's tokens
therefore do not depend on which other rows share its batch, on batch order, on finished rows
being compacted out, or on how many processes split the work -- the same command gives the same
traces. (Batched float arithmetic can still differ in the last bits between batch layouts; with
float32 that flips a sample only when two Gumbel-perturbed logits tie to ~1e-6.)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from .cache import CacheLayer, dynamic_cache
from .tree import TreeBatch, node_cache, supports_tree, use_tree_attention
from .tree import register as register_tree

_M32 = 0xFFFFFFFF

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
    """What callers need from a sampling backend (HF now; vLLM with prefix caching later)."""

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


# ---------------------------------------------------------------------------------------------
# counter-based randomness


def row_seed(seed: int, key: str) -> int:
    """A 64-bit integer derived from (seed, key) with SHA-256; used to seed one sampled row."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{key}".encode()).digest()[:8], "little")


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


def counter_uniform(seeds: torch.Tensor, step: torch.Tensor | int, vocab: int) -> torch.Tensor:
    """Uniforms in (0, 1) of shape (rows, vocab), a pure function of (row seed, step, token).

    `seeds` are int64 row seeds (64-bit values folded to two 32-bit words), `step` the decode step
    of each row (int or int64 tensor of shape (rows,)).
    """
    lo = seeds & _M32
    hi = (seeds >> 32) & _M32
    step_t = torch.as_tensor(step, dtype=torch.int64, device=seeds.device).expand_as(seeds) & _M32
    r1 = _mix32(lo ^ _mix32(hi ^ 0x9E3779B9))
    r2 = _mix32(step_t ^ _mix32(r1 ^ 0x7F4A7C15))
    r3 = _mix32(r2 ^ r1)
    v = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    h = _mix32(_mix32(v[None, :] ^ r2[:, None]) ^ r3[:, None])
    return (h.to(torch.float64) + 0.5) / 4294967296.0


def _fold_seeds(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """64-bit unsigned seeds as int64 tensor (two's complement), device `device`."""
    signed = [v - (1 << 64) if v >= (1 << 63) else v for v in values]
    return torch.tensor(signed, dtype=torch.int64, device=device)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / top-p (nucleus) set to -inf; returns a new tensor (rows, vocab).

    Nucleus keeps the smallest set of most likely tokens whose probability reaches `top_p` (the most
    likely token is always kept).
    """
    out = logits
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
        remove_sorted = before >= top_p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        out = out.masked_fill(remove, float("-inf"))
    return out


def sample_tokens(
    logits: torch.Tensor, params: SamplingParams, seeds: torch.Tensor, steps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from next-token `logits` (rows, vocab).

    Returns ``(tokens, logprobs)``: int64 token ids and float32 natural-log probabilities of them
    under the sampling distribution. Sampling is Gumbel-max with counter-based noise, so a row's
    draw depends only on its seed, its step and its logits.
    """
    logits = logits.float()
    if params.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        tok = torch.argmax(logits, dim=-1)
        return tok, logp.gather(-1, tok[:, None])[:, 0]
    scaled = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    logp = torch.log_softmax(scaled, dim=-1)
    u = counter_uniform(seeds, steps, logits.shape[-1])
    gumbel = -torch.log(-torch.log(u)).to(logp.dtype)
    tok = torch.argmax(logp + gumbel, dim=-1)
    return tok, logp.gather(-1, tok[:, None])[:, 0]


# ---------------------------------------------------------------------------------------------
# the Hugging Face backend


@dataclass
class _Rows:
    """Decode state of the rows still running (all tensors indexed by live row)."""

    index: torch.Tensor  # original row index, int64 (rows,)
    mask: torch.Tensor  # attention mask over cache columns, int64 (rows, cache_len)
    pos: torch.Tensor  # position id of the next token, int64 (rows,)
    seeds: torch.Tensor  # int64 (rows,)
    limit: torch.Tensor  # max new tokens per row, int64 (rows,)
    logits: torch.Tensor  # next-token logits (rows, vocab)


class _GrowLayerImpl(CacheLayer):
    """A KV-cache layer with preallocated room to grow: `update` writes new keys/values in place
    (``DynamicLayer`` concatenates, copying the whole cache every decode step). Capacity doubles
    when full. Tensors are (rows, heads, length, head_dim); `keys`/`values` are views of the used part.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int, used: int | None = None) -> None:  # noqa: D107
        # no super().__init__: it would assign `keys`/`values`, which are read-only views here.
        # With `used`, keys/values are buffers to adopt as they are (their first `used` columns
        # hold the cache, the rest is room); otherwise they are copied into a new buffer.
        if used is None:
            self.n = keys.shape[2]
            self._alloc(keys, values, self.n + max(room, 1))
        else:
            self.n, self._k, self._v = int(used), keys, values
        self.is_initialized = True
        self.dtype, self.device = keys.dtype, keys.device

    def _alloc(self, keys: torch.Tensor, values: torch.Tensor, cap: int) -> None:
        b, h, n, d = keys.shape
        # columns past `n` are never read (the `keys`/`values` views stop at `n`): no need to zero them
        self._k = keys.new_empty((b, h, cap, d))
        self._v = values.new_empty((b, h, cap, values.shape[3]))
        self._k[:, :, :n] = keys
        self._v[:, :, :n] = values

    @property
    def keys(self) -> torch.Tensor:
        return self._k[:, :, : self.n]

    @property
    def values(self) -> torch.Tensor:
        return self._v[:, :, : self.n]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = key_states.shape[2]
        if self.n + q > self._k.shape[2]:
            self._alloc(self.keys, self.values, 2 * (self.n + q))
        self._k[:, :, self.n : self.n + q] = key_states
        self._v[:, :, self.n : self.n + q] = value_states
        self.n += q
        return self.keys, self.values

    def select(self, rows: torch.Tensor, lead: int) -> None:
        """Keep only `rows` and drop the first `lead` columns (one copy)."""
        self._k = self._k[rows, :, lead:]
        self._v = self._v[rows, :, lead:]
        self.n -= lead

    def get_seq_length(self) -> int:
        return self.n


def _grow_cache(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], room: int, used: int | None = None) -> Any:
    """A transformers `DynamicCache` whose layers are `_GrowLayer`s holding `pairs` (keys, values);
    with `used`, the pairs are buffers adopted without a copy (see `_GrowLayerImpl`)."""
    return dynamic_cache(_GrowLayerImpl, [(k, v, room, used) for k, v in pairs])


def _layers(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"unsupported cache type {type(cache).__name__}: expected a transformers Cache with .layers")
    return layers


class HFSampler:
    """`Sampler` over any Hugging Face causal LM with a KV cache, with its own batched decode loop.

    Prompts are left-padded with explicit ``position_ids`` (so padding never shifts positions),
    finished rows are compacted out of the batch and all-padding cache columns are trimmed. At most
    `max_batch_rows` rows decode together.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None = None,
        max_batch_rows: int = 256,
        eos_token_ids: Sequence[int] | None = None,
        tree_attention: bool = True,
        max_tree_rows: int = 4096,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_rows = int(max_batch_rows)
        #: rows of one `branch` batch on the trie path (a row there is a node id and a seed, not a KV copy)
        self.max_tree_rows = int(max_tree_rows)
        if eos_token_ids is None:
            eos: Any = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            if eos is None and tokenizer is not None:
                eos = tokenizer.eos_token_id
            eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.eos_token_ids = [int(e) for e in eos_token_ids]
        self.stats = SamplerStats()
        #: shared-prefix attention for `branch` (see `prefixvalue.sampling.tree`): None until the first
        #: branch call decides it (True when the model supports it and it matched the plain path there)
        self.tree_attention: bool | None = None if tree_attention else False
        #: why the plain path is used, when it is
        self.tree_attention_reason: str | None = None if tree_attention else "turned off"
        self._cache_kwarg = _cache_kwarg(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- public API -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        keys: Sequence[str],
        params: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]:
        """One continuation per prompt; see `Sampler.generate`. Batches rows of similar length;
        `on_batch(rows, tokens)` is called after each batch."""
        check_generate(prompts, keys)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Generation | None] = [None] * len(prompts)
        for b0 in range(0, len(order), self.max_batch_rows):
            idx = order[b0 : b0 + self.max_batch_rows]
            rows = [list(map(int, prompts[i])) for i in idx]
            cache, mask, pos, last_logits = self._prefill(rows)
            cache = _grow_cache([(la.keys, la.values) for la in _layers(cache)], min(params.max_new_tokens, 64))
            state = _Rows(
                index=torch.arange(len(idx), device=self.device),
                mask=mask,
                pos=pos,
                seeds=_fold_seeds([row_seed(params.seed, keys[i]) for i in idx], self.device),
                limit=torch.full((len(idx),), params.max_new_tokens, dtype=torch.int64, device=self.device),
                logits=last_logits,
            )
            before = self.stats.generated_tokens
            for j, gen in enumerate(self._decode(cache, state, params)):
                out[idx[j]] = gen
            if on_batch is not None:
                on_batch(len(idx), self.stats.generated_tokens - before)
        return [g for g in out if g is not None]

    @torch.no_grad()
    def branch(
        self,
        sequences: Sequence[Sequence[int]],
        requests: Sequence[BranchRequest],
        params: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]:
        """Continuations of prefixes ``sequences[r.seq][:r.cut]``, in request order; `on_batch(rows,
        tokens)` is called after each batch.

        Two paths give the same continuations (each row samples with its own seed from the same
        logits); `tree_attention` says which one runs:

        - the trie path (`_branch_trie`, for models whose attention dispatches through transformers'
          AttentionInterface): each batch of up to `max_tree_rows` rows, grouped by sequence, prefills
          its sequences once and decodes only the distinct token histories its rows reach;
        - the plain path: each batch of up to `max_batch_rows` rows prefills its sequences once, up to
          the longest cut, and builds each row's cache by slicing that KV (RoPE keys are cached already
          rotated, and a prefix's keys/values do not depend on later tokens, so the slice equals the
          prefix's own cache); every row then decodes on its own.
        """
        check_branch(sequences, requests)
        if not requests:
            return []
        tree = self._use_tree(sequences, requests, params)
        if tree:
            # rows of one sequence decode together (they share its cached prefix); within a sequence,
            # rows with about as many tokens left after the cut sit next to each other
            order = sorted(
                range(len(requests)),
                key=lambda i: (requests[i].seq, len(sequences[requests[i].seq]) - requests[i].cut, requests[i].cut),
            )
        else:
            # rows whose continuations will be about as long decode together (a batch runs as long as
            # its longest row): sort by the tokens left after the cut in the given sequence
            order = sorted(
                range(len(requests)),
                key=lambda i: (len(sequences[requests[i].seq]) - requests[i].cut, requests[i].seq, requests[i].cut),
            )
        out: list[Generation | None] = [None] * len(requests)
        size = self.max_tree_rows if tree else self.max_batch_rows
        for b0 in range(0, len(order), size):
            idx = order[b0 : b0 + size]
            reqs = [requests[i] for i in idx]
            before = self.stats.generated_tokens
            if tree:
                gens = self._branch_trie(sequences, reqs, params)
            else:
                cache, state = self._branch_state(sequences, reqs, params)
                gens = self._decode(cache, state, params)
            for j, gen in enumerate(gens):
                out[idx[j]] = gen
            if on_batch is not None:
                on_batch(len(idx), self.stats.generated_tokens - before)
        return [g for g in out if g is not None]

    def _use_tree(
        self, sequences: Sequence[Sequence[int]], requests: Sequence[BranchRequest], params: SamplingParams
    ) -> bool:
        """Whether `branch` runs on the trie path (`_branch_trie`); decided on the first call.

        The model must dispatch attention through transformers' AttentionInterface (see
        `tree.supports_tree`), and a probe of this call's first sequences (a few cuts, 4 sampled tokens
        each) must give the plain path's tokens, with log-probs within 1e-3, so that a model whose
        attention layers do something the trie does not know about keeps the plain path instead of
        sampling from wrong numbers. A probe that fails with an error also keeps the plain path (the
        reason is in `tree_attention_reason`).
        """
        if self.tree_attention is not None:
            return self.tree_attention
        reason = supports_tree(self.model)
        if reason is None:
            register_tree()
            probe = _probe_requests(sequences, requests)
            check = SamplingParams(temperature=1.0, max_new_tokens=4, seed=params.seed)
            saved = self.stats.as_dict()
            try:
                cache, state = self._branch_state(sequences, probe, check)
                plain = self._decode(cache, state, check)
                trie = self._branch_trie(sequences, probe, check)
            except Exception as exc:  # noqa: BLE001 - any failure of the probe means: use the plain path
                reason = f"the trie probe failed ({type(exc).__name__}: {exc})"
            else:
                err = max(abs(a - b) for p, t in zip(plain, trie) for a, b in zip(p.logprobs, t.logprobs))
                if [p.token_ids for p in plain] != [t.token_ids for t in trie] or not err <= 1e-3:
                    reason = f"its samples differ from the plain path's (log-prob difference {err:.1e})"
            finally:
                for k, v in saved.items():  # the probe is not work done for the caller
                    setattr(self.stats, k, v)
        self.tree_attention = reason is None
        self.tree_attention_reason = reason
        return self.tree_attention

    # -- internals --------------------------------------------------------------------------
    def _forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor | None,
        pos: torch.Tensor,
        cache: Any | None,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> tuple[torch.Tensor, Any]:
        kwargs: dict[str, Any] = {self._cache_kwarg: cache}
        if not isinstance(logits_to_keep, int) or logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True, **kwargs)
        return out.logits, getattr(out, self._cache_kwarg, None) or out.past_key_values

    def _prefill(
        self, rows: list[list[int]], keep_all_logits: bool = False, columns: torch.Tensor | None = None
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded forward over `rows`; returns (cache, mask, next positions, logits).

        Logits are (rows, vocab) at the last token, (rows, len, vocab) with `keep_all_logits`, or
        (rows, len(columns), vocab) at the padded `columns` given (a large vocabulary times every
        column of every row would not fit).
        Cache entries at padding columns are zeroed so that no NaN from an all-masked query can
        leak into later steps.
        """
        dev = self.device
        width = max(len(r) for r in rows)
        pad_id = 0
        ids = torch.full((len(rows), width), pad_id, dtype=torch.int64, device=dev)
        mask = torch.zeros((len(rows), width), dtype=torch.int64, device=dev)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.int64, device=dev)
            mask[i, width - len(r) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        keep: int | torch.Tensor = columns if columns is not None else (0 if keep_all_logits else 1)
        logits, cache = self._forward(ids, mask, pos, None, logits_to_keep=keep)
        valid = mask.bool()[:, None, :, None]
        for layer in _layers(cache):
            layer.keys = torch.where(valid, layer.keys, torch.zeros((), dtype=layer.keys.dtype, device=dev))
            layer.values = torch.where(valid, layer.values, torch.zeros((), dtype=layer.values.dtype, device=dev))
        self.stats.prefill_tokens += int(mask.sum())
        next_pos = mask.sum(-1)
        return cache, mask, next_pos, (logits if keep_all_logits or columns is not None else logits[:, -1])

    def _branch_state(
        self, sequences: Sequence[Sequence[int]], reqs: Sequence[BranchRequest], params: SamplingParams
    ) -> tuple[Any, _Rows]:
        """Prefill the sequences of `reqs` once and slice one cache row per request."""
        dev = self.device
        seq_ids = sorted({r.seq for r in reqs})
        local = {s: i for i, s in enumerate(seq_ids)}
        max_cut = {s: 0 for s in seq_ids}
        for r in reqs:
            max_cut[r.seq] = max(max_cut[r.seq], r.cut)
        rows = [list(map(int, sequences[s][: max_cut[s]])) for s in seq_ids]
        cache, mask, _, logits = self._prefill(rows, keep_all_logits=True)
        width = mask.shape[1]
        pad = torch.tensor([width - len(r) for r in rows], dtype=torch.int64, device=dev)
        src = torch.tensor([local[r.seq] for r in reqs], dtype=torch.int64, device=dev)
        cuts = torch.tensor([r.cut for r in reqs], dtype=torch.int64, device=dev)
        new_w = int(cuts.max())
        # Column j of branch row b holds source column pad[src]+cut-new_w+j (valid when j >= new_w-cut).
        # Sources get one zero column in front; invalid columns read it. Per layer, one gather of the
        # rows' columns is copied into the branch cache's buffer (rows, heads, new_w + room, dim),
        # which the cache adopts as is.
        j = torch.arange(new_w, device=dev)
        col = pad[src][:, None] + cuts[:, None] - new_w + j[None, :] + 1
        valid = j[None, :] >= (new_w - cuts)[:, None]
        col = torch.where(valid, col, torch.zeros_like(col))
        limits = [r.budget(params) for r in reqs]
        cap = new_w + max(1, min(max(limits), 64))
        buffers = []
        for layer in _layers(cache):
            pair = []
            for x in (layer.keys, layer.values):  # (sequences, heads, width, dim)
                xz = torch.cat([x.new_zeros((x.shape[0], x.shape[1], 1, x.shape[3])), x], dim=2).transpose(1, 2)
                buf = x.new_empty((len(reqs), x.shape[1], cap, x.shape[3]))
                buf.transpose(1, 2)[:, :new_w] = xz[src[:, None], col]  # (rows, new_w, heads, dim)
                pair.append(buf)
            buffers.append((pair[0], pair[1]))
        branch_cache = _grow_cache(buffers, 0, used=new_w)
        first = logits[src, pad[src] + cuts - 1]
        state = _Rows(
            index=torch.arange(len(reqs), device=dev),
            mask=valid.to(torch.int64),
            pos=cuts.clone(),
            seeds=_fold_seeds([row_seed(params.seed, r.key) for r in reqs], dev),
            limit=torch.tensor(limits, dtype=torch.int64, device=dev),
            logits=first,
        )
        return branch_cache, state

    def _branch_trie(
        self, sequences: Sequence[Sequence[int]], reqs: Sequence[BranchRequest], params: SamplingParams
    ) -> list[Generation]:
        """Continue `reqs` on a trie of token histories (the tree path of `branch`).

        Rows are not decoded one by one: a *node* is a distinct token history (a sequence's first c
        tokens, then off-trace tokens), and each decode forward runs only the nodes that no row has
        reached before. Every row still draws its own token from its node's logits with its own seed,
        so a row's continuation is what the plain path samples for it; rows of one prefix that draw
        the same tokens, and a row that re-draws the trace's own next token (it then stands where the
        rows of the next position start), share every forward from there on. The sequences' cache is
        the shared part of the attention (`tree_attention`); an off-trace node's own keys/values are one
        column each, and a node attends to the chain of its off-trace ancestors.
        """
        dev = self.device
        seq_ids = sorted({r.seq for r in reqs})
        local = {s: i for i, s in enumerate(seq_ids)}
        rows = [list(map(int, sequences[s])) for s in seq_ids]
        width = max(len(r) for r in rows)
        pads = [width - len(r) for r in rows]
        vocab = _vocab_size(self.model)
        # logits along the whole sequences when they fit (a row that re-draws the trace's next token then
        # needs no forward), else only where rows start
        if vocab is not None and len(rows) * width * vocab * 4 <= _TRACE_LOGITS_BYTES:
            columns = torch.arange(width, device=dev)
        else:
            columns = torch.unique(torch.tensor([pads[local[r.seq]] + r.cut - 1 for r in reqs], device=dev))
        cache, _, _, trace_logits = self._prefill(rows, columns=columns)
        layers = _layers(cache)
        trace_k, trace_v = [la.keys for la in layers], [la.values for la in layers]
        vocab = trace_logits.shape[-1]
        # node 0 is the zero column the chains are padded with; on-trace nodes hold no column of their own
        node_seq, node_cut, node_len, node_chain = [0], [0], [0], [()]
        node_token, logit_slot = [0], [-1]
        on_trace: dict[tuple[int, int], int] = {}
        table = TrieLogits(trace_logits.reshape(-1, vocab), self._logits_budget(vocab))
        col_list = columns.tolist()
        for si, r in enumerate(rows):
            for j, col in enumerate(col_list):
                c = col - pads[si] + 1  # tokens of the sequence seen at that column
                if 1 <= c <= len(r):
                    on_trace[(si, c)] = len(node_seq)
                    node_seq.append(si)
                    node_cut.append(c)
                    node_len.append(c)
                    node_chain.append(())
                    node_token.append(r[c - 1])
                    logit_slot.append(si * len(col_list) + j)
        table.keep_first(len(rows) * len(col_list))
        k0, v0 = trace_k[0], trace_v[0]
        nodes_kv = node_cache(len(layers), k0.shape[1], k0.shape[3], v0.shape[3], 1024, k0)
        children: dict[tuple[int, int], int] = {}

        def forward(new: list[int]) -> None:
            new.sort(key=lambda n: node_seq[n])
            depth = max(len(node_chain[n]) for n in new)
            chains = torch.tensor([list(node_chain[n]) + [0] * (depth - len(node_chain[n])) for n in new], device=dev)
            seqs = torch.tensor([node_seq[n] for n in new], device=dev)
            cuts = torch.tensor([node_cut[n] for n in new], device=dev)
            pad_t = torch.tensor(pads, device=dev)[seqs]
            col = torch.arange(trace_k[0].shape[2], device=dev)
            prefix_mask = (col[None, :] >= pad_t[:, None]) & (col[None, :] < (pad_t + cuts)[:, None])
            ids = torch.tensor(new, device=dev)
            for la in _layers(nodes_kv):
                la.reserve(len(node_seq))
                la.node_ids, la.chains = ids, chains
            shared = TreeBatch.build(trace_k, trace_v, seqs, prefix_mask, chains != 0)
            tok = torch.tensor([[node_token[n]] for n in new], device=dev)
            pos = torch.tensor([[node_len[n] - 1] for n in new], device=dev)
            with use_tree_attention(self.model, shared):
                # the mask is only for transformers' padding check: the tree attention masks by itself
                logits, _ = self._forward(tok, torch.ones_like(tok), pos, nodes_kv)
            for n, slot in zip(new, table.add(logits[:, -1])):
                logit_slot[n] = slot
            self.stats.decode_steps += 1
            self.stats.decode_tokens += len(new)

        n_rows = len(reqs)
        row_node = [on_trace[(local[r.seq], r.cut)] for r in reqs]
        seeds = _fold_seeds([row_seed(params.seed, r.key) for r in reqs], dev)
        limits = [r.budget(params) for r in reqs]
        tokens: list[list[int]] = [[] for _ in range(n_rows)]
        logps: list[list[float]] = [[] for _ in range(n_rows)]
        reason = ["length"] * n_rows
        eos = set(self.eos_token_ids)
        live = list(range(n_rows))
        step = 0
        while live:
            slots = torch.tensor([logit_slot[row_node[r]] for r in live], device=dev)
            tok, lp = sample_tokens(table.rows(slots), params, seeds[torch.tensor(live, device=dev)], step)
            step += 1
            self.stats.generated_tokens += len(live)
            new: list[int] = []
            survivors = []
            for r, t, p in zip(live, tok.tolist(), lp.tolist()):
                tokens[r].append(t)
                logps[r].append(p)
                if t in eos:
                    reason[r] = "eos"
                    continue
                if self._stopped(tokens[r], params.stop):
                    reason[r] = "stop"
                    continue
                if len(tokens[r]) >= limits[r]:
                    continue
                parent = row_node[r]
                child = children.get((parent, t))
                if child is None:
                    si, c = node_seq[parent], node_cut[parent]
                    child = (
                        on_trace.get((si, c + 1), -1) if not node_chain[parent] and rows[si][c : c + 1] == [t] else -1
                    )
                    if child < 0:
                        child = len(node_seq)
                        node_seq.append(si)
                        node_cut.append(c)
                        node_len.append(node_len[parent] + 1)
                        node_chain.append((*node_chain[parent], child))
                        node_token.append(t)
                        logit_slot.append(-1)
                        new.append(child)
                    children[(parent, t)] = child
                row_node[r] = child
                survivors.append(r)
            live = survivors
            if new:
                forward(new)
            if live and table.full():
                # logits of nodes no row stands on are dropped; a row that reaches one again recomputes it
                occupied = {row_node[r] for r in live}
                freed = {n for n, sl in enumerate(logit_slot) if sl >= 0 and n not in occupied and node_chain[n]}
                table.free([logit_slot[n] for n in freed])
                for n in freed:
                    logit_slot[n] = -1
                children = {k: v for k, v in children.items() if v not in freed}
        return [Generation(tokens[i], logps[i], reason[i]) for i in range(n_rows)]

    def _stopped(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        """Whether the text of the last tokens contains one of the stop strings."""
        if not stop or self.tokenizer is None:
            return False
        tail = max(len(x) for x in stop) + 1
        text = self.tokenizer.decode(tokens[-tail:], skip_special_tokens=True)
        return any(x in text for x in stop)

    def _logits_budget(self, vocab: int) -> int:
        """Rows of node logits a trie keeps (at least 4 * max_batch_rows)."""
        return max(4 * self.max_tree_rows, _NODE_LOGITS_BYTES // (4 * vocab))

    def _decode(self, cache: Any, st: _Rows, params: SamplingParams) -> list[Generation]:
        """Run the decode loop until every row has finished; returns one Generation per initial row."""
        dev = self.device
        n = st.index.shape[0]
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        reason = ["length"] * n
        eos = torch.tensor(self.eos_token_ids or [-1], dtype=torch.int64, device=dev)
        stop = tuple(params.stop)
        finished = torch.zeros(n, dtype=torch.bool, device=dev)  # per batch row (not per original row)
        steps_done = torch.zeros(n, dtype=torch.int64, device=dev)
        while True:
            tok, lp = sample_tokens(st.logits, params, st.seeds, steps_done)
            steps_done = steps_done + 1
            live = (~finished).nonzero()[:, 0]
            self.stats.generated_tokens += int(live.numel())
            tok_l, lp_l, idx_l = tok[live].tolist(), lp[live].tolist(), st.index[live].tolist()
            eos_hit = torch.isin(tok[live], eos).tolist()
            over = (steps_done[live] >= st.limit[live]).tolist()
            newly = []
            for r, (t, p, i) in enumerate(zip(tok_l, lp_l, idx_l)):
                tokens[i].append(t)
                logps[i].append(p)
                if eos_hit[r]:
                    reason[i] = "eos"
                elif self._stopped(tokens[i], stop):
                    reason[i] = "stop"
                elif not over[r]:
                    continue
                newly.append(r)
            if newly:
                finished[live[torch.tensor(newly, dtype=torch.int64, device=dev)]] = True
            if bool(finished.all()):
                break
            # Finished rows stay in the batch (their tokens are ignored) until a quarter of the batch
            # has finished; then one copy compacts them out. Compacting at every finish would copy
            # the whole cache nearly every step.
            if int(finished.sum()) * 4 >= finished.numel():
                keep = (~finished).nonzero()[:, 0]
                tok = tok[keep]
                st = _Rows(st.index[keep], st.mask[keep], st.pos[keep], st.seeds[keep], st.limit[keep], st.logits)
                steps_done = steps_done[keep]
                finished = finished[keep]
                # drop leading columns that are padding for every remaining row
                lead = int((st.mask.cumsum(-1) == 0).all(0).sum())
                st.mask = st.mask[:, lead:]
                for layer in _layers(cache):
                    layer.select(keep, lead)
            st.mask = torch.cat([st.mask, torch.ones_like(st.mask[:, :1])], dim=1)
            logits, cache = self._forward(tok[:, None], st.mask, st.pos[:, None], cache)
            self.stats.decode_tokens += int(tok.shape[0])
            self.stats.decode_steps += 1
            st.pos = st.pos + 1
            st.logits = logits[:, -1]
        return [Generation(tokens[i], logps[i], reason[i]) for i in range(n)]


#: the sequences' logits at every position are kept when they take at most this many bytes
_TRACE_LOGITS_BYTES = 256 << 20
#: node logits a branch trie keeps before it drops those no row stands on
_NODE_LOGITS_BYTES = 1 << 30


class TrieLogits:
    """Next-token logits of trie nodes in one growing table with a free list."""

    def __init__(self, first: torch.Tensor, capacity: int) -> None:  # noqa: D107
        self.data = first
        self.capacity = max(int(capacity), first.shape[0])
        self.free_slots: list[int] = []
        self.used = first.shape[0]

    def keep_first(self, n: int) -> None:
        self.used = n

    def rows(self, slots: torch.Tensor) -> torch.Tensor:
        return self.data[slots]

    def add(self, logits: torch.Tensor) -> list[int]:
        n = logits.shape[0]
        slots = [self.free_slots.pop() for _ in range(min(n, len(self.free_slots)))]
        fresh = n - len(slots)
        if self.used + fresh > self.data.shape[0]:
            grow = max(self.used + fresh, 2 * self.data.shape[0]) - self.data.shape[0]
            self.data = torch.cat([self.data, self.data.new_empty((grow, self.data.shape[1]))])
        slots += list(range(self.used, self.used + fresh))
        self.used += fresh
        self.data[torch.tensor(slots, device=self.data.device)] = logits.to(self.data.dtype)
        return slots

    def full(self) -> bool:
        return self.used - len(self.free_slots) > self.capacity

    def free(self, slots: list[int]) -> None:
        self.free_slots.extend(slots)


def _vocab_size(model: Any) -> int | None:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(emb, "weight", None)
    return int(weight.shape[0]) if weight is not None else None


def _cache_kwarg(model: Any) -> str:
    """The name under which `model.forward` takes its KV cache: ``cache`` (transformers >= 5.22) or
    ``past_key_values`` (older releases, and models that kept the old name)."""
    import inspect

    try:
        names = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins / C extensions
        return "past_key_values"
    return "cache" if "cache" in names else "past_key_values"


def _probe_requests(sequences: Sequence[Sequence[int]], requests: Sequence[BranchRequest]) -> list[BranchRequest]:
    """A few requests of a branch call that exercise the tree path's masking: two sequences when there
    are two, each cut at its first requested cut and at its full length."""
    seqs = sorted({r.seq for r in requests})[:2]
    out = []
    for s in seqs:
        cuts = sorted({r.cut for r in requests if r.seq == s})
        for c in {cuts[0], cuts[-1], len(sequences[s])}:
            out.append(BranchRequest(s, c, f"probe/{s}/{c}"))
    return out


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
    "HFSampler",
    "OnBatch",
    "Sampler",
    "SamplerStats",
    "SamplingParams",
    "check_branch",
    "check_generate",
    "counter_uniform",
    "decode_completion",
    "filter_logits",
    "row_seed",
    "sample_tokens",
    "text_decoder",
]
