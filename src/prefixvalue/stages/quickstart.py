"""``prefixvalue quickstart``: the whole loop on one config, collect → label → train → evaluate.

    prefixvalue quickstart --config recipes/quickstart.yaml           # what `make quickstart` runs
    prefixvalue quickstart --config recipes/quickstart.yaml collect.num_prompts=8000 train.max_steps=4000

Each stage's ``run`` in turn into the run folder ``OUT``: collect, label held-out (test) and validation traces by
MC (and ``short:K`` test prefixes), train ``value_models``, choose ``learned`` among them on the validation labels
(`evaluation.selection`) and train it with ``seeds`` seeds, then the one evaluator (`evaluation.evaluator`) on the
test labels, read once, and `evaluation.analysis` (docs/design.md, "Choose on validation, report on test"). Nested
keys the quickstart sets are refused (`SETS`). Every stage resumes: run it again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import runfolder
from ..config import (
    ConfigError,
    RawMapping,
    canonical_key,
    config_to_dict,
    field,
    parse_config,
    save_resolved_config,
    with_overrides,
)
from ..data import heldout_selection, load_labels, load_traces, save_subset, traces_finish_summary
from ..evaluation import analysis
from ..evaluation.estimators import ESTIMATORS
from ..evaluation.evaluator import evaluate, load_value_models
from ..evaluation.loop import loop_summary, write_loop_report
from ..evaluation.report import summary_table
from ..evaluation.selection import Choice, choose, choose_estimator, selection_section
from ..loading import ModelLoadConfig
from ..nesting import check_nested, nested
from ..processes import run_jobs
from ..studies import actions, advantages
from ..studies import steer as steer_study
from ..studies.alternatives import SET_BY_ALTERNATIVES, run_alternatives
from ..tracking import WANDB_GROUP_FILE, build_logger, timed, with_wandb_group
from ..value import VALUE_MODELS, ValueEnsemble, value_model_class
from . import collect, label, train
from .evaluate import FOLDER_OUTPUTS, EvaluateConfig

#: the loading options: set once at the top and passed to every stage (refused in a nested config)
LOADING = {f.name: f"the top-level {f.name}" for f in dataclasses.fields(ModelLoadConfig)}
#: the keys of the nested stage configs that the quickstart sets (key → to what): given, they are refused
SETS: dict[str, dict[str, str]] = {
    "collect": {"out": "OUT/traces", "model": "policy"},
    "label": {"traces": "OUT/heldout_traces", "out": "OUT/labels", "model": "policy", "split_seed": "train.split_seed"}
    | {"temperature": "collect.temperature", "heldout_fraction": "train.heldout_fraction"}
    | {"validation_fraction": "train.validation_fraction", "prompts": "heldout, then validation"},
    "train": {"traces": "OUT/traces", "policy": "policy", "output_dir": "OUT/train_<name>"},
    "evaluate": {"out": "OUT", "split_record": "the chosen model's checkpoint", "checkpoint": "the trained models"}
    | {"traces": "OUT/heldout_traces", "labels": "OUT/labels", "policy": "policy", "split": "validation, then test"}
    | {"validation_traces": "OUT/validation_traces"},
    **SET_BY_ALTERNATIVES,
    "steering": steer_study.SET_BY_QUICKSTART,
}
#: the folders of held-out (test), short-prefix and validation traces, and the validation labels
SUBFOLDERS = ("heldout_traces", "short_traces", "validation_traces", "labels_validation")
#: what a quickstart writes into OUT (its run folder, `prefixvalue.runfolder`): each stage's folder and the report
OUTPUTS = (
    *FOLDER_OUTPUTS,
    WANDB_GROUP_FILE,
    "*traces",
    "labels*",
    "train_*",
    "actions",
    "advantages",
    "advantages_validation",
    "steer",
)
#: the optional stages' keys (alternatives=true, steer=true): a finished quickstart reruns with them changed, adding
#: those stages to what it has (each stage's own folder still refuses another config of it)
OPTIONAL_STAGE_KEYS = frozenset(
    {"alternatives", "alternatives_models", "alternatives_candidates", "alternatives_traces", "alternatives_samples"}
    | {"actions", "advantages", "steer", "steering"}
)
#: the keys a rerun of the same folder may change (`prefixvalue.runfolder`)
RERUN_KEYS = runfolder.RERUN_KEYS | {"threads", "train_workers", "frontier_table"} | OPTIONAL_STAGE_KEYS


#: the name under which the quickstart scores the ensemble of `learned`'s training seeds (``learned_seed_ensemble``)
SEED_ENSEMBLE = "seed_ensemble"


@dataclass
class QuickstartConfig(ModelLoadConfig):
    """The whole loop into one folder; the loading options set here go to every stage (train: all but device_map)."""

    out: str = field("runs/quickstart", help="run folder (traces, labels, train_<kind>, report)")
    policy: str | None = field(
        None, help="policy: local folder, hub name or .gguf file (required)", synonyms=("model",)
    )
    collect: collect.CollectConfig = nested(
        collect.CollectConfig, "collection options", SETS["collect"], split="test", num_prompts=2000
    )
    label: label.LabelConfig = nested(
        label.LabelConfig, "MC labelling of held-out traces", SETS["label"], positions="all", samples=32, seed=1
    )
    label_traces_per_prompt: int = field(1, help="held-out traces labelled per held-out prompt")
    label_max_traces: int = field(200, help="most held-out traces labelled")
    short_k: int = field(2, help="short-prefix study: positions short:1 .. short:K, one trace per held-out prompt")
    short_samples: int = field(64, help="MC continuations per short prefix (sampled with label.seed + 1)")
    value_models: dict[str, RawMapping] = field(
        default_factory=lambda: {k: RawMapping({"value_model.kind": k}) for k in VALUE_MODELS},
        help="value models trained: name → overrides of `train` (dotted keys, e.g. {value_model.kind: head}); the "
        "one with the best Spearman on the validation labels is `learned`, the others `learned_<name>`",
    )
    seeds: int = field(3, help="training seeds of `learned` (train.seed, +1, ...); the report gives their spread")
    validation_seed: int = field(3, help="MC labels of validation traces sample with label.seed + this")
    train_workers: int = field(2, help="value models trained at once, in processes of one CPU thread each (1: in turn)")
    frontier_table: str | None = field(None, help="a `make frontier` table (frontier.md) for the report (None: none)")
    train: train.TrainConfig = nested(train.TrainConfig, "training options", SETS["train"])
    evaluate: EvaluateConfig = nested(EvaluateConfig, "evaluation options", SETS["evaluate"])
    forks: int = field(3, help="traces with the largest MC value jumps shown with their forking tokens")
    fork_samples: int = field(64, help="fresh MC continuations per prefix re-testing each fork (label.seed + 2)")
    threads: int = field(0, help="torch CPU threads (0: torch's default)")
    alternatives: bool = field(False, help="also run `actions` and `advantages` on the trained models (adds minutes)")
    alternatives_models: dict[str, RawMapping] = field(
        default_factory=dict,
        help="alternatives=true: value models trained for `advantages` only, on the training traces with candidate "
        "labels (OUT/labels_candidates): name → overrides of `train`. `advantages` reads first the one-pass model "
        "(these and value_models') with the best within-prefix Spearman of candidates on the validation labels",
    )
    alternatives_candidates: int = field(5, help="alternatives_models: candidate labels of the policy's top-K tokens")
    alternatives_traces: int = field(256, help="alternatives_models: training traces candidate-labelled, one a prompt")
    alternatives_samples: int = field(16, help="alternatives_models: MC continuations per prefix and per candidate")
    actions: actions.ActionsConfig = nested(actions.ActionsConfig, "alternatives=true: actions", SETS["actions"])
    advantages: advantages.AdvantagesConfig = nested(advantages.AdvantagesConfig, "advantages", SETS["advantages"])
    steer: bool = field(
        False, help="also run `prefixvalue steer` (value-guided sampling) with the trained models (about 11 minutes)"
    )
    steering: steer_study.SteerConfig = nested(
        steer_study.SteerConfig, "steer=true: value-guided sampling", SETS["steering"], max_prompts=100, replicates=1
    )

    def __post_init__(self) -> None:
        if not self.policy:
            raise ConfigError("quickstart: policy is required (policy=NAME_OR_PATH, as in recipes/quickstart.yaml)")
        for name in ("label_traces_per_prompt", "label_max_traces", "short_samples", "fork_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"quickstart: {name} must be >= 1, got {getattr(self, name)}")
        if self.train.validation_fraction <= 0:
            raise ConfigError(
                "quickstart: train.validation_fraction must be > 0 (learned is chosen on validation labels)"
            )
        if self.short_k < 1 or self.forks < 0 or self.seeds < 1 or self.train_workers < 1:
            raise ConfigError("quickstart: short_k >= 1, forks >= 0, seeds >= 1 and train_workers >= 1")
        if self.label.positions.split(":")[0] in ("short", "adaptive"):
            raise ConfigError("quickstart: label.positions must be all, stride:K or steps (short runs separately)")
        if not self.value_models:
            raise ConfigError("quickstart: value_models needs at least one entry (name: overrides of train)")
        if SEED_ENSEMBLE in self.value_models:
            raise ConfigError(f"quickstart: value_models.{SEED_ENSEMBLE} names the ensemble of the seeds; rename it")
        both = sorted(set(self.value_models) & set(self.alternatives_models))
        if both or SEED_ENSEMBLE in self.alternatives_models:
            raise ConfigError(f"quickstart: alternatives_models.{(both or [SEED_ENSEMBLE])[0]} names another model")
        for name in ("alternatives_candidates", "alternatives_traces", "alternatives_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"quickstart: {name} must be >= 1, got {getattr(self, name)}")
        check_nested(self, "quickstart", LOADING)
        for group, models in (("value_models", self.value_models), ("alternatives_models", self.alternatives_models)):
            sets = {canonical_key(train.TrainConfig, k) for k in (*SETS["train"], *LOADING)}
            if group == "alternatives_models":  # trained on the candidate labels the quickstart makes
                sets.add("labels")
            for name, overrides in models.items():  # each entry must make a valid training config
                for key in sorted(k for k in overrides if canonical_key(train.TrainConfig, k) in sets):
                    raise ConfigError(f"quickstart: {group}.{name}.{key} is set by the quickstart; remove it")
                self.train_config(name, Path(self.out), 0)

    def load_fields(self) -> dict[str, Any]:
        """The loading options as keyword arguments of every stage's config."""
        return {key: getattr(self, key) for key in LOADING}

    def label_config(self, **kw: Any) -> label.LabelConfig:
        """``label`` with what the quickstart sets (the policy, collect's temperature, train's split) and `kw`."""
        split = {
            "heldout_fraction": self.train.heldout_fraction,
            "validation_fraction": self.train.validation_fraction,
            "split_seed": self.train.split_seed,
        }
        sets = {"model": self.policy, "temperature": self.collect.temperature, **split, **self.load_fields()}
        return dataclasses.replace(self.label, **sets, **kw)

    def train_config(self, name: str, out: Path, seed_offset: int, traces: Path | None = None) -> train.TrainConfig:
        """The training config of value model `name` (``train`` with its overrides in ``value_models`` or
        ``alternatives_models``) for one seed."""
        group = "value_models" if name in self.value_models else "alternatives_models"
        tcfg = with_overrides(self.train, dict(getattr(self, group)[name]), f"quickstart: {group}.{name}")
        sets = {**self.load_fields(), "device_map": None, "policy": self.policy, "seed": tcfg.seed + seed_offset}
        folder = out / f"train_{name}{f'_seed{seed_offset}' if seed_offset else ''}"
        return dataclasses.replace(tcfg, **sets, traces=str(traces) if traces else tcfg.traces, out=str(folder))


