"""Raw soft values of a policy read off its next-token logits q(s, ·) (docs/design.md, "Soft values").

- extensive log-sum-exp value (Blondel et al. 2025): ``V_lse(s) = log Σ_a exp q(s, a)``
- intensive MellowMax (Asadi & Littman 2017):
  ``mm_ω(s) = (1/ω) log((1/|A|) Σ_a exp(ω q(s, a)))``, with mean(q) ≤ mm_ω ≤ max(q) for ω > 0,
  → max as ω → ∞ and → mean as ω → 0. |A| is the full vocabulary or the top-k logits.

Everything is computed in float64 with log-sum-exp, so large logits or large ω never overflow; the
logits themselves are float32 even for a bf16/fp16 policy (the LM head runs in float32 on the last
hidden state, `float32_logits`), so no soft value is computed from logits already rounded to bf16.
`policy_soft_values` runs one forward pass per trace and returns the values at every prefix
position p = 0..T (p = completion tokens in the prefix; the logits that follow prefix p sit at
input index ``len(prompt_ids) - 1 + p``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.collate import ValueCollator
from ..formatting import general


def _as_float64(logits: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(logits, np.ndarray):
        return torch.from_numpy(np.asarray(logits, dtype=np.float64))
    return logits.detach().to(dtype=torch.float64)


def logsumexp_value(logits: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``log Σ_a exp q(s, a)`` over the last axis, in float64 (nats, same scale as the logits)."""
    return torch.logsumexp(_as_float64(logits), dim=-1)


def mellowmax(logits: torch.Tensor | np.ndarray, omega: float) -> torch.Tensor:
    """MellowMax ``(1/ω) log mean_a exp(ω q(s, a))`` over the last axis, in float64.

    ``omega = 0`` returns the exact limit (the mean of the logits) and ``omega = inf`` the max.
    Negative ω is rejected (the bounds mean ≤ mm ≤ max hold only for ω > 0).
    """
    q = _as_float64(logits)
    if omega < 0 or math.isnan(omega):
        raise ValueError(f"mellowmax needs omega >= 0, got {omega}")
    if omega == 0:
        return q.mean(dim=-1)
    if math.isinf(omega):
        return q.max(dim=-1).values
    n = q.shape[-1]
    return (torch.logsumexp(omega * q, dim=-1) - math.log(n)) / omega


def topk_mellowmax(logits: torch.Tensor | np.ndarray, omega: float, k: int) -> torch.Tensor:
    """MellowMax restricted to the `k` largest logits (|A| = k, or the vocabulary if smaller)."""
    q = _as_float64(logits)
    k = min(int(k), q.shape[-1])
    if k < 1:
        raise ValueError(f"top-k mellowmax needs k >= 1, got {k}")
    return mellowmax(torch.topk(q, k, dim=-1).values, omega)


