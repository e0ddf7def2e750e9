"""KV-cache layers of the HF sampler, as transformers `DynamicCache` layers.

The sampler keeps its own cache layouts (`sampler._GrowLayerImpl`: rows with room to grow in place;
`tree._NodeLayerImpl`: one column per trie node). Both hand transformers a `DynamicCache` whose
layers answer the calls a model's forward makes; `CacheLayer` holds the answers they share, and
`dynamic_cache` builds the cache (transformers checks that its layers are `DynamicLayer`s, and is
imported only when a cache is made).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


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


__all__ = ["CacheLayer", "dynamic_cache"]
