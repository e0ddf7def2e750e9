"""The step-label oracle: what a perfect error detector reaches (docs/design.md, "The step-label oracle").

For tasks whose traces carry exact step labels (``step_spans`` and ``step_labels``, e.g. ``arith``), a
prefix is described by two exact facts: has a wrong step been written so far, and how many steps are
left. The oracle predicts, for each (wrong step written, steps left) group, the mean outcome of the
*training* prefixes in that group. It knows nothing about the coming steps' difficulty, so a value model
can beat it; it is the reference a learned value should pass.

A step counts as written at position p once all its tokens are in the prefix (p ≥ its span's end).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .estimators import Estimator, EstimatorInputs, TraceRecord


def step_facts(
    step_spans: Sequence[Sequence[int]], step_labels: Sequence[bool], length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per position p = 0..T: (a wrong step has been written, number of steps not yet written)."""
    if len(step_spans) != len(step_labels):
        raise ValueError(f"{len(step_spans)} step spans but {len(step_labels)} step labels")
    p = np.arange(length + 1)
    wrong = np.zeros(length + 1, dtype=bool)
    left = np.zeros(length + 1, dtype=np.int64)
    for (_, end), ok in zip(step_spans, step_labels):
        written = p >= int(end)
        left += ~written
        if not ok:
            wrong |= written
    return wrong, left


class StepOracle:
    """Group means of training outcomes by (wrong step written, steps left), fit once."""

    def __init__(self, means: dict[tuple[bool, int], float], fallback: dict[bool, float], overall: float, n: int):
        self.means, self.fallback, self.overall, self.n_prefixes = means, fallback, overall, n

    @classmethod
    def fit(cls, rows: Iterable[dict[str, Any]]) -> StepOracle:
        """Fit on training trace rows (``completion_ids``, ``outcome``, ``step_spans``, ``step_labels``):
        every prefix of every trace is one observation of its trace's outcome."""
        sums: dict[tuple[bool, int], list[float]] = {}
        for r in rows:
            if r.get("step_labels") is None:
                raise ValueError("the step-label oracle needs traces with step_labels (exact step verdicts)")
            wrong, left = step_facts(r["step_spans"] or [], r["step_labels"], len(r["completion_ids"]))
            y = float(r["outcome"])
            for w, k in zip(wrong.tolist(), left.tolist()):
                acc = sums.setdefault((w, k), [0.0, 0.0])
                acc[0] += y
                acc[1] += 1.0
        if not sums:
            raise ValueError("the step-label oracle has no training prefixes to fit on")
        means = {key: s / n for key, (s, n) in sums.items()}
        fallback = {}
        for w in (False, True):
            tot = [v for key, v in sums.items() if key[0] == w]
            if tot:
                fallback[w] = sum(s for s, _ in tot) / sum(n for _, n in tot)
        n = int(sum(n for _, n in sums.values()))
        return cls(means, fallback, sum(s for s, _ in sums.values()) / n, n)

    def predict(self, record: TraceRecord) -> np.ndarray:
        """The oracle's value at positions 0..T of one trace (its group's training mean)."""
        if record.step_labels is None:
            raise ValueError(f"trace {record.trace_id} has no step_labels: the oracle cannot score it")
        wrong, left = step_facts(record.step_spans, record.step_labels, record.length)
        return np.array(
            [self.means.get((w, k), self.fallback.get(w, self.overall)) for w, k in zip(wrong.tolist(), left.tolist())],
            dtype=np.float64,
        )

    def estimator(self) -> Estimator:
        """This oracle as an evaluation estimator (probabilities: Brier and ECE are reported)."""

        def fn(inputs: EstimatorInputs) -> list[np.ndarray]:
            return [self.predict(t) for t in inputs.traces]

        return Estimator(
            fn,
            probability=True,
            description=(
                f"step-label oracle: mean training outcome by (wrong step written, steps left), fit on "
                f"{self.n_prefixes} training prefixes; exact facts, no learned difficulty"
            ),
        )


def has_step_labels(ds: Any) -> bool:
    """Whether a traces dataset (or a list of trace rows) carries exact step labels for every row."""
    if isinstance(ds, list):
        return bool(ds) and all(r.get("step_labels") is not None for r in ds)
    if "step_labels" not in ds.column_names or len(ds) == 0:
        return False
    return all(x is not None for x in ds["step_labels"])


def training_oracle(traces: Any, record: Any) -> StepOracle | None:
    """The step-label oracle fit on the traces (a traces dataset or a list of trace rows) whose prompts are on
    the training side of `record` (a `prefixvalue.data.SplitRecord`); None when there is no record, the
    traces lack exact step labels, or no prompt is a training prompt (the oracle never sees held-out outcomes)."""
    if record is None or not has_step_labels(traces):
        return None
    prompts = [r["prompt"] for r in traces] if isinstance(traces, list) else traces["prompt"]
    keep = [i for i, p in enumerate(prompts) if not record.is_heldout(p)]
    if not keep:
        return None
    if isinstance(traces, list):
        return StepOracle.fit([traces[i] for i in keep])
    return StepOracle.fit(
        traces.select(keep).select_columns(["completion_ids", "outcome", "step_spans", "step_labels"])
    )
