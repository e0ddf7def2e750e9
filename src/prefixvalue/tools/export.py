"""``prefixvalue export``: traces (and MC step labels) as TRL stepwise, Math-Shepherd and ProcessBench data.

    prefixvalue export traces=runs/traces labels=runs/labels out=runs/export              # MC step labels
    prefixvalue export traces=runs/traces out=runs/export formats=[trl,processbench]      # the task's step labels
    prefixvalue export traces=runs/traces out=runs/export file_format=parquet

Writes ``OUT/trl.jsonl``, ``OUT/math_shepherd.jsonl``, ``OUT/processbench.jsonl`` (or ``.parquet``) and
``OUT/export.json`` (label source, conventions, counts, the evaluate options that tokenise the steps as the
policy wrote them). Each file loads with ``datasets.load_dataset("json", data_files=...)`` (or
``"parquet"``), and ``prefixvalue evaluate step_data=OUT/processbench.jsonl`` scores it.

Step texts are decoded from the traces' step token spans (``<eos>`` left out). Where the step labels come
from (``label_source``): ``mc``: the MC labels at step-boundary prefixes (``prefixvalue label
positions=steps``), value after the step; ``task``: the task's exact step labels (arith: each step judged
given the previous ones); ``outcome``: every step labelled with the trace's outcome, a fallback that carries
no step information. ProcessBench's first-error label comes from the task's exact step labels when the traces
carry them (``processbench_labels=auto``, the default; ``exact`` / ``mc`` choose), so it is the true first
error; export.json records each format's label source and, when both are at hand, on how many traces the
MC-derived first error differs from the exact one. Every file holds the same traces. The conventions of each
format are in docs/design.md, "Data bridges".
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__, runfolder
from ..config import ConfigError, field, parse_config, save_resolved_config
from ..data import load_labels, load_traces
from ..data.bridges import (
    EXPORT_FORMATS,
    PROCESSBENCH_LABELS,
    ROW_BUILDERS,
    exported_trace,
    first_error_disagreements,
    labels_by_trace,
    mc_step_values,
    processbench_label_source,
    step_label_source,
    step_separator,
    trace_steps,
    write_rows,
)
from ..loading import ModelLoadConfig

#: what each format's labels mean, written into export.json (docs/design.md, "Data bridges")
CONVENTIONS = {
    "trl": "labels[j]: step j is good under the label source (mc: some MC continuation after step j was correct; "
    "task: the task's judgement of step j given the steps before it, so a step after an error can be True; "
    "outcome: the trace's outcome >= 0.5 for every step)",
    "math_shepherd": "hard_labels[j]: some continuation after step j was correct (Math-Shepherd hard estimation); "
    "soft_labels[j]: the fraction that were (soft estimation); input/label: the problem, then 'Step k: ' and each "
    "step tagged ' ки' / '+' or '-' (the Math-Shepherd dataset's format, as TRL's converter reads it); task: the "
    "traces' task",
    "processbench": "label: index of the first step labelled wrong (-1: none) under its label source (task: the "
    "true first error); every step after it counts as wrong; final_answer_correct: outcome >= 0.5",
}
SOURCES = {
    "mc": "MC labels of step-boundary prefixes (prefixvalue label positions=steps): the value after each step; "
    "a step that ends the completion takes the trace's verified outcome",
    "task": "the task's exact step labels (the traces' step_labels column)",
    "outcome": "OUTCOME ONLY (fallback): every step carries the trace's outcome; no step is located",
}

#: how the out folder is claimed (`prefixvalue.runfolder`): the files export writes (with the ``.tmp`` an
#: earlier version's killed run could leave), paths compared resolved
FOLDER_RULES: dict[str, Any] = {
    "outputs": (
        runfolder.CONFIG_FILE,
        "export.json",
        *(f"{f}.{x}{tmp}" for f in EXPORT_FORMATS for x in ("jsonl", "parquet") for tmp in ("", ".tmp")),
    ),
    "path_keys": ("traces", "labels", "model"),
}


@dataclass
class ExportConfig(ModelLoadConfig):
    """Write traces (and MC step labels) as TRL stepwise supervision, Math-Shepherd and ProcessBench data."""

    traces: str | None = field(None, help="traces dataset folder (prefixvalue collect or import)")
    labels: str | None = field(
        None, help="prefix-labels folder from `prefixvalue label positions=steps` (MC step labels); optional"
    )
    out: str | None = field(None, help="output folder (one file per format, export.json)")
    formats: list[str] = field(
        default_factory=lambda: list(EXPORT_FORMATS), help="formats to write: any of trl, math_shepherd, processbench"
    )
    file_format: str = field("jsonl", help="jsonl (JSON lines) | parquet")
    label_source: str = field(
        "auto",
        help="auto (mc with labels=, else task when the traces carry step labels, else outcome) | mc | task | "
        "outcome (every step labelled with the trace's outcome: a fallback without step information)",
    )
    processbench_labels: str = field(
        "auto",
        help="ProcessBench's first-error labels: auto (exact when the traces carry the task's step labels, else "
        "label_source) | exact (the task's step labels: the true first error) | mc (the MC labels)",
    )
    model: str | None = field(
        None, help="tokenizer that decodes the step spans (default: the traces' model)", synonyms=("policy",)
    )
    max_traces: int | None = field(None, help="export at most this many traces (first in order; None: all)")

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in EXPORT_FORMATS]
        if bad or not self.formats:
            raise ConfigError(f"export: formats must be a non-empty list of {', '.join(EXPORT_FORMATS)}; got {bad}")
        if self.file_format not in ("jsonl", "parquet"):
            raise ConfigError(f"export: file_format must be jsonl or parquet, got {self.file_format!r}")
        step_label_source(self.label_source, True, True)  # a known name
        processbench_label_source(self.processbench_labels, "mc", True, True)
        if self.max_traces is not None and self.max_traces < 1:
            raise ConfigError("export: max_traces must be >= 1")


def main(argv: list[str] | None = None) -> int:
    """Run ``prefixvalue export``; returns the exit status."""
    run(parse_config(ExportConfig, argv, prog="prefixvalue export"))
    return 0


def run(cfg: ExportConfig) -> dict[str, Any]:
    """Export as `cfg` says; returns the summary (also ``OUT/export.json``)."""
    from ..policies import check_vocabulary, load_tokenizer

    if not cfg.traces or not cfg.out:
        raise ConfigError("export: traces=DIR and out=DIR are required")
    runfolder.check(cfg.out, "export", cfg, **FOLDER_RULES)  # refuse another run's folder before reading anything
    traces = load_traces(cfg.traces)
    if cfg.max_traces is not None:
        traces = traces.select(range(min(cfg.max_traces, len(traces))))
    labels = load_labels(cfg.labels, traces) if cfg.labels else None
    has_task = "step_labels" in traces.column_names and any(x is not None for x in traces["step_labels"])
    source = step_label_source(cfg.label_source, labels is not None, has_task)
    sources = {fmt: source for fmt in cfg.formats}  # each format's label source
    if "processbench" in cfg.formats:
        sources["processbench"] = processbench_label_source(
            cfg.processbench_labels, source, labels is not None, has_task
        )
    needed = sorted(set(sources.values()) | {source})
    # the exact and the MC first errors are compared on every exported trace that has both
    compare = labels is not None and has_task and "mc" in needed
    if sources.get("processbench") == "outcome":
        raise ConfigError(
            "export: ProcessBench needs the first wrong step, which outcome-only labels cannot locate; give "
            "labels=DIR (MC step labels) or leave processbench out of formats"
        )
    model = cfg.model or (traces[0]["model"] if "model" in traces.column_names else None)
    if not model:
        raise ConfigError("export: the traces record no model; pass model= (the tokenizer that wrote them)")
    load = cfg.load_options()
    if "model_load" in traces.column_names and cfg.model is None:
        load = load.with_recorded(json.loads(traces[0]["model_load"] or "{}"))
    tokenizer = load_tokenizer(model, load)
    check_vocabulary(tokenizer, traces, "export")  # an id outside the vocabulary would decode to nothing
    mc = labels_by_trace(labels) if labels is not None else {}
    exported: dict[str, list] = {src: [] for src in needed}
    pairs: tuple[list, list] = ([], [])  # (MC, exact) of the traces that have both
    skipped: Counter[str] = Counter()
    separators: Counter[str] = Counter()
    for row in traces:
        spans = row["step_spans"] or []
        if not spans:
            skipped["no steps"] += 1
            continue
        values = None
        if "mc" in needed:
            tid = str(row["trace_id"])
            if tid not in mc:
                skipped["no MC labels (trace not labelled)"] += 1
                continue
            values = mc_step_values(mc[tid], spans, len(row["completion_ids"]), row["outcome"])
            if values is None:
                skipped["MC labels miss a step end (label positions=steps labels every one)"] += 1
                continue
        steps = trace_steps(tokenizer, row["completion_ids"], spans)
        got = {src: exported_trace(row, steps, src, values) for src in needed}
        if any(t is None for t in got.values()):  # every file holds the same traces
            skipped["no step labels"] += 1
            continue
        if len(exported[source]) < 256:  # enough traces to see how the policy joins its steps
            separators.update(step_separator(tokenizer, row["completion_ids"], spans))
        for src, t in got.items():
            exported[src].append(t)
        if compare:
            exact = got.get("task") or exported_trace(row, steps, "task", None)
            if exact is not None:
                pairs[0].append(got["mc"])
                pairs[1].append(exact)
    if not exported[source]:
        used = ", ".join(f"{f}: {s}" for f, s in sources.items())
        raise ConfigError(
            f"export: no trace could be exported with label sources {used} (skipped: {dict(skipped) or 'none'})"
        )
    out = Path(cfg.out)
    folder = runfolder.claim(out, "export", cfg, **FOLDER_RULES)
    save_resolved_config(cfg, out)
    files = {}
    for fmt in cfg.formats:
        rows = [ROW_BUILDERS[fmt](t) for t in exported[sources[fmt]]]
        folder.write_with(f"{fmt}.{cfg.file_format}", lambda path, rows=rows: write_rows(rows, path))
        files[fmt] = str(out / f"{fmt}.{cfg.file_format}")
    sep = separators.most_common(1)[0][0] if separators else "\n"
    pb_source = sources.get("processbench", source)
    n_err = sum(t.first_error() >= 0 for t in exported[pb_source])
    n = len(exported[source])
    disagree = first_error_disagreements(*pairs) if compare else None
    if disagree is not None:
        disagree["means"] = (
            "traces whose first error from the MC labels (first step no continuation made right) differs from "
            "the task's exact first error; the ProcessBench file uses "
            + ("the exact one" if pb_source == "task" else "MC")
        )
    summary = {
        "prefixvalue_version": __version__,
        "traces": cfg.traces,
        "labels": cfg.labels,
        "label_source": source,
        "label_source_means": SOURCES[source],
        "label_source_by_format": sources,
        "processbench_labels": cfg.processbench_labels,
        "processbench_label_disagreements": disagree,
        "conventions": {fmt: CONVENTIONS[fmt] for fmt in cfg.formats},
        "files": files,
        "exported": n,
        "skipped": dict(skipped),
        "with_a_wrong_step": n_err,
        "all_steps_right": n - n_err,
        "mean_steps": sum(len(t.steps) for t in exported[source]) / n,
        "prompt_format": traces[0]["prompt_format"] if "prompt_format" in traces.column_names else None,
        # the policy wrote prompt and steps joined like this; evaluate tokenises step data the same way with
        "evaluate_options": {"step_prompt_template": "{prompt}", "step_separator": sep},
    }
    folder.write_text("export.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    folder.finish()
    print(
        f"export: {n} traces ({n_err} with a wrong step), labels from "
        + ", ".join(f"{s} ({f})" for f, s in sources.items())
        + (f"; skipped {dict(skipped)}" if skipped else "")
        + f" -> {', '.join(files.values())}"
    )
    if disagree is not None:
        print(
            f"export: the MC-derived first error differs from the task's exact one on {disagree['differ']} of "
            f"{disagree['compared']} traces; processbench.jsonl uses {'the exact' if pb_source == 'task' else 'the MC'} "
            "labels (processbench_labels=exact|mc)"
        )
    if source == "outcome":
        print(f"export: {SOURCES['outcome']}", file=sys.stderr)
    return summary


__all__ = ["CONVENTIONS", "PROCESSBENCH_LABELS", "ExportConfig", "main", "run"]
