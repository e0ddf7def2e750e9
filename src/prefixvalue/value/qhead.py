"""Explicit Q-head: a value for every candidate next token from one forward pass (docs/design.md, "Q-head").

At a prefix s_p (hidden state h_p at its last token, as the head reads it) the value of appending candidate y is

    Q(s_p, y) = σ(w·h_p + b + u·[f(s_p), ℓ_y, min(f_min(s_p), ℓ_y)] + (W h_p)·ê_y / √H)

- f(s_p): the head's three policy features of s_p (the sum, the minimum and the last of log π_ref over the
  written tokens), one value for every candidate; ℓ_y = log π_ref(y|s_p), the candidate's own (floored at −30),
  and the minimum over s_p ⊕ y: the policy's surprise at an unlikely candidate, as the head reads it once written.
- ê_y: the reference policy's output embedding of y, frozen, centred and whitened over the vocabulary.
  (W h_p)·ê_y / √H (H the hidden size) is a second, trained "LM head" that reads which token the state makes
  right; W starts at 0.

With ``checker`` (docs/design.md, "Checker features") the same five numbers of the checker model's log-probabilities
join u's input (f of s_p and ℓ_y under the checker): a candidate the checker finds wrong is one the value can mark
down before anyone writes it.

With ``feature_head=mlp`` the linear u·[...] gives way to the explicit head's feature MLP, read as if y had been
written: Q(s_p, y) = σ(z + MLP(z, g(f(s_p ⊕ y))) + (W h_p)·ê_y / √H), z = w·h_p + b, where f(s_p ⊕ y) is the sum
f_sum(s_p) + ℓ_y, the minimum min(f_min(s_p), ℓ_y) and the last ℓ_y of each source (the policy, and the checker) and
g the head's fixed normalisation (`normalised_policy_features`, p + 1 tokens written). The MLP saturates where u is
linear, so a candidate the checker gives 5% counts as wrong as one it gives 1e-6; its output layer starts at zero.

Every parameter is shared across tokens, so a Q trained on the sampled tokens alone generalises to the unsampled
ones. The prefix value is the policy-weighted aggregate V(s_p) = Σ_y π̃(y|s_p) Q(s_p, y) over the reference
policy's `q_top_k` most likely tokens (π̃: π_ref renormalised over them; 0 = the whole vocabulary), which is
Bellman's identity for the exact values at temperature 1. At the last position p = T (nothing follows a
finished trace) V(s_T) = Q(s_{T−1}, y_T), the value of the action that ended it.

Training: ``forward`` returns two channels [B, Tmax+1, 2]: channel 0 the "incoming" Q(s_{p−1}, y_p) of the written
token (at p = 0, V(s_0)), channel 1 the readout V(s_p). The loss is the mean of the two BCEs against the target
of s_p, so Q(s, y_t) learns the target of s ⊕ y_t and V(s) the target of s. How far V(s ⊕ y) and Q(s, y) agree
is measured (`prefixvalue advantages`, "consistency"), not assumed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from .base import ValueModelConfig, max_completion_length, prefix_indices
from .head import (
    FEATURE_MLP_HIDDEN,
    LOGPROB_FLOOR,
    NUM_POLICY_FEATURES,
    HeadValueModel,
    normalised_policy_features,
    num_normalised_features,
    written_logprob_features,
)
from .losses import LOSS_TYPES, LossSum, margin_bce_with_logits, masked_sum

#: P̂ is kept this far from 0 and 1 before its log-odds are taken (the aggregate is a probability, not a logit)
PROB_EPS = 1e-6


class QHeadValueModel(HeadValueModel):
    """Q-head (module docstring); ``forward`` returns logits [B, Tmax+1, 2] (incoming Q, readout V)."""

    kind = "qhead"
    description = (
        "explicit Q-head: Q(s, y) = σ(w·h + b + u·f(s⊕y) + (W h)·e_y) for every candidate y in one pass; "
        "V(s) = Σ π(y|s) Q(s, y)"
    )
    counterfactuals = True
    candidate_training = True

    @classmethod
    def check_config(cls, config: ValueModelConfig) -> None:
        super().check_config(config)
        if config.policy_features:
            raise ValueError(
                "the Q-head always reads the policy's log-probabilities of each candidate; policy_features is the "
                "head's option (leave it false)"
            )
        if config.head_layers:
            raise ValueError("the Q-head reads one hidden layer (head_layer); head_layers is the head's option")
        if config.error_head:
            raise ValueError("error_head is the explicit head's option (value_model.kind=head)")
        if config.q_top_k < 0:
            raise ValueError(f"q_top_k must be >= 0 (0: the whole vocabulary), got {config.q_top_k}")

    @classmethod
    def reads_reference(cls, config: ValueModelConfig) -> bool:
        return True

    @classmethod
    def card_rows(cls, config: ValueModelConfig) -> list[tuple[str, str]]:
        k = config.q_top_k or "all"
        rows = [("V(s) aggregates", f"Q(s, ·) over the policy's top {k} tokens, weighted by π_ref")]
        if config.checker:
            rows.append(
                ("checker", f"{config.checker}: its log-probabilities of s and of each candidate beside π_ref's")
            )
        if config.feature_head == "mlp":
            how = f"an MLP ({FEATURE_MLP_HIDDEN} hidden units) over w·h + b and the normalised features of s ⊕ y"
            rows.append(("feature head", how))
        return rows

    @classmethod
    def export_problem(cls, config: ValueModelConfig, num_layers: int | None = None) -> str | None:
        if config.feature_head == "mlp":
            return "export-model does not carry the Q-head's feature MLP yet: load the checkpoint with load_value_model"
        return super().export_problem(config, num_layers)

    @classmethod
    def standard_export(cls, config: ValueModelConfig, num_layers: int | None = None) -> bool:
        """Never: Q reads the reference policy's log-probabilities."""
        return False

    def __init__(
        self,
        config: ValueModelConfig,
        backbone: PreTrainedModel,
        adapter_dir: str | Path | None = None,
        reference: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config, backbone, adapter_dir, reference)
        hidden = self.head.in_features
        sources = 1 + (self.checker_lm is not None)  # the policy's log-probabilities, and the checker's
        self.q_features = None
        self.q_mlp = None
        if config.feature_head == "mlp":
            self.q_mlp = nn.Sequential(
                nn.Linear(1 + num_normalised_features(sources), FEATURE_MLP_HIDDEN, dtype=torch.float32),
                nn.ReLU(),
                nn.Linear(FEATURE_MLP_HIDDEN, 1, dtype=torch.float32),
            )
            nn.init.zeros_(self.q_mlp[2].weight)
            nn.init.zeros_(self.q_mlp[2].bias)
        else:
            self.q_features = nn.Linear((NUM_POLICY_FEATURES + 2) * sources, 1, bias=False, dtype=torch.float32)
            nn.init.zeros_(self.q_features.weight)
        self.q_token = nn.Linear(hidden, hidden, bias=False, dtype=torch.float32)
        nn.init.zeros_(self.q_token.weight)

    # ----- the pieces of one forward pass ----------------------------------------------------------------
    def _token_embeddings(self) -> torch.Tensor:
        """ê [V, H]: the reference policy's output embeddings, frozen, centred and whitened over the vocabulary (ZCA;
        directions of variance below 1e-6 of the largest dropped). Raw output embeddings share a large common
        component and differ along small directions, which the bilinear term then learns slowly (measured on the
        Markov toy of tests/test_training_signals.py); whitened, every direction has unit variance. Computed once
        per device and kept, [V, H] float32 (not saved: it follows from the policy)."""
        src = self.ref_lm if self.ref_lm is not None else (self.lm.get_base_model() if self.uses_peft else self.lm)
        weight = src.get_output_embeddings().weight
        cached = getattr(self, "_whitened", None)
        if cached is not None and cached.device == weight.device:
            return cached
        with torch.no_grad():
            e = weight.detach().double()
            c = e - e.mean(0, keepdim=True)
            vals, vecs = torch.linalg.eigh(c.T @ c / len(c))
            keep = vals > vals.max().clamp_min(1e-30) * 1e-6
            white = (c @ vecs[:, keep] / vals[keep].sqrt() @ vecs[:, keep].T).float()  # ZCA: back in the H axes
        self._whitened = white
        return white

    def _state(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """What Q needs at every prefix p = 0..Tmax: hidden states ``h`` [B, P, H], the reference log-probabilities
        ``logp`` [B, P, V] of the next token, the head's policy features ``f`` [B, P, 3] of each prefix (sum, minimum
        and last of log π_ref over the written tokens; 0 at p = 0), the completion lengths ``clens`` [B]; with a
        checker also its ``logp_checker`` [B, P, V] and ``f_checker`` [B, P, 3], alike."""
        tmax = max_completion_length(attention_mask, prompt_lengths)
        frozen = not self._backbone_trains
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._backbone_trains):
            out = self._lm_forward(
                input_ids, attention_mask, output_hidden_states=True, **({} if frozen else {"logits_to_keep": 1})
            )
            hidden = out.hidden_states[self.config.head_layer]
        idx = prefix_indices(prompt_lengths, tmax + 1, input_ids.shape[1])
        h = hidden.gather(1, idx[..., None].expand(-1, -1, hidden.shape[-1])).float()
        with torch.no_grad():
            ref_logits = out.logits if frozen else self.reference_logits(input_ids, attention_mask)
            sel = ref_logits.gather(1, idx[..., None].expand(-1, -1, ref_logits.shape[-1]))
            logp = torch.log_softmax(sel.float(), dim=-1)  # [B, Tmax+1, V]: row p predicts completion token p + 1
            clens = attention_mask.sum(1) - prompt_lengths
            written = input_ids.gather(1, (idx[:, :tmax] + 1).clamp(max=input_ids.shape[1] - 1))

            def features(lp: torch.Tensor) -> torch.Tensor:
                return written_logprob_features(lp[:, :tmax].gather(-1, written[..., None]).squeeze(-1), clens)

            st = {"h": h, "logp": logp, "f": features(logp), "clens": clens}
            if self.checker_lm is not None:
                c_logits = self.checker_lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
                c_sel = c_logits.gather(1, idx[..., None].expand(-1, -1, c_logits.shape[-1]))
                st["logp_checker"] = torch.log_softmax(c_sel.float(), dim=-1)
                st["f_checker"] = features(st["logp_checker"])
        return st

    def _q_logits(self, st: dict[str, torch.Tensor], cand: torch.Tensor) -> torch.Tensor:
        """Q's logits [B, P, K] of candidate tokens `cand` [B, P, K] at prefixes 0..P−1."""
        p = cand.shape[1]
        h = st["h"][:, :p]
        groups = []
        for logp, f in ((st["logp"], st["f"]), (st.get("logp_checker"), st.get("f_checker"))):
            if logp is None:
                continue
            ell = logp[:, :p].gather(-1, cand).clamp_min(LOGPROB_FLOOR)
            # the head's features of s (one value for every candidate of s), the candidate's own log π(y|s) and the
            # minimum of s ⊕ y (the running minimum is 0 at p = 0 and every log-probability is <= 0)
            f = f[:, :p, None, :].expand(-1, -1, cand.shape[2], -1)
            low = torch.minimum(f[..., 1], ell)
            if self.q_mlp is not None:  # the head's raw features of s ⊕ y: sum, minimum, last
                groups.append(torch.stack([f[..., 0] + ell, low, ell], dim=-1))
            else:
                groups.append(torch.cat([f, ell[..., None], low[..., None]], dim=-1))
        feats = torch.cat(groups, dim=-1)
        state = self.head(h)  # [B, P, 1]
        if self.q_mlp is not None:
            written = torch.arange(1, p + 1, device=h.device)[None, :, None]  # s_p ⊕ y holds p + 1 tokens
            g = normalised_policy_features(feats, written)
            z = state.expand(-1, -1, cand.shape[2])
            features = self.q_mlp(torch.cat([z[..., None], g], dim=-1)).squeeze(-1)
        else:
            features = self.q_features(feats).squeeze(-1)
        # scaled by 1/√H, as attention scores are: the sum runs over H products of unit-variance terms
        token = (self.q_token(h)[:, :, None, :] * self._token_embeddings()[cand]).sum(-1) / h.shape[-1] ** 0.5
        return state + features + token

    def _aggregate(self, st: dict[str, torch.Tensor]) -> torch.Tensor:
        """V(s_p) = Σ π̃(y|s_p) σ(Q(s_p, y)) over the top `q_top_k` tokens of π_ref, [B, Tmax+1] probabilities."""
        logp = st["logp"]
        k = self.config.q_top_k
        if k and k < logp.shape[-1]:
            top_lp, cand = logp.topk(k, dim=-1)
        else:
            cand = torch.arange(logp.shape[-1], device=logp.device).expand(*logp.shape[:2], -1)
            top_lp = logp
        weights = torch.softmax(top_lp, dim=-1)
        return (weights * torch.sigmoid(self._q_logits(st, cand))).sum(-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_lengths: torch.Tensor,
        candidate_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """[B, Tmax+1, 2] logits: channel 0 the incoming Q(s_{p−1}, y_p) (p = 0: V(s_0)); channel 1 the readout,
        V(s_p) for p < T and Q(s_{T−1}, y_T) at p = T. With `candidate_ids` [B, P, K] (P <= Tmax+1: candidate
        labels, docs/design.md "Candidate labels") also Q's logits [B, P, K] of those tokens, from the same pass."""
        st = self._state(input_ids, attention_mask, prompt_lengths)
        logits = self._channels(st, input_ids, prompt_lengths)
        if candidate_ids is None:
            return logits
        return logits, self._q_logits(st, candidate_ids)

    def _channels(
        self, st: dict[str, torch.Tensor], input_ids: torch.Tensor, prompt_lengths: torch.Tensor
    ) -> torch.Tensor:
        """`forward`'s [B, Tmax+1, 2] logits from the state `st` (`_state`)."""
        tmax = st["h"].shape[1] - 1
        agg = torch.logit(self._aggregate(st), eps=PROB_EPS)  # [B, Tmax+1]
        idx = prefix_indices(prompt_lengths, tmax, input_ids.shape[1])
        written = input_ids.gather(1, (idx + 1).clamp(max=input_ids.shape[1] - 1))  # [B, Tmax]: token p + 1
        incoming = self._q_logits(st, written[..., None])[..., 0] if tmax else agg[:, :0]
        channel0 = torch.cat([agg[:, :1], incoming], dim=1)
        at_end = torch.arange(tmax + 1, device=agg.device)[None, :] >= st["clens"][:, None]
        readout = torch.where(at_end, channel0, agg)
        return torch.stack([channel0, readout], dim=-1)

    @classmethod
    def value_loss(
        cls, logits: torch.Tensor, batch: dict[str, torch.Tensor], loss: str = "prefix", margin: float = 0.0
    ) -> LossSum:
        """The mean of the BCEs of the incoming Q and of the readout V against the target of s_p."""
        if loss not in LOSS_TYPES:
            raise ValueError(f"unknown loss type {loss!r}; choose from {LOSS_TYPES}")
        terms = margin_bce_with_logits(logits, batch["targets"][..., None].expand_as(logits), 0.0).mean(-1)
        return masked_sum(terms, cls.loss_mask(batch, loss))

    def values_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """P̂ [B, Tmax+1]: the readout channel."""
        return torch.sigmoid(logits[..., 1].float())

    def one_pass_candidate_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor, cand: torch.Tensor
    ) -> torch.Tensor:
        """Q(s_p, y) [B, P, K] of candidate ids `cand` [B, P, K] at prefixes p = 0..P−1, from one forward pass."""
        return torch.sigmoid(self._q_logits(self._state(input_ids, attention_mask, prompt_lengths), cand))

    def head_parameters(self) -> list[nn.Parameter]:
        features = self.q_mlp if self.q_mlp is not None else self.q_features
        return [*super().head_parameters(), *features.parameters(), *self.q_token.parameters()]

    def _q_tensors(self) -> dict[str, torch.Tensor]:
        out = {"q_token.weight": self.q_token.weight}
        if self.q_mlp is not None:
            out.update({f"q_mlp.{k}": v for k, v in self.q_mlp.state_dict(keep_vars=True).items()})
        else:
            out["q_features.weight"] = self.q_features.weight
        return out

    def _extra_state_tensors(self) -> dict[str, torch.Tensor]:
        return {**self._head_tensors(), **self._q_tensors()}

    def _load_extra_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = set(self._q_tensors()) - set(tensors)
        if missing:
            raise ValueError(f"Q-head weights missing from checkpoint: {sorted(missing)}")
        super()._load_extra_state_tensors(tensors)
        with torch.no_grad():
            for name, tensor in self._q_tensors().items():
                tensor.copy_(tensors[name])
