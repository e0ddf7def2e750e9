"""Counter-based randomness: per-row seeds and the token draw of the HF sampler.

Every row carries a string key (e.g. ``"arith-train-000003/s5"``) and the Gumbel noise for (row, step,
token) is a hash of (seed, key, step, token). A row's tokens therefore do not depend on which other rows
share its batch, on batch order, on finished rows being compacted out, or on how many processes split the
work -- the same command gives the same traces. (Batched float arithmetic can still differ in the last bits
between batch layouts; with float32 that flips a sample only when two Gumbel-perturbed logits tie to
~1e-6.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from .sampler import SamplingParams

_M32 = 0xFFFFFFFF


def row_seed(seed: int, key: str) -> int:
    """A 64-bit integer derived from (seed, key) with SHA-256; used to seed one sampled row."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{key}".encode()).digest()[:8], "little")


def fold_seeds(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """64-bit unsigned seeds (`row_seed`) as an int64 tensor (two's complement) on `device`."""
    signed = [v - (1 << 64) if v >= (1 << 63) else v for v in values]
    return torch.tensor(signed, dtype=torch.int64, device=device)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


def _mix32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """`_mix32` in place on `x`, with `tmp` (same shape) as scratch: the same values without allocating a
    tensor per operation (the (rows, vocab) hash of every sampled token is a large share of sampling)."""
    torch.bitwise_right_shift(x, 16, out=tmp)
    x ^= tmp
    x.mul_(0x85EBCA6B).bitwise_and_(_M32)
    torch.bitwise_right_shift(x, 13, out=tmp)
    x ^= tmp
    x.mul_(0xC2B2AE35).bitwise_and_(_M32)
    torch.bitwise_right_shift(x, 16, out=tmp)
    x ^= tmp
    return x


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
    h = v[None, :] ^ r2[:, None]
    tmp = torch.empty_like(h)
    _mix32_(h, tmp)
    h ^= r3[:, None]
    _mix32_(h, tmp)
    return h.to(torch.float64).add_(0.5).div_(4294967296.0)


#: elements of the CPU noise computed at a time: a few rows of a large vocabulary, so that the hash's passes
#: stay in a core's cache (about 3x faster than the whole (rows, vocab) block at once)
_NOISE_CHUNK = 1 << 17


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor | int, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """Gumbel noise ``-log(-log(u))`` of `counter_uniform`'s uniforms, as `dtype` (rows, vocab); on CPU a few
    rows at a time (`_NOISE_CHUNK`), with the same values."""
    rows = seeds.shape[0]
    step_t = torch.as_tensor(steps, dtype=torch.int64, device=seeds.device).expand_as(seeds)
    per = max(1, _NOISE_CHUNK // max(vocab, 1)) if seeds.device.type == "cpu" else max(rows, 1)
    out = torch.empty((rows, vocab), dtype=dtype, device=seeds.device)
    for a in range(0, rows, per):
        u = counter_uniform(seeds[a : a + per], step_t[a : a + per], vocab)
        out[a : a + per] = u.log_().neg_().log_().neg_()
    return out


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
    logits: torch.Tensor, params: SamplingParams, seeds: torch.Tensor, steps: torch.Tensor | int
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
    gumbel = gumbel_noise(seeds, steps, logits.shape[-1], logp.dtype)
    tok = torch.argmax(logp + gumbel, dim=-1)
    return tok, logp.gather(-1, tok[:, None])[:, 0]


__all__ = ["counter_uniform", "filter_logits", "fold_seeds", "gumbel_noise", "row_seed", "sample_tokens"]
