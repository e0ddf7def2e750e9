"""``prefixvalue quickstart``: the whole loop on one config, collect → label → train → evaluate.

    prefixvalue quickstart --config recipes/quickstart.yaml           # what `make quickstart` runs
    prefixvalue quickstart --config recipes/quickstart.yaml collect.num_prompts=8000 train.max_steps=4000

1. collect ``collect.samples`` traces for each of ``collect.num_prompts`` prompts (``OUT/traces``);
2. split by prompt as training does and label held-out traces by Monte Carlo at ``label.positions``
   (``OUT/labels``), plus one trace per held-out prompt at ``short:K`` (``OUT/labels_short``);
3. train each value model of ``value_models`` (name → overrides of ``train``) on the training prompts
   (``OUT/train_<name>``), the first also with ``seeds`` − 1 further seeds (``OUT/train_<name>_seed<k>``),
   ``train_workers`` at a time in processes of one thread each;
4. evaluate on the held-out prefixes (the first model is ``learned``, the others ``learned_<name>``),
   beside the step-label oracle (exact step facts, fit on the training prompts), then the short-prefix
   study, the forking tokens (each re-tested on ``fork_samples`` fresh MC samples), the seed spread of
   ``learned``, its error-detection diagnosis and the quality goal (`prefixvalue.evaluation.analysis`).
   Evaluation reads the primary checkpoint's split record: its traces are held out by construction, so
   nothing is dropped, and metrics.json's ``split`` section says so.

Everything lands in ``OUT``: metrics.json (with a ``quickstart`` section), report.md, plots,
heatmap.html. Every stage resumes: run the same command again after an interruption. Record a fresh
run's wall clock with ``python benchmarks/record_quickstart.py OUT``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, RawMapping, config_to_dict, field, parse_config, save_resolved_config, with_overrides
from ..data import heldout_selection, load_labels, load_traces, save_subset, traces_finish_summary
from ..evaluation.analysis import error_diagnosis, largest_jumps, quality_verdict, seed_spread, short_prefix_study
from ..evaluation.estimators import ESTIMATORS, value_model_estimator
from ..evaluation.report import (
    rank_equivalent_groups,
    render_frontier_section,
    render_quickstart_section,
    summary_table,
    write_report,
)
from ..evaluation.scoring import evaluate_prefixes, read_mc_cost
from ..loading import ModelLoadConfig
from ..value import VALUE_MODELS
from ..studies import actions as actions_stage
from ..studies import advantages as advantages_stage
from . import collect, label
from . import train as train_mod
from .evaluate import EvaluateConfig, oracle_estimators


@dataclass
class QuickstartConfig(ModelLoadConfig):
    """The whole loop on the embedded default: collect → label → train → evaluate into one folder.

    The loading options (revision, trust_remote_code, attn_implementation, device_map, gguf_file) are set
    here once and go to every stage (train takes all but device_map)."""

    out: str = field("runs/quickstart", help="run folder (traces, labels, train_<kind>, report)")
    policy: str | None = field(None, help="policy: local folder, hub name or .gguf file (required)")
    collect: collect.CollectConfig = field(
        default_factory=lambda: collect.CollectConfig(split="test", num_prompts=2000),
        help="collection options (out and model are set here)",
    )
    label: label.LabelConfig = field(
        default_factory=lambda: label.LabelConfig(positions="all", samples=32, seed=1),
        help="MC labelling of held-out traces (traces, out, model and temperature are set here; the short-prefix "
        "study uses label.seed + 1)",
    )
    label_traces_per_prompt: int = field(1, help="held-out traces labelled per held-out prompt")
    label_max_traces: int = field(200, help="most held-out traces labelled")
    short_k: int = field(2, help="short-prefix study: positions short:1 .. short:K, one trace per held-out prompt")
    short_samples: int = field(64, help="MC continuations per short prefix")
    value_models: dict[str, RawMapping] = field(
        default_factory=lambda: {k: RawMapping({"value_model.kind": k}) for k in VALUE_MODELS},
        help="value models trained: name → overrides of `train` (dotted keys, e.g. {value_model.kind: head}); "
        "the first is `learned` in the report, the others `learned_<name>`",
    )
    seeds: int = field(3, help="training seeds of `learned` (train.seed, +1, ...); the report gives their spread")
    train_workers: int = field(
        2, help="value models trained at once, in separate processes of one CPU thread each (1: one after another)"
    )
    frontier_table: str | None = field(
        None, help="a `make frontier` table (frontier.md) to show in the report beside its plot (None: none)"
    )
    train: train_mod.TrainConfig = field(
        default_factory=train_mod.TrainConfig,
        help="training options (traces, policy, output_dir, value_model are set here)",
    )
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig, help="evaluation options (out is set here)")
    forks: int = field(3, help="traces with the largest MC value jumps shown with their forking tokens")
    fork_samples: int = field(
        64, help="fresh MC continuations per prefix that re-test each chosen fork (label.seed + 2)"
    )
    threads: int = field(0, help="torch CPU threads (0: torch's default)")
    alternatives: bool = field(
        False,
        help="also run `actions` and `advantages` (values of alternatives, docs/design.md) on the trained models "
        "into OUT/actions and OUT/advantages, with report sections; off by default (adds minutes)",
    )
    actions: actions_stage.ActionsConfig = field(
        default_factory=actions_stage.ActionsConfig,
        help="alternatives=true: actions options (out, policy and checkpoints are set here)",
    )
    advantages: advantages_stage.AdvantagesConfig = field(
        default_factory=advantages_stage.AdvantagesConfig,
        help="alternatives=true: advantages options (out, traces, labels, policy and checkpoints are set here)",
    )

    def __post_init__(self) -> None:
        if not self.policy:
            raise ConfigError("quickstart: policy is required (policy=NAME_OR_PATH, as in recipes/quickstart.yaml)")
        for name in ("label_traces_per_prompt", "label_max_traces", "short_samples", "fork_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"quickstart: {name} must be >= 1, got {getattr(self, name)}")
        if self.short_k < 1 or self.forks < 0 or self.seeds < 1 or self.train_workers < 1:
            raise ConfigError("quickstart: short_k >= 1, forks >= 0, seeds >= 1 and train_workers >= 1")
        if self.label.positions.split(":")[0] in ("short", "adaptive"):
            raise ConfigError("quickstart: label.positions must be all, stride:K or steps (short runs separately)")
        if not self.value_models:
            raise ConfigError("quickstart: value_models needs at least one entry (name: overrides of train)")
        for name in self.value_models:  # each entry must make a valid training config
            self.train_config(name, Path(self.out), 0)

    def load_fields(self) -> dict[str, Any]:
        """The loading options as keyword arguments of every stage's config."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelLoadConfig)}

    def train_config(self, name: str, out: Path, seed_offset: int, traces: Path | None = None) -> train_mod.TrainConfig:
        """The training config of value model `name` (``train`` with its overrides) for one seed."""
        tcfg = with_overrides(self.train, dict(self.value_models[name]), f"quickstart: value_models.{name}")
        suffix = f"_seed{seed_offset}" if seed_offset else ""
        return dataclasses.replace(
            tcfg,
            **{**self.load_fields(), "device_map": None},
            traces=str(traces) if traces is not None else tcfg.traces,
            policy=self.policy,
            output_dir=str(out / f"train_{name}{suffix}"),
            seed=tcfg.seed + seed_offset,
        )


