"""``prefixvalue evaluate``: learned prefix values vs raw soft values vs Monte Carlo labels.

    prefixvalue evaluate --checkpoint runs/train --traces runs/traces --labels runs/labels --out runs/eval
    prefixvalue evaluate --checkpoint runs/train --step_data processbench_gsm8k.jsonl --out runs/pb

Every labelled trace given is evaluated (the prefix labels define the held-out prefixes). For each
labelled prefix it computes the estimators (``learned`` P̂ of the checkpoint; ``logsumexp`` and
``mellowmax`` soft values of the policy's next-token logits over a grid of ω, full vocabulary and
top-k; ``constant`` = the training base rate; plus any estimator registered in `ESTIMATORS`), scores
them against the MC labels (`prefixvalue.evaluation.metrics`), scores first-error prediction with the
ProcessBench protocol (`prefixvalue.evaluation.stepscores`), and writes metrics.json, report.md, plots,
heatmap.html and predictions.parquet (`prefixvalue.evaluation.report`), also logged to wandb.

Library use (what the quickstart calls)::

    result = evaluate_prefixes(traces, labels, value_model=vm, policy=model, config=EvaluateConfig(out="runs/eval"))
    write_report(result, "runs/eval", tokenizer=tok)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, config_to_dict, field, parse_config, save_resolved_config
from ..evaluation.metrics import (
    calibration_bins,
    correlation,
    estimator_metrics,
    saturation,
    split_half_noise_ceiling,
)
from ..evaluation.softvalues import SoftValueSpec, policy_soft_values
from ..evaluation.stepscores import (
    load_step_data,
    prefix_step_scores,
    process_step_scores,
    score_step_examples,
    step_verification,
    td_errors,
)
from ..tasks.base import first_error


# ------------------------------------------------------------------------------------- config
@dataclass
class EvaluateConfig:
    """Evaluate a value checkpoint and the policy's soft values against Monte Carlo prefix labels."""

    out: str | None = field(None, help="output folder (metrics.json, report.md, plots, heatmap.html)")
    checkpoint: str | None = field(None, help="value-model checkpoint folder; None evaluates soft values only")
    traces: str | None = field(None, help="traces dataset folder (prefixvalue collect)")
    labels: str | None = field(None, help="prefix-labels dataset folder (prefixvalue label)")
    policy: str | None = field(None, help="policy for soft values; default: the checkpoint's reference model")
    dtype: str = field("auto", help="policy dtype: auto | float32 | bfloat16 | float16 (soft values are float64)")
    device: str | None = field(None, help="torch device; default cuda if present else cpu")
    batch_size: int = field(8, help="traces per forward pass (value model and policy)")
    soft_values: bool = field(True, help="compute logsumexp / mellowmax soft values of the policy")
    omegas: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0], help="MellowMax ω grid")
    mellowmax_omega: float = field(1.0, help="ω of the headline 'mellowmax' estimator (full vocabulary)")
    top_k: list[int] = field(default_factory=lambda: [10], help="top-k sizes for top-k MellowMax ([] for none)")
    base_rate: float | None = field(None, help="constant estimator's rate; default: the checkpoint's base rate")
    n_bootstrap: int = field(1000, help="bootstrap replicates (resampling traces) for 95% CIs; 0 disables")
    noise_ceiling_repeats: int = field(50, help="random split-halves averaged for the MC noise ceiling")
    seed: int = field(0, help="seed of bootstraps, split-halves and the calibration split")
    first_k: int = field(8, help="position group 'first_k': prefixes with at most this many completion tokens")
    ece_bins: int = field(15, help="equal-width bins of the expected calibration error")
    calibration_fraction: float = field(0.5, help="fraction of prompts used to choose the step threshold")
    step_data: str | None = field(None, help="ProcessBench JSON lines or TRL stepwise data to score as well")
    step_data_format: str = field("auto", help="auto | processbench | trl")
    step_prompt_template: str = field("{prompt}\n", help="how a step-data problem is written before its steps")
    step_separator: str = field("\n", help="text joining the steps of step data")
    max_traces: int | None = field(None, help="evaluate at most this many labelled traces (first in order)")
    plot_traces: int = field(4, help="traces drawn in value_curves.png")
    heatmap_traces: int = field(6, help="traces shown in heatmap.html")
    report_to: str = field("disk,stdout,wandb", help="loggers: any of disk, stdout, wandb (offline without key), none")
    run_name: str | None = field(None, help="wandb run name")

    def __post_init__(self) -> None:
        if self.mellowmax_omega <= 0 or any(w <= 0 for w in self.omegas):
            raise ConfigError("evaluate: MellowMax ω must be > 0")
        if any(k < 1 for k in self.top_k):
            raise ConfigError("evaluate: top_k sizes must be >= 1")
        if not 0 < self.calibration_fraction < 1:
            raise ConfigError("evaluate: calibration_fraction must be in (0, 1)")
        if self.n_bootstrap < 0 or self.batch_size < 1 or self.first_k < 0 or self.ece_bins < 1:
            raise ConfigError("evaluate: n_bootstrap >= 0, batch_size >= 1, first_k >= 0, ece_bins >= 1")
        if self.step_data_format not in ("auto", "processbench", "trl"):
            raise ConfigError("evaluate: step_data_format must be auto, processbench or trl")
        if self.base_rate is not None and not 0 <= self.base_rate <= 1:
            raise ConfigError("evaluate: base_rate must be in [0, 1]")

    def check_inputs(self) -> None:
        """Checks of the command line (which inputs go together); library calls pass data in memory."""
        if self.out is None:
            raise ConfigError("evaluate: --out is required")
        has_prefix_data = self.traces is not None or self.labels is not None
        if has_prefix_data and (self.traces is None or self.labels is None):
            raise ConfigError("evaluate: give both --traces and --labels (or neither, with --step_data)")
        if not has_prefix_data and self.step_data is None:
            raise ConfigError("evaluate: nothing to evaluate; give --traces and --labels, or --step_data")
        if self.step_data is not None and self.checkpoint is None:
            raise ConfigError("evaluate: --step_data is scored with a value model; give --checkpoint")
        if self.checkpoint is None and self.policy is None:
            raise ConfigError("evaluate: give --checkpoint, or --policy to evaluate soft values only")


