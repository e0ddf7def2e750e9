"""``prefixvalue quickstart``: the whole loop on one config, collect → label → train → evaluate.

    prefixvalue quickstart --config recipes/quickstart.yaml           # what `make quickstart` runs
    prefixvalue quickstart --config recipes/quickstart.yaml num_prompts=8000 train.max_steps=4000

1. collect ``samples`` traces for each of ``num_prompts`` prompts (``OUT/traces``);
2. split by prompt as training does and label held-out traces by Monte Carlo at ``label_positions``
   (``OUT/labels``), plus one trace per held-out prompt at ``short:K`` (``OUT/labels_short``);
3. train each value model in ``value_models`` on the training prompts (``OUT/train_<kind>``);
4. evaluate on the held-out prefixes (the first kind is ``learned``, the others ``learned_<kind>``),
   then the short-prefix study, the forking tokens and the quality goal (`prefixvalue.evaluation.analysis`).

Everything lands in ``OUT``: metrics.json (with a ``quickstart`` section), report.md, plots,
heatmap.html. Every stage resumes: run the same command again after an interruption. Record a fresh
run's wall clock with ``python benchmarks/record_quickstart.py OUT``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, config_to_dict, field, parse_config, save_resolved_config
from ..data import load_labels, load_traces, split_by_prompt
from ..evaluation.analysis import largest_jumps, quality_verdict, short_prefix_study
from ..evaluation.estimators import ESTIMATORS, value_model_estimator
from ..evaluation.report import render_quickstart_section, summary_table, write_report
from ..evaluation.scoring import evaluate_prefixes, read_mc_cost
from ..value import VALUE_MODELS
from . import collect, label
from . import train as train_mod
from .evaluate import EvaluateConfig


@dataclass
class QuickstartConfig:
    """The whole loop on the embedded default: collect → label → train → evaluate into one folder."""

    out: str = field("runs/quickstart", help="run folder (traces, labels, train_<kind>, report)")
    policy: str | None = field(None, help="policy: local folder or hub name (required)")
    task: str = field("arith", help="task name in prefixvalue.tasks.TASKS")
    task_args: dict = field(default_factory=dict, help="task keyword arguments (YAML mapping)")
    split: str = field("test", help="task split the prompts come from")
    num_prompts: int = field(2000, help="prompts collected")
    samples: int = field(8, help="completions sampled per prompt")
    max_new_tokens: int = field(64, help="longest completion, in tokens")
    temperature: float = field(1.0, help="sampling temperature of collection and labelling")
    seed: int = field(0, help="seed of collection (labelling uses seed + 1 and seed + 2)")
    batch_rows: int = field(256, help="most sequences decoded together")
    label_positions: str = field("all", help="positions labelled on held-out traces: all | stride:K | steps")
    label_samples: int = field(32, help="MC continuations per labelled held-out prefix")
    label_traces_per_prompt: int = field(1, help="held-out traces labelled per held-out prompt")
    label_max_traces: int = field(200, help="most held-out traces labelled")
    short_k: int = field(2, help="short-prefix study: positions short:1 .. short:K, one trace per held-out prompt")
    short_samples: int = field(64, help="MC continuations per short prefix")
    value_models: list[str] = field(default_factory=lambda: list(VALUE_MODELS),
                                    help="value models trained; the first is `learned` in the report")
    train: train_mod.TrainConfig = field(default_factory=train_mod.TrainConfig,
                                         help="training options (traces, policy, output_dir, value_model are set here)")
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig, help="evaluation options (out is set here)")
    forks: int = field(3, help="traces with the largest MC value jumps shown with their forking tokens")
    threads: int = field(0, help="torch CPU threads (0: torch's default)")

    def __post_init__(self) -> None:
        if not self.policy:
            raise ConfigError("quickstart: policy is required (policy=NAME_OR_PATH, as in recipes/quickstart.yaml)")
        for name in ("num_prompts", "samples", "label_samples", "label_traces_per_prompt", "label_max_traces",
                     "short_samples", "batch_rows", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"quickstart: {name} must be >= 1, got {getattr(self, name)}")
        if self.short_k < 1 or self.forks < 0:
            raise ConfigError("quickstart: short_k >= 1 and forks >= 0")
        if self.label_positions.split(":")[0] in ("short", "adaptive"):
            raise ConfigError("quickstart: label_positions must be all, stride:K or steps (short runs separately)")
        bad = [k for k in self.value_models if k not in VALUE_MODELS]
        if not self.value_models or bad or len(set(self.value_models)) != len(self.value_models):
            raise ConfigError(f"quickstart: value_models must be distinct names among {', '.join(VALUE_MODELS)}; "
                              f"got {self.value_models}")


# ------------------------------------------------------------------------------------- stages
def _timed(seconds: dict[str, float], name: str, fn: Any, *args: Any) -> Any:
    """`fn(*args)` as stage `name`: its wall-clock seconds are printed and stored in `seconds`."""
    print(f"\n== quickstart: {name}", flush=True)
    t = time.perf_counter()
    out = fn(*args)
    seconds[name] = round(time.perf_counter() - t, 1)
    print(f"== {name}: {seconds[name]:.1f} s", flush=True)
    return out


def _save_subset(ds: Any, indices: list[int], path: Path) -> Path:
    """Write rows `indices` of `ds` to `path` unless the same trace ids are already there."""
    sub = ds.select(indices)
    if path.exists():
        try:
            if load_traces(path)["trace_id"] == sub["trace_id"]:
                return path
        except (OSError, ValueError):  # an incomplete folder from an interrupted run: rewrite it
            pass
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sub.save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return path


def heldout_subsets(traces: Any, cfg: QuickstartConfig) -> tuple[list[int], list[int], int, int]:
    """Indices of the held-out traces to label at every position (up to `label_traces_per_prompt`
    per prompt, at most `label_max_traces`) and of one trace per held-out prompt for short:K;
    also the numbers of training and held-out prompts."""
    train_ds, held = split_by_prompt(traces, cfg.train.heldout_fraction, cfg.train.split_seed)
    held_ids = set(held["trace_id"])
    per_prompt: dict[str, int] = {}
    full, short = [], []
    for i, (tid, pid) in enumerate(zip(traces["trace_id"], traces["prompt_id"])):
        if tid not in held_ids:
            continue
        seen = per_prompt.get(pid, 0)
        if seen == 0:
            short.append(i)
        if seen < cfg.label_traces_per_prompt and len(full) < cfg.label_max_traces:
            full.append(i)
        per_prompt[pid] = seen + 1
    return full, short, len(set(train_ds["prompt_id"])), len(per_prompt)


def _train(cfg: QuickstartConfig, kind: str, traces_dir: Path, out: Path) -> dict[str, Any]:
    tcfg = dataclasses.replace(cfg.train, traces=str(traces_dir), policy=cfg.policy,
                               output_dir=str(out / f"train_{kind}"),
                               value_model=dataclasses.replace(cfg.train.value_model, kind=kind))
    return train_mod.run(tcfg)


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
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    traces_dir = out / "traces"

    # 1. collect
    _timed(seconds, "collect", collect.run, collect.CollectConfig(
        out=str(traces_dir), model=cfg.policy, task=cfg.task, task_args=dict(cfg.task_args), split=cfg.split,
        num_prompts=cfg.num_prompts, samples=cfg.samples, seed=cfg.seed, temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens, batch_rows=cfg.batch_rows))
    traces = load_traces(traces_dir)

    # 2. held-out prefixes, labelled by MC (the split is the one training uses)
    full, short, n_train_prompts, n_held_prompts = heldout_subsets(traces, cfg)
    if not full:
        raise ConfigError("quickstart: no held-out prompts; raise num_prompts or train.heldout_fraction")
    held_dir = _save_subset(traces, full, out / "heldout_traces")
    short_dir = _save_subset(traces, short, out / "short_traces")
    base = {"model": cfg.policy, "batch_rows": cfg.batch_rows, "temperature": cfg.temperature}
    _timed(seconds, "label", label.run, label.LabelConfig(
        traces=str(held_dir), out=str(out / "labels"), positions=cfg.label_positions, samples=cfg.label_samples,
        seed=cfg.seed + 1, **base))
    _timed(seconds, "label short", label.run, label.LabelConfig(
        traces=str(short_dir), out=str(out / "labels_short"), positions=f"short:{cfg.short_k}",
        samples=cfg.short_samples, seed=cfg.seed + 2, **base))

    # 3. train every value model on the training prompts
    train_results = {}
    for kind in cfg.value_models:
        r = _timed(seconds, f"train {kind}", _train, cfg, kind, traces_dir, out)
        # (step, held-out Brier) of every held-out evaluation, for the quality verdict
        r["eval_curve"] = [[h["step"], h.get("brier_all")] for h in r.pop("eval_history")]
        train_results[kind] = r

    # 4. evaluate on the held-out prefixes, then the short-prefix study and the forking tokens
    ecfg = dataclasses.replace(cfg.evaluate, out=str(out))

    def evaluate_all() -> tuple[Any, dict[str, Any], Any]:
        device = ecfg.device or str(default_device())
        policy, tok = load_policy(cfg.policy, ecfg.dtype, device)
        models = {k: load_value_model(train_results[k]["checkpoint"], device=device) for k in cfg.value_models}
        primary = models[cfg.value_models[0]]
        extra = {**ESTIMATORS, **{f"learned_{k}": value_model_estimator(models[k]) for k in cfg.value_models[1:]}}
        with torch.no_grad():
            result = evaluate_prefixes(load_traces(held_dir), load_labels(out / "labels"), value_model=primary,
                                       policy=policy, tokenizer=tok, config=ecfg, estimators=extra,
                                       mc_cost=read_mc_cost(out / "labels"))
            short_res = short_prefix_study(load_traces(short_dir), load_labels(out / "labels_short"), cfg.short_k,
                                           primary, policy, tok, ecfg, extra)
        forks = largest_jumps(result, cfg.forks, tok)
        q = {"config": config_to_dict(cfg), "collected_traces": len(traces),
             "policy_accuracy": float(np.asarray(traces["outcome"], dtype=np.float64).mean()),
             "train_prompts": n_train_prompts, "heldout_prompts": n_held_prompts,
             "labelled_heldout_traces": len(full), "short": short_res, "short_samples": cfg.short_samples,
             "short_estimators": [n for n in ("learned", *extra, "mellowmax", "logsumexp") if n in result.estimator_info],
             "forks": forks, "train": train_results,
             "quality": quality_verdict(result.metrics, train_results,
                                        int(train_results[cfg.value_models[0]].get("train_traces", 0)))}
        return result, q, tok

    result, q, tok = _timed(seconds, "evaluate", evaluate_all)
    q["seconds"] = {**seconds, "total": round(time.perf_counter() - t0, 1)}
    q["fresh_run"] = fresh
    metrics = result.metrics
    metrics["policy"] = cfg.policy
    metrics["checkpoint"] = train_results[cfg.value_models[0]]["checkpoint"]
    metrics["quickstart"] = q
    logger = build_logger(ecfg.report_to, out, config=config_to_dict(cfg), run_name=ecfg.run_name)
    try:
        write_report(result, out, tokenizer=tok, logger=logger, config=ecfg,
                     traces=[r["trace_index"] for r in q["forks"]],
                     forks={r["trace_index"]: r["token_index"] for r in q["forks"]},
                     sections=[render_quickstart_section(q, metrics)])
    finally:
        logger.finish()
    print("\n" + summary_table(q, metrics))
    print(f"\nresults: {out}/report.md, metrics.json, heatmap.html, value_curves.png")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue quickstart``; returns the exit status."""
    run(parse_config(QuickstartConfig, list(argv) if argv is not None else None, prog="prefixvalue quickstart"))
    return 0
