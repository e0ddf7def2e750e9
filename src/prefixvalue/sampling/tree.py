"""Attention over a trie of token histories: Monte Carlo continuations that share a prefix share its work.

Monte Carlo labelling continues every prefix ``seq[:cut]`` of a trace M times. Position p+1's prefix
extends position p's, so all those continuations are branches of one trie rooted in the trace
(`prefixvalue.sampling.trie` builds it): a node is a distinct token history, the trace's first c tokens
followed by off-trace tokens. Rows of one prefix that draw the same tokens stand on the same nodes,
and a row that re-draws the trace's next token stands where the next position's rows start. A decode
forward runs each new node once, whatever the number of rows on it. A node attends in two parts,
merged in one softmax:

- the shared part: the trace's cached keys, first c columns -- the queries of all nodes of one trace
  against its cache are one matrix product per KV head (nodes are grouped by trace);
- the node's own part: the one-column keys/values of its off-trace ancestors and itself (a gather of
  a short chain, no per-row copy of the prefix).

The attention runs through transformers' ``AttentionInterface`` (a registered function, selected by
setting ``config._attn_implementation`` for the decode forwards only), so it applies to every model
whose attention layers dispatch through that interface (GPT-2, Llama, Qwen2, Mistral without sliding
windows, ...). `HFSampler` checks the trie against its plain path on the first call and keeps the plain
path when a model's samples differ (see `HFSampler.tree_attention`). docs/design.md ("Monte Carlo
labelling at scale") has the cost model and the measurements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

ATTN_NAME = "prefixvalue_tree"


@dataclass
class TreeBatch:
    """The shared part of one decode batch.

    `keys[l]` / `values[l]` are layer l's cache of the batch's sequences, (sequences, kv_heads, width,
    head_dim), left-padded. Rows are grouped by sequence: `blocks` lists ``(sequence, first_row,
    end_row)``, and row r sees the cache columns where ``prefix_mask[r]`` is True (its prefix tokens).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    row_seq: torch.Tensor  # int64 (rows,), non-decreasing
    prefix_mask: torch.Tensor  # bool (rows, width)
    blocks: list[tuple[int, int, int]]
    own_mask: torch.Tensor | None = None  # bool (rows, own): which of the own part's columns are real
    #: with many short blocks (e.g. collect's prompts), the blocks padded to one size: (block sequences,
    #: or None when they are all the cache's sequences in order; each row's slot in the padded layout;
    #: slots per block), so that the shared part is one batched product instead of one per block
    padded: tuple[torch.Tensor | None, torch.Tensor, int] | None = None

    @classmethod
    def build(
        cls,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        row_seq: torch.Tensor,
        prefix_mask: torch.Tensor,
        own_mask: torch.Tensor | None = None,
    ) -> TreeBatch:
        if row_seq.numel() > 1 and bool((row_seq[1:] < row_seq[:-1]).any()):
            raise ValueError("tree rows must be grouped by sequence (row_seq non-decreasing)")
        blocks = _blocks(row_seq)
        return cls(keys, values, row_seq, prefix_mask, blocks, own_mask, _padded(blocks, keys[0].shape[0], row_seq))


def _padded(
    blocks: list[tuple[int, int, int]], sequences: int, row_seq: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor, int] | None:
    """`TreeBatch.padded` for `blocks` when padding them to one size at most doubles the rows and there are
    more than 2 blocks (fewer: a product per block costs nothing extra), else None."""
    size = max((b - a for _, a, b in blocks), default=0)
    rows = blocks[-1][2] if blocks else 0
    if len(blocks) <= 2 or len(blocks) * size > 2 * rows:
        return None
    slot = [k * size + r - a for k, (_, a, b) in enumerate(blocks) for r in range(a, b)]
    seqs = [s for s, _, _ in blocks]
    dev = row_seq.device
    which = None if seqs == list(range(sequences)) else torch.tensor(seqs, dtype=torch.int64, device=dev)
    return which, torch.tensor(slot, dtype=torch.int64, device=dev), size


def _shared_product(batch: TreeBatch, x: torch.Tensor, cache: torch.Tensor, transpose: bool) -> torch.Tensor:
    """Per KV head, each row's `x` (kv_heads, rows, groups, n) times its sequence's `cache` (sequences, kv_heads,
    width, dim), transposed (scores, n = dim) or not (outputs, n = width): (kv_heads, rows, groups, m)."""
    kv_heads, rows, groups, n = x.shape
    if batch.padded is None:
        parts = []
        for s, a, b in batch.blocks:
            c = cache[s].transpose(-1, -2) if transpose else cache[s]
            parts.append(torch.matmul(x[:, a:b].reshape(kv_heads, (b - a) * groups, n), c))
        return torch.cat(parts, dim=1).view(kv_heads, rows, groups, -1)
    which, slot, size = batch.padded
    blocks = len(batch.blocks)
    c = cache if which is None else cache[which]
    c = c.transpose(-1, -2) if transpose else c  # (blocks, kv_heads, ., .)
    xp = x.new_zeros((kv_heads, blocks * size, groups, n))
    xp[:, slot] = x
    xp = xp.view(kv_heads, blocks, size * groups, n).transpose(0, 1)  # (blocks, kv_heads, size * groups, n)
    out = torch.matmul(xp, c).transpose(0, 1)  # (kv_heads, blocks, size * groups, m)
    return out.reshape(kv_heads, blocks * size, groups, -1)[:, slot]