# ------------------------------------------------------------------------------------- stages
#: file in the quickstart folder holding the wandb group shared by all its runs (reused on a rerun)
WANDB_GROUP_FILE = "wandb_group"


def with_wandb_group(cfg: QuickstartConfig, out: Path) -> QuickstartConfig:
    """`cfg` with one wandb group for its training and evaluation runs: ``evaluate.wandb.group`` or
    ``train.wandb.group`` when set, else $WANDB_RUN_GROUP, else ``quickstart-<folder>-<id>`` made once
    and kept in ``OUT/wandb_group``, so a resumed quickstart logs into the same group."""
    import os
    import secrets

    group = cfg.evaluate.wandb.group or cfg.train.wandb.group or os.environ.get("WANDB_RUN_GROUP")
    path = out / WANDB_GROUP_FILE
    if not group:
        group = path.read_text().strip() if path.exists() else ""
        group = group or f"quickstart-{out.resolve().name}-{secrets.token_hex(3)}"
        path.write_text(group + "\n")
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, wandb=dataclasses.replace(cfg.train.wandb, group=group)),
        evaluate=dataclasses.replace(cfg.evaluate, wandb=dataclasses.replace(cfg.evaluate.wandb, group=group)),
    )


def _timed(seconds: dict[str, float], name: str, fn: Any, *args: Any) -> Any:
    """`fn(*args)` as stage `name`: its wall-clock seconds are printed and stored in `seconds`."""
    print(f"\n== quickstart: {name}", flush=True)
    t = time.perf_counter()
    out = fn(*args)
    seconds[name] = round(time.perf_counter() - t, 1)
    print(f"== {name}: {seconds[name]:.1f} s", flush=True)
    return out


