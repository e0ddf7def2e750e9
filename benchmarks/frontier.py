"""The value-learning frontier: held-out value quality against sampled tokens, one line per training recipe.

    python benchmarks/frontier.py runs/quickstart traces=runs/frontier/traces     # what `make frontier` runs
    python benchmarks/frontier.py runs/quickstart seeds=3 steps=500 budgets=400,1600,6400 workers=2 recipes=implicit,head-full
    python benchmarks/frontier.py runs/quickstart traces=runs/frontier/traces train=false    # the table of the runs so far

For each budget (the number of training prompts whose collected traces a recipe may use; 0 = all; `quickstart` =
the quickstart's own number of training prompts) and each recipe, trains `seeds` value models with `prefixvalue
train` on the traces of `traces=` (default RUN/traces; `make frontier` collects 8000 prompts like the quickstart's
2000, so budgets can pass the quickstart's) and scores them with the one evaluator on the quickstart's validation MC
labels (RUN/labels_validation, where the recipe is chosen) and on its held-out test MC labels (RUN/labels, the
figures reported: Spearman with MC as a share of the noise ceiling in RUN/metrics.json). The split is the labels'
own (their split.json, checked to be one split on both sides), and training prompts come from its train side only.

The choice (docs/design.md, "Choose on validation, report on test"): at the quickstart's budget the recipe with
the best mean validation Spearman is chosen (`prefixvalue.evaluation.selection.choose`); the table reports its
test figure, how far the validation ranking and the test ranking of the recipes agree (Spearman over recipes, with
a bootstrap CI over prompts of both splits), the selection effect (the test share of the validation choice vs
the best test share, which choosing on test would have reported) and paired bootstrap CIs over test prompts of
every recipe minus the chosen one. The budget is counted in *sampled tokens*: the completion tokens of the traces a recipe
trains on, plus, for the MC-supervised recipe, the tokens its labelling generated. The MC recipe spends
half its budget on traces (half the prompts) and labels one trace per prompt with what is left.

Every figure is the mean over seeds with a 95% t-interval across seeds and the spread (sd). Writes
benchmarks/frontier/frontier.{json,md,png} and ``value_frontier`` in results.json.
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
        "IPVRM as the quickstart trains it: the paper's formulation (LoRA r8, β 10, length-normalised v̄ = V/p) with "
        "margin 0, not the paper's default 5; outcomes",
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
        "budgets": "400,quickstart,6400",
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


def work_folder(run: Path) -> Path:
    """Where the sweep trains and logs (RUN_frontier beside the quickstart's run folder, never inside it: that
    folder is the quickstart's own, and a rerun of the quickstart refuses what it did not write)."""
    return run.with_name(f"{run.name}_frontier")


def run_split(run: Path) -> Any:
    """The split of RUN's labels (their split.json): the test labels (RUN/labels, prompts=heldout) and the
    validation labels (RUN/labels_validation, prompts=validation) must record one split, or the frontier stops."""
    from prefixvalue.data import SplitRecord, labels_side

    test, val = run / "labels", run / "labels_validation"
    for folder, side in ((test, "test"), (val, "validation")):
        if labels_side(folder) != side:
            raise SystemExit(f"frontier: {folder} must hold MC labels of {side} prompts (run the quickstart first)")
    record, other = SplitRecord.load(test), SplitRecord.load(val)
    if not record.same_split(other) or not record.validation_fraction:
        raise SystemExit(f"frontier: {test} and {val} record different splits (or no validation side)")
    return record


def split_args(record: Any) -> dict[str, Any]:
    """The split options of `prefixvalue train` and `label` that reproduce `record`."""
    return {
        "heldout_fraction": record.heldout_fraction,
        "validation_fraction": record.validation_fraction,
        "split_seed": record.split_seed,
    }


def _subset(source: Path, n_prompts: int, work: Path, record: Any) -> tuple[Path, int, list[str]]:
    """Traces of the first `n_prompts` training prompts of `source` (0: all); returns folder, sampled tokens,
    prompts. Only prompts on the train side of `record` (the labels' split) are chosen: never a validation
    or a test prompt."""
    from prefixvalue.data import load_traces, save_subset
    from prefixvalue.data.split import normalise_prompt

    traces = load_traces(source)
    chosen: list[int] = []
    prompts: list[str] = []
    seen: set[str] = set()
    for i, text in enumerate(traces["prompt"]):
        if record.side(text) != "train":
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


def _label_budget(run: Path, traces_dir: Path, token_budget: int, work: Path, record: Any) -> tuple[Path, int]:
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
            **split_args(record),
        )
    )
    cost = json.loads((out / "cost.json").read_text())
    return out, int(cost["generated_tokens"])


