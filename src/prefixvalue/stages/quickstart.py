"""``prefixvalue quickstart``: the whole loop on one config, collect → label → train → evaluate.

    prefixvalue quickstart --config recipes/quickstart.yaml           # what `make quickstart` runs
    prefixvalue quickstart --config recipes/quickstart.yaml num_prompts=8000 train.max_steps=4000

1. collect ``samples`` traces for each of ``num_prompts`` prompts (``OUT/traces``);
2. split by prompt exactly as training does (``train.heldout_fraction``, ``train.split_seed``) and
   label held-out traces by Monte Carlo at ``label_positions`` (``OUT/labels``), plus one trace per
   held-out prompt at ``short:K`` with more samples (``OUT/labels_short``, seed 000's question);
3. train each value model in ``value_models`` on the training prompts (``OUT/train_<kind>``);
4. evaluate on the held-out prefixes: learned values (the first kind is ``learned``, the others
   ``learned_<kind>``) vs MellowMax vs log-sum-exp vs constant, step verification, cost; find the
   traces with the largest MC value jumps and name their forking tokens (seed 004's question).

Everything lands in ``OUT``: metrics.json (with a ``quickstart`` section), report.md, plots,
heatmap.html. Every stage resumes: run the same command again after an interruption.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, config_to_dict, field, parse_config, save_resolved_config
from ..data import load_labels, load_traces, split_by_prompt
from . import collect, label
from . import train as train_mod
from .evaluate import (
    ESTIMATORS,
    Estimator,
    EstimatorInputs,
    EvalResult,
    EvaluateConfig,
    evaluate_prefixes,
    read_mc_cost,
)

#: share of the noise ceiling the learned value should reach (the issue's quality goal)
CEILING_GOAL = 0.8


@dataclass
class QuickstartConfig:
    """The whole loop on the embedded default: collect → label → train → evaluate into one folder."""

    out: str = field("runs/quickstart", help="run folder (traces, labels, train_<kind>, report)")
    policy: str = field("data/policies/arith-tiny", help="policy: local folder or hub name")
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
    short_k: int = field(2, help="seed 000 redo: positions short:1 .. short:K, one trace per held-out prompt")
    short_samples: int = field(64, help="MC continuations per short prefix")
    value_models: list[str] = field(default_factory=lambda: ["implicit", "head"],
                                    help="value models trained; the first is `learned` in the report")
    train: train_mod.TrainConfig = field(default_factory=train_mod.TrainConfig,
                                         help="training options (traces, policy, output_dir, value_model are set here)")
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig, help="evaluation options (out is set here)")
    forks: int = field(3, help="traces with the largest MC value jumps shown with their forking tokens")
    threads: int = field(0, help="torch CPU threads (0: torch's default)")
    record_benchmark: bool = field(True, help="write quickstart_seconds to benchmarks/results.json (fresh runs)")

    def __post_init__(self) -> None:
        for name in ("num_prompts", "samples", "label_samples", "label_traces_per_prompt", "label_max_traces",
                     "short_samples", "batch_rows", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"quickstart: {name} must be >= 1, got {getattr(self, name)}")
        if self.short_k < 1 or self.forks < 0:
            raise ConfigError("quickstart: short_k >= 1 and forks >= 0")
        if self.label_positions.split(":")[0] in ("short", "adaptive"):
            raise ConfigError("quickstart: label_positions must be all, stride:K or steps (short runs separately)")
        bad = [k for k in self.value_models if k not in ("implicit", "head")]
        if not self.value_models or bad or len(set(self.value_models)) != len(self.value_models):
            raise ConfigError(f"quickstart: value_models must be distinct names among implicit, head; got {self.value_models}")


# ------------------------------------------------------------------------------------- stages
class _Clock:
    """Wall-clock seconds per stage, printed as each ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def stage(self, name: str, fn: Any, *args: Any) -> Any:
        print(f"\n== quickstart: {name}", flush=True)
        t = time.perf_counter()
        out = fn(*args)
        self.seconds[name] = round(time.perf_counter() - t, 1)
        print(f"== {name}: {self.seconds[name]:.1f} s", flush=True)
        return out

    def total(self) -> float:
        return round(time.perf_counter() - self.t0, 1)


