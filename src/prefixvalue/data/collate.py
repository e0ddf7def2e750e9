"""Batching traces for value models: right-padded token tensors plus per-prefix float targets.

Prefix positions follow the package convention: position p is the number of completion tokens in
the prefix, 0..T (p = 0 is the bare prompt). A batch carries, for every row, a target in [0, 1] at
each position and a mask saying which positions carry one. The target is the trace's outcome,
replaced by a soft Monte Carlo label (``prefix_targets``) where one exists. Targets stay float32
from the dataset to the loss: nothing here rounds a soft label to a class.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from . import check_unit_interval

#: optional per-row column: list of length T + 1, a soft label in [0, 1] or None (NaN) per position
PREFIX_TARGETS = "prefix_targets"
#: optional per-row column: list of length T + 1, 1.0 where a wrong step has been written by position p, else 0.0
#: (the error head's target, docs/design.md "Error head")
ERROR_TARGETS = "error_targets"


@dataclass
class ValueCollator:
    """Collate rows with ``prompt_ids``, ``completion_ids``, ``outcome`` (and optionally
    ``prefix_targets``) into a batch dict of tensors:

    - ``input_ids`` [B, L] long, prompt then completion, right-padded with `pad_token_id`
    - ``attention_mask`` [B, L] long
    - ``prompt_lengths`` / ``completion_lengths`` [B] long
    - ``outcome`` [B] float32
    - ``targets`` [B, Tmax+1] float32: the soft label at p where given, else the outcome
    - ``target_mask`` [B, Tmax+1] bool: positions 0..T_i, or only soft-labelled ones if `labels_only`
    - ``label_mask`` [B, Tmax+1] bool: positions whose target is a soft label (not the outcome)
    - ``error_targets`` [B, Tmax+1] float32, only when the rows carry ``error_targets``: 1 after a wrong step
      (positions past a row's end 0; ``target_mask`` says which count)

    Right padding keeps absolute positions identical to an unpadded forward pass, so a row's values do
    not depend on what it is batched with (causal attention never looks at the padding after it).
    """

    pad_token_id: int
    labels_only: bool = False

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        plens = [len(r["prompt_ids"]) for r in rows]
        clens = [len(r["completion_ids"]) for r in rows]
        if min(plens) < 1:
            raise ValueError("every row needs at least one prompt token (position 0 reads the last prompt token)")
        width = max(p + c for p, c in zip(plens, clens))
        tmax = max(clens)
        b = len(rows)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, width), dtype=torch.long)
        targets = torch.zeros((b, tmax + 1), dtype=torch.float32)
        target_mask = torch.zeros((b, tmax + 1), dtype=torch.bool)
        label_mask = torch.zeros((b, tmax + 1), dtype=torch.bool)
        outcome = torch.tensor([float(r["outcome"]) for r in rows], dtype=torch.float32)
        with_errors = rows[0].get(ERROR_TARGETS) is not None
        errors = torch.zeros((b, tmax + 1), dtype=torch.float32)
        for i, r in enumerate(rows):
            if with_errors:
                flags = r.get(ERROR_TARGETS)
                if flags is None or len(flags) != clens[i] + 1:
                    raise ValueError(f"{ERROR_TARGETS} must have T + 1 entries in every row of a batch")
                errors[i, : clens[i] + 1] = torch.tensor(flags, dtype=torch.float32)
            seq = list(r["prompt_ids"]) + list(r["completion_ids"])
            input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[i, : len(seq)] = 1
            t = clens[i]
            soft = r.get(PREFIX_TARGETS)
            targets[i, : t + 1] = outcome[i]
            if soft is None:
                target_mask[i, : t + 1] = not self.labels_only
                continue
            if len(soft) != t + 1:
                raise ValueError(
                    f"{PREFIX_TARGETS} has {len(soft)} entries for a completion of {t} tokens (need T + 1)"
                )
            for p, v in enumerate(soft):
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    target_mask[i, p] = not self.labels_only
                else:
                    targets[i, p] = float(v)
                    target_mask[i, p] = True
                    label_mask[i, p] = True
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prompt_lengths": torch.tensor(plens, dtype=torch.long),
            "completion_lengths": torch.tensor(clens, dtype=torch.long),
            "outcome": outcome,
            "targets": targets,
            "target_mask": target_mask,
            "label_mask": label_mask,
        }
        if with_errors:
            batch[ERROR_TARGETS] = errors
        return batch


def collated_batches(
    prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], batch_size: int, device: Any
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``(first row, batch)`` for consecutive chunks of `batch_size` (prompt, completion) rows, collated by
    `ValueCollator` (right padding with id 0, which the attention mask hides) and moved to `device`."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError("prompt_ids and completion_ids must have the same length")
    collate = ValueCollator(pad_token_id=0)
    for start in range(0, len(prompt_ids), batch_size):
        rows = [
            {"prompt_ids": list(p), "completion_ids": list(c), "outcome": 0.0}
            for p, c in zip(prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size])
        ]
        yield start, {k: v.to(device) for k, v in collate(rows).items()}


def attach_prefix_labels(
    traces: datasets.Dataset, labels: datasets.Dataset | Sequence[datasets.Dataset]
) -> datasets.Dataset:
    """Add a ``prefix_targets`` column to `traces` from a prefix-labels dataset, or several (docs/design.md contract;
    several: the rounds of "Active labelling").

    Each trace gets a list of length T + 1 holding the label ``mean`` (k/n, a float in [0, 1]) at every
    labelled ``position`` and None elsewhere. A prefix that several datasets label gets its pooled mean,
    Σ mean·n / Σ n (its k and n pooled; the plain mean of the means when every n is 0). Labels for unknown trace
    ids or out-of-range positions raise ValueError (they mean the labels were made from other traces), and so does
    a ``mean`` that is not a finite number in [0, 1] (it would be a training target no probability can reach).
    """
    parts = [labels] if isinstance(labels, datasets.Dataset) else list(labels)
    pooled: dict[str, dict[int, list[float]]] = {}  # trace -> position -> [Σ mean·n, Σ n, Σ mean, count]
    for part in parts:
        check_unit_interval(part, "mean", "prefix labels")
        ns = part["n"] if "n" in part.column_names else [0] * len(part)
        for tid, pos, mean, n in zip(part["trace_id"], part["position"], part["mean"], ns):
            acc = pooled.setdefault(str(tid), {}).setdefault(int(pos), [0.0, 0.0, 0.0, 0.0])
            acc[0] += float(mean) * float(n)
            acc[1] += float(n)
            acc[2] += float(mean)
            acc[3] += 1.0
    by_trace = {
        tid: {pos: (a[0] / a[1] if a[1] > 0 else a[2] / a[3]) for pos, a in rows.items()}
        for tid, rows in pooled.items()
    }
    known = {str(t) for t in traces["trace_id"]}
    stray = set(by_trace) - known
    if stray:
        raise ValueError(f"{len(stray)} labelled trace id(s) are not in the traces, e.g. {sorted(stray)[:3]}")

    def add(row: dict[str, Any]) -> dict[str, Any]:
        t = len(row["completion_ids"])
        soft: list[float | None] = [None] * (t + 1)
        for pos, mean in by_trace.get(str(row["trace_id"]), {}).items():
            if not 0 <= pos <= t:
                raise ValueError(f"label position {pos} outside 0..{t} for trace {row['trace_id']}")
            soft[pos] = mean
        return {PREFIX_TARGETS: soft}

    features = traces.features.copy()
    features[PREFIX_TARGETS] = datasets.List(datasets.Value("float32"))
    return traces.map(add, features=features, keep_in_memory=True)  # never a cache file in the traces folder


class ResumableSampler(torch.utils.data.Sampler[int]):
    """The training stream as a finite sampler: epoch e is a permutation of ``range(num_rows)`` drawn
    from ``seed + e``; epochs are concatenated and the stream is cut to ``[start, stop)``.

    Sample k of the stream depends only on (num_rows, seed, k), so a run resumed at optimizer step s
    restarts at ``start = s · samples_per_step`` and sees exactly the samples an uninterrupted run
    would. Sharded over processes by accelerate (process i takes micro-batches i, i + N, ...), one
    optimizer step always covers the same ``samples_per_step`` consecutive samples of the stream,
    whatever the number of processes or accumulation steps.
    """

    def __init__(self, num_rows: int, seed: int, start: int, stop: int) -> None:
        if num_rows <= 0:
            raise ValueError("cannot sample from an empty training set")
        if not 0 <= start <= stop:
            raise ValueError(f"need 0 <= start <= stop, got {start}, {stop}")
        self.num_rows, self.seed, self.start, self.stop = num_rows, seed, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        epoch, offset = divmod(self.start, self.num_rows)
        k = self.start
        while k < self.stop:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.num_rows, generator=gen).tolist()
            for idx in perm[offset:]:
                if k >= self.stop:
                    return
                yield idx
                k += 1
            epoch, offset = epoch + 1, 0