def _oracle_spearman(run: Path, source: Path, record: Any) -> float | None:
    """Test Spearman with MC of the step-label oracle fit on every training prompt of `source` (None when
    the traces carry no exact step labels): the one evaluator's ``step_oracle`` on RUN's test labels."""
    from prefixvalue.data import load_traces
    from prefixvalue.evaluation.estimators import TraceRecord
    from prefixvalue.evaluation.oracle import training_oracle

    oracle = training_oracle(load_traces(source), record)
    if oracle is None:
        return None
    held = {r["trace_id"]: oracle.predict(TraceRecord.from_row(r)) for r in load_traces(run / "heldout_traces")}
    return _spearman_on(run / "labels", held)


def run_policy(run: Path) -> str:
    """The policy that wrote and labelled RUN's traces (its test labels' run record)."""
    return json.loads((run / "labels" / "run.json").read_text())["model"]


def train_prompts(source: Path, record: Any) -> int:
    """How many distinct prompts of `source` lie on the train side of `record` (the quickstart's budget)."""
    from prefixvalue.data import load_traces
    from prefixvalue.data.split import normalise_prompt

    return len({normalise_prompt(t) for t in load_traces(source)["prompt"] if record.side(t) == "train"})


def train_job(job: dict[str, Any], reuse: bool = False) -> tuple[str, float | None]:
    """Train one job's value model (one process, one thread) with the settings every sweep shares and the
    labels' split (``job["split"]``); returns its checkpoint and training seconds. With `reuse`, a run whose
    checkpoint is complete is not retrained (seconds None)."""
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
        **job["split"],
        **job["overrides"],
    }
    if job.get("labels"):
        args["labels"] = job["labels"]
    t0 = time.perf_counter()
    result = train.run(parse_config(train.TrainConfig, [f"{k}={v}" for k, v in args.items()]))
    return result["checkpoint"], round(time.perf_counter() - t0, 1)


#: the labels each run is scored on: side → (traces folder, labels folder) inside the quickstart's run folder
SIDES = {"validation": ("validation_traces", "labels_validation"), "test": ("heldout_traces", "labels")}


def _options(side: str, split_record: str) -> Any:
    """The one evaluator's options for a frontier score: one side of the split, no soft values, no bootstrap."""
    from prefixvalue.evaluation.options import ScoringOptions

    return ScoringOptions(
        batch_size=64, soft_values=False, n_bootstrap=0, step_oracle=False, split=side, split_record=split_record
    )


def score_sides(run: Path, checkpoint: str) -> dict[str, dict[str, Any]]:
    """A checkpoint scored by the one evaluator on RUN's validation and test labels: per side, its Spearman
    with MC and the per-prefix predictions (``trace_id``, ``position``, ``value``) the bootstraps read."""
    from prefixvalue.evaluation.evaluator import evaluate

    out = {}
    for side, (traces, labels) in SIDES.items():
        result = evaluate({"m": checkpoint}, run / traces, run / labels, _options(side, checkpoint))
        p = result.prefixes
        out[side] = {
            "spearman": result.metrics["estimators"]["learned"]["spearman"]["value"],
            "pred": {k: list(p[k]) for k in ("trace_id", "prompt_id", "position", "mc_mean", "learned")},
        }
    return out


def _spearman_on(labels_dir: Path, curves: dict[str, Any]) -> float:
    """Spearman with MC of value curves (trace id → values at positions 0..T) on the labels of `labels_dir`."""
    from scipy.stats import spearmanr

    from prefixvalue.data import load_labels

    labels = load_labels(labels_dir)
    x = [curves[t][p] for t, p in zip(labels["trace_id"], labels["position"])]
    return float(spearmanr(x, labels["mean"]).statistic)


