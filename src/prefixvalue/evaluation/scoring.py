"""Scoring estimators against Monte Carlo prefix labels: the per-prefix table → the metrics.json dict.

Only prompts held out of the checkpoint's training are scored (`split_filter`: the checkpoint's split
record decides; scoring training prompts takes ``include_training_prompts``). For each labelled
prefix, every estimator of `prefixvalue.evaluation.estimators` is scored against the MC labels
(`prefixvalue.evaluation.metrics`: correlations with cluster-bootstrap CIs over prompts, AUROC of
the outcome, Brier, ECE, the split-half noise ceiling), by position group, with first-error
prediction under the ProcessBench protocol (`prefixvalue.evaluation.stepscores`) and the cost of MC
labels against one value-model forward. `prefixvalue.evaluation.report` writes the result.

Library use: `prefixvalue.evaluation.evaluator.evaluate` loads the models, fits the step-label oracle and
calls `evaluate_prefixes` (what the evaluate stage, the quickstart and ``distance`` call)::

    result = evaluate_prefixes(traces, labels, value_model=vm, policy=model, options=ScoringOptions())
    write_report(result, "runs/eval", tokenizer=tok)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import numpy as np

from .. import runfolder
from ..config import ConfigError
from ..data import load_split
from ..data.bridges import StepValue, mc_step_values
from ..loading import same_model
from ..tasks.base import first_error
from ..tracking import jsonable
from .estimators import ESTIMATORS, Estimates, Estimator, TraceRecord, estimate_values
from .metrics import (
    calibration_bins,
    correlation,
    estimator_metrics,
    paired_difference,
    saturation,
    split_half_noise_ceiling,
)
from .options import ScoringOptions
from .softvalues import SoftValueSpec
from .stepscores import (
    load_step_data,
    load_step_splits,
    prefix_step_scores,
    process_step_scores,
    step_benchmark,
    step_verification,
    td_errors,
    validation_threshold,
    verification_at,
)

POSITION_GROUPS = ("first_k", "step_boundary", "middle")


@dataclass
class EvalResult:
    """Everything `write_report` needs: the metrics dict, the per-prefix table and per-trace curves.

    `prefixes` maps column name to a list (one entry per labelled prefix); `curves[i][name]` is
    estimator `name` on trace i at positions 0..T; `mc[i]` holds that trace's labelled positions
    with their MC mean and Wilson CI.
    """

    metrics: dict[str, Any]
    prefixes: dict[str, list[Any]]
    traces: list[TraceRecord]
    curves: list[dict[str, np.ndarray]]
    mc: list[dict[str, np.ndarray]]
    estimator_info: dict[str, dict[str, Any]] = dc_field(default_factory=dict)
    calibration: dict[str, list[dict[str, float]]] = dc_field(default_factory=dict)


#: estimators every learned value is compared with, paired (``spearman.paired_vs_<name>``): the policy's
#: headline soft value, and the two oracles where the task has exact step labels
PAIRED_REFERENCES: tuple[str, ...] = ("mellowmax", "step_oracle", "operator_oracle")


def read_mc_cost(labels_dir: str | Path | None) -> dict[str, Any] | None:
    """``{"generated_tokens", "prefill_tokens"}`` from ``cost.json`` beside the prefix labels (written by
    ``prefixvalue label``), or None when there is no such file."""
    if labels_dir is None:
        return None
    path = Path(labels_dir) / "cost.json"
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return {k: None if raw.get(k) is None else float(raw[k]) for k in ("generated_tokens", "prefill_tokens")}


def position_groups(position: int, step_ends: set[int], first_k: int) -> dict[str, bool]:
    """Position-group flags of a prefix: ``first_k`` (≤ K completion tokens), ``step_boundary``
    (the prefix ends exactly at a step end), ``middle`` (neither). The first two may overlap."""
    fk = position <= first_k
    sb = position in step_ends
    return {"first_k": fk, "step_boundary": sb, "middle": not fk and not sb}


def _rows(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, list):
        return data
    return [dict(r) for r in data]


# --------------------------------------------------------------------------------- evaluation
def evaluate_prefixes(
    traces: Any,
    labels: Any,
    *,
    options: ScoringOptions,
    value_model: Any = None,
    policy: Any = None,
    tokenizer: Any = None,
    estimators: dict[str, Estimator] | None = None,
    mc_cost: dict[str, Any] | None = None,
    progress: bool = False,
    step_thresholds: dict[str, dict[str, Any]] | None = None,
) -> EvalResult:
    """Score every estimator on every labelled prefix and build the metrics.json dict.

    `traces` and `labels` are datasets (or lists of row dicts) in the docs/design.md contracts;
    traces without labels are ignored. `value_model` and `policy` are as in `estimate_values`;
    `estimators` defaults to the `ESTIMATORS` registry. `mc_cost` is `read_mc_cost` of the labels
    folder; `progress` shows a bar over traces for each forward pass. `step_thresholds` are the step
    thresholds chosen on validation traces (``{"prefix": ..., "process": ...}``, `validation_step_thresholds`):
    given, every scored trace is a test example; else a calibration split of the scored prompts chooses them.
    Returns an `EvalResult`.
    """
    cfg = options
    label_rows = _rows(labels)
    notes: list[str] = []
    # a label with no samples (n = 0) has no value (its mean is NaN): dropped and counted, so every
    # metric below is computed on labels that exist
    empty = [r for r in label_rows if not int(r["n"]) or not np.isfinite(float(r["mean"]))]
    if empty:
        label_rows = [r for r in label_rows if int(r["n"]) and np.isfinite(float(r["mean"]))]
        notes.append(
            f"{len(empty)} prefix label(s) with no MC samples (n = 0, so no value) were dropped before scoring"
        )
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for r in label_rows:
        by_trace.setdefault(str(r["trace_id"]), []).append(r)
    trace_rows = _rows(traces)
    records = [TraceRecord.from_row(r) for r in trace_rows if str(r["trace_id"]) in by_trace]
    sampler = next((str(r["model"]) for r in trace_rows if r.get("model")), None)  # the model the MC labels sample
    orphan = sorted(set(by_trace) - {t.trace_id for t in records})
    records, split = split_filter(records, by_trace, cfg, value_model is not None)
    if cfg.max_traces is not None:
        records = records[: cfg.max_traces]
    if not records:
        raise ConfigError(
            "evaluate: no trace has prefix labels (check that --labels matches --traces)"
            if not split.get("dropped_training_prompts")
            else f"evaluate: no labelled trace comes from a {cfg.split} prompt of the checkpoint's split; label "
            f"{'held-out' if cfg.split == 'test' else 'validation'} traces (or pass include_training_prompts=true)"
        )
    if orphan:
        notes.append(
            f"{len(orphan)} labelled trace id(s) are missing from the traces and were skipped (e.g. {orphan[0]!r})"
        )
    spec = (
        SoftValueSpec(omegas=tuple(cfg.omegas), default_omega=cfg.mellowmax_omega, top_k=tuple(cfg.mellowmax_top_k))
        if cfg.soft_values
        else None
    )
    est = estimate_values(
        records,
        value_model,
        policy,
        tokenizer,
        batch_size=cfg.batch_size,
        soft_values=spec,
        base_rate=cfg.base_rate,
        estimators=dict(ESTIMATORS if estimators is None else estimators),
        progress=progress,
    )
    notes += est.notes
    cols, mc = _prefix_table(records, by_trace, est, cfg.first_k)
    names = list(est.info)

    y = np.asarray(cols["mc_mean"], dtype=np.float64)
    n_arr = np.asarray(cols["n"])
    groups = bootstrap_groups(cols, cfg)
    positions = np.asarray(cols["position"])
    ceiling = split_half_noise_ceiling(n_arr, cols["successes"], repeats=cfg.noise_ceiling_repeats, seed=cfg.seed)
    est_metrics = _estimator_section(cols, names, est.info, ceiling, cfg)
    n_pref = len(y)
    split["kept_prefixes"] = n_pref
    split["heldout_traces"] = len(records)
    if split.get("includes_training_prompts") is False:
        split["heldout_prompts"] = len({t.prompt_id for t in records})
    metrics: dict[str, Any] = {
        "n_traces": len(records),
        "n_prefixes": n_pref,
        "split": split,
        "bootstrap_unit": _unit(cfg),
        "bootstrap_note": _bootstrap_note(cfg, groups),
        "positions": {
            "min": int(positions.min()),
            "max": int(positions.max()),
            "n_distinct": len(np.unique(positions)),
            "mean_per_trace": float(n_pref / len(records)),
            "groups": {g: int(np.sum(cols[g])) for g in POSITION_GROUPS},
            "first_k": cfg.first_k,
        },
        "mc": _mc_section(y, n_arr, ceiling),
        "estimators": est_metrics,
        "mellowmax_default": ({"omega": cfg.mellowmax_omega, "vocab": "full"} if "mellowmax" in est.info else None),
        "by_position_group": _group_section(cols, names, y, n_arr, groups, cfg),
        "dropped_labels_without_samples": len(empty),
        "step_verification": _trace_step_verification(records, est, value_model, cfg, step_thresholds, by_trace),
        "cost": _cost_section(_sampler_cost(est.cost, policy, sampler), mc_cost, n_pref, len(label_rows)),
        "notes": notes,
    }
    metrics["warnings"] = sample_warnings(metrics, len({t.prompt_id for t in records}))
    calib = {name: calibration_bins(cols[name], y, cfg.ece_bins) for name in names if est_metrics[name]["probability"]}
    return EvalResult(
        metrics=jsonable(metrics),
        prefixes=cols,
        traces=records,
        curves=est.curves,
        mc=mc,
        estimator_info=est.info,
        calibration=calib,
    )


#: fewer prompts than this make every CI of the report too wide to read (docs/design.md, "Small samples")
MIN_READABLE_PROMPTS = 20
#: fewer test traces than this on either side (with an error / without) make a step F1 unreadable
MIN_READABLE_STEP_CLASS = 10
#: a Spearman CI wider than this says nothing about the ranking
MAX_READABLE_CI_WIDTH = 0.5


def sample_warnings(metrics: dict[str, Any], n_prompts: int) -> list[str]:
    """Warnings that the sample scored is too small to read (docs/design.md, "Small samples"): fewer than
    `MIN_READABLE_PROMPTS` prompts (`n_prompts`, the prompts scored), a learned Spearman CI wider than `MAX_READABLE_CI_WIDTH`, or a step F1
    from fewer than `MIN_READABLE_STEP_CLASS` test traces with an error or without one. The figures stay;
    `evaluate` prints the warnings, and metrics.json and report.md carry them."""
    out: list[str] = []
    if n_prompts < MIN_READABLE_PROMPTS:
        out.append(
            f"{n_prompts} prompt(s) scored: too few to read (every CI spans most of its range below "
            f"{MIN_READABLE_PROMPTS}); label more prompts (label max_traces=, collect num_prompts=)"
        )
    for name, m in (metrics.get("estimators") or {}).items():
        ci = (m.get("spearman") or {}).get("ci")
        if (name == "learned" or name.startswith("learned_")) and ci and ci[1] - ci[0] > MAX_READABLE_CI_WIDTH:
            out.append(
                f"{name}: Spearman CI [{ci[0]:.2f}, {ci[1]:.2f}] is wider than {MAX_READABLE_CI_WIDTH}: "
                "it does not tell a good ranking from chance"
            )
    sv = metrics.get("step_verification") or {}
    wrong, right = sv.get("n_erroneous"), sv.get("n_correct")
    if (
        sv.get("f1") is not None
        and wrong is not None
        and right is not None
        and min(wrong, right) < MIN_READABLE_STEP_CLASS
    ):
        out.append(
            f"step verification F1 from {wrong} test trace(s) with an error and {right} without: too few to "
            f"read (fewer than {MIN_READABLE_STEP_CLASS} on a side)"
        )
    return out


def _prefix_table(
    records: list[TraceRecord], by_trace: dict[str, list[dict[str, Any]]], est: Estimates, first_k: int
) -> tuple[dict[str, list[Any]], list[dict[str, np.ndarray]]]:
    """The per-prefix table (one entry per labelled prefix in every column) and each trace's MC curve."""
    names = list(est.info)
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "trace_id",
            "prompt_id",
            "position",
            "n",
            "successes",
            "mc_mean",
            "ci_low",
            "ci_high",
            "outcome",
            *POSITION_GROUPS,
        )
    }
    for name in names:
        cols[name] = []
    if "learned" in names:
        cols["learned_td"] = []
    mc: list[dict[str, np.ndarray]] = []
    for t, curve in zip(records, est.curves):
        rows = sorted(by_trace[t.trace_id], key=lambda r: int(r["position"]))
        ends = {int(e) for _, e in t.step_spans}
        td = td_errors(curve["learned"]) if "learned" in curve else None
        for r in rows:
            p = int(r["position"])
            if not 0 <= p <= t.length:
                raise ValueError(f"label position {p} outside 0..{t.length} for trace {t.trace_id}")
            cols["trace_id"].append(t.trace_id)
            cols["prompt_id"].append(t.prompt_id)
            cols["position"].append(p)
            cols["n"].append(int(r["n"]))
            cols["successes"].append(float(r["successes"]))  # fractional for verifier scores in (0, 1)
            for col, key in (("mc_mean", "mean"), ("ci_low", "ci_low"), ("ci_high", "ci_high")):
                cols[col].append(float(r[key]))
            cols["outcome"].append(t.outcome)
            for g, flag in position_groups(p, ends, first_k).items():
                cols[g].append(flag)
            for name in names:
                cols[name].append(float(curve[name][p]))
            if td is not None:
                cols["learned_td"].append(float(td[p]) if p < t.length else None)
        mc.append(
            {
                "position": np.asarray([int(r["position"]) for r in rows]),
                **{key: np.asarray([float(r[key]) for r in rows]) for key in ("mean", "ci_low", "ci_high")},
            }
        )
    return cols, mc


