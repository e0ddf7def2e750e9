"""Held-out checks run during training: loss, Brier score and AUROC of the final outcome.

These are the training-time monitors of `recipes/train.py` (the full evaluation against Monte Carlo
labels is `prefixvalue evaluate`). "first" is the bare prompt (p = 0; for the implicit model this is
the constant base rate, so its AUROC there is 0.5 by construction) and "last" the full completion
(p = T). "all" averages the squared error over every prefix of every trace. Values are the model's own
readout (`ValueModel.values_from_logits`): for an implicit model trained with ``loss=sequence``, σ(V_φ(p)),
as it was trained, not σ(V_φ(p)/p); the metric keys are the same for every readout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.collate import ValueCollator
from ..stats import auroc, brier
from .base import ValueModel


@torch.no_grad()
def evaluate_heldout(
    model: ValueModel, rows: Sequence[dict[str, Any]], batch_size: int = 32, train_base_rate: float | None = None
) -> dict[str, float | None]:
    """Metrics of `model` on held-out trace rows (``prompt_ids``, ``completion_ids``, ``outcome``,
    optional ``prefix_targets``), keyed for logging under ``eval/``:

    loss (the training loss, mean per term), brier_first / brier_last / brier_all (vs the outcome),
    auroc_first / auroc_last (None when one class only), and brier_base_rate_* for the constant
    predictor at `train_base_rate` (default ``model.config.base_rate``) as the bar to beat.
    """
    was_training = model.training
    model.eval()
    cfg = model.config
    dev = next(model.parameters()).device
    collate = ValueCollator(pad_token_id=0)
    loss_total, loss_count = 0.0, 0.0
    firsts, lasts, outcomes, sq_err, sq_err_base = [], [], [], [], []
    base = cfg.base_rate if train_base_rate is None else train_base_rate
    try:
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(dev) for k, v in collate(list(rows[start : start + batch_size])).items()}
            logits = model(batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
            ls = model.value_loss(logits, batch, cfg.loss, cfg.margin)
            loss_total += float(ls.total)
            loss_count += float(ls.count)
            vals = model.values_from_logits(logits)
            vals_np = vals.double().cpu().numpy()
            for i, t in enumerate(batch["completion_lengths"].tolist()):
                r = float(batch["outcome"][i])
                firsts.append(vals_np[i, 0])
                lasts.append(vals_np[i, t])
                outcomes.append(r)
                sq_err.extend((vals_np[i, : t + 1] - r) ** 2)
                sq_err_base.extend([(base - r) ** 2] * (t + 1))
    finally:
        model.train(was_training)
    if not outcomes:
        return {"loss": None, "n_traces": 0}
    y = np.array(outcomes)
    return {
        "loss": loss_total / max(loss_count, 1.0),
        "brier_first": brier(np.array(firsts), y),
        "brier_last": brier(np.array(lasts), y),
        "brier_all": float(np.mean(sq_err)),
        "auroc_first": auroc(np.array(firsts), y)[0],
        "auroc_last": auroc(np.array(lasts), y)[0],
        "brier_base_rate_last": brier(np.full_like(y, base), y),
        "brier_base_rate_all": float(np.mean(sq_err_base)),
        "outcome_mean": float(y.mean()),
        "n_traces": float(len(y)),
    }