def _score(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (recipe, budget, seed) and score it on the validation and the test MC labels; its per-prefix
    predictions go to ``job["preds"]`` (JSON) for the bootstraps over prompts."""
    checkpoint, seconds = train_job(job, reuse=True)
    scored = score_sides(Path(job["run"]), checkpoint)
    Path(job["preds"]).write_text(json.dumps({side: v["pred"] for side, v in scored.items()}))
    keep = ("recipe", "budget", "seed", "tokens", "steps")
    return {
        **{k: job[k] for k in keep},
        "spearman_validation": scored["validation"]["spearman"],
        "spearman": scored["test"]["spearman"],
        "train_seconds": seconds,
    }


def _summarise(rows: list[dict[str, Any]], ceiling: float) -> list[dict[str, Any]]:
    from scipy.stats import t as student_t

    out = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        for budget in sorted({r["budget"] for r in rows if r["recipe"] == recipe}):
            got = [r for r in rows if r["recipe"] == recipe and r["budget"] == budget]
            rho = np.array([r["spearman"] for r in got])
            val = np.array([r["spearman_validation"] for r in got])
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
                    "validation_spearman_mean": float(val.mean()),
                    "spearman_mean": float(rho.mean()),
                    "spearman_sd": sd,
                    "spearman_ci": [float(rho.mean() - half), float(rho.mean() + half)],
                    "share_mean": float(rho.mean() / ceiling),
                    "share_ci": [float((rho.mean() - half) / ceiling), float((rho.mean() + half) / ceiling)],
                    "spearman_per_seed": rho.tolist(),
                    "validation_spearman_per_seed": val.tolist(),
                }
            )
    return out


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _load_preds(rows: list[dict[str, Any]], work: Path, budget: int) -> dict[str, dict[str, list[np.ndarray]]]:
    """Per side, per recipe, the per-prefix predictions of each seed at `budget` (every run's prefixes are the
    labels' in one order: checked), plus ``"_mc"`` and ``"_groups"`` (the MC means and prompt ids)."""
    out: dict[str, dict[str, Any]] = {side: {} for side in SIDES}
    for r in rows:
        if r["budget"] != budget:
            continue
        pred = json.loads(_preds_path(work, r["recipe"], budget, r["seed"]).read_text())
        for side in SIDES:
            p = pred[side]
            key = list(zip(p["trace_id"], p["position"]))
            if out[side].setdefault("_key", key) != key:
                raise SystemExit(f"frontier: {r['recipe']} seed {r['seed']} scored other {side} prefixes than the rest")
            out[side]["_mc"] = np.asarray(p["mc_mean"], dtype=np.float64)
            out[side]["_groups"] = np.asarray([f"{side}:{g}" for g in p["prompt_id"]])
            out[side].setdefault(r["recipe"], []).append(np.asarray(p["learned"], dtype=np.float64))
    return out


def protocol(
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    work: Path,
    budget: int,
    ceiling: float,
    n_boot: int = 1000,
) -> dict:
    """The choice at `budget` on validation and what it cost: the chosen recipe (`selection.choose` on the mean
    validation Spearman over seeds), its test figure, the best test figure (what choosing on test would report),
    the agreement of the two rankings over recipes (Spearman, 95% bootstrap CI over the prompts of both splits)
    and the paired difference of every recipe minus the chosen one on test (95% bootstrap CI over test prompts)."""
    from prefixvalue.evaluation.selection import choose
    from prefixvalue.stats import cluster_bootstrap

    at = {s["recipe"]: s for s in summary if s["budget_prompts"] == budget}
    what = f"the quickstart's recipe: the best mean validation Spearman at its budget ({budget} training prompts)"
    val_scores = {r: s["validation_spearman_mean"] for r, s in at.items()}
    pick = choose(what, val_scores, split="validation", metric="Spearman with MC, mean over seeds")
    test = {r: s["spearman_mean"] for r, s in at.items()}
    best_test = max(test, key=lambda r: test[r])
    preds = _load_preds(rows, work, budget)
    recipes = list(at)
    n_val = len(preds["validation"]["_mc"])
    y = np.concatenate([preds["validation"]["_mc"], preds["test"]["_mc"]])
    groups = np.concatenate([preds["validation"]["_groups"], preds["test"]["_groups"]])
    x = {r: [np.concatenate([a, b]) for a, b in zip(preds["validation"][r], preds["test"][r])] for r in recipes}

    def agreement(idx: np.ndarray) -> float:
        v, t = idx[idx < n_val], idx[idx >= n_val]
        val = [np.mean([_rho(s[v], y[v]) for s in x[r]]) for r in recipes]
        tst = [np.mean([_rho(s[t], y[t]) for s in x[r]]) for r in recipes]
        return _rho(np.asarray(val), np.asarray(tst))

    everything = np.arange(len(y))
    agree = agreement(everything)
    agree_ci, agree_note = cluster_bootstrap(agreement, groups, n_boot=n_boot, seed=0, unit="prompt")
    yt, gt = preds["test"]["_mc"], preds["test"]["_groups"]
    paired = {}
    for r in recipes:
        if r == pick.chosen:
            continue

        def diff(idx: np.ndarray, r: str = r) -> float:
            mean = lambda name: np.mean([_rho(s[idx], yt[idx]) for s in preds["test"][name]])  # noqa: E731
            return float(mean(r) - mean(pick.chosen))

        ci, note = cluster_bootstrap(diff, gt, n_boot=n_boot, seed=0, unit="prompt")
        paired[r] = {"value": diff(np.arange(len(yt))), "ci": ci, **({"note": note} if note else {})}
    chosen_share, best_share = test[pick.chosen] / ceiling, test[best_test] / ceiling
    return {
        **pick.to_dict(),
        "budget_prompts": budget,
        "chosen_test_spearman": test[pick.chosen],
        "chosen_test_share": chosen_share,
        "best_on_test": best_test,
        "best_on_test_share": best_share,
        "selection_effect_share": best_share - chosen_share,
        "rank_agreement": {"spearman_over_recipes": agree, "ci": agree_ci, "n_recipes": len(recipes)}
        | ({"note": agree_note} if agree_note else {}),
        "paired_vs_chosen_test": paired,
    }


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
    ax.set_title("Value-learning frontier (test; mean over seeds, 95% CI across seeds)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any], selection: dict[str, Any] | None) -> str:
    """The frontier table (what the quickstart report embeds)."""
    lines = [
        f"Spearman with MC as a share of the test noise ceiling ({meta['noise_ceiling']:.3f}), mean over "
        f"{meta['seeds']} training seed(s) with a 95% t-interval across seeds; {meta['steps']} optimizer steps of 32 "
        f"traces per run; budget = sampled tokens (collect + label). Validation: the mean Spearman on the validation "
        f"labels ({meta['validation_prefixes']} prefixes of validation prompts, labelled like the test ones), where "
        f"the recipe is chosen; test: the held-out labels, read for the figures. Measured {meta['measured_at']} by "
        "`make frontier`.",
        "",
        "| recipe | training prompts | sampled tokens | validation Spearman | test share of ceiling | 95% CI | sd |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['recipe']} | {s['budget_prompts'] or 'all'} | {s['sampled_tokens']:,} | "
            f"{s['validation_spearman_mean']:.3f} | {s['share_mean']:.3f} | "
            + (
                f"[{s['share_ci'][0]:.3f}, {s['share_ci'][1]:.3f}] | {s['spearman_sd']:.3f} |"
                if s["seeds"] > 1
                else "n/a (one seed) | n/a |"
            )
        )
    if selection:
        ra = selection["rank_agreement"]
        ci = ra.get("ci")
        ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "n/a"
        lines += [
            "",
            f"**Chosen on validation** ({selection['budget_prompts']} training prompts, the quickstart's budget, among "
            f"{selection['n_candidates']} recipes): `{selection['chosen']}`, test share "
            f"{selection['chosen_test_share']:.3f} (Spearman {selection['chosen_test_spearman']:.3f}). The best on "
            f"test would have been `{selection['best_on_test']}` at {selection['best_on_test_share']:.3f}: choosing "
            f"on the test labels would have reported {selection['selection_effect_share']:+.3f} more. The validation "
            f"and test rankings of the recipes agree at Spearman {ra['spearman_over_recipes']:.2f}, 95% CI {ci_text} "
            "(bootstrap over the prompts of both splits).",
            "",
            "Paired difference on test, each recipe minus the chosen one (Spearman, mean over seeds; 95% bootstrap CI "
            "over test prompts):",
            "",
            "| recipe | difference | 95% CI |",
            "|---|---|---|",
        ]
        for r, d in selection["paired_vs_chosen_test"].items():
            c = d.get("ci")
            lines.append(f"| {r} | {d['value']:+.3f} | " + (f"[{c[0]:+.3f}, {c[1]:+.3f}]" if c else "n/a") + " |")
    if meta.get("oracle_share") is not None:
        lines += [
            "",
            f"Step-label oracle (exact facts: wrong step written × steps the prompt still asks for, fit on the train "
            f"side of the traces): test Spearman {meta['oracle_spearman']:.3f}, share {meta['oracle_share']:.3f}.",
        ]
    lines += ["", "Recipes:", ""] + [f"- `{k}`: {RECIPES[k][0]}" for k in meta["recipes"]]
    return "\n".join(lines) + "\n"


def _preds_path(work: Path, recipe: str, budget: int, seed: int) -> Path:
    return work / f"{recipe}_b{budget}_s{seed}" / "predictions.json"


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
    record_ = run_split(run)
    quickstart_budget = train_prompts(run / "traces", record_)
    work = work_folder(run)
    work.mkdir(parents=True, exist_ok=True)
    source = Path(opts["traces"]) if opts["traces"] else run / "traces"
    oracle = _oracle_spearman(run, source, record_)
    budgets = [quickstart_budget if b == "quickstart" else int(b) for b in opts["budgets"].split(",")]
    budgets.sort(key=lambda b: b != quickstart_budget)  # the budget the choice is made at runs first
    jobs = []
    for b in budgets:
        traces_dir, tokens, prompts = _subset(source, b, work, record_)
        for recipe in recipes:
            _, overrides, uses_labels = RECIPES[recipe]
            job_traces, job_tokens, labels = traces_dir, tokens, None
            if uses_labels:  # half the prompts' traces, the other half of the tokens on MC labels
                half, half_tokens, _ = _subset(source, max(1, len(prompts) // 2), work, record_)
                labels, label_tokens = _label_budget(run, half, tokens - half_tokens, work, record_)
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
                        "split": split_args(record_),
                        "out": str(work / f"{recipe}_b{b}_s{seed}"),
                        "preds": str(_preds_path(work, recipe, b, seed)),
                    }
                )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"frontier: {len(jobs)} training runs on {opts['workers']} workers", flush=True)
    # finished runs are kept in RUN_frontier/runs.jsonl: an interrupted sweep resumes where it stopped
    log = work / "runs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    key = lambda r: (r["recipe"], r["budget"], r["seed"], r["tokens"], r["steps"])  # noqa: E731
    done = [r for r in done if "spearman_validation" in r]  # runs scored before the validation split are redone
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
    # the test noise ceiling of the quickstart's report (read after training: the sweep may start before it ends)
    ceiling = float(json.loads((run / "metrics.json").read_text())["mc"]["noise_ceiling"]["spearman"])
    summary = _summarise(rows, ceiling)
    complete = {s["recipe"] for s in summary if s["budget_prompts"] == quickstart_budget}
    selection = protocol(rows, summary, work, quickstart_budget, ceiling) if len(complete) >= 2 else None
    val_metrics = json.loads(_preds_path(work, rows[0]["recipe"], rows[0]["budget"], rows[0]["seed"]).read_text())
    meta = {
        "run": str(run),
        "noise_ceiling": ceiling,
        "validation_prefixes": len(val_metrics["validation"]["mc_mean"]),
        "split": record_.to_dict(),
        "oracle_spearman": oracle,
        "oracle_share": oracle / ceiling if oracle is not None else None,
        "seeds": int(opts["seeds"]),
        "steps": int(opts["steps"]),
        "recipes": recipes,
        "measured_at": time.strftime("%Y-%m-%d"),
    }
    OUT.mkdir(exist_ok=True)
    payload = {"meta": meta, "selection": selection, "summary": summary, "runs": rows}
    (OUT / "frontier.json").write_text(json.dumps(payload, indent=2) + "\n")
    (OUT / "frontier.md").write_text(markdown(summary, meta, selection))
    _plot(summary, meta["oracle_share"], OUT / "frontier.png")
    if selection is not None:
        record(
            "value_frontier",
            selection["chosen_test_share"],
            unit="test share of the MC noise ceiling of the recipe chosen on validation at the quickstart's budget "
            "(mean over seeds)",
            chosen_recipe=selection["chosen"],
            budget_prompts=quickstart_budget,
            best_on_test_share=selection["best_on_test_share"],
            selection_effect_share=selection["selection_effect_share"],
            rank_agreement=selection["rank_agreement"],
            table=summary,
            meta=meta,
            files=str(OUT.relative_to(RESULTS.parent.parent)),
        )
    print(f"frontier: {OUT}/frontier.md, frontier.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