def _mc_section(y: np.ndarray, n_arr: np.ndarray, ceiling: dict[str, Any]) -> dict[str, Any]:
    sat = saturation(y, n_arr)
    return {
        "samples_per_prefix": int(np.median(n_arr)),
        "samples_per_prefix_range": [int(n_arr.min()), int(n_arr.max())],
        "label_mean": float(y.mean()),
        "label_variance": float(y.var()),
        "n_at_one": sat["n_at_one"],
        "n_at_zero": sat["n_at_zero"],
        "noise_ceiling": ceiling,
        "saturated": sat["saturated"],
        "saturation_definition": sat["definition"],
        "note": sat["note"],
    }


def _unit(cfg: ScoringOptions) -> str:
    return str(cfg.bootstrap_unit)


def bootstrap_groups(cols: dict[str, list[Any]], cfg: ScoringOptions) -> np.ndarray:
    """Each prefix's resampling unit for the cluster bootstrap: its prompt id (default, ``bootstrap_unit:
    prompt``; traces of one prompt share their position-0 label, so they are not independent) or its
    trace id (``bootstrap_unit: trace``)."""
    return np.asarray(cols["prompt_id" if _unit(cfg) == "prompt" else "trace_id"])


def _bootstrap_note(cfg: ScoringOptions, groups: np.ndarray) -> str:
    n_units = len(np.unique(groups)) if len(groups) else 0
    return (
        f"95% CIs are percentile cluster-bootstrap intervals ({cfg.n_bootstrap} replicates) that resample "
        f"whole {_unit(cfg)}s ({n_units} of them) with replacement; every estimator sees the same replicates, "
        f"so differences between estimators are paired"
    )