def _save_subset(ds: Any, indices: list[int], path: Path) -> Path:
    """Write rows `indices` of `ds` to `path` unless the same trace ids are already there."""
    sub = ds.select(indices)
    if path.exists():
        try:
            if load_traces(path)["trace_id"] == sub["trace_id"]:
                return path
        except Exception:  # an incomplete folder from an interrupted run: rewrite it
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


# ------------------------------------------------------------------------------------ analysis
def largest_jumps(result: EvalResult, k: int, tokenizer: Any = None) -> list[dict[str, Any]]:
    """The `k` traces whose MC curve has the largest jump between neighbouring labelled prefixes.

    For each trace the jump is the largest |mean(b) - mean(a)| over neighbouring labelled positions
    a < b; when b = a + 1 the forking token is completion token a (appending it moves the success
    rate). `separated` says whether the two Wilson intervals are disjoint.
    """
    rows = []
    for i, (t, mc) in enumerate(zip(result.traces, result.mc)):
        pos, mean = np.asarray(mc["position"]), np.asarray(mc["mean"])
        if len(pos) < 2:
            continue
        order = np.argsort(pos)
        pos, mean, lo, hi = pos[order], mean[order], np.asarray(mc["ci_low"])[order], np.asarray(mc["ci_high"])[order]
        d = np.diff(mean)
        j = int(np.argmax(np.abs(d)))
        a, b = int(pos[j]), int(pos[j + 1])
        token_ids = t.completion_ids[a:b]
        text = tokenizer.decode(token_ids) if tokenizer is not None else str(token_ids)
        cur = result.curves[i]
        row = {"trace_index": i, "trace_id": t.trace_id, "prompt_id": t.prompt_id, "outcome": t.outcome,
               "from_position": a, "to_position": b, "token_index": a, "token_ids": token_ids, "token": text,
               "jump": float(d[j]), "mc_before": float(mean[j]), "mc_after": float(mean[j + 1]),
               "ci_before": [float(lo[j]), float(hi[j])], "ci_after": [float(lo[j + 1]), float(hi[j + 1])],
               "separated": bool(hi[j] < lo[j + 1] or hi[j + 1] < lo[j]),
               "prompt": t.prompt, "completion": t.completion}
        for name in ("learned", "mellowmax"):
            if name in cur:
                row[f"{name}_before"], row[f"{name}_after"] = float(cur[name][a]), float(cur[name][b])
        rows.append(row)
    rows.sort(key=lambda r: (-abs(r["jump"]), r["trace_id"]))
    return rows[:k]


def _corr_summary(m: dict[str, Any]) -> dict[str, Any]:
    return {c: {"value": m[c].get("value"), "ci": m[c].get("ci")} for c in ("spearman", "pearson")}


def short_prefix_study(traces: Any, labels: Any, k_max: int, value_model: Any, policy: Any, tokenizer: Any,
                       ecfg: EvaluateConfig, extra: dict[str, Estimator]) -> dict[str, Any]:
    """Seed 000 redone: for K = 1..k_max, soft and learned values vs MC success on prefixes of at
    most K completion tokens (positions 0..K, one trace per prompt), with bootstrap CIs."""
    rows = [dict(r) for r in labels]
    out: dict[str, Any] = {}
    for k in range(1, k_max + 1):
        sub = [r for r in rows if int(r["position"]) <= k]
        res = evaluate_prefixes(traces, sub, value_model=value_model, policy=policy, tokenizer=tokenizer,
                                config=ecfg, estimators=extra)
        mc = res.metrics["mc"]
        out[f"short:{k}"] = {
            "n_prefixes": res.metrics["n_prefixes"], "n_traces": res.metrics["n_traces"],
            "samples_per_prefix": mc["samples_per_prefix"], "label_mean": mc["label_mean"],
            "label_variance": mc["label_variance"], "saturated": mc["saturated"],
            "noise_ceiling_spearman": mc["noise_ceiling"].get("spearman"),
            "estimators": {n: _corr_summary(m) for n, m in res.metrics["estimators"].items()},
        }
    return out


