"""Which prefixes of a trace to label: position specs shared by label, evaluate and quickstart.

A position is the number of completion tokens in the prefix, in ``[0, len(completion_ids) - 1]``
(0 is the bare prompt; the full completion is excluded because its outcome is already known).

Specs: ``all`` | ``stride:K`` | ``steps`` | ``short:K`` | ``adaptive`` (see `parse_positions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

_KINDS = ("all", "stride", "steps", "short", "adaptive")


class PositionSpecError(ValueError):
    """A position spec could not be read; the message lists the valid forms."""


@dataclass(frozen=True)
class PositionSpec:
    """A parsed position spec: `kind` in ``all, stride, steps, short, adaptive``; `k` for stride/short."""

    kind: str
    k: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.k}" if self.k is not None else self.kind


def parse_positions(spec: str | PositionSpec) -> PositionSpec:
    """Read ``all``, ``stride:K`` (K >= 1), ``steps``, ``short:K`` (K >= 0) or ``adaptive``."""
    if isinstance(spec, PositionSpec):
        return spec
    text = str(spec).strip().lower()
    kind, _, arg = text.partition(":")
    usage = "positions must be one of: all, stride:K, steps, short:K, adaptive"
    if kind not in _KINDS:
        raise PositionSpecError(f"unknown positions spec {spec!r}; {usage}")
    if kind in ("stride", "short"):
        try:
            k = int(arg)
        except ValueError:
            raise PositionSpecError(f"positions spec {spec!r} needs an integer K; {usage}") from None
        if k < (1 if kind == "stride" else 0):
            raise PositionSpecError(f"positions spec {spec!r}: K must be >= {1 if kind == 'stride' else 0}")
        return PositionSpec(kind, k)
    if arg:
        raise PositionSpecError(f"positions spec {spec!r} takes no argument; {usage}")
    return PositionSpec(kind)


def step_boundaries(completion_len: int, step_spans: Sequence[Sequence[int]] | None) -> list[int]:
    """0 plus every step start and end that is a valid position (< completion_len), sorted."""
    out = {0}
    for span in step_spans or []:
        for b in span[:2]:
            if 0 <= int(b) < completion_len:
                out.add(int(b))
    return sorted(out)


def positions_for_trace(
    spec: str | PositionSpec,
    completion_len: int,
    step_spans: Sequence[Sequence[int]] | None = None,
    adaptive_stride: int = 8,
) -> list[int]:
    """Sorted positions to label in one trace of `completion_len` completion tokens.

    ``all``: every position 0..T-1; ``stride:K``: 0, K, 2K, ..; ``steps``: step boundaries (0, each
    step start); ``short:K``: 0..K (the bare prompt and the first K completion tokens, clipped);
    ``adaptive``: the starting grid of the adaptive labeller (step boundaries, plus every
    `adaptive_stride` tokens, plus T-1); adaptive labelling then adds positions by bisection.
    """
    s = parse_positions(spec)
    last = completion_len - 1
    if last < 0:
        return []
    if s.kind == "all":
        return list(range(completion_len))
    if s.kind == "stride":
        assert s.k is not None
        return list(range(0, completion_len, s.k))
    if s.kind == "steps":
        return step_boundaries(completion_len, step_spans)
    if s.kind == "short":
        assert s.k is not None
        return list(range(0, min(s.k, last) + 1))
    grid = set(step_boundaries(completion_len, step_spans))
    grid.update(range(0, completion_len, max(1, adaptive_stride)))
    grid.add(last)
    return sorted(grid)


def positions(
    spec: str | PositionSpec,
    completion_lens: Sequence[int],
    step_spans: Sequence[Sequence[Sequence[int]] | None] | None = None,
    adaptive_stride: int = 8,
) -> list[list[int]]:
    """`positions_for_trace` for each trace; `step_spans` (per trace) may be None if unused."""
    spans = step_spans if step_spans is not None else [None] * len(completion_lens)
    if len(spans) != len(completion_lens):
        raise ValueError(f"{len(completion_lens)} traces but {len(spans)} step-span lists")
    return [positions_for_trace(spec, int(t), sp, adaptive_stride) for t, sp in zip(completion_lens, spans)]


__all__ = [
    "PositionSpec",
    "PositionSpecError",
    "parse_positions",
    "positions",
    "positions_for_trace",
    "step_boundaries",
]
