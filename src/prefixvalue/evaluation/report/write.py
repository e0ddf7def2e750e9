"""Writing an evaluation's files (metrics.json, report.md, report.html, predictions.parquet, the plots,
heatmap.html) and logging them (scalars under ``eval/...``, images, the heatmap panel, the per-prefix
table) through `prefixvalue.tracking`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ... import runfolder
from ..equivalence import rank_equivalent_groups
from ..scoring import EvalResult
from .heatmap import render_heatmap
from .markdown import render_html, render_markdown
from .plots import plot_calibration, plot_scatter, plot_value_curves
from .steps import step_benchmark_lines


def prefix_texts(result: EvalResult, tokenizer: Any = None) -> tuple[list[str], list[str]]:
    """Per row of ``result.prefixes``: the prompt text and the completion text of the prefix (its first
    `position` tokens, decoded with `tokenizer`; ids as ``[id]`` without one)."""
    traces = {t.trace_id: t for t in result.traces}
    prompts, prefixes = [], []
    for tid, pos in zip(result.prefixes["trace_id"], result.prefixes["position"]):
        t = traces[tid]
        ids = [int(i) for i in t.completion_ids[: int(pos)]]
        prompts.append(t.prompt or (tokenizer.decode(t.prompt_ids) if tokenizer is not None else ""))
        prefixes.append(
            tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if tokenizer is not None
            else "".join(f"[{i}]" for i in ids)
        )
    return prompts, prefixes


def flatten_metrics(prefix: str, d: Any, out: dict[str, float]) -> None:
    """Collect finite numbers of a nested metrics dict into `out` under slash-joined keys (notes and CIs skipped)."""
    if isinstance(d, dict):
        for k, v in d.items():
            if k in ("note", "ci", "raw") or k.endswith("_note"):
                continue
            flatten_metrics(f"{prefix}/{k}", v, out)
    elif isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(float(d)):
        out[prefix] = float(d)


def _pick_traces(result: EvalResult, k: int) -> list[int]:
    """Traces with the most labelled positions first (ties: varied MC labels first), up to k."""
    order = sorted(
        range(len(result.traces)),
        key=lambda i: (
            -len(result.mc[i]["position"]),
            -float(np.ptp(result.mc[i]["mean"])) if len(result.mc[i]["mean"]) else 0.0,
            i,
        ),
    )
    return order[: max(0, k)]


def write_report(
    result: EvalResult,
    out_dir: str | Path,
    tokenizer: Any = None,
    logger: Any = None,
    config: Any = None,
    traces: list[int] | None = None,
    forks: dict[int, int] | None = None,
    sections: Sequence[str] = (),
) -> dict[str, Path]:
    """Write metrics.json, report.md, predictions.parquet, plots and heatmap.html into `out_dir`.

    `tokenizer` renders token text in the heatmap (ids are shown without it). With a `logger`
    (`prefixvalue.tracking`), scalars go to ``eval/...``, plots as images, the heatmap as an HTML
    panel and the per-prefix predictions as a table. `config` (an EvaluateConfig) sets how many
    traces are drawn; `traces` (indices into ``result.traces``) are drawn first, and `forks` marks a
    forking token per trace index (see `render_heatmap`). `sections` are markdown sections placed
    after report.md's header (see `render_markdown`). Returns the written paths by name.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_plot = getattr(config, "plot_traces", 4)
    n_heat = getattr(config, "heatmap_traces", 6)
    paths: dict[str, Path] = {}
    plots: dict[str, str] = {}

    cal = plot_calibration(result.calibration, out / "calibration.png")
    if cal:
        paths["calibration"] = cal
        plots["calibration curve"] = cal.name
    mc = np.asarray(result.prefixes["mc_mean"], dtype=np.float64)
    scatter_name = (
        "learned"
        if "learned" in result.estimator_info
        else next((n for n, i in result.estimator_info.items() if i.get("probability")), None)
    )
    if scatter_name is not None:
        paths["scatter"] = plot_scatter(
            np.asarray(result.prefixes[scatter_name], dtype=np.float64),
            mc,
            scatter_name,
            out / "scatter.png",
            np.asarray(result.prefixes["n"], dtype=np.float64),
        )
        plots[f"{scatter_name} vs MC"] = paths["scatter"].name

    def chosen(k: int) -> list[int]:
        first = [i for i in (traces or []) if 0 <= i < len(result.traces)]
        return (first + [i for i in _pick_traces(result, k + len(first)) if i not in first])[: max(k, len(first))]

    curves = plot_value_curves(result, chosen(n_plot), out / "value_curves.png", forks)
    if curves:
        paths["value_curves"] = curves
        plots["value curves along tokens"] = curves.name

    page = render_heatmap(result, chosen(n_heat), tokenizer, forks)
    paths["heatmap"] = runfolder.write_text(out / "heatmap.html", page)

    # the prompt and prefix text beside the ids, so each row (here and in wandb's table) can be read
    prompts, prefixes = prefix_texts(result, tokenizer)
    columns = dict(result.prefixes)
    head = list(columns)[: list(columns).index("position") + 1] if "position" in columns else []
    columns = {**{k: columns[k] for k in head}, "prompt": prompts, "prefix": prefixes, **columns}
    table = pa.table(columns)
    paths["predictions"] = runfolder.write_with(out / "predictions.parquet", lambda p: pq.write_table(table, p))

    metrics = result.metrics
    metrics["rank_equivalent"] = rank_equivalent_groups(result)
    metrics["files"] = {k: p.name for k, p in paths.items()} | {
        "report": "report.md",
        "report_html": "report.html",
        "metrics": "metrics.json",
    }
    markdown = render_markdown(metrics, plots, sections)
    paths["report"] = runfolder.write_text(out / "report.md", markdown)
    paths["report_html"] = runfolder.write_text(out / "report.html", render_html(markdown))
    # last: a run stopped before it (a kill, a full disk) leaves no metrics.json, never a truncated one
    paths["metrics"] = runfolder.write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))

    if logger is not None:
        flat: dict[str, float] = {}
        flatten_metrics(
            "eval",
            {k: metrics[k] for k in ("n_traces", "n_prefixes", "mc", "estimators", "step_verification", "cost")},
            flat,
        )
        logger.log(flat, step=0)
        for key in ("calibration", "scatter", "value_curves"):
            if key in paths:
                logger.log_image(f"eval/{key}", paths[key], step=0)
        logger.log_html("eval/heatmap", page, step=0)
        cols = list(columns)
        rows = [[columns[c][i] for c in cols] for i in range(len(result.prefixes["position"]))]
        logger.log_table("eval/predictions", cols, rows, step=0)
    return paths


def write_step_benchmark_report(metrics: dict[str, Any], out_dir: str | Path, logger: Any = None) -> dict[str, Path]:
    """metrics.json and report.md for a run that only scores ProcessBench / TRL step data."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# prefixvalue step benchmark", "", f"checkpoint: `{metrics.get('checkpoint')}`", ""]
    lines += step_benchmark_lines(metrics["step_benchmark"])
    runfolder.write_text(out / "report.md", "\n".join(lines))
    runfolder.write_text(out / "report.html", render_html("\n".join(lines), "prefixvalue step benchmark"))
    runfolder.write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))  # atomic, last
    if logger is not None:
        flat: dict[str, float] = {}
        flatten_metrics("eval/step_benchmark", metrics["step_benchmark"], flat)
        logger.log(flat, step=0)
    return {"metrics": out / "metrics.json", "report": out / "report.md"}


__all__ = ["flatten_metrics", "prefix_texts", "write_report", "write_step_benchmark_report"]
