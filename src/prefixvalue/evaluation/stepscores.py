"""Step scores, first-error prediction and step verification under the ProcessBench protocol.

- prefix-based step score: the prefix value right after the step, ``V(position = step end)``
- token TD error (γ = 1): ``δ_t = V(s_{t+1}) − V(s_t)`` from values at positions 0..T (a per-token
  column of predictions.parquet, not a step score)
- process-level step score (models with token log-ratios): ``σ(β · Σ_{i∈step} log π_φ(y_i|s_i) − log π_ref(y_i|s_i))``
- predicted first error: the first step whose score is below a threshold (−1 if none)
- ProcessBench: acc_err on traces with an error, acc_cor on all-correct traces, F1 their harmonic
  mean. The threshold is chosen on a calibration split of *prompts*, stratified by label (erroneous
  vs all-correct), and reported on the disjoint test split (never tuned on the reported data); when
  the calibration split lacks a class no threshold can be tuned and F1 is null with a note.

The step data (`StepExample`, its loaders, `tokenize_step_example`) and the three per-step readings of a
value curve (`prefix_step_scores`, `td_errors`, `process_step_scores`) are `prefixvalue.data.steps`'s,
importable from here too. `step_benchmark` scores
splits under a protocol (``calibration``; ProcessBench's ``fixed`` threshold, or one ``tuned`` on separate
data), with per-split results, their average and one prediction per example (docs/design.md, "Data bridges").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.split import unit_hash
from ..data.steps import (
    STEP_DATA_BUILDERS,
    StepExample,
    load_processbench,
    load_step_data,
    load_step_splits,
    load_trl_stepwise,
    open_step_data,
    prefix_step_scores,
    process_step_scores,
    processbench_examples,
    step_format,
    td_errors,
    tokenize_step_example,
    trl_examples,
)
from ..prompting import PromptFormat
from .estimators import value_forward_tokens


# -------------------------------------------------------------------------------------- scores
def predict_first_error(scores: Sequence[float] | np.ndarray, threshold: float) -> int:
    """Index of the first step whose score is below `threshold`; −1 if every step clears it."""
    for i, s in enumerate(np.asarray(scores, dtype=np.float64)):
        if s < threshold:
            return i
    return -1


def processbench_f1(predicted: Sequence[int], labels: Sequence[int]) -> dict[str, Any]:
    """ProcessBench scores of first-error predictions against labels (−1 = all steps right).

    Returns ``{"f1", "acc_erroneous", "acc_correct", "n_erroneous", "n_correct"}``; an accuracy on
    an empty class is None (with ``"note"``) and then F1 is None too.
    """
    pred = np.asarray(predicted, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)
    err = lab >= 0
    out: dict[str, Any] = {"n_erroneous": int(err.sum()), "n_correct": int((~err).sum())}
    out["acc_erroneous"] = float((pred[err] == lab[err]).mean()) if err.any() else None
    out["acc_correct"] = float((pred[~err] == -1).mean()) if (~err).any() else None
    a, c = out["acc_erroneous"], out["acc_correct"]
    if a is None or c is None:
        out["f1"] = None
        out["note"] = (
            f"F1 undefined: {out['n_erroneous']} erroneous and {out['n_correct']} all-correct traces; "
            f"ProcessBench F1 needs both"
        )
    else:
        out["f1"] = 0.0 if a + c == 0 else 2 * a * c / (a + c)
    return out


def choose_threshold(
    score_lists: Sequence[Sequence[float]], labels: Sequence[int], candidates: Sequence[float] | None = None
) -> tuple[float, float | None]:
    """Threshold maximising ProcessBench F1 on the given (calibration) examples.

    Candidates default to the midpoints between sorted distinct scores plus values just below the
    smallest and above the largest. Ties go to the smallest threshold. Returns (threshold, F1).
    """
    if candidates is None:
        allscores = np.unique(
            np.concatenate([np.asarray(s, dtype=np.float64) for s in score_lists if len(s)] or [np.zeros(0)])
        )
        if len(allscores) == 0:
            return 0.5, None
        mids = (allscores[1:] + allscores[:-1]) / 2
        candidates = np.concatenate([[allscores[0] - 1e-9], mids, [allscores[-1] + 1e-9]])
    best_t, best_f = float(candidates[0]), -1.0
    for t in candidates:
        preds = [predict_first_error(s, float(t)) for s in score_lists]
        f1 = processbench_f1(preds, labels)["f1"]
        if f1 is not None and f1 > best_f + 1e-12:
            best_t, best_f = float(t), f1
    return best_t, (best_f if best_f >= 0 else None)


def calibration_split(
    group_ids: Sequence[str], fraction: float = 0.5, seed: int = 0, labels: Sequence[int] | None = None
) -> np.ndarray:
    """Boolean mask: True for examples whose group (prompt) falls in the calibration split.

    All traces of a prompt stay on one side; a prompt goes to calibration when the hash of
    (seed, prompt id) (`prefixvalue.data.split.unit_hash`) is below `fraction`, so its side does not
    depend on the other prompts or their order. With `labels` (ProcessBench labels, −1 = all steps
    right) the split is stratified: prompts are grouped by which classes their traces hold
    (erroneous only, all-correct only, both), and a stratum of two or more prompts that the hash puts
    entirely on one side is split instead in hash order (round(fraction · size) prompts, at least
    one and at most size − 1, to calibration). So both splits see both classes whenever two prompts
    of each exist. Without `labels`, all prompts form one stratum.
    """
    ids = [str(g) for g in group_ids]
    classes: dict[str, set[bool]] = {}
    for i, g in enumerate(ids):
        classes.setdefault(g, set()).add(bool(labels[i] >= 0) if labels is not None else True)

    def h(g: str) -> float:
        return unit_hash(f"calibration|{seed}|{g}")

    strata: dict[tuple[bool, ...], list[str]] = {}
    for g in sorted(classes):
        strata.setdefault(tuple(sorted(classes[g])), []).append(g)
    cal: set[str] = set()
    for members in strata.values():
        side = {g for g in members if h(g) < fraction}
        if len(members) >= 2 and (not side or len(side) == len(members)):
            ranked = sorted(members, key=h)
            side = set(ranked[: min(max(1, round(fraction * len(ranked))), len(ranked) - 1)])
        cal.update(side)
    uniq = sorted(classes)
    if len(uniq) >= 2 and (not cal or len(cal) == len(uniq)):  # every stratum had one prompt
        ranked = sorted(uniq, key=h)
        cal = set(ranked[: min(max(1, round(fraction * len(uniq))), len(uniq) - 1)])
    return np.array([g in cal for g in ids], dtype=bool)


def step_verification(
    score_lists: Sequence[Sequence[float]],
    labels: Sequence[int],
    group_ids: Sequence[str],
    calibration_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """ProcessBench step verification with the threshold chosen on a calibration split of prompts.

    Returns ``{"f1", "acc_erroneous", "acc_correct", "threshold", "threshold_split": "calibration",
    "n_calibration", "n_test", "calibration_f1", "n_erroneous", "n_correct"}``; scores are for the
    test split only. Null values come with a ``"note"``.
    """
    labels = [int(x) for x in labels]
    out: dict[str, Any] = {
        "f1": None,
        "acc_erroneous": None,
        "acc_correct": None,
        "threshold": None,
        "threshold_split": "calibration",
        "n_calibration": 0,
        "n_test": 0,
    }
    if len(labels) == 0:
        out["note"] = "no traces with step labels (the task gives none, or no labelled trace was evaluated)"
        return out
    cal = calibration_split(group_ids, calibration_fraction, seed, labels)
    test = ~cal
    out["n_calibration"], out["n_test"] = int(cal.sum()), int(test.sum())
    out["n_prompts_calibration"] = len({g for g, c in zip(group_ids, cal) if c})
    out["n_prompts_test"] = len({g for g, c in zip(group_ids, cal) if not c})
    if not cal.any() or not test.any():
        out["note"] = (
            f"step verification needs >= 2 prompts to hold a calibration split apart from the test "
            f"split; got {len(set(map(str, group_ids)))} prompt(s)"
        )
        return out
    cal_scores = [score_lists[i] for i in np.flatnonzero(cal)]
    cal_labels = [labels[i] for i in np.flatnonzero(cal)]
    test_idx = np.flatnonzero(test)
    n_err_cal = sum(1 for x in cal_labels if x >= 0)
    if n_err_cal == 0 or n_err_cal == len(cal_labels):
        # no threshold can be tuned without both classes: F1 would score an arbitrary threshold
        res = processbench_f1([-1] * len(test_idx), [labels[i] for i in test_idx])
        out.update(n_erroneous=res["n_erroneous"], n_correct=res["n_correct"], calibration_f1=None)
        out["note"] = (
            f"F1 not reported: the calibration split holds {n_err_cal} erroneous and "
            f"{len(cal_labels) - n_err_cal} all-correct traces, so no threshold can be tuned "
            f"(ProcessBench F1 needs both classes to choose it)"
        )
        return out
    threshold, cal_f1 = choose_threshold(cal_scores, cal_labels)
    out["threshold"] = threshold
    out["calibration_f1"] = cal_f1
    preds = [predict_first_error(score_lists[i], threshold) for i in test_idx]
    res = processbench_f1(preds, [labels[i] for i in test_idx])
    out.update(res)
    return out


def validation_threshold(
    score_lists: Sequence[Sequence[float]], labels: Sequence[int], group_ids: Sequence[str]
) -> dict:
    """The step threshold chosen on validation traces (a choice: docs/design.md, "Choose on validation, report
    on test"): ``{"threshold", "calibration_f1", "threshold_split": "validation", "n_calibration",
    "n_prompts_calibration"}``, the threshold None with a ``note`` when the validation traces lack a class."""
    labels = [int(x) for x in labels]
    n_err = sum(1 for x in labels if x >= 0)
    out: dict[str, Any] = {
        "threshold": None,
        "calibration_f1": None,
        "threshold_split": "validation",
        "n_calibration": len(labels),
        "n_prompts_calibration": len({str(g) for g in group_ids}),
    }
    if n_err == 0 or n_err == len(labels):
        out["note"] = (
            f"F1 not reported: the validation traces hold {n_err} erroneous and {len(labels) - n_err} all-correct "
            f"traces, so no threshold can be chosen (ProcessBench F1 needs both classes)"
        )
        return out
    out["threshold"], out["calibration_f1"] = choose_threshold(score_lists, labels)
    return out


def verification_at(score_lists: Sequence[Sequence[float]], labels: Sequence[int], chosen: dict[str, Any]) -> dict:
    """ProcessBench scores of every example at the threshold `chosen` on validation (`validation_threshold`),
    with its record; F1 None with the choice's note when no threshold could be chosen."""
    if chosen.get("threshold") is None:
        res = processbench_f1([-1] * len(labels), [int(x) for x in labels])
        return {
            **chosen,
            "f1": None,
            "acc_erroneous": None,
            "acc_correct": None,
            "n_test": len(labels),
            "n_erroneous": res["n_erroneous"],
            "n_correct": res["n_correct"],
        }
    out = fixed_threshold_verification(score_lists, labels, chosen["threshold"], "validation")
    return {**out, **{k: v for k, v in chosen.items() if k != "threshold"}}


