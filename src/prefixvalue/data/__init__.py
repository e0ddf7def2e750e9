"""On-disk datasets shared by every stage: traces and prefix labels (contracts in docs/design.md).

Both are `datasets` datasets saved with ``save_to_disk``. Stages that write them in shards (`shards`) keep
each shard under ``OUT/shards/`` and merge into ``OUT/`` at the end; readers use `load_traces` and
`load_labels`, which accept either a merged folder or a folder of shards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import runfolder
from ..config import ConfigError
from .split import (
    SIDES,
    SPLIT_FILE,
    SplitRecord,
    heldout_selection,
    is_heldout,
    labels_side,
    normalise_prompt,
    split_by_prompt,
    split_side,
    split_three,
    unit_hash,
)

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


class DataFormatError(ConfigError):
    """A dataset on disk does not follow its contract; the message names the folder and field.

    A `ConfigError` (so a ValueError): the command line reports it in one line with exit status 2."""


class DataNotFoundError(DataFormatError, FileNotFoundError):
    """A dataset folder a stage was pointed at does not exist."""


def _load(path: str | Path, required: Iterable[str], what: str) -> datasets.Dataset:
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"{what} not found: {path}")
    if (path / "dataset_info.json").exists() or (path / "state.json").exists():
        folder = path
    elif (path / "data").exists():
        folder = path / "data"
    else:
        raise DataFormatError(f"{path} is not a saved {what} dataset (no dataset_info.json)")
    try:
        ds = datasets.load_from_disk(str(folder))
    except (IndexError, KeyError, pa.ArrowInvalid) as exc:  # `datasets` fails with IndexError on 0 rows
        state = folder / "state.json"
        if state.exists() and not json.loads(state.read_text()).get("_data_files", [None]):
            raise DataFormatError(f"{path}: the {what} dataset has no rows") from None
        raise DataFormatError(f"{path}: cannot read the {what} dataset ({type(exc).__name__}: {exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataFormatError(f"{path}: expected one dataset, found splits {list(ds)}")
    missing = [f for f in required if f not in ds.column_names]
    if missing:
        raise DataFormatError(f"{path}: {what} dataset lacks field(s) {missing}")
    return ds


def _column(ds: datasets.Dataset, name: str) -> pa.Array:
    """Column `name` of `ds` as one arrow array (row selections applied)."""
    col = ds.select_columns([name]).with_format("arrow")[:].column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _list_lengths(ds: datasets.Dataset, field: str) -> np.ndarray:
    """Lengths (int64) of the lists in column `field` of `ds`, a missing list counted as 0."""
    col = _column(ds, field)
    return np.asarray(pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False), dtype=np.int64)


def within_max_length(ds: datasets.Dataset, max_length: int) -> datasets.Dataset:
    """The rows of traces `ds` with at most `max_length` prompt + completion tokens (train's ``max_length``;
    0 keeps all), in order. Vectorised."""
    if not max_length:
        return ds
    lengths = _list_lengths(ds, "prompt_ids") + _list_lengths(ds, "completion_ids")
    return ds.select(np.flatnonzero(lengths <= max_length))


def _numbers(ds: datasets.Dataset, field: str, where: str) -> np.ndarray:
    """Column `field` of `ds` as float64 numbers; DataFormatError naming `where` and `field` when it is not a
    numeric column."""
    col = _column(ds, field)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
        first = col[0].as_py() if len(col) else None
        raise DataFormatError(f"{where}: field {field!r} must be a number, found type {col.type} (row 0: {first!r})")
    return np.asarray(pc.fill_null(col.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)


def _refuse_rows(ds: datasets.Dataset, bad: np.ndarray, where: str, what: Callable[[int], str]) -> None:
    """DataFormatError naming `where`, the first row flagged in `bad`, its trace_id, ``what(row)`` (the field
    and what it must be) and how many rows are flagged; nothing when no row is."""
    if bad.any():
        row = int(np.argmax(bad))
        tid = ds[row]["trace_id"] if "trace_id" in ds.column_names else None
        raise DataFormatError(f"{where}: row {row} (trace_id {tid!r}): {what(row)} ({int(bad.sum())} such row(s))")


def check_unit_interval(ds: datasets.Dataset, field: str, where: str) -> None:
    """DataFormatError, naming `where`, the first bad row, its trace_id and `field`, unless every value of
    column `field` is a finite number in [0, 1]. Vectorised: a few ms for 100k rows."""
    values = _numbers(ds, field, where)
    bad = ~(np.isfinite(values) & (values >= 0.0) & (values <= 1.0))
    _refuse_rows(
        ds, bad, where, lambda r: f"field {field!r} is {float(values[r])!r}, must be a finite number in [0, 1]"
    )


def _trace_id_codes(ds: datasets.Dataset, where: str) -> np.ndarray:
    """One integer per row, equal for rows of equal ``trace_id``; DataFormatError naming `where` and the row of
    a missing trace id."""
    col = _column(ds, "trace_id")
    _refuse_rows(ds, col.is_null().to_numpy(zero_copy_only=False), where, lambda r: "field 'trace_id' is missing")
    codes = pc.dictionary_encode(col).indices
    return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)


def _first_repeat(keys: np.ndarray) -> tuple[int, int] | None:
    """``(row, earlier row)`` of the first row whose key an earlier row already has; None when all differ."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    earlier = first[inverse.reshape(-1)]
    repeats = np.nonzero(earlier != np.arange(len(keys)))[0]
    return (int(repeats[0]), int(earlier[repeats[0]])) if repeats.size else None


