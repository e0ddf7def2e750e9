"""Scores of a DistRL comparison (docs/design.md, "DistRL"): arms × seeds of `prefixvalue distrl` (and TRL's
anchor) read from their run folders, compared at the end of one sampled-token budget.

Per arm: held-out accuracy at the end (mean over seeds, its seed t-interval, and the Wilson CI of all draws pooled),
KL from the start policy, optimiser steps, sampled tokens and training seconds. Paired differences against the
baseline arm at equal tokens: per seed the difference of the two final accuracies on the same prompts with the same
sampling keys, with a t-interval over seeds (the primary CI: it carries the training runs' variance) and a
bootstrap over prompts of the seed-averaged per-prompt differences (evaluation noise only). The anchor check is a
paired seed difference with an equivalence margin (TOST).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.distance import paired_seed_difference, t_interval
from ..evaluation.report import _plt, save_figure
from ..formatting import fixed
from ..stats import cluster_bootstrap, wilson_interval


def read_run(folder: Path) -> dict[str, Any] | None:
    """distrl.json and the evaluations (with per-prompt scores) of one finished run, or None."""
    path = folder / "distrl.json"
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    res["evals"] = [json.loads(x) for x in (folder / "evals.jsonl").read_text().splitlines() if x.strip()]
    return res


def read_arms(root: Path, arms: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[int, dict[str, Any]]]:
    """``{arm: {seed: run}}`` for the runs under ``root/<arm>/seed<s>`` that finished (arm names may hold '/')."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for arm in arms:
        for s in seeds:
            res = read_run(root / arm / f"seed{s}")
            if res is not None:
                out.setdefault(arm, {})[s] = res
    return out


