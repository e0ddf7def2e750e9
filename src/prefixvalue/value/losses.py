"""Losses for value models, and their normalisation under gradient accumulation and data parallelism.

Every loss here returns a *sum* over its terms and the number of terms, never a mean: the recipe
divides by the number of terms in the whole optimizer step (all accumulation micro-batches, all
processes), so that one step on a batch of 8 equals 8 accumulated steps on batches of 1, and N
processes equal one process on the same global batch. (A per-micro-batch mean weights short and
long completions differently depending on how they were grouped.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

#: loss types: "prefix" = margin BCE at every completion prefix (IPVRM); "sequence" = BCE on the
#: whole sequence's implicit reward σ(β Σ_t log-ratio) (Implicit PRM, Yuan et al. 2024, the baseline)
LOSS_TYPES: tuple[str, ...] = ("prefix", "sequence")


class LossSum(NamedTuple):
    """A loss as (sum over terms, number of terms); both are tensors (the count is float)."""

    total: torch.Tensor
    count: torch.Tensor


def margin_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Elementwise −[r·log σ(z − m) + (1 − r)·log(1 − σ(z + m))] for logits z and targets r ∈ [0, 1].

    With m = 0 this is the ordinary binary cross-entropy with logits. Soft targets are used as they
    are (no rounding). Computed with softplus, in float32 or wider, so large |z| never overflows.
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    r = targets.to(z.dtype)
    return r * F.softplus(-(z - margin)) + (1.0 - r) * F.softplus(z + margin)


def loss_mask(batch: dict[str, torch.Tensor], kind: str, loss_type: str = "prefix") -> torch.Tensor:
    """Bool mask [B, Tmax+1] of the positions a value model of `kind` is trained on.

    The head sees every position 0..T. The implicit model carries no information at p = 0 (V = 0 at
    the bare prompt), so its prefix loss covers p = 1..T; its sequence loss uses only p = T.
    """
    mask = batch["target_mask"].clone()
    if kind == "implicit":
        mask[:, 0] = False
        if loss_type == "sequence":
            last = torch.zeros_like(mask)
            last[torch.arange(mask.shape[0]), batch["completion_lengths"]] = True
            # the sequence loss is on the outcome itself, whatever soft labels say
            mask = last & (batch["completion_lengths"] > 0)[:, None]
    elif kind != "head":
        raise ValueError(f"unknown value model kind {kind!r}")
    return mask


def value_loss(
    logits: torch.Tensor,
    batch: dict[str, torch.Tensor],
    kind: str,
    loss_type: str = "prefix",
    margin: float = 0.0,
) -> LossSum:
    """Summed loss of one micro-batch and its number of terms.

    `logits` are a value model's ``forward`` output [B, Tmax+1] (pre-sigmoid; for the implicit model
    the length-normalised v̄(p)). Prefix loss: margin BCE against ``targets`` at every `loss_mask`
    position (the implicit model uses `margin`, the head m = 0). Sequence loss (implicit only): BCE of
    σ(V(s_T)) = σ(T · v̄(T)) against the outcome, one term per row.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss type {loss_type!r}; choose from {LOSS_TYPES}")
    mask = loss_mask(batch, kind, loss_type)
    if kind == "implicit" and loss_type == "sequence":
        # V(s_p) = p · v̄(p); the mask keeps only p = T of each row
        total_reward = logits * torch.arange(logits.shape[1], device=logits.device, dtype=logits.dtype)[None, :]
        terms = margin_bce_with_logits(total_reward, batch["outcome"][:, None].expand_as(total_reward), 0.0)
    else:
        terms = margin_bce_with_logits(logits, batch["targets"], margin if kind == "implicit" else 0.0)
    terms = torch.where(mask, terms, torch.zeros_like(terms))
    return LossSum(terms.sum(), mask.sum().to(terms.dtype))


def normalise_loss(loss_sum: torch.Tensor, num_items: torch.Tensor | float, world_size: int = 1) -> torch.Tensor:
    """Scale a micro-batch's summed loss so that accumulated, data-parallel gradients are the
    gradient of (sum of all terms in the optimizer step) / `num_items`.

    `num_items` is the number of loss terms across every micro-batch of the step on every process.
    DDP averages gradients over `world_size` processes, hence the factor `world_size`.
    """
    n = num_items if isinstance(num_items, torch.Tensor) else torch.tensor(float(num_items))
    return loss_sum * world_size / n.to(loss_sum.device, loss_sum.dtype).clamp_min(1.0)