# ------------------------------------------------------------------------------ trace records
@dataclass
class TraceRecord:
    """One evaluated trace: ids, final outcome, steps, and its labelled prefix positions."""

    trace_id: str
    prompt_id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    outcome: float
    step_spans: list[tuple[int, int]]
    step_labels: list[bool] | None
    prompt: str = ""
    completion: str = ""

    @property
    def length(self) -> int:
        """Completion tokens T (positions run 0..T)."""
        return len(self.completion_ids)


@dataclass
class EstimatorInputs:
    """What an estimator function gets: the traces and the loaded models (any may be None)."""

    traces: list[TraceRecord]
    value_model: Any = None
    policy: Any = None
    tokenizer: Any = None
    batch_size: int = 8


@dataclass
class Estimator:
    """A registered estimator: ``fn(inputs) -> list of arrays``, one per trace, values at positions 0..T.

    `probability` says whether the values are probabilities (then Brier and ECE are reported).
    """

    fn: Callable[[EstimatorInputs], list[np.ndarray]]
    probability: bool = True
    description: str = ""


#: user estimators, evaluated beside the built-in ones: a plain dict, fill it with ordinary code
#: (``ESTIMATORS["my_value"] = Estimator(fn, probability=True, description="...")``).
ESTIMATORS: dict[str, Estimator] = {}


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


def _rows(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, list):
        return data
    return [dict(r) for r in data]


def _trace_record(r: dict[str, Any]) -> TraceRecord:
    spans = [(int(s[0]), int(s[1])) for s in (r.get("step_spans") or [])]
    labels = r.get("step_labels")
    return TraceRecord(
        trace_id=str(r["trace_id"]), prompt_id=str(r["prompt_id"]), prompt_ids=[int(x) for x in r["prompt_ids"]],
        completion_ids=[int(x) for x in r["completion_ids"]], outcome=float(r["outcome"]), step_spans=spans,
        step_labels=None if labels is None else [bool(x) for x in labels],
        prompt=str(r.get("prompt") or ""), completion=str(r.get("completion") or ""))


