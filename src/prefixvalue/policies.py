"""Loading policies (any Hugging Face causal LM) by hub name, local folder or GGUF file.

Every stage that loads a model takes the same loading options (`prefixvalue.loading.ModelLoadConfig`:
revision, trust_remote_code, attn_implementation, device_map, gguf_file) and records the portable ones
in what it writes, so the next stage loads the same weights. `trust_remote_code` is never recorded as a
default: each stage must be asked for it on its own command line. `check_vocabulary` says, in one line,
when a loaded tokenizer cannot read a traces dataset's token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .config import ConfigError
from .data import token_id_range
from .loading import (
    RECORDED_LOAD_OPTIONS,
    LoadOptions,
    ModelLoadConfig,
    hub_errors,
    resolve_model_path,
    traces_policy,
)


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """Map ``"auto" | "float32" | "bfloat16" | "float16"`` to a torch dtype.

    ``auto`` is bfloat16 on a CUDA device that supports it and float32 everywhere else.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        dev = torch.device(device) if device is not None else None
        if dev is not None and dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def default_device() -> torch.device:
    """CUDA if present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(name_or_path: str, options: LoadOptions | None = None, **kwargs: Any) -> Any:
    """Load a tokenizer and make sure it can pad (pad = eos when the model has no pad token)."""
    name, opts = resolve_model_path(name_or_path, options)
    with hub_errors(name, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(name, **opts.tokenizer_kwargs(), **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    name_or_path: str,
    dtype: str | torch.dtype | None = "float32",
    device: str | torch.device | None = None,
    options: LoadOptions | None = None,
) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with the loading options, in `dtype`, not yet moved.

    With a ``device_map`` the model is placed by transformers; otherwise the caller moves it.
    """
    name, opts = resolve_model_path(name_or_path, options)
    with hub_errors(name, "model"):
        return AutoModelForCausalLM.from_pretrained(name, dtype=resolve_dtype(dtype, device), **opts.model_kwargs())


def load_policy(
    name_or_path: str,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
    options: LoadOptions | None = None,
    tokenizer: Any = None,
) -> tuple[PreTrainedModel, Any]:
    """Load a causal LM and its tokenizer from a hub name, a local folder or a GGUF file, in eval mode.

    Returns ``(model, tokenizer)``. `trust_remote_code` stays off unless `options` ask for it. `tokenizer`:
    the model's tokenizer when the caller has loaded it already (`load_tokenizer`), else it is loaded here.
    """
    device = torch.device(device) if device is not None else default_device()
    opts = options or LoadOptions()
    model = load_causal_lm(name_or_path, dtype, device, opts)
    if opts.device_map is None:
        model.to(device)
    model.eval()
    tok = tokenizer if tokenizer is not None else load_tokenizer(name_or_path, opts)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def check_vocabulary(tokenizer: Any, traces: Any, stage: str, vocab_size: int | None = None, probe: int = 8) -> None:
    """ConfigError, in one line, unless `tokenizer` (and a model of `vocab_size` logits) can read the traces'
    token ids: every id in ``[0, vocabulary size)`` (the message names the trace and field), and the first
    `probe` completions decode to their recorded text. The id check is vectorised (16k traces: ms)."""
    limit = min(len(tokenizer), vocab_size) if vocab_size else len(tokenizer)
    for col in ("prompt_ids", "completion_ids"):
        low, low_row, top, top_row = token_id_range(traces, col)
        if low < 0:
            raise ConfigError(
                f"{stage}: trace {traces[low_row]['trace_id']!r} (row {low_row}) holds token id {low} in {col}: "
                "token ids cannot be negative (are the traces corrupt?)"
            )
        if top >= limit:
            raise ConfigError(
                f"{stage}: trace {traces[top_row]['trace_id']!r} (row {top_row}) holds token id {top} in {col} but "
                f"the policy's vocabulary has {limit} tokens: the vocabularies disagree (were the traces written by "
                "another model?)"
            )
    for row in traces.select(range(min(probe, len(traces)))):
        text = tokenizer.decode(list(row["completion_ids"]), skip_special_tokens=True)
        if text != row["completion"]:
            raise ConfigError(
                f"{stage}: trace {row['trace_id']!r} decodes to {text[:40]!r}, not its recorded completion "
                f"{row['completion'][:40]!r}: the policy's tokenizer is not the one that wrote the traces"
            )


#: a context length above this is a placeholder (tokenizers without a limit say 1e30), not a real limit
_SANE_CONTEXT = 10_000_000


def model_context(model: Any, tokenizer: Any) -> tuple[int | None, str]:
    """``(positions, where it came from)``: the model's context length, from ``config.max_position_embeddings``
    or else ``tokenizer.model_max_length``, whichever is known and sane; ``(None, "")`` when neither is."""
    for value, where in (
        (getattr(getattr(model, "config", None), "max_position_embeddings", None), "config.max_position_embeddings"),
        (getattr(tokenizer, "model_max_length", None), "tokenizer.model_max_length"),
    ):
        if isinstance(value, int) and 0 < value < _SANE_CONTEXT:
            return value, where
    return None, ""


def check_context(
    stage: str, needs: Sequence[int], context: int | None, where: str, describe: Callable[[int], str], fix: str
) -> None:
    """ConfigError, in one line, unless every item's `needs` (positions: its prompt, and what is generated after
    it) fits in `context` (None: unknown, not checked); the line describes the item that needs most
    (``describe(index)``), says how many do not fit, and how to fix it (`fix`)."""
    if context is None or not needs:
        return
    worst = max(range(len(needs)), key=needs.__getitem__)
    if needs[worst] > context:
        over = sum(n > context for n in needs)
        raise ConfigError(
            f"{stage}: {describe(worst)} needs {needs[worst]} positions but the model's context is {context} "
            f"({where}); {over} of {len(needs)} do not fit: {fix}"
        )


__all__ = [
    "RECORDED_LOAD_OPTIONS",
    "check_context",
    "check_vocabulary",
    "traces_policy",
    "LoadOptions",
    "ModelLoadConfig",
    "default_device",
    "load_causal_lm",
    "load_policy",
    "load_tokenizer",
    "model_context",
    "resolve_dtype",
    "resolve_model_path",
]
