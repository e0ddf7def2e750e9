"""Explicit value head (docs/design.md, "Explicit value head").

P̂(s_p) = σ(w·h_p + b), where h_p is the backbone's hidden state (the last layer's, or layer
``head_layer``) at the last token of the prefix (the last prompt token for p = 0). The backbone is frozen,
LoRA-adapted or fully trained; an optional soft prompt (peft prompt tuning) on a frozen backbone. Trained
with BCE against outcomes or soft labels.

With ``policy_features`` the head also reads three numbers per prefix from the *reference* policy (the
frozen policy the value model started from): the sum, the minimum and the last of log π_ref(y_t | s_t)
over the written tokens t ≤ p (all 0 at p = 0), P̂ = σ(w·h_p + b + u·f_p). A policy that wrote a token it
found unlikely has often just made a mistake; the fine-tuned hidden states alone find that hard to see. The
reference is the backbone itself when frozen, the backbone with its adapters disabled under LoRA or a soft
prompt, and a frozen copy of the starting policy when the backbone is fully trained.

With ``feature_head=mlp`` the features enter through a small MLP instead of u·f: P̂ = σ(z + MLP(z, g(f_p))),
z = w·h_p + b, over fixed normalised features g (`normalised_policy_features`: signed logs of the sum, the mean, the
minimum and the last log-probability, and log(1 + p)); its output layer starts at zero, so a new model starts at the
base rate as the linear one does. With ``head_layers`` the head reads the hidden states of several layers,
concatenated (w then has one block per layer).

With ``error_head`` a second linear head on the same state (and, with ``policy_features``, on the normalised
features) predicts e(s_p) = P(a wrong step has been written by p), trained by BCE on the training traces' exact step
labels beside the value's loss; the value is then P̂ = σ(z)·(1 − e), so a detected error pulls the value to 0 whatever
the value head says ("Error head" in docs/design.md).

With ``checker`` (and ``policy_features``) a second, frozen causal LM with the policy's tokenizer adds the same three
numbers of its own log-probabilities of the written tokens: a model trained further on correct solutions is surer
than the policy of what a step's result should be, so it flags a wrong step the policy wrote with confidence
("Checker features" in docs/design.md).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ..policies import load_causal_lm
from .base import (
    ValueModel,
    ValueModelConfig,
    _zero_dropout,
    completion_logits,
    logit,
    max_completion_length,
    prefix_indices,
)
from .implicit import selected_log_probs

#: policy features per prefix: running sum, running minimum and last log π_ref of the written tokens
NUM_POLICY_FEATURES = 3
#: floor of a log-probability feature (a token of probability ~1e-13 is already "impossible")
LOGPROB_FLOOR = -30.0


def num_normalised_features(sources: int) -> int:
    """Normalised features (`normalised_policy_features`, what the feature MLP reads beside z) of `sources` models'
    log-probabilities (the policy, and a checker): 4 each, and log(1 + p); 5 for the policy alone."""
    return 4 * sources + 1


#: hidden units of the feature MLP (``feature_head=mlp``)
FEATURE_MLP_HIDDEN = 32
#: the error head's starting probability of "a wrong step has been written": near 0, so a new model's P̂ starts at
#: the base rate as without the error head
ERROR_PRIOR = 0.01


def written_logprob_features(lp: torch.Tensor, clens: torch.Tensor) -> torch.Tensor:
    """The policy features [B, T+1, 3] float32 from log π_ref of the written tokens `lp` [B, T] and the completion
    lengths `clens` [B]: the sum, the minimum and the last of log π_ref(y_t | s_t) over t ≤ p, each floored at
    `LOGPROB_FLOOR` (0 at p = 0 and past a row's end)."""
    b, tmax = lp.shape
    zero = torch.zeros(b, 1, device=lp.device)
    if tmax == 0:
        return torch.zeros(b, 1, NUM_POLICY_FEATURES, device=lp.device)
    written = torch.arange(tmax, device=lp.device)[None, :] < clens[:, None]
    lp = torch.where(written, lp.clamp_min(LOGPROB_FLOOR), torch.zeros_like(lp))
    total = torch.cat([zero, lp.cumsum(1)], dim=1)
    low = torch.cat([zero, torch.cummin(lp, dim=1).values], dim=1)
    last = torch.cat([zero, lp], dim=1)
    return torch.stack([total, low, last], dim=-1).float()


def error_adjusted_logits(z: torch.Tensor, error_logits: torch.Tensor) -> torch.Tensor:
    """logit(σ(z)·(1 − σ(e))) of value logits `z` and error logits `e`, computed in log space (float32): the value
    after the error head's probability that a wrong step has already been written."""
    log_p = (F.logsigmoid(z.float()) + F.logsigmoid(-error_logits.float())).clamp(max=-1e-7)
    return log_p - torch.log(-torch.expm1(log_p))


def normalised_policy_features(feats: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
    """[B, P, 5] float32 inputs of the feature MLP from the raw policy features `feats` [B, P, 3] (sum, minimum and
    last log π_ref at prefixes p = 0..P−1): sign(x)·log(1 + |x|) of the sum, of the mean (the sum over the p written
    tokens), of the minimum and of the last, and log(1 + p). Fixed transforms (nothing fitted): the mean, minimum
    and last lie in [−3.5, 0] (the floor −30), the sum's log grows slowly with the prefix (−7.6 at 64 tokens of −30).
    With a checker `feats` is [B, P, 6] (the policy's three, then the checker's) and the result [B, P, 9]: the four
    transforms of each model, then log(1 + p). `count`: the written tokens p of each row of `feats` (broadcast to
    ``feats.shape[:-1]``; the Q-head's candidates, [..., K] rows of s_p ⊕ y, have p + 1); default the P axis, 0..P−1."""
    if count is None:
        count = torch.arange(feats.shape[1], device=feats.device, dtype=feats.dtype)[None, :]
    count = count.to(feats.dtype).expand(feats.shape[:-1])
    groups = []
    for g in range(feats.shape[-1] // NUM_POLICY_FEATURES):
        total, low, last = (feats[..., NUM_POLICY_FEATURES * g + i] for i in range(NUM_POLICY_FEATURES))
        groups.append(torch.stack([total, total / count.clamp_min(1.0), low, last], dim=-1))
    raw = torch.cat(groups, dim=-1)
    return torch.cat([raw.sign() * torch.log1p(raw.abs()), torch.log1p(count)[..., None]], dim=-1)


class HeadValueModel(ValueModel):
    """Linear value head on the hidden states; ``forward`` returns logits z(p) [B, Tmax+1]."""

    kind = "head"
    description = "explicit value head: P̂ = σ(w·h + b) on the policy's hidden state at the prefix's last token"

    @classmethod
    def check_config(cls, config: ValueModelConfig) -> None:
        if config.loss != "prefix":
            raise ValueError("the sequence-level loss is an implicit-model baseline; the head uses loss=prefix")
        if config.prior_tokens:
            raise ValueError("prior_tokens shrinks the implicit model's mean readout; the head has no such readout")
        if config.checker and not cls.reads_reference(config):
            raise ValueError(
                "checker adds its log-probabilities to the head's policy features: set policy_features=true"
            )

    @classmethod
    def card_rows(cls, config: ValueModelConfig) -> list[tuple[str, str]]:
        """The policy features, when the head reads them, how they enter, and the layers read when several."""
        rows = []
        if config.policy_features:
            rows.append(("policy features", "log π_ref sum, minimum and last of the written tokens"))
            if config.checker:
                rows.append(("checker", f"{config.checker}: its log-probability sum, minimum and last beside π_ref's"))
            if config.feature_head == "mlp":
                how = f"an MLP ({FEATURE_MLP_HIDDEN} hidden units) over w·h + b and the normalised features"
                rows.append(("feature head", how))
        if config.head_layers:
            rows.append(("head layers", ", ".join(str(i) for i in config.head_layers) + " (concatenated)"))
        if config.error_head:
            reads = "the same state and the normalised policy features" if config.policy_features else "the same state"
            rows.append(("error head", f"P(a wrong step written) from {reads}, on exact step labels; P̂ = σ(z)·(1 − e)"))
        return rows

    @classmethod
    def export_problem(cls, config: ValueModelConfig, num_layers: int | None = None) -> str | None:
        """A token classifier expresses any head but one behind a soft prompt (virtual tokens before the prompt)."""
        if config.soft_prompt_tokens:
            return "export-model cannot express a soft prompt (virtual tokens before the prompt)"
        if config.error_head:
            return "export-model does not carry the error head yet: load the checkpoint with load_value_model"
        if config.checker:
            return "export-model does not carry the checker model: load the checkpoint with load_value_model"
        return None

    @classmethod
    def standard_export(cls, config: ValueModelConfig, num_layers: int | None = None) -> bool:
        """A head on the last hidden layer alone (``head_layer`` -1, or `num_layers`) without policy features."""
        one = config.head_layer in (-1, num_layers) and not config.head_layers
        return one and not config.policy_features and not config.soft_prompt_tokens and not config.error_head

    def __init__(
        self,
        config: ValueModelConfig,
        backbone: PreTrainedModel,
        adapter_dir: str | Path | None = None,
        reference: PreTrainedModel | None = None,
        checker: PreTrainedModel | None = None,
    ) -> None:
        """`reference`: the starting policy, needed with ``policy_features`` and a fully trained backbone (by
        default a frozen copy of `backbone` as given, which must then be the untrained policy). `checker`: the
        ``checker`` model, already loaded (by default loaded from ``config.checker`` in the backbone's dtype)."""
        hidden = backbone.get_input_embeddings().embedding_dim
        if config.checker and checker is None:
            checker = load_causal_lm(config.checker, next(backbone.parameters()).dtype)
        if checker is not None:
            if not config.checker:
                raise ValueError("a checker model was given but config.checker names none")
            theirs, ours = (m.get_output_embeddings().weight.shape[0] for m in (checker, backbone))
            if theirs != ours:
                raise ValueError(
                    f"the checker {config.checker} has {theirs} output tokens and the policy {ours}: a checker must "
                    "share the policy's tokenizer"
                )
        if self.reads_reference(config) and config.backbone == "full" and reference is None:
            reference = copy.deepcopy(backbone)
        layers = getattr(backbone.config, "num_hidden_layers", None)
        for layer in config.head_layers or [config.head_layer]:
            if layers is not None and not -(layers + 1) <= layer <= layers:
                name = f"head_layers: layer {layer}" if config.head_layers else f"head_layer={layer}"
                raise ValueError(f"{name} is outside the backbone's {layers} layers (0..{layers}, or -1)")
        super().__init__(config, backbone, adapter_dir)
        # float32 head whatever the backbone dtype: it is tiny and its logits feed the loss directly
        self.head = nn.Linear(hidden * len(config.head_layers or [None]), 1, dtype=torch.float32)
        with torch.no_grad():
            # start at the constant base-rate predictor: w = 0, b = logit(base rate)
            self.head.weight.zero_()
            self.head.bias.fill_(logit(config.base_rate))
        self.feature_head = None
        self.feature_mlp = None
        self.ref_lm = None
        sources = 1 + bool(config.checker)  # models whose log-probabilities are features: the policy, the checker
        normalised = num_normalised_features(sources)
        if config.policy_features and config.feature_head == "mlp":
            self.feature_mlp = nn.Sequential(
                nn.Linear(1 + normalised, FEATURE_MLP_HIDDEN, dtype=torch.float32),
                nn.ReLU(),
                nn.Linear(FEATURE_MLP_HIDDEN, 1, dtype=torch.float32),
            )
            with torch.no_grad():  # the output layer at zero: a new model is the base-rate constant
                self.feature_mlp[2].weight.zero_()
                self.feature_mlp[2].bias.zero_()
        elif config.policy_features:
            self.feature_head = nn.Linear(NUM_POLICY_FEATURES * sources, 1, bias=False, dtype=torch.float32)
            nn.init.zeros_(self.feature_head.weight)
        self.error_head = None
        self.error_features = None
        if config.error_head:
            self.error_head = nn.Linear(self.head.in_features, 1, dtype=torch.float32)
            with torch.no_grad():
                self.error_head.weight.zero_()
                self.error_head.bias.fill_(logit(ERROR_PRIOR))
            if config.policy_features:
                self.error_features = nn.Linear(normalised, 1, bias=False, dtype=torch.float32)
                nn.init.zeros_(self.error_features.weight)
        if self.reads_reference(config) and config.backbone == "full":
            self.ref_lm = reference.eval()
            for p in self.ref_lm.parameters():
                p.requires_grad_(False)
        self.checker_lm = None
        if checker is not None:  # frozen, no dropout: train() mode must not change its log-probabilities
            _zero_dropout(checker)
            self.checker_lm = checker.eval()
            for p in self.checker_lm.parameters():
                p.requires_grad_(False)

    @classmethod
    def reads_reference(cls, config: ValueModelConfig) -> bool:
        """With policy features the head reads the reference policy (a frozen copy when the backbone trains fully)."""
        return config.policy_features

    @property
    def _backbone_trains(self) -> bool:
        return self.config.backbone != "frozen" or self.config.soft_prompt_tokens > 0

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_lengths: torch.Tensor,
        error_logits: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Head logits at positions 0..Tmax, [B, Tmax+1], float32 (with ``error_head``: of σ(z)·(1 − e)); with
        `error_logits` (an ``error_head`` model) also the error head's logits [B, Tmax+1] from the same pass."""
        tmax = max_completion_length(attention_mask, prompt_lengths)
        same_forward = self.config.policy_features and not self._backbone_trains  # frozen: its logits are π_ref's
        # a frozen backbone without a soft prompt needs no graph: run it without autograd
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._backbone_trains):
            # logits_to_keep=1: the LM head is not needed, skip projecting every position to the vocabulary
            out = self._lm_forward(
                input_ids, attention_mask, output_hidden_states=True, **({} if same_forward else {"logits_to_keep": 1})
            )
            hidden = self._head_hidden(out.hidden_states)
        idx = prefix_indices(prompt_lengths, tmax + 1, input_ids.shape[1])
        h = hidden.gather(1, idx[..., None].expand(-1, -1, hidden.shape[-1])).float()
        z = self.head(h).squeeze(-1)
        normalised = None
        if self.config.policy_features:
            feats = self.policy_features(
                input_ids, attention_mask, prompt_lengths, out.logits if same_forward else None
            )
            if self.feature_mlp is not None or self.error_features is not None:
                normalised = normalised_policy_features(feats)
            if self.feature_mlp is not None:
                z = z + self.feature_mlp(torch.cat([z[..., None], normalised], dim=-1)).squeeze(-1)
            else:
                z = z + self.feature_head(feats).squeeze(-1)
        if self.error_head is None:
            if error_logits:
                raise ValueError("error_logits=True needs a model with value_model.error_head=true")
            return z
        e = self.error_head(h).squeeze(-1)
        if self.error_features is not None:
            e = e + self.error_features(normalised).squeeze(-1)
        z = error_adjusted_logits(z, e)
        return (z, e) if error_logits else z

    def _head_hidden(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The hidden states the head reads, [B, L, H · layers]: layer ``head_layer``, or the ``head_layers``
        concatenated in their order."""
        if not self.config.head_layers:
            return hidden_states[self.config.head_layer]
        return torch.cat([hidden_states[i] for i in self.config.head_layers], dim=-1)

    @torch.no_grad()
    def policy_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_lengths: torch.Tensor,
        ref_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, Tmax+1, 3] float32: sum, minimum and last of log π_ref(y_t | s_t) over written tokens t ≤ p
        (0 at p = 0 and past a row's end), each floored at `LOGPROB_FLOOR`; with a checker [B, Tmax+1, 6], the
        checker's three after π_ref's."""
        tmax = max_completion_length(attention_mask, prompt_lengths)
        width = NUM_POLICY_FEATURES * (1 + (self.checker_lm is not None))
        if tmax == 0:
            return torch.zeros(input_ids.shape[0], 1, width, device=input_ids.device)
        if ref_logits is None:
            ref_logits = self.reference_logits(input_ids, attention_mask)
        clens = attention_mask.sum(1) - prompt_lengths
        sources = [ref_logits]
        if self.checker_lm is not None:
            sources.append(self.checker_lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits)
        feats = []
        for logits in sources:
            sel, tokens = completion_logits(logits, input_ids, prompt_lengths, tmax)
            feats.append(written_logprob_features(selected_log_probs(sel, tokens), clens))
        return torch.cat(feats, dim=-1)

    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """π_ref's logits: the frozen copy of the starting policy when the backbone trains fully, else the base's
        rule (the frozen backbone itself; LoRA or a soft prompt: the backbone with them disabled)."""
        if self.ref_lm is not None:
            return self.ref_lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return super().reference_logits(input_ids, attention_mask)

    def head_parameters(self) -> list[nn.Parameter]:
        extra = [
            m for m in (self.feature_head, self.feature_mlp, self.error_head, self.error_features) if m is not None
        ]
        return [*self.head.parameters(), *(p for m in extra for p in m.parameters())]

    def _head_tensors(self) -> dict[str, torch.Tensor]:
        out = {"head.weight": self.head.weight, "head.bias": self.head.bias}
        if self.feature_head is not None:
            out["feature_head.weight"] = self.feature_head.weight
        if self.feature_mlp is not None:
            out.update({f"feature_mlp.{k}": v for k, v in self.feature_mlp.state_dict(keep_vars=True).items()})
        if self.error_head is not None:
            out.update({"error_head.weight": self.error_head.weight, "error_head.bias": self.error_head.bias})
        if self.error_features is not None:
            out["error_features.weight"] = self.error_features.weight
        return out

    def _extra_state_tensors(self) -> dict[str, torch.Tensor]:
        return self._head_tensors()

    def _load_extra_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = set(self._head_tensors()) - set(tensors)
        if missing:
            raise ValueError(f"head weights missing from checkpoint: {sorted(missing)}")
        with torch.no_grad():
            for name, tensor in self._head_tensors().items():
                tensor.copy_(tensors[name])