# ------------------------------------------------------------------------------------ helpers
def read_mc_cost(labels_dir: str | Path | None) -> dict[str, Any] | None:
    """Read ``cost.json`` beside the prefix labels (written by ``prefixvalue label``), or None.

    Returns ``{"generated_tokens", "prefill_tokens", "raw"}`` (token counts may be None if the file
    names them differently; the raw file is kept so nothing is lost).
    """
    if labels_dir is None:
        return None
    path = Path(labels_dir) / "cost.json"
    if not path.exists():
        return None
    raw = json.loads(path.read_text())

    def find(d: Any, word: str) -> float | None:
        if isinstance(d, dict):
            for k, v in d.items():
                if word in k.lower() and isinstance(v, (int, float)) and not isinstance(v, bool):
                    return float(v)
            for v in d.values():
                got = find(v, word)
                if got is not None:
                    return got
        return None

    return {"generated_tokens": find(raw, "generated"), "prefill_tokens": find(raw, "prefill"), "raw": raw}


def position_groups(position: int, step_ends: set[int], first_k: int) -> dict[str, bool]:
    """Position-group flags of a prefix: ``first_k`` (≤ K completion tokens), ``step_boundary``
    (the prefix ends exactly at a step end), ``middle`` (neither). The first two may overlap."""
    fk = position <= first_k
    sb = position in step_ends
    return {"first_k": fk, "step_boundary": sb, "middle": not fk and not sb}


def _load_value_model(path: str, device: str | None) -> Any:
    from ..value import load_value_model  # written with the value-model issue

    return load_value_model(path, device=device)


