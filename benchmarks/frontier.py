"""The value-learning frontier: held-out value quality against sampled tokens, one line per training recipe.

    python benchmarks/frontier.py runs/quickstart traces=runs/frontier/traces     # what `make frontier` runs
    python benchmarks/frontier.py runs/quickstart seeds=3 steps=500 budgets=400,1600,6400 workers=2 recipes=implicit,head-full
    python benchmarks/frontier.py runs/quickstart traces=runs/frontier/traces train=false    # the table of the runs so far

For each budget (the number of training prompts whose collected traces a recipe may use; 0 = all) and
each recipe, trains `seeds` value models with `prefixvalue train` on the traces of `traces=` (default
RUN/traces; `make frontier` collects 8000 prompts like the quickstart's 2000, so budgets can pass the
quickstart's) and scores them on the quickstart's held-out MC labels (Spearman with MC, as a share of the noise ceiling in
RUN/metrics.json). The budget is counted in *sampled tokens*: the completion tokens of the traces a recipe
trains on, plus, for the MC-supervised recipe, the tokens its labelling generated. The MC recipe spends
half its budget on traces (half the prompts) and labels one trace per prompt with what is left.

Every figure is the mean over seeds with a 95% t-interval across seeds and the spread (sd); the held-out
prompts are those of the quickstart's split (train holds them out the same way, and `label` labelled
only them). Writes benchmarks/frontier/frontier.{json,md,png} and ``value_frontier`` in results.json.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from common import RESULTS, record

OUT = Path(__file__).resolve().parent / "frontier"

#: name → (description, overrides of `prefixvalue train`, uses MC labels); every run adds the shared
#: settings of `_score` (LoRA on all linear layers, margin 0, batch 32, `steps` steps)
RECIPES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "implicit": (
        "IPVRM as in the paper (LoRA r8, β 10, length-normalised v̄ = V/p), outcomes",
        {"value_model.kind": "implicit", "lr": 1e-2},
        False,
    ),
    "implicit-sum": (
        "IPVRM variant without length normalisation (readout=sum), outcomes",
        {"value_model.kind": "implicit", "value_model.readout": "sum", "lr": 3e-3},
        False,
    ),
    "head-full": (
        "head on the fully trained policy, outcomes",
        {"value_model.kind": "head", "value_model.backbone": "full", "lr": 1e-3},
        False,
    ),
    "head-full-siblings": (
        "head on the fully trained policy, sibling labels (trie over each prompt's traces)",
        {"value_model.kind": "head", "value_model.backbone": "full", "lr": 1e-3, "signal": "siblings"},
        False,
    ),
    "head-full-td": (
        "head on the fully trained policy, TD(λ = 0.8) targets",
        {"value_model.kind": "head", "value_model.backbone": "full", "lr": 1e-3, "signal": "td", "td_lambda": 0.8},
        False,
    ),
    "head-full-mc": (
        "head on the fully trained policy, MC labels (8 samples, every position; half the budget) + outcomes",
        {"value_model.kind": "head", "value_model.backbone": "full", "lr": 1e-3},
        True,
    ),
    "head-lora-pf": (
        "head on a LoRA-adapted policy (r8) + the policy's log-prob features, outcomes",
        {"value_model.kind": "head", "value_model.policy_features": "true", "lr": 3e-3},
        False,
    ),
    "head-lora-pf-siblings": (
        "head on a LoRA-adapted policy (r8) + the policy's log-prob features, sibling labels",
        {"value_model.kind": "head", "value_model.policy_features": "true", "lr": 3e-3, "signal": "siblings"},
        False,
    ),
}


def _args(argv: list[str]) -> dict[str, str]:
    opts = {
        "seeds": "3",
        "steps": "500",
        "budgets": "400,1600,6400",
        "workers": "2",
        "recipes": ",".join(RECIPES),
        "traces": "",
        "train": "true",
    }
    for a in argv:
        k, _, v = a.partition("=")
        if k not in opts:
            raise SystemExit(f"frontier: unknown option {k!r}; options: {', '.join(opts)}")
        opts[k] = v
    return opts


def _subset(source: Path, n_prompts: int, work: Path) -> tuple[Path, int, list[str]]:
    """Traces of the first `n_prompts` training prompts of `source` (0: all); returns folder, sampled tokens,
    prompts. Held-out prompts (the quickstart's split: 20%, seed 0) are never chosen."""
    from prefixvalue.data import load_traces, save_subset
    from prefixvalue.data.split import heldout_flags, normalise_prompt

    traces = load_traces(source)
    flags = heldout_flags(traces, 0.2, 0)
    chosen: list[int] = []
    prompts: list[str] = []
    seen: set[str] = set()
    for i, (text, held) in enumerate(zip(traces["prompt"], flags)):
        if held:
            continue
        key = normalise_prompt(text)
        if key not in seen:
            if n_prompts and len(prompts) >= n_prompts:
                continue
            seen.add(key)
            prompts.append(key)
        chosen.append(i)
    folder = save_subset(traces, chosen, work / f"traces_{n_prompts or 'all'}")
    tokens = int(sum(len(c) for c in traces.select(chosen)["completion_ids"]))
    return folder, tokens, prompts


def _label_budget(run: Path, traces_dir: Path, token_budget: int, work: Path) -> tuple[Path, int]:
    """MC labels (8 samples, every position) on one trace per training prompt, as many traces as
    `token_budget` generated tokens allow (estimated from the mean completion length: 8 continuations of
    about half a completion at each position); returns the labels folder and the tokens it generated."""
    from prefixvalue.data import load_traces
    from prefixvalue.stages import label

    lengths = [len(c) for c in load_traces(traces_dir)["completion_ids"]]
    mean_len = float(np.mean(lengths))
    n = max(1, int(token_budget / (8 * (mean_len + 1) * (mean_len / 2 + 1))))
    out = work / f"labels_{traces_dir.name}_{n}"
    label.run(
        label.LabelConfig(
            traces=str(traces_dir),
            model=run_policy(run),
            out=str(out),
            positions="all",
            samples=8,
            prompts="train",
            traces_per_prompt=1,
            max_traces=n,
            seed=11,
            progress=False,
        )
    )
    cost = json.loads((out / "cost.json").read_text())
    return out, int(cost["generated_tokens"])


def _oracle_spearman(run: Path, source: Path) -> float | None:
    """Spearman with MC of the step-label oracle fit on every training prompt of `source` (None when
    the traces carry no exact step labels)."""
    from prefixvalue.data import load_traces, split_by_prompt
    from prefixvalue.evaluation.estimators import TraceRecord
    from prefixvalue.evaluation.oracle import StepOracle, has_step_labels

    traces = load_traces(source)
    if not has_step_labels(traces):
        return None
    train_side, _ = split_by_prompt(traces, 0.2, 0)
    oracle = StepOracle.fit(train_side.select_columns(["completion_ids", "outcome", "step_spans", "step_labels"]))
    held = {r["trace_id"]: oracle.predict(TraceRecord.from_row(r)) for r in load_traces(run / "heldout_traces")}
    return heldout_spearman(run, held)


def run_policy(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["policy"]


def train_job(job: dict[str, Any], reuse: bool = False) -> tuple[str, float | None]:
    """Train one job's value model (one process, one thread) with the settings every sweep shares; returns
    its checkpoint and training seconds. With `reuse`, a run whose checkpoint is complete is not retrained
    (seconds None)."""
    import torch

    from prefixvalue import training as train
    from prefixvalue.config import parse_config

    torch.set_num_threads(1)
    final = Path(job["out"]) / "final"
    if reuse and (final / "split.json").exists():
        return str(final), None
    args = {
        "traces": job["traces"],
        "policy": run_policy(Path(job["run"])),
        "output_dir": job["out"],
        "max_steps": job["steps"],
        "per_device_batch_size": 32,
        "warmup_steps": 10,
        "eval_every": 10**9,
        "checkpoint_every": 0,
        "report_to": "none",
        "seed": job["seed"],
        "value_model.margin": 0.0,
        "value_model.lora_target_modules": "[all-linear]",
        **job["overrides"],
    }
    if job.get("labels"):
        args["labels"] = job["labels"]
    t0 = time.perf_counter()
    result = train.run(parse_config(train.TrainConfig, [f"{k}={v}" for k, v in args.items()]))
    return result["checkpoint"], round(time.perf_counter() - t0, 1)


def heldout_spearman(run: Path, curves: dict[str, Any]) -> float:
    """Spearman with MC of value curves (trace id → values at positions 0..T) on RUN's held-out labels."""
    from scipy.stats import spearmanr

    from prefixvalue.data import load_labels

    labels = load_labels(run / "labels")
    x = [curves[t][p] for t, p in zip(labels["trace_id"], labels["position"])]
    return float(spearmanr(x, labels["mean"]).statistic)


def heldout_curves(run: Path, checkpoint: str) -> dict[str, Any]:
    """A checkpoint's value curves on RUN's held-out traces, by trace id."""
    from prefixvalue.data import load_traces
    from prefixvalue.value import load_value_model

    held = load_traces(run / "heldout_traces")
    preds = load_value_model(checkpoint).predict(held["prompt_ids"], held["completion_ids"], 64)
    return dict(zip(held["trace_id"], preds))


def _score(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (recipe, budget, seed) and score it on the held-out MC labels."""
    checkpoint, seconds = train_job(job)
    rho = heldout_spearman(Path(job["run"]), heldout_curves(Path(job["run"]), checkpoint))
    keep = ("recipe", "budget", "seed", "tokens", "steps")
    return {**{k: job[k] for k in keep}, "spearman": rho, "train_seconds": seconds}


def _summarise(rows: list[dict[str, Any]], ceiling: float) -> list[dict[str, Any]]:
    from scipy.stats import t as student_t

    out = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        for budget in sorted({r["budget"] for r in rows if r["recipe"] == recipe}):
            got = [r for r in rows if r["recipe"] == recipe and r["budget"] == budget]
            rho = np.array([r["spearman"] for r in got])
            sd = float(rho.std(ddof=1)) if len(rho) > 1 else float("nan")
            half = (
                float(student_t.ppf(0.975, len(rho) - 1) * sd / math.sqrt(len(rho))) if len(rho) > 1 else float("nan")
            )
            out.append(
                {
                    "recipe": recipe,
                    "budget_prompts": budget,
                    "sampled_tokens": got[0]["tokens"],
                    "seeds": len(rho),
                    "spearman_mean": float(rho.mean()),
                    "spearman_sd": sd,
                    "spearman_ci": [float(rho.mean() - half), float(rho.mean() + half)],
                    "share_mean": float(rho.mean() / ceiling),
                    "share_ci": [float((rho.mean() - half) / ceiling), float((rho.mean() + half) / ceiling)],
                    "spearman_per_seed": rho.tolist(),
                }
            )
    return out


def _plot(summary: list[dict[str, Any]], oracle: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for recipe in dict.fromkeys(s["recipe"] for s in summary):
        pts = sorted((s for s in summary if s["recipe"] == recipe), key=lambda s: s["sampled_tokens"])
        x = [s["sampled_tokens"] for s in pts]
        y = [s["share_mean"] for s in pts]
        lo = [s["share_mean"] - s["share_ci"][0] for s in pts]
        hi = [s["share_ci"][1] - s["share_mean"] for s in pts]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=recipe)
    if oracle is not None:
        ax.axhline(oracle, color="grey", linestyle="--", label="step-label oracle (exact facts)")
    ax.axhline(0.8, color="black", linestyle=":", label="goal: 0.80 of the ceiling")
    ax.set_xscale("log")
    ax.set_xlabel("sampled tokens (collect + label)")
    ax.set_ylabel("share of the MC noise ceiling (Spearman, held-out)")
    ax.set_title("Value-learning frontier (mean over seeds, 95% CI across seeds)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The frontier table (what the quickstart report embeds)."""
    lines = [
        f"Held-out Spearman with MC as a share of the noise ceiling ({meta['noise_ceiling']:.3f}), mean over "
        f"{meta['seeds']} training seeds with a 95% t-interval across seeds; {meta['steps']} optimizer steps of 32 "
        f"traces per run; budget = sampled tokens (collect + label). Measured {meta['measured_at']} by "
        "`make frontier`.",
        "",
        "| recipe | training prompts | sampled tokens | share of ceiling | 95% CI | sd (Spearman) |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['recipe']} | {s['budget_prompts'] or 'all'} | {s['sampled_tokens']:,} | {s['share_mean']:.3f} | "
            f"[{s['share_ci'][0]:.3f}, {s['share_ci'][1]:.3f}] | {s['spearman_sd']:.3f} |"
        )
    if meta.get("oracle_share") is not None:
        lines += [
            "",
            f"Step-label oracle (exact facts: wrong step written × steps left, fit on every training prompt of the "
            f"largest budget): Spearman {meta['oracle_spearman']:.3f}, share {meta['oracle_share']:.3f}.",
        ]
    lines += ["", "Recipes:", ""] + [f"- `{k}`: {RECIPES[k][0]}" for k in meta["recipes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    run = Path(argv[0])
    opts = _args(argv[1:])
    recipes = [r for r in opts["recipes"].split(",") if r]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"frontier: unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    metrics = json.loads((run / "metrics.json").read_text())
    ceiling = float(metrics["mc"]["noise_ceiling"]["spearman"])
    work = run / "frontier"
    work.mkdir(parents=True, exist_ok=True)
    source = Path(opts["traces"]) if opts["traces"] else run / "traces"
    oracle = _oracle_spearman(run, source)
    jobs = []
    for b in (int(x) for x in opts["budgets"].split(",")):
        traces_dir, tokens, prompts = _subset(source, b, work)
        for recipe in recipes:
            _, overrides, uses_labels = RECIPES[recipe]
            job_traces, job_tokens, labels = traces_dir, tokens, None
            if uses_labels:  # half the prompts' traces, the other half of the tokens on MC labels
                half, half_tokens, _ = _subset(source, max(1, len(prompts) // 2), work)
                labels, label_tokens = _label_budget(run, half, tokens - half_tokens, work)
                job_traces, job_tokens = half, half_tokens + label_tokens
            for seed in range(int(opts["seeds"])):
                jobs.append(
                    {
                        "run": str(run),
                        "recipe": recipe,
                        "budget": b,
                        "seed": seed,
                        "tokens": job_tokens,
                        "traces": str(job_traces),
                        "labels": str(labels) if labels else None,
                        "steps": int(opts["steps"]),
                        "overrides": overrides,
                        "out": str(work / f"{recipe}_b{b}_s{seed}"),
                    }
                )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"frontier: {len(jobs)} training runs on {opts['workers']} workers", flush=True)
    # finished runs are kept in RUN/frontier/runs.jsonl: an interrupted sweep resumes where it stopped
    log = work / "runs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    key = lambda r: (r["recipe"], r["budget"], r["seed"], r["tokens"], r["steps"])  # noqa: E731
    have = {key(r) for r in done}
    # train=false: no training, the table of what runs.jsonl holds (a recipe lacking a budget shows fewer points)
    todo = [j for j in jobs if key(j) not in have] if opts["train"] != "false" else []
    wanted = {key(j) for j in jobs}
    rows = [r for r in done if key(r) in wanted]
    with ProcessPoolExecutor(max_workers=int(opts["workers"])) as pool:
        for r in pool.map(_score, todo):
            print(json.dumps(r), flush=True)
            with log.open("a") as f:
                f.write(json.dumps(r) + "\n")
            rows.append(r)
    summary = _summarise(rows, ceiling)
    meta = {
        "run": str(run),
        "noise_ceiling": ceiling,
        "oracle_spearman": oracle,
        "oracle_share": oracle / ceiling if oracle is not None else None,
        "seeds": int(opts["seeds"]),
        "steps": int(opts["steps"]),
        "recipes": recipes,
        "measured_at": time.strftime("%Y-%m-%d"),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "frontier.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=2) + "\n")
    (OUT / "frontier.md").write_text(markdown(summary, meta))
    _plot(summary, meta["oracle_share"], OUT / "frontier.png")
    best = max(summary, key=lambda s: s["share_mean"])
    record(
        "value_frontier",
        best["share_mean"],
        unit="share of the MC noise ceiling of the best recipe at any budget (mean over seeds)",
        best_recipe=best["recipe"],
        best_budget_prompts=best["budget_prompts"],
        table=summary,
        meta=meta,
        files=str(OUT.relative_to(RESULTS.parent.parent)),
    )
    print(f"frontier: {OUT}/frontier.md, frontier.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