def _add_ceiling(spearman: dict[str, Any], ceiling: dict[str, Any]) -> None:
    """Put the noise ceiling (and the share of it reached) beside a Spearman entry."""
    spearman["noise_ceiling"] = ceiling["spearman"]
    if ceiling["spearman"] is None:
        spearman["noise_ceiling_note"] = ceiling.get("note")
    elif spearman.get("value") is not None:
        spearman["fraction_of_ceiling"] = spearman["value"] / ceiling["spearman"]


def _share_of_ceiling(spearman: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, Any]:
    """``fraction_of_ceiling_ci``: the bootstrap CI of Spearman / ceiling, with the ceiling held fixed at its point
    estimate: `spearman`'s own CI (`correlation`'s replicates) divided by the ceiling, since a percentile CI scales
    with its statistic."""
    c = ceiling.get("spearman")
    if not c:
        return {
            "fraction_of_ceiling_ci": None,
            "fraction_of_ceiling_note": "no share of the ceiling: the noise ceiling is undefined",
        }
    ci = spearman.get("ci")
    note = spearman.get("note")
    text = (
        f"CI of Spearman / {c:.3f} over the same bootstrap replicates; the noise ceiling is held fixed at its "
        f"split-half point estimate (its own uncertainty is not propagated)"
    )
    return {
        "fraction_of_ceiling_ci": None if ci is None else [ci[0] / c, ci[1] / c],
        "fraction_of_ceiling_note": text + (f"; {note}" if note else ""),
    }


