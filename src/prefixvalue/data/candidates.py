"""Candidate labels: Monte Carlo values of counterfactual prefixes s_p ⊕ y' of training traces (docs/design.md,
"Candidate labels"), and what training needs to read them.

``prefixvalue label candidates=K`` labels, at each labelled position p of a trace, the prefix followed by each of
the policy's K most likely next tokens y' other than the token the trace wrote, with the same MC samples per
prefix and the same sampler path as the ordinary labels, and writes them as ``OUT/candidates.parquet``
(`CANDIDATE_COLUMNS`). `prefixvalue train labels=OUT` reads them back when the value-model kind trains on them
(`ValueModel.candidate_training`, the Q-head): the loss adds ``candidate_weight`` times the mean BCE of
Q(s_p, y') against the MC mean of s_p ⊕ y', from the same forward pass as the trace's own terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .. import runfolder
from . import DataFormatError, check_unit_interval
from .collate import ValueCollator

#: the candidate labels' file in a labels folder
CANDIDATE_FILE = "candidates.parquet"
#: its columns, in order (one row per (trace, position, candidate token)): the contract of docs/design.md
CANDIDATE_COLUMNS: dict[str, str] = {
    "trace_id": "the trace whose prefix the candidate follows",
    "prompt_id": "its prompt",
    "position": "p: completion tokens in the prefix s_p (the candidate stands in for completion token p + 1)",
    "token_id": "the candidate next token y' (never the token the trace wrote at p)",
    "rank": "rank of y' under the policy at s_p (0 = most likely)",
    "logprob": "log π(y' | s_p) under the policy (temperature 1), nats",
    "n": "MC continuations of s_p ⊕ y' (0 for a terminal candidate)",
    "successes": "sum of the verifier scores of those continuations",
    "mean": "MC value of s_p ⊕ y' = successes / n (a terminal candidate: the verifier's score of s_p ⊕ y')",
    "ci_low": "Wilson 95% interval, low end",
    "ci_high": "Wilson 95% interval, high end",
    "prefix_tokens": "tokens in s_p ⊕ y' (prompt included)",
    "terminal": "y' is an EOS token: s_p ⊕ y' is a finished completion, scored once, n = 0",
    "method": "how it was labelled ('candidate')",
}
#: the per-trace columns training attaches (`attach_candidate_labels`): aligned lists, one entry per candidate
CANDIDATE_POSITIONS, CANDIDATE_TOKENS, CANDIDATE_TARGETS = (
    "candidate_positions",
    "candidate_tokens",
    "candidate_targets",
)
TRAIN_COLUMNS = (CANDIDATE_POSITIONS, CANDIDATE_TOKENS, CANDIDATE_TARGETS)


def write_candidate_labels(out: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write `rows` (dicts with `CANDIDATE_COLUMNS`) as ``out/candidates.parquet``, atomically."""
    table = pa.table({k: [r[k] for r in rows] for k in CANDIDATE_COLUMNS})
    return runfolder.write_with(out / CANDIDATE_FILE, lambda path: pq.write_table(table, path))


def has_candidate_labels(folder: str | Path) -> bool:
    """Whether labels folder `folder` holds candidate labels."""
    return (Path(folder) / CANDIDATE_FILE).exists()


def load_candidate_labels(folder: str | Path) -> datasets.Dataset:
    """The candidate labels of labels folder `folder`; DataFormatError (one line) when the file is unreadable, lacks a
    column training reads, or has a ``mean`` outside [0, 1] or a negative ``position``."""
    path = Path(folder) / CANDIDATE_FILE
    try:
        ds = datasets.Dataset(pq.read_table(path))
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataFormatError(f"{path}: cannot read the candidate labels ({type(exc).__name__}: {exc})") from None
    missing = [c for c in ("trace_id", "position", "token_id", "mean") if c not in ds.column_names]
    if missing:
        raise DataFormatError(f"{path}: candidate labels lack field(s) {missing}")
    check_unit_interval(ds, "mean", f"candidate labels {path}")
    pos = np.asarray(ds["position"], dtype=np.int64)
    if (pos < 0).any():
        row = int(np.argmax(pos < 0))
        raise DataFormatError(f"{path}: row {row}: field 'position' is {int(pos[row])}, must be >= 0")
    return ds