def choose_learned(
    checkpoints: dict[str, str], traces: Path, labels: Path, options: EvaluateConfig, device: Any, load: Any
) -> Choice:
    """``learned``: the value model with the best Spearman with MC on the validation labels (the one evaluator
    with ``split=validation``; no soft values or bootstrap, which no choice reads)."""
    names = list(checkpoints)
    cheap = {"soft_values": False, "n_bootstrap": 0, "step_oracle": False, "validation_traces": None}
    vcfg = dataclasses.replace(options, split="validation", split_record=checkpoints[names[0]], **cheap)
    models = load_value_models(checkpoints, device, load)
    result = evaluate(models, traces, labels, vcfg)
    cands = {n: "learned" if i == 0 else f"learned_{n}" for i, n in enumerate(names)}
    what = "learned: the value model the quality goal and every `learned` figure report"
    pick = choose_estimator(what, result, cands, "spearman")
    pick.extra.update(n_prefixes=result.metrics["n_prefixes"], n_traces=result.metrics["n_traces"])
    return pick


def loop_choices(metrics: dict[str, Any], frontier_table: str | None, n_forks: int) -> list[dict[str, Any]]:
    """The other choices behind the report's figures, as `selection_section` records: the step-verification
    threshold (chosen on the validation traces), the candidates ``value_models`` (chosen by ``make frontier``
    on its validation labels, when its table records the choice), and the forking tokens (chosen on the test
    labels' largest jumps, so each is re-tested on fresh samples and only that test is reported)."""
    sv = metrics.get("step_verification") or {}
    out: list[dict[str, Any]] = [
        {
            "what": "step-verification threshold (ProcessBench F1 of learned)",
            "chosen": sv.get("threshold"),
            "split": sv.get("threshold_split"),
            "metric": "ProcessBench F1",
            "n_candidates": None,
            "n_traces": sv.get("n_calibration"),
            **({"note": sv["note"]} if sv.get("note") else {}),
        }
    ]
    made = Path(frontier_table).with_suffix(".json") if frontier_table else None
    if made is not None and made.exists():
        chosen = json.loads(made.read_text()).get("selection")
        if chosen:
            out.append({**chosen, "what": "value_models candidates: " + str(chosen.get("what", ""))})
    out.append(
        {
            "what": "forking tokens shown",
            "chosen": n_forks,
            "split": "test (selected on the labels' largest jumps)",
            "metric": "largest MC jump per trace",
            "n_candidates": None,
            "note": "each is re-tested on fresh MC samples; only the fresh test (p, confirmed) is a finding",
        }
    )
    return out