def split_filter(
    records: list[TraceRecord], by_trace: dict[str, list[dict[str, Any]]], cfg: ScoringOptions, has_value_model: bool
) -> tuple[list[TraceRecord], dict[str, Any]]:
    """Keep the traces whose prompt text is on the side ``cfg.split`` (``test``: held out; ``validation``)
    of the checkpoint's split record.

    The record is ``load_split(cfg.split_record)`` (`prefixvalue.data.split`, ``split.json``
    written by training; `prefixvalue.evaluation.evaluator.evaluate` sets it to the checkpoint's folder).
    Without a record in a given folder the run is refused (ConfigError) unless
    ``cfg.include_training_prompts``; with that flag nothing is dropped and the section says how many
    training prompts are scored. A library call with a value model in memory and no split record cannot
    tell, and says so. Returns the kept records and metrics.json's ``split`` section (``side``: the side
    scored, None when no record says; ``kept_prefixes`` and ``heldout_traces`` are filled in by the caller).
    """

    include = cfg.include_training_prompts
    folder = cfg.split_record
    record = load_split(folder) if folder else None
    want = cfg.split
    sec: dict[str, Any] = {
        "side": None,
        "heldout_prompts": None,
        "heldout_traces": None,
        "kept_prefixes": None,
        "dropped_training_prompts": 0,
        "dropped_prefixes": 0,
        "heldout_fraction": None,
        "validation_fraction": None,
        "split_seed": None,
        "source": None,
        "includes_training_prompts": None,
        "note": "",
    }
    n_prompts = len({t.prompt_id for t in records})
    if record is None:
        if folder and not include:
            raise missing_split_error(folder)
        if include:
            sec["includes_training_prompts"] = True
            sec["note"] = (
                f"include_training_prompts=true and no split record: all {n_prompts} prompts are scored, "
                f"and any of them may be a training prompt; these are not held-out figures"
            )
        elif has_value_model:
            sec["note"] = (
                "no split record was given (a value model in memory, no checkpoint folder): whether these "
                f"{n_prompts} prompts were held out of training cannot be checked"
            )
        else:
            sec["includes_training_prompts"] = False
            sec["heldout_prompts"] = n_prompts
            sec["note"] = "no value model is evaluated, so no prompt was trained on by a value model"
        return records, sec
    if want == "validation" and not record.validation_fraction:
        raise ConfigError(
            f"evaluate: split=validation, but the split record {Path(str(folder)) / 'split.json'} has no validation "
            f"side (validation_fraction 0); train with validation_fraction > 0"
        )
    sec.update(
        heldout_fraction=record.heldout_fraction,
        validation_fraction=record.validation_fraction,
        split_seed=record.split_seed,
        source=str(Path(str(folder)) / "split.json"),
    )
    side = {t.prompt_id: record.side(t.prompt) for t in records}
    training = sorted(p for p, s in side.items() if s == "train")
    other = sorted(p for p, s in side.items() if s not in ("train", want))  # the side not scored
    if include:
        sec.update(
            includes_training_prompts=bool(training),
            heldout_prompts=n_prompts - len(training),
            training_prompts_scored=len(training),
        )
        sec["note"] = (
            (
                f"include_training_prompts=true: the scores include {len(training)} training prompt(s) of "
                f"{n_prompts}; they are not held-out figures"
            )
            if training
            else (f"include_training_prompts=true, but all {n_prompts} prompts are held out under the record")
        )
        return records, sec
    kept = [t for t in records if side[t.prompt_id] == want]
    dropped = [t for t in records if side[t.prompt_id] == "train"]
    sec.update(
        side=want,
        includes_training_prompts=False,
        dropped_training_prompts=len(training),
        dropped_prefixes=int(sum(len(by_trace[t.trace_id]) for t in dropped)),
        dropped_other_side_prompts=len(other),
    )
    name = "held out of the checkpoint's training (test)" if want == "test" else "of the checkpoint's validation side"
    sec["note"] = (
        f"only prompts {name} are scored: {len(dropped)} trace(s) of {len(training)} training prompt(s) were "
        f"dropped ({sec['dropped_prefixes']} prefixes)"
        if dropped
        else f"every labelled prompt of the {want} side is scored; no training prompt among them"
    )
    if other:
        sec["note"] += f"; {len(other)} prompt(s) of the other non-training side were left out"
    return kept, sec


