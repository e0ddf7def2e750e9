"""DistRL on the quickstart's policy and checkpoints: ``distrl`` in results.json (docs/design.md, "DistRL").

    python benchmarks/distrl.py runs/quickstart                 # what `make distrl` runs (about an hour here)
    python benchmarks/distrl.py runs/quickstart seeds=1 budget=30000 jobs=1
    python benchmarks/distrl.py --report runs/quickstart publish=benchmarks/distrl_results   # scores of finished runs

Into RUN_distrl beside the run folder, every run resumable (a finished one is read back, not rerun):

1. the learning rate, chosen on validation: our GRPO arm at each of ``lrs`` (seed 0, the budget, scored on 256
   validation prompts of the checkpoints' split), the best final validation accuracy wins;
2. with it, every arm × ``seeds`` seeds to ``budget`` sampled tokens (policy completions plus Monte Carlo
   continuations), scored on ``eval_prompts`` test prompts × 4 samples:
   ``grpo`` (outcome rewards, ours), ``trl-grpo`` (TRL's GRPOTrainer, the anchor, scoring log-probs at the positions
   generate sampled them at), ``trl-grpo-unpatched`` (TRL as it is), ``td/<v>`` and ``distrl/<v>``
   for v = ``learned`` (the quickstart's validation-chosen checkpoint, RUN/metrics.json), ``implicit``
   (RUN/train_implicit/final) and ``mc`` (Monte Carlo at step starts, 4 continuations, its tokens in the budget),
   ``outcome-distrl/learned`` (GRPO's advantages on the sampled tokens, the candidate term from the learned value),
   ``distrl/learned-refresh`` (the learned value refreshed online on every batch, ``refresh_lr`` 3e-4);
   and ``td/mc-steps``, ``distrl/mc-steps``: the Monte Carlo arms run for as many optimiser steps as GRPO took (its
   continuations not budgeted: what the method does with near-exact values);
3. RUN_distrl/report.md, summary.json, accuracy_vs_tokens.png and accuracy_vs_steps.png (`prefixvalue.rl.analysis`).

The recorded value is DistRL with the learned value minus GRPO in held-out accuracy at the budget's end (seed mean);
the context holds every arm, the paired differences, the anchor check, the goals and the wall clock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from prefixvalue.rl import analysis

from common import REPO, record

DEFAULTS: dict[str, Any] = {
    "seeds": 3,
    "budget": 150_000,
    "lrs": "3e-5,1e-4,3e-4,1e-3",
    "jobs": 2,
    "eval_prompts": 300,
    "eval_samples": 4,
    "eval_every": 10,
    "mc_samples": 4,
    "refresh_lr": "3e-4",
    "publish": "",
    "anchor_margin": 0.03,
}
CLI = [sys.executable, "-m", "prefixvalue.cli"]


def _run(argv: list[str], log: Path) -> int:
    """One training in a subprocess with one thread (the jobs share the machine's cores)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "a", encoding="utf-8") as fh:
        return subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode


def _common(opts: dict[str, Any], split_from: str, seed: int) -> list[str]:
    return [
        f"split_from={split_from}",
        f"seed={seed}",
        "threads=1",
        "device=cpu",
        f"eval_every={opts['eval_every']}",
        f"eval_samples={opts['eval_samples']}",
        "max_steps=100000",
    ]


def arms(run: Path, opts: dict[str, Any]) -> dict[str, list[str]]:
    """The arms' command lines (without seed, output folder and budget)."""
    metrics = json.loads((run / "metrics.json").read_text())
    learned, implicit = metrics["checkpoint"], str(run / "train_implicit" / "final")
    out: dict[str, list[str]] = {
        "grpo": ["distrl", "advantage=outcome"],
        "trl-grpo": ["distrl-trl"],  # log-probs at generate's positions (`prefixvalue.rl.anchor`)
        "trl-grpo-unpatched": ["distrl-trl", "mask_position_ids=false"],  # TRL as it is
    }
    for name, ckpt in (("learned", learned), ("implicit", implicit)):
        for adv in ("td", "distrl"):
            out[f"{adv}/{name}"] = ["distrl", f"advantage={adv}", "value=checkpoint", f"value_checkpoint={ckpt}"]
    out["outcome-distrl/learned"] = [
        "distrl",
        "advantage=outcome-distrl",
        "value=checkpoint",
        f"value_checkpoint={learned}",
    ]
    # the seed's open question: the learned value refreshed online on the new rollouts (a tenth of its training rate)
    out["distrl/learned-refresh"] = [*out["distrl/learned"], f"refresh_lr={opts['refresh_lr']}"]
    for adv in ("td", "distrl"):
        out[f"{adv}/mc"] = ["distrl", f"advantage={adv}", "value=mc", f"mc_samples={opts['mc_samples']}"]
    return out


def _launch(todo: list[tuple[list[str], Path]], jobs: int) -> list[int]:
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda a: _run(*a), todo))


