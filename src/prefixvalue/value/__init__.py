"""Value models: map prompt ⊕ completion tokens to P̂(s_p), the predicted probability of eventual
success, at every prefix position p = 0..T (p = number of completion tokens in the prefix).

- ``implicit``: IPVRM implicit prefix value (LoRA or soft prompt on the policy, reference = adapters off)
- ``head``: explicit linear value head on a frozen / LoRA / fully trained backbone
- ``qhead``: explicit Q-head, a value for every candidate next token in one pass; V(s) its policy-weighted mean

Build one with `build_value_model`, load a saved one with `load_value_model` (an ensemble folder of several
checkpoints loads as a `ValueEnsemble`, `prefixvalue.value.ensemble`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..loading import LoadOptions
from ..policies import load_causal_lm
from .base import VALUE_MODELS, CandidateValues, ValueModel, ValueModelConfig, read_value_config, value_model_class
from .checkpoint import CONFIG_NAME
from .ensemble import ValueEnsemble, is_ensemble, load_ensemble
from .head import HeadValueModel
from .implicit import Counterfactuals, ImplicitValueModel
from .losses import LossSum, margin_bce_with_logits, normalise_loss
from .qhead import QHeadValueModel

#: value-model kinds: `VALUE_MODELS` (defined in `checkpoint`, so that `ValueModel.from_pretrained` and the
#: model card can read it) is the only list of them, a plain dict filled here from the imports above; what
#: differs between kinds (validation, trained positions, loss readout, P̂ at p = 0, card rows, export) lives
#: on the classes
VALUE_MODELS.update(
    {
        "implicit": ImplicitValueModel,
        "head": HeadValueModel,
        "qhead": QHeadValueModel,
    }
)


def check_value_config(config: ValueModelConfig) -> None:
    """Raise ValueError when `config` names an unknown kind or breaks its kind's rules."""
    value_model_class(config.kind).check_config(config)


def loss_mask(batch: dict[str, torch.Tensor], kind: str, loss_type: str = "prefix") -> torch.Tensor:
    """Bool mask [B, Tmax+1] of the positions a value model of `kind` trains on (its class's `loss_mask`)."""
    return value_model_class(kind).loss_mask(batch, loss_type)


def value_loss(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], kind: str, loss_type: str = "prefix", margin: float = 0.0
) -> LossSum:
    """Summed loss of one micro-batch of a `kind` model and its number of terms (its class's `value_loss`)."""
    return value_model_class(kind).value_loss(logits, batch, loss_type, margin)


def build_value_model(
    config: ValueModelConfig,
    backbone: PreTrainedModel | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    checker: PreTrainedModel | None = None,
) -> ValueModel:
    """A freshly initialised value model of ``config.kind`` around `backbone` (loaded from
    ``config.base_model`` when not given; adapted in place). LoRA starts at B = 0, so a new implicit
    model predicts σ(0) = 0.5 at p ≥ 1; a new head predicts the base rate everywhere. `checker`: the head's
    ``checker`` model already loaded (by default the head loads ``config.checker``)."""
    model_cls = value_model_class(config.kind)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if backbone is None:
        backbone = load_causal_lm(
            config.base_model, dtype or "float32", dev, LoadOptions().with_recorded(config.base_load)
        )
    return model_cls(config, backbone, **({"checker": checker} if checker is not None else {})).to(dev)


def is_value_checkpoint(path: str | Path) -> bool:
    """Whether the folder `path` holds what `load_value_model` loads: a checkpoint (its config file) or an ensemble."""
    return (Path(path) / CONFIG_NAME).is_file() or is_ensemble(path)


def load_value_model(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    base_model: str | PreTrainedModel | None = None,
    options: LoadOptions | None = None,
    revision: str | None = None,
) -> ValueModel | ValueEnsemble:
    """Load a value checkpoint folder (written by ``save_pretrained``) or a Hub repo holding one; the kind
    is read from its config (`ValueModel.from_pretrained`). In eval mode, on `device` (default CPU), float32
    unless `dtype` says otherwise. A local ensemble folder (``prefixvalue ensemble``) loads as a `ValueEnsemble`
    of its members (`load_ensemble`; `base_model` then a name or path, applied to every member)."""
    if is_ensemble(path):
        if isinstance(base_model, PreTrainedModel):
            raise ValueError("an ensemble's members each load their own backbone: give base_model as a name or path")
        return load_ensemble(path, device=device, dtype=dtype, options=options, base_model=base_model)
    return ValueModel.from_pretrained(
        path, base_model=base_model, device=device, dtype=dtype, options=options, revision=revision
    )


__all__ = [
    "VALUE_MODELS",
    "ValueModel",
    "ValueEnsemble",
    "ValueModelConfig",
    "ImplicitValueModel",
    "HeadValueModel",
    "QHeadValueModel",
    "CandidateValues",
    "Counterfactuals",
    "build_value_model",
    "check_value_config",
    "load_value_model",
    "is_ensemble",
    "is_value_checkpoint",
    "LossSum",
    "loss_mask",
    "margin_bce_with_logits",
    "normalise_loss",
    "read_value_config",
    "value_loss",
    "value_model_class",
]