def attach_candidate_labels(traces: datasets.Dataset, labels: datasets.Dataset, where: str) -> datasets.Dataset:
    """Add `TRAIN_COLUMNS` to `traces`: per trace, the positions, token ids and MC means of its candidate labels
    (empty lists for a trace without any). DataFormatError naming `where` for a candidate of an unknown trace or
    one past the end of its trace (p must be < T: the candidate replaces completion token p + 1)."""
    by_trace: dict[str, list[tuple[int, int, float]]] = {}
    for tid, p, y, m in zip(labels["trace_id"], labels["position"], labels["token_id"], labels["mean"]):
        by_trace.setdefault(str(tid), []).append((int(p), int(y), float(m)))
    stray = set(by_trace) - {str(t) for t in traces["trace_id"]}
    if stray:
        raise DataFormatError(
            f"{where}: {len(stray)} trace id(s) of candidate labels are not in the traces, e.g. {sorted(stray)[:3]}"
        )

    def add(row: dict[str, Any]) -> dict[str, Any]:
        got = sorted(by_trace.get(str(row["trace_id"]), []))
        t = len(row["completion_ids"])
        bad = [p for p, _, _ in got if p >= t]
        if bad:
            raise DataFormatError(
                f"{where}: candidate label at position {bad[0]} past the end of trace {row['trace_id']!r} "
                f"({t} completion tokens: positions 0..{t - 1})"
            )
        return {
            CANDIDATE_POSITIONS: [p for p, _, _ in got],
            CANDIDATE_TOKENS: [y for _, y, _ in got],
            CANDIDATE_TARGETS: [m for _, _, m in got],
        }

    features = traces.features.copy()
    features[CANDIDATE_POSITIONS] = datasets.List(datasets.Value("int32"))
    features[CANDIDATE_TOKENS] = datasets.List(datasets.Value("int64"))
    features[CANDIDATE_TARGETS] = datasets.List(datasets.Value("float32"))
    return traces.map(add, features=features, keep_in_memory=True)


@dataclass
class CandidateCollator(ValueCollator):
    """`ValueCollator` plus each row's candidate labels as dense tensors over its prefixes p = 0..Tmax−1:

    - ``candidate_ids`` [B, max(Tmax, 1), K] long: candidate tokens at each prefix (padding: token 0)
    - ``candidate_targets`` [B, max(Tmax, 1), K] float32: their MC means
    - ``candidate_mask`` [B, max(Tmax, 1), K] bool: which slots hold a candidate

    K is the most candidates any prefix of the batch has (at least 1)."""

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(rows)
        tmax = max(1, int(batch["completion_lengths"].max()))
        width = 1
        slots: list[list[tuple[int, int, int, float]]] = []
        for r in rows:
            count: dict[int, int] = {}
            row = []
            for p, y, m in zip(
                r.get(CANDIDATE_POSITIONS) or [], r.get(CANDIDATE_TOKENS) or [], r.get(CANDIDATE_TARGETS) or []
            ):
                k = count.get(int(p), 0)
                count[int(p)] = k + 1
                row.append((int(p), k, int(y), float(m)))
            width = max([width, *(k + 1 for _, k, _, _ in row)])
            slots.append(row)
        ids = torch.zeros((len(rows), tmax, width), dtype=torch.long)
        targets = torch.zeros((len(rows), tmax, width), dtype=torch.float32)
        mask = torch.zeros((len(rows), tmax, width), dtype=torch.bool)
        for i, row in enumerate(slots):
            for p, k, y, m in row:
                if not math.isnan(m):
                    ids[i, p, k], targets[i, p, k], mask[i, p, k] = y, m, True
        return {**batch, "candidate_ids": ids, "candidate_targets": targets, "candidate_mask": mask}


def candidate_loss(candidate_logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed BCE of the candidate logits [B, P, K] against their MC means over the masked slots, number of slots)."""
    mask = batch["candidate_mask"][:, : candidate_logits.shape[1]]
    targets = batch["candidate_targets"][:, : candidate_logits.shape[1]]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(candidate_logits.float(), targets, reduction="none")
    return torch.where(mask, bce, torch.zeros_like(bce)).sum(), mask.sum()


__all__ = [
    "CANDIDATE_COLUMNS",
    "CANDIDATE_FILE",
    "TRAIN_COLUMNS",
    "CandidateCollator",
    "attach_candidate_labels",
    "candidate_loss",
    "has_candidate_labels",
    "load_candidate_labels",
    "write_candidate_labels",
]