def main(argv: list[str]) -> int:
    report_only = "--report" in argv
    argv = [a for a in argv if a != "--report"]
    if not argv or "=" in argv[0]:
        print("usage: python benchmarks/distrl.py [--report] RUN [key=value ...]", file=sys.stderr)
        return 2
    run = Path(argv[0])
    opts = dict(DEFAULTS)
    for a in argv[1:]:
        k, _, v = a.partition("=")
        if k not in opts:
            print(f"distrl benchmark: unknown option {k!r} (known: {', '.join(opts)})", file=sys.stderr)
            return 2
        opts[k] = type(DEFAULTS[k])(v) if not isinstance(DEFAULTS[k], str) else v
    if not (run / "metrics.json").exists():
        print(
            f"distrl benchmark: {run} holds no finished quickstart (metrics.json); run make quickstart", file=sys.stderr
        )
        return 2
    root = run.parent / f"{run.name}_distrl"
    split_from = json.loads((run / "metrics.json").read_text())["checkpoint"]
    jobs = int(opts["jobs"])
    logs = root / "logs"

    # 1. the learning rate, on validation
    lrs = [float(x) for x in str(opts["lrs"]).split(",")]
    if not report_only:
        base = ["distrl", "advantage=outcome", *_common(opts, split_from, 0), f"max_sampled_tokens={opts['budget']}"]
        base += ["eval_split=validation", "eval_prompts=300"]
        lr_runs = [
            (CLI + base + [f"learning_rate={x:g}", f"out={root / 'lr' / f'{x:g}'}"], logs / f"lr_{x:g}.log")
            for x in lrs
        ]
        if any(_launch(lr_runs, jobs)):
            print(f"distrl benchmark: a learning-rate run failed (logs in {logs})", file=sys.stderr)
            return 1
    lr_found = {x: analysis.read_run(root / "lr" / f"{x:g}") for x in lrs}
    if any(v is None for v in lr_found.values()):
        print(f"distrl benchmark: learning-rate runs missing in {root / 'lr'}", file=sys.stderr)
        return 1
    val = {x: lr_found[x]["evals"][-1]["accuracy"] for x in lrs}
    lr = max(lrs, key=lambda x: (val[x], -x))
    lr_choice = ", ".join(f"{x:g}: {val[x]:.3f}" for x in lrs)
    print(f"learning rate {lr:g} (validation accuracy {lr_choice})", flush=True)

    # 2. every arm × seed at the budget, then the Monte Carlo arms for as many steps as GRPO took
    seeds = list(range(int(opts["seeds"])))
    table = arms(run, opts)
    tail = [f"learning_rate={lr:g}", f"eval_prompts={opts['eval_prompts']}"]
    if not report_only:
        todo = [
            (
                CLI
                + cmd
                + _common(opts, split_from, s)
                + tail
                + [f"max_sampled_tokens={opts['budget']}", f"out={root / name / f'seed{s}'}"],
                logs / f"{name.replace('/', '_')}_seed{s}.log",
            )
            for name, cmd in table.items()
            for s in seeds
        ]
        todo.sort(key=lambda t: ("distrl_mc" not in t[1].name, "td_mc" not in t[1].name))  # the slowest first
        _launch(todo, jobs)
    runs = analysis.read_arms(root, ["grpo"], seeds)
    grpo_steps = int(round(np.mean([r["steps"] for r in runs.get("grpo", {}).values()]))) if runs else 0
    if not report_only:
        steps_todo = [
            (
                CLI
                + table[f"{adv}/mc"]
                + _common(opts, split_from, s)[:-1]
                + tail
                + ["max_sampled_tokens=0", f"max_steps={grpo_steps}", f"out={root / f'{adv}/mc-steps' / f'seed{s}'}"],
                logs / f"{adv}_mc-steps_seed{s}.log",
            )
            for adv in ("td", "distrl")
            for s in seeds
        ]
        _launch(steps_todo, jobs)
    names = [*table, "td/mc-steps", "distrl/mc-steps"]
    runs = analysis.read_arms(root, names, seeds)
    missing = [f"{n}/seed{s}" for n in names for s in seeds if s not in runs.get(n, {})]
    if missing:
        print(f"distrl benchmark: runs did not finish: {', '.join(missing)} (logs in {logs})", file=sys.stderr)
        return 1

    # 3. the comparison
    summary = summarise(runs, run, opts, lr, lr_choice, seeds)
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    curves = {n: analysis.curves(runs[n]) for n in names if not n.endswith("mc-steps")}
    analysis.plot(curves, root / "accuracy_vs_tokens.png")
    analysis.plot({n: analysis.curves(runs[n]) for n in names}, root / "accuracy_vs_steps.png", x="step")
    (root / "report.md").write_text(analysis.report(summary) + "\n")
    report = root / "report.md"
    if opts["publish"]:  # a copy of the report, its plots and summary.json, e.g. into the repository
        dest = Path(str(opts["publish"]))
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("report.md", "summary.json", "accuracy_vs_tokens.png", "accuracy_vs_steps.png"):
            shutil.copyfile(root / name, dest / name)
        report = dest / "report.md"
    best = summary["paired"]["distrl/learned"]
    keep = ("budget", "learning_rate", "lr_choice", "seeds", "goals", "arms", "paired", "anchor", "anchor_unpatched")
    record(
        "distrl",
        round(best["mean"], 4),
        unit="held-out accuracy, DistRL (learned value) − GRPO, at the end of the budget",
        ci=best["ci"],
        compute_seconds=summary["compute_seconds"],
        report=str(report),
        **{k: summary[k] for k in keep},
    )
    return 0