def quality_verdict(metrics: dict[str, Any], train_results: dict[str, dict[str, Any]],
                    n_train_traces: int) -> dict[str, Any]:
    """The quality goal (learned Spearman >= 80% of the noise ceiling, and above MellowMax), measured,
    with what limits it when it is missed."""
    ests = metrics["estimators"]
    ceiling = metrics["mc"]["noise_ceiling"].get("spearman")
    learned = ests.get("learned", {}).get("spearman", {}).get("value")
    mellow = ests.get("mellowmax", {}).get("spearman", {}).get("value")
    frac = learned / ceiling if (learned is not None and ceiling) else None
    reached = frac is not None and frac >= CEILING_GOAL
    beats = learned is not None and mellow is not None and learned > mellow
    verdict: dict[str, Any] = {"goal": f"learned Spearman >= {CEILING_GOAL:.0%} of the noise ceiling and > MellowMax",
                               "learned_spearman": learned, "noise_ceiling": ceiling, "fraction_of_ceiling": frac,
                               "mellowmax_spearman": mellow, "reaches_ceiling_goal": reached,
                               "beats_mellowmax": beats, "met": bool(reached and beats)}
    for name, m in ests.items():
        if name.startswith("learned_"):
            v = m["spearman"].get("value")
            verdict[f"{name}_fraction_of_ceiling"] = v / ceiling if (v is not None and ceiling) else None
    limits = []
    if ceiling is not None and ceiling < 0.6:
        limits.append(f"label noise: the split-half noise ceiling is only {ceiling:.2f}; more MC samples per "
                      "prefix (label_samples) raise it")
    if metrics["mc"].get("saturated"):
        limits.append("labels are saturated (variance <= 0.05): the held-out prefixes barely differ in value")
    for kind, r in train_results.items():
        tl, hl = r.get("train_loss"), r.get("loss")
        if tl is not None and hl is not None and hl > tl + 0.03:
            limits.append(f"overfitting ({kind}): held-out loss {hl:.3f} vs training loss {tl:.3f} at the end; "
                          "more traces per parameter (num_prompts) or a smaller LoRA rank would help")
        curve = r.get("eval_curve") or []
        if len(curve) >= 2 and curve[-1][1] is not None and curve[-2][1] is not None and curve[-1][1] < curve[-2][1] - 0.002:
            limits.append(f"training ({kind}): held-out Brier still fell by {curve[-2][1] - curve[-1][1]:.4f} over "
                          "the last evaluation interval; more steps (train.max_steps) or more traces would help")
    if not verdict["met"]:
        limits.append(f"data: {n_train_traces} training traces of one tiny policy; the value model sees each "
                      "outcome once, so the prefix signal is 1-bit per trace. Scaling num_prompts (and "
                      "train.max_steps with it) 4-10x is the first lever, then a larger policy on a GPU")
    verdict["limits"] = limits if not verdict["met"] else []
    return verdict


def _eval_curve(train_dir: Path) -> list[list[float | None]]:
    """(step, held-out Brier) pairs logged during training (metrics.jsonl, key eval/brier_all)."""
    path = train_dir / "metrics.jsonl"
    curve = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "eval/brier_all" in rec:
                curve.append([rec.get("step"), rec["eval/brier_all"]])
    return curve


# ---------------------------------------------------------------------------------- rendering
def _f(v: Any, d: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{d}f}"


def _ci(c: dict[str, Any]) -> str:
    if c.get("value") is None:
        return "n/a"
    ci = c.get("ci")
    return f"{c['value']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else f"{c['value']:.3f}"