def alternatives_checkpoints(
    cfg: QuickstartConfig,
    trained: dict[str, str],
    traces_dir: Path,
    val_dir: Path,
    val_labels_dir: Path,
    seconds: dict[str, float],
) -> tuple[list[str], Choice | None]:
    """The checkpoints ``alternatives=true`` reads, and the choice that ordered them (None with one one-pass model
    or none). `trained`: the value models' checkpoints, `learned` first. ``alternatives_models`` are trained here
    on candidate labels of training traces (``OUT/labels_candidates``: ``label prompts=train candidates=K``); then
    `advantages` on the validation traces scores every model with one-pass candidate values, and the one whose
    candidates rank best within a prefix (Spearman with MC) comes first, the verdict's model; the rest follow."""
    out = Path(cfg.out)
    if cfg.alternatives_models:
        cand_dir = out / "labels_candidates"
        how = {"prompts": "train", "traces_per_prompt": 1, "max_traces": cfg.alternatives_traces, "positions": "all"}
        how |= {"samples": cfg.alternatives_samples, "candidates": cfg.alternatives_candidates}
        with timed(seconds, "label candidates"):
            label.run(cfg.label_config(traces=str(traces_dir), out=str(cand_dir), seed=cfg.label.seed + 4, **how))
        jobs = {
            (n, 0): dataclasses.replace(cfg.train_config(n, out, 0, traces_dir), labels=str(cand_dir))
            for n in cfg.alternatives_models
        }
        with timed(seconds, "train alternatives"):
            done = run_jobs(train.run, jobs, cfg.train_workers, lambda t: dataclasses.replace(t, threads=1))
        seconds.update({f"train {n}": sec for (n, _), (_, sec) in done.items()})
        trained = {**trained, **{n: str(r["checkpoint"]) for (n, _), (r, _) in done.items()}}
    kinds = {n: cfg.train_config(n, out, 0).value_model.kind for n in trained}
    one_pass = [n for n in trained if value_model_class(kinds[n]).counterfactuals]
    choice = None
    if len(one_pass) > 1:
        vcfg = dataclasses.replace(
            cfg.advantages,
            **cfg.load_fields(),
            out=str(out / "advantages_validation"),
            traces=str(val_dir),
            labels=str(val_labels_dir),
            policy=cfg.policy,
            checkpoints=[trained[n] for n in one_pass],
            split="validation",
        )
        with timed(seconds, "advantages validation"):
            vm = advantages.run(vcfg)
        by_path = {str(p): n for n, p in vm["checkpoints"].items()}
        models = vm["check"]["models"]
        scores = {n: models[by_path[trained[n]]]["within_spearman"]["value"] for n in one_pass}
        what = "one-pass candidate values: the model `advantages` reads first (its verdict)"
        choice = choose(what, scores, split=vm["split"], metric="within-prefix Spearman of candidates with MC")
        choice.extra.update(n_prefixes=vm["check"]["n_prefixes"], folder="advantages_validation")
        one_pass = [choice.chosen, *(n for n in one_pass if n != choice.chosen)]
    order = [*one_pass, *(n for n in trained if n not in one_pass)]
    return [trained[n] for n in order], choice


