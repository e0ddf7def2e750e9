"""The quickstart's report sections: its questions and the answers measured (quality goal, value-model
recipes and seeds, the short-prefix study, forking tokens, step verification, cost, timings), the
value-learning frontier of ``make frontier``, and the plain-text summary it prints.

Missing numbers read ``n/a`` here (`prefixvalue.formatting.fixed`); correlations show their CI to two
decimals.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ...formatting import correlation_cell, fixed, interval
from ..analysis import CEILING_GOAL, SATURATION_DEFINITION
from .prefix_metrics import shared_rows


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
        f"- learned Spearman {fixed(v['learned_spearman'])} vs noise ceiling {fixed(v['noise_ceiling'])}: "
        f"**{fixed(v['fraction_of_ceiling'], 2)}** of the ceiling, 95% CI {interval(v.get('fraction_of_ceiling_ci'))} "
        f"(ceiling held fixed); MellowMax {fixed(v['mellowmax_spearman'])}",
        f"- learned − MellowMax (Spearman, paired bootstrap): {fixed((v.get('paired_vs_mellowmax') or {}).get('value'))}"
        f", 95% CI {interval((v.get('paired_vs_mellowmax') or {}).get('ci'))}",
        f"- met: **{v['met']}** (ceiling goal by its CI's lower bound: {v['reaches_ceiling_goal']}; beats MellowMax "
        f"by its CI's lower bound: {v['beats_mellowmax']})",
    ]
    if v.get("note"):
        lines.append(f"- {v['note']}")
    for key, val in v.items():
        if key.endswith("_fraction_of_ceiling") and key != "fraction_of_ceiling":
            lines.append(
                f"- {key.replace('_fraction_of_ceiling', '')}: {fixed(val, 2)} of the ceiling "
                f"{interval(v.get(key + '_ci'))}"
            )
    for ref, what in (("step_oracle", "step-label oracle"), ("operator_oracle", "operator oracle")):
        if f"paired_vs_{ref}" in v:
            po = v[f"paired_vs_{ref}"]
            lines.append(
                f"- learned − {what} (Spearman {fixed(v.get(f'{ref}_spearman'))}, paired bootstrap): "
                f"{fixed(po.get('value'))}, 95% CI {interval(po.get('ci'))}; beats it: {v[f'beats_{ref}']}"
            )
    if v["limits"]:
        lines += ["- what limits it:", *[f"  - {x}" for x in v["limits"]]]
    lines += ["", *_recipes_lines(q, metrics), "", *selection_lines(metrics.get("selection") or [])]
    if metrics["mc"].get("saturated"):
        lines.append(f"- **labels are saturated** ({SATURATION_DEFINITION}): {metrics['mc'].get('note', '')}")
    merged, labels = shared_rows(metrics)  # estimators ranking alike on all prefixes share a column
    short_names = [n for n in q["short_estimators"] if n not in merged]
    lines += [
        "",
        "### Short-prefix study: soft values vs MC success",
        "",
        "| prefixes | n | label variance | noise ceiling | " + " | ".join(labels.get(n, n) for n in short_names) + " |",
        "|---|---|---|---|" + "---|" * len(short_names),
    ]
    for key, s in q["short"].items():
        cells = [
            correlation_cell(s["estimators"][n]["spearman"], 2) if n in s["estimators"] else "n/a" for n in short_names
        ]
        lines.append(
            f"| {key} (positions 0..{key.split(':')[1]}) | {s['n_prefixes']} | {fixed(s['label_variance'], 4)} | "
            f"{fixed(s['noise_ceiling_spearman'])} | " + " | ".join(cells) + " |"
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
            f"{r['mc_after']:.2f} | {fixed(r.get('fresh_before'), 2)} → {fixed(r.get('fresh_after'), 2)} "
            f"| {fixed(r.get('p_value'), 4)} | {conf} | {fixed(r.get('learned_before'), 2)} → "
            f"{fixed(r.get('learned_after'), 2)} |"
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
        f"**{fixed(sv.get('f1'))}**"
        + (f"; process-level {fixed(sv['process_level'].get('f1'))}" if sv.get("process_level") else "")
        + ("; on MC-derived step labels (the task gives none)" if sv.get("label_source", "exact") != "exact" else ""),
        f"- MC is **{fixed(cost.get('ratio_mc_to_value'), 1)}x** the value model's tokens for the same prefixes "
        f"({fixed(cost.get('mc_generated_tokens'), 0)} generated vs {fixed(cost.get('value_forward_tokens'), 0)} "
        f"forward tokens, {cost.get('value_forward_passes', 1)} pass(es) per trace); in compute (each pass's tokens "
        f"weighed by its parameters against the policy's) **{fixed(cost.get('ratio_mc_to_value_compute'), 1)}x**",
        f"- wall clock: {q['seconds']['total']:.0f} s ("
        + ", ".join(f"{k} {s:.0f} s" for k, s in q["seconds"].items() if k != "total")
        + ")",
        "",
    ]
    return "\n".join(lines)


def selection_lines(selection: list[dict[str, Any]]) -> list[str]:
    """The report's "What was chosen where" table from metrics.json's ``selection`` section: each choice, the
    split it was made on, among how many candidates, by which metric."""
    if not selection:
        return []
    lines = [
        "### What was chosen where",
        "",
        "Every choice a reported figure rests on is made on the validation split (prompts neither trained on nor "
        "reported); the test labels are read once, for the figures above. The forking tokens are the one selection "
        "made on test labels, which is why only their re-test on fresh samples is reported as a finding.",
        "",
        "| choice | chosen | on | among | by |",
        "|---|---|---|---|---|",
    ]
    for c in selection:
        chosen = c.get("chosen")
        chosen = fixed(chosen) if isinstance(chosen, float) else ("n/a" if chosen is None else str(chosen))
        among = c.get("n_candidates")
        among = f"{among} candidates" if among else (f"{c['n_traces']} traces" if c.get("n_traces") else "n/a")
        lines.append(f"| {c.get('what')} | {chosen} | {c.get('split')} | {among} | {c.get('metric')} |")
    notes = [f"- {c['what']}: {c['note']}" for c in selection if c.get("note")]
    return [*lines, *([""] + notes if notes else [])]


def _recipes_lines(q: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """The value models trained (their overrides of `train`), the seed spread of `learned`, and the
    error-detection diagnosis."""
    ests = metrics["estimators"]
    ceiling = metrics["mc"]["noise_ceiling"].get("spearman")
    lines = [
        "### Value models: recipes, seeds and the oracle",
        "",
        "`learned` is the recipe with the best validation Spearman (chosen before the test labels are read); the "
        "test figures are of that choice.",
        "",
        "| estimator | recipe (overrides of `train`) | validation Spearman | test Spearman [95% CI] | share of ceiling |",
        "|---|---|---|---|---|",
    ]
    recipes = q.get("value_models") or {}
    chose = next((c for c in metrics.get("selection") or [] if str(c.get("what", "")).startswith("learned")), {})
    for i, (name, over) in enumerate(recipes.items()):
        key = "learned" if i == 0 else f"learned_{name}"
        sp = ests.get(key, {}).get("spearman", {})
        recipe = ", ".join(f"{k}={v}" for k, v in over.items()) or "train as configured"
        share = sp.get("value") / ceiling if (sp.get("value") is not None and ceiling) else None
        val = fixed((chose.get("candidates") or {}).get(name))
        lines.append(f"| {key} ({name}) | {recipe} | {val} | {correlation_cell(sp, 2)} | {fixed(share, 3)} |")
    for ref in ("step_oracle", "operator_oracle"):
        if ref in ests:
            sp = ests[ref]["spearman"]
            share = sp.get("value") / ceiling if (sp.get("value") is not None and ceiling) else None
            what = ests[ref].get("description") or ref
            lines.append(f"| {ref} | {what} | n/a | {correlation_cell(sp, 2)} | {fixed(share, 3)} |")
    seeds = q.get("seeds") or {}
    if seeds:
        per = ", ".join(f"{fixed(v)}" for v in seeds["spearman_per_seed"].values())
        lines += [
            "",
            f"- `learned` over {seeds['seeds']} training seeds: Spearman {per}; mean {fixed(seeds['spearman_mean'])}"
            + (
                f", sd {fixed(seeds['spearman_sd'])}, 95% t-interval {interval(seeds['spearman_ci'])} "
                f"(share of ceiling {fixed(seeds.get('share_mean'), 3)} {interval(seeds.get('share_ci'))})"
                if "spearman_sd" in seeds
                else ""
            ),
        ]
        ens = ests.get("learned_seed_ensemble", {}).get("spearman", {})
        if ens.get("value") is not None:
            paired = ens.get("paired_vs_step_oracle") or {}
            share = ens["value"] / ceiling if ceiling else None
            lines.append(
                f"- those seeds as one value model (`learned_seed_ensemble`, the mean of their logits; docs/design.md, "
                f'"Value ensembles"): Spearman {correlation_cell(ens, 2)}, share of ceiling {fixed(share, 3)}'
                + (
                    f"; minus the step-label oracle, paired over prompts, {fixed(paired.get('value'))} "
                    f"{interval(paired.get('ci'))}"
                    if paired.get("value") is not None
                    else ""
                )
            )
    if q.get("diagnosis"):
        lines.append('- error detection: the report\'s "Error detection" section')
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
        f"MC label variance {fixed(metrics['mc'].get('label_variance'))}, noise ceiling {fixed(ceiling)}",
        f"{'estimator':<22}{'Spearman [95% CI]':<26}{'Pearson':>9}{'Brier':>8}{'ECE':>8}",
    ]
    for name, m in metrics["estimators"].items():
        if name.startswith("mellowmax_") or name.startswith("logsumexp_"):
            continue
        lines.append(
            f"{name:<22}{correlation_cell(m['spearman'], 2):<26}{fixed(m['pearson'].get('value')):>9}"
            f"{fixed(m.get('brier')):>8}{fixed(m.get('ece')):>8}"
        )
    v = q["quality"]
    sv = metrics.get("step_verification") or {}
    pv = v.get("paired_vs_mellowmax") or {}
    lines += [
        f"goal (>= {CEILING_GOAL:.0%} of ceiling and > MellowMax, by CI lower bounds): met={v['met']} "
        f"(learned at {fixed(v['fraction_of_ceiling'], 2)} of ceiling, CI {interval(v.get('fraction_of_ceiling_ci'))}; "
        f"learned - MellowMax {fixed(pv.get('value'))} CI {interval(pv.get('ci'))})",
        f"step verification F1: {fixed(sv.get('f1'))}   MC / value-model cost: "
        f"{fixed((metrics.get('cost') or {}).get('ratio_mc_to_value'), 1)}x",
        "short prefixes (Spearman with MC): "
        + "; ".join(
            f"{k} mellowmax {correlation_cell(s['estimators'].get('mellowmax', {}).get('spearman', {}), 2)}"
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


__all__ = ["render_frontier_section", "render_quickstart_section", "summary_table"]
