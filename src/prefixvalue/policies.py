"""Loading policies (any Hugging Face causal LM) by hub name or local path."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel


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


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """Load a tokenizer and make sure it can pad (pad = eos when the model has no pad token)."""
    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(
    name_or_path: str,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[PreTrainedModel, Any]:
    """Load a causal LM and its tokenizer from a hub name or a local folder, in eval mode.

    Returns ``(model, tokenizer)``. `trust_remote_code` stays off unless asked for.
    """
    device = torch.device(device) if device is not None else default_device()
    torch_dtype = resolve_dtype(dtype, device)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=torch_dtype, trust_remote_code=trust_remote_code, revision=revision
    )
    model.to(device)
    model.eval()
    tok = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
