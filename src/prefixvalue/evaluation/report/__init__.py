"""The evaluation report: metrics.json, report.md, report.html, PNG plots, heatmap.html,
predictions.parquet. Rendering only; what it shows is computed by the evaluation modules
(`prefixvalue.evaluation.scoring`, `prefixvalue.evaluation.equivalence`).

One module per part: `prefix_metrics` (which prompts, the data, the estimator table, position groups),
`steps` (step verification, step benchmark), `markdown` (report.md put together, report.html),
`quickstart` (the quickstart's sections, the frontier, its printed summary), `heatmap` (heatmap.html),
`plots` (the PNGs), `write` (the files and the logger); `format` holds report.md's way of writing a
number (`prefixvalue.formatting`).
"""

from __future__ import annotations

from ..equivalence import RANK_EQUIVALENT_SPEARMAN, rank_equivalent_groups
from .heatmap import NO_LABEL_COLOUR, render_heatmap, text_colour, token_texts, value_colour
from .markdown import render_html, render_markdown
from .plots import _plt as _plt  # matplotlib with the Agg backend, for the studies' plots
from .plots import plot_calibration, plot_scatter, plot_value_curves, save_figure
from .prefix_metrics import split_lines
from .quickstart import render_frontier_section, render_quickstart_section, summary_table
from .write import flatten_metrics, prefix_texts, write_report, write_step_benchmark_report

__all__ = [
    "NO_LABEL_COLOUR",
    "RANK_EQUIVALENT_SPEARMAN",
    "flatten_metrics",
    "plot_calibration",
    "plot_scatter",
    "plot_value_curves",
    "prefix_texts",
    "rank_equivalent_groups",
    "save_figure",
    "render_frontier_section",
    "render_heatmap",
    "render_html",
    "render_markdown",
    "render_quickstart_section",
    "split_lines",
    "summary_table",
    "text_colour",
    "token_texts",
    "value_colour",
    "write_report",
    "write_step_benchmark_report",
]