def missing_split_error(folder: str | Path) -> Exception:
    """The one-line refusal for a checkpoint folder that records no split."""
    return ConfigError(
        f"evaluate: the checkpoint {folder} records no split (split.json), so its training prompts cannot be "
        f"left out; pass include_training_prompts=true to score every prompt anyway"
    )


def _estimator_section(
    cols: dict[str, list[Any]],
    names: list[str],
    info: dict[str, dict[str, Any]],
    ceiling: dict[str, Any],
    cfg: ScoringOptions,
) -> dict[str, Any]:
    y = np.asarray(cols["mc_mean"], dtype=np.float64)
    outcome = np.asarray(cols["outcome"], dtype=np.float64)
    groups = bootstrap_groups(cols, cfg)
    unit = _unit(cfg)
    out: dict[str, Any] = {}
    for name in names:
        x = np.asarray(cols[name], dtype=np.float64)
        m = estimator_metrics(
            x,
            y,
            outcome,
            groups,
            probability=info[name]["probability"],
            n_boot=cfg.n_bootstrap,
            seed=cfg.seed,
            n_bins=cfg.ece_bins,
            unit=unit,
        )
        _add_ceiling(m["spearman"], ceiling)
        if name == "learned" or name.startswith("learned_"):
            for ref in PAIRED_REFERENCES:  # learned − reference, on the same bootstrap replicates
                if ref in names:
                    m["spearman"][f"paired_vs_{ref}"] = paired_difference(
                        x,
                        np.asarray(cols[ref], dtype=np.float64),
                        y,
                        groups,
                        "spearman",
                        n_boot=cfg.n_bootstrap,
                        seed=cfg.seed,
                        unit=unit,
                    )
            m["spearman"].update(_share_of_ceiling(m["spearman"], ceiling))
        m["description"] = info[name]["description"]
        for extra in ("params", "kind", "base_rate", "note"):
            if extra in info[name]:
                m[extra] = info[name][extra]
        out[name] = m
    return out


