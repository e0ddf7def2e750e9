"""What limits the implicit prefix value (IPVRM)? One knob at a time, measured on held-out prefixes.

    python benchmarks/ipvrm_diagnosis.py runs/quickstart traces=runs/frontier/traces   # part of make frontier
    python benchmarks/ipvrm_diagnosis.py runs/quickstart budget=1600 seeds=2 steps=500 workers=2 rows=0,1

Starts from the IPVRM as the quickstart trains it: the paper's formulation with margin 0 instead of the paper's
default 5 (LoRA r8 on every linear layer, β 10, lr 1e-2, `steps` steps of 32 traces, length-normalised readout
σ(V/p)), and changes one knob per row (the paper's margin 5 is one row): the readout (`sum`: σ(logit(base rate) + V), no 1/p), β, the margin, the LoRA rank, the learning rate,
the steps and the training signal (the data size is the frontier's axis: its `implicit` rows at three
budgets). Each row trains `seeds` seeds on
the first `budget` training prompts of the traces of `traces=` (default RUN/traces; `make frontier` passes
its 8000-prompt collection) and reports:

- Spearman with MC on the quickstart's validation prefixes (where the best knob is chosen,
  `prefixvalue.evaluation.selection.choose`) and on its held-out test prefixes (the figure reported), as a share
  of the test noise ceiling;
- the length-normalisation test: at the first wrong step of each held-out test trace that has one, how much of
  the MC drop across that step the model's values reproduce (learned drop / MC drop, from the position
  where the step starts to 4 tokens after it ends; 1 = the whole drop, 0 = none).

Writes benchmarks/frontier/ipvrm.{json,md} and ``ipvrm_diagnosis`` in benchmarks/results.json.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from frontier import OUT, _subset, run_split, score_sides, split_args, train_job, work_folder

from prefixvalue.evaluation.selection import choose

from common import record

BASE: dict[str, Any] = {"value_model.kind": "implicit", "lr": 1e-2}
#: row name → overrides on top of BASE (one knob each); "budget" and "steps" multiply the data and the steps
ROWS: dict[str, dict[str, Any]] = {
    "quickstart's IPVRM (β 10, margin 0, r 8, mean readout)": {},
    "readout=sum (no 1/p)": {"value_model.readout": "sum", "lr": 3e-3},
    "β = 30": {"value_model.beta": 30.0},
    "margin 5 (the paper's default)": {"value_model.margin": 5.0},
    "LoRA rank 32": {"value_model.lora_r": 32, "value_model.lora_alpha": 64.0},
    "lr 3e-3": {"lr": 3e-3},
    "2x steps": {"steps": 2},
    "sibling labels": {"signal": "siblings"},
}
# data size is the frontier's axis: its `implicit` and `implicit-sum` rows at 400, 1600 and 6400 prompts
#: tokens after the end of the first wrong step at which its drop is read
AFTER = 4


def _args(argv: list[str]) -> dict[str, str]:
    opts = {"budget": "1600", "seeds": "2", "steps": "500", "workers": "2", "traces": "", "rows": ""}
    for a in argv:
        k, _, v = a.partition("=")
        if k not in opts:
            raise SystemExit(f"ipvrm_diagnosis: unknown option {k!r}; options: {', '.join(opts)}")
        opts[k] = v
    return opts


def _run(job: dict[str, Any]) -> dict[str, Any]:
    from prefixvalue.data import load_labels, load_traces

    run = Path(job["run"])
    # a run trained by an interrupted sweep is scored again, not retrained
    checkpoint, seconds = train_job(job, reuse=True)
    scored = score_sides(run, checkpoint)
    rho, rho_val = scored["test"]["spearman"], scored["validation"]["spearman"]
    pred = scored["test"]["pred"]
    curves: dict[str, dict[int, float]] = {}
    for t, p, v in zip(pred["trace_id"], pred["position"], pred["learned"]):
        curves.setdefault(t, {})[int(p)] = float(v)
    held = load_traces(run / "heldout_traces")
    labels = load_labels(run / "labels")
    # the drop across the first wrong step: learned vs MC, where both prefixes are labelled
    mc = {(t, int(p)): float(m) for t, p, m in zip(labels["trace_id"], labels["position"], labels["mean"])}
    learned_drops, mc_drops = [], []
    for r in held:
        if not r["step_labels"] or all(r["step_labels"]):
            continue
        k = r["step_labels"].index(False)
        start, end = r["step_spans"][k]
        after = min(int(end) + AFTER, len(r["completion_ids"]))
        a, b = (r["trace_id"], int(start)), (r["trace_id"], after)
        if a in mc and b in mc and mc[a] - mc[b] > 0.2 and a[0] in curves:  # a real drop in MC
            v = curves[r["trace_id"]]
            learned_drops.append(v[a[1]] - v[b[1]])
            mc_drops.append(mc[a] - mc[b])
    capture = float(np.sum(learned_drops) / np.sum(mc_drops)) if mc_drops else None
    return {
        "row": job["row"],
        "seed": job["seed"],
        "spearman": rho,
        "spearman_validation": rho_val,
        "drop_capture": capture,
        "n_drops": len(mc_drops),
        "train_seconds": seconds,
    }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    run = Path(argv[0])
    opts = _args(argv[1:])
    budget, steps = int(opts["budget"]), int(opts["steps"])
    metrics = json.loads((run / "metrics.json").read_text())
    ceiling = float(metrics["mc"]["noise_ceiling"]["spearman"])
    work = work_folder(run)
    record_ = run_split(run)
    source = Path(opts["traces"]) if opts["traces"] else run / "traces"
    jobs = []
    chosen = [int(i) for i in opts["rows"].split(",")] if opts["rows"] else range(len(ROWS))
    for i, (row, over) in enumerate(ROWS.items()):
        if i not in chosen:
            continue
        over = dict(over)
        b = int(budget * float(over.pop("budget", 1)))
        s = int(steps * float(over.pop("steps", 1)))
        traces_dir, _, _ = _subset(source, b, work, record_)
        for seed in range(int(opts["seeds"])):
            jobs.append(
                {
                    "run": str(run),
                    "row": row,
                    "seed": seed,
                    "traces": str(traces_dir),
                    "steps": s,
                    "overrides": {**BASE, **over},
                    "split": split_args(record_),
                    "out": str(work / f"ipvrm_{i}_{seed}"),
                }
            )
    print(f"ipvrm_diagnosis: {len(jobs)} runs", flush=True)
    # every scored run is kept in RUN_frontier/ipvrm_runs.jsonl; the table covers all rows run so far
    log = work / "ipvrm_runs.jsonl"
    with ProcessPoolExecutor(max_workers=int(opts["workers"])) as pool:
        for r in pool.map(_run, jobs):
            with log.open("a") as f:
                f.write(json.dumps({**r, "budget": budget, "steps": steps}) + "\n")
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    latest = {
        (r["row"], r["seed"]): r
        for r in logged
        if r["budget"] == budget and r["steps"] == steps and "spearman_validation" in r  # scored under the protocol
    }
    rows = list(latest.values())
    summary = []
    for row in ROWS:
        got = [r for r in rows if r["row"] == row]
        if not got:
            continue
        rho = np.array([r["spearman"] for r in got])
        val = np.array([r["spearman_validation"] for r in got])
        cap = [r["drop_capture"] for r in got if r["drop_capture"] is not None]
        summary.append(
            {
                "row": row,
                "seeds": len(got),
                "spearman_per_seed": rho.tolist(),
                "validation_spearman_mean": float(val.mean()),
                "spearman_mean": float(rho.mean()),
                "share_mean": float(rho.mean() / ceiling),
                "drop_capture_mean": float(np.mean(cap)) if cap else None,
                "n_drops": got[0]["n_drops"],
            }
        )
    pick = choose(
        "the IPVRM knob that helps most (one change from the quickstart's IPVRM)",
        {s["row"]: s["validation_spearman_mean"] for s in summary},
        split="validation",
        metric="Spearman with MC, mean over seeds",
    )
    chosen = next(s for s in summary if s["row"] == pick.chosen)
    lines = [
        f"IPVRM, one knob at a time: {budget} training prompts, {steps} steps of 32 traces (base steps; the 2x row "
        f"doubles them), mean over the seeds listed per row. Drop capture: learned drop / MC drop across the first wrong step of "
        f"held-out traces (from the step's start to {AFTER} tokens after its end; MC drop > 0.2).",
        "",
        "| change | validation Spearman | test Spearman (per seed) | test share of ceiling | drop capture |",
        "|---|---|---|---|---|",
    ]
    for s in summary:
        per = ", ".join(f"{v:.3f}" for v in s["spearman_per_seed"])
        cap = "n/a" if s["drop_capture_mean"] is None else f"{s['drop_capture_mean']:.2f} (n={s['n_drops']})"
        lines.append(
            f"| {s['row']} | {s['validation_spearman_mean']:.3f} | {s['spearman_mean']:.3f} ({per}) | "
            f"{s['share_mean']:.3f} | {cap} |"
        )
    lines += [
        "",
        f"Chosen on validation among {len(summary)} rows: **{pick.chosen}**, test share {chosen['share_mean']:.3f} "
        f"(the test column is read for this figure only; no choice reads it).",
    ]
    OUT.mkdir(exist_ok=True)
    (OUT / "ipvrm.md").write_text("\n".join(lines) + "\n")
    payload = {"selection": {**pick.to_dict(), "chosen_test_share": chosen["share_mean"]}, "summary": summary}
    (OUT / "ipvrm.json").write_text(json.dumps({**payload, "runs": rows}, indent=2) + "\n")
    record(
        "ipvrm_diagnosis",
        summary[0]["share_mean"],
        unit="test share of the MC noise ceiling of the quickstart's IPVRM (margin 0; first row); one knob per other "
        "row, the best chosen on validation",
        chosen_on_validation=pick.chosen,
        chosen_test_share=chosen["share_mean"],
        table=summary,
        budget_prompts=budget,
        steps=steps,
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
