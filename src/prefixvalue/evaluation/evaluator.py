"""The one evaluator: value models, traces and Monte Carlo prefix labels in, an `EvalResult` out.

    from prefixvalue import ScoringOptions, evaluate

    result = evaluate({"head": "runs/qs/train_head/final"}, "runs/qs/heldout_traces", "runs/qs/labels")
    result.metrics["estimators"]["learned"]["spearman"]      # {"value", "ci", "noise_ceiling", ...}
    evaluate({"head": vm, "implicit": "runs/qs/train_implicit/final"}, traces, labels, ScoringOptions(seed=1))

Modelled on lm-eval's ``simple_evaluate``: the models are checkpoint folders (or Hub ids) or models already
in memory, the data are folders or loaded datasets. It loads what it is given as a path, fits the
step-label oracle on the training prompts (docs/design.md, "The step-label oracle" and "Held-out
discipline"), reads the MC cost and scores every estimator (`prefixvalue.evaluation.scoring`); where the
traces carry exact step labels, ``metrics["error_diagnosis"]`` says how well ``learned`` detects a written
error, beside the policy's own features and the MC labels (`prefixvalue.evaluation.analysis.error_diagnosis`). The
evaluate stage, the quickstart and ``prefixvalue distance`` all call it;
`prefixvalue.evaluation.report.write_report` writes what it returns.

It is the one module of this package that loads value models (`prefixvalue.value`); the value models
import nothing of this package, so the two do not import each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..config import ConfigError
from ..data import labels_side, load_labels, load_split, load_traces
from ..loading import LoadOptions
from ..value import load_value_model
from .analysis import error_diagnosis
from .estimators import ESTIMATORS, Estimator, TraceRecord, value_model_estimator
from .options import ScoringOptions
from .oracle import has_step_labels, training_oracles
from .scoring import EvalResult, evaluate_prefixes, read_mc_cost, validation_step_thresholds

K = TypeVar("K")


def load_value_models(
    models: Mapping[K, Any], device: Any = None, load: LoadOptions | None = None, dtype: str | None = None
) -> dict[K, Any]:
    """`models` in order, each checkpoint given as a path (a folder or a Hub id, as text or `Path`) loaded as
    a value model (`prefixvalue.value.load_value_model`: eval mode, on `device`, float32 unless `dtype`,
    with the loading options `load`); a model already loaded is kept as it is."""
    return {
        k: load_value_model(m, device=device, dtype=dtype, options=load) if isinstance(m, (str, Path)) else m
        for k, m in models.items()
    }


def step_oracle_estimators(options: ScoringOptions, traces: Any, oracle_traces: Any = None) -> dict[str, Estimator]:
    """``{"step_oracle": ..., "operator_oracle": ...}``: the oracles (`training_oracles`) fit on the training
    prompts, under the split record
    ``options.split_record``, of ``options.oracle_traces``, else `oracle_traces`, else `traces` (each a
    folder or loaded traces); {} when ``options.step_oracle`` is off, there is no split record, or the
    traces carry no exact step labels."""
    if not options.step_oracle or not has_step_labels(traces):
        return {}
    record = load_split(options.split_record) if options.split_record else None
    if record is None:  # without a split there is no training side to fit on
        return {}
    source = options.oracle_traces or oracle_traces
    source = traces if source is None else load_traces(source) if isinstance(source, (str, Path)) else source
    return {name: oracle.estimator() for name, oracle in training_oracles(source, record).items()}


def _prompts(traces: Any) -> list[str]:
    """The ``prompt`` of every trace of `traces` (a dataset or a list of rows)."""
    return list(traces["prompt"]) if hasattr(traces, "column_names") else [r["prompt"] for r in traces]


def check_labels_side(labels: str | Path, options: ScoringOptions) -> None:
    """Refuse, in one line, labels drawn from the other side of the split than ``options.split`` scores
    (validation labels scored as test figures, or test labels read for a choice)."""
    side = labels_side(labels)
    if side in ("test", "validation") and side != options.split and not options.include_training_prompts:
        raise ConfigError(
            f"evaluate: the labels {labels} were drawn from the {side} prompts (their split.json), but split="
            f"{options.split} is scored; pass split={side}"
        )


def step_thresholds_on_validation(model: Any, options: ScoringOptions) -> dict[str, Any] | None:
    """The step thresholds chosen on ``options.validation_traces`` (`validation_step_thresholds`): only the
    traces of prompts on the validation side of the split record are read; None without validation traces.
    Raises ConfigError when the record has no validation side or none of the traces is a validation prompt's."""
    if not options.validation_traces or model is None:
        return None
    record = load_split(options.split_record) if options.split_record else None
    if record is None or not record.validation_fraction:
        raise ConfigError(
            f"evaluate: validation_traces={options.validation_traces} needs a split record with a validation side "
            f"(train with validation_fraction > 0)"
        )
    rows = [TraceRecord.from_row(r) for r in load_traces(options.validation_traces)]
    rows = [t for t in rows if record.side(t.prompt) == "validation"]
    if not rows:
        raise ConfigError(f"evaluate: no trace of {options.validation_traces} is a validation prompt of the split")
    chosen = validation_step_thresholds(model, rows, options.batch_size)
    return chosen if "prefix" in chosen else None


