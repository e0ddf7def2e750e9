"""Estimators that rank the labelled prefixes alike (metrics.json's ``rank_equivalent``): the report
shows each group as one row, labelled by its first member (`prefixvalue.evaluation.report`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..stats import spearman
from .scoring import EvalResult

#: estimators whose values rank the prefixes with at least this Spearman correlation between them
#: share one row of the report's tables (metrics.json keeps each)
RANK_EQUIVALENT_SPEARMAN = 0.9999


def rank_equivalent_groups(result: EvalResult, threshold: float = RANK_EQUIVALENT_SPEARMAN) -> list[dict[str, Any]]:
    """Groups of estimators (of one kind: probabilities or soft values) whose values rank the labelled
    prefixes alike: Spearman between them ≥ `threshold`, measured on ``result.prefixes``. Each group
    lists its estimators (the first in metrics order stands for the others), the smallest Spearman
    between a member and the first, the largest difference in any correlation or AUROC of
    metrics.json's estimator table, and a sentence for the report. A Spearman that is undefined (fewer
    than 3 prefixes where both are finite, or a constant column there: `prefixvalue.stats.spearman`) joins
    nothing."""
    ests = result.metrics.get("estimators", {})
    names = [n for n in ests if n in result.prefixes]
    cols = {n: np.asarray(result.prefixes[n], dtype=np.float64) for n in names}
    groups: list[list[str]] = []
    low: dict[str, float] = {}
    for n in names:
        v = cols[n]
        if not np.isfinite(v).any() or np.nanstd(v) == 0:
            continue
        for g in groups:
            head = g[0]
            if bool(ests[head].get("probability")) != bool(ests[n].get("probability")):
                continue
            ok = np.isfinite(v) & np.isfinite(cols[head])
            rho, _ = spearman(v[ok], cols[head][ok])
            if rho is not None and rho >= threshold:
                g.append(n)
                low[g[0]] = min(low.get(g[0], 1.0), rho)
                break
        else:
            groups.append([n])
    out = []
    for g in (g for g in groups if len(g) > 1):
        head = ests[g[0]]
        diff = 0.0
        for n in g[1:]:
            for key in ("spearman", "pearson", "kendall"):
                a, b = head[key].get("value"), ests[n][key].get("value")
                if a is not None and b is not None:
                    diff = max(diff, abs(a - b))
            a, b = head.get("auroc_outcome"), ests[n].get("auroc_outcome")
            if a is not None and b is not None:
                diff = max(diff, abs(a - b))
        why = ""
        if all(n == "logsumexp" or n.startswith("mellowmax") for n in g):
            why = (
                " MellowMax with ω ≥ 1 of a peaked policy is log-sum-exp up to a shift (the top tokens hold almost "
                "all the probability), so these rank the prefixes alike."
            )
        out.append(
            {
                "estimators": g,
                "min_spearman_between": round(low[g[0]], 6),
                "max_metric_difference": round(diff, 6),
                "note": (
                    f"{', '.join(g[:-1])} and {g[-1]} rank the prefixes alike (Spearman between their values "
                    f"≥ {math.floor(low[g[0]] * 1e5) / 1e5:.5f}), so they share one row: the figures of {g[0]}; "
                    f"the others differ by at most {diff:.3f} in any correlation or AUROC (metrics.json keeps "
                    f"each).{why}"
                ),
            }
        )
    return out


__all__ = ["RANK_EQUIVALENT_SPEARMAN", "rank_equivalent_groups"]
