"""Value models as token classifiers that plain transformers loads (docs/design.md, "Checkpoints that travel").

Every export has two labels, 0 "wrong" and 1 "correct", and ``softmax(logits, -1)[..., i, 1]`` is P̂ of the
prefix ending at token i (so ``argmax`` picks "correct" iff P̂ > 0.5, as TRL's PRM models are read, and
``pipeline("token-classification")`` scores the argmax label).

- A head on the last hidden layer without policy features is a standard ``AutoModelForTokenClassification``:
  P̂ = σ(w·h + b) with h the backbone's last hidden state at the token, so the export merges the LoRA adapters
  into the backbone (peft ``merge_and_unload``), copies it into the token-classification model's base model,
  and writes the classifier rows [0·w, 0] and [w, b] (``score`` for Llama / Qwen / Mistral-style models,
  ``classifier`` for GPT-2): softmax over the two is σ(w·h + b).
- Every other kind (a head with policy features or on an inner layer, a Q-head, an implicit model) is the
  self-contained architecture of `prefixvalue.value.modeling_prefixvalue`, copied into the export with
  ``auto_map`` in its config: ``from_pretrained(folder, trust_remote_code=True)``; it holds the value backbone
  (LoRA merged) and, where the kind reads it, the reference policy, and needs ``prompt_lengths``.

Soft prompts are refused in one line.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import runfolder
from ..config import ConfigError
from ..jsonlines import read_json_object
from ..policies import resolve_dtype
from ..prompting import PROMPT_FORMAT_FILE
from . import modeling_prefixvalue
from .base import ValueModel
from .modeling_prefixvalue import ID2LABEL as REMOTE_ID2LABEL
from .modeling_prefixvalue import PrefixValueConfig, PrefixValueForTokenClassification

#: the export's labels: P̂ is the probability of label 1
ID2LABEL: dict[int, str] = dict(REMOTE_ID2LABEL)
#: the file of the self-contained architecture that non-standard exports carry
REMOTE_CODE_FILE = "modeling_prefixvalue.py"
#: config.json's ``auto_map`` of a non-standard export (transformers' trust_remote_code classes)
AUTO_MAP = {
    "AutoConfig": "modeling_prefixvalue.PrefixValueConfig",
    "AutoModelForTokenClassification": "modeling_prefixvalue.PrefixValueForTokenClassification",
}
#: attribute names of a token-classification model's final linear layer, by architecture family
CLASSIFIER_NAMES: tuple[str, ...] = ("score", "classifier")

EXPORT_README = """---
library_name: transformers
pipeline_tag: token-classification
tags:
- prefixvalue
- value-model
- process-reward-model
---

# Prefix value model ({kind}) as a token classifier

Exported with `prefixvalue export-model` from the value checkpoint `{source}` (kind `{kind}`, base model
`{base}`). It has two labels, 0 `wrong` and 1 `correct`; the probability of `correct` at a token,
`softmax(logits, -1)[..., 1]`, is P̂: the predicted probability that the policy, continuing from the prefix that
ends at that token, ends in a verified-correct answer (`argmax` picks `correct` iff P̂ > 0.5).
{loading}
```python
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

model = AutoModelForTokenClassification.from_pretrained("{name}"{remote}).eval()
tok = AutoTokenizer.from_pretrained("{name}")
prompt_ids = tok({prompt!r}, add_special_tokens=False).input_ids
completion_ids = tok({completion!r}, add_special_tokens=False).input_ids
ids = torch.tensor([prompt_ids + completion_ids])
with torch.no_grad():
    logits = model(input_ids=ids{lengths}).logits[0]
values = logits.softmax(-1)[len(prompt_ids) - 1 :, 1]  # P̂ after 0, 1, ..., T completion tokens
```

