"""Shared helpers for `make bench`: machine description and merging figures into results.json."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results.json"
REPO = Path(__file__).resolve().parents[1]
SHIPPED_POLICY = REPO / "data" / "policies" / "arith-tiny"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def record(name: str, value: float | None, **context: Any) -> None:
    """Merge ``{name: {"value": value, **context, "machine": ..., "measured_at": ...}}`` into results.json."""
    data: dict[str, Any] = {}
    if RESULTS.exists():
        data = json.loads(RESULTS.read_text())
    data[name] = {"value": value, **context, "machine": machine(),
                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(RESULTS)
    print(f"{name}: {value}")