def run(cfg: QuickstartConfig) -> dict[str, Any]:
    """Run the loop; returns metrics.json's dict (with its ``quickstart`` section)."""
    import torch

    from ..policies import default_device, load_policy

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    folder = runfolder.claim(out, "quickstart", cfg, outputs=OUTPUTS, rerun_keys=RERUN_KEYS, path_keys=("policy",))
    fresh = folder.state == "fresh"
    save_resolved_config(cfg, out)
    cfg, seconds, t0, names = with_wandb_group(cfg, out), {}, time.perf_counter(), list(cfg.value_models)
    traces_dir, labels_dir, short_labels_dir = out / "traces", out / "labels", out / "labels_short"
    held_dir, short_dir, val_dir, val_labels_dir = (out / n for n in SUBFOLDERS)
    with timed(seconds, "collect"):
        collect.run(dataclasses.replace(cfg.collect, **cfg.load_fields(), out=str(traces_dir), model=cfg.policy))
    traces = load_traces(traces_dir)
    # held-out (test) and validation traces by the split training uses (label keeps exactly these), labelled alike
    split = (cfg.train.heldout_fraction, cfg.train.split_seed, cfg.label_traces_per_prompt, cfg.label_max_traces)
    held_rows, short_rows, *prompts = heldout_selection(traces, *split, cfg.train.validation_fraction, "test")
    val_rows, _, _, n_val_prompts = heldout_selection(traces, *split, cfg.train.validation_fraction, "validation")
    if not held_rows or not val_rows:
        raise ConfigError("quickstart: no held-out or no validation prompts; raise num_prompts or the fractions")
    for rows, subset in ((held_rows, held_dir), (short_rows, short_dir), (val_rows, val_dir)):
        save_subset(traces, rows, subset)
    with timed(seconds, "label"):
        label.run(cfg.label_config(traces=str(held_dir), out=str(labels_dir)))
    with timed(seconds, "label validation"):
        how = {"prompts": "validation", "seed": cfg.label.seed + cfg.validation_seed}
        label.run(cfg.label_config(traces=str(val_dir), out=str(val_labels_dir), **how))
    with timed(seconds, "label short"):
        prefixes = {"positions": f"short:{cfg.short_k}", "samples": cfg.short_samples, "seed": cfg.label.seed + 1}
        label.run(cfg.label_config(traces=str(short_dir), out=str(short_labels_dir), **prefixes))
    # every value model on the training prompts, `train_workers` at a time; `learned` is chosen on the validation
    # labels and trained with its further seeds
    jobs = {(name, 0): cfg.train_config(name, out, 0, traces_dir) for name in names}
    with timed(seconds, "train"):
        trained = run_jobs(train.run, jobs, cfg.train_workers, lambda t: dataclasses.replace(t, threads=1))
    ckpts = {key: str(r["checkpoint"]) for key, (r, _) in trained.items()}
    ecfg = dataclasses.replace(cfg.evaluate, **cfg.load_fields(), out=str(out))
    device, load = ecfg.device or str(default_device()), ecfg.load_options()
    with timed(seconds, "choose on validation"):
        pick = choose_learned({n: ckpts[n, 0] for n in names}, val_dir, val_labels_dir, ecfg, device, load)
    # the chosen first, then the others best first on validation: the studies read the first of a kind as its best
    # (alternatives: the first checkpoint with one-pass candidate values is the one its verdict names)
    ranked = sorted((n for n in names if n != pick.chosen), key=lambda n: -(pick.candidates.get(n) or -math.inf))
    names = [pick.chosen, *ranked]
    more_seeds = {(names[0], s): cfg.train_config(names[0], out, s, traces_dir) for s in range(1, cfg.seeds)}
    with timed(seconds, "train seeds"):
        trained.update(run_jobs(train.run, more_seeds, cfg.train_workers, lambda t: dataclasses.replace(t, threads=1)))
    seconds.update({f"train {n}" + (f" seed {s}" if s else ""): sec for (n, s), (_, sec) in trained.items()})
    ckpts = {key: str(r["checkpoint"]) for key, (r, _) in trained.items()}
    # the one evaluator on the held-out prefixes (the chosen model's split record), read once; then the analyses
    ecfg = dataclasses.replace(ecfg, split_record=ckpts[names[0], 0], split="test", validation_traces=str(val_dir))
    with timed(seconds, "evaluate"):
        policy, tok = load_policy(cfg.policy, ecfg.dtype, device, load)
        models = load_value_models({name: ckpts[name, 0] for name in names}, device, load)
        seed_models = load_value_models({s: ckpts[names[0], s] for s in range(1, cfg.seeds)}, device, load)
        if seed_models:  # the seeds of `learned` as one value model (docs/design.md, "Value ensembles")
            models[SEED_ENSEMBLE] = ValueEnsemble([models[names[0]], *seed_models.values()])
        kw = {"policy": policy, "tokenizer": tok, "oracle_traces": traces, "progress": ecfg.progress}
        held, short_traces = load_traces(held_dir), load_traces(short_dir)
        short_labels = load_labels(short_labels_dir, short_traces)
        result = evaluate(models, held, labels_dir, ecfg, **kw)
        short = analysis.short_prefix_study(
            short_labels, cfg.short_k, lambda r: evaluate(models, short_traces, r, ecfg, **kw)
        )
        # forks are re-tested on fresh samples: the labels' sampling, seed label.seed + 2 (short used + 1)
        labeller = label.labeller_for(held, cfg.label_config(seed=cfg.label.seed + 2), policy, tok)
        refs = {r.trace_id: r for r in label.trace_refs(held)}
        forks = analysis.largest_jumps(result, cfg.forks, tok, labeller=labeller, refs=refs, samples=cfg.fork_samples)
        with torch.no_grad():  # seed 0 is `learned`, already in `result`
            seeds = analysis.seed_spread(result, seed_models, result.metrics["mc"]["noise_ceiling"].get("spearman"))
        extra = [*ESTIMATORS, *(f"learned_{name}" for name in list(models)[1:]), "step_oracle", "operator_oracle"]
        more = {"short": short, "short_samples": cfg.short_samples, "forks": forks, "seeds": seeds, "extra": extra}
        firsts = {name: trained[name, 0][0] for name in names}
        value_models = {name: cfg.value_models[name] for name in names}
        q = loop_summary(result, traces, config_to_dict(cfg), prompts, len(held_rows), firsts, value_models, **more)
        q.update(validation_prompts=n_val_prompts, labelled_validation_traces=len(val_rows))
        selection = selection_section([pick, *loop_choices(result.metrics, cfg.frontier_table, len(forks))])
    alt_metrics, alt_sections = {}, []
    if cfg.alternatives:
        alt_ckpts, one_pass_choice = alternatives_checkpoints(
            cfg, {n: ckpts[n, 0] for n in names}, traces_dir, val_dir, val_labels_dir, seconds
        )
        selection += selection_section([one_pass_choice] if one_pass_choice else [])
        alt = (cfg.actions, cfg.advantages, str(cfg.policy), alt_ckpts, held_dir, labels_dir, out)
        alt_metrics, alt_sections = run_alternatives(*alt, cfg.load_fields(), seconds)
    if cfg.steer:
        with timed(seconds, "steer"):
            steered, section = steer_study.quickstart_steer(
                cfg.steering, str(cfg.policy), [ckpts[n, 0] for n in names], cfg.collect, out, cfg.load_fields()
            )
        alt_metrics, alt_sections = {**alt_metrics, "steer": steered}, [*alt_sections, section]
    q.update(seconds={**seconds, "total": round(time.perf_counter() - t0, 1)}, fresh_run=fresh)
    add = {"policy": cfg.policy, "checkpoint": ckpts[names[0], 0], "traces_finish": traces_finish_summary(traces)}
    add["selection"] = selection
    with build_logger(ecfg.report_to, out, config_to_dict(cfg), ecfg.run_name, ecfg.wandb, job_type="evaluate") as log:
        how = {"tokenizer": tok, "options": ecfg, "logger": log, "frontier_table": cfg.frontier_table}
        metrics = write_loop_report(result, out, {**add, "quickstart": q, **alt_metrics}, **how, more=alt_sections)
    folder.finish()
    print("\n" + summary_table(q, metrics))
    print(f"\nresults: {out}/report.md, metrics.json, heatmap.html, value_curves.png")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue quickstart``; returns the exit status."""
    run(parse_config(QuickstartConfig, list(argv) if argv is not None else None, prog="prefixvalue quickstart"))
    return 0
