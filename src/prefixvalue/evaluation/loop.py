"""What the quickstart's evaluation step writes: metrics.json's ``quickstart`` section (`loop_summary`:
the data, the trained models, the analyses of `prefixvalue.evaluation.analysis` and the quality verdict)
and the report with the quickstart's sections first (`write_loop_report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import quality_verdict
from .report import rank_equivalent_groups, render_frontier_section, render_quickstart_section, write_report
from .scoring import EvalResult


def loop_summary(
    result: EvalResult,
    traces: Any,
    config: dict[str, Any],
    prompts: Sequence[int],
    labelled: int,
    train_results: dict[str, dict[str, Any]],
    value_models: dict[str, Any],
    *,
    short: dict[str, Any],
    short_samples: int,
    forks: list[dict[str, Any]],
    seeds: dict[str, Any],
    extra: Sequence[str],
) -> dict[str, Any]:
    """metrics.json's ``quickstart`` section, before its ``seconds`` and ``fresh_run``: the resolved `config`,
    the data (`traces`: every collected trace; `prompts`: the numbers of training and held-out prompts;
    `labelled`: held-out traces labelled), each value model's training result (`train_results`, as the
    training loop returns it, its ``eval_history`` kept as ``eval_curve``) and overrides (`value_models`; the
    first is ``learned``), the analyses (`short`, `forks`, `seeds`), the error-detection diagnosis of
    ``learned`` and the quality verdict. `extra` names the estimators evaluated beside the built-in ones,
    listed after ``learned`` in the short-prefix table."""
    diagnosis = result.metrics.get("error_diagnosis")  # the evaluator's (`evaluator.evaluate`)
    train_results = {  # each held-out evaluation during training as (step, held-out Brier): the quality verdict
        name: {**{k: v for k, v in r.items() if k != "eval_history"}, "eval_curve": _eval_curve(r)}
        for name, r in train_results.items()
    }
    first = train_results[next(iter(train_results))]
    return {
        "config": config,
        "collected_traces": len(traces),
        "policy_accuracy": float(np.asarray(traces["outcome"], dtype=np.float64).mean()),
        "train_prompts": prompts[0],
        "heldout_prompts": prompts[1],
        "labelled_heldout_traces": labelled,
        "short": short,
        "short_samples": short_samples,
        "short_estimators": [n for n in ("learned", *extra, "mellowmax", "logsumexp") if n in result.estimator_info],
        "forks": forks,
        "train": train_results,
        "value_models": {k: dict(v) for k, v in value_models.items()},
        "seeds": seeds,
        "diagnosis": diagnosis,
        "quality": quality_verdict(result.metrics, train_results, int(first.get("train_traces", 0)), diagnosis),
    }


def _eval_curve(train_result: dict[str, Any]) -> list[list[Any]]:
    """``[step, held-out Brier]`` of each held-out evaluation of a training run (its ``eval_history``)."""
    return [[h["step"], h.get("brier_all")] for h in train_result.get("eval_history", [])]


def write_loop_report(
    result: EvalResult,
    out: str | Path,
    sections: dict[str, Any],
    *,
    tokenizer: Any,
    options: Any,
    logger: Any,
    frontier_table: str | None = None,
    more: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the quickstart's metrics.json and report into `out` (`prefixvalue.evaluation.report.write_report`):
    ``result.metrics`` with the metrics.json `sections` (``quickstart``, a `loop_summary`, among them) and
    ``rank_equivalent`` added; report.md with the quickstart's and the frontier's sections (`frontier_table`)
    first, then `more`; the forking tokens outlined in the heatmap. `options` sets the plots (an
    ``EvaluateConfig``) and `logger` logs them. Returns the metrics dict."""
    metrics = result.metrics
    metrics.update(sections, rank_equivalent=rank_equivalent_groups(result))
    q = metrics["quickstart"]
    forks = {r["trace_index"]: r["token_index"] for r in q["forks"]}
    head = [render_quickstart_section(q, metrics), render_frontier_section(frontier_table, out)]
    write_report(
        result,
        out,
        tokenizer=tokenizer,
        logger=logger,
        config=options,
        traces=list(forks),
        forks=forks,
        sections=[*head, *more],
    )
    return metrics