def render_quickstart_section(q: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The quickstart's own report section: answers to the seeds' questions, goal, cost, timings."""
    v = q["quality"]
    lines = ["## Quickstart: the questions and the answers measured here", "",
             f"{q['train_prompts']} training prompts / {q['heldout_prompts']} held-out prompts "
             f"({q['collected_traces']} traces, policy accuracy {q['policy_accuracy']:.3f}); "
             f"{metrics['n_prefixes']} held-out prefixes of {metrics['n_traces']} traces labelled with "
             f"{metrics['mc']['samples_per_prefix']} MC samples each.", "",
             "### Quality goal", "",
             f"- goal: {v['goal']}",
             f"- learned Spearman {_f(v['learned_spearman'])} vs noise ceiling {_f(v['noise_ceiling'])}: "
             f"**{_f(v['fraction_of_ceiling'], 2)}** of the ceiling; MellowMax {_f(v['mellowmax_spearman'])}",
             f"- met: **{v['met']}** (ceiling goal {v['reaches_ceiling_goal']}, beats MellowMax {v['beats_mellowmax']})"]
    for key, val in v.items():
        if key.endswith("_fraction_of_ceiling") and key != "fraction_of_ceiling":
            lines.append(f"- {key.replace('_fraction_of_ceiling', '')}: {_f(val, 2)} of the ceiling")
    if v["limits"]:
        lines += ["- what limits it:", *[f"  - {x}" for x in v["limits"]]]
    if metrics["mc"]["label_variance"] <= 0.05:
        lines.append(f"- **labels are saturated**: variance {metrics['mc']['label_variance']:.4f} <= 0.05")
    lines += ["", "### Seed 000 redone: short prefixes, soft values vs MC success", "",
              "| prefixes | n | label variance | noise ceiling | " + " | ".join(q["short_estimators"]) + " |",
              "|---|---|---|---|" + "---|" * len(q["short_estimators"])]
    for key, s in q["short"].items():
        cells = [_ci(s["estimators"][n]["spearman"]) if n in s["estimators"] else "n/a" for n in q["short_estimators"]]
        lines.append(f"| {key} (positions 0..{key.split(':')[1]}) | {s['n_prefixes']} | {_f(s['label_variance'], 4)} | "
                     f"{_f(s['noise_ceiling_spearman'])} | " + " | ".join(cells) + " |")
    lines += ["", "Spearman with bootstrap 95% CIs; one trace per held-out prompt, "
              f"{q['short_samples']} MC samples per prefix.", "",
              "### Seed 004: the largest MC value jumps and their forking tokens", "",
              "| trace | forking token | at token | MC before → after | 95% CIs disjoint | learned before → after |",
              "|---|---|---|---|---|---|"]
    for r in q["forks"]:
        lines.append(f"| {r['trace_id']} | `{r['token']!r}` | {r['token_index']} | {r['mc_before']:.2f} → "
                     f"{r['mc_after']:.2f} | {r['separated']} | {_f(r.get('learned_before'), 2)} → "
                     f"{_f(r.get('learned_after'), 2)} |")
    lines += ["", "They are drawn first in value_curves.png and heatmap.html (the forking token outlined).", ""]
    sv = metrics.get("step_verification") or {}
    cost = metrics.get("cost") or {}
    lines += ["### Step verification and cost", "",
              f"- step verification F1 (learned TD step scores, threshold on a calibration split): "
              f"**{_f(sv.get('f1'))}**" + (f"; process-level {_f(sv['process_level'].get('f1'))}"
                                          if sv.get("process_level") else ""),
              f"- MC is **{_f(cost.get('ratio_mc_to_value'), 1)}x** the value model's tokens for the same prefixes "
              f"({_f(cost.get('mc_generated_tokens'), 0)} generated vs {_f(cost.get('value_forward_tokens'), 0)} "
              "forward tokens)",
              f"- wall clock: {q['seconds']['total']:.0f} s ("
              + ", ".join(f"{k} {s:.0f} s" for k, s in q["seconds"].items() if k != "total") + ")", ""]
    return "\n".join(lines)


def summary_table(q: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The table printed at the end of the run."""
    ceiling = metrics["mc"]["noise_ceiling"].get("spearman")
    lines = [f"held-out prefixes: {metrics['n_prefixes']} ({metrics['n_traces']} traces), "
             f"MC label variance {metrics['mc']['label_variance']:.3f}, noise ceiling {_f(ceiling)}",
             f"{'estimator':<22}{'Spearman [95% CI]':<26}{'Pearson':>9}{'Brier':>8}{'ECE':>8}"]
    for name, m in metrics["estimators"].items():
        if name.startswith("mellowmax_") or name.startswith("logsumexp_"):
            continue
        lines.append(f"{name:<22}{_ci(m['spearman']):<26}{_f(m['pearson'].get('value')):>9}"
                     f"{_f(m.get('brier')):>8}{_f(m.get('ece')):>8}")
    v = q["quality"]
    sv = metrics.get("step_verification") or {}
    lines += [f"goal (>= {CEILING_GOAL:.0%} of ceiling and > MellowMax): met={v['met']} "
              f"(learned at {_f(v['fraction_of_ceiling'], 2)} of ceiling)",
              f"step verification F1: {_f(sv.get('f1'))}   MC / value-model cost: "
              f"{_f((metrics.get('cost') or {}).get('ratio_mc_to_value'), 1)}x",
              "short prefixes (Spearman with MC): " + "; ".join(
                  f"{k} mellowmax {_ci(s['estimators'].get('mellowmax', {}).get('spearman', {}))}"
                  for k, s in q["short"].items()),
              "forks: " + "; ".join(f"{r['trace_id']} {r['token']!r}@{r['token_index']} "
                                    f"{r['mc_before']:.2f}->{r['mc_after']:.2f}" for r in q["forks"]),
              f"total {q['seconds']['total']:.0f} s"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ run
def _value_estimator(vm: Any, kind: str) -> Estimator:
    def fn(inputs: EstimatorInputs) -> list[np.ndarray]:
        return vm.predict([t.prompt_ids for t in inputs.traces], [t.completion_ids for t in inputs.traces],
                          batch_size=inputs.batch_size)

    return Estimator(fn, probability=True, description=f"checkpoint P̂(s_t) ({kind} value model)")


def run(cfg: QuickstartConfig) -> dict[str, Any]:
    """Run the loop; returns metrics.json's dict (with its ``quickstart`` section)."""
    import torch

    from ..evaluation.report import write_report
    from ..policies import default_device, load_policy
    from ..tracking import build_logger, record_result
    from ..value import load_value_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    fresh = not out.exists() or not any(out.iterdir())
    save_resolved_config(cfg, out)
    clock = _Clock()
    traces_dir = out / "traces"

    # 1. collect
    ccfg = collect.CollectConfig(out=str(traces_dir), model=cfg.policy, task=cfg.task, task_args=dict(cfg.task_args),
                                 split=cfg.split, num_prompts=cfg.num_prompts, samples=cfg.samples, seed=cfg.seed,
                                 temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                 batch_rows=cfg.batch_rows)
    clock.stage("collect", collect.run, ccfg)
    traces = load_traces(traces_dir)

    # 2. held-out prefixes, labelled by MC (the split is the one training uses)
    full, short, n_train_prompts, n_held_prompts = heldout_subsets(traces, cfg)
    if not full:
        raise ConfigError("quickstart: no held-out prompts; raise num_prompts or train.heldout_fraction")
    held_dir = _save_subset(traces, full, out / "heldout_traces")
    short_dir = _save_subset(traces, short, out / "short_traces")
    base = {"model": cfg.policy, "batch_rows": cfg.batch_rows, "temperature": cfg.temperature}
    clock.stage("label", label.run, label.LabelConfig(traces=str(held_dir), out=str(out / "labels"),
                                                      positions=cfg.label_positions, samples=cfg.label_samples,
                                                      seed=cfg.seed + 1, **base))
    clock.stage("label short", label.run, label.LabelConfig(traces=str(short_dir), out=str(out / "labels_short"),
                                                            positions=f"short:{cfg.short_k}",
                                                            samples=cfg.short_samples, seed=cfg.seed + 2, **base))

    # 3. train every value model on the training prompts
    train_results = {}
    for kind in cfg.value_models:
        r = clock.stage(f"train {kind}", _train, cfg, kind, traces_dir, out)
        r["eval_curve"] = _eval_curve(out / f"train_{kind}")
        train_results[kind] = r

    # 4. evaluate on the held-out prefixes
    def evaluate_all() -> dict[str, Any]:
        ecfg = dataclasses.replace(cfg.evaluate, out=str(out))
        device = ecfg.device or str(default_device())
        policy, tok = load_policy(cfg.policy, ecfg.dtype, device)
        models = {k: load_value_model(train_results[k]["checkpoint"], device=device) for k in cfg.value_models}
        primary = models[cfg.value_models[0]]
        extra = {**ESTIMATORS, **{f"learned_{k}": _value_estimator(models[k], k) for k in cfg.value_models[1:]}}
        held, labels = load_traces(held_dir), load_labels(out / "labels")
        with torch.no_grad():
            result = evaluate_prefixes(held, labels, value_model=primary, policy=policy, tokenizer=tok, config=ecfg,
                                       estimators=extra, mc_cost=read_mc_cost(out / "labels"))
            short_res = short_prefix_study(load_traces(short_dir), load_labels(out / "labels_short"), cfg.short_k,
                                           primary, policy, tok, ecfg, extra)
        forks = largest_jumps(result, cfg.forks, tok)
        outcomes = np.asarray(traces["outcome"], dtype=np.float64)
        q = {"config": config_to_dict(cfg), "collected_traces": len(traces), "policy_accuracy": float(outcomes.mean()),
             "train_prompts": n_train_prompts, "heldout_prompts": n_held_prompts,
             "labelled_heldout_traces": len(full), "short": short_res, "short_samples": cfg.short_samples,
             "short_estimators": [n for n in ("learned", *extra, "mellowmax", "logsumexp") if n in result.estimator_info],
             "forks": forks, "train": train_results,
             "quality": quality_verdict(result.metrics, train_results,
                                        int(train_results[cfg.value_models[0]].get("train_traces", 0)))}
        result.metrics["policy"] = cfg.policy
        result.metrics["checkpoint"] = train_results[cfg.value_models[0]]["checkpoint"]
        result.metrics["quickstart"] = q
        logger = build_logger(ecfg.report_to, out, config=config_to_dict(cfg), run_name=ecfg.run_name)
        try:
            write_report(result, out, tokenizer=tok, logger=logger, config=ecfg,
                         traces=[r["trace_index"] for r in forks], forks={r["trace_index"]: r["token_index"] for r in forks})
        finally:
            logger.finish()
        return result.metrics

    metrics = clock.stage("evaluate", evaluate_all)
    q = metrics["quickstart"]
    q["seconds"] = {**clock.seconds, "total": clock.total()}
    q["fresh_run"] = fresh
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    report = (out / "report.md").read_text()
    head, _, rest = report.partition("\n## ")
    (out / "report.md").write_text(head + "\n" + render_quickstart_section(q, metrics) + "\n## " + rest)

    bench = Path("benchmarks") / "results.json"
    if cfg.record_benchmark and fresh and bench.parent.is_dir():
        record_result(bench, "quickstart_seconds", q["seconds"]["total"], unit="s", target="<= 900",
                      stages=q["seconds"], num_prompts=cfg.num_prompts, samples=cfg.samples,
                      labelled_prefixes=metrics["n_prefixes"], config=str(cfg.out))
    elif cfg.record_benchmark and not fresh:
        print("quickstart_seconds not recorded: this run resumed an existing folder (time it from an empty one)")
    print("\n" + summary_table(q, metrics))
    print(f"\nresults: {out}/report.md, metrics.json, heatmap.html, value_curves.png")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue quickstart``; returns the exit status."""
    run(parse_config(QuickstartConfig, list(argv) if argv is not None else None, prog="prefixvalue quickstart"))
    return 0


__all__ = ["QuickstartConfig", "largest_jumps", "main", "quality_verdict", "run", "short_prefix_study"]
