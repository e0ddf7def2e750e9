"""Choose on validation, report on test, once (docs/design.md, "Choose on validation, report on test").

Every choice the toolkit makes by a score (which value model is ``learned``, a frontier recipe, a soft-prompt
length n*, a step threshold, a checkpoint or a step count) goes through `choose`, which refuses scores that
did not come from the validation side of the split::

    from prefixvalue.evaluation.selection import choose, choose_estimator

    pick = choose_estimator("learned", val_result, {"head": "learned", "implicit": "learned_implicit"})
    pick.chosen, pick.to_dict()          # the name, and the record metrics.json's ``selection`` section keeps

A result's side is the one the evaluator scored (``metrics["split"]["side"]``: ``validation`` or ``test``,
`prefixvalue.evaluation.options.ScoringOptions.split`); asking `choose` to decide on anything else raises
`SelectionError`, so a path that reads test labels for a choice fails instead of inflating a figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: the one side choices are made on
CHOICE_SIDE = "validation"


class SelectionError(ValueError):
    """A choice asked of scores that are not validation scores (or of no usable score)."""


@dataclass
class Choice:
    """One choice: `what` was chosen (`chosen`, among `candidates` with their scores), by `metric` on `split`."""

    what: str
    chosen: str
    split: str
    metric: str
    candidates: dict[str, float | None]
    higher_is_better: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The record of metrics.json's ``selection`` section."""
        out = {
            "what": self.what,
            "chosen": self.chosen,
            "split": self.split,
            "metric": self.metric,
            "n_candidates": len(self.candidates),
            "candidates": dict(self.candidates),
            "higher_is_better": self.higher_is_better,
        }
        if self.note:
            out["note"] = self.note
        return {**out, **self.extra}


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))


def check_side(what: str, split: str | None) -> None:
    """Raise `SelectionError` unless `split` is the validation side."""
    if split != CHOICE_SIDE:
        raise SelectionError(
            f"{what}: a choice was asked of {split or 'unrecorded'} scores; choices are made on the validation "
            f"split only (the test labels are read once, for the figures reported)"
        )


def choose(
    what: str,
    scores: Mapping[str, Any],
    *,
    split: str | None,
    metric: str,
    higher_is_better: bool = True,
    note: str = "",
    **extra: Any,
) -> Choice:
    """The candidate with the best finite score in `scores` (name → score; ties go to the first in order),
    which must come from the validation `split`. Raises `SelectionError` on another split or when no
    candidate has a finite score."""
    check_side(what, split)
    finite = {k: float(v) for k, v in scores.items() if _finite(v)}
    if not finite:
        raise SelectionError(f"{what}: no candidate has a finite {metric} on {split} ({list(scores)})")
    sign = 1.0 if higher_is_better else -1.0
    chosen = max(finite, key=lambda k: sign * finite[k])  # max keeps the first of equal scores
    cands = {k: (float(v) if _finite(v) else None) for k, v in scores.items()}
    return Choice(what, chosen, str(split), metric, cands, higher_is_better, note, dict(extra))


def result_side(result: Any) -> str | None:
    """The side an `EvalResult` (or its metrics dict) scored: ``metrics["split"]["side"]``."""
    metrics = result if isinstance(result, Mapping) else result.metrics
    return (metrics.get("split") or {}).get("side")


def choose_estimator(
    what: str, result: Any, candidates: Mapping[str, str], metric: str = "spearman", note: str = ""
) -> Choice:
    """Choose among estimators of one evaluation: `candidates` maps each candidate's name to its estimator
    in `result` (an `EvalResult` of validation labels, or its metrics dict), scored by ``metric``'s value."""
    metrics = result if isinstance(result, Mapping) else result.metrics
    ests = metrics.get("estimators", {})
    scores = {name: ((ests.get(est) or {}).get(metric) or {}).get("value") for name, est in candidates.items()}
    return choose(what, scores, split=result_side(metrics), metric=metric, note=note)


def selection_section(choices: Iterable[Choice | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """metrics.json's ``selection`` section: one record per choice, in order."""
    return [c.to_dict() if isinstance(c, Choice) else dict(c) for c in choices]


__all__ = [
    "CHOICE_SIDE",
    "Choice",
    "SelectionError",
    "check_side",
    "choose",
    "choose_estimator",
    "result_side",
    "selection_section",
]
