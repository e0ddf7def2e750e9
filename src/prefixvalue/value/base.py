"""What every value model shares: its config (`prefixvalue.value.checkpoint`), how the backbone is adapted
(LoRA, soft prompt, frozen, full), batched prediction, and saving to / loading from one folder (safetensors
only, never pickle).

Prefix position convention: p = number of completion tokens in the prefix, 0..T; p = 0 is the bare
prompt. A value model maps a right-padded batch of prompt ⊕ completion tokens to a predicted success
probability P̂ at every position p in one forward pass.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, overload

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from .. import __version__, runfolder
from ..config import ConfigError
from ..data.collate import collated_batches
from ..data.steps import StepExample, prefix_step_scores, process_step_scores, td_errors, tokenize_step_example
from ..loading import LoadOptions
from ..policies import load_causal_lm, load_tokenizer, resolve_dtype
from ..prompting import (
    PROMPT_FORMAT_FILE,
    STEP_FORMAT_FILE,
    PromptFormat,
    StepFormat,
    checkpoint_prompt_format,
    checkpoint_step_format,
)
from .card import write_model_card
from .checkpoint import (
    ADAPTER_DIR,
    ADAPTER_FILES,
    BACKBONE_DIR,
    CHECKPOINT_RECORDS,
    CONFIG_NAME,
    HEAD_WEIGHTS,
    VALUE_MODELS,
    ValueModelConfig,
    check_adapter,
    check_backbone,
    load_weights,
    read_value_config,
)
from .hub import find_base_model, find_checker, portable_base_model, push_model_to_hub, resolve_checkpoint
from .losses import LOSS_TYPES, LossSum, margin_bce_with_logits, masked_sum
from .rewards import make_reward_func


def value_model_class(kind: str) -> type[ValueModel]:
    """The class of value-model `kind`; ValueError naming the known kinds otherwise."""
    if kind not in VALUE_MODELS:
        raise ValueError(f"unknown value model {kind!r}; choose from {sorted(VALUE_MODELS)}")
    return VALUE_MODELS[kind]


def _zero_dropout(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def prefix_indices(prompt_lengths: torch.Tensor, num_positions: int, seq_len: int) -> torch.Tensor:
    """Sequence index of the last token of each prefix: [B, num_positions], p ↦ prompt_len − 1 + p.

    Indices past the row's end are clamped to the last column (their values are masked later).
    """
    p = torch.arange(num_positions, device=prompt_lengths.device)
    return (prompt_lengths[:, None] - 1 + p[None, :]).clamp(0, seq_len - 1)


def completion_logits(
    logits: torch.Tensor, input_ids: torch.Tensor, prompt_lengths: torch.Tensor, tmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits predicting each completion token, [B, Tmax, V], and those tokens' ids [B, Tmax], from an
    LM's logits over a right-padded batch (the logits at prompt_len − 1 + p predict completion token p + 1)."""
    seq_len = input_ids.shape[1]
    pos = prefix_indices(prompt_lengths, tmax, seq_len)
    targets = input_ids.gather(1, (pos + 1).clamp(max=seq_len - 1))
    return logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1])), targets