def summarise(
    runs: dict[str, dict[int, dict[str, Any]]],
    run: Path,
    opts: dict[str, Any],
    lr: float,
    lr_choice: str,
    seeds: list[int],
) -> dict[str, Any]:
    """summary.json: every arm, the paired differences against GRPO, the anchor check, the goals."""
    arms_ = {n: analysis.arm_summary(r) for n, r in runs.items()}
    paired = {n: analysis.paired(runs[n], runs["grpo"]) for n in runs if n != "grpo"}
    anchor = analysis.paired(runs["grpo"], runs["trl-grpo"], float(opts["anchor_margin"]))
    unpatched = analysis.paired(runs["grpo"], runs["trl-grpo-unpatched"], float(opts["anchor_margin"]))
    g1 = paired["distrl/learned"]
    a_ci, t_ci = arms_["grpo"]["seed_ci"], arms_["trl-grpo"]["seed_ci"]
    overlap = bool(a_ci and t_ci and a_ci[0] <= t_ci[1] and t_ci[0] <= a_ci[1])
    goals = [
        f"DistRL (learned value) beats GRPO at equal tokens by a paired lower bound above 0: "
        f"{'met' if g1['ci'] and g1['ci'][0] > 0 else 'not met'} ({g1['mean']:+.3f}, seed t-interval "
        f"{analysis.diff_interval(g1['ci'])}, prompt bootstrap {analysis.diff_interval(g1['prompt_bootstrap_ci'])}); "
        + "; ".join(
            f"{n} {d['mean']:+.3f}" for n, d in paired.items() if n != "distrl/learned" and not n.startswith("trl")
        )
        + " (the */mc-steps arms at equal steps, their continuations not counted)",
        f"our GRPO and TRL's GRPOTrainer agree within their seed CIs: {'met' if overlap else 'not met'} "
        f"(ours {arms_['grpo']['accuracy']:.3f} {analysis.accuracy_interval(a_ci)}, TRL {arms_['trl-grpo']['accuracy']:.3f} "
        f"{analysis.accuracy_interval(t_ci)}; paired {anchor['mean']:+.3f} {analysis.diff_interval(anchor['ci'])}, {anchor['verdict']} "
        f"within ±{anchor['margin']})",
    ]
    first = next(iter(runs["grpo"].values()))
    return {
        "policy": str(json.loads((run / "metrics.json").read_text()).get("policy")),
        "budget": int(opts["budget"]),
        "learning_rate": lr,
        "lr_choice": lr_choice,
        "seeds": seeds,
        "train_prompts": first["prompts"]["train"],
        "eval_prompts": first["prompts"]["eval"],
        "eval_samples": int(opts["eval_samples"]),
        "start_accuracy": arms_["grpo"]["start_accuracy"],
        "baseline": "grpo",
        "arms": arms_,
        "paired": paired,
        "anchor": anchor,
        "anchor_unpatched": unpatched,
        "goals": goals,
        # every run's training and evaluation seconds, summed (one thread each, two runs at a time)
        "compute_seconds": round(sum(a["train_seconds"] + a["eval_seconds"] for a in arms_.values()) * len(seeds), 1),
        "machine": f"{os.cpu_count()} CPU cores",
    }


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
