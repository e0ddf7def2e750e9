"""What a value checkpoint folder holds: its file names and its config, ``value_config.json``
(docs/design.md, "Checkpoints that travel"), and the checked readers of its files.

The bottom of the checkpoint code: `card` renders the model card from these files, `hub` finds the
base model and moves folders to and from the Hub, and `base` (the model classes) writes and reads them.
Every file of a checkpoint is read through one checked reader here (`read_value_config`, `load_weights`,
`check_adapter`, `check_backbone`; the split is `prefixvalue.data.load_split`, the prompt format
`prefixvalue.prompting.checkpoint_prompt_format`): a missing, truncated or malformed file is a ConfigError in
one line naming the file (and the field), never a traceback or a download attempt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .. import __version__
from ..config import ConfigError, field, record_from_mapping
from ..jsonlines import read_json_object
from .losses import LOSS_TYPES

CONFIG_NAME = "value_config.json"
ADAPTER_DIR = "adapter"
BACKBONE_DIR = "backbone"
HEAD_WEIGHTS = "head.safetensors"
#: the files peft writes into ``adapter/`` (safetensors only)
ADAPTER_FILES: tuple[str, ...] = ("adapter_config.json", "adapter_model.safetensors")
#: small files that describe a checkpoint (split, training run, evaluation): `save_pretrained` with
#: ``copy_records=True`` carries them over from the folder a model was loaded from (what pushing a loaded model does)
CHECKPOINT_RECORDS: tuple[str, ...] = ("split.json", "training.json", "evaluation.json")

#: how the implicit model turns V_φ(p) into P̂: the paper's length-normalised mean, or the unnormalised sum
READOUTS: tuple[str, ...] = ("mean", "sum")

#: how the backbone is trained: LoRA adapters (peft), frozen, or all weights
BACKBONES: tuple[str, ...] = ("lora", "frozen", "full")

#: how the head combines its policy features with w·h (docs/design.md, "Explicit value head"): a linear term u·f on
#: the raw features, or a small MLP over the head's logit and the normalised features
FEATURE_HEADS: tuple[str, ...] = ("linear", "mlp")


@dataclass
class ValueModelConfig:
    """Everything needed to rebuild a value model around its base policy (saved as value_config.json).

    Kind-specific rules (e.g. the implicit model needs π_ref inside its weights) are each model
    class's `check_config`; `prefixvalue.value.check_value_config` runs both.
    """

    kind: str = field(
        "implicit",
        help="value-model kind, a key of prefixvalue.value.VALUE_MODELS (implicit = IPVRM, head = explicit value head)",
    )
    base_model: str = field(
        "",
        help="reference policy: a Hub id, or a local path (saved as an absolute path; train sets it from `policy` "
        "or the traces)",
    )
    base_model_relative: str = field(
        "",
        help="a local base_model's path relative to the checkpoint folder (save_pretrained writes it; a fallback "
        "when the absolute path is gone, docs/design.md 'Checkpoints that travel')",
    )
    base_load: dict = field(  # noqa: RUF009 - the project's `field` wraps dataclasses.field
        default_factory=dict,
        help="loading options of base_model: revision, gguf_file, attn_implementation (train records them)",
    )
    beta: float = field(10.0, help="implicit: β in V = β Σ log π_φ/π_ref (paper default 10)")
    margin: float = field(5.0, help="implicit: margin m of the margin BCE (paper default 5)")
    base_rate: float = field(0.5, help="training base rate of outcomes (train sets it from the training traces)")
    loss: str = field(
        "prefix", help="implicit: prefix = IPVRM margin BCE at every prefix; sequence = Implicit PRM baseline"
    )
    readout: str = field(
        "mean",
        help="implicit: mean = the paper's length-normalised P̂ = σ(V_φ/p); sum = the variant P̂ = σ(logit(base rate) + V_φ), "
        "no length normalisation (docs/design.md, 'Implicit prefix value')",
    )
    prior_tokens: float = field(
        0.0,
        help="implicit, mean readout: k pseudo-tokens of logit(base rate) in the mean, v̄(p) = (V_φ(p) + k "
        "logit(b)) / (p + k); shrinks the first tokens toward the base rate (0 = the paper)",
    )
    backbone: str = field("lora", help="how the backbone trains: lora, frozen (with a soft prompt for implicit), full")
    lora_r: int = field(8, help="LoRA rank")
    lora_alpha: float = field(16.0, help="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = field(0.0, help="LoRA dropout")
    lora_target_modules: list[str] | None = field(
        None, help="LoRA target modules (None: peft's default; 'all-linear' for every linear)"
    )
    head_layer: int = field(
        -1, help="head: which hidden layer feeds the head (-1 = last, 0 = embeddings; python indexing)"
    )
    policy_features: bool = field(
        False,
        help="head: also feed the head the reference policy's log-probabilities of the written tokens (sum, minimum "
        "and last, up to the prefix): the policy's own surprise at what it wrote",
    )
    feature_head: str = field(
        "linear",
        help="head with policy_features: linear = w·h + b + u·f on the raw features; mlp = w·h + b + a one-hidden-layer "
        "MLP over (w·h + b, the normalised features), started at zero (docs/design.md, 'Explicit value head'); qhead: "
        "the same MLP over the features of s ⊕ y for each candidate y (docs/design.md, 'Q-head')",
    )
    checker: str = field(
        "",
        help="head with policy_features, or qhead: a second causal LM (a Hub id or a local path; same tokenizer as the policy), "
        "frozen, whose log-probabilities of the written tokens (sum, minimum, last) join the policy's features, e.g. "
        "a model trained further on correct solutions, which flags a wrong step the policy wrote with confidence "
        "(docs/design.md, 'Checker features'; one more pass per sequence)",
    )
    checker_relative: str = field(
        "",
        help="a local checker's path relative to the checkpoint folder (save_pretrained writes it; a fallback when the "
        "absolute path is gone, as base_model_relative)",
    )
    head_layers: list[int] | None = field(
        None,
        help="head: several hidden layers feed the head, their states concatenated (e.g. [2, 4]; python indexing); "
        "None = head_layer alone",
    )
    error_head: bool = field(
        False,
        help="head: a second head reads the same state and predicts P(a wrong step has been written), trained on the "
        "training traces' exact step labels (a task with step verdicts, e.g. arith); P̂ = σ(value logit)·(1 − P(error)) "
        "(docs/design.md, 'Error head')",
    )
    q_top_k: int = field(
        8,
        help="qhead: V(s) = Σ π̃(y|s) Q(s, y) over the policy's q_top_k most likely next tokens (π̃: π_ref renormalised "
        "over them); 0 = the whole vocabulary",
    )
    soft_prompt_tokens: int = field(
        0, help="trainable virtual tokens (peft prompt tuning; needs backbone=frozen); 0 = none"
    )
    disable_dropout: bool = field(True, help="zero the backbone's dropout (π_φ and π_ref must see the same net)")
    prefixvalue_version: str = field(__version__, help="package version that wrote the checkpoint")

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.soft_prompt_tokens < 0:
            raise ValueError("soft_prompt_tokens must be >= 0")
        if self.soft_prompt_tokens and self.backbone != "frozen":
            raise ValueError(
                "a soft prompt trains on a frozen backbone: set backbone=frozen with soft_prompt_tokens > 0"
            )
        if self.loss not in LOSS_TYPES:
            raise ValueError(f"loss must be one of {LOSS_TYPES}, got {self.loss!r}")
        if not 0.0 < self.base_rate < 1.0:
            raise ValueError(f"base_rate must be in (0, 1), got {self.base_rate}")
        if self.beta <= 0:
            raise ValueError("beta must be positive")
        if self.prior_tokens < 0:
            raise ValueError(f"prior_tokens must be >= 0, got {self.prior_tokens}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.feature_head not in FEATURE_HEADS:
            raise ValueError(f"feature_head must be one of {FEATURE_HEADS}, got {self.feature_head!r}")
        if self.feature_head != "linear" and not (self.policy_features or self.kind == "qhead"):
            raise ValueError(
                f"feature_head={self.feature_head} reads the policy features: set policy_features=true (or kind=qhead)"
            )
        if self.head_layers is not None:
            if not self.head_layers or len(set(self.head_layers)) != len(self.head_layers):
                raise ValueError(f"head_layers must list distinct layers (e.g. [2, 4]), got {self.head_layers}")
            if self.head_layer != -1:
                raise ValueError("give head_layer or head_layers, not both (head_layers lists every layer read)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValueModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{CONFIG_NAME}: unknown keys {sorted(unknown)}")
        return cls(**data)


#: value-model kinds: kind -> its class (a `prefixvalue.value.base.ValueModel` subclass), the only list of them.
#: Defined here, at the bottom of the checkpoint code, so that loading a checkpoint (`ValueModel.from_pretrained`)
#: and rendering its card (`prefixvalue.value.card`) both find the class its ``kind`` names; filled by
#: `prefixvalue.value` (the package imports every kind's module and registers its class), so it is complete
#: once the package is imported.
VALUE_MODELS: dict[str, Any] = {}


def read_value_config(path: str | Path) -> ValueModelConfig:
    """The `ValueModelConfig` saved in a value checkpoint folder. ConfigError in one line naming the file (and
    the field) when it is missing, not a JSON object, lacks ``kind``, names an unknown kind, or holds a field of
    the wrong type or one that breaks a rule of the config or of its kind (`check_config`)."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise ConfigError(f"{path} is not a value checkpoint (no {CONFIG_NAME}; train writes one to output_dir/final)")
    cfg = record_from_mapping(ValueModelConfig, read_json_object(file), file, required=("kind",))
    if cfg.kind not in VALUE_MODELS:
        raise ConfigError(f"{file}: field kind: unknown value model {cfg.kind!r}; choose from {sorted(VALUE_MODELS)}")
    try:
        VALUE_MODELS[cfg.kind].check_config(cfg)
    except ValueError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    return cfg


