"""report.md's sections on the prefix metrics: which prompts were scored, the data and its MC labels,
the estimator table with its notes, the table by position group, and error detection (metrics.json's
``error_diagnosis``, where the traces carry exact step labels).

Estimators that rank the prefixes alike (metrics.json's ``rank_equivalent``,
`prefixvalue.evaluation.equivalence`) share one row, labelled by the first with the others named.
"""

from __future__ import annotations

from typing import Any

from ...formatting import correlation_cell, fixed, interval
from .format import cell


def split_lines(split: dict[str, Any] | None) -> list[str]:
    """The report's opening words on which prompts were scored (metrics.json's ``split`` section)."""
    if not split:
        return ["**Held-out status unknown**: this metrics dict has no `split` section."]
    if split.get("includes_training_prompts") is True:
        n = split.get("training_prompts_scored")
        which = f"{n} training prompt(s)" if n is not None else "an unknown number of training prompts"
        return [
            f"**These scores include {which} of the value model and are not held-out figures** "
            f"(include_training_prompts=true). {split.get('note', '')}"
        ]
    if split.get("includes_training_prompts") is None:
        return [f"**Held-out status unknown**: {split.get('note', '')}"]
    return [
        f"Scored {split.get('heldout_prompts')} held-out prompt(s) ({split.get('heldout_traces')} traces, "
        f"{split.get('kept_prefixes')} prefixes); dropped {split.get('dropped_training_prompts', 0)} training "
        f"prompt(s) ({split.get('dropped_prefixes', 0)} prefixes). {split.get('note', '')}"
    ]


def shared_rows(metrics: dict[str, Any]) -> tuple[set[str], dict[str, str]]:
    """From metrics.json's ``rank_equivalent`` groups: the estimators whose row is dropped (a group's
    members after its first), and each first member's row label naming the others."""
    merged: set[str] = set()
    labels: dict[str, str] = {}
    for g in metrics.get("rank_equivalent") or []:
        first, *rest = g["estimators"]
        merged.update(rest)
        labels[first] = f"{first} (≡ {', '.join(rest)})"
    return merged, labels


def data_lines(metrics: dict[str, Any]) -> list[str]:
    """The ``## Data`` section: finish reasons, counts, the MC labels' mean, variance, saturation and
    noise ceiling."""
    mc = metrics["mc"]
    nc = mc["noise_ceiling"]
    finish = metrics.get("traces_finish")
    finish_line = (
        [
            "- finish reasons of the traces given: "
            + ", ".join(f"{k} {v}" for k, v in finish["finish_reasons"].items())
            + f" ({finish['failed_as_truncated']} cut off at the token budget and scored 0)"
        ]
        if finish
        else []
    )
    return [
        "## Data",
        "",
        *finish_line,
        f"- {metrics['n_traces']} traces, {metrics['n_prefixes']} labelled prefixes "
        f"(positions {metrics['positions']['min']}–{metrics['positions']['max']}), "
        f"{mc['samples_per_prefix']} MC samples per prefix (range {mc['samples_per_prefix_range']})",
        f"- MC label mean {cell(mc.get('label_mean'))}, variance {cell(mc.get('label_variance'), 4)}; "
        f"saturated: **{mc['saturated']}**"
        + (f" ({mc['saturation_definition']})" if mc.get("saturation_definition") else ""),
        f"- {mc['note']}",
        f"- noise ceiling (Spearman): **{cell(nc['spearman'])}** — {nc.get('note', '')}",
        "",
    ]