def score_step_examples(
    value_model: Any,
    tokenizer: Any,
    examples: Sequence[StepExample],
    calibration_fraction: float = 0.5,
    seed: int = 0,
    batch_size: int = 32,
    prompt_template: str = "{prompt}\n",
    step_separator: str = "\n",
    prompt_format: PromptFormat | None = None,
) -> dict[str, Any]:
    """Score step data with a value model and report ProcessBench step verification.

    Prefix-based scores (P̂ after each step) always; process-level scores as well, under
    ``"process_level"``, when the model's class sets ``process_scores`` (it has ``token_log_ratios``). Returns the
    `step_verification` dict plus ``"n_examples"``, ``"value_forward_tokens"``.
    """
    if not examples:
        return {"f1": None, "note": "no step examples", "threshold_split": "calibration", "n_examples": 0}
    enc = [tokenize_step_example(tokenizer, ex, prompt_template, step_separator, prompt_format) for ex in examples]
    prompts = [e[0] for e in enc]
    comps = [e[1] for e in enc]
    values = value_model.predict(prompts, comps, batch_size=batch_size)
    scores = [prefix_step_scores(v, e[2]) for v, e in zip(values, enc)]
    labels = [ex.label for ex in examples]
    groups = [ex.group for ex in examples]
    out = step_verification(scores, labels, groups, calibration_fraction, seed)
    out["score"] = "prefix_value_after_step"
    out["n_examples"] = len(examples)
    out["value_forward_tokens"] = value_forward_tokens(value_model, prompts, comps)
    if getattr(value_model, "process_scores", False):
        ratios = value_model.token_log_ratios(prompts, comps, batch_size=batch_size)
        beta = float(value_model.config.beta)
        pscores = [process_step_scores(r, e[2], beta) for r, e in zip(ratios, enc)]
        out["process_level"] = step_verification(pscores, labels, groups, calibration_fraction, seed)
        out["process_level"]["score"] = "sigmoid(beta * step log-ratio sum)"
    return out


