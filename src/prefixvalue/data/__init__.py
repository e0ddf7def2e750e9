"""On-disk datasets shared by every stage: traces and prefix labels (contracts in docs/design.md).

Both are `datasets` datasets saved with ``save_to_disk``. Stages that write them in shards (`shards`) keep
each shard under ``OUT/shards/`` and merge into ``OUT/`` at the end; readers use `load_traces` and
`load_labels`, which accept either a merged folder or a folder of shards.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets

from .split import SplitRecord, heldout_selection, is_heldout, normalise_prompt, split_by_prompt, unit_hash

#: fields every traces row carries (see docs/design.md, "traces")
TRACE_FIELDS: tuple[str, ...] = (
    "trace_id",
    "prompt_id",
    "prompt",
    "completion",
    "prompt_ids",
    "completion_ids",
    "outcome",
    "verifier_error",
    "step_spans",
    "step_labels",
    "logprobs",
)
#: fields every prefix-labels row carries (see docs/design.md, "prefix labels")
LABEL_FIELDS: tuple[str, ...] = ("trace_id", "position", "n", "successes", "mean", "ci_low", "ci_high")


class DataFormatError(ValueError):
    """A dataset on disk does not follow its contract; the message names the folder and field."""


def _load(path: str | Path, required: Iterable[str], what: str) -> datasets.Dataset:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if (path / "dataset_info.json").exists() or (path / "state.json").exists():
        ds = datasets.load_from_disk(str(path))
    elif (path / "data").exists():
        ds = datasets.load_from_disk(str(path / "data"))
    else:
        raise DataFormatError(f"{path} is not a saved {what} dataset (no dataset_info.json)")
    if isinstance(ds, datasets.DatasetDict):
        raise DataFormatError(f"{path}: expected one dataset, found splits {list(ds)}")
    missing = [f for f in required if f not in ds.column_names]
    if missing:
        raise DataFormatError(f"{path}: {what} dataset lacks field(s) {missing}")
    return ds


def load_traces(path: str | Path) -> datasets.Dataset:
    """Load a traces dataset written by `prefixvalue collect` (or by the user, same fields)."""
    return _load(path, TRACE_FIELDS, "traces")


def load_labels(path: str | Path) -> datasets.Dataset:
    """Load a prefix-labels dataset written by `prefixvalue label`."""
    return _load(path, LABEL_FIELDS, "prefix labels")


def finish_summary(finish_reasons: Sequence[str | None], notes: Sequence[str | None]) -> dict[str, Any]:
    """Counts of each finish reason (eos, stop, length) and of completions scored 0 for being cut off."""
    counts: dict[str, int] = {}
    for r in finish_reasons:
        counts[str(r)] = counts.get(str(r), 0) + 1
    n = max(len(finish_reasons), 1)
    return {
        "finish_reasons": dict(sorted(counts.items())),
        "truncated_fraction": counts.get("length", 0) / n,
        "failed_as_truncated": sum(1 for x in notes if x and x.startswith("truncated")),
    }


def traces_finish_summary(ds: datasets.Dataset) -> dict[str, Any]:
    """`finish_summary` of a traces dataset (traces without finish reasons or notes count as unknown)."""
    n = len(ds)
    reasons = ds["finish_reason"] if "finish_reason" in ds.column_names else [None] * n
    notes = ds["outcome_note"] if "outcome_note" in ds.column_names else [None] * n
    return finish_summary(reasons, notes)


def rows_to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    """Build a dataset from row dicts (fields as in the contracts)."""
    return datasets.Dataset.from_list(rows)


def save_subset(ds: datasets.Dataset, indices: list[int], path: str | Path) -> Path:
    """Save rows `indices` of traces `ds` at `path` (atomically: a temp folder, then a rename), unless the
    same trace ids are already there; returns the path."""
    path = Path(path)
    sub = ds.select(indices)
    if path.exists():
        try:
            if load_traces(path)["trace_id"] == sub["trace_id"]:
                return path
        except (OSError, ValueError):  # an incomplete folder from an interrupted run: rewrite it
            pass
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sub.save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return path


__all__ = [
    "LABEL_FIELDS",
    "TRACE_FIELDS",
    "DataFormatError",
    "SplitRecord",
    "heldout_selection",
    "is_heldout",
    "load_labels",
    "load_traces",
    "normalise_prompt",
    "rows_to_dataset",
    "save_subset",
    "finish_summary",
    "traces_finish_summary",
    "split_by_prompt",
    "unit_hash",
]
