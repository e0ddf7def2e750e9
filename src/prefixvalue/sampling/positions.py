"""Which prefixes of a trace to label: position specs shared by label, evaluate and quickstart.

A position is the number of completion tokens in the prefix, in ``[0, len(completion_ids) - 1]``
(0 is the bare prompt; the full completion is excluded because its outcome is already known).

Specs: ``all`` | ``stride:K`` | ``steps`` | ``short:K`` | ``adaptive`` (see `parse_positions`).
With ``steps``, a trace of fewer than 2 steps can be labelled at a fallback spec's positions instead
(`step_fallback`, see `parse_step_fallback`), so a one-line prose answer is not labelled at 0 alone.
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


def parse_step_fallback(spec: str | PositionSpec | None) -> PositionSpec | None:
    """Read the fallback of ``steps`` positions: None (or ``none``) for no fallback, else a spec of kind
    ``all``, ``stride:K`` or ``short:K``; PositionSpecError for ``steps``, ``adaptive`` or a bad spec."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("none", "null", "")):
        return None
    s = parse_positions(spec)
    if s.kind in ("steps", "adaptive"):
        raise PositionSpecError(f"step_fallback {spec!r} must be all, stride:K or short:K (or none), not {s.kind}")
    return s


def uses_step_fallback(
    spec: str | PositionSpec,
    step_spans: Sequence[Sequence[int]] | None,
    step_fallback: str | PositionSpec | None,
) -> bool:
    """Whether `positions_for_trace` labels this trace at `step_fallback`'s positions: `spec` is
    ``steps``, a fallback is set, and the trace has fewer than 2 step spans."""
    return (
        parse_positions(spec).kind == "steps"
        and parse_step_fallback(step_fallback) is not None
        and len(step_spans or []) < 2
    )


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
    step_fallback: str | PositionSpec | None = None,
) -> list[int]:
    """Sorted positions to label in one trace of `completion_len` completion tokens.

    ``all``: every position 0..T-1; ``stride:K``: 0, K, 2K, ..; ``steps``: step boundaries (0, each
    step start and end); ``short:K``: 0..K (the bare prompt and the first K completion tokens, clipped);
    ``adaptive``: the starting grid of the adaptive labeller (step boundaries, plus every
    `adaptive_stride` tokens, plus T-1); adaptive labelling then adds positions by bisection.
    `step_fallback` (``all``, ``stride:K`` or ``short:K``; None: none) applies to ``steps`` only: a trace
    with fewer than 2 step spans gets the fallback's positions instead of its step boundaries.
    """
    s = parse_positions(spec)
    if uses_step_fallback(s, step_spans, step_fallback):
        fallback = parse_step_fallback(step_fallback)
        assert fallback is not None
        return positions_for_trace(fallback, completion_len)
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
    step_fallback: str | PositionSpec | None = None,
) -> list[list[int]]:
    """`positions_for_trace` for each trace; `step_spans` (per trace) may be None if unused."""
    spans = step_spans if step_spans is not None else [None] * len(completion_lens)
    if len(spans) != len(completion_lens):
        raise ValueError(f"{len(completion_lens)} traces but {len(spans)} step-span lists")
    return [
        positions_for_trace(spec, int(t), sp, adaptive_stride, step_fallback) for t, sp in zip(completion_lens, spans)
    ]


__all__ = [
    "PositionSpec",
    "PositionSpecError",
    "parse_positions",
    "parse_step_fallback",
    "positions",
    "positions_for_trace",
    "step_boundaries",
    "uses_step_fallback",
]