def _train_one(tcfg: train_mod.TrainConfig) -> tuple[dict[str, Any], float]:
    """One training run (in this process or a worker's); returns its result and wall-clock seconds."""
    t = time.perf_counter()
    r = train_mod.run(tcfg)
    r["eval_curve"] = [[h["step"], h.get("brier_all")] for h in r.pop("eval_history")]
    return r, round(time.perf_counter() - t, 1)


def _train_all(cfg: QuickstartConfig, jobs: dict[str, train_mod.TrainConfig]) -> dict[str, tuple[dict, float]]:
    """Every training run of the quickstart: one after another, or `train_workers` at a time in spawned
    processes of one thread each (small models train faster two at a time than with two threads each)."""
    if cfg.train_workers == 1 or len(jobs) == 1:
        return {key: _train_one(tcfg) for key, tcfg in jobs.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    one_thread = {k: dataclasses.replace(t, threads=1) for k, t in jobs.items()}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(cfg.train_workers, len(jobs)), mp_context=ctx) as pool:
        futures = {key: pool.submit(_train_one, tcfg) for key, tcfg in one_thread.items()}
        return {key: f.result() for key, f in futures.items()}


# ------------------------------------------------------------------------------------------ run
def run(cfg: QuickstartConfig) -> dict[str, Any]:
    """Run the loop; returns metrics.json's dict (with its ``quickstart`` section)."""
    import torch

    from ..policies import default_device, load_policy
    from ..tracking import build_logger
    from ..value import load_value_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    fresh = not out.exists() or not any(out.iterdir())
    save_resolved_config(cfg, out)
    cfg = with_wandb_group(cfg, out)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    traces_dir = out / "traces"

    # 1. collect
    _timed(
        seconds,
        "collect",
        collect.run,
        dataclasses.replace(cfg.collect, **cfg.load_fields(), out=str(traces_dir), model=cfg.policy),
    )
    traces = load_traces(traces_dir)

    # 2. held-out prefixes, labelled by MC (the split is the one training uses)
    full, short, n_train_prompts, n_held_prompts = heldout_selection(
        traces, cfg.train.heldout_fraction, cfg.train.split_seed, cfg.label_traces_per_prompt, cfg.label_max_traces
    )
    if not full:
        raise ConfigError("quickstart: no held-out prompts; raise num_prompts or train.heldout_fraction")
    held_dir = save_subset(traces, full, out / "heldout_traces")
    short_dir = save_subset(traces, short, out / "short_traces")
    # the labels record the split training uses, so label keeps exactly the held-out traces chosen here
    lcfg = dataclasses.replace(
        cfg.label,
        **cfg.load_fields(),
        model=cfg.policy,
        temperature=cfg.collect.temperature,
        heldout_fraction=cfg.train.heldout_fraction,
        split_seed=cfg.train.split_seed,
    )
    _timed(seconds, "label", label.run, dataclasses.replace(lcfg, traces=str(held_dir), out=str(out / "labels")))
    _timed(
        seconds,
        "label short",
        label.run,
        dataclasses.replace(
            lcfg,
            traces=str(short_dir),
            out=str(out / "labels_short"),
            positions=f"short:{cfg.short_k}",
            samples=cfg.short_samples,
            seed=cfg.label.seed + 1,
        ),
    )

    # 3. train every value model on the training prompts (and `learned` with further seeds)
    names = list(cfg.value_models)
    jobs = {(name, 0): cfg.train_config(name, out, 0, traces_dir) for name in names}
    jobs.update({(names[0], s): cfg.train_config(names[0], out, s, traces_dir) for s in range(1, cfg.seeds)})
    trained = _timed(seconds, "train", _train_all, cfg, jobs)
    # (step, held-out Brier) of every held-out evaluation is in each result's eval_curve (quality verdict)
    train_results = {name: trained[(name, 0)][0] for name in names}
    for (name, s), (_, sec) in trained.items():
        seconds[f"train {name}" + (f" seed {s}" if s else "")] = sec

    # 4. evaluate on the held-out prefixes, then the short-prefix study and the forking tokens
    ecfg = dataclasses.replace(cfg.evaluate, **cfg.load_fields(), out=str(out))

    def evaluate_all() -> tuple[Any, dict[str, Any], Any]:
        device = ecfg.device or str(default_device())
        load = ecfg.load_options()
        policy, tok = load_policy(cfg.policy, ecfg.dtype, device, load)
        models = {k: load_value_model(train_results[k]["checkpoint"], device=device, options=load) for k in names}
        primary = models[names[0]]
        extra = {**ESTIMATORS, **{f"learned_{k}": value_model_estimator(models[k]) for k in names[1:]}}
        # the primary checkpoint's split record decides which prompts are held out
        run_cfg = dataclasses.replace(ecfg, split_record=str(train_results[names[0]]["checkpoint"]))
        held = load_traces(held_dir)
        extra.update(oracle_estimators(run_cfg, traces))  # the step-label oracle, fit on the training prompts
        with torch.no_grad():
            result = evaluate_prefixes(
                held,
                load_labels(out / "labels"),
                value_model=primary,
                policy=policy,
                tokenizer=tok,
                config=run_cfg,
                estimators=extra,
                mc_cost=read_mc_cost(out / "labels"),
            )
            short_res = short_prefix_study(
                load_traces(short_dir),
                load_labels(out / "labels_short"),
                cfg.short_k,
                primary,
                policy,
                tok,
                run_cfg,
                extra,
            )
        # forks are re-tested on fresh samples: the labels' sampling with seed label.seed + 2 (the short study used + 1)
        fork_labeller = label.labeller_for(held, dataclasses.replace(lcfg, seed=cfg.label.seed + 2), policy, tok)
        forks = largest_jumps(
            result,
            cfg.forks,
            tok,
            labeller=fork_labeller,
            refs={r.trace_id: r for r in label.trace_refs(held)},
            samples=cfg.fork_samples,
        )
        # seed 0 is `primary`, already in `result`; the further seeds are loaded and predicted here
        seed_models = {
            s: load_value_model(trained[(names[0], s)][0]["checkpoint"], device=device, options=load)
            for s in range(1, cfg.seeds)
        }
        with torch.no_grad():
            seeds = seed_spread(result, seed_models, result.metrics["mc"]["noise_ceiling"].get("spearman"))
        diagnosis = error_diagnosis(result)
        q = {
            "config": config_to_dict(cfg),
            "collected_traces": len(traces),
            "policy_accuracy": float(np.asarray(traces["outcome"], dtype=np.float64).mean()),
            "train_prompts": n_train_prompts,
            "heldout_prompts": n_held_prompts,
            "labelled_heldout_traces": len(full),
            "short": short_res,
            "short_samples": cfg.short_samples,
            "short_estimators": [
                n for n in ("learned", *extra, "mellowmax", "logsumexp") if n in result.estimator_info
            ],
            "forks": forks,
            "train": train_results,
            "recipes": {k: dict(v) for k, v in cfg.value_models.items()},
            "seeds": seeds,
            "diagnosis": diagnosis,
            "quality": quality_verdict(
                result.metrics, train_results, int(train_results[names[0]].get("train_traces", 0)), diagnosis
            ),
        }
        return result, q, tok

    result, q, tok = _timed(seconds, "evaluate", evaluate_all)
    alt_metrics, alt_sections = {}, []
    if cfg.alternatives:  # values of alternatives: studies/alternatives.py
        from ..studies.alternatives import run_alternatives

        ckpts = [train_results[n]["checkpoint"] for n in names]
        alt_metrics, alt_sections = run_alternatives(
            cfg.actions,
            cfg.advantages,
            str(cfg.policy),
            ckpts,
            held_dir,
            out / "labels",
            out,
            cfg.load_fields(),
            lambda name, fn, c: _timed(seconds, name, fn, c),
        )
    q["seconds"] = {**seconds, "total": round(time.perf_counter() - t0, 1)}
    q["fresh_run"] = fresh
    metrics = result.metrics
    metrics["policy"] = cfg.policy
    metrics["checkpoint"] = train_results[names[0]]["checkpoint"]
    metrics["traces_finish"] = traces_finish_summary(traces)
    metrics["quickstart"] = q
    metrics.update(alt_metrics)  # alternatives=true: the ``actions`` and ``advantages`` sections
    metrics["rank_equivalent"] = rank_equivalent_groups(result)  # the sections below merge these too
    logger = build_logger(ecfg.report_to, out, config_to_dict(cfg), ecfg.run_name, ecfg.wandb, job_type="evaluate")
    try:
        write_report(
            result,
            out,
            tokenizer=tok,
            logger=logger,
            config=ecfg,
            traces=[r["trace_index"] for r in q["forks"]],
            forks={r["trace_index"]: r["token_index"] for r in q["forks"]},
            sections=[
                render_quickstart_section(q, metrics),
                render_frontier_section(cfg.frontier_table, out),
                *alt_sections,
            ],
        )
    finally:
        logger.finish()
    print("\n" + summary_table(q, metrics))
    print(f"\nresults: {out}/report.md, metrics.json, heatmap.html, value_curves.png")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue quickstart``; returns the exit status."""
    run(parse_config(QuickstartConfig, list(argv) if argv is not None else None, prog="prefixvalue quickstart"))
    return 0