def _group_section(
    cols: dict[str, list[Any]],
    names: list[str],
    y: np.ndarray,
    n_arr: np.ndarray,
    groups: np.ndarray,
    cfg: ScoringOptions,
) -> dict[str, Any]:
    definitions = {
        "first_k": f"position <= {cfg.first_k}",
        "step_boundary": "the prefix ends at a step end",
        "middle": f"position > {cfg.first_k} and not at a step end",
    }
    out: dict[str, Any] = {}
    for g in POSITION_GROUPS:
        mask = np.asarray(cols[g], dtype=bool)
        tids = np.asarray(cols["trace_id"])
        entry: dict[str, Any] = {
            "n_prefixes": int(mask.sum()),
            "n_traces": len(set(tids[mask].tolist())),
            "definition": definitions[g],
        }
        if mask.any():
            entry["label_mean"] = float(y[mask].mean())
            entry["label_variance"] = float(y[mask].var())
            gs = saturation(y[mask], n_arr[mask])
            entry["saturated"] = gs["saturated"]
            entry["note"] = gs["note"]
        # the group's own ceiling: its labels' split-half reliability, not the pooled one
        ceiling = split_half_noise_ceiling(
            n_arr[mask],
            np.asarray(cols["successes"], dtype=np.float64)[mask],
            repeats=cfg.noise_ceiling_repeats,
            seed=cfg.seed,
        )
        entry["noise_ceiling"] = ceiling
        entry["estimators"] = {}
        for name in names:
            e = {
                m: correlation(
                    np.asarray(cols[name])[mask],
                    y[mask],
                    groups[mask],
                    m,
                    n_boot=cfg.n_bootstrap,
                    seed=cfg.seed,
                    unit=_unit(cfg),
                )
                for m in ("spearman", "pearson")
            }
            _add_ceiling(e["spearman"], ceiling)
            entry["estimators"][name] = e
        out[g] = entry
    return out


def _sampler_cost(cost: dict[str, Any], policy: Any, sampler: str | None) -> dict[str, Any]:
    """`cost` without ``policy_parameters`` when the policy given is not the model that wrote the traces (and
    sampled their MC labels; evaluate with allow_other_policy): its size would not price the MC tokens."""
    loaded = str(getattr(getattr(policy, "config", None), "_name_or_path", "") or "")
    if "policy_parameters" not in cost or not sampler or not loaded or same_model(loaded, sampler):
        return cost
    out = {k: v for k, v in cost.items() if k != "policy_parameters"}
    out["policy_parameters_note"] = f"the policy loaded ({loaded}) is not the model that wrote the traces ({sampler})"
    return out


def _cost_section(cost: dict[str, Any], mc_cost: dict[str, Any] | None, n_pref: int, n_labelled: int) -> dict[str, Any]:
    """Forward tokens of the estimators vs tokens sampled for the MC labels of the same prefixes."""
    cost = dict(cost)
    mc_gen = None
    if mc_cost is not None and mc_cost.get("generated_tokens") is not None:
        mc_gen = float(mc_cost["generated_tokens"])
        src = "labels cost.json"
        if n_pref < n_labelled:
            mc_gen *= n_pref / n_labelled
            src += f", scaled to the {n_pref} of {n_labelled} labelled prefixes evaluated"
        cost["mc_generated_tokens_source"] = src
        if mc_cost.get("prefill_tokens") is not None:
            cost["mc_prefill_tokens"] = mc_cost["prefill_tokens"]
    cost["mc_generated_tokens"] = mc_gen
    if mc_gen is None:
        cost["mc_generated_tokens_note"] = "unknown: the labels folder has no cost.json with generated_tokens"
    vft = cost.get("value_forward_tokens")
    cost["ratio_mc_to_value"] = (mc_gen / vft) if (mc_gen is not None and vft) else None
    if cost["ratio_mc_to_value"] is None:
        cost["ratio_mc_to_value_note"] = "needs both MC generated tokens and value-model forward tokens"
    # compute: each pass's tokens weighed by the parameters it runs per token, in tokens of the policy (a forward
    # pass costs about 2 FLOPs per parameter per token), so a value model smaller than the policy counts less
    passes, policy_n = cost.get("value_pass_parameters"), cost.get("policy_parameters")
    if vft and passes and policy_n:
        cost["value_forward_policy_tokens"] = vft / len(passes) * sum(passes) / policy_n
        cost["ratio_mc_to_value_compute"] = mc_gen / cost["value_forward_policy_tokens"] if mc_gen is not None else None
    else:
        cost["ratio_mc_to_value_compute"] = None
        cost["ratio_mc_to_value_compute_note"] = cost.get("policy_parameters_note") or (
            "needs the policy's parameters (evaluate loads the policy with soft_values=true) and the value model's"
        )
    cost["note"] = (
        "value_forward_tokens = prompt + completion tokens of the value model's forward passes over each trace "
        "(value_forward_passes: 2 when it also reads the reference policy beside an adapted backbone, one per "
        "member of an ensemble), which score every prefix of the trace; mc_generated_tokens = tokens sampled "
        "to label the same prefixes; value_forward_policy_tokens = the same passes in tokens of the policy, each "
        "pass's tokens x its parameters (value_pass_parameters) / the policy's (policy_parameters), and "
        "ratio_mc_to_value_compute = mc_generated_tokens / value_forward_policy_tokens"
    )
    return cost


