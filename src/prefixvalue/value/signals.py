"""Training signals: what a prefix is trained towards where no Monte Carlo label exists (docs/design.md,
"Training signals"). A small explicit registry, `SIGNALS`, like the value-model kinds.

- ``outcome``: the trace's own 0/1 outcome at every prefix (the default; the collator fills it);
- ``siblings``: the mean outcome of the prompt's training traces through the prefix, attached once to the
  training traces before training (`prefixvalue.value.targets.attach_sibling_targets`);
- ``td``: the λ-return of the model's own stop-gradient predictions, rebuilt at every micro-batch of every
  step (`prefixvalue.value.targets.td_lambda_targets`); MC labels are kept where given;
- ``reference``: on the path of the prompt's reference solution, the policy's probability of writing the rest of
  it; the sibling label elsewhere (`prefixvalue.value.targets.attach_reference_targets`); MC labels win.

Each signal is a dataclass whose fields are its options (`build_signal` passes it those it has), and says
whether it replaces the outcome target (`replaces_outcome`) and needs a per-step refresh (`per_step`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import datasets
import torch

from ..config import ConfigError
from .targets import (
    attach_reference_targets,
    attach_sibling_targets,
    reference_path_values,
    reference_solutions,
    sampling_temperature,
    td_lambda_targets,
)

#: what a signal may need beside the training traces: a function that loads the policy that wrote them,
#: returning (model, tokenizer); called only by signals that read the policy
PolicyLoader = Callable[[], tuple[Any, Any]]


@dataclass(frozen=True)
class TrainingSignal:
    """A training signal; by default (`OutcomeSignal`) the trace's outcome at every prefix."""

    name: ClassVar[str] = ""
    #: whether its targets differ from the trace's own outcome (so ``labels_only`` would leave it nothing to
    #: fill, and the sequence loss, which trains on the outcome alone, cannot use it)
    replaces_outcome: ClassVar[bool] = False
    #: whether the targets are rebuilt at every step from the model's own predictions (`step_targets`)
    per_step: ClassVar[bool] = False

    def attach(
        self, train_ds: datasets.Dataset, policy: PolicyLoader | None = None
    ) -> tuple[datasets.Dataset, dict[str, Any]]:
        """`train_ds` (the training traces only: held-out outcomes never enter a target) with this signal's
        fixed targets attached, and the record of the signal (``training_signal`` of train's result and of
        the checkpoint's training.json). The outcome needs nothing attached: the collator fills it. `policy`
        loads the policy that wrote the traces, for a signal that reads it."""
        return train_ds, {"signal": self.name}

    def step_targets(self, batch: dict[str, torch.Tensor], values: torch.Tensor) -> torch.Tensor:
        """Targets [B, Tmax+1] of one micro-batch given the model's own P̂ `values` [B, Tmax+1] (called only
        when `per_step`); by default the batch's targets as collated."""
        return batch["targets"]

    @classmethod
    def describe(cls, record: dict[str, Any]) -> str:
        """The signal in words for the model card, from its `record` (what `attach` returned)."""
        return cls.name


@dataclass(frozen=True)
class OutcomeSignal(TrainingSignal):
    """The trace's own 0/1 outcome at every prefix (MC labels win where given)."""

    name: ClassVar[str] = "outcome"


@dataclass(frozen=True)
class SiblingsSignal(TrainingSignal):
    """The mean outcome of the prompt's training traces that pass through each prefix (MC labels win)."""

    name: ClassVar[str] = "siblings"
    replaces_outcome: ClassVar[bool] = True

    def attach(
        self, train_ds: datasets.Dataset, policy: PolicyLoader | None = None
    ) -> tuple[datasets.Dataset, dict[str, Any]]:
        """`train_ds` with ``prefix_targets`` holding the sibling labels, and the record with the sharing
        found (`prefixvalue.value.targets.counts_summary`)."""
        train_ds, summary = attach_sibling_targets(train_ds)
        return train_ds, {"signal": self.name, "siblings": summary}