def check_trace_ids(ds: datasets.Dataset, where: str) -> None:
    """DataFormatError naming `where`, the row and the trace id unless every row of traces `ds` has a trace id
    of its own: labels, targets and predictions are joined to traces by it (docs/design.md, "traces")."""
    repeat = _first_repeat(_trace_id_codes(ds, where))
    if repeat is not None:
        row, first = repeat
        raise DataFormatError(
            f"{where}: row {row}: duplicate trace_id {ds[row]['trace_id']!r} (first at row {first}); every trace "
            "needs an id of its own"
        )


def check_step_spans(ds: datasets.Dataset, where: str) -> None:
    """DataFormatError naming `where`, the row, its trace_id and the step unless every step span of traces `ds`
    is a token range ``[start, end)`` of its completion: ``0 <= start < end <= len(completion_ids)``. Rows
    without step spans pass. Vectorised over the flattened spans."""
    col = _column(ds, "step_spans")
    if pa.types.is_null(col.type) or col.null_count == len(col):
        return
    if not (pa.types.is_list(col.type) and pa.types.is_list(col.type.value_type)):
        raise DataFormatError(f"{where}: field 'step_spans' must hold lists of [start, end] pairs, found {col.type}")
    spans = pc.list_flatten(col)
    flat = pc.list_flatten(spans)
    if not (pa.types.is_integer(flat.type) or pa.types.is_null(flat.type)):
        raise DataFormatError(f"{where}: field 'step_spans' must hold integer token positions, found {col.type}")
    row_of = np.asarray(pc.list_parent_indices(col).to_numpy(zero_copy_only=False), dtype=np.int64)
    length = _list_lengths(ds, "completion_ids")[row_of]

    def refuse(bad: np.ndarray, must: str) -> None:
        if bad.any():
            k = int(np.argmax(bad))
            row = int(row_of[k])
            step = k - int(np.searchsorted(row_of, row))
            raise DataFormatError(
                f"{where}: row {row} (trace_id {ds[row]['trace_id']!r}): field 'step_spans' holds step {step} as "
                f"{spans[k].as_py()!r}, {must.format(t=int(length[k]))} ({len(np.unique(row_of[bad]))} such row(s))"
            )

    arity = np.asarray(pc.fill_null(pc.list_value_length(spans), 0).to_numpy(zero_copy_only=False))
    refuse(arity != 2, "not a [start, end] pair")
    ends = np.asarray(pc.fill_null(flat, -1).to_numpy(zero_copy_only=False), dtype=np.int64).reshape(-1, 2)
    refuse(
        (ends[:, 0] < 0) | (ends[:, 0] >= ends[:, 1]) | (ends[:, 1] > length),
        "must be [start, end) with 0 <= start < end <= {t} (the completion's tokens)",
    )


def check_labels(ds: datasets.Dataset, where: str) -> None:
    """DataFormatError naming `where`, the row, its trace_id and the field unless prefix labels `ds` keep the
    contract (docs/design.md, "prefix labels"): ``mean`` a finite number in [0, 1], ``n`` a whole number >= 0,
    ``successes`` a finite number in [0, n], ``position`` a whole number >= 0, and one label per (trace_id,
    position): a second label of one prefix would be scored (and trained on) twice. Vectorised."""
    check_unit_interval(ds, "mean", where)
    whole = lambda v: np.isfinite(v) & (v >= 0) & (v == np.round(v))  # noqa: E731
    n = _numbers(ds, "n", where)
    _refuse_rows(ds, ~whole(n), where, lambda r: f"field 'n' is {float(n[r])!r}, must be a whole number >= 0")
    k = _numbers(ds, "successes", where)
    bad_k = ~(np.isfinite(k) & (k >= 0) & (k <= n))
    _refuse_rows(
        ds,
        bad_k,
        where,
        lambda r: (
            f"field 'successes' is {float(k[r])!r}, must be a finite number in [0, n] with n = {int(n[r])} "
            "(the successes among its n continuations)"
        ),
    )
    pos = _numbers(ds, "position", where)
    _refuse_rows(
        ds, ~whole(pos), where, lambda r: f"field 'position' is {float(pos[r])!r}, must be a whole number >= 0"
    )
    codes = _trace_id_codes(ds, where)
    _, pos_codes = np.unique(pos, return_inverse=True)
    repeat = _first_repeat(codes * (int(pos_codes.max()) + 1 if len(pos) else 1) + pos_codes.reshape(-1))
    if repeat is not None:
        row, first = repeat
        mean = _column(ds, "mean")
        raise DataFormatError(
            f"{where}: row {row} (trace_id {ds[row]['trace_id']!r}): field 'position' {int(pos[row])} repeats the "
            f"label of row {first} (means {mean[first].as_py()!r} and {mean[row].as_py()!r}); one label per prefix"
        )


