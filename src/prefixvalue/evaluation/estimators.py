"""Prefix-value estimators: per-trace value curves at positions 0..T (docs/design.md, "Evaluation").

Built in: ``learned`` (the value checkpoint's P̂), the policy's soft values (``logsumexp`` and
``mellowmax`` over a grid of ω, full vocabulary and top-k; `prefixvalue.evaluation.softvalues`),
``constant`` (the training base rate); plus any estimator registered in `ESTIMATORS`. Scoring the
curves against Monte Carlo labels is `prefixvalue.evaluation.scoring`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .softvalues import SoftValueSpec, policy_soft_values


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
    #: log-probability of each completion token under the distribution it was sampled from (the traces'
    #: ``logprobs``; log π at temperature 1), None when the row has none
    logprobs: list[float] | None = None

    @property
    def length(self) -> int:
        """Completion tokens T (positions run 0..T)."""
        return len(self.completion_ids)

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> TraceRecord:
        """A record from one row of the traces dataset (docs/design.md, "Traces")."""
        spans = [(int(s[0]), int(s[1])) for s in (r.get("step_spans") or [])]
        labels = r.get("step_labels")
        return cls(
            trace_id=str(r["trace_id"]),
            prompt_id=str(r["prompt_id"]),
            prompt_ids=[int(x) for x in r["prompt_ids"]],
            completion_ids=[int(x) for x in r["completion_ids"]],
            outcome=float(r["outcome"]),
            step_spans=spans,
            step_labels=None if labels is None else [bool(x) for x in labels],
            prompt=str(r.get("prompt") or ""),
            completion=str(r.get("completion") or ""),
            logprobs=None if r.get("logprobs") is None else [float(x) for x in r["logprobs"]],
        )


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
class Estimates:
    """Every estimator's values on every trace, and what it cost.

    `curves[i][name]` is estimator `name` on trace i at positions 0..T; `info[name]` holds
    ``probability``, ``description`` and optional ``params`` / ``kind`` / ``base_rate`` / ``note``;
    `cost` the forward tokens spent; `log_ratios` the value model's per-token log-ratios when it
    gives process-level step scores (else None).
    """

    curves: list[dict[str, np.ndarray]]
    info: dict[str, dict[str, Any]]
    cost: dict[str, Any]
    notes: list[str]
    log_ratios: list[np.ndarray] | None = None


def _check_curve(v: Any, t: TraceRecord, who: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if len(v) != t.length + 1:
        raise ValueError(
            f"{who} gave {len(v)} values for trace {t.trace_id} of {t.length} tokens; "
            f"expected {t.length + 1} (positions 0..T)"
        )
    return v


def _progress_bar(progress: bool, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="trace", desc=desc, disable=not progress)


def _in_batches(
    fn: Callable[..., list[np.ndarray]], prompts: list[list[int]], comps: list[list[int]], batch_size: int, bar: Any
) -> list[np.ndarray]:
    """``fn(prompts, comps, batch_size=batch_size)`` called one batch of consecutive rows at a time
    (the batches `prefixvalue.value` models make themselves, so the results are the same), advancing
    `bar` by the traces of each."""
    out: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        out += fn(prompts[start : start + batch_size], comps[start : start + batch_size], batch_size=batch_size)
        bar.update(len(prompts[start : start + batch_size]))
    bar.close()
    return out


def value_forward_tokens(value_model: Any, prompts: list[list[int]], comps: list[list[int]]) -> int:
    """Tokens `value_model`'s ``predict`` runs over to score every prefix of these sequences: prompt + completion
    tokens × its ``forward_passes`` (a second pass for the reference policy beside an adapted backbone; one per
    member of an ensemble)."""
    passes = int(getattr(value_model, "forward_passes", 1))
    return passes * int(sum(len(p) + len(c) for p, c in zip(prompts, comps)))


def estimate_values(
    records: list[TraceRecord],
    value_model: Any = None,
    policy: Any = None,
    tokenizer: Any = None,
    *,
    batch_size: int = 8,
    soft_values: SoftValueSpec | None = None,
    base_rate: float | None = None,
    estimators: dict[str, Estimator] | None = None,
    progress: bool = False,
) -> Estimates:
    """Value curves of every estimator on `records`.

    `value_model` follows the `prefixvalue.value` interface (``predict``; ``token_log_ratios`` when
    its class sets ``process_scores``); `policy` gives the soft values of `soft_values` (skipped when
    either is None). `base_rate` defaults to the value model's training base rate; without one there
    is no ``constant``. `estimators` are evaluated after the built-in ones. `progress` shows a bar
    over traces for each forward pass (value model, its log-ratios, policy soft values).
    """
    n = len(records)
    prompts = [t.prompt_ids for t in records]
    comps = [t.completion_ids for t in records]
    curves: list[dict[str, np.ndarray]] = [{} for _ in records]
    info: dict[str, dict[str, Any]] = {}
    cost: dict[str, Any] = {}
    notes: list[str] = []

    # -- learned values (one forward per trace gives every position)
    log_ratios: list[np.ndarray] | None = None
    if value_model is not None:
        bar = _progress_bar(progress, n, "evaluate: value model")
        preds = _in_batches(value_model.predict, prompts, comps, batch_size, bar)
        for c, p, t in zip(curves, preds, records):
            c["learned"] = _check_curve(p, t, "the value model")
        kind = getattr(value_model, "kind", "unknown")
        info["learned"] = {"probability": True, "description": f"checkpoint P̂(s_t) ({kind} value model)", "kind": kind}
        note = getattr(type(value_model), "position0_note", None)
        if note:
            info["learned"]["note"] = note
        if getattr(value_model, "process_scores", False):
            bar = _progress_bar(progress, n, "evaluate: value log-ratios")
            log_ratios = [
                np.asarray(r, dtype=np.float64)
                for r in _in_batches(value_model.token_log_ratios, prompts, comps, batch_size, bar)
            ]
        cost["value_forward_passes"] = int(getattr(value_model, "forward_passes", 1))
        cost["value_forward_tokens"] = value_forward_tokens(value_model, prompts, comps)
        if hasattr(value_model, "pass_parameters"):  # what each pass runs per token, for the compute ratio
            cost["value_pass_parameters"] = [int(n) for n in value_model.pass_parameters]
        if base_rate is None:
            base_rate = getattr(getattr(value_model, "config", None), "base_rate", None)
    else:
        cost["value_forward_tokens"] = None
        cost["value_forward_tokens_note"] = "no value model evaluated"

    if policy is not None:  # the model the MC labels sample from (the traces'), for the compute ratio
        cost["policy_parameters"] = int(sum(p.numel() for p in policy.parameters()))

    # -- soft values of the policy
    if policy is not None and soft_values is not None:
        pad = getattr(tokenizer, "pad_token_id", None) or 0
        bar = _progress_bar(progress, n, "evaluate: policy soft values")
        soft, ftok = policy_soft_values(
            policy, prompts, comps, soft_values, batch_size=batch_size, pad_token_id=pad, on_batch=bar.update
        )
        bar.close()
        for c, s in zip(curves, soft):
            c.update(s)
        for name, params in soft_values.names.items():
            what = (
                "log Σ_a exp q(s,a) over the full vocabulary (extensive, Blondel et al.)"
                if params["operator"] == "logsumexp"
                else f"MellowMax ω={params['omega']:g} over {params['vocab']} vocabulary (intensive)"
            )
            info[name] = {"probability": False, "description": what, "params": params}
        info["mellowmax"]["description"] += " — the headline soft value; default ω stated in params"
        if soft_values.default_omega == 1.0:
            info["mellowmax"]["note"] = (
                "at ω = 1 over the full vocabulary MellowMax equals logsumexp − log|A|, a "
                "constant shift, so its correlations and AUROC equal logsumexp's"
            )
        cost["policy_forward_tokens"] = int(ftok)

    # -- constant base rate
    if base_rate is not None:
        for c, t in zip(curves, records):
            c["constant"] = np.full(t.length + 1, float(base_rate))
        info["constant"] = {
            "probability": True,
            "description": f"training base rate {float(base_rate):.4g}",
            "base_rate": float(base_rate),
        }
    else:
        notes.append("no 'constant' estimator: no base rate given and no value model to read it from")

    # -- user estimators
    inputs = EstimatorInputs(records, value_model, policy, tokenizer, batch_size)
    for name, est in (estimators or {}).items():
        vals = est.fn(inputs)
        if len(vals) != len(records):
            raise ValueError(f"estimator {name!r} returned {len(vals)} arrays for {len(records)} traces")
        for c, v, t in zip(curves, vals, records):
            c[name] = _check_curve(v, t, f"estimator {name!r}")
        info[name] = {"probability": bool(est.probability), "description": est.description or "user estimator"}
    return Estimates(curves=curves, info=info, cost=cost, notes=notes, log_ratios=log_ratios)


def value_model_estimator(value_model: Any) -> Estimator:
    """An `Estimator` of a further value model's P̂ (reported beside the primary ``learned``)."""

    def fn(inputs: EstimatorInputs) -> list[np.ndarray]:
        return value_model.predict(
            [t.prompt_ids for t in inputs.traces],
            [t.completion_ids for t in inputs.traces],
            batch_size=inputs.batch_size,
        )

    kind = getattr(value_model, "kind", "unknown")
    return Estimator(fn, probability=True, description=f"checkpoint P̂(s_t) ({kind} value model)")