# --------------------------------------------------------------------------------- evaluation
def evaluate_prefixes(
    traces: Any,
    labels: Any,
    value_model: Any = None,
    policy: Any = None,
    tokenizer: Any = None,
    config: EvaluateConfig | None = None,
    estimators: dict[str, Estimator] | None = None,
    mc_cost: dict[str, Any] | None = None,
) -> EvalResult:
    """Score every estimator on every labelled prefix and build the metrics.json dict.

    `traces` and `labels` are datasets (or lists of row dicts) in the DESIGN.md contracts; traces
    without labels are ignored. `value_model` follows the `prefixvalue.value` interface (``predict``,
    and ``token_log_ratios`` when ``kind == "implicit"``); `policy` is the causal LM whose logits give
    soft values (skipped when None). `estimators` defaults to the `ESTIMATORS` registry.
    `mc_cost` is `read_mc_cost` of the labels folder. Returns an `EvalResult`.
    """
    cfg = config or EvaluateConfig()
    estimators = dict(ESTIMATORS if estimators is None else estimators)
    label_rows = _rows(labels)
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for r in label_rows:
        by_trace.setdefault(str(r["trace_id"]), []).append(r)
    records = [_trace_record(r) for r in _rows(traces) if str(r["trace_id"]) in by_trace]
    known = {t.trace_id for t in records}
    orphan = sorted(set(by_trace) - known)
    if cfg.max_traces is not None:
        records = records[: cfg.max_traces]
    if not records:
        raise ValueError("evaluate: no trace has prefix labels (check that --labels matches --traces)")
    notes: list[str] = []
    if orphan:
        notes.append(f"{len(orphan)} labelled trace id(s) are missing from the traces and were skipped "
                     f"(e.g. {orphan[0]!r})")

    prompts = [t.prompt_ids for t in records]
    comps = [t.completion_ids for t in records]
    curves: list[dict[str, np.ndarray]] = [{} for _ in records]
    info: dict[str, dict[str, Any]] = {}
    cost: dict[str, Any] = {}

    # -- learned values (one forward per trace gives every position)
    log_ratios: list[np.ndarray] | None = None
    base_rate = cfg.base_rate
    if value_model is not None:
        preds = value_model.predict(prompts, comps, batch_size=cfg.batch_size)
        for c, p, t in zip(curves, preds, records):
            p = np.asarray(p, dtype=np.float64)
            if len(p) != t.length + 1:
                raise ValueError(f"value model returned {len(p)} values for trace {t.trace_id} of "
                                 f"{t.length} tokens; expected {t.length + 1} (positions 0..T)")
            c["learned"] = p
        kind = getattr(value_model, "kind", "unknown")
        info["learned"] = {"probability": True, "description": f"checkpoint P̂(s_t) ({kind} value model)",
                           "kind": kind}
        if kind == "implicit":
            info["learned"]["note"] = ("implicit model: at position 0 (bare prompt) V_φ = 0 carries no information; "
                                       "P̂ there is the training base rate")
            log_ratios = [np.asarray(r, dtype=np.float64)
                          for r in value_model.token_log_ratios(prompts, comps, batch_size=cfg.batch_size)]
        cost["value_forward_tokens"] = int(sum(len(p) + len(c) for p, c in zip(prompts, comps)))
        if base_rate is None:
            base_rate = getattr(getattr(value_model, "config", None), "base_rate", None)
    else:
        cost["value_forward_tokens"] = None
        cost["value_forward_tokens_note"] = "no value model evaluated"

    # -- soft values of the policy
    if policy is not None and cfg.soft_values:
        spec = SoftValueSpec(omegas=tuple(cfg.omegas), default_omega=cfg.mellowmax_omega, top_k=tuple(cfg.top_k))
        pad = getattr(tokenizer, "pad_token_id", None) or 0
        soft, ftok = policy_soft_values(policy, prompts, comps, spec, batch_size=cfg.batch_size, pad_token_id=pad)
        for c, s in zip(curves, soft):
            c.update(s)
        for name, params in spec.names.items():
            what = ("log Σ_a exp q(s,a) over the full vocabulary (extensive, Blondel et al.)"
                    if params["operator"] == "logsumexp" else
                    f"MellowMax ω={params['omega']:g} over {params['vocab']} vocabulary (intensive)")
            info[name] = {"probability": False, "description": what, "params": params}
        info["mellowmax"]["description"] += " — the headline soft value; default ω stated in params"
        if cfg.mellowmax_omega == 1.0:
            info["mellowmax"]["note"] = ("at ω = 1 over the full vocabulary MellowMax equals logsumexp − log|A|, a "
                                         "constant shift, so its correlations and AUROC equal logsumexp's")
        cost["policy_forward_tokens"] = int(ftok)

    # -- constant base rate
    if base_rate is not None:
        for c, t in zip(curves, records):
            c["constant"] = np.full(t.length + 1, float(base_rate))
        info["constant"] = {"probability": True, "description": f"training base rate {float(base_rate):.4g}",
                            "base_rate": float(base_rate)}
    else:
        notes.append("no 'constant' estimator: no base rate given and no value model to read it from")

    # -- user estimators
    inputs = EstimatorInputs(records, value_model, policy, tokenizer, cfg.batch_size)
    for name, est in estimators.items():
        vals = est.fn(inputs)
        if len(vals) != len(records):
            raise ValueError(f"estimator {name!r} returned {len(vals)} arrays for {len(records)} traces")
        for c, v, t in zip(curves, vals, records):
            v = np.asarray(v, dtype=np.float64)
            if len(v) != t.length + 1:
                raise ValueError(f"estimator {name!r} gave {len(v)} values for trace {t.trace_id}; "
                                 f"expected {t.length + 1} (positions 0..T)")
            c[name] = v
        info[name] = {"probability": bool(est.probability), "description": est.description or "user estimator"}

    # -- the per-prefix table
    names = list(info)
    cols: dict[str, list[Any]] = {k: [] for k in (
        "trace_id", "prompt_id", "position", "n", "successes", "mc_mean", "ci_low", "ci_high", "outcome",
        "first_k", "step_boundary", "middle")}
    for name in names:
        cols[name] = []
    if "learned" in names:
        cols["learned_td"] = []
    sample_outcomes: list[list[float]] | None = []
    mc: list[dict[str, np.ndarray]] = []
    for ti, t in enumerate(records):
        rows = sorted(by_trace[t.trace_id], key=lambda r: int(r["position"]))
        ends = {int(e) for _, e in t.step_spans}
        td = td_errors(curves[ti]["learned"]) if "learned" in curves[ti] else None
        pos_list, m_list, lo_list, hi_list = [], [], [], []
        for r in rows:
            p = int(r["position"])
            if not 0 <= p <= t.length:
                raise ValueError(f"label position {p} outside 0..{t.length} for trace {t.trace_id}")
            n, k = int(r["n"]), int(r["successes"])
            cols["trace_id"].append(t.trace_id)
            cols["prompt_id"].append(t.prompt_id)
            cols["position"].append(p)
            cols["n"].append(n)
            cols["successes"].append(k)
            cols["mc_mean"].append(float(r["mean"]))
            cols["ci_low"].append(float(r["ci_low"]))
            cols["ci_high"].append(float(r["ci_high"]))
            cols["outcome"].append(t.outcome)
            for g, flag in position_groups(p, ends, cfg.first_k).items():
                cols[g].append(flag)
            for name in names:
                cols[name].append(float(curves[ti][name][p]))
            if td is not None:
                cols["learned_td"].append(float(td[p]) if p < t.length else None)
            so = r.get("sample_outcomes")
            if sample_outcomes is not None and so is not None and len(so) == n:
                sample_outcomes.append([float(x) for x in so])
            else:
                sample_outcomes = None
            pos_list.append(p)
            m_list.append(float(r["mean"]))
            lo_list.append(float(r["ci_low"]))
            hi_list.append(float(r["ci_high"]))
        mc.append({"position": np.asarray(pos_list), "mean": np.asarray(m_list), "ci_low": np.asarray(lo_list),
                   "ci_high": np.asarray(hi_list)})

    y = np.asarray(cols["mc_mean"], dtype=np.float64)
    n_arr = np.asarray(cols["n"])
    outcome = np.asarray(cols["outcome"], dtype=np.float64)
    groups = np.asarray(cols["trace_id"])
    positions = np.asarray(cols["position"])

    # -- MC section
    sat = saturation(y, n_arr)
    ceiling = split_half_noise_ceiling(n_arr, cols["successes"], sample_outcomes,
                                       repeats=cfg.noise_ceiling_repeats, seed=cfg.seed)
    spp = int(np.median(n_arr))
    mc_section: dict[str, Any] = {
        "samples_per_prefix": spp,
        "samples_per_prefix_range": [int(n_arr.min()), int(n_arr.max())],
        "label_mean": float(y.mean()),
        "label_variance": float(y.var()),
        "n_at_one": sat["n_at_one"],
        "n_at_zero": sat["n_at_zero"],
        "noise_ceiling": ceiling,
        "saturated": sat["saturated"],
        "note": sat["note"],
    }

    # -- estimators
    est_metrics: dict[str, Any] = {}
    for name in names:
        x = np.asarray(cols[name], dtype=np.float64)
        m = estimator_metrics(x, y, outcome, groups, probability=info[name]["probability"],
                              n_boot=cfg.n_bootstrap, seed=cfg.seed, n_bins=cfg.ece_bins)
        m["spearman"]["noise_ceiling"] = ceiling["spearman"]
        if m["spearman"]["value"] is not None and ceiling["spearman"]:
            m["spearman"]["fraction_of_ceiling"] = m["spearman"]["value"] / ceiling["spearman"]
        m["description"] = info[name]["description"]
        for extra in ("params", "kind", "base_rate"):
            if extra in info[name]:
                m[extra] = info[name][extra]
        if "note" in info[name]:
            m["note"] = info[name]["note"]
        est_metrics[name] = m

    # -- by position group
    by_group: dict[str, Any] = {}
    for g in ("first_k", "step_boundary", "middle"):
        mask = np.asarray(cols[g], dtype=bool)
        entry: dict[str, Any] = {"n_prefixes": int(mask.sum()),
                                 "n_traces": len(set(groups[mask].tolist())),
                                 "definition": {"first_k": f"position <= {cfg.first_k}",
                                                "step_boundary": "the prefix ends at a step end",
                                                "middle": f"position > {cfg.first_k} and not at a step end"}[g]}
        if mask.any():
            entry["label_mean"] = float(y[mask].mean())
            entry["label_variance"] = float(y[mask].var())
            gs = saturation(y[mask], n_arr[mask])
            entry["saturated"] = gs["saturated"]
            entry["note"] = gs["note"]
        entry["estimators"] = {
            name: {m: correlation(np.asarray(cols[name])[mask], y[mask], groups[mask], m,
                                  n_boot=cfg.n_bootstrap, seed=cfg.seed) for m in ("spearman", "pearson")}
            for name in names}
        by_group[g] = entry

    # -- step verification on the traces' exact step labels
    step_ver = _trace_step_verification(records, curves, log_ratios, value_model, cfg)

    # -- cost
    n_pref = len(y)
    mc_gen = None
    if label_rows and "generated_tokens" in label_rows[0]:
        idx = {(str(r["trace_id"]), int(r["position"])): r for r in label_rows}
        mc_gen = float(sum(float(idx[(tid, p)]["generated_tokens"]) for tid, p in zip(groups, positions)))
        cost["mc_generated_tokens_source"] = "labels column generated_tokens (exact for these prefixes)"
    elif mc_cost is not None and mc_cost.get("generated_tokens") is not None:
        mc_gen = float(mc_cost["generated_tokens"])
        src = "labels cost.json"
        if n_pref < len(label_rows):
            mc_gen *= n_pref / len(label_rows)
            src += f", scaled to the {n_pref} of {len(label_rows)} labelled prefixes evaluated"
        cost["mc_generated_tokens_source"] = src
        if mc_cost.get("prefill_tokens") is not None:
            cost["mc_prefill_tokens"] = mc_cost["prefill_tokens"]
    cost["mc_generated_tokens"] = mc_gen
    if mc_gen is None:
        cost["mc_generated_tokens_note"] = ("unknown: the labels folder has no cost.json (or it names no "
                                            "generated-token count) and no generated_tokens column")
    vft = cost.get("value_forward_tokens")
    cost["ratio_mc_to_value"] = (mc_gen / vft) if (mc_gen is not None and vft) else None
    if cost["ratio_mc_to_value"] is None:
        cost["ratio_mc_to_value_note"] = "needs both MC generated tokens and value-model forward tokens"
    cost["note"] = ("value_forward_tokens = prompt + completion tokens of one value-model forward per trace, which "
                    "scores every prefix of the trace; mc_generated_tokens = tokens sampled to label the same prefixes")

    metrics: dict[str, Any] = {
        "n_traces": len(records),
        "n_prefixes": n_pref,
        "positions": {"min": int(positions.min()), "max": int(positions.max()),
                      "n_distinct": len(np.unique(positions)),
                      "mean_per_trace": float(n_pref / len(records)),
                      "groups": {g: int(np.sum(cols[g])) for g in ("first_k", "step_boundary", "middle")},
                      "first_k": cfg.first_k},
        "mc": mc_section,
        "estimators": est_metrics,
        "mellowmax_default": ({"omega": cfg.mellowmax_omega, "vocab": "full"} if "mellowmax" in info else None),
        "by_position_group": by_group,
        "step_verification": step_ver,
        "cost": cost,
        "notes": notes,
    }
    calib = {}
    for name in names:
        if est_metrics[name]["probability"]:
            calib[name] = calibration_bins(cols[name], y, cfg.ece_bins)
    return EvalResult(metrics=_jsonable(metrics), prefixes=cols, traces=records, curves=curves, mc=mc,
                      estimator_info=info, calibration=calib)