def _blocks(row_seq: torch.Tensor) -> list[tuple[int, int, int]]:
    seqs, counts = torch.unique_consecutive(row_seq, return_counts=True)
    out, start = [], 0
    for s, c in zip(seqs.tolist(), counts.tolist()):
        out.append((s, start, start + c))
        start += c
    return out


#: the batch the registered attention function reads (set by the trie path around its decode forwards)
_ACTIVE: TreeBatch | None = None


def activate(batch: TreeBatch | None) -> None:
    global _ACTIVE
    _ACTIVE = batch


def tree_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one decode token per trie node over (its trace's first c tokens) + (its own chain).

    `query` is (nodes, heads, 1, head_dim); `key`/`value` are the nodes' chains as the layers of
    `prefixvalue.sampling.cache.node_cache` return them, (kv_heads, nodes, depth, head_dim), padded where
    ``batch.own_mask`` is False.
    Returns ``(nodes, 1, heads, head_dim)``, the layout of transformers' attention functions. Works
    head-major: (kv_heads, nodes, groups, ...).
    """
    batch = _ACTIVE
    if batch is None:
        raise RuntimeError("prefixvalue tree attention called outside a branch decode")
    layer = int(module.layer_idx)
    pk, pv = batch.keys[layer], batch.values[layer]  # (seqs, kv_heads, width, dim)
    rows, heads, q_len, dim = query.shape
    if q_len != 1:
        raise RuntimeError("tree attention decodes one token per row")
    kv_heads, width = pk.shape[1], pk.shape[2]
    groups = heads // kv_heads
    scale = float(scaling) if scaling is not None else dim**-0.5
    qh = query[:, :, 0].reshape(rows, kv_heads, groups, dim).permute(1, 0, 2, 3).contiguous()
    # shared part: one (rows of the sequence x prefix columns) product per sequence and KV head
    s_shared = _shared_product(batch, qh, pk, transpose=True)  # (kv_heads, rows, groups, width)
    # own part: every row against its own few tokens, one batched product over (KV head, row)
    s_own = torch.matmul(qh, key.transpose(-1, -2))  # (kv_heads, rows, groups, own)
    scores = torch.cat([s_shared, s_own], dim=-1).float() * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores[..., :width].masked_fill_(~batch.prefix_mask[None, :, None, :], float("-inf"))
    if batch.own_mask is not None:
        scores[..., width:].masked_fill_(~batch.own_mask[None, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    p_shared = probs[..., :width]
    o_shared = _shared_product(batch, p_shared, pv, transpose=False)  # (kv_heads, rows, groups, dim)
    o_own = torch.matmul(probs[..., width:], value)  # (kv_heads, rows, groups, dim)
    out = (o_shared + o_own).permute(1, 0, 2, 3)  # (rows, kv_heads, groups, dim)
    return out.reshape(rows, 1, heads, dim), None


def register() -> None:
    """Register `tree_attention` with transformers' AttentionInterface (idempotent). No mask function is
    registered for it, so transformers builds no attention mask for the decode forwards."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, tree_attention)


def supports_tree(model: Any) -> str | None:
    """Why `model` cannot use tree attention, or None when it can (its attention dispatches through
    transformers' AttentionInterface, and no layer has a sliding window, attention sinks or ALiBi)."""
    if not getattr(model, "_supports_attention_backend", False):
        return f"{type(model).__name__} does not dispatch attention through transformers' AttentionInterface"
    cfg = getattr(model, "config", None)
    if cfg is None:
        return "the model has no config"
    if getattr(cfg, "sliding_window", None) or getattr(cfg, "attention_chunk_size", None):
        return "sliding-window / chunked attention"
    layer_types: Sequence[str] = getattr(cfg, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types):
        return "layers other than full attention"
    if getattr(cfg, "alibi", False) or getattr(cfg, "use_alibi", False):
        return "ALiBi position biases"
    for m in model.modules():
        if getattr(m, "sinks", None) is not None:
            return "attention sinks"
    return None


class use_tree_attention:
    """Context manager: decode forwards of `model` run `tree_attention` over `batch`."""

    def __init__(self, model: Any, batch: TreeBatch) -> None:
        self.config = model.config
        self.batch = batch

    def __enter__(self) -> None:
        self.saved = self.config._attn_implementation
        self.config._attn_implementation = ATTN_NAME
        activate(self.batch)

    def __exit__(self, *exc: Any) -> None:
        self.config._attn_implementation = self.saved
        activate(None)


__all__ = ["ATTN_NAME", "TreeBatch", "register", "supports_tree", "tree_attention", "use_tree_attention"]
