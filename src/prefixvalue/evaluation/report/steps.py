"""report.md's step sections: step verification of the traces (ProcessBench protocol) and the step
benchmark on ProcessBench / TRL step data (its protocol, one row per split and score, the average)."""

from __future__ import annotations

from typing import Any

from .format import cell


def step_verification_lines(sv: dict[str, Any]) -> list[str]:
    """The ``## Step verification (ProcessBench protocol)`` section of metrics.json's
    ``step_verification`` `sv`: the prefix-based and process-level rows when a threshold was set, and the note."""
    lines = ["## Step verification (ProcessBench protocol)", ""]
    if sv.get("f1") is not None or sv.get("threshold") is not None:
        lines += [
            "Threshold chosen on a calibration split of prompts, scores on the disjoint test split.",
            "",
            *([f"Step labels: {sv['label_source']}.", ""] if sv.get("label_source", "exact") != "exact" else []),
            "| score | F1 | acc erroneous | acc correct | threshold | calibration / test traces |",
            "|---|---|---|---|---|---|",
        ]
        for label, s in (("prefix-based", sv), ("process-level", sv.get("process_level"))):
            if s:
                lines.append(
                    f"| {label} | {cell(s.get('f1'))} | {cell(s.get('acc_erroneous'))} | "
                    f"{cell(s.get('acc_correct'))} | {cell(s.get('threshold'), 4)} | "
                    f"{s.get('n_calibration')} / {s.get('n_test')} |"
                )
        lines += [""]
    if sv.get("note"):
        lines += [f"{sv['note']}", ""]
    return lines


def step_benchmark_lines(sb: dict[str, Any]) -> list[str]:
    """The step benchmark section: how the threshold was set (the protocol), one row per split and score,
    and the average over splits when there are several."""
    protocol = sb.get("protocol", "calibration")
    if protocol == "calibration":
        how = (
            f"threshold chosen on a calibration split of problems ({sb.get('n_calibration')}), "
            f"reported on the test split ({sb.get('n_test')})"
        )
    elif protocol == "fixed":
        how = f"every example scored at the fixed threshold {cell(sb.get('threshold'), 4)} (ProcessBench's protocol)"
    else:
        how = f"threshold tuned on `{sb.get('tuned_on')}`, every example scored at it"
    lines = [
        f"## Step benchmark: `{sb.get('source')}`",
        "",
        f"{sb.get('n_examples')} examples; {how}.",
        "",
        "| split | score | F1 | acc erroneous | acc correct | threshold |",
        "|---|---|---|---|---|---|",
    ]
    splits = sb.get("splits") or {"all": sb}
    rows = list(splits.items()) + ([("average", sb.get("average", {}))] if len(splits) > 1 else [])
    for name, split in rows:
        for label, r in (("prefix-based", split), ("process-level", split.get("process_level"))):
            if r:
                lines.append(
                    f"| {name} | {label} | {cell(r.get('f1'))} | {cell(r.get('acc_erroneous'))} | "
                    f"{cell(r.get('acc_correct'))} | {cell(r.get('threshold'), 4)} |"
                )
    if sb.get("note"):
        lines += ["", sb["note"]]
    if sb.get("predictions"):
        lines += ["", f"Per-example predictions: `{sb['predictions']}`"]
    return lines + [""]


__all__ = ["step_benchmark_lines", "step_verification_lines"]