def check_weights(path: str | Path) -> None:
    """ConfigError in one line naming `path` unless it is a whole safetensors file (its header read and its
    tensors' extent checked against the file's size; nothing is loaded): missing, truncated or not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: missing (no such file); the checkpoint is incomplete")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"{path}: not a whole safetensors file ({first}); the checkpoint is truncated or damaged"
        ) from None


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file `path` (`check_weights` first: a bad file is one line naming it)."""
    check_weights(path)
    return load_file(str(path))


def check_adapter(folder: str | Path) -> None:
    """ConfigError in one line naming the file unless `folder` holds a peft adapter as `save_pretrained` writes
    it (`ADAPTER_FILES`: a JSON object and a whole safetensors file); peft would take a folder without them for
    a Hub id and try to download it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: missing (no such folder); the checkpoint's adapter was not saved")
    config, weights = (folder / name for name in ADAPTER_FILES)
    read_json_object(config)
    check_weights(weights)


def check_backbone(folder: str | Path) -> None:
    """ConfigError in one line naming the file unless `folder` holds a fully trained backbone as transformers
    writes it: ``config.json``, a JSON object with a ``model_type``, and whole safetensors weights
    (``model.safetensors``, or every shard ``model.safetensors.index.json`` names)."""
    folder = Path(folder)
    config = read_json_object(folder / "config.json")
    if not isinstance(config.get("model_type"), str):
        raise ConfigError(f"{folder / 'config.json'}: missing field model_type (a transformers model config)")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConfigError(f"{index}: field weight_map must name the weight shards")
        shards = sorted({str(v) for v in weight_map.values()})
    else:
        shards = ["model.safetensors"]
    for name in shards:
        check_weights(folder / name)


__all__ = [
    "ADAPTER_DIR",
    "ADAPTER_FILES",
    "BACKBONES",
    "BACKBONE_DIR",
    "CHECKPOINT_RECORDS",
    "CONFIG_NAME",
    "FEATURE_HEADS",
    "HEAD_WEIGHTS",
    "READOUTS",
    "VALUE_MODELS",
    "ValueModelConfig",
    "check_adapter",
    "check_backbone",
    "check_weights",
    "load_weights",
    "read_value_config",
]
