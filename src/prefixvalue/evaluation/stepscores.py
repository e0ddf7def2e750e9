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

Loaders turn ProcessBench JSON lines (``problem``, ``steps``, ``label``) and TRL stepwise-supervision
data (``prompt``, ``completions``, ``labels``) into `StepExample`s, and `tokenize_step_example`
gives the token ids and step spans a value model scores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.split import unit_hash
from ..prompting import PromptFormat
from ..tasks.base import first_error


# -------------------------------------------------------------------------------------- scores
def td_errors(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Token TD errors δ_t = V(s_{t+1}) − V(s_t) for t = 0..T−1 from values at positions 0..T."""
    v = np.asarray(values, dtype=np.float64)
    return v[1:] - v[:-1]


def prefix_step_scores(values: Sequence[float] | np.ndarray, step_spans: Sequence[Sequence[int]]) -> np.ndarray:
    """Value after each step: ``values[end]`` for each token span [start, end) of the completion."""
    v = np.asarray(values, dtype=np.float64)
    ends = [int(s[1]) for s in step_spans]
    if ends and max(ends) >= len(v):
        raise ValueError(f"a step ends at token {max(ends)} but values cover positions 0..{len(v) - 1}")
    return v[ends] if ends else np.zeros(0)


def process_step_scores(
    token_log_ratios: Sequence[float] | np.ndarray, step_spans: Sequence[Sequence[int]], beta: float
) -> np.ndarray:
    """Process-level step scores σ(β Σ_{i∈step} log-ratio_i) (unscaled per-token log-ratios in)."""
    r = np.asarray(token_log_ratios, dtype=np.float64)
    sums = np.array([r[int(s0) : int(s1)].sum() for s0, s1 in step_spans], dtype=np.float64)
    z = beta * sums
    # the logistic written out: scipy.special.expit differs from it in the last bit for z < 0, which
    # moves a chosen threshold by one ulp; this form keeps metrics.json bit-identical across versions
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


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


# ------------------------------------------------------------------------------------- loaders
@dataclass
class StepExample:
    """One problem with a step-by-step solution and its ProcessBench label (−1 = all steps right)."""

    example_id: str
    prompt: str
    steps: list[str]
    label: int
    group: str  # examples of one problem share a group (calibration/test split unit)
    meta: dict[str, Any]


def _read_records(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[next(iter(ds))] if len(ds) == 1 else datasets.concatenate_datasets(list(ds.values()))
        return [dict(r) for r in ds]
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        return list(data) if isinstance(data, list) else [data]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _group(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_processbench(path: str | Path) -> list[StepExample]:
    """Read ProcessBench JSON lines (or a JSON list / saved dataset): ``problem``, ``steps``, ``label``."""
    out = []
    for i, r in enumerate(_read_records(path)):
        missing = [k for k in ("problem", "steps", "label") if k not in r]
        if missing:
            raise ValueError(f"{path}: record {i} lacks ProcessBench field(s) {missing}")
        out.append(
            StepExample(
                example_id=str(r.get("id", i)),
                prompt=str(r["problem"]),
                steps=[str(s) for s in r["steps"]],
                label=int(r["label"]),
                group=_group(str(r["problem"])),
                meta={k: v for k, v in r.items() if k not in ("problem", "steps", "label")},
            )
        )
    return out


def load_trl_stepwise(path: str | Path) -> list[StepExample]:
    """Read TRL stepwise-supervision data: ``prompt``, ``completions`` (steps), ``labels`` (bool per step).

    The ProcessBench label is the first step labelled False (−1 if none).
    """
    out = []
    for i, r in enumerate(_read_records(path)):
        missing = [k for k in ("prompt", "completions", "labels") if k not in r]
        if missing:
            raise ValueError(f"{path}: record {i} lacks TRL stepwise field(s) {missing}")
        steps = [str(s) for s in r["completions"]]
        labs = [bool(x) for x in r["labels"]]
        if len(steps) != len(labs):
            raise ValueError(f"{path}: record {i} has {len(steps)} steps but {len(labs)} labels")
        fe = first_error(labs)
        out.append(
            StepExample(
                example_id=str(r.get("id", i)),
                prompt=str(r["prompt"]),
                steps=steps,
                label=-1 if fe is None else fe,
                group=_group(str(r["prompt"])),
                meta={"step_labels": labs},
            )
        )
    return out


def load_step_data(path: str | Path, fmt: str = "auto") -> list[StepExample]:
    """Load ProcessBench or TRL stepwise data; ``fmt="auto"`` looks at the first record's fields."""
    if fmt == "auto":
        first = _read_records(path)[:1]
        if not first:
            return []
        fmt = "processbench" if "problem" in first[0] else "trl" if "completions" in first[0] else "unknown"
    if fmt == "processbench":
        return load_processbench(path)
    if fmt == "trl":
        return load_trl_stepwise(path)
    raise ValueError(
        f"{path}: cannot tell the step-data format; expected ProcessBench (problem, steps, label) "
        f"or TRL stepwise (prompt, completions, labels)"
    )


def tokenize_step_example(
    tokenizer: Any,
    ex: StepExample,
    prompt_template: str = "{prompt}\n",
    step_separator: str = "\n",
    prompt_format: PromptFormat | None = None,
) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Token ids of the prompt and of the steps joined by `step_separator`, and each step's token span.

    The prompt goes through `prompt_format` (the chat template the value model's traces used; default:
    the raw text). Each step (with its separator, except the last) is tokenised on its own and
    concatenated, so the step spans are exact for any tokenizer.
    """
    prompt_ids = (prompt_format or PromptFormat()).encode(tokenizer, prompt_template.format(prompt=ex.prompt))
    completion_ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for j, step in enumerate(ex.steps):
        piece = step + (step_separator if j < len(ex.steps) - 1 else "")
        ids = list(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if not ids:  # an empty step still needs a position to be scored at
            ids = list(tokenizer(step_separator or " ", add_special_tokens=False)["input_ids"])[:1]
        spans.append((len(completion_ids), len(completion_ids) + len(ids)))
        completion_ids += ids
    return prompt_ids, completion_ids, spans


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
    out["value_forward_tokens"] = int(sum(len(p) + len(c) for p, c in zip(prompts, comps)))
    if getattr(value_model, "process_scores", False):
        ratios = value_model.token_log_ratios(prompts, comps, batch_size=batch_size)
        beta = float(value_model.config.beta)
        pscores = [process_step_scores(r, e[2], beta) for r, e in zip(ratios, enc)]
        out["process_level"] = step_verification(pscores, labels, groups, calibration_fraction, seed)
        out["process_level"]["score"] = "sigmoid(beta * step log-ratio sum)"
    return out