def max_completion_length(attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> int:
    """Longest completion in a right-padded batch (tokens)."""
    return int((attention_mask.sum(1) - prompt_lengths).max().item())


class ValueScoringAPI:
    """The text-level API every value model shares, written over ``predict`` (and, for candidate values,
    ``token_candidate_values`` and ``reference_logits``): a checkpoint (`ValueModel`) and an ensemble of them
    (`prefixvalue.value.ensemble.ValueEnsemble`) both provide it. The class using it sets ``prompt_format``,
    ``step_format``, ``source``, ``config``, ``process_scores`` and ``counterfactuals``."""

    # ----- the Python API: text in, values out -----------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The policy's tokenizer: the checkpoint's copy when it has one, else the base model's (loaded on
        first use; set it to use another)."""
        if self._tokenizer is None:
            src = self.source
            if src is not None and (src / "tokenizer_config.json").is_file():
                trust = LoadOptions(trust_remote_code=self._load_options.trust_remote_code)
                self._tokenizer = load_tokenizer(str(src), trust)
            elif self.config.base_model:
                self._tokenizer = load_tokenizer(self.config.base_model, self._load_options)
            else:
                raise ValueError("this value model has no tokenizer: set model.tokenizer = ...")
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def encode(self, prompt: str, completion: str) -> tuple[list[int], list[int]]:
        """Token ids of `prompt` (through `prompt_format`, as collect writes a trace's prompt) and of
        `completion` (as written: no special tokens added, so no end-of-sequence token)."""
        tok = self.tokenizer
        return self.prompt_format.encode(tok, prompt), list(tok(completion, add_special_tokens=False)["input_ids"])

    @overload
    def score(self, prompt: str, completion: str, batch_size: int = 32) -> np.ndarray: ...

    @overload
    def score(self, prompt: Sequence[str], completion: Sequence[str], batch_size: int = 32) -> list[np.ndarray]: ...

    def score(
        self, prompt: str | Sequence[str], completion: str | Sequence[str], batch_size: int = 32
    ) -> np.ndarray | list[np.ndarray]:
        """P̂ at every prefix of `completion` after `prompt`: float64 [T + 1], entry p after the first p
        completion tokens (p = 0: the bare prompt), T = number of completion tokens (`encode`). Given lists of
        prompts and completions (one prompt per completion), a list of those arrays, scored `batch_size`
        sequences at a time (padded per batch: each equals its own `score`). ValueError when one is a list
        and the other is not, or the lengths differ."""
        if isinstance(prompt, str) and isinstance(completion, str):
            prompt_ids, completion_ids = self.encode(prompt, completion)
            return self.predict([prompt_ids], [completion_ids])[0]
        if isinstance(prompt, str) or isinstance(completion, str):
            raise ValueError(
                "score: give one prompt and one completion (text), or a list of each of equal length; got "
                f"{type(prompt).__name__} and {type(completion).__name__}"
            )
        prompts, completions = list(prompt), list(completion)
        if len(prompts) != len(completions):
            raise ValueError(f"score: {len(prompts)} prompt(s) for {len(completions)} completion(s); give one each")
        if not all(isinstance(t, str) for t in prompts + completions):
            raise ValueError("score: every prompt and completion must be text")
        encoded = [self.encode(p, c) for p, c in zip(prompts, completions)]
        return self.predict([e[0] for e in encoded], [e[1] for e in encoded], batch_size=batch_size)

    def steps_format(self) -> StepFormat:
        """How this checkpoint's training traces wrote their steps (`step_format`, train records it): the
        defaults of `score_steps`, `reward_func` and ``prefixvalue serve``. A checkpoint trained before it was
        recorded gets the old defaults (``"{prompt}\\n"``, ``"\\n"``) and one warning saying so
        (docs/design.md, "Checkpoints that travel")."""
        if self.step_format is not None:
            return self.step_format
        if self.source is not None and not self._warned_step_format:
            self._warned_step_format = True
            warnings.warn(
                f"{self.source} records no step format ({STEP_FORMAT_FILE}; trained before it was recorded): "
                "steps are written with prompt_template '{prompt}\\n', joined and ended by '\\n'; pass "
                "prompt_template / step_separator when the traces wrote steps otherwise (arith: '{prompt}', '' "
                "and ';')",
                stacklevel=3,
            )
        return StepFormat()

    def score_steps(
        self, prompt: str, steps: list[str], prompt_template: str | None = None, step_separator: str | None = None
    ) -> StepScores:
        """Scores of each step of a solution, tokenised as evaluate scores step data
        (`prefixvalue.data.steps.tokenize_step_example`: the prompt written with `prompt_template` through
        `prompt_format`, the steps joined by `step_separator`). Both default to the checkpoint's own
        (`steps_format`: as its training traces wrote them, arith ``"{prompt}"`` and ``""`` since its steps
        carry their ``;``), so a trace's steps score exactly as `predict` scores the trace's tokens."""
        if prompt_template is None or step_separator is None:
            fmt = self.steps_format()
            prompt_template = fmt.prompt_template if prompt_template is None else prompt_template
            step_separator = fmt.step_separator if step_separator is None else step_separator
        example = StepExample("0", prompt, list(steps), -1, "", {})
        prompt_ids, completion_ids, spans = tokenize_step_example(
            self.tokenizer, example, prompt_template, step_separator, self.prompt_format
        )
        values = self.predict([prompt_ids], [completion_ids])[0]
        td = td_errors(values)
        process = None
        if self.process_scores:
            ratios = self.token_log_ratios([prompt_ids], [completion_ids])[0]  # type: ignore[attr-defined]
            process = process_step_scores(ratios, spans, float(self.config.beta))
        return StepScores(
            values=prefix_step_scores(values, spans),
            td=np.array([td[s0:s1].sum() for s0, s1 in spans], dtype=np.float64),
            process=process,
            token_values=values,
            step_spans=[(int(a), int(b)) for a, b in spans],
        )

    def reward_func(
        self, score: str = "final", step_separator: str | None = None, batch_size: int = 32, name: str | None = None
    ) -> Callable[..., list[float]]:
        """A reward function for RL trainers with TRL's GRPO signature, ``reward(prompts, completions, **kwargs)
        -> list[float]`` (`prefixvalue.value.rewards`; docs/design.md, "Reward interfaces")::

            GRPOTrainer(model=policy, reward_funcs=[value_model.reward_func()], ...)

        Prompts and completions are strings, or TRL's conversational form (lists of ``{"role", "content"}``
        messages: the prompt's last ``user`` content, the completion's last message content). Each pair is
        encoded as `encode` does (the prompt through this checkpoint's prompt format) and the whole call is
        scored by `predict`, `batch_size` sequences at a time. Other keyword arguments (TRL's
        ``completion_ids``, ``trainer_state``, dataset columns) are ignored.

        `score`, in probability units: ``"final"``, P̂ at the end of the completion; ``"min_step"``, the smallest
        P̂ right after a step; ``"td_sum"``, the sum of the steps' TD scores P̂(after) − P̂(before), that is
        P̂(end) − P̂(prompt). Steps end after each `step_separator` (default the checkpoint's step end,
        `steps_format`: ``";"`` for arith, whose steps end with one; a newline for line steps; ``""``: the whole
        completion is one step). The function's
        ``__name__`` (TRL logs rewards under it) is `name`, default ``prefixvalue_<score>``. ValueError for an
        unknown score."""
        return make_reward_func(self, score=score, step_separator=step_separator, batch_size=batch_size, name=name)

    def candidate_values(self, prompt: str, prefix: str = "", k: int = 5) -> CandidateValues:
        """Values of the policy's `k` most likely next tokens after `prompt` ⊕ `prefix` (`encode`): P̂(s ⊕ y'),
        the prefix's own P̂(s) and the TD advantages P̂(s ⊕ y') − P̂(s), with the policy's log-probabilities.

        One forward pass for kinds with ``counterfactuals`` (implicit, qhead), one sequence per candidate
        otherwise (``sequences`` says how many the model ran)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        was_training = self.training
        self.eval()
        try:
            prompt_ids, comp = self.encode(prompt, prefix)
            ids = torch.tensor([prompt_ids + comp], device=self._device())
            logp = torch.log_softmax(self.reference_logits(ids, torch.ones_like(ids))[0, -1].float(), dim=-1)
            top_lp, top = logp.topk(min(k, logp.shape[-1]))
            top_ids = top.cpu().numpy().astype(np.int64)
            # a placeholder token after the prefix: candidates replace completion token T + 1, and P̂(s) is read at T
            # as at any prefix that goes on (a Q-head reads the last position of a sequence as a finished one)
            padded = comp + [int(top_ids[0])]
            at_end = np.full(len(top_ids), len(comp))
            values = self.token_candidate_values([prompt_ids], [padded], [at_end], [top_ids])[0]
            prefix_value = float(self.predict([prompt_ids], [padded])[0][len(comp)])
        finally:
            self.train(was_training)
        return CandidateValues(
            token_ids=top_ids,
            tokens=[self.tokenizer.decode([int(t)]) for t in top_ids],
            logprobs=top_lp.double().cpu().numpy(),
            values=values,
            prefix_value=prefix_value,
            sequences=1 if self.counterfactuals else len(top_ids),
        )


