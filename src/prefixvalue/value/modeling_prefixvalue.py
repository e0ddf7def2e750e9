"""A prefix value model as a token classifier in plain transformers (docs/design.md, "Checkpoints that travel").

``prefixvalue export-model`` copies this file, unchanged, into an export of a value model that no standard
transformers class can express (a head with policy features, a head on an inner layer, a Q-head, an implicit
model): ``AutoModelForTokenClassification.from_pretrained(folder, trust_remote_code=True)`` loads it with
torch and transformers alone. It imports nothing from prefixvalue.

The model holds the value backbone (LoRA merged in) and, where the kind reads it, the reference policy, and
returns two-label logits at every token: ``softmax(logits, -1)[..., i, 1]`` is P̂ of the prefix that ends at
token i, the probability that the policy, continuing from there, ends in a verified-correct answer (label 1
"correct", label 0 "wrong"; ``argmax`` picks "correct" iff P̂ > 0.5). The values match prefixvalue's
``ValueModel.predict`` on the same token ids.

``prompt_lengths`` (a LongTensor [B], the number of prompt tokens of each row) is required for every kind but
the plain head: policy features, the Q-head's features and the implicit model's log-ratios sum over the
completion tokens only. Token i of a row then holds P̂ after i − prompt_length + 1 completion tokens; tokens
inside the prompt hold the bare prompt's kind of value. Batches are right-padded (``attention_mask``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import TokenClassifierOutput

#: policy features per prefix: running sum, running minimum and last log π_ref of the written tokens
NUM_POLICY_FEATURES = 3
#: floor of a log-probability feature
LOGPROB_FLOOR = -30.0
#: inputs of a head's feature MLP (feature_head "mlp"): its logit and 5 normalised features; its hidden units
FEATURE_MLP_INPUTS, FEATURE_MLP_HIDDEN = 6, 32
#: a Q-head's aggregate is kept this far from 0 and 1 before its log-odds are taken
PROB_EPS = 1e-6
#: the two labels: index 1 is "the policy ends correct from here"
ID2LABEL = {0: "wrong", 1: "correct"}


class PrefixValueConfig(PretrainedConfig):
    """The value model's kind and options, with the policy's config (``policy_config``, a dict)."""

    model_type = "prefixvalue"

    def __init__(
        self,
        value_kind: str = "head",
        policy_config: dict[str, Any] | None = None,
        has_reference: bool = False,
        head_layer: int = -1,
        policy_features: bool = False,
        feature_head: str = "linear",
        head_layers: list[int] | None = None,
        q_top_k: int = 0,
        beta: float = 10.0,
        base_rate: float = 0.5,
        loss: str = "prefix",
        readout: str = "mean",
        prior_tokens: float = 0.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("id2label", dict(ID2LABEL))
        kwargs.setdefault("label2id", {v: k for k, v in ID2LABEL.items()})
        super().__init__(**kwargs)
        self.value_kind = value_kind
        self.policy_config = policy_config or {}
        self.has_reference = has_reference
        self.head_layer = head_layer
        self.policy_features = policy_features
        self.feature_head = feature_head
        self.head_layers = list(head_layers) if head_layers else None
        self.q_top_k = q_top_k
        self.beta = beta
        self.base_rate = base_rate
        self.loss = loss
        self.readout = readout
        self.prior_tokens = prior_tokens

    @property
    def needs_prompt_lengths(self) -> bool:
        """Whether the values depend on where the prompt ends (every kind but the plain head)."""
        return self.value_kind != "head" or self.policy_features


def _causal_lm(config: PrefixValueConfig) -> PreTrainedModel:
    policy = AutoConfig.for_model(**config.policy_config)
    return AutoModelForCausalLM.from_config(policy)


def _written_log_probs(logits: torch.Tensor, input_ids: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
    """log softmax(logits[:, j − 1])[input_ids[:, j]] at written tokens j (0 elsewhere), [B, L] float32."""
    picked = logits[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1).float()
    lp = picked - torch.logsumexp(logits[:, :-1].float(), dim=-1)
    lp = torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)
    return torch.where(written, lp, torch.zeros_like(lp))


def _normalised(feats: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The feature MLP's normalised features [B, L, 5] from the raw ones [B, L, 3] and the completion tokens up to
    each token `steps` [B, L]: sign(x)·log(1 + |x|) of the sum, the mean, the minimum and the last, and log(1 + p)."""
    count = steps.to(feats.dtype)
    raw = torch.stack([feats[..., 0], feats[..., 0] / count.clamp_min(1.0), feats[..., 1], feats[..., 2]], dim=-1)
    return torch.cat([raw.sign() * torch.log1p(raw.abs()), torch.log1p(count)[..., None]], dim=-1)