def estimator_lines(metrics: dict[str, Any]) -> list[str]:
    """The ``## Estimators vs MC labels`` section: one row per estimator (correlations with CIs, share of
    the ceiling, AUROC, Brier, ECE), the rank-equivalence notes, the paired comparisons, the MellowMax
    default and why some cells are n/a."""
    unit = metrics.get("bootstrap_unit", "prompt")
    lines = [
        "## Estimators vs MC labels",
        "",
        f"Correlations with cluster-bootstrap 95% CIs resampling {unit}s; AUROC of the trace's final outcome; "
        "Brier and ECE (15 bins) against the MC means, for probability-valued estimators only.",
        "",
        "| estimator | Spearman | of ceiling | Pearson | Kendall | AUROC outcome | Brier | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    merged, labels = shared_rows(metrics)
    for name, m in metrics["estimators"].items():
        if name in merged:  # ranks like an estimator above: its row stands for both
            continue
        frac = m["spearman"].get("fraction_of_ceiling")
        lines.append(
            f"| {labels.get(name, name)} | {correlation_cell(m['spearman'])} | {cell(frac, 2)} | "
            f"{correlation_cell(m['pearson'])} | {correlation_cell(m['kendall'])} | {cell(m['auroc_outcome'])} | "
            f"{cell(m['brier'])} | {cell(m['ece'])} |"
        )
        for key in ("spearman", "pearson", "kendall"):
            if m[key].get("note") and m[key].get("value") is None:
                notes.append(f"- **{name}** {key}: {m[key]['note']}")
        if m.get("auroc_outcome_note") and m.get("auroc_outcome") is None:
            notes.append(f"- **{name}** AUROC: {m['auroc_outcome_note']}")
        if m.get("note") and name not in merged:
            notes.append(f"- **{name}**: {m['note']}")
        for key in ("brier", "ece"):
            if m.get(key) is None and m.get(f"{key}_note") and m.get("probability") is not False:
                notes.append(f"- **{name}** {key}: {m[f'{key}_note']}")
    lines += [""]
    for g in metrics.get("rank_equivalent") or []:
        lines += [g["note"], ""]
    paired = [
        (n, m["spearman"])
        for n, m in metrics["estimators"].items()
        if n not in merged and ("paired_vs_mellowmax" in m["spearman"] or "fraction_of_ceiling_ci" in m["spearman"])
    ]
    if paired:
        lines += ["Paired comparisons (the same bootstrap replicates for every estimator):", ""]
        for name, sp in paired:
            d = sp.get("paired_vs_mellowmax") or {}
            lines.append(
                f"- **{name}**: Spearman − MellowMax's = {correlation_cell(d) if d else 'n/a'}; share of the "
                f"noise ceiling {cell(sp.get('fraction_of_ceiling'), 2)} {interval(sp.get('fraction_of_ceiling_ci'))}"
                f" (ceiling held fixed at its point estimate)"
            )
        lines += [""]
    if metrics.get("mellowmax_default"):
        d = metrics["mellowmax_default"]
        lines += [
            f"`mellowmax` is MellowMax over the {d['vocab']} vocabulary at ω = {d['omega']:g}; "
            f"other ω and top-k variants are listed under their own names.",
            "",
        ]
    if notes:
        lines += ["Why some cells are n/a:", "", *sorted(set(notes)), ""]
    return lines


def position_group_lines(metrics: dict[str, Any]) -> list[str]:
    """The ``## By position group (Spearman)`` section: each group's labels and noise ceiling, then the
    estimators as rows and the few groups as columns (a table that fits the page); [] without groups."""
    groups = metrics.get("by_position_group", {})
    if not groups:
        return []
    merged, labels = shared_rows(metrics)
    names = [n for n in metrics["estimators"] if n not in merged]
    lines = [
        "## By position group (Spearman)",
        "",
        "Each group has its own noise ceiling (split-half on its own labels).",
        "",
        "| group | definition | prefixes | label mean | noise ceiling |",
        "|---|---|---|---|---|",
    ]
    for g, e in groups.items():
        gc = (e.get("noise_ceiling") or {}).get("spearman")
        lines.append(f"| {g} | {e['definition']} | {e['n_prefixes']} | {cell(e.get('label_mean'))} | {cell(gc)} |")
    lines += [
        "",
        "| estimator | " + " | ".join(groups) + " |",
        "|---|" + "---|" * len(groups),
    ]
    for n in names:
        cells = [
            correlation_cell(e["estimators"][n]["spearman"]) if n in e["estimators"] else "n/a" for e in groups.values()
        ]
        lines.append(f"| {labels.get(n, n)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


__all__ = ["data_lines", "estimator_lines", "position_group_lines", "shared_rows", "split_lines"]


def error_detection_lines(d: dict[str, Any] | None) -> list[str]:
    """The ``## Error detection`` section of metrics.json's ``error_diagnosis`` (`prefixvalue.evaluation.analysis.
    error_diagnosis`): how well the values separate prefixes after a wrong step, beside the policy's own features
    and the MC labels themselves; [] without one."""
    if not d:
        return []
    lines = [
        "## Error detection",
        "",
        f"- {d['error_written_share']:.0%} of the scored prefixes follow a wrong step. AUROC of `{d['estimator']}` for "
        f"it {fixed(d['auroc_error_written'])}; of the MC labels themselves {fixed(d.get('auroc_error_written_mc'))} "
        f"(what a value equal to the labels reaches: `{d['estimator']}` is at "
        f"{fixed(d.get('auroc_error_written_of_mc'), 2)} of it)",
        f"- Spearman of `{d['estimator']}` with MC within error-free prefixes {fixed(d['spearman_no_error'])}, within "
        f"the others {fixed(d['spearman_error'])}; with an exact error flag above the same values "
        f"{fixed(d['spearman_with_exact_error_flag'])} (the flag alone: {fixed(d['mc_spearman_with_error_flag'])})",
    ]
    if d.get("auroc_error_written_step_drop") is not None:
        lines.append(
            f"- `{d['estimator']}`'s own step scores, the worst fall of its value across one written step (log P̂ "
            f"after − log P̂ before), detect it with AUROC {fixed(d['auroc_error_written_step_drop'])}: a detector "
            "read from the value model, free of the value's level (which keeps the chance of recovering)"
        )
    elif d.get("auroc_error_written_step_drop_note"):
        lines.append(f"- its step drops: {d['auroc_error_written_step_drop_note']}")
    pol = d.get("auroc_error_written_policy")
    if pol:
        lines.append(
            "- the policy's own log-probabilities of the written tokens, alone, detect it with AUROC "
            f"{fixed(pol.get('logprob_sum'))} (their sum) and {fixed(pol.get('logprob_min'))} (their minimum): a "
            "detector, not a value, so it may stand above the labels' own AUROC"
        )
    elif d.get("auroc_error_written_policy_note"):
        lines.append(f"- the policy's own features: {d['auroc_error_written_policy_note']}")
    return [*lines, ""]
