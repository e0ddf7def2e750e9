"""Implicit prefix value (IPVRM, Gao et al. 2026; docs/design.md, "Implicit prefix value").

A trainable copy π_φ of the policy (LoRA adapters, or a soft prompt, on the frozen policy) against a
reference π_ref inside the same network, so one model sits in memory: with LoRA, π_ref is the network with
the adapters disabled; with a soft prompt, π_ref is the frozen policy behind the *initial* soft prompt (a
frozen copy kept as the buffer ``ref_prompt``), so that a fresh model has ℓ = 0 and P̂ = 0.5 (the policy
without any prompt is a different distribution: log-ratios up to ~11 at initialisation).

- log-ratio of completion token t (1-indexed): ℓ_t = log π_φ(y_t | s_t) − log π_ref(y_t | s_t)
- V_φ(p) = β Σ_{t ≤ p} ℓ_t;  v̄(p) = V_φ(p) / p
- readout for p = 1..T: P̂(p) = σ(v̄(p)) with the IPVRM prefix loss (``loss=prefix``); σ(V_φ(p)) with the
  Implicit PRM baseline (``loss=sequence``), which is trained on σ(V_φ(T)), so it is read out as trained
- the variant ``readout=sum`` (not the paper's): P̂(p) = σ(logit(base rate) + V_φ(p)), trained with the same
  prefix loss; without the 1/p, a sharp drop at one token is not diluted over the rest of the trace
- at p = 0 (the bare prompt) V_φ = 0 carries no information: P̂(0) is the training base rate.
- the option ``prior_tokens=k`` (not the paper's; 0 is the paper): v̄(p) = (V_φ(p) + k·logit(base rate)) / (p + k),
  k pseudo-tokens of the base rate in the mean. With k = 0 one token's log-ratio times β is the whole value at
  p = 1, so the first tokens swing P̂ to the extremes (0.9+ at a 2% base rate on a real model); k > 0 shrinks
  short prefixes toward the base rate and leaves long ones as they were.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from .base import ValueModel, ValueModelConfig, completion_logits, logit, max_completion_length
from .losses import LOSS_TYPES, LossSum, margin_bce_with_logits, masked_sum


@dataclass
class Counterfactuals:
    """Values of candidate next tokens at every prefix of one completion (T prefixes, k candidates).

    Row p (0..T−1) holds candidates for the token after the prefix with p completion tokens.
    """

    token_ids: np.ndarray  #: [T, k] int64 candidate token ids (top-k under π_ref, or as given)
    ref_logprobs: np.ndarray  #: [T, k] float64 log π_ref(y' | s_p)
    log_ratios: np.ndarray  #: [T, k] float64 log π_φ(y' | s_p) − log π_ref(y' | s_p)
    #: [T, k] float64 P̂(s_p ⊕ y'): σ((V_φ(p) + β·log-ratio) / (p + 1)); loss=sequence: σ(V_φ(p) + β·log-ratio)
    values: np.ndarray


def selected_log_probs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[..., token_ids] in float32, without materialising the full log-softmax.

    `logits` [..., V], `token_ids` [...] → [...]. logsumexp runs in float32 even for bf16 logits.
    """
    picked = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1).float()
    return picked - torch.logsumexp(logits.float(), dim=-1)


