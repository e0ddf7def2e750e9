"""Evaluation components: estimators of prefix values, their scoring against Monte Carlo labels
(metrics, noise ceiling, step verification) under `ScoringOptions`, soft values of the policy's logits,
analyses and the report; and the one evaluator that loads value models and scores them, `evaluate`
(`prefixvalue.evaluation.evaluator`, imported on first use: reading the options needs no torch).
"""

from __future__ import annotations

from typing import Any

from .options import ScoringOptions

__all__ = ["ScoringOptions", "evaluate"]


def __getattr__(name: str) -> Any:
    if name != "evaluate":
        raise AttributeError(f"module 'prefixvalue.evaluation' has no attribute {name!r}")
    from .evaluator import evaluate  # torch and the value models: only when the evaluator is used

    return evaluate