def evaluate(
    models: Mapping[str, Any] | None,
    traces: Any,
    labels: Any,
    options: ScoringOptions | None = None,
    *,
    policy: Any = None,
    tokenizer: Any = None,
    device: Any = None,
    dtype: str | None = None,
    load: LoadOptions | None = None,
    oracle_traces: Any = None,
    progress: bool = False,
) -> EvalResult:
    """Score value models, the policy's soft values and the registered estimators on MC-labelled prefixes.

    `models` maps names to value checkpoints (paths, loaded by `load_value_models` with `device`, `dtype`
    and `load`) or to loaded value models: the first is ``learned`` (paired with the references, its step
    scores verified), every other one ``learned_<name>``; None or {} scores the policy and the estimators
    of ``ESTIMATORS`` only. `traces` and `labels` are folders (``prefixvalue collect``, ``prefixvalue
    label``; the labels' ``cost.json`` gives the MC cost) or loaded datasets or lists of rows. `policy` and
    `tokenizer` give the soft values (none without them). `options` defaults to `ScoringOptions()`.

    Only prompts on the side ``options.split`` (``test``: held out of the first model's training; ``validation``)
    are scored, under ``options.split_record``, default the first model's folder when it is given as a path
    (`prefixvalue.evaluation.scoring.split_filter`); labels drawn from the other side are refused. With
    ``options.validation_traces`` the step threshold is chosen on those validation traces;
    the step-label oracle is `step_oracle_estimators`. `progress` shows a bar over traces for each forward
    pass. Runs under ``torch.no_grad``; returns the `EvalResult`.
    """
    import torch

    options = options if options is not None else ScoringOptions()
    given = dict(models or {})
    first = next(iter(given.values()), None)
    if options.split_record is None and isinstance(first, (str, Path)):
        options = dataclasses.replace(options, split_record=str(first))
    loaded = load_value_models(given, device, load, dtype)
    names = list(loaded)
    if isinstance(traces, (str, Path)):
        traces = load_traces(traces)
    if options.split_record is not None:  # its digests checked against the traces scored (an edited split.json)
        load_split(options.split_record, _prompts(traces), "the traces scored")
    mc_cost = read_mc_cost(labels) if isinstance(labels, (str, Path)) else None
    if isinstance(labels, (str, Path)):
        check_labels_side(labels, options)
        labels = load_labels(labels, traces if hasattr(traces, "column_names") else None)  # positions checked
    estimators = {**ESTIMATORS, **{f"learned_{k}": value_model_estimator(loaded[k]) for k in names[1:]}}
    estimators.update(step_oracle_estimators(options, traces, oracle_traces))
    with torch.no_grad():
        thresholds = step_thresholds_on_validation(loaded[names[0]] if names else None, options)
        result = evaluate_prefixes(
            traces,
            labels,
            options=options,
            value_model=loaded[names[0]] if names else None,
            policy=policy,
            tokenizer=tokenizer,
            estimators=estimators,
            mc_cost=mc_cost,
            progress=progress,
            step_thresholds=thresholds,
        )
    diagnosis = error_diagnosis(result) if names else None
    if diagnosis is not None:  # only where the traces carry exact step labels
        result.metrics["error_diagnosis"] = diagnosis
    return result
