"""KV-cache layouts of the HF sampler, as transformers `DynamicCache` layers.

The sampler keeps its own cache layouts: `grow_cache` (rows with room to grow in place, for the plain
decode of `prefixvalue.sampling.hf`) and `node_cache` (one column per trie node, for the trie path of
`prefixvalue.sampling.trie`). Both hand transformers a `DynamicCache` whose layers answer the calls a
model's forward makes; `CacheLayer` holds the answers they share, and `dynamic_cache` builds the cache
(transformers checks that its layers are `DynamicLayer`s, and is imported only when a cache is made).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


class CacheLayer:
    """What a cache layer answers beyond its own `keys`, `values`, `update` and `get_seq_length` (which
    every layout defines)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0  # type: ignore[attr-defined]

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> None:  # pragma: no cover - interface completeness
        pass

    def prefetch(self) -> None:  # pragma: no cover
        pass


#: layout class -> the same class made a transformers DynamicLayer (made once, on first use)
_DYNAMIC: dict[type, type] = {}


def dynamic_cache(layout: type, args: Iterable[tuple[Any, ...]]) -> Any:
    """A transformers `DynamicCache` with one layer ``layout(*a)`` per tuple `a` of `args`."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cls = _DYNAMIC.get(layout)
    if cls is None:
        cls = _DYNAMIC[layout] = type(layout.__name__.removesuffix("Impl"), (layout, DynamicLayer), {})
    cache = DynamicCache()
    cache.layers = [cls(*a) for a in args]
    cache.layer_class_to_replicate = None
    return cache


def cache_layers(cache: Any) -> list[Any]:
    """The per-layer objects of a transformers cache (TypeError for a cache type without ``.layers``)."""
    found = getattr(cache, "layers", None)
    if found is None:
        raise TypeError(f"unsupported cache type {type(cache).__name__}: expected a transformers Cache with .layers")
    return found


# ---------------------------------------------------------------------------------------------
# rows with room to grow (the plain decode)


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


def grow_cache(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], room: int, used: int | None = None) -> Any:
    """A transformers `DynamicCache` whose layers are `_GrowLayer`s holding `pairs` (keys, values);
    with `used`, the pairs are buffers adopted without a copy (see `_GrowLayerImpl`)."""
    return dynamic_cache(_GrowLayerImpl, [(k, v, room, used) for k, v in pairs])


# ---------------------------------------------------------------------------------------------
# one column per trie node (the trie path)


class _NodeLayerImpl(CacheLayer):
    """One layer's keys/values of the off-trace nodes of a branch trie, one column per node:
    (capacity, kv_heads, dim). A decode forward writes its nodes' columns (`node_ids`) and hands the
    attention (`prefixvalue.sampling.tree.tree_attention`) each node's chain of off-trace ancestors,
    itself included (`chains`, padded with node 0, a zero column the attention masks out), as
    (kv_heads, nodes, depth, dim): one gather, laid out for the attention's batched products. Stored
    head-major, (kv_heads, capacity, dim)."""

    def __init__(self, kv_heads: int, dim: int, vdim: int, capacity: int, like: torch.Tensor) -> None:  # noqa: D107
        self._k = like.new_zeros((kv_heads, capacity, dim))
        self._v = like.new_zeros((kv_heads, capacity, vdim))
        self.node_ids: torch.Tensor | None = None
        self.chains: torch.Tensor | None = None
        self.is_initialized = True
        self.dtype, self.device = like.dtype, like.device

    def reserve(self, capacity: int) -> None:
        if capacity > self._k.shape[1]:
            grow = max(capacity, 2 * self._k.shape[1]) - self._k.shape[1]
            self._k = torch.cat([self._k, self._k.new_zeros((self._k.shape[0], grow, self._k.shape[2]))], dim=1)
            self._v = torch.cat([self._v, self._v.new_zeros((self._v.shape[0], grow, self._v.shape[2]))], dim=1)

    @property
    def keys(self) -> torch.Tensor:
        return self._k

    @property
    def values(self) -> torch.Tensor:
        return self._v

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if key_states.shape[2] != 1 or self.node_ids is None or self.chains is None:
            raise RuntimeError("tree attention decodes one token per node")
        self._k[:, self.node_ids] = key_states[:, :, 0].transpose(0, 1)
        self._v[:, self.node_ids] = value_states[:, :, 0].transpose(0, 1)
        return self._k[:, self.chains], self._v[:, self.chains]

    def get_seq_length(self) -> int:
        return 0 if self.chains is None else int(self.chains.shape[1])


def node_cache(layers: int, kv_heads: int, dim: int, vdim: int, capacity: int, like: torch.Tensor) -> Any:
    """A transformers `DynamicCache` of `layers` `_NodeLayer`s (see `_NodeLayerImpl`)."""
    return dynamic_cache(_NodeLayerImpl, [(kv_heads, dim, vdim, capacity, like)] * layers)


__all__ = ["CacheLayer", "cache_layers", "dynamic_cache", "grow_cache", "node_cache"]
