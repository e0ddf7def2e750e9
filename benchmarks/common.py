"""Shared helpers for `make bench`: where results.json lives, and merging figures into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefixvalue.tracking import record_result

RESULTS = Path(__file__).resolve().parent / "results.json"
REPO = Path(__file__).resolve().parents[1]
SHIPPED_POLICY = REPO / "data" / "policies" / "arith-tiny"


def record(name: str, value: float | None, **context: Any) -> None:
    """Merge ``{name: {"value": value, **context, "machine": ..., "measured_at": ...}}`` into results.json."""
    record_result(RESULTS, name, value, **context)
    print(f"{name}: {value}")