def check_label_positions(labels: datasets.Dataset, traces: datasets.Dataset, where: str) -> None:
    """DataFormatError naming `where`, the row, its trace_id and ``position`` unless every label of a trace in
    `traces` sits at a prefix of that trace: ``position <= len(completion_ids)``. Labels of traces not in
    `traces` are the caller's to count or refuse. Vectorised."""
    found = pc.index_in(
        _column(labels, "trace_id").cast(pa.string()), value_set=_column(traces, "trace_id").cast(pa.string())
    )
    idx = np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    lengths = _list_lengths(traces, "completion_ids")
    limit = np.where(idx >= 0, lengths[np.maximum(idx, 0)], np.iinfo(np.int64).max)
    pos = _numbers(labels, "position", where)
    _refuse_rows(
        labels,
        pos > limit,
        where,
        lambda r: (
            f"field 'position' is {int(pos[r])}, past the end of its trace ({int(limit[r])} completion tokens: "
            f"positions 0..{int(limit[r])}); were the labels made from other traces?"
        ),
    )


def load_traces(path: str | Path) -> datasets.Dataset:
    """Load a traces dataset written by `prefixvalue collect` (or by the user, same fields): the one reader of
    traces, for every stage.

    DataFormatError (one line naming the folder, row, trace_id and field) when it has no rows, an
    ``outcome`` that is not a finite number in [0, 1], a missing or repeated ``trace_id``
    (`check_trace_ids`) or a step span outside its completion (`check_step_spans`)."""
    ds = _load(path, TRACE_FIELDS, "traces")
    if len(ds) == 0:
        raise DataFormatError(f"{path}: the traces dataset has no rows")
    where = f"traces {path}"
    check_unit_interval(ds, "outcome", where)
    check_trace_ids(ds, where)
    check_step_spans(ds, where)
    return ds


def load_labels(path: str | Path, traces: datasets.Dataset | None = None) -> datasets.Dataset:
    """Load a prefix-labels dataset written by `prefixvalue label`: the one reader of labels, for every stage.

    DataFormatError (one line naming the folder, row, trace_id and field) when a label breaks the contract
    (`check_labels`: a ``mean`` outside [0, 1], ``successes`` outside [0, n], a negative ``n`` or
    ``position``, two labels of one prefix) or, given the `traces` it is read with, sits past the end of
    its trace (`check_label_positions`): labels are training targets and the truth values are scored
    against."""
    ds = _load(path, LABEL_FIELDS, "prefix labels")
    check_labels(ds, f"prefix labels {path}")
    if traces is not None:
        check_label_positions(ds, traces, f"prefix labels {path}")
    return ds


def token_id_range(ds: datasets.Dataset, field: str) -> tuple[int, int, int, int]:
    """``(lowest id, its row, highest id, its row)`` over the token-id lists of column `field` (rows with
    no ids skipped; ``(0, -1, -1, -1)`` when there are none). Vectorised over the flattened ids."""
    flat = np.asarray(pc.list_flatten(_column(ds, field)).to_numpy(zero_copy_only=False), dtype=np.int64)
    if flat.size == 0:
        return 0, -1, -1, -1
    lengths = _list_lengths(ds, field)
    starts = np.cumsum(lengths) - lengths
    lo, hi = int(np.argmin(flat)), int(np.argmax(flat))
    row_of = lambda k: int(np.searchsorted(starts, k, side="right") - 1)  # noqa: E731
    return int(flat[lo]), row_of(lo), int(flat[hi]), row_of(hi)


def traces_digest(ds: datasets.Dataset) -> str:
    """SHA-256 (hex) of what labelling reads from traces `ds`: each row's trace_id, prompt_ids and
    completion_ids, in order. Vectorised: a few ms for 16k traces."""
    h = hashlib.sha256()
    h.update("\n".join(str(t) for t in _column(ds, "trace_id").to_pylist()).encode())
    for name in ("prompt_ids", "completion_ids"):
        col = _column(ds, name)
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
        h.update(b"|" + np.asarray(lengths, dtype=np.int64).tobytes())
        h.update(np.asarray(flat, dtype=np.int64).tobytes())
    return h.hexdigest()


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


