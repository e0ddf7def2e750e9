"""Explicit value head (docs/design.md, "Explicit value head").

P̂(s_p) = σ(w·h_p + b), where h_p is the backbone's last hidden state at the last token of the prefix
(the last prompt token for p = 0). The backbone is frozen, LoRA-adapted or fully trained; an optional
soft prompt (peft prompt tuning) on a frozen backbone. Trained with BCE against outcomes or soft labels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from .base import ValueModel, ValueModelConfig, logit, max_completion_length, prefix_indices


class HeadValueModel(ValueModel):
    """Linear value head on the hidden states; ``forward`` returns logits z(p) [B, Tmax+1]."""

    kind = "head"

    @classmethod
    def check_config(cls, config: ValueModelConfig) -> None:
        if config.loss != "prefix":
            raise ValueError("the sequence-level loss is an implicit-model baseline; the head uses loss=prefix")

    def __init__(
        self, config: ValueModelConfig, backbone: PreTrainedModel, adapter_dir: str | Path | None = None
    ) -> None:
        hidden = backbone.get_input_embeddings().embedding_dim
        super().__init__(config, backbone, adapter_dir)
        # float32 head whatever the backbone dtype: it is tiny and its logits feed the loss directly
        self.head = nn.Linear(hidden, 1, dtype=torch.float32)
        with torch.no_grad():
            # start at the constant base-rate predictor: w = 0, b = logit(base rate)
            self.head.weight.zero_()
            self.head.bias.fill_(logit(config.base_rate))

    @property
    def _backbone_trains(self) -> bool:
        return self.config.backbone != "frozen" or self.config.soft_prompt_tokens > 0

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Head logits at positions 0..Tmax, [B, Tmax+1], float32."""
        tmax = max_completion_length(attention_mask, prompt_lengths)
        # a frozen backbone without a soft prompt needs no graph: run it without autograd
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._backbone_trains):
            # logits_to_keep=1: the LM head is not needed, skip projecting every position to the vocabulary
            out = self._lm_forward(input_ids, attention_mask, output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states[-1]
        idx = prefix_indices(prompt_lengths, tmax + 1, input_ids.shape[1])
        h = hidden.gather(1, idx[..., None].expand(-1, -1, hidden.shape[-1]))
        return self.head(h.float()).squeeze(-1)

    def _extra_state_tensors(self) -> dict[str, torch.Tensor]:
        return {"head.weight": self.head.weight, "head.bias": self.head.bias}

    def _load_extra_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = {"head.weight", "head.bias"} - set(tensors)
        if missing:
            raise ValueError(f"head weights missing from checkpoint: {sorted(missing)}")
        with torch.no_grad():
            self.head.weight.copy_(tensors["head.weight"])
            self.head.bias.copy_(tensors["head.bias"])
