"""A transformers causal LM driven with explicit KV caches: what the HF sampler's two decode paths share.

`CausalLM` runs one forward over a given cache and prefills left-padded rows with explicit
``position_ids`` (so padding never shifts positions), counting the tokens it prefills in the sampler's
`SamplerStats`; `Continuations` collects the rows' tokens and ends a row on EOS, a stop string or its
budget. The plain path (`prefixvalue.sampling.hf`) and the trie path (`prefixvalue.sampling.trie`) both
decode through them.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from .cache import cache_layers
from .sampler import Generation, SamplerStats


def eos_ids(model: Any, tokenizer: Any | None) -> list[int]:
    """The token ids that end a row: the model's generation config's ``eos_token_id``, else the
    tokenizer's; empty when neither has one."""
    eos: Any = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    return [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])


def _cache_kwarg(model: Any) -> str:
    """The name under which `model.forward` takes its KV cache: ``cache`` (transformers >= 5.22) or
    ``past_key_values`` (older releases, and models that kept the old name)."""
    try:
        names = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins / C extensions
        return "past_key_values"
    return "cache" if "cache" in names else "past_key_values"


class CausalLM:
    """`model` (a transformers causal LM) and `tokenizer` (for stop strings; may be None), with the
    ids that end a row (`eos_token_ids`; None: `eos_ids`) and the `stats` its prefills count into."""

    def __init__(
        self, model: Any, tokenizer: Any | None, eos_token_ids: Sequence[int] | None, stats: SamplerStats
    ) -> None:  # noqa: D107
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_ids(model, tokenizer) if eos_token_ids is None else [int(e) for e in eos_token_ids]
        self.stats = stats
        self.cache_kwarg = _cache_kwarg(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def vocab_size(self) -> int | None:
        """Rows of the output embedding (the logits' width), None when the model does not expose it."""
        emb = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        weight = getattr(emb, "weight", None)
        return int(weight.shape[0]) if weight is not None else None

    def forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor | None,
        pos: torch.Tensor,
        cache: Any | None,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> tuple[torch.Tensor, Any]:
        """One forward of `input_ids` (rows, q) at position ids `pos` over `cache` (None: a new one).

        Returns ``(logits, cache)``: logits (rows, kept positions, vocab) and the cache the model hands
        back. `logits_to_keep` is transformers' argument (0: every position; an int n: the last n; a
        tensor: those columns).
        """
        kwargs: dict[str, Any] = {self.cache_kwarg: cache}
        if not isinstance(logits_to_keep, int) or logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True, **kwargs)
        return out.logits, getattr(out, self.cache_kwarg, None) or out.past_key_values

    def prefill(
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
        logits, cache = self.forward(ids, mask, pos, None, logits_to_keep=keep)
        valid = mask.bool()[:, None, :, None]
        for layer in cache_layers(cache):
            layer.keys = torch.where(valid, layer.keys, torch.zeros((), dtype=layer.keys.dtype, device=dev))
            layer.values = torch.where(valid, layer.values, torch.zeros((), dtype=layer.values.dtype, device=dev))
        self.stats.prefill_tokens += int(mask.sum())
        next_pos = mask.sum(-1)
        return cache, mask, next_pos, (logits if keep_all_logits or columns is not None else logits[:, -1])

    def stopped(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        """Whether the text of the last tokens contains one of the stop strings."""
        if not stop or self.tokenizer is None:
            return False
        tail = max(len(x) for x in stop) + 1
        text = self.tokenizer.decode(tokens[-tail:], skip_special_tokens=True)
        return any(x in text for x in stop)


class Continuations:
    """The continuations being decoded, one per row (tokens, log-probs, finish reasons), and the rule that
    ends a row: an EOS id of `lm`, a stop string in its text, or its budget of `limits[row]` tokens (see
    `Generation`)."""

    def __init__(self, lm: CausalLM, limits: Sequence[int], stop: tuple[str, ...]) -> None:  # noqa: D107
        self.lm = lm
        self.limits = list(limits)
        self.stop = tuple(stop)
        self.eos = set(lm.eos_token_ids)
        self.tokens: list[list[int]] = [[] for _ in self.limits]
        self.logprobs: list[list[float]] = [[] for _ in self.limits]
        self.reasons = ["length"] * len(self.limits)

    def add(self, row: int, token: int, logprob: float) -> bool:
        """Append `token` (log-probability `logprob`) to row `row`; returns whether that row has finished."""
        self.tokens[row].append(token)
        self.logprobs[row].append(logprob)
        if token in self.eos:
            self.reasons[row] = "eos"
            return True
        if self.lm.stopped(self.tokens[row], self.stop):
            self.reasons[row] = "stop"
            return True
        return len(self.tokens[row]) >= self.limits[row]

    def generations(self) -> list[Generation]:
        """One `Generation` per row, in row order."""
        return [Generation(t, lp, r) for t, lp, r in zip(self.tokens, self.logprobs, self.reasons)]


__all__ = ["CausalLM", "Continuations", "eos_ids"]
