"""The evaluation report: metrics.json, report.md, PNG plots, heatmap.html, predictions.parquet.

Plots use matplotlib's Agg backend (no display needed). ``heatmap.html`` is one self-contained page
(inline CSS, no scripts, no external assets): each completion token is one ``<span class="tok">``
coloured by the Monte Carlo success of the prefix that ends with that token, over a strip coloured by
the learned value at the same prefix, with every estimator in its hover text; a trace's forking
token can be outlined. Colours follow the colour-blind-safe cividis scale. ``report.html`` is
report.md rendered for a browser.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import CEILING_GOAL, SATURATION_DEFINITION
from .scoring import EvalResult

NO_LABEL_COLOUR = "#e6e6e6"


# ---------------------------------------------------------------------------------- formatting
def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else "(no CI)"


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


def _g(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _corr_cell(c: dict[str, Any]) -> str:
    if c.get("value") is None:
        return "n/a"
    ci = c.get("ci")
    return f"{c['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{c['value']:.3f}"


#: matplotlib's cividis colour map (colour-blind safe, readable in greyscale) sampled at 0, 0.1, ..., 1
_CIVIDIS = (
    (0, 34, 78),
    (8, 51, 112),
    (53, 69, 108),
    (79, 87, 108),
    (102, 105, 112),
    (125, 124, 120),
    (148, 142, 119),
    (174, 163, 113),
    (200, 184, 102),
    (229, 207, 82),
    (254, 232, 56),
)


def value_colour(v: float) -> str:
    """Hex colour of a success probability on the cividis scale: dark blue (0) → grey → yellow (1)."""
    v = float(np.clip(v, 0.0, 1.0)) * (len(_CIVIDIS) - 1)
    i = min(int(v), len(_CIVIDIS) - 2)
    a, b, t = _CIVIDIS[i], _CIVIDIS[i + 1], v - i
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(a, b))
    return f"#{r:02x}{g:02x}{bl:02x}"


def text_colour(v: float) -> str:
    """Black or white, whichever reads on `value_colour(v)`."""
    return "#000" if float(np.clip(v, 0.0, 1.0)) >= 0.5 else "#fff"


# ----------------------------------------------------------------------------------- report.md
def render_markdown(metrics: dict[str, Any], plots: dict[str, str], sections: Sequence[str] = ()) -> str:
    """The report a reader wants first: data and saturation, the estimator table, groups, steps, cost.

    `sections` (markdown, each opening with a ``## `` heading) come right after the header."""
    mc = metrics["mc"]
    nc = mc["noise_ceiling"]
    lines = ["# prefixvalue evaluation", ""]
    if metrics.get("checkpoint") or metrics.get("policy"):
        lines += [f"checkpoint: `{metrics.get('checkpoint')}` · policy: `{metrics.get('policy')}`", ""]
    lines += [*split_lines(metrics.get("split")), ""]
    for section in (s for s in sections if s):
        lines += [section.rstrip("\n"), ""]
    unit = metrics.get("bootstrap_unit", "prompt")
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
    lines += [
        "## Data",
        "",
        *finish_line,
        f"- {metrics['n_traces']} traces, {metrics['n_prefixes']} labelled prefixes "
        f"(positions {metrics['positions']['min']}–{metrics['positions']['max']}), "
        f"{mc['samples_per_prefix']} MC samples per prefix (range {mc['samples_per_prefix_range']})",
        f"- MC label mean {_num(mc.get('label_mean'))}, variance {_num(mc.get('label_variance'), 4)}; "
        f"saturated: **{mc['saturated']}**"
        + (f" ({mc['saturation_definition']})" if mc.get("saturation_definition") else ""),
        f"- {mc['note']}",
        f"- noise ceiling (Spearman): **{_num(nc['spearman'])}** — {nc.get('note', '')}",
        "",
        "## Estimators vs MC labels",
        "",
        f"Correlations with cluster-bootstrap 95% CIs resampling {unit}s; AUROC of the trace's final outcome; "
        "Brier and ECE (15 bins) against the MC means, for probability-valued estimators only.",
        "",
        "| estimator | Spearman | of ceiling | Pearson | Kendall | AUROC outcome | Brier | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    merged, labels = _rank_groups(metrics)
    for name, m in metrics["estimators"].items():
        if name in merged:  # ranks like an estimator above: its row stands for both
            continue
        frac = m["spearman"].get("fraction_of_ceiling")
        lines.append(
            f"| {labels.get(name, name)} | {_corr_cell(m['spearman'])} | {_num(frac, 2)} | {_corr_cell(m['pearson'])} | "
            f"{_corr_cell(m['kendall'])} | {_num(m['auroc_outcome'])} | {_num(m['brier'])} | "
            f"{_num(m['ece'])} |"
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
                f"- **{name}**: Spearman − MellowMax's = {_corr_cell(d) if d else 'n/a'}; share of the "
                f"noise ceiling {_num(sp.get('fraction_of_ceiling'), 2)} {_ci(sp.get('fraction_of_ceiling_ci'))}"
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
    groups = metrics.get("by_position_group", {})
    if groups:
        # estimators as rows and the few groups as columns: a table that fits the page
        names = [n for n in metrics["estimators"] if n not in merged]
        lines += [
            "## By position group (Spearman)",
            "",
            "Each group has its own noise ceiling (split-half on its own labels).",
            "",
            "| group | definition | prefixes | label mean | noise ceiling |",
            "|---|---|---|---|---|",
        ]
        for g, e in groups.items():
            gc = (e.get("noise_ceiling") or {}).get("spearman")
            lines.append(f"| {g} | {e['definition']} | {e['n_prefixes']} | {_num(e.get('label_mean'))} | {_num(gc)} |")
        lines += [
            "",
            "| estimator | " + " | ".join(groups) + " |",
            "|---|" + "---|" * len(groups),
        ]
        for n in names:
            cells = [
                _corr_cell(e["estimators"][n]["spearman"]) if n in e["estimators"] else "n/a" for e in groups.values()
            ]
            lines.append(f"| {labels.get(n, n)} | " + " | ".join(cells) + " |")
        lines += [""]
    sv = metrics.get("step_verification") or {}
    lines += ["## Step verification (ProcessBench protocol)", ""]
    if sv.get("f1") is not None or sv.get("threshold") is not None:
        lines += [
            "Threshold chosen on a calibration split of prompts, scores on the disjoint test split.",
            "",
            "| score | F1 | acc erroneous | acc correct | threshold | calibration / test traces |",
            "|---|---|---|---|---|---|",
        ]
        for label, s in (("prefix-based", sv), ("process-level", sv.get("process_level"))):
            if s:
                lines.append(
                    f"| {label} | {_num(s.get('f1'))} | {_num(s.get('acc_erroneous'))} | "
                    f"{_num(s.get('acc_correct'))} | {_num(s.get('threshold'), 4)} | "
                    f"{s.get('n_calibration')} / {s.get('n_test')} |"
                )
        lines += [""]
    if sv.get("note"):
        lines += [f"{sv['note']}", ""]
    if metrics.get("step_benchmark"):
        lines += _step_benchmark_lines(metrics["step_benchmark"])
    cost = metrics.get("cost", {})
    lines += [
        "## Cost",
        "",
        f"- value-model forward tokens: {_num(cost.get('value_forward_tokens'))}",
        f"- policy forward tokens (soft values): {_num(cost.get('policy_forward_tokens'))}",
        f"- MC generated tokens for the same prefixes: {_num(cost.get('mc_generated_tokens'), 0)}"
        + (f" ({cost['mc_generated_tokens_note']})" if cost.get("mc_generated_tokens_note") else ""),
        f"- ratio MC / value model: {_num(cost.get('ratio_mc_to_value'), 1)}",
        "",
    ]
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


def _rank_groups(metrics: dict[str, Any]) -> tuple[set[str], dict[str, str]]:
    """From metrics.json's ``rank_equivalent`` groups: the estimators whose row is dropped (a group's
    members after its first), and each first member's row label naming the others."""
    merged: set[str] = set()
    labels: dict[str, str] = {}
    for g in metrics.get("rank_equivalent") or []:
        first, *rest = g["estimators"]
        merged.update(rest)
        labels[first] = f"{first} (≡ {', '.join(rest)})"
    return merged, labels


#: estimators whose values rank the prefixes with at least this Spearman correlation between them
#: share one row of the report's tables (metrics.json keeps each)
RANK_EQUIVALENT_SPEARMAN = 0.9999


def rank_equivalent_groups(result: EvalResult, threshold: float = RANK_EQUIVALENT_SPEARMAN) -> list[dict[str, Any]]:
    """Groups of estimators (of one kind: probabilities or soft values) whose values rank the labelled
    prefixes alike: Spearman between them ≥ `threshold`, measured on ``result.prefixes``. Each group
    lists its estimators (the first in metrics order stands for the others), the smallest Spearman
    between a member and the first, the largest difference in any correlation or AUROC of
    metrics.json's estimator table, and a sentence for the report."""
    from scipy.stats import spearmanr

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
            if ok.sum() <= 2 or np.ptp(v[ok]) == 0 or np.ptp(cols[head][ok]) == 0:
                continue
            rho = float(spearmanr(v[ok], cols[head][ok])[0])
            if rho >= threshold:
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


def _step_benchmark_lines(sb: dict[str, Any]) -> list[str]:
    """The step benchmark section: how the threshold was set (the protocol), one row per split and score,
    and the average over splits when there are several."""
    protocol = sb.get("protocol", "calibration")
    if protocol == "calibration":
        how = (
            f"threshold chosen on a calibration split of problems ({sb.get('n_calibration')}), "
            f"reported on the test split ({sb.get('n_test')})"
        )
    elif protocol == "fixed":
        how = f"every example scored at the fixed threshold {_num(sb.get('threshold'), 4)} (ProcessBench's protocol)"
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
                    f"| {name} | {label} | {_num(r.get('f1'))} | {_num(r.get('acc_erroneous'))} | "
                    f"{_num(r.get('acc_correct'))} | {_num(r.get('threshold'), 4)} |"
                )
    if sb.get("note"):
        lines += ["", sb["note"]]
    if sb.get("predictions"):
        lines += ["", f"Per-example predictions: `{sb['predictions']}`"]
    return lines + [""]


# --------------------------------------------------------------------------------------- plots
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(calibration: dict[str, list[dict[str, float]]], path: Path) -> Path | None:
    """Reliability diagram (mean MC label per predicted-probability bin) for probability estimators."""
    if not calibration:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, bins in calibration.items():
        if bins:
            ax.plot([b["mean_pred"] for b in bins], [b["mean_target"] for b in bins], "o-", label=name, ms=3)
    ax.set_xlabel("predicted success probability")
    ax.set_ylabel("mean MC success in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Calibration against MC labels")
    # below the axes: a legend inside would cover the curves near the diagonal
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_scatter(pred: np.ndarray, mc: np.ndarray, name: str, path: Path, n: np.ndarray | None = None) -> Path:
    """Estimator vs MC label per prefix, with the diagonal and the Spearman and Pearson correlations.

    MC labels are k/n fractions, so the points fall on vertical stripes; each point is jittered
    horizontally by up to a third of the gap 1/n (`n`: MC samples per prefix) so the stripes show
    their density. The correlations are of the unjittered values."""
    from scipy.stats import pearsonr, spearmanr

    plt = _plt()
    pred, mc = np.asarray(pred, dtype=np.float64), np.asarray(mc, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(mc)
    gap = 1.0 / np.asarray(n, dtype=np.float64)[ok] if n is not None else np.full(int(ok.sum()), 1 / 32)
    x = mc[ok] + np.random.default_rng(0).uniform(-1, 1, int(ok.sum())) * gap / 3
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="y = x")
    ax.scatter(x, pred[ok], s=6, alpha=0.35, linewidths=0, label="prefix (MC jittered within its k/n stripe)")
    if ok.sum() > 2 and np.ptp(pred[ok]) > 0 and np.ptp(mc[ok]) > 0:
        rho, r = spearmanr(pred[ok], mc[ok])[0], pearsonr(pred[ok], mc[ok])[0]
        corr = f"Spearman {rho:.3f} · Pearson {r:.3f}"
    else:
        corr = "correlation undefined (constant values)"
    ax.set_xlabel("MC success k/n (jittered)")
    ax.set_ylabel(f"{name} (success probability)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{name} vs Monte Carlo, {int(ok.sum())} prefixes\n{corr}", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_value_curves(
    result: EvalResult, indices: list[int], path: Path, forks: dict[int, int] | None = None
) -> Path | None:
    """Per-trace curves along the tokens, two panels per trace: above, the success probabilities (MC
    mean with its Wilson band, learned P̂ and any other ``learned_*`` estimator, the base rate); below,
    the policy's soft values in logit units (MellowMax, log-sum-exp), never on the probability axis.
    `forks` maps a trace index to the token index of its forking token, drawn as a red band between
    the prefixes without and with it. Legends sit right of the panels, off the data."""
    if not indices:
        return None
    plt = _plt()
    soft = [n for n in ("mellowmax", "logsumexp") if n in result.curves[indices[0]]]
    rows = 2 if soft else 1
    fig, axes = plt.subplots(
        rows * len(indices),
        1,
        figsize=(10, (2.6 + 1.3 * (rows - 1)) * len(indices)),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1.5] * len(indices) if soft else None},
    )
    for j, i in enumerate(indices):
        ax = axes[rows * j, 0]
        t, mc, cur = result.traces[i], result.mc[i], result.curves[i]
        x = np.arange(t.length + 1)
        ax.fill_between(mc["position"], mc["ci_low"], mc["ci_high"], color="tab:green", alpha=0.2, label="MC 95% CI")
        ax.plot(mc["position"], mc["mean"], "o-", color="tab:green", ms=3, label="MC success")
        if "learned" in cur:
            ax.plot(x, cur["learned"], color="tab:blue", label="learned P̂")
        for name, style in zip(sorted(n for n in cur if n.startswith("learned_")), ("--", "-.", ":")):
            ax.plot(x, cur[name], style, color="tab:purple", label=name)
        if "constant" in cur:
            ax.plot(x, cur["constant"], ":", color="grey", label="base rate")
        panels = [ax]
        if soft:
            ax2 = axes[rows * j + 1, 0]
            for name, colour in zip(soft, ("tab:orange", "tab:brown")):
                style = "--" if name == "logsumexp" and "mellowmax" in soft else "-"
                ax2.plot(x, cur[name], style, color=colour, lw=1.2, label=name)
            ax2.set_ylabel("soft value\n(logit units)", fontsize=8)
            ax2.sharex(ax)
            panels.append(ax2)
        for a in panels:
            if forks and i in forks:
                a.axvspan(forks[i], forks[i] + 1, color="tab:red", alpha=0.25, label="forking token")
            for _, e in t.step_spans:
                a.axvline(e, color="k", alpha=0.08)
            a.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("P(success)")
        ax.set_title(f"trace {t.trace_id} (outcome {t.outcome:g})", fontsize=9)
        if soft:  # the soft-value panel below carries the position axis
            ax.tick_params(labelbottom=False)
    axes[-1, 0].set_xlabel("completion tokens in the prefix (position)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def flatten_metrics(prefix: str, d: Any, out: dict[str, float]) -> None:
    """Collect finite numbers of a nested metrics dict into `out` under slash-joined keys (notes and CIs skipped)."""
    if isinstance(d, dict):
        for k, v in d.items():
            if k in ("note", "ci", "raw") or k.endswith("_note"):
                continue
            flatten_metrics(f"{prefix}/{k}", v, out)
    elif isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(float(d)):
        out[prefix] = float(d)


# ------------------------------------------------------------------------------------- heatmap
def token_texts(ids: Sequence[int], tokenizer: Any) -> list[str]:
    """The text each token adds to the decoded completion (``"".join`` gives the decoded text).

    Decoded as growing prefixes, not token by token: a byte-level BPE token is shown as its text
    (never as ``Ġ`` or ``Ċ``), and the tokens of one multi-byte character give it, whole, to the token
    that completes it (the others give ""; token-by-token decoding would show ``�``). Without a
    tokenizer, ``[id]``."""
    if tokenizer is None:
        return [f"[{i}]" for i in ids]
    ids = [int(i) for i in ids]
    out: list[str] = []
    prev = ""
    decoded = tokenizer.batch_decode(
        [ids[: k + 1] for k in range(len(ids))], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    for k, text in enumerate(decoded):
        if text.endswith("\ufffd") and k + 1 < len(ids):  # a character cut between tokens: wait for its end
            out.append("")
            continue
        n = len(prev) if text.startswith(prev) else len(_common_prefix(prev, text))
        out.append(text[n:])
        prev = text
    return out


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def render_heatmap(
    result: EvalResult, indices: list[int], tokenizer: Any = None, forks: dict[int, int] | None = None
) -> str:
    """Self-contained HTML: per trace, one ``<span class="tok">`` per completion token.

    Token i is coloured by the MC success of the prefix ending with it (position i + 1); tokens at
    unlabelled positions are light grey. Under each token a strip (``<span class="lv">``) is coloured
    by the learned value at the same position, so the learned model's disagreement with MC shows at a
    glance. Hover text (``title``) gives position, MC k/n with its CI and every estimator's value there
    (value models as probabilities, soft values in logit units). `forks` maps a trace index to the
    token index of its forking token, outlined and named above the trace.
    """
    forks = forks or {}
    info = result.estimator_info
    names = list(result.curves[0]) if result.curves else []
    # value models first (learned, learned_*), then the other estimators in their own order
    names = sorted(names, key=lambda n: (not n.startswith("learned"), names.index(n)))
    strip = "learned" if "learned" in names else None
    legend = "".join(
        f"<span style='background:{value_colour(v)};color:{text_colour(v)}'>{v:.1f}</span>"
        for v in np.linspace(0, 1, 6)
    )
    parts = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'><title>prefixvalue token heatmap</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto;line-height:1.4}"
        ".trace{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}"
        ".prompt{color:#555;font-family:monospace;white-space:pre-wrap;margin-bottom:.4em}"
        ".cell{display:inline-block;vertical-align:top;margin:0 1px .5em 0;min-width:.5em}"
        ".tok{display:block;font-family:monospace;font-size:1.15em;white-space:pre;padding:2px 1px;"
        "border-radius:2px 2px 0 0}.tok:empty::before{content:'\\200b'}.lv{display:block;height:.6em;border-top:1px solid #fff;border-radius:0 0 2px 2px}"
        ".legend span{display:inline-block;width:3em;text-align:center;font-size:.8em}"
        ".meta{font-size:.85em;color:#444}.fork{outline:2px solid #d00;outline-offset:1px}</style></head><body>",
        "<h1>Token heatmap</h1>",
        "<p>Each token is coloured by the Monte Carlo success rate of the prefix that ends with that token "
        "(resampling continuations from there); grey tokens have no MC label. "
        + (
            "The strip under each token is coloured by the learned value P̂ at the same prefix, on the same "
            "scale: where the strip and the token differ, the value model disagrees with MC. "
            if strip
            else ""
        )
        + "Hover a token for its position, MC k/n and 95% CI, and every estimator's value there "
        "(probabilities; soft values in logit units). Colours: cividis, colour-blind safe.</p>",
        f"<p class='legend'>success probability: {legend} <span style='background:{NO_LABEL_COLOUR}'>none</span></p>",
    ]
    pos_col = result.prefixes["position"]
    for i in indices:
        t, cur = result.traces[i], result.curves[i]
        rows = {p: j for j, (tid, p) in enumerate(zip(result.prefixes["trace_id"], pos_col)) if tid == t.trace_id}
        texts = token_texts(t.completion_ids, tokenizer)
        head = f"trace {html.escape(t.trace_id)} · prompt {html.escape(t.prompt_id)} · outcome {t.outcome:g}"
        p0 = rows.get(0)
        if p0 is not None:
            head += (
                f" · bare prompt MC {_g(result.prefixes['successes'][p0])}/{result.prefixes['n'][p0]}"
                f" = {result.prefixes['mc_mean'][p0]:.2f}"
            )
        fork = forks.get(i)
        if fork is not None and fork < len(texts):
            head += f" · <b>forking token {html.escape(repr(texts[fork]))} at token {fork}</b> (outlined)"
        prompt_text = t.prompt or (tokenizer.decode(t.prompt_ids) if tokenizer is not None else "")
        parts.append(
            f"<div class='trace' data-trace-id='{html.escape(t.trace_id)}'>"
            f"<div class='meta'>{head}</div><div class='prompt'>{html.escape(prompt_text)}</div><div>"
        )
        for k, text in enumerate(texts):
            p = k + 1
            j = rows.get(p)
            tip = [f"position {p}"]
            if j is not None:
                mc = result.prefixes["mc_mean"][j]
                colour, fg = value_colour(mc), text_colour(mc)
                tip.append(
                    f"MC {_g(result.prefixes['successes'][j])}/{result.prefixes['n'][j]} = "
                    f"{mc:.3f} [{result.prefixes['ci_low'][j]:.2f}, {result.prefixes['ci_high'][j]:.2f}]"
                )
                mc_attr = f"{mc:.6g}"
            else:
                colour, fg, mc_attr = NO_LABEL_COLOUR, "#000", ""
                tip.append("MC: not labelled")
            for n in names:
                unit = "" if info.get(n, {}).get("probability", n.startswith("learned")) else " (logit units)"
                tip.append(f"{n} {float(cur[n][p]):.3f}{unit}")
            if text == "":
                tip.append("part of a character that the next token completes")
            shown = text.replace("\n", "↵")
            cls = "tok fork" if k == fork else "tok"
            strip_html = ""
            if strip:
                lv = float(cur[strip][p])
                strip_html = f"<span class='lv' style='background:{value_colour(lv)}' data-learned='{lv:.6g}'></span>"
            parts.append(
                f"<span class='cell' title='{html.escape('; '.join(tip), quote=True)}'>"
                f"<span class='{cls}' style='background:{colour};color:{fg}' data-position='{p}' data-mc='{mc_attr}'>"
                f"{html.escape(shown)}</span>{strip_html}</span>" + ("<br>" if "\n" in text else "")
            )
        parts.append("</div></div>")
    parts.append("</body></html>")
    return "".join(parts)


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


# ------------------------------------------------------------------------- quickstart section
def _fixed(v: Any, d: int = 3) -> str:
    """`v` with `d` decimals, or n/a."""
    return "n/a" if v is None else f"{v:.{d}f}"


def _corr_short(c: dict[str, Any]) -> str:
    """A correlation as value [CI to 2 decimals], or n/a."""
    if c.get("value") is None:
        return "n/a"
    ci = c.get("ci")
    return f"{c['value']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else f"{c['value']:.3f}"


def render_quickstart_section(q: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The quickstart's report section (markdown): the quality goal, the short-prefix study, the forking
    tokens, step verification, cost and timings, from metrics.json's ``quickstart`` section `q`."""
    v = q["quality"]
    lines = [
        "## Quickstart: the questions and the answers measured here",
        "",
        f"{q['train_prompts']} training prompts / {q['heldout_prompts']} held-out prompts "
        f"({q['collected_traces']} traces, policy accuracy {q['policy_accuracy']:.3f}); "
        f"{metrics['n_prefixes']} held-out prefixes of {metrics['n_traces']} traces labelled with "
        f"{metrics['mc']['samples_per_prefix']} MC samples each.",
        "",
        "### Quality goal",
        "",
        f"- goal: {v['goal']}",
        f"- learned Spearman {_fixed(v['learned_spearman'])} vs noise ceiling {_fixed(v['noise_ceiling'])}: "
        f"**{_fixed(v['fraction_of_ceiling'], 2)}** of the ceiling, 95% CI {_ci(v.get('fraction_of_ceiling_ci'))} "
        f"(ceiling held fixed); MellowMax {_fixed(v['mellowmax_spearman'])}",
        f"- learned − MellowMax (Spearman, paired bootstrap): {_fixed((v.get('paired_vs_mellowmax') or {}).get('value'))}"
        f", 95% CI {_ci((v.get('paired_vs_mellowmax') or {}).get('ci'))}",
        f"- met: **{v['met']}** (ceiling goal by its CI's lower bound: {v['reaches_ceiling_goal']}; beats MellowMax "
        f"by its CI's lower bound: {v['beats_mellowmax']})",
    ]
    if v.get("note"):
        lines.append(f"- {v['note']}")
    for key, val in v.items():
        if key.endswith("_fraction_of_ceiling") and key != "fraction_of_ceiling":
            lines.append(
                f"- {key.replace('_fraction_of_ceiling', '')}: {_fixed(val, 2)} of the ceiling "
                f"{_ci(v.get(key + '_ci'))}"
            )
    if "paired_vs_step_oracle" in v:
        po = v["paired_vs_step_oracle"]
        lines.append(
            f"- learned − step-label oracle (Spearman {_fixed(v.get('step_oracle_spearman'))}, paired bootstrap): "
            f"{_fixed(po.get('value'))}, 95% CI {_ci(po.get('ci'))}; beats it: {v['beats_step_oracle']}"
        )
    if v["limits"]:
        lines += ["- what limits it:", *[f"  - {x}" for x in v["limits"]]]
    lines += ["", *_recipes_lines(q, metrics)]
    if metrics["mc"].get("saturated"):
        lines.append(f"- **labels are saturated** ({SATURATION_DEFINITION}): {metrics['mc'].get('note', '')}")
    merged, labels = _rank_groups(metrics)  # estimators ranking alike on all prefixes share a column
    short_names = [n for n in q["short_estimators"] if n not in merged]
    lines += [
        "",
        "### Short-prefix study: soft values vs MC success",
        "",
        "| prefixes | n | label variance | noise ceiling | " + " | ".join(labels.get(n, n) for n in short_names) + " |",
        "|---|---|---|---|" + "---|" * len(short_names),
    ]
    for key, s in q["short"].items():
        cells = [_corr_short(s["estimators"][n]["spearman"]) if n in s["estimators"] else "n/a" for n in short_names]
        lines.append(
            f"| {key} (positions 0..{key.split(':')[1]}) | {s['n_prefixes']} | {_fixed(s['label_variance'], 4)} | "
            f"{_fixed(s['noise_ceiling_spearman'])} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"Spearman with bootstrap 95% CIs; one trace per held-out prompt, {q['short_samples']} MC samples per prefix.",
        "",
        "### Forking tokens: the largest MC value jumps",
        "",
        "The largest jump of a trace is selected on its labels, so it is biased upwards; each is re-tested "
        "on fresh MC samples of the two prefixes (two-sided Fisher exact test, Bonferroni over the "
        "forks shown).",
        "",
        "| trace | forking token | at token | selected MC before → after | fresh MC before → after | p | "
        "confirmed | learned before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in q["forks"]:
        conf = "n/a" if r.get("confirmed") is None else str(r["confirmed"])
        lines.append(
            f"| {r['trace_id']} | `{r['token']!r}` | {r['token_index']} | {r['mc_before']:.2f} → "
            f"{r['mc_after']:.2f} | {_fixed(r.get('fresh_before'), 2)} → {_fixed(r.get('fresh_after'), 2)} "
            f"| {_fixed(r.get('p_value'), 4)} | {conf} | {_fixed(r.get('learned_before'), 2)} → "
            f"{_fixed(r.get('learned_after'), 2)} |"
        )
    notes = sorted({r["confirmed_note"] for r in q["forks"] if r.get("confirmed_note")})
    lines += [
        "",
        *[f"- {n}" for n in notes],
        "" if notes else "",
        "They are drawn first in value_curves.png and heatmap.html (the forking token outlined).",
        "",
    ]
    sv = metrics.get("step_verification") or {}
    cost = metrics.get("cost") or {}
    lines += [
        "### Step verification and cost",
        "",
        f"- step verification F1 (learned prefix value after each step, threshold on a calibration split): "
        f"**{_fixed(sv.get('f1'))}**"
        + (f"; process-level {_fixed(sv['process_level'].get('f1'))}" if sv.get("process_level") else ""),
        f"- MC is **{_fixed(cost.get('ratio_mc_to_value'), 1)}x** the value model's tokens for the same prefixes "
        f"({_fixed(cost.get('mc_generated_tokens'), 0)} generated vs {_fixed(cost.get('value_forward_tokens'), 0)} "
        "forward tokens)",
        f"- wall clock: {q['seconds']['total']:.0f} s ("
        + ", ".join(f"{k} {s:.0f} s" for k, s in q["seconds"].items() if k != "total")
        + ")",
        "",
    ]
    return "\n".join(lines)


def _recipes_lines(q: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """The value models trained (their overrides of `train`), the seed spread of `learned`, and the
    error-detection diagnosis."""
    ests = metrics["estimators"]
    ceiling = metrics["mc"]["noise_ceiling"].get("spearman")
    lines = [
        "### Value models: recipes, seeds and the oracle",
        "",
        "| estimator | recipe (overrides of `train`) | Spearman [95% CI] | share of ceiling |",
        "|---|---|---|---|",
    ]
    recipes = q.get("recipes") or {}
    for i, (name, over) in enumerate(recipes.items()):
        key = "learned" if i == 0 else f"learned_{name}"
        sp = ests.get(key, {}).get("spearman", {})
        recipe = ", ".join(f"{k}={v}" for k, v in over.items()) or "train as configured"
        share = sp.get("value") / ceiling if (sp.get("value") is not None and ceiling) else None
        lines.append(f"| {key} ({name}) | {recipe} | {_corr_short(sp)} | {_fixed(share, 3)} |")
    if "step_oracle" in ests:
        sp = ests["step_oracle"]["spearman"]
        share = sp.get("value") / ceiling if (sp.get("value") is not None and ceiling) else None
        lines.append(
            f"| step_oracle | exact facts: wrong step written × steps left | {_corr_short(sp)} | {_fixed(share, 3)} |"
        )
    seeds = q.get("seeds") or {}
    if seeds:
        per = ", ".join(f"{_fixed(v)}" for v in seeds["spearman_per_seed"].values())
        lines += [
            "",
            f"- `learned` over {seeds['seeds']} training seeds: Spearman {per}; mean {_fixed(seeds['spearman_mean'])}"
            + (
                f", sd {_fixed(seeds['spearman_sd'])}, 95% t-interval {_ci(seeds['spearman_ci'])} "
                f"(share of ceiling {_fixed(seeds.get('share_mean'), 3)} {_ci(seeds.get('share_ci'))})"
                if "spearman_sd" in seeds
                else ""
            ),
        ]
    d = q.get("diagnosis")
    if d:
        lines += [
            f"- error detection ({d['estimator']}): {d['error_written_share']:.0%} of held-out prefixes follow a wrong "
            f"step; AUROC of the values for it {_fixed(d['auroc_error_written'])}; Spearman within error-free prefixes "
            f"{_fixed(d['spearman_no_error'])}, within the others {_fixed(d['spearman_error'])}; with an exact error "
            f"flag above the same values {_fixed(d['spearman_with_exact_error_flag'])} (the flag alone: "
            f"{_fixed(d['mc_spearman_with_error_flag'])})",
        ]
    return lines + [""]


def render_frontier_section(table: str | Path | None, out: str | Path) -> str:
    """The value-learning frontier of `make frontier` (its frontier.md, frontier.png beside it copied into
    `out`, and the IPVRM diagnosis ipvrm.md when present), or "" when there is no table."""
    if not table or not Path(table).exists():
        return ""
    src = Path(table)
    lines = ["## The value-learning frontier (`make frontier`)", "", src.read_text().strip(), ""]
    png = src.with_suffix(".png")
    if png.exists():
        shutil.copyfile(png, Path(out) / "frontier.png")
        lines += ["![frontier](frontier.png)", ""]
    ipvrm = src.with_name("ipvrm.md")  # benchmarks/ipvrm_diagnosis.py, run by make frontier after the sweep
    if ipvrm.exists():
        lines += ["### What limits the IPVRM", "", ipvrm.read_text().strip(), ""]
    return "\n".join(lines)


def summary_table(q: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The plain-text summary the quickstart prints at the end of its run."""
    ceiling = metrics["mc"]["noise_ceiling"].get("spearman")
    lines = [
        f"held-out prefixes: {metrics['n_prefixes']} ({metrics['n_traces']} traces), "
        f"MC label variance {_fixed(metrics['mc'].get('label_variance'))}, noise ceiling {_fixed(ceiling)}",
        f"{'estimator':<22}{'Spearman [95% CI]':<26}{'Pearson':>9}{'Brier':>8}{'ECE':>8}",
    ]
    for name, m in metrics["estimators"].items():
        if name.startswith("mellowmax_") or name.startswith("logsumexp_"):
            continue
        lines.append(
            f"{name:<22}{_corr_short(m['spearman']):<26}{_fixed(m['pearson'].get('value')):>9}"
            f"{_fixed(m.get('brier')):>8}{_fixed(m.get('ece')):>8}"
        )
    v = q["quality"]
    sv = metrics.get("step_verification") or {}
    pv = v.get("paired_vs_mellowmax") or {}
    lines += [
        f"goal (>= {CEILING_GOAL:.0%} of ceiling and > MellowMax, by CI lower bounds): met={v['met']} "
        f"(learned at {_fixed(v['fraction_of_ceiling'], 2)} of ceiling, CI {_ci(v.get('fraction_of_ceiling_ci'))}; "
        f"learned - MellowMax {_fixed(pv.get('value'))} CI {_ci(pv.get('ci'))})",
        f"step verification F1: {_fixed(sv.get('f1'))}   MC / value-model cost: "
        f"{_fixed((metrics.get('cost') or {}).get('ratio_mc_to_value'), 1)}x",
        "short prefixes (Spearman with MC): "
        + "; ".join(
            f"{k} mellowmax {_corr_short(s['estimators'].get('mellowmax', {}).get('spearman', {}))}"
            for k, s in q["short"].items()
        ),
        "forks: "
        + "; ".join(
            f"{r['trace_id']} {r['token']!r}@{r['token_index']} "
            f"{r['mc_before']:.2f}->{r['mc_after']:.2f} confirmed={r.get('confirmed')}"
            for r in q["forks"]
        ),
        f"total {q['seconds']['total']:.0f} s",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- write
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
    (out / "heatmap.html").write_text(page, encoding="utf-8")
    paths["heatmap"] = out / "heatmap.html"

    # the prompt and prefix text beside the ids, so each row (here and in wandb's table) can be read
    prompts, prefixes = prefix_texts(result, tokenizer)
    columns = dict(result.prefixes)
    head = list(columns)[: list(columns).index("position") + 1] if "position" in columns else []
    columns = {**{k: columns[k] for k in head}, "prompt": prompts, "prefix": prefixes, **columns}
    table = pa.table(columns)
    pq.write_table(table, out / "predictions.parquet")
    paths["predictions"] = out / "predictions.parquet"

    metrics = result.metrics
    metrics["rank_equivalent"] = rank_equivalent_groups(result)
    metrics["files"] = {k: p.name for k, p in paths.items()} | {
        "report": "report.md",
        "report_html": "report.html",
        "metrics": "metrics.json",
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    paths["metrics"] = out / "metrics.json"
    markdown = render_markdown(metrics, plots, sections)
    (out / "report.md").write_text(markdown)
    paths["report"] = out / "report.md"
    (out / "report.html").write_text(render_html(markdown), encoding="utf-8")
    paths["report_html"] = out / "report.html"

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
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    lines = ["# prefixvalue step benchmark", "", f"checkpoint: `{metrics.get('checkpoint')}`", ""]
    lines += _step_benchmark_lines(metrics["step_benchmark"])
    (out / "report.md").write_text("\n".join(lines))
    (out / "report.html").write_text(render_html("\n".join(lines), "prefixvalue step benchmark"), encoding="utf-8")
    if logger is not None:
        flat: dict[str, float] = {}
        flatten_metrics("eval/step_benchmark", metrics["step_benchmark"], flat)
        logger.log(flat, step=0)
    return {"metrics": out / "metrics.json", "report": out / "report.md"}