@dataclass(frozen=True)
class TDSignal(TrainingSignal):
    """The λ-return of the model's own later predictions, rebuilt every step; MC labels are kept where given."""

    name: ClassVar[str] = "td"
    replaces_outcome: ClassVar[bool] = True
    per_step: ClassVar[bool] = True
    #: λ of the λ-return (1 = the outcome only, 0 = TD(0))
    td_lambda: float = 0.8

    def attach(
        self, train_ds: datasets.Dataset, policy: PolicyLoader | None = None
    ) -> tuple[datasets.Dataset, dict[str, Any]]:
        """`train_ds` unchanged (the targets come each step) and the record with λ."""
        return train_ds, {"signal": self.name, "td_lambda": self.td_lambda}

    def step_targets(self, batch: dict[str, torch.Tensor], values: torch.Tensor) -> torch.Tensor:
        """The λ-returns of `values` where the batch has no MC label (``label_mask``), its targets elsewhere."""
        td = td_lambda_targets(values, batch["outcome"], batch["completion_lengths"], self.td_lambda)
        return torch.where(batch["label_mask"], batch["targets"], td)

    @classmethod
    def describe(cls, record: dict[str, Any]) -> str:
        return f"{cls.name} (λ = {record.get('td_lambda')})"


@dataclass(frozen=True)
class ReferenceSignal(TrainingSignal):
    """On the path of the prompt's reference solution, the probability that the policy writes the rest of it;
    the sibling label off that path; MC labels win (docs/design.md, "Training signals")."""

    name: ClassVar[str] = "reference"
    replaces_outcome: ClassVar[bool] = True

    def attach(
        self, train_ds: datasets.Dataset, policy: PolicyLoader | None = None
    ) -> tuple[datasets.Dataset, dict[str, Any]]:
        """`train_ds` with ``prefix_targets`` from the reference paths (one forward pass of the policy per training
        prompt) and siblings elsewhere, and the record of what was found. ConfigError (a user's mistake, said in
        one line) when no training prompt has a reference solution, when the traces were not sampled from the
        full distribution at a temperature > 0, or without a policy."""
        temperature, why = sampling_temperature(train_ds)
        if why:
            raise ConfigError(
                f"signal=reference needs the probability of a completion under the sampling distribution, but {why}"
            )
        if policy is None:
            raise ConfigError("signal=reference reads the policy that wrote the traces; none was given")
        model, tokenizer = policy()
        references = reference_solutions(train_ds, tokenizer)
        if not references:
            raise ConfigError(
                "signal=reference needs reference solutions, and no training trace's prompt_meta has a 'solution' "
                "(task=arith writes one; a jsonl task reads it from solution_field=FIELD)"
            )
        values = reference_path_values(model, references, temperature)
        train_ds, found = attach_reference_targets(train_ds, references, values)
        return train_ds, {"signal": self.name, "temperature": temperature, "reference": found}

    @classmethod
    def describe(cls, record: dict[str, Any]) -> str:
        found = record.get("reference") or {}
        share = found.get("on_path_share")
        return cls.name + (f" ({share:.0%} of training prefixes on a reference path)" if share is not None else "")


#: training signals: the only list of them (a plain dict, filled by the classes above); what differs between
#: signals (attached targets, per-step targets, the record and its words) lives on the classes
SIGNALS: dict[str, type[TrainingSignal]] = {
    "outcome": OutcomeSignal,
    "siblings": SiblingsSignal,
    "td": TDSignal,
    "reference": ReferenceSignal,
}


def signal_class(name: str) -> type[TrainingSignal]:
    """The class of training signal `name`; ValueError naming the known signals otherwise."""
    if name not in SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {name!r}")
    return SIGNALS[name]


def build_signal(name: str, **options: Any) -> TrainingSignal:
    """Training signal `name` with those of `options` that are its fields (e.g. ``td_lambda`` for td);
    the others are ignored, so a caller may pass every signal option it has."""
    cls = signal_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in fields})


__all__ = [
    "SIGNALS",
    "OutcomeSignal",
    "PolicyLoader",
    "ReferenceSignal",
    "SiblingsSignal",
    "TDSignal",
    "TrainingSignal",
    "build_signal",
    "signal_class",
]