def arm_summary(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Final accuracy (seed mean, t-interval, pooled Wilson), KL, steps, tokens and seconds of one arm."""
    finals = [runs[s]["evals"][-1] for s in sorted(runs)]
    acc = [f["accuracy"] for f in finals]
    draws = sum(f["n"] for f in finals)
    lo, hi = wilson_interval(sum(f["accuracy"] * f["n"] for f in finals), draws)
    start = [runs[s]["evals"][0]["accuracy"] for s in sorted(runs)]
    return {
        "seeds": sorted(runs),
        "accuracy": float(np.mean(acc)),
        "accuracy_per_seed": acc,
        "seed_ci": t_interval(acc)["ci"],
        "wilson": [lo, hi],
        "draws": draws,
        "start_accuracy": float(np.mean(start)),
        "kl_token": float(np.mean([f["kl_token"] for f in finals])),
        "kl_sequence": float(np.mean([f["kl_sequence"] for f in finals])),
        "steps": float(np.mean([runs[s]["steps"] for s in runs])),
        "sampled_tokens": float(np.mean([runs[s]["sampled_tokens"] for s in runs])),
        "budget_tokens": float(np.mean([runs[s]["budget_tokens"] for s in runs])),
        "train_seconds": float(np.mean([runs[s]["train_seconds"] for s in runs])),
        # the evaluations' own time, from each run's evaluation lines (kept across resumes)
        "eval_seconds": float(np.mean([sum(e.get("eval_seconds", 0.0) for e in runs[s]["evals"]) for s in runs])),
    }


def paired(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], margin: float = 0.03) -> dict[str, Any]:
    """a − b at the end of their runs: the seed-paired t-interval (and TOST within ±`margin`), and a bootstrap over
    prompts of the per-prompt differences averaged over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    out = paired_seed_difference(
        [a[s]["evals"][-1]["accuracy"] for s in seeds], [b[s]["evals"][-1]["accuracy"] for s in seeds], margin
    )
    prompts = sorted(set.intersection(*[set(a[s]["evals"][-1]["per_prompt"]) for s in seeds]))
    diff = np.array(
        [
            np.mean([a[s]["evals"][-1]["per_prompt"][p] - b[s]["evals"][-1]["per_prompt"][p] for s in seeds])
            for p in prompts
        ]
    )
    ci, note = cluster_bootstrap(lambda idx: float(diff[idx].mean()), prompts, n_boot=2000, seed=0, unit="prompt")
    out.update(seeds=seeds, prompts=len(prompts), prompt_bootstrap_ci=ci, prompt_bootstrap_note=note)
    return out


def curves(runs: dict[int, dict[str, Any]]) -> list[dict[str, float]]:
    """The seed-mean curve: per evaluation index (the same steps in every seed), mean tokens, step, accuracy, KL."""
    n = min(len(r["evals"]) for r in runs.values())
    out = []
    for i in range(n):
        rows = [runs[s]["evals"][i] for s in sorted(runs)]
        out.append(
            {
                "step": float(np.mean([r["step"] for r in rows])),
                "budget_tokens": float(np.mean([r["budget_tokens"] for r in rows])),
                "accuracy": float(np.mean([r["accuracy"] for r in rows])),
                "kl_token": float(np.mean([r["kl_token"] for r in rows])),
            }
        )
    return out


def plot(curve_sets: dict[str, list[dict[str, float]]], path: Path, x: str = "budget_tokens") -> Path | None:
    """Held-out accuracy against `x` (sampled tokens or steps), one line per arm; None without matplotlib."""
    plt = _plt()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.get_cmap("tab20").colors
    for i, (arm, pts) in enumerate(curve_sets.items()):
        style = {"color": colours[(2 * i) % 20 + (i // 10)], "linestyle": ("-", "--", ":")[i % 3]}
        ax.plot([p[x] for p in pts], [p["accuracy"] for p in pts], marker=".", label=arm, **style)
    ax.set_xlabel("sampled tokens (policy + Monte Carlo continuations)" if x == "budget_tokens" else "optimiser steps")
    ax.set_ylabel("held-out accuracy (mean of 3 seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def diff_interval(ci: Sequence[float] | None) -> str:
    """A difference's interval, signed."""
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "n/a"


def accuracy_interval(ci: Sequence[float] | None) -> str:
    """An accuracy's interval."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "n/a"


def report(summary: dict[str, Any]) -> str:
    """report.md of a comparison (`summary` from the benchmark: arms, paired differences, anchor, goals)."""
    lines = [
        "# DistRL: values that improve the policy",
        "",
        f"Policy `{summary['policy']}`, {summary['train_prompts']} training prompts, held-out accuracy on "
        f"{summary['eval_prompts']} test prompts × {summary['eval_samples']} samples (the same sampling keys for "
        f"every arm), {len(summary['seeds'])} seeds, budget {summary['budget']:,} sampled tokens (Monte Carlo "
        f"continuations included). Learning rate {summary['learning_rate']:g}, chosen on validation "
        f"({summary['lr_choice']}). Seconds per run (mean over seeds; one CPU thread, two runs at a time on "
        f"{summary['machine']}): training (sampling, values, updates) and the held-out evaluations apart.",
        "",
        "| arm | accuracy | seed 95% CI | Wilson (pooled) | KL/token | steps | sampled tokens | train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, s in summary["arms"].items():
        lines.append(
            f"| {arm} | {fixed(s['accuracy'])} | {accuracy_interval(s['seed_ci'])} | {accuracy_interval(s['wilson'])} "
            f"| {s['kl_token']:.4f} | {s['steps']:.0f} | {s['budget_tokens']:,.0f} | {s['train_seconds']:.0f} "
            f"| {s['eval_seconds']:.0f} |"
        )
    lines += [
        "",
        f"Start policy: {fixed(summary['start_accuracy'])}.",
        "",
        f"## Paired differences against `{summary['baseline']}` at the end of the budget",
        "",
        "| arm − baseline | mean | seed t-interval | prompt bootstrap | per seed |",
        "|---|---|---|---|---|",
    ]
    for arm, d in summary["paired"].items():
        per = ", ".join(f"{x:+.3f}" for x in d["per_seed"])
        lines.append(
            f"| {arm} | {d['mean']:+.3f} | {diff_interval(d['ci'])} | {diff_interval(d['prompt_bootstrap_ci'])} | {per} |"
        )
    a = summary["anchor"]
    if a:
        lines += [
            "",
            "## Our GRPO against TRL's GRPOTrainer",
            "",
            f"ours − TRL: {a['mean']:+.3f}, seed t-interval {diff_interval(a['ci'])}, 90% interval {diff_interval(a['tost_ci'])} "
            f"against the margin ±{a['margin']} ({a['verdict']}).",
        ]
    u = summary.get("anchor_unpatched")
    if u:
        lines += [
            "",
            f"TRL as it is (`trl-grpo-unpatched`: its log-prob forward passes no position ids, so the shipped GPT-2's "
            f"learned positions shift by each row's left padding): ours − TRL {u['mean']:+.3f}, seed t-interval "
            f"{diff_interval(u['ci'])} ({u['verdict']}).",
        ]
    lines += ["", "## Goals", ""] + [f"- {g}" for g in summary["goals"]]
    lines += ["", "![accuracy against sampled tokens](accuracy_vs_tokens.png)", ""]
    lines += ["![accuracy against steps](accuracy_vs_steps.png)", ""]
    return "\n".join(lines)