Tokenise the prompt as the value model's traces were ({fmt}), and the prompt and the completion separately, as
prefixvalue does. For step data (ProcessBench), read P̂ at the last token of each step.
{pipeline}"""

#: README text of a standard export: it loads without remote code and runs in transformers' pipeline
STANDARD_LOADING = """
A standard `AutoModelForTokenClassification` (no remote code):
"""
STANDARD_PIPELINE = """
`pipeline("token-classification", model="{name}")` gives, at every token, the `argmax` label and its
probability: P̂ is `score` where `entity` is `correct`, `1 - score` where it is `wrong` (the pipeline
tokenises the whole text, so the prompt's tokens may differ from the snippet's).
"""
#: README text of an export that carries modeling_prefixvalue.py
REMOTE_LOADING = """
This kind is not a standard transformers class: the folder carries its architecture, `modeling_prefixvalue.py`
(torch and transformers only), which `from_pretrained` runs only with `trust_remote_code=True`; read it first.
It holds the value backbone{reference}. {lengths}
"""
#: what REMOTE_LOADING says about ``prompt_lengths``: a kind whose values sum over the completion's tokens needs it
NEEDS_LENGTHS = """Its values sum over the completion's tokens, so `forward` needs `prompt_lengths` (a
LongTensor, the number of prompt tokens of each row; batches right-padded with an `attention_mask`); transformers'
`pipeline`, which cannot pass it, is refused with that message."""
NO_LENGTHS = """Its value at a token does not depend on where the prompt ends (`prompt_lengths` is optional)."""


def export_readme(
    kind: str,
    standard: bool,
    source: str,
    base: str,
    name: str,
    prompt: str,
    completion: str,
    chat: bool = False,
    reference: bool = False,
    needs_lengths: bool = True,
) -> str:
    """The README.md of an export: what the labels mean and a usage snippet loading `name` (standard class or
    remote code, `standard`; `reference`: it carries the reference policy; `needs_lengths`: its forward needs
    ``prompt_lengths``) that scores `prompt` ⊕ `completion`."""
    held = " and the reference policy (twice the base model's weights)" if reference else ""
    return EXPORT_README.format(
        kind=kind,
        source=source,
        base=base,
        name=name,
        prompt=prompt,
        completion=completion,
        fmt="the chat template (one user message, generation prompt)" if chat else "raw text",
        loading=STANDARD_LOADING
        if standard
        else REMOTE_LOADING.format(reference=held, lengths=NEEDS_LENGTHS if needs_lengths else NO_LENGTHS),
        remote="" if standard else ", trust_remote_code=True",
        lengths="" if standard else ", prompt_lengths=torch.tensor([len(prompt_ids)])",
        pipeline=STANDARD_PIPELINE.format(name=name) if standard else "",
    )


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The final linear layer of a token-classification model (`CLASSIFIER_NAMES`)."""
    for name in CLASSIFIER_NAMES:
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Linear):
            return layer
    raise ConfigError(f"{type(model).__name__} has no linear classifier named {' or '.join(CLASSIFIER_NAMES)}")


def check_exportable(model: ValueModel) -> None:
    """ConfigError, in one line, unless a token classifier can express `model` (its kind's
    `ValueModel.export_problem`: every kind, without a soft prompt). An ensemble is several models: refused."""
    if not isinstance(model, ValueModel):
        raise ConfigError(
            "export-model exports one value checkpoint; an ensemble (prefixvalue ensemble) is several: export each member"
        )
    n_layers = getattr(_causal_lm(model, merge=False).config, "num_hidden_layers", None)
    problem = type(model).export_problem(model.config, n_layers)
    if problem:
        raise ConfigError(problem)


def _causal_lm(model: ValueModel, merge: bool) -> Any:
    """The value model's causal LM, LoRA merged into a copy when `merge` (the model is left unchanged)."""
    lm = model.lm
    if not model.uses_peft:
        return lm
    if not merge:
        return lm.get_base_model()
    return copy.deepcopy(lm).merge_and_unload()


def is_standard(model: ValueModel) -> bool:
    """Whether `model` exports as a standard ``AutoModelForTokenClassification`` (`ValueModel.standard_export`)."""
    layers = getattr(_causal_lm(model, merge=False).config, "num_hidden_layers", None)
    return type(model).standard_export(model.config, layers)


def _reference_lm(model: ValueModel) -> Any:
    """The reference policy an export carries (`ValueModel.export_reads_reference`), a copy; None without one."""
    if not type(model).export_reads_reference(model.config):
        return None
    if model.uses_peft:
        return copy.deepcopy(model.lm).unload()  # the policy without its adapters
    return copy.deepcopy(model.ref_lm)  # a fully trained backbone: the frozen copy of the starting policy