class ImplicitValueModel(ValueModel):
    """IPVRM implicit prefix value; ``forward`` returns v̄(p) [B, Tmax+1] (column 0 = logit(base rate));
    with the variant ``readout=sum``, logit(base rate) + V_φ(p) instead.

    The reference π_ref: with LoRA, the same network with the adapters disabled (a fresh LoRA has B = 0,
    so π_φ = π_ref). With a soft prompt on the frozen backbone, π_ref is the frozen policy behind the
    *initial* soft prompt, kept as the frozen buffer ``ref_prompt`` (saved beside the adapter, in
    ``head.safetensors``), so a fresh model also has ℓ = 0 and predicts exactly P̂ = 0.5 at p ≥ 1; only
    what training moves the prompt away from its start counts as value. A checkpoint written before this
    buffer existed has none: its π_ref is the policy without any prompt, as it was trained (a warning says so).

    The readout P̂ follows the loss the model was trained with (``config.loss``): σ(v̄(p)) for the prefix
    loss, σ(V_φ(p)) = σ(p · v̄(p)) for the sequence loss (see `values_from_logits`).
    """

    kind = "implicit"
    position0_note = (
        "implicit model: at position 0 (bare prompt) V_φ = 0 carries no information; P̂ there is the training base rate"
    )
    process_scores = True
    description = "implicit prefix value (IPVRM): P̂ from β-scaled log-ratios of a tuned policy against the policy"
    uses_beta = True
    needs_adapter = True
    counterfactuals = True

    def __init__(
        self, config: ValueModelConfig, backbone: PreTrainedModel, adapter_dir: str | Path | None = None
    ) -> None:
        super().__init__(config, backbone, adapter_dir)
        ref = None
        if config.soft_prompt_tokens and adapter_dir is None:  # fresh: π_ref keeps the initial soft prompt
            ref = self.lm.get_prompt(batch_size=1)[0].detach().clone()
        # restoring a saved model: the initial prompt comes from head.safetensors (_load_extra_state_tensors)
        self.register_buffer("ref_prompt", ref)

    @classmethod
    def check_config(cls, config: ValueModelConfig) -> None:
        if config.error_head:
            raise ValueError("error_head is the explicit head's option (value_model.kind=head)")
        if config.checker:
            raise ValueError(
                "checker feeds a head's features (value_model.kind=head or qhead); the implicit model has none"
            )
        if config.readout == "sum" and config.loss != "prefix":
            raise ValueError("readout=sum is a variant of the prefix loss: use loss=prefix")
        if config.prior_tokens and (config.readout != "mean" or config.loss != "prefix"):
            raise ValueError("prior_tokens shrinks the mean readout of the prefix loss: use readout=mean, loss=prefix")
        if config.backbone == "full":
            raise ValueError(
                "the implicit model needs π_ref inside the same weights: use backbone=lora or a soft prompt"
            )
        if config.backbone == "frozen" and not config.soft_prompt_tokens:
            raise ValueError(
                "an implicit model with a frozen backbone has nothing to train: add soft_prompt_tokens > 0"
            )

    @classmethod
    def loss_mask(cls, batch: dict[str, torch.Tensor], loss: str = "prefix") -> torch.Tensor:
        """The implicit model carries no information at p = 0 (V = 0 at the bare prompt), so its prefix
        loss covers p = 1..T; its sequence loss uses only p = T."""
        mask = batch["target_mask"].clone()
        mask[:, 0] = False
        if loss == "sequence":
            last = torch.zeros_like(mask)
            last[torch.arange(mask.shape[0]), batch["completion_lengths"]] = True
            # the sequence loss is on the outcome itself, whatever soft labels say
            mask = last & (batch["completion_lengths"] > 0)[:, None]
        return mask

    @classmethod
    def value_loss(
        cls, logits: torch.Tensor, batch: dict[str, torch.Tensor], loss: str = "prefix", margin: float = 0.0
    ) -> LossSum:
        """Prefix loss: margin BCE of v̄(p) against ``targets`` at p = 1..T. Sequence loss (the Implicit
        PRM baseline): BCE of σ(V(s_T)) = σ(T · v̄(T)) against the outcome, one term per row."""
        if loss not in LOSS_TYPES:
            raise ValueError(f"unknown loss type {loss!r}; choose from {LOSS_TYPES}")
        mask = cls.loss_mask(batch, loss)
        if loss == "sequence":
            # V(s_p) = p · v̄(p); the mask keeps only p = T of each row
            total_reward = logits * torch.arange(logits.shape[1], device=logits.device, dtype=logits.dtype)[None, :]
            terms = margin_bce_with_logits(total_reward, batch["outcome"][:, None].expand_as(total_reward), 0.0)
        else:
            terms = margin_bce_with_logits(logits, batch["targets"], margin)
        return masked_sum(terms, mask)

    @classmethod
    def card_rows(cls, config: ValueModelConfig) -> list[tuple[str, str]]:
        """The readout and the loss (with its margin)."""
        return [("readout, loss", f"{config.readout}, {config.loss} (margin {config.margin})")]

    @classmethod
    def export_problem(cls, config: ValueModelConfig, num_layers: int | None = None) -> str | None:
        """A LoRA model exports (the tuned policy and the policy); a soft prompt does not."""
        if config.soft_prompt_tokens:
            return "export-model cannot express a soft prompt (virtual tokens before the prompt)"
        return None

    @classmethod
    def export_reads_reference(cls, config: ValueModelConfig) -> bool:
        """Always: the values compare the tuned policy with the policy."""
        return True

    def values_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """P̂ at p ≥ 1 read out as the model was trained: σ(v̄(p)) for ``loss=prefix``, σ(V_φ(p)) =
        σ(p · v̄(p)) for ``loss=sequence`` (the Implicit PRM baseline, trained on σ(V_φ(T))); exactly the
        training base rate at p = 0 (see `position0_note`)."""
        if self.config.loss == "sequence":
            steps = torch.arange(logits.shape[1], device=logits.device, dtype=torch.float32)
            vals = torch.sigmoid(logits.float() * steps[None, :])
        else:
            vals = torch.sigmoid(logits.float()).clone()
        vals[:, 0] = self.config.base_rate
        return vals

    # ----- the reference of a soft-prompt model: the initial soft prompt --------------------------------
    def _extra_state_tensors(self) -> dict[str, torch.Tensor]:
        return {"ref_prompt": self.ref_prompt} if self.ref_prompt is not None else {}

    def _load_extra_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        ref = tensors.pop("ref_prompt", None)
        super()._load_extra_state_tensors(tensors)
        if ref is not None:
            self.ref_prompt = ref.to(self._device())

    def _lm_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, reference: bool = False, **kwargs: Any
    ) -> Any:
        """π_φ, or with `reference` π_ref. With a soft prompt both run the same code, the policy behind a
        prompt: the trained one for π_φ, the initial one (``ref_prompt``) for π_ref; virtual tokens removed."""
        if not self.num_virtual_tokens:
            return super()._lm_forward(input_ids, attention_mask, reference=reference, **kwargs)
        if self.ref_prompt is None:
            if reference:
                warnings.warn(
                    "this soft-prompt checkpoint has no initial prompt (ref_prompt): π_ref is the policy "
                    "without a prompt, as it was trained",
                    stacklevel=3,
                )
                return super()._lm_forward(input_ids, attention_mask, reference=True, **kwargs)
            return super()._lm_forward(input_ids, attention_mask, **kwargs)
        batch = input_ids.shape[0]
        embeds = self.lm.get_input_embeddings()(input_ids)
        if reference:
            prompt = self.ref_prompt[None].expand(batch, -1, -1)
        else:
            prompt = self.lm.get_prompt(batch_size=batch)
        n = self.num_virtual_tokens
        inputs = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
        mask = torch.cat(
            [torch.ones(batch, n, dtype=attention_mask.dtype, device=attention_mask.device), attention_mask], dim=1
        )
        out = self.lm.get_base_model()(inputs_embeds=inputs, attention_mask=mask, use_cache=False, **kwargs)
        out.logits = out.logits[:, n:]
        if getattr(out, "hidden_states", None) is not None:
            out.hidden_states = tuple(h[:, n:] for h in out.hidden_states)
        return out

    def _completion_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_lengths: torch.Tensor,
        tmax: int,
        reference: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits predicting each completion token, [B, Tmax, V], and those tokens' ids [B, Tmax]."""
        out = self._lm_forward(input_ids, attention_mask, reference=reference)
        return completion_logits(out.logits, input_ids, prompt_lengths, tmax)

    def _log_ratios(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-ratios ℓ [B, Tmax] (zero past each row's end) and the completion mask."""
        tmax = max_completion_length(attention_mask, prompt_lengths)
        clens = attention_mask.sum(1) - prompt_lengths
        cmask = torch.arange(tmax, device=input_ids.device)[None, :] < clens[:, None]
        phi_logits, targets = self._completion_logits(input_ids, attention_mask, prompt_lengths, tmax, reference=False)
        logp_phi = selected_log_probs(phi_logits, targets)
        with torch.no_grad():
            ref_logits, _ = self._completion_logits(input_ids, attention_mask, prompt_lengths, tmax, reference=True)
            logp_ref = selected_log_probs(ref_logits, targets)
        ratios = torch.where(cmask, logp_phi - logp_ref, torch.zeros_like(logp_phi))
        return ratios, cmask

    @property
    def forward_passes(self) -> int:
        """Two passes per sequence: the adapted policy's log-probabilities and the reference's (adapters off)."""
        return 2

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Length-normalised implicit value v̄(p) = β Σ_{t≤p} ℓ_t / p for p = 1..Tmax; column 0 holds
        logit(base_rate) (constant, no gradient). Shape [B, Tmax+1], float32."""
        ratios, _ = self._log_ratios(input_ids, attention_mask, prompt_lengths)
        v = self.config.beta * torch.cumsum(ratios, dim=1)  # V_φ(p) for p = 1..Tmax
        offset = logit(self.config.base_rate)
        if self.config.readout == "sum":  # the variant: logit(base rate) + V_φ(p), no 1/p
            z = offset + v
        else:  # the paper's mean; prior_tokens k > 0 adds k pseudo-tokens at logit(base rate)
            k = float(self.config.prior_tokens)
            steps = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
            z = (v + k * offset) / (steps[None, :] + k)
        first = torch.full((v.shape[0], 1), offset, device=v.device, dtype=v.dtype)
        return torch.cat([first, z], dim=1)

    @torch.no_grad()
    def token_log_ratios(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], batch_size: int = 32
    ) -> list[np.ndarray]:
        """log π_φ(y_t|s_t) − log π_ref(y_t|s_t) per completion token: float64 arrays of length T_i.

        A step's process-level score is σ(β · Σ_{t ∈ step} ℓ_t).
        """
        was_training = self.training
        self.eval()
        out: list[np.ndarray] = []
        try:
            for batch in self._batches(prompt_ids, completion_ids, batch_size):
                ratios, _ = self._log_ratios(batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
                r = ratios.double().cpu().numpy()
                for i, t in enumerate(batch["completion_lengths"].tolist()):
                    out.append(r[i, :t].copy())
        finally:
            self.train(was_training)
        return out

    @torch.no_grad()
    def counterfactual_values(
        self,
        prompt_ids: list[list[int]],
        completion_ids: list[list[int]],
        top_k: int = 5,
        candidate_ids: list[int] | None = None,
        batch_size: int = 32,
    ) -> list[Counterfactuals]:
        """Counterfactual value of candidate next tokens at every prefix, from the same forward pass:
        V_φ(s_p ⊕ y') = V_φ(s_p) + β[log π_φ(y'|s_p) − log π_ref(y'|s_p)], P̂ = σ(V_φ / (p + 1)) (with
        ``loss=sequence``, read out as trained: P̂ = σ(V_φ)).

        Candidates are the `top_k` tokens under π_ref at each prefix, or the fixed `candidate_ids`.
        Returns one `Counterfactuals` per row with T_i rows (prefixes p = 0..T_i − 1).
        """
        was_training = self.training
        self.eval()
        results: list[Counterfactuals] = []
        try:
            for batch in self._batches(prompt_ids, completion_ids, batch_size):
                ids = batch["input_ids"]
                fixed = None
                if candidate_ids is not None:
                    tmax = max_completion_length(batch["attention_mask"], batch["prompt_lengths"])
                    fixed = torch.tensor(candidate_ids, device=ids.device).expand(ids.shape[0], tmax, -1)
                cand, ref_c, ratio_c, vals = self._candidates(
                    ids, batch["attention_mask"], batch["prompt_lengths"], fixed, top_k
                )
                for i, t in enumerate(batch["completion_lengths"].tolist()):
                    results.append(
                        Counterfactuals(
                            token_ids=cand[i, :t].cpu().numpy().astype(np.int64),
                            ref_logprobs=ref_c[i, :t].double().cpu().numpy(),
                            log_ratios=ratio_c[i, :t].double().cpu().numpy(),
                            values=vals[i, :t].double().cpu().numpy(),
                        )
                    )
        finally:
            self.train(was_training)
        return results

    def one_pass_candidate_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor, cand: torch.Tensor
    ) -> torch.Tensor:
        """P̂(s_p ⊕ y) [B, P, K] of candidate ids `cand` [B, P, K] (`counterfactual_values`' readout)."""
        return self._candidates(input_ids, attention_mask, prompt_lengths, cand, 0)[3]

    def _candidates(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        plens: torch.Tensor,
        cand: torch.Tensor | None,
        top_k: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(candidates, log π_ref, log-ratios, P̂) [B, P, K] of one right-padded batch: the candidates `cand`
        [B, P, K] at prefixes 0..P−1 (P <= Tmax), or the `top_k` of π_ref at every prefix when None."""
        beta = self.config.beta
        tmax = max_completion_length(mask, plens)
        phi_logits, targets = self._completion_logits(ids, mask, plens, tmax, reference=False)
        ref_logits, _ = self._completion_logits(ids, mask, plens, tmax, reference=True)
        logp_phi = torch.log_softmax(phi_logits.float(), dim=-1)
        logp_ref = torch.log_softmax(ref_logits.float(), dim=-1)
        taken = (logp_phi.gather(-1, targets[..., None]) - logp_ref.gather(-1, targets[..., None])).squeeze(-1)
        clens = mask.sum(1) - plens
        cmask = torch.arange(tmax, device=ids.device)[None, :] < clens[:, None]
        taken = torch.where(cmask, taken, torch.zeros_like(taken))
        # V_φ(p) for p = 0..Tmax-1 (value of the prefix before the candidate)
        v_prefix = beta * torch.cumsum(taken, dim=1) - beta * taken
        if cand is None:
            cand = logp_ref.topk(min(top_k, logp_ref.shape[-1]), dim=-1).indices
        p = cand.shape[1]
        logp_phi, logp_ref, v_prefix = logp_phi[:, :p], logp_ref[:, :p], v_prefix[:, :p]
        ref_c = logp_ref.gather(-1, cand)
        ratio_c = logp_phi.gather(-1, cand) - ref_c
        if self.config.loss == "sequence":  # read out as trained: σ(V_φ)
            vals = torch.sigmoid(v_prefix[..., None] + beta * ratio_c)
        elif self.config.readout == "sum":
            vals = torch.sigmoid(logit(self.config.base_rate) + v_prefix[..., None] + beta * ratio_c)
        else:
            k = float(self.config.prior_tokens)
            steps = torch.arange(1, p + 1, device=ids.device, dtype=ratio_c.dtype)[None, :, None]
            prior = k * logit(self.config.base_rate)
            vals = torch.sigmoid((v_prefix[..., None] + beta * ratio_c + prior) / (steps + k))
        return cand, ref_c, ratio_c, vals