def _trace_step_verification(records: list[TraceRecord], curves: list[dict[str, np.ndarray]],
                             log_ratios: list[np.ndarray] | None, value_model: Any,
                             cfg: EvaluateConfig) -> dict[str, Any]:
    """ProcessBench step verification of the learned values on traces with exact step labels."""
    base = {"f1": None, "acc_erroneous": None, "acc_correct": None, "threshold": None,
            "threshold_split": "calibration"}
    if value_model is None:
        return {**base, "note": "no value model: step verification scores the learned values"}
    keep, mismatched = [], 0
    for i, t in enumerate(records):
        if t.step_labels is None:
            continue
        if len(t.step_labels) != len(t.step_spans):
            mismatched += 1
            continue
        keep.append(i)
    if not keep:
        return {**base, "note": "no evaluated trace has exact step labels (the task gives none)"}
    labels = [first_error(records[i].step_labels) for i in keep]
    groups = [records[i].prompt_id for i in keep]
    scores = [prefix_step_scores(curves[i]["learned"], records[i].step_spans) for i in keep]
    out = step_verification(scores, labels, groups, cfg.calibration_fraction, cfg.seed)
    out["score"] = "learned value after each step (prefix-based)"
    out["n_traces_with_step_labels"] = len(keep)
    if mismatched:
        out["skipped_note"] = f"{mismatched} trace(s) skipped: step_labels and step_spans differ in length"
    if log_ratios is not None:
        beta = float(value_model.config.beta)
        pscores = [process_step_scores(log_ratios[i], records[i].step_spans, beta) for i in keep]
        out["process_level"] = step_verification(pscores, labels, groups, cfg.calibration_fraction, cfg.seed)
        out["process_level"]["score"] = f"sigmoid(beta * sum of step log-ratios), beta = {beta:g}"
    return out