# ----------------------------------------------------------------------------- benchmark protocols
#: how a step benchmark chooses its threshold (docs/design.md, "Step benchmarks")
STEP_PROTOCOLS: tuple[str, ...] = ("calibration", "fixed", "tuned")


@dataclass
class StepExampleScores:
    """Step scores of some step-data examples (`step_example_scores`): `prefix` (value after each step) and,
    for models with token log-ratios, `process` (σ(β · step log-ratio sum)); `forward_tokens` the tokens the
    value model read. One solution's scores from the Python API are `prefixvalue.value.base.StepScores`."""

    prefix: list[np.ndarray]
    process: list[np.ndarray] | None
    forward_tokens: int


def step_example_scores(
    value_model: Any,
    tokenizer: Any,
    examples: Sequence[StepExample],
    batch_size: int = 32,
    prompt_template: str = "{prompt}\n",
    step_separator: str = "\n",
    prompt_format: PromptFormat | None = None,
) -> StepExampleScores:
    """Score every step of `examples` with the value model (`StepExampleScores`)."""
    if not examples:
        return StepExampleScores([], None, 0)
    enc = [tokenize_step_example(tokenizer, ex, prompt_template, step_separator, prompt_format) for ex in examples]
    prompts = [e[0] for e in enc]
    comps = [e[1] for e in enc]
    values = value_model.predict(prompts, comps, batch_size=batch_size)
    prefix = [prefix_step_scores(v, e[2]) for v, e in zip(values, enc)]
    process = None
    if getattr(value_model, "process_scores", False):
        ratios = value_model.token_log_ratios(prompts, comps, batch_size=batch_size)
        beta = float(value_model.config.beta)
        process = [process_step_scores(r, e[2], beta) for r, e in zip(ratios, enc)]
    return StepExampleScores(prefix, process, int(sum(len(p) + len(c) for p, c in zip(prompts, comps))))