class ValueModel(ValueScoringAPI, nn.Module):
    """Base class: wraps a causal LM (adapted per `config`) and predicts P̂(s_p) for p = 0..T.

    Subclasses implement ``forward(input_ids, attention_mask, prompt_lengths) -> logits [B, Tmax+1]``
    (pre-sigmoid scores, what the loss consumes) and may override `prefix_values`.
    """

    kind: ClassVar[str] = ""
    #: what an output should say about P̂ at position 0 (the bare prompt), or None when nothing
    position0_note: ClassVar[str | None] = None
    #: whether the model scores steps at the process level (it has ``token_log_ratios``)
    process_scores: ClassVar[bool] = False
    #: the kind in one line (the model card's "kind" row)
    description: ClassVar[str] = ""
    #: whether ``config.beta`` enters the values (the model card shows β, else "n/a")
    uses_beta: ClassVar[bool] = False
    #: whether P̂ comes from the backbone's adaptation alone (LoRA or a soft prompt): on a frozen backbone
    #: without a soft prompt such a model has nothing to train
    needs_adapter: ClassVar[bool] = False
    #: whether the model values candidate next tokens in one forward pass (``counterfactual_values``)
    counterfactuals: ClassVar[bool] = False
    #: whether training reads candidate labels (docs/design.md, "Candidate labels"): ``forward`` then takes
    #: ``candidate_ids`` [B, P, K] and returns (its logits, the candidates' logits [B, P, K]) from one pass
    candidate_training: ClassVar[bool] = False

    def __init__(
        self, config: ValueModelConfig, backbone: PreTrainedModel, adapter_dir: str | Path | None = None
    ) -> None:
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs config.kind={self.kind!r}, got {config.kind!r}")
        self.check_config(config)
        self.config = config
        if config.disable_dropout:
            _zero_dropout(backbone)
        self.num_virtual_tokens = config.soft_prompt_tokens
        self.lm: nn.Module = self._adapt(backbone, adapter_dir)
        #: how prompt text becomes token ids for this model (the checkpoint's prompt_format.json when loaded)
        self.prompt_format: PromptFormat = PromptFormat()
        #: how the training traces wrote their steps (the checkpoint's step_format.json; None when it has none)
        self.step_format: StepFormat | None = None
        self._warned_step_format = False
        #: the checkpoint folder this model was loaded from (None when built in memory)
        self.source: Path | None = None
        self._tokenizer: Any = None
        self._load_options = LoadOptions()

    # ----- what differs between kinds ------------------------------------------------------------
    @classmethod
    def check_config(cls, config: ValueModelConfig) -> None:
        """Raise ValueError when `config` breaks a rule of this kind (the shared rules are the config's)."""

    @classmethod
    def reads_reference(cls, config: ValueModelConfig) -> bool:
        """Whether a model of `config` reads the reference policy beside its backbone (then a fully trained
        backbone needs a frozen copy of the starting policy, loaded from ``base_model``)."""
        return False

    @classmethod
    def loss_mask(cls, batch: dict[str, torch.Tensor], loss: str = "prefix") -> torch.Tensor:
        """Bool mask [B, Tmax+1] of the positions this kind trains on (default: every target position)."""
        return batch["target_mask"].clone()

    @classmethod
    def value_loss(
        cls, logits: torch.Tensor, batch: dict[str, torch.Tensor], loss: str = "prefix", margin: float = 0.0
    ) -> LossSum:
        """Summed loss of one micro-batch and its number of terms (see `prefixvalue.value.losses`).

        `logits` are ``forward``'s output [B, Tmax+1]; default: BCE (no margin) against ``targets``
        at every `loss_mask` position.
        """
        if loss not in LOSS_TYPES:
            raise ValueError(f"unknown loss type {loss!r}; choose from {LOSS_TYPES}")
        return masked_sum(margin_bce_with_logits(logits, batch["targets"], 0.0), cls.loss_mask(batch, loss))

    def values_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """P̂ [B, Tmax+1] from ``forward``'s logits (default: σ(logits), in float32 or wider)."""
        return torch.sigmoid(logits.float())

    @classmethod
    def card_rows(cls, config: ValueModelConfig) -> list[tuple[str, str]]:
        """Rows (name, value) of the model card's table about this kind's own options (default: none)."""
        return []

    @classmethod
    def export_problem(cls, config: ValueModelConfig, num_layers: int | None = None) -> str | None:
        """Why ``prefixvalue export-model`` cannot write a model of `config` as a token classifier
        (`num_layers`: the backbone's hidden layers, when known), in one line; None when it can. Default: it
        cannot (docs/design.md, "Checkpoints that travel")."""
        return f"export-model cannot express a {config.kind!r} model"

    @classmethod
    def standard_export(cls, config: ValueModelConfig, num_layers: int | None = None) -> bool:
        """Whether the export is a standard ``AutoModelForTokenClassification`` (a linear layer on the last hidden
        state); otherwise it is the self-contained ``modeling_prefixvalue.py`` (trust_remote_code). Default: no."""
        return False

    @classmethod
    def export_reads_reference(cls, config: ValueModelConfig) -> bool:
        """Whether an export carries the reference policy beside the value backbone (default: when the kind
        `reads_reference` and its backbone is not the frozen policy itself)."""
        return cls.reads_reference(config) and config.backbone != "frozen"

    # ----- backbone adaptation -------------------------------------------------------------------
    def _adapt(self, backbone: PreTrainedModel, adapter_dir: str | Path | None) -> nn.Module:
        from peft import LoraConfig, PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        cfg = self.config
        uses_peft = cfg.backbone == "lora" or cfg.soft_prompt_tokens > 0
        for p in backbone.parameters():
            p.requires_grad_(cfg.backbone == "full")
        if not uses_peft:
            return backbone
        if adapter_dir is not None:  # restoring a saved model: the adapter config comes from disk
            model = PeftModel.from_pretrained(backbone, str(adapter_dir), is_trainable=False)
            if cfg.backbone == "lora":  # make LoRA weights trainable again (fine-tuning a loaded model)
                for name, p in model.named_parameters():
                    p.requires_grad_("lora_" in name)
            return model
        if cfg.soft_prompt_tokens:
            peft_cfg: Any = PromptTuningConfig(
                task_type=TaskType.CAUSAL_LM,
                num_virtual_tokens=cfg.soft_prompt_tokens,
                # start from embeddings of random vocabulary tokens: in-distribution inputs, unlike N(0, 1)
                prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
            )
        else:
            targets: list[str] | str | None = cfg.lora_target_modules
            if targets is not None and list(targets) == ["all-linear"]:
                targets = "all-linear"  # peft's keyword for every linear layer but the output head
            peft_cfg = LoraConfig(
                task_type=TaskType.CAUSAL_LM,
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets,
            )
        return get_peft_model(backbone, peft_cfg)

    @property
    def uses_peft(self) -> bool:
        return self.config.backbone == "lora" or self.config.soft_prompt_tokens > 0

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward (saves memory, costs about one extra forward)."""
        base = self.lm.get_base_model() if self.uses_peft else self.lm
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False

    def _lm_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, reference: bool = False, **kwargs: Any
    ) -> Any:
        """Run the (adapted, or with `reference` the unadapted) LM; outputs with virtual tokens removed."""
        if reference:
            if not self.uses_peft:
                raise RuntimeError("no adapter to disable: this model has no reference inside it")
            with self.lm.disable_adapter():
                out = self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
            return out
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        n = self.num_virtual_tokens
        if n:
            if getattr(out, "logits", None) is not None and out.logits.shape[1] > 1:
                out.logits = out.logits[:, n:]
            if getattr(out, "hidden_states", None) is not None:
                out.hidden_states = tuple(h[:, n:] for h in out.hidden_states)
        return out

    @property
    def forward_passes(self) -> int:
        """Passes over each sequence that `predict` runs (evaluate counts its tokens that many times): 1, or 2 when
        the values also read the reference policy beside an adapted or trained backbone (a second pass, with the
        adapters off or through the frozen copy); a frozen backbone's own logits are the reference's. A checker
        model (``checker``) is one more pass."""
        trains = self.config.backbone != "frozen" or self.config.soft_prompt_tokens > 0
        return (2 if self.reads_reference(self.config) and trains else 1) + bool(self.config.checker)

    @property
    def pass_parameters(self) -> list[int]:
        """Parameters each of the `forward_passes` runs per token (evaluate weighs its tokens by them, against the
        policy's: a value model smaller than the policy costs less per token): the backbone's (adapters included)
        for its own pass, the base model's alone for the reference's (adapters off, or a frozen copy), then a
        checker's."""
        backbone = sum(p.numel() for p in self.lm.parameters())
        base = self.lm.get_base_model() if self.uses_peft else self.lm
        reference = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)
        checker = getattr(self, "checker_lm", None)
        extra = [sum(p.numel() for p in checker.parameters())] if checker is not None else []
        own = self.forward_passes - len(extra)  # 1, or 2 with the reference beside the backbone
        return [backbone, reference][:own] + extra

    # ----- the interface ---------------------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def prefix_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
    ) -> torch.Tensor:
        """P̂(s_p) for p = 0..Tmax, [B, Tmax+1] (differentiable; columns past a row's T are padding)."""
        return self.values_from_logits(self(input_ids, attention_mask, prompt_lengths))

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _batches(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], batch_size: int):
        for _, batch in collated_batches(prompt_ids, completion_ids, batch_size, self._device()):
            yield batch

    @torch.no_grad()
    def predict(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], batch_size: int = 32
    ) -> list[np.ndarray]:
        """P̂ at positions 0..T_i of every row, as float64 arrays of length len(completion_ids[i]) + 1."""
        was_training = self.training
        self.eval()
        out: list[np.ndarray] = []
        try:
            for batch in self._batches(prompt_ids, completion_ids, batch_size):
                vals = self.prefix_values(batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
                vals = vals.double().cpu().numpy()
                for i, t in enumerate(batch["completion_lengths"].tolist()):
                    out.append(vals[i, : t + 1].copy())
        finally:
            self.train(was_training)
        return out

    # ----- values of candidate next tokens -------------------------------------------------------------
    def one_pass_candidate_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor, cand: torch.Tensor
    ) -> torch.Tensor:
        """P̂(s_p ⊕ y) [B, P, K] of candidate ids `cand` [B, P, K] at prefixes p = 0..P−1 of a right-padded batch,
        from one forward pass; only kinds with ``counterfactuals`` implement it."""
        raise NotImplementedError(f"a {self.kind!r} model values each candidate from its own sequence")

    @torch.no_grad()
    def token_candidate_values(
        self,
        prompt_ids: list[list[int]],
        completion_ids: list[list[int]],
        positions: list[np.ndarray],
        token_ids: list[np.ndarray],
        batch_size: int = 32,
    ) -> list[np.ndarray]:
        """P̂(s_p ⊕ y) for every candidate (``positions[i][j]``, ``token_ids[i][j]``) of row i: the value of the
        prefix with p completion tokens (0 <= p < T_i) followed by y in place of completion token p + 1.

        Kinds with ``counterfactuals`` (implicit, qhead) read every candidate of a row from one forward pass over
        the row (`candidate_cost` counts the tokens); any other kind runs one sequence s_p ⊕ y per candidate,
        `batch_size` sequences at a time, its value read at the last position. Float64 arrays, one per row."""
        for i, (pos, comp) in enumerate(zip(positions, completion_ids)):
            if len(pos) and (int(np.min(pos)) < 0 or int(np.max(pos)) >= len(comp)):
                raise ValueError(f"row {i}: candidate positions must be in 0..{len(comp) - 1} (completion tokens)")
        if not self.counterfactuals:
            return self._sequence_candidate_values(prompt_ids, completion_ids, positions, token_ids, batch_size)
        was_training = self.training
        self.eval()
        out: list[np.ndarray] = []
        try:
            for b0, batch in collated_batches(prompt_ids, completion_ids, batch_size, self._device()):
                rows = range(b0, b0 + batch["input_ids"].shape[0])
                tmax = int(batch["completion_lengths"].max())
                # per prefix, its candidates padded to the batch's widest prefix (padding repeats token 0)
                slots = [_candidate_slots(positions[i], tmax) for i in rows]
                width = max([1] + [int(s.max()) + 1 for _, s in slots if len(s)])
                cand = torch.zeros(len(rows), max(tmax, 1), width, dtype=torch.long)
                for r, i in enumerate(rows):
                    pos, slot = slots[r]
                    cand[r, pos, slot] = torch.as_tensor(np.asarray(token_ids[i], dtype=np.int64))
                vals = self.one_pass_candidate_values(
                    batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"], cand.to(self._device())
                )
                vals = vals.double().cpu().numpy()
                for r, (pos, slot) in enumerate(slots):
                    out.append(vals[r, pos, slot].copy())
        finally:
            self.train(was_training)
        return out

    def _sequence_candidate_values(
        self,
        prompt_ids: list[list[int]],
        completion_ids: list[list[int]],
        positions: list[np.ndarray],
        token_ids: list[np.ndarray],
        batch_size: int,
    ) -> list[np.ndarray]:
        """`token_candidate_values` of a kind without one-pass values: one sequence s_p ⊕ y per candidate."""
        seqs: list[tuple[list[int], list[int]]] = []
        for prompt, comp, pos, toks in zip(prompt_ids, completion_ids, positions, token_ids):
            seqs += [(prompt, list(comp[: int(p)]) + [int(y)]) for p, y in zip(pos, toks)]
        # sorted by length so batches pad little; values are per row, whatever the batch (right padding)
        order = sorted(range(len(seqs)), key=lambda k: len(seqs[k][0]) + len(seqs[k][1]))
        vals = np.zeros(len(seqs))
        for b0 in range(0, len(order), batch_size):
            idx = order[b0 : b0 + batch_size]
            preds = self.predict([seqs[k][0] for k in idx], [seqs[k][1] for k in idx], batch_size=len(idx))
            for k, pr in zip(idx, preds):
                vals[k] = pr[-1]
        out, start = [], 0
        for pos in positions:
            out.append(vals[start : start + len(pos)])
            start += len(pos)
        return out

    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The reference policy's logits [B, L, V] (the policy the model values): the backbone with its adapter
        disabled, or the frozen backbone. A fully trained backbone keeps no copy of the policy unless the kind
        reads it (`reads_reference`; the head's override uses that copy)."""
        if self.config.backbone == "full":
            raise ValueError(
                "this model trained its whole backbone and keeps no copy of the policy: give the candidates "
                "(token_candidate_values) from the policy itself"
            )
        return self._lm_forward(input_ids, attention_mask, reference=self.uses_peft).logits

    @torch.no_grad()
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """The trainable weights a model owns outside the backbone (a value head); none by default."""
        return []

    # ----- saving and loading ----------------------------------------------------------------------
    def _extra_state_tensors(self) -> dict[str, torch.Tensor]:
        """Weights a subclass owns outside the backbone (saved to head.safetensors)."""
        return {}

    def _load_extra_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"unexpected weights {sorted(tensors)} for a {self.kind} model")

    def save_pretrained(self, save_directory: str | Path, copy_records: bool = False) -> Path:
        """Write config, adapter / soft prompt (peft, safetensors), head weights and, for a fully
        trained backbone, the backbone itself into one folder, with the prompt format, the tokenizer
        (when loaded) and a model card (README.md); returns the folder. `copy_records`: also copy the
        `CHECKPOINT_RECORDS` of the folder the model was loaded from (only right for an unchanged model)."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        # a local base model is recorded as an absolute path and relative to the folder (docs/design.md,
        # "Checkpoints that travel"); a Hub id as is
        base, relative = portable_base_model(self.config.base_model, out)
        checker, checker_relative = portable_base_model(self.config.checker, out)  # recorded as the base is
        cfg = dataclasses.replace(
            self.config,
            base_model=base,
            base_model_relative=relative,
            checker=checker,
            checker_relative=checker_relative,
            prefixvalue_version=__version__,
        )
        (out / CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        if self.uses_peft:
            self.lm.save_pretrained(str(out / ADAPTER_DIR), safe_serialization=True)
            (out / ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # peft's empty template; README.md is the card
            if base:  # peft records the path the base was loaded from: the portable one, so AutoPeftModel finds it
                adapter_config = out / ADAPTER_DIR / ADAPTER_FILES[0]
                peft_cfg = json.loads(adapter_config.read_text())
                peft_cfg["base_model_name_or_path"] = base
                runfolder.write_text(adapter_config, json.dumps(peft_cfg, indent=2, sort_keys=True) + "\n")
        if self.config.backbone == "full":
            self.lm.save_pretrained(str(out / BACKBONE_DIR), safe_serialization=True)
        extra = self._extra_state_tensors()
        if extra:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, str(out / HEAD_WEIGHTS))
        (out / PROMPT_FORMAT_FILE).write_text(self.prompt_format.to_json() + "\n")
        if self.step_format is not None:
            (out / STEP_FORMAT_FILE).write_text(self.step_format.to_json() + "\n")
        if self._tokenizer is not None or (
            self.source is not None and (self.source / "tokenizer_config.json").is_file()
        ):
            self.tokenizer.save_pretrained(str(out))
        if copy_records and self.source is not None and self.source.resolve() != out.resolve():
            for name in CHECKPOINT_RECORDS:
                if (self.source / name).is_file():
                    shutil.copyfile(self.source / name, out / name)
        write_model_card(out)
        return out

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        base_model: str | PreTrainedModel | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        options: LoadOptions | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
    ) -> ValueModel:
        """Load a folder written by `save_pretrained`, or a Hub repo holding one (by id, through
        ``huggingface_hub.snapshot_download``; `revision` and `token` are the Hub's), in eval mode. On
        ``ValueModel`` itself the kind is read from the checkpoint; on a subclass it must match.

        `base_model` overrides the saved reference policy (a name/path, or an already loaded model,
        which is adapted in place); by default it is ``config.base_model``, found as
        `prefixvalue.value.hub.find_base_model` says, loaded with the options recorded in
        ``config.base_load`` under `options` (trust_remote_code is never read from the checkpoint).
        `dtype` defaults to float32 (``"auto"``: bfloat16 on a capable GPU). The model keeps its
        tokenizer (``model.tokenizer``, loaded on first use) and prompt format (``model.prompt_format``).
        """
        path = resolve_checkpoint(path, revision=revision, token=token)
        cfg = read_value_config(path)  # every file below is checked before a library reads it: one line naming it
        prompt_format = checkpoint_prompt_format(path)
        step_format = checkpoint_step_format(path)
        if not cls.kind:  # ValueModel.from_pretrained: the checkpoint's own kind
            cls = value_model_class(cfg.kind)
        if cls.kind != cfg.kind:
            raise ValueError(f"{path} holds a {cfg.kind!r} value model, not {cls.kind!r}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        torch_dtype = resolve_dtype(dtype or "float32", device)
        opts = options or LoadOptions()
        if base_model is None:
            opts = opts.with_recorded(cfg.base_load)
            if cfg.backbone != "full" or cls.reads_reference(cfg):  # a fully trained backbone is in the folder
                cfg.base_model = find_base_model(cfg.base_model, cfg.base_model_relative, path)
        if cfg.checker:
            cfg.checker = find_checker(cfg.checker, cfg.checker_relative, path)

        def load_base(name: str) -> PreTrainedModel:
            return load_causal_lm(name, torch_dtype, device, dataclasses.replace(opts, device_map=None))

        adapter = path / ADAPTER_DIR if (cfg.backbone == "lora" or cfg.soft_prompt_tokens) else None
        if adapter is not None:
            check_adapter(adapter)
        head = load_weights(path / HEAD_WEIGHTS) if (path / HEAD_WEIGHTS).exists() else None
        if cfg.backbone == "full":
            check_backbone(path / BACKBONE_DIR)
            backbone = AutoModelForCausalLM.from_pretrained(str(path / BACKBONE_DIR), dtype=torch_dtype)
        elif isinstance(base_model, PreTrainedModel):
            backbone = base_model.to(torch_dtype)
        else:
            backbone = load_base(base_model or cfg.base_model)
        if isinstance(base_model, str):
            cfg.base_model = base_model
        extra: dict[str, Any] = {}
        if cfg.backbone == "full" and cls.reads_reference(cfg):  # the head reads the starting policy
            ref = base_model if base_model is not None else cfg.base_model
            extra["reference"] = ref.to(torch_dtype) if isinstance(ref, PreTrainedModel) else load_base(ref)
        model = cls(cfg, backbone, adapter_dir=adapter, **extra)
        if head is not None:
            try:
                model._load_extra_state_tensors(head)
            except (KeyError, RuntimeError, ValueError) as exc:  # other names or shapes than this model's
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ConfigError(f"{path / HEAD_WEIGHTS}: does not fit this {cfg.kind} model ({first})") from None
        elif model._extra_state_tensors():
            raise ConfigError(f"{path / HEAD_WEIGHTS}: missing (no such file); the head's weights were not saved")
        model.source = path
        model.prompt_format = prompt_format
        model.step_format = step_format
        model._load_options = opts
        return model.to(device).eval()

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Save this model and upload it to the Hub repo `repo_id` (`prefixvalue.value.hub.push_to_hub`:
        ``private``, ``token``, ``revision``, ``commit_message``). Returns a `PushResult`."""
        return push_model_to_hub(self, repo_id, **kwargs)


def _candidate_slots(positions: np.ndarray, tmax: int) -> tuple[np.ndarray, np.ndarray]:
    """For a row's flat candidate positions: (positions, the index of each candidate among its prefix's)."""
    pos = np.asarray(positions, dtype=np.int64)
    seen = np.zeros(max(tmax, 1), dtype=np.int64)
    slot = np.zeros(len(pos), dtype=np.int64)
    for j, p in enumerate(pos.tolist()):
        slot[j] = seen[p]
        seen[p] += 1
    return pos, slot


@dataclass
class CandidateValues:
    """Values of a prefix's candidate next tokens (`ValueModel.candidate_values`), most likely first."""

    token_ids: np.ndarray  #: [k] int64, the policy's k most likely next tokens
    tokens: list[str]  #: their text
    logprobs: np.ndarray  #: [k] log π_ref(y' | s)
    values: np.ndarray  #: [k] P̂(s ⊕ y')
    prefix_value: float  #: P̂(s)
    sequences: int  #: sequences the value model ran for the candidates (1: one pass)

    @property
    def advantages(self) -> np.ndarray:
        """TD advantages P̂(s ⊕ y') − P̂(s), probability units."""
        return self.values - self.prefix_value


@dataclass
class StepScores:
    """Per-step scores of one solution (`ValueModel.score_steps`), float64 arrays of one entry per step."""

    #: P̂ right after each step: evaluate's prefix-based step score
    values: np.ndarray
    #: the step's TD score with γ = 1: P̂(after) − P̂(before), the sum of its token TD errors
    #: (`prefixvalue.data.steps.td_errors`); negative where the step lowered the value
    td: np.ndarray
    #: implicit models: the process-level score σ(β Σ_{t ∈ step} log-ratio_t); None for a head
    process: np.ndarray | None
    #: P̂ at every prefix, positions 0..T of the joined steps
    token_values: np.ndarray
    #: each step's token span [start, end) in the completion
    step_spans: list[tuple[int, int]]


def logit(p: float) -> float:
    """log(p / (1 − p))."""
    return math.log(p) - math.log1p(-p)
