"""Standard-class export: a head value model as ``AutoModelForTokenClassification`` with ``num_labels=1``
(docs/design.md, "Checkpoints that travel").

The head model's P̂ at prefix position p is σ(w·h + b) with h the backbone's last hidden state at the
prefix's last token (sequence index prompt_len − 1 + p). A token-classification model is exactly a
backbone and a linear layer on its last hidden state at every token, so the export merges the LoRA
adapters into the backbone (peft ``merge_and_unload``), copies the backbone into the token-classification
model's base model and the head's weight and bias into its classifier (``score`` for Llama / Qwen /
Mistral-style models, ``classifier`` for GPT-2). The exported model's output at a token is the head's
*logit*, not a probability: P̂ of the prefix ending at token i is ``sigmoid(logits[..., i, 0])``.

What cannot be exported this way is refused in one line: the implicit model (its values need the
policy's logits with and without the adapter; see docs/design.md for plain transformers + peft code),
a head on an inner layer (``head_layer``), policy features and soft prompts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..jsonlines import read_json_object
from ..policies import resolve_dtype
from ..prompting import PROMPT_FORMAT_FILE
from .base import ValueModel

#: the label name of the exported model's single output
VALUE_LABEL = "value_logit"
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

# Prefix value model as AutoModelForTokenClassification

Exported with `prefixvalue export-model` from the value checkpoint `{source}` (kind `head`, base model
`{base}`). Its single output at each token is a logit: the predicted probability that the policy ends in a
verified-correct answer, continuing from the prefix that ends at that token, is `sigmoid(logit)`.

```python
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

model = AutoModelForTokenClassification.from_pretrained("{name}")
tok = AutoTokenizer.from_pretrained("{name}")
prompt_ids = tok({prompt!r}, add_special_tokens=False).input_ids
completion_ids = tok({completion!r}, add_special_tokens=False).input_ids
with torch.no_grad():
    logits = model(input_ids=torch.tensor([prompt_ids + completion_ids])).logits[0, :, 0]
values = torch.sigmoid(logits[len(prompt_ids) - 1 :])  # P̂ after 0, 1, ..., T completion tokens
```

The value of the prefix ending at a token is the sigmoid of the logit there. Tokenise the prompt as the
value model's traces were ({fmt}), and the prompt and the completion separately, as prefixvalue does.
"""


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The final linear layer of a token-classification model (`CLASSIFIER_NAMES`)."""
    for name in CLASSIFIER_NAMES:
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Linear):
            return layer
    raise ConfigError(f"{type(model).__name__} has no linear classifier named {' or '.join(CLASSIFIER_NAMES)}")


def check_exportable(model: ValueModel) -> None:
    """ConfigError, in one line, unless a token-classification model can express `model` (its kind's
    `ValueModel.export_problem`: a head on the last hidden layer, without policy features or a soft prompt)."""
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


@torch.no_grad()
def to_token_classification(model: ValueModel, dtype: str | torch.dtype = "float32") -> Any:
    """An ``AutoModelForTokenClassification`` (num_labels=1, eval mode, on CPU) computing `model`'s head
    logit at every token; `model` is not changed."""
    from transformers import AutoModelForTokenClassification

    check_exportable(model)
    causal = _causal_lm(model, merge=True)
    config = copy.deepcopy(causal.config)
    config.num_labels = 1
    config.id2label = {0: VALUE_LABEL}
    config.label2id = {VALUE_LABEL: 0}
    config.architectures = None
    torch_dtype = resolve_dtype(dtype)
    tc = AutoModelForTokenClassification.from_config(config, dtype=torch_dtype)
    state = {k: v.detach().to("cpu", torch_dtype) for k, v in causal.base_model.state_dict().items()}
    tc.base_model.load_state_dict(state, strict=True)
    head = classifier_layer(tc)
    head.weight.copy_(model.head.weight.detach().to("cpu", torch_dtype))
    head.bias.copy_(model.head.bias.detach().to("cpu", torch_dtype))
    return tc.eval()


def export_token_classification(
    model: ValueModel, out: str | Path, dtype: str | torch.dtype = "float32", name: str | None = None
) -> Path:
    """Write `model` as a token-classification model folder (weights in safetensors, config, tokenizer,
    prompt format, README.md with a usage snippet naming `name`, default the folder); returns the folder."""
    out = Path(out)
    tc = to_token_classification(model, dtype)
    tc.save_pretrained(str(out), safe_serialization=True)
    tok = model.tokenizer
    tok.save_pretrained(str(out))
    (out / PROMPT_FORMAT_FILE).write_text(model.prompt_format.to_json() + "\n")
    fmt = "the chat template (one user message, generation prompt)" if model.prompt_format.chat_template else "raw text"
    example = {}
    if model.source is not None and (model.source / "training.json").is_file():
        example = read_json_object(model.source / "training.json").get("example") or {}
    (out / "README.md").write_text(
        EXPORT_README.format(
            source=model.source or "(in memory)",
            base=model.config.base_model,
            name=name or str(out.resolve()),
            prompt=example.get("prompt", "PROMPT TEXT"),
            completion=example.get("completion", "COMPLETION TEXT"),
            fmt=fmt,
        )
    )
    return out


__all__ = [
    "CLASSIFIER_NAMES",
    "VALUE_LABEL",
    "check_exportable",
    "classifier_layer",
    "export_token_classification",
    "to_token_classification",
]