def _trace_step_verification(
    records: list[TraceRecord],
    est: Estimates,
    value_model: Any,
    cfg: ScoringOptions,
    thresholds: dict[str, dict[str, Any]] | None = None,
    by_trace: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """ProcessBench step verification of the learned values: on traces with exact step labels, else (a task
    that gives none) on MC-derived labels (`mc_step_labelled`, docs/design.md "Step verification"); at the
    `thresholds` chosen on validation traces when given, else on a calibration split of these prompts."""
    split = "validation" if thresholds else "calibration"
    base = {"f1": None, "acc_erroneous": None, "acc_correct": None, "threshold": None, "threshold_split": split}
    if value_model is None:
        return {**base, "note": "no value model: step verification scores the learned values"}
    keep, labels, mismatched = step_labelled(records)
    source = "exact"
    if not keep and by_trace is not None:
        keep, labels, mismatched = mc_step_labelled(records, by_trace)
        source, thresholds = MC_STEP_LABELS, None  # validation thresholds are chosen on exact labels only
        base["threshold_split"] = "calibration"
    if not keep:
        return {
            **base,
            "note": "no evaluated trace has exact step labels (the task gives none), nor MC labels at every step end "
            "(label positions=steps gives them)",
        }
    groups = [records[i].prompt_id for i in keep]

    def verify(scores: list[np.ndarray], which: str) -> dict[str, Any]:
        if thresholds:
            return verification_at(scores, labels, thresholds[which])
        return step_verification(scores, labels, groups, cfg.calibration_fraction, cfg.seed)

    out = verify([prefix_step_scores(est.curves[i]["learned"], records[i].step_spans) for i in keep], "prefix")
    out["score"] = "learned value after each step (prefix-based)"
    out["label_source"] = source
    out["n_traces_with_step_labels"] = len(keep)
    if mismatched:
        out["skipped_note"] = f"{mismatched} trace(s) skipped: " + (
            "step_labels and step_spans differ in length" if source == "exact" else "a step end has no MC label"
        )
    if est.log_ratios is not None and (not thresholds or "process" in thresholds):
        beta = float(value_model.config.beta)
        out["process_level"] = verify(
            [process_step_scores(est.log_ratios[i], records[i].step_spans, beta) for i in keep], "process"
        )
        out["process_level"]["score"] = f"sigmoid(beta * sum of step log-ratios), beta = {beta:g}"
    return out


def step_labelled(records: list[TraceRecord]) -> tuple[list[int], list[int], int]:
    """Indices of the records with exact step labels (as many as their steps), their ProcessBench labels
    (first wrong step, -1 when all are right) and how many were skipped for a length mismatch."""
    keep, mismatched = [], 0
    for i, t in enumerate(records):
        if t.step_labels is None:
            continue
        if len(t.step_labels) != len(t.step_spans):
            mismatched += 1
            continue
        keep.append(i)
    return keep, [first_error(records[i].step_labels) for i in keep], mismatched


#: `label_source` of step verification on MC-derived labels (Math-Shepherd's hard estimation)
MC_STEP_LABELS = (
    "mc: a step is wrong when none of the MC continuations of the prefix that ends it was correct "
    "(Math-Shepherd hard labels); the last step takes the trace's verified outcome"
)


def mc_step_labelled(
    records: list[TraceRecord], by_trace: dict[str, list[dict[str, Any]]]
) -> tuple[list[int], list[int], int]:
    """As `step_labelled`, with each step's label derived from the MC label at the position where the step
    ends (`MC_STEP_LABELS`); a trace with a step end that carries no MC label is skipped and counted."""
    keep, labels, missing = [], [], 0
    for i, t in enumerate(records):
        by_position = {
            int(r["position"]): StepValue(float(r["mean"]), int(r["n"]), float(r["successes"]))
            for r in by_trace.get(t.trace_id, [])
        }
        values = mc_step_values(by_position, t.step_spans, t.length, t.outcome) if t.step_spans else None
        if values is None:
            missing += 1
            continue
        keep.append(i)
        labels.append(first_error([v.hard for v in values]))
    return keep, labels, missing


def validation_step_thresholds(value_model: Any, records: list[TraceRecord], batch_size: int) -> dict[str, Any]:
    """The step-verification thresholds chosen on validation traces `records` (each must be a validation
    prompt's: the caller checks): ``{"prefix": ..., "process": ...}`` (`validation_threshold`; ``process``
    only for a model with per-token log-ratios), or ``{"note": ...}`` when none has exact step labels."""
    keep, labels, _ = step_labelled(records)
    if not keep:
        return {
            "note": "no validation trace has exact step labels: the step threshold is chosen on a calibration split"
        }
    rows = [records[i] for i in keep]
    groups = [t.prompt_id for t in rows]
    prompts, comps = [t.prompt_ids for t in rows], [t.completion_ids for t in rows]
    curves = value_model.predict(prompts, comps, batch_size=batch_size)
    out = {
        "prefix": validation_threshold(
            [prefix_step_scores(c, t.step_spans) for c, t in zip(curves, rows)], labels, groups
        )
    }
    if getattr(value_model, "token_log_ratios", None) is not None:
        beta = float(value_model.config.beta)
        ratios = value_model.token_log_ratios(prompts, comps)
        scores = [
            process_step_scores(np.asarray(r, dtype=np.float64), t.step_spans, beta) for r, t in zip(ratios, rows)
        ]
        out["process"] = validation_threshold(scores, labels, groups)
    return out


def evaluate_step_data(
    value_model: Any,
    tokenizer: Any,
    path: str | Path,
    cfg: ScoringOptions,
    prompt_format: Any = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score ProcessBench / TRL stepwise data at `path` (the splits ``cfg.step_data_split`` names) with the value
    model under ``cfg.step_protocol`` (`prefixvalue.evaluation.stepscores.step_benchmark`); prompts are
    formatted as the value model's training traces were (`prompt_format`, a `PromptFormat`). Writes one
    prediction per example to ``out_dir/step_predictions.jsonl`` when `out_dir` is given. With one split its
    figures are the top-level keys; with several, the unweighted means over splits are (``"average"``)."""
    splits = load_step_splits(path, cfg.step_data_format, cfg.step_data_split)
    tuning = None
    if cfg.step_protocol == "tuned":
        tuning = load_step_data(cfg.step_threshold_data, cfg.step_data_format, cfg.step_threshold_split)
    metrics, rows = step_benchmark(
        value_model,
        tokenizer,
        splits,
        cfg.step_protocol,
        cfg.step_threshold,
        tuning,
        cfg.calibration_fraction,
        cfg.seed,
        cfg.batch_size,
        cfg.step_prompt_template,
        cfg.step_separator,
        prompt_format,
    )
    per = metrics["splits"]
    if len(per) == 1:
        out = {**next(iter(per.values())), **{k: v for k, v in metrics.items() if k != "average"}}
    else:
        avg = metrics["average"]
        out = {
            **metrics,
            **{k: avg[k] for k in ("f1", "acc_erroneous", "acc_correct", "f1_weighted")},
            "threshold_split": cfg.step_protocol,
            "n_calibration": sum(s.get("n_calibration", 0) for s in per.values()),
            "n_test": sum(s.get("n_test", 0) for s in per.values()),
        }
        if "process_level" in avg:
            out["process_level"] = {**avg["process_level"], "threshold_split": cfg.step_protocol}
        out.setdefault("threshold", None)
    out["source"] = str(path)
    if cfg.step_protocol == "fixed":
        out["note"] = (
            f"ProcessBench protocol: every example scored at the fixed threshold {cfg.step_threshold:g} "
            f"(no calibration split){'; F1 is the unweighted mean over splits' if len(per) > 1 else ''}"
        )
    elif cfg.step_protocol == "tuned":
        out["note"] = (
            f"ProcessBench protocol: threshold tuned on {cfg.step_threshold_data}, every example scored at it"
            f"{'; F1 is the unweighted mean over splits' if len(per) > 1 else ''}"
        )
        out["tuned_on"] = str(cfg.step_threshold_data)
    if out_dir is not None:
        pred_path = runfolder.write_text(
            Path(out_dir) / "step_predictions.jsonl", "".join(json.dumps(jsonable(row)) + "\n" for row in rows)
        )
        out["predictions"] = str(pred_path)
    return jsonable(out)