@torch.no_grad()
def to_token_classification(model: ValueModel, dtype: str | torch.dtype = "float32") -> Any:
    """A two-label token classifier (eval mode, on CPU) whose ``softmax(logits)[..., 1]`` is `model`'s P̂ at every
    token: a standard ``AutoModelForTokenClassification`` when `is_standard`, else a
    `PrefixValueForTokenClassification`; `model` is not changed."""
    check_exportable(model)
    torch_dtype = resolve_dtype(dtype)
    if not is_standard(model):
        return _to_remote(model, torch_dtype)
    from transformers import AutoModelForTokenClassification

    causal = _causal_lm(model, merge=True)
    config = copy.deepcopy(causal.config)
    config.num_labels = 2
    config.id2label = dict(ID2LABEL)
    config.label2id = {v: k for k, v in ID2LABEL.items()}
    config.architectures = None
    tc = AutoModelForTokenClassification.from_config(config, dtype=torch_dtype)
    state = {k: v.detach().to("cpu", torch_dtype) for k, v in causal.base_model.state_dict().items()}
    tc.base_model.load_state_dict(state, strict=True)
    head = classifier_layer(tc)
    head.weight.zero_()
    head.bias.zero_()
    head.weight[1].copy_(model.head.weight[0].detach().to("cpu", torch_dtype))
    head.bias[1:].copy_(model.head.bias.detach().to("cpu", torch_dtype))
    return tc.eval()


def _to_remote(model: ValueModel, torch_dtype: torch.dtype) -> PrefixValueForTokenClassification:
    """`model` as a `PrefixValueForTokenClassification` (the value backbone merged, the reference, the heads)."""
    cfg = model.config
    causal = _causal_lm(model, merge=True)
    reference = _reference_lm(model)
    config = PrefixValueConfig(
        value_kind=cfg.kind,
        policy_config=causal.config.to_dict(),
        has_reference=reference is not None,
        head_layer=cfg.head_layer,
        policy_features=cfg.policy_features,
        feature_head=cfg.feature_head,
        head_layers=cfg.head_layers,
        q_top_k=cfg.q_top_k,
        beta=cfg.beta,
        base_rate=cfg.base_rate,
        loss=cfg.loss,
        readout=cfg.readout,
        prior_tokens=cfg.prior_tokens,
        auto_map=dict(AUTO_MAP),
        architectures=[PrefixValueForTokenClassification.__name__],
    )
    tc = PrefixValueForTokenClassification(config)
    tc.backbone.load_state_dict(causal.state_dict(), strict=True)
    if reference is not None:
        tc.reference.load_state_dict(reference.state_dict(), strict=True)
    heads = {k: v.detach() for k, v in model._extra_state_tensors().items()}
    missing, unexpected = tc.load_state_dict(heads, strict=False)
    own = {k for k in tc.state_dict() if not k.startswith(("backbone.", "reference."))}
    if unexpected or own & set(missing):
        raise ConfigError(
            f"export-model: the {cfg.kind} model's weights do not fit its export ({unexpected or missing})"
        )
    return tc.to("cpu", torch_dtype).eval()


def export_token_classification(
    model: ValueModel, out: str | Path, dtype: str | torch.dtype = "float32", name: str | None = None
) -> Path:
    """Write `model` as a token-classification model folder (weights in safetensors, config, tokenizer, prompt
    format, ``modeling_prefixvalue.py`` when not `is_standard`, README.md with a usage snippet naming `name`,
    default the folder); returns the folder."""
    out = Path(out)
    tc = to_token_classification(model, dtype)
    tc.save_pretrained(str(out), safe_serialization=True)
    standard = not isinstance(tc, PrefixValueForTokenClassification)
    if not standard:
        runfolder.write_text(out / REMOTE_CODE_FILE, Path(modeling_prefixvalue.__file__).read_text())
    tok = model.tokenizer
    tok.save_pretrained(str(out))
    runfolder.write_text(out / PROMPT_FORMAT_FILE, model.prompt_format.to_json() + "\n")
    example = {}
    if model.source is not None and (model.source / "training.json").is_file():
        example = read_json_object(model.source / "training.json").get("example") or {}
    runfolder.write_text(
        out / "README.md",
        export_readme(
            kind=model.config.kind,
            standard=standard,
            source=str(model.source or "(in memory)"),
            base=model.config.base_model,
            name=name or str(out.resolve()),
            prompt=example.get("prompt", "PROMPT TEXT"),
            completion=example.get("completion", "COMPLETION TEXT"),
            chat=bool(model.prompt_format.chat_template),
            reference=getattr(tc, "reference", None) is not None,
            needs_lengths=standard or tc.config.needs_prompt_lengths,
        ),
    )
    return out


__all__ = [
    "AUTO_MAP",
    "CLASSIFIER_NAMES",
    "ID2LABEL",
    "REMOTE_CODE_FILE",
    "check_exportable",
    "classifier_layer",
    "export_readme",
    "export_token_classification",
    "is_standard",
    "to_token_classification",
]
