"""Shared helpers for `make bench`: where results.json lives, and merging figures into it."""

from __future__ import annotations

import json
import sys
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


def run_metrics(argv: list[str], doc: str) -> dict[str, Any] | None:
    """The metrics.json of the run folder `argv` names (its only argument), or None after printing the usage line
    of a script whose docstring `doc` holds it as its third line."""
    if len(argv) != 1:
        print(doc.strip().splitlines()[2].strip(), file=sys.stderr)
        return None
    return json.loads((Path(argv[0]) / "metrics.json").read_text())