def fixed_threshold_verification(
    score_lists: Sequence[Sequence[float]], labels: Sequence[int], threshold: float, how: str
) -> dict[str, Any]:
    """ProcessBench scores of every example at a `threshold` chosen before seeing them (`how` says how:
    ``fixed`` or ``tuned``): ``{"f1", "acc_erroneous", "acc_correct", "threshold", "threshold_split", "n_test"}``."""
    preds = [predict_first_error(s, threshold) for s in score_lists]
    out: dict[str, Any] = {"threshold": float(threshold), "threshold_split": how, "n_calibration": 0}
    out.update(processbench_f1(preds, [int(x) for x in labels]))
    out["n_test"] = len(preds)
    return out


def _average(per_split: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over splits of F1 and the two accuracies (ProcessBench's average), and the F1 mean
    weighted by examples; None when a split's F1 is None."""
    out: dict[str, Any] = {"splits": list(per_split)}
    for key in ("f1", "acc_erroneous", "acc_correct"):
        vals = [s.get(key) for s in per_split.values()]
        out[key] = None if any(v is None for v in vals) else float(np.mean(vals))
    n = [s.get("n_test", 0) for s in per_split.values()]
    f1s = [s.get("f1") for s in per_split.values()]
    out["f1_weighted"] = None if any(v is None for v in f1s) or sum(n) == 0 else float(np.dot(f1s, n) / sum(n))
    return out


def step_benchmark(
    value_model: Any,
    tokenizer: Any,
    splits: dict[str, list[StepExample]],
    protocol: str = "calibration",
    threshold: float = 0.5,
    tuning: Sequence[StepExample] | None = None,
    calibration_fraction: float = 0.5,
    seed: int = 0,
    batch_size: int = 32,
    prompt_template: str = "{prompt}\n",
    step_separator: str = "\n",
    prompt_format: PromptFormat | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Step verification of each split under `protocol`, their average, and one prediction row per example.

    ``calibration`` (the toolkit's default): per split, the threshold is tuned on a calibration split of
    problems and F1 reported on the rest (`step_verification`). ``fixed``: every example is scored at
    `threshold` (ProcessBench's protocol for a PRM with a set threshold; comparable with the leaderboard).
    ``tuned``: the threshold maximising F1 on the separate `tuning` examples, then every example scored at
    it. Returns ``(metrics, rows)``: metrics ``{"protocol", "splits": {name: verification}, "average"}``
    (process-level results under each split's ``"process_level"`` when the model has them); rows
    ``{"split", "id", "label", "predicted", "match", "step_scores", ...}`` for a JSON-lines file.
    """
    if protocol not in STEP_PROTOCOLS:
        raise ValueError(f"protocol must be one of {STEP_PROTOCOLS}, got {protocol!r}")
    kw = {"batch_size": batch_size, "prompt_template": prompt_template, "step_separator": step_separator}
    tuned: dict[str, float | None] = {}
    if protocol == "tuned":
        if not tuning:
            raise ValueError("protocol 'tuned' needs tuning examples")
        ts = step_example_scores(value_model, tokenizer, tuning, prompt_format=prompt_format, **kw)
        tl = [ex.label for ex in tuning]
        tuned["prefix"], _ = choose_threshold(ts.prefix, tl)
        tuned["process"] = choose_threshold(ts.process, tl)[0] if ts.process is not None else None
    metrics: dict[str, Any] = {"protocol": protocol, "splits": {}}
    rows: list[dict[str, Any]] = []
    tokens = 0
    for name, examples in splits.items():
        sc = step_example_scores(value_model, tokenizer, examples, prompt_format=prompt_format, **kw)
        tokens += sc.forward_tokens
        labels = [ex.label for ex in examples]
        groups = [ex.group for ex in examples]
        result: dict[str, Any] = {}
        sides: np.ndarray | None = None
        for kind, scores in (("prefix", sc.prefix), ("process", sc.process)):
            if scores is None:
                continue
            if protocol == "calibration":
                res = step_verification(scores, labels, groups, calibration_fraction, seed)
                if kind == "prefix" and examples:
                    sides = calibration_split(groups, calibration_fraction, seed, labels)
            else:
                t = threshold if protocol == "fixed" else tuned[kind]
                res = fixed_threshold_verification(scores, labels, float(t), protocol)  # type: ignore[arg-type]
            res["score"] = "prefix_value_after_step" if kind == "prefix" else "sigmoid(beta * step log-ratio sum)"
            if kind == "prefix":
                result.update(res)
            else:
                result["process_level"] = res
        result["n_examples"] = len(examples)
        metrics["splits"][name] = result
        for i, ex in enumerate(examples):
            row: dict[str, Any] = {"split": name, "id": ex.example_id, "label": ex.label}
            for kind, scores, res in (
                ("", sc.prefix, result),
                ("process_", sc.process, result.get("process_level")),
            ):
                if scores is None or res is None:
                    continue
                t = res.get("threshold")
                pred = predict_first_error(scores[i], t) if t is not None else None
                row[f"{kind}predicted"] = pred
                row[f"{kind}match"] = None if pred is None else pred == ex.label
                row[f"{kind}step_scores"] = [float(x) for x in scores[i]]
            if sides is not None:
                row["side"] = "calibration" if sides[i] else "test"
            rows.append(row)
    per = metrics["splits"]
    metrics["average"] = _average(per)
    if any("process_level" in s for s in per.values()):
        metrics["average"]["process_level"] = _average(
            {k: s["process_level"] for k, s in per.items() if "process_level" in s}
        )
    metrics["n_examples"] = sum(len(v) for v in splits.values())
    metrics["value_forward_tokens"] = tokens
    if protocol != "calibration":
        metrics["threshold"] = threshold if protocol == "fixed" else tuned["prefix"]
    return metrics, rows


__all__ = [
    "STEP_DATA_BUILDERS",
    "STEP_PROTOCOLS",
    "StepExample",
    "StepExampleScores",
    "calibration_split",
    "choose_threshold",
    "fixed_threshold_verification",
    "load_processbench",
    "load_step_data",
    "load_step_splits",
    "load_trl_stepwise",
    "open_step_data",
    "predict_first_error",
    "prefix_step_scores",
    "process_step_scores",
    "processbench_examples",
    "processbench_f1",
    "score_step_examples",
    "step_benchmark",
    "step_example_scores",
    "step_format",
    "step_verification",
    "td_errors",
    "tokenize_step_example",
    "trl_examples",
]
