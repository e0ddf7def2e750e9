"""Losses for value models, and their normalisation under gradient accumulation and data parallelism.

Every loss here returns a *sum* over its terms and the number of terms, never a mean: the training loop
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


def masked_sum(terms: torch.Tensor, mask: torch.Tensor) -> LossSum:
    """Sum of `terms` where `mask` is True, and the number of such terms."""
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