def traces_fail_truncated(ds: datasets.Dataset) -> bool:
    """The grading rule recorded in traces `ds` (column ``fail_truncated``): whether a completion cut off at
    the token budget scores 0. False for traces written before the rule was recorded."""
    return bool(ds[0]["fail_truncated"]) if "fail_truncated" in ds.column_names and len(ds) else False


def traces_finish_summary(ds: datasets.Dataset) -> dict[str, Any]:
    """`finish_summary` of a traces dataset (traces without finish reasons or notes count as unknown)."""
    n = len(ds)
    reasons = ds["finish_reason"] if "finish_reason" in ds.column_names else [None] * n
    notes = ds["outcome_note"] if "outcome_note" in ds.column_names else [None] * n
    return finish_summary(reasons, notes)


#: verdicts of `_run_traces_verify`, by the split file's path and state and the traces' path (one load per run)
_VERIFIED: dict[tuple[str, int, int, str], bool] = {}


def _run_traces(folder: Path) -> tuple[str, int] | None:
    """``(traces, max_length)``: the traces the split in `folder` was drawn over, as its run recorded them (a
    checkpoint ``RUN/final``: RUN's train record; a labels folder: its ``run.json``); None when none says."""
    try:
        record = runfolder.read_record(folder.parent) if folder.name == "final" else None
    except ConfigError:  # a stranger's record: nothing to go by
        record = None
    if record is not None and record.get("command") == "train" and isinstance(record.get("config"), dict):
        config = record["config"]
        traces, max_length = config.get("traces"), config.get("max_length") or 0
        return (traces, int(max_length)) if isinstance(traces, str) and isinstance(max_length, int) else None
    run_json = folder / "run.json"
    if run_json.is_file():
        try:
            traces = json.loads(run_json.read_text()).get("traces")
        except (OSError, ValueError, AttributeError):
            return None
        return (traces, 0) if isinstance(traces, str) else None
    return None


def _run_traces_verify(record: SplitRecord, folder: Path) -> bool:
    """`SplitRecord.verify` of `folder`'s record against the traces its run recorded (`_run_traces`), when they
    are still there; a record without the digest of all its prompts counts them as the prompts it was drawn over
    only when the run recorded an absolute path. False when there is nothing to check against."""
    found = _run_traces(folder)
    if found is None or not Path(found[0]).is_dir():
        return False
    traces, max_length = found
    path = folder / SPLIT_FILE
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, traces)
    if key not in _VERIFIED:
        try:
            ds = load_traces(traces)
        except ConfigError:  # unreadable now: nothing to check against
            return False
        ds = within_max_length(ds, max_length)  # the split was drawn over the traces train kept
        source = f"the traces {traces} its run recorded"
        _VERIFIED[key] = record.verify(ds["prompt"], path, source, drawn_over=Path(traces).is_absolute())
    return _VERIFIED[key]


def load_split(folder: str | Path, prompts: Iterable[str] | None = None, source: str = "") -> SplitRecord | None:
    """The split record of a value checkpoint or labels folder (`SplitRecord.load`: None when it has none; a
    malformed ``split.json`` is a ConfigError naming the file and field), its digests checked
    (`SplitRecord.verify`) against the traces its run recorded (`_run_traces`) and against `prompts`, the
    prompts of the traces a stage is about to split by it (`source`, for the message). A record whose split does
    not give the training prompts it records over the prompts it was drawn over is refused in one line: every
    path that reads a split to hold prompts out (evaluate, distance, actions, steer, distrl) loads it here."""
    folder = Path(folder)
    record = SplitRecord.load(folder)
    if record is None:
        return None
    if not _run_traces_verify(record, folder) and prompts is not None:
        record.verify(prompts, folder / SPLIT_FILE, source or "the traces given")
    return record


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
    "DataNotFoundError",
    "check_label_positions",
    "check_labels",
    "check_step_spans",
    "check_trace_ids",
    "check_unit_interval",
    "token_id_range",
    "within_max_length",
    "traces_digest",
    "SIDES",
    "SplitRecord",
    "heldout_selection",
    "labels_side",
    "load_split",
    "is_heldout",
    "load_labels",
    "load_traces",
    "normalise_prompt",
    "rows_to_dataset",
    "save_subset",
    "finish_summary",
    "traces_fail_truncated",
    "traces_finish_summary",
    "split_by_prompt",
    "split_side",
    "split_three",
    "unit_hash",
]