@dataclass
class SoftValueSpec:
    """Which soft values to compute; each becomes one named estimator.

    Names: ``logsumexp``; ``mellowmax`` (full vocabulary at `default_omega`, the headline entry);
    ``mellowmax_w{ω}`` for the other ω of the grid; ``mellowmax_top{k}_w{ω}`` for every k and ω.
    """

    omegas: Sequence[float] = (0.1, 1.0, 10.0)
    default_omega: float = 1.0
    top_k: Sequence[int] = (10,)
    logsumexp: bool = True
    names: dict[str, dict[str, object]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.default_omega <= 0:
            raise ValueError("default_omega must be > 0")
        if any(w <= 0 for w in self.omegas):
            raise ValueError(f"every omega must be > 0, got {list(self.omegas)}")
        names: dict[str, dict[str, object]] = {}
        if self.logsumexp:
            names["logsumexp"] = {"operator": "logsumexp", "vocab": "full"}
        names["mellowmax"] = {
            "operator": "mellowmax",
            "omega": float(self.default_omega),
            "vocab": "full",
            "default": True,
        }
        for w in self.omegas:
            if float(w) != float(self.default_omega):
                names[f"mellowmax_w{_fmt(w)}"] = {"operator": "mellowmax", "omega": float(w), "vocab": "full"}
        for k in self.top_k:
            for w in sorted({float(x) for x in self.omegas} | {float(self.default_omega)}):
                names[f"mellowmax_top{int(k)}_w{_fmt(w)}"] = {
                    "operator": "mellowmax",
                    "omega": w,
                    "vocab": f"top{int(k)}",
                }
        self.names = names


def _fmt(x: float) -> str:
    return general(float(x))


def soft_values_from_logits(logits: torch.Tensor | np.ndarray, spec: SoftValueSpec) -> dict[str, np.ndarray]:
    """All soft values of `spec` for a (positions, vocab) block of logits; each a float64 array."""
    q = _as_float64(logits)
    out: dict[str, np.ndarray] = {}
    topk_cache: dict[int, torch.Tensor] = {}
    for name, p in spec.names.items():
        if p["operator"] == "logsumexp":
            v = logsumexp_value(q)
        elif p["vocab"] == "full":
            v = mellowmax(q, float(p["omega"]))  # type: ignore[arg-type]
        else:
            k = min(int(str(p["vocab"])[3:]), q.shape[-1])
            if k not in topk_cache:
                topk_cache[k] = torch.topk(q, k, dim=-1).values
            v = mellowmax(topk_cache[k], float(p["omega"]))  # type: ignore[arg-type]
        out[name] = v.cpu().numpy()
    return out


def float32_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head applied in float32 to `hidden` (last-layer hidden states, any dtype).

    A bf16 policy's own lm_head output is rounded to bf16 (8 bits of mantissa) before any later
    upcast, which collapses neighbouring soft values; this runs the final projection (weight and
    bias upcast, then Gemma-style final logit soft-capping when the config sets it) in float32.
    """
    head = model.get_output_embeddings()
    w = head.weight.float()
    b = head.bias.float() if getattr(head, "bias", None) is not None else None
    logits = torch.nn.functional.linear(hidden.float(), w, b)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _last_hidden_and_head(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """(hidden or logits, a function turning rows of it into float32 logits) for one batch.

    A float32 model returns its logits as they are. Otherwise the last hidden state (after the final
    norm: HF's last ``hidden_states`` entry) goes through `float32_logits`, so the logits used for
    soft values are float32 even when the policy runs in bf16 or fp16.
    """
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32 or model.get_output_embeddings() is None:
        return model(input_ids=ids, attention_mask=mask).logits, lambda rows: rows
    try:  # logits_to_keep=1: the model's own (rounded) logits are not needed, only the hidden states
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
    except TypeError:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.hidden_states[-1], lambda rows: float32_logits(model, rows)


@torch.no_grad()
def policy_soft_values(
    model: torch.nn.Module,
    prompt_ids_list: Sequence[Sequence[int]],
    completion_ids_list: Sequence[Sequence[int]],
    spec: SoftValueSpec,
    batch_size: int = 8,
    pad_token_id: int = 0,
    row_chunk: int = 512,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, np.ndarray]], int]:
    """Soft values of `model` at every prefix position 0..T of each trace.

    Returns ``(values, forward_tokens)``: ``values[i][name]`` is a float64 array of length T_i + 1;
    `forward_tokens` counts the input tokens of the forward passes (prompt + completion per trace).
    One forward per trace (right-padded batches of up to `batch_size` traces, sorted by length);
    logits are turned into soft values in float64 `row_chunk` rows at a time to bound memory.
    `on_batch(traces)` is called after each batch (for a progress bar).
    """
    device = next(model.parameters()).device
    n = len(prompt_ids_list)
    results: list[dict[str, np.ndarray] | None] = [None] * n
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids_list, completion_ids_list)]
    order = sorted(range(n), key=lambda i: lengths[i])
    forward_tokens = 0
    collate = ValueCollator(pad_token_id)  # right padding: a row's logits do not depend on its batch
    for b0 in range(0, n, max(1, batch_size)):
        idx = order[b0 : b0 + batch_size]
        batch = collate(
            [{"prompt_ids": prompt_ids_list[i], "completion_ids": completion_ids_list[i], "outcome": 0.0} for i in idx]
        )
        forward_tokens += int(batch["attention_mask"].sum())
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        hidden, head = _last_hidden_and_head(model, ids, mask)
        for r, i in enumerate(idx):
            p_len, t_len = len(prompt_ids_list[i]), len(completion_ids_list[i])
            rows = hidden[r, p_len - 1 : p_len + t_len]  # T + 1 rows: positions 0..T
            parts: list[dict[str, np.ndarray]] = []
            for c0 in range(0, rows.shape[0], row_chunk):
                parts.append(soft_values_from_logits(head(rows[c0 : c0 + row_chunk]), spec))
            results[i] = {k: np.concatenate([p[k] for p in parts]) for k in spec.names}
        del hidden
        if on_batch is not None:
            on_batch(len(idx))
    return [r for r in results if r is not None], forward_tokens