class PrefixValueForTokenClassification(PreTrainedModel):
    """P̂ at every token as two-label logits [B, L, 2]: [0, logit P̂] (module docstring)."""

    config_class = PrefixValueConfig
    base_model_prefix = "backbone"

    def __init__(self, config: PrefixValueConfig) -> None:
        super().__init__(config)
        self.backbone = _causal_lm(config)
        self.reference = _causal_lm(config) if config.has_reference else None
        hidden = self.backbone.get_input_embeddings().embedding_dim
        kind = config.value_kind
        if kind in ("head", "qhead"):
            self.head = nn.Linear(hidden * len(config.head_layers or [None]), 1)
        if config.policy_features and config.feature_head == "mlp":
            self.feature_mlp = nn.Sequential(
                nn.Linear(FEATURE_MLP_INPUTS, FEATURE_MLP_HIDDEN), nn.ReLU(), nn.Linear(FEATURE_MLP_HIDDEN, 1)
            )
        elif config.policy_features:
            self.feature_head = nn.Linear(NUM_POLICY_FEATURES, 1, bias=False)
        if kind == "qhead":
            self.q_features = nn.Linear(NUM_POLICY_FEATURES + 2, 1, bias=False)
            self.q_token = nn.Linear(hidden, hidden, bias=False)
        self._whitened: torch.Tensor | None = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing to initialise: every weight comes from the export."""

    def _reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lm = self.reference if self.reference is not None else self.backbone
        return lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def _token_embeddings(self) -> torch.Tensor:
        """The reference's output embeddings, centred and whitened over the vocabulary (ZCA), [V, H] float32."""
        lm = self.reference if self.reference is not None else self.backbone
        weight = lm.get_output_embeddings().weight
        if self._whitened is not None and self._whitened.device == weight.device:
            return self._whitened
        with torch.no_grad():
            e = weight.detach().double()
            c = e - e.mean(0, keepdim=True)
            vals, vecs = torch.linalg.eigh(c.T @ c / len(c))
            keep = vals > vals.max().clamp_min(1e-30) * 1e-6
            self._whitened = (c @ vecs[:, keep] / vals[keep].sqrt() @ vecs[:, keep].T).float()
        return self._whitened

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput:
        """Two-label logits [B, L, 2] of the right-padded batch `input_ids` (``prompt_lengths``: see the module)."""
        cfg = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        b, length = input_ids.shape
        pos = torch.arange(length, device=input_ids.device)[None, :]
        ends = attention_mask.sum(1)[:, None]  # each row's length
        if prompt_lengths is None:
            if cfg.needs_prompt_lengths:
                raise ValueError(
                    f"this prefix value model ({cfg.value_kind}) needs prompt_lengths=LongTensor [B], the number of "
                    "prompt tokens of each row: its values sum over the completion tokens only"
                )
            prompt_lengths = torch.ones(b, dtype=torch.long, device=input_ids.device)
        starts = torch.as_tensor(prompt_lengths, device=input_ids.device).long()[:, None]
        written = (pos >= starts) & (pos < ends)  # completion tokens
        steps = (pos - starts + 1).clamp_min(0)  # completion tokens up to and including token i
        if cfg.value_kind == "implicit":
            z = self._implicit(input_ids, attention_mask, written, steps)
        else:
            z = self._head(input_ids, attention_mask, written, pos >= ends - 1, steps)
        logits = torch.stack([torch.zeros_like(z), z], dim=-1)
        return TokenClassifierOutput(logits=logits)

    def _head(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        written: torch.Tensor,
        last: torch.Tensor,
        steps: torch.Tensor,
    ) -> torch.Tensor:
        """Logits of P̂ [B, L] of a head (with its policy features) or a Q-head."""
        cfg = self.config
        reads = cfg.policy_features or cfg.value_kind == "qhead"
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True
        )
        if cfg.head_layers:
            h = torch.cat([out.hidden_states[i] for i in cfg.head_layers], dim=-1).float()
        else:
            h = out.hidden_states[cfg.head_layer].float()
        lp = None
        if reads:
            ref_logits = out.logits if self.reference is None else self._reference_logits(input_ids, attention_mask)
            lp = _written_log_probs(ref_logits, input_ids, written).clamp_min(LOGPROB_FLOOR)
            lp = torch.where(written, lp, torch.zeros_like(lp))
            feats = torch.stack([lp.cumsum(1), torch.cummin(lp, dim=1).values, lp], dim=-1)
        if cfg.value_kind == "head":
            z = self.head(h).squeeze(-1)
            if cfg.policy_features and cfg.feature_head == "mlp":
                z = z + self.feature_mlp(torch.cat([z[..., None], _normalised(feats, steps)], dim=-1)).squeeze(-1)
            elif cfg.policy_features:
                z = z + self.feature_head(feats).squeeze(-1)
            return z
        logp = torch.log_softmax(ref_logits.float(), dim=-1)  # row i predicts token i + 1
        k = cfg.q_top_k
        if k and k < logp.shape[-1]:
            top_lp, cand = logp.topk(k, dim=-1)
        else:
            cand = torch.arange(logp.shape[-1], device=logp.device).expand(*logp.shape[:2], -1)
            top_lp = logp
        agg = (torch.softmax(top_lp, dim=-1) * torch.sigmoid(self._q_logits(h, logp, feats, cand))).sum(-1)
        agg = torch.logit(agg, eps=PROB_EPS)
        # the written token i: Q(s_{i−1}, y_i), read at token i − 1 (its features are those of s_{i−1})
        nxt = input_ids[:, 1:, None]
        incoming = self._q_logits(h[:, :-1], logp[:, :-1], feats[:, :-1], nxt)[..., 0]
        incoming = torch.cat([agg[:, :1], incoming], dim=1)
        # a finished trace's last token: nothing follows, its value is the Q of the action that ended it
        return torch.where(last & written, incoming, agg)

    def _q_logits(self, h: torch.Tensor, logp: torch.Tensor, f: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Q's logits [B, P, K] of candidate tokens `cand` [B, P, K] at the states h [B, P, H]."""
        ell = logp.gather(-1, cand).clamp_min(LOGPROB_FLOOR)
        f = f[:, :, None, :].expand(-1, -1, cand.shape[2], -1)
        feats = torch.cat([f, ell[..., None], torch.minimum(f[..., 1], ell)[..., None]], dim=-1)
        token = (self.q_token(h)[:, :, None, :] * self._token_embeddings()[cand]).sum(-1) / h.shape[-1] ** 0.5
        return self.head(h) + self.q_features(feats).squeeze(-1) + token

    def _implicit(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, written: torch.Tensor, steps: torch.Tensor
    ) -> torch.Tensor:
        """Logits of P̂ [B, L] of an implicit model: β Σ log π_φ/π_ref over the written tokens, read out."""
        cfg = self.config
        phi = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        with torch.no_grad():
            ref = self._reference_logits(input_ids, attention_mask)
        ratios = _written_log_probs(phi, input_ids, written) - _written_log_probs(ref, input_ids, written)
        v = cfg.beta * ratios.cumsum(1)  # V_φ after each token
        offset = math.log(cfg.base_rate) - math.log1p(-cfg.base_rate)
        n = steps.to(v.dtype)
        if cfg.loss == "sequence":  # trained on σ(V_φ(T)): read out as trained
            z = (v / n.clamp_min(1)) * n
        elif cfg.readout == "sum":
            z = offset + v
        else:
            k = float(cfg.prior_tokens)
            z = (v + k * offset) / (n + k).clamp_min(1e-12)
        return torch.where(steps > 0, z, torch.full_like(z, offset))


__all__ = ["ID2LABEL", "PrefixValueConfig", "PrefixValueForTokenClassification"]
