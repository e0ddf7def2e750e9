"""report.md of an evaluation, put together from its sections, and report.html (report.md for a browser)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from .format import cell
from .prefix_metrics import data_lines, error_detection_lines, estimator_lines, position_group_lines, split_lines
from .steps import step_benchmark_lines, step_verification_lines


def render_markdown(metrics: dict[str, Any], plots: dict[str, str], sections: Sequence[str] = ()) -> str:
    """The report a reader wants first: data and saturation, the estimator table, groups, error detection, steps,
    cost.

    `sections` (markdown, each opening with a ``## `` heading) come right after the header."""
    lines = ["# prefixvalue evaluation", ""]
    if metrics.get("checkpoint") or metrics.get("policy"):
        lines += [f"checkpoint: `{metrics.get('checkpoint')}` · policy: `{metrics.get('policy')}`", ""]
    lines += [*split_lines(metrics.get("split")), ""]
    if metrics.get("warnings"):
        lines += ["## Warnings", "", *[f"- **{w}**" for w in metrics["warnings"]], ""]
    for section in (s for s in sections if s):
        lines += [section.rstrip("\n"), ""]
    lines += data_lines(metrics)
    lines += estimator_lines(metrics)
    lines += position_group_lines(metrics)
    lines += error_detection_lines(metrics.get("error_diagnosis"))
    lines += step_verification_lines(metrics.get("step_verification") or {})
    if metrics.get("step_benchmark"):
        lines += step_benchmark_lines(metrics["step_benchmark"])
    lines += cost_lines(metrics.get("cost", {}))
    if metrics.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in metrics["notes"]], ""]
    if plots:
        lines += ["## Plots", ""]
        for key, fname in plots.items():
            lines += [f"### {key}", "", f"![{key}]({fname})", ""]
    lines += [
        "Token heatmap: [heatmap.html](heatmap.html) · per-prefix predictions: `predictions.parquet` · "
        "all numbers: `metrics.json`",
        "",
    ]
    return "\n".join(lines)


def cost_lines(cost: dict[str, Any]) -> list[str]:
    """The ``## Cost`` section of metrics.json's ``cost``: value-model, policy and MC tokens and their ratio."""
    return [
        "## Cost",
        "",
        f"- value-model forward tokens: {cell(cost.get('value_forward_tokens'))}",
        f"- policy forward tokens (soft values): {cell(cost.get('policy_forward_tokens'))}",
        f"- MC generated tokens for the same prefixes: {cell(cost.get('mc_generated_tokens'), 0)}"
        + (f" ({cost['mc_generated_tokens_note']})" if cost.get("mc_generated_tokens_note") else ""),
        f"- ratio MC / value model: {cell(cost.get('ratio_mc_to_value'), 1)}",
        f"- in compute (each pass's tokens × its parameters, in tokens of the policy: "
        f"{cell(cost.get('value_forward_policy_tokens'), 0)}): ratio {cell(cost.get('ratio_mc_to_value_compute'), 1)}"
        + (f" ({cost['ratio_mc_to_value_compute_note']})" if cost.get("ratio_mc_to_value_compute_note") else ""),
        "",
    ]


# ----------------------------------------------------------------------------------- report.html
#: style of report.html: wide tables scroll sideways with their first column pinned, numbers align
_REPORT_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:78em;margin:2em auto;padding:0 1em;line-height:1.45;"
    "color:#1a1a1a}h1,h2,h3{line-height:1.2}code{background:#f3f3f3;padding:0 .2em;border-radius:3px}"
    ".table{overflow-x:auto;margin:.6em 0 1.2em;border:1px solid #ddd;border-radius:4px}"
    "table{border-collapse:collapse;font-size:.85em;font-variant-numeric:tabular-nums}"
    "th,td{padding:.3em .6em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}"
    "td{white-space:nowrap}th{background:#f6f6f6;position:sticky;top:0}"
    "td:first-child,th:first-child{position:sticky;left:0;background:#fafafa;white-space:normal;"
    "min-width:9em;max-width:22em;border-right:1px solid #ddd}tr:hover td{background:#f0f6ff}"
    "img{max-width:100%;height:auto;border:1px solid #eee}"
)


def render_html(markdown: str, title: str = "prefixvalue evaluation") -> str:
    """report.md as one HTML page (markdown-it, tables enabled): every table wrapped in a box that
    scrolls sideways with its first column pinned, images beside the page as in report.md."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    body = body.replace("<table>", "<div class='table'><table>").replace("</table>", "</table></div>")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_REPORT_CSS}</style>"
        f"</head><body>{body}</body></html>"
    )


__all__ = ["cost_lines", "render_html", "render_markdown"]