def _jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy scalars to Python, non-finite floats to None (never a bare NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


# ------------------------------------------------------------------------------------- main
def evaluate_step_data(value_model: Any, tokenizer: Any, path: str | Path, cfg: EvaluateConfig) -> dict[str, Any]:
    """Score ProcessBench / TRL stepwise data at `path` with the value model (ProcessBench protocol)."""
    examples = load_step_data(path, cfg.step_data_format)
    out = score_step_examples(value_model, tokenizer, examples, cfg.calibration_fraction, cfg.seed,
                              cfg.batch_size, cfg.step_prompt_template, cfg.step_separator)
    out["source"] = str(path)
    return _jsonable(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``prefixvalue evaluate``; returns the metrics dict (also written to ``OUT/metrics.json``)."""
    import torch

    from ..data import load_labels, load_traces
    from ..evaluation.report import write_report
    from ..policies import default_device, load_policy, load_tokenizer
    from ..tracking import build_logger

    cfg = parse_config(EvaluateConfig, list(argv) if argv is not None else None, prog="prefixvalue evaluate")
    cfg.check_inputs()
    out = Path(cfg.out)  # type: ignore[arg-type]
    save_resolved_config(cfg, out)
    device = cfg.device or str(default_device())
    vm = _load_value_model(cfg.checkpoint, device) if cfg.checkpoint else None
    policy_path = cfg.policy or (str(vm.config.base_model) if vm is not None else None)
    policy = tokenizer = None
    if policy_path is not None and cfg.soft_values and cfg.traces is not None:
        policy, tokenizer = load_policy(policy_path, cfg.dtype, device)
    elif policy_path is not None:
        tokenizer = load_tokenizer(policy_path)
    logger = build_logger(cfg.report_to, out, config=config_to_dict(cfg), run_name=cfg.run_name)
    try:
        if cfg.traces is not None:
            with torch.no_grad():
                result = evaluate_prefixes(load_traces(cfg.traces), load_labels(cfg.labels), value_model=vm,
                                           policy=policy, tokenizer=tokenizer, config=cfg,
                                           mc_cost=read_mc_cost(cfg.labels))
            result.metrics["policy"] = policy_path
            result.metrics["checkpoint"] = cfg.checkpoint
            if cfg.step_data is not None:
                result.metrics["step_benchmark"] = evaluate_step_data(vm, tokenizer, cfg.step_data, cfg)
            write_report(result, out, tokenizer=tokenizer, logger=logger, config=cfg)
            metrics = result.metrics
        else:
            metrics = {"checkpoint": cfg.checkpoint, "policy": policy_path,
                       "step_benchmark": evaluate_step_data(vm, tokenizer, cfg.step_data, cfg)}
            from ..evaluation.report import write_step_benchmark_report

            write_step_benchmark_report(metrics, out, logger=logger)
    finally:
        logger.finish()
    return metrics
