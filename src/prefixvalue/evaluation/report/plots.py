"""The report's PNG plots: the calibration curve, an estimator against MC per prefix, and value curves
along the tokens of a few traces. matplotlib's Agg backend (no display needed), imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ... import runfolder
from ...stats import pearson, spearman
from ..scoring import EvalResult


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, **savefig: Any) -> Path:
    """Save `fig` to `path` atomically (`prefixvalue.runfolder.write_with`: a killed run or a full disk leaves
    the old picture or none) with ``fig.savefig(..., **savefig)``, and close it; returns `path`."""
    try:
        return runfolder.write_with(path, lambda p: fig.savefig(p, **savefig))
    finally:
        _plt().close(fig)


def plot_calibration(calibration: dict[str, list[dict[str, float]]], path: Path) -> Path | None:
    """Reliability diagram (mean MC label per predicted-probability bin) for probability estimators."""
    if not calibration:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, bins in calibration.items():
        if bins:
            ax.plot([b["mean_pred"] for b in bins], [b["mean_target"] for b in bins], "o-", label=name, ms=3)
    ax.set_xlabel("predicted success probability")
    ax.set_ylabel("mean MC success in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Calibration against MC labels")
    # below the axes: a legend inside would cover the curves near the diagonal
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def plot_scatter(pred: np.ndarray, mc: np.ndarray, name: str, path: Path, n: np.ndarray | None = None) -> Path:
    """Estimator vs MC label per prefix, with the diagonal and the Spearman and Pearson correlations.

    MC labels are k/n fractions, so the points fall on vertical stripes; each point is jittered
    horizontally by up to a third of the gap 1/n (`n`: MC samples per prefix) so the stripes show
    their density. The correlations are of the unjittered values (null-with-note `prefixvalue.stats`)."""
    plt = _plt()
    pred, mc = np.asarray(pred, dtype=np.float64), np.asarray(mc, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(mc)
    gap = 1.0 / np.asarray(n, dtype=np.float64)[ok] if n is not None else np.full(int(ok.sum()), 1 / 32)
    x = mc[ok] + np.random.default_rng(0).uniform(-1, 1, int(ok.sum())) * gap / 3
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="y = x")
    ax.scatter(x, pred[ok], s=6, alpha=0.35, linewidths=0, label="prefix (MC jittered within its k/n stripe)")
    (rho, _), (r, _) = spearman(pred[ok], mc[ok]), pearson(pred[ok], mc[ok])
    if rho is not None and r is not None:
        corr = f"Spearman {rho:.3f} · Pearson {r:.3f}"
    else:
        corr = "correlation undefined (constant values)"
    ax.set_xlabel("MC success k/n (jittered)")
    ax.set_ylabel(f"{name} (success probability)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{name} vs Monte Carlo, {int(ok.sum())} prefixes\n{corr}", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def plot_value_curves(
    result: EvalResult, indices: list[int], path: Path, forks: dict[int, int] | None = None
) -> Path | None:
    """Per-trace curves along the tokens, two panels per trace: above, the success probabilities (MC
    mean with its Wilson band, learned P̂ and any other ``learned_*`` estimator, the base rate); below,
    the policy's soft values in logit units (MellowMax, log-sum-exp), never on the probability axis.
    `forks` maps a trace index to the token index of its forking token, drawn as a red band between
    the prefixes without and with it. Legends sit right of the panels, off the data."""
    if not indices:
        return None
    plt = _plt()
    soft = [n for n in ("mellowmax", "logsumexp") if n in result.curves[indices[0]]]
    rows = 2 if soft else 1
    fig, axes = plt.subplots(
        rows * len(indices),
        1,
        figsize=(10, (2.6 + 1.3 * (rows - 1)) * len(indices)),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1.5] * len(indices) if soft else None},
    )
    for j, i in enumerate(indices):
        ax = axes[rows * j, 0]
        t, mc, cur = result.traces[i], result.mc[i], result.curves[i]
        x = np.arange(t.length + 1)
        ax.fill_between(mc["position"], mc["ci_low"], mc["ci_high"], color="tab:green", alpha=0.2, label="MC 95% CI")
        ax.plot(mc["position"], mc["mean"], "o-", color="tab:green", ms=3, label="MC success")
        if "learned" in cur:
            ax.plot(x, cur["learned"], color="tab:blue", label="learned P̂")
        for name, style in zip(sorted(n for n in cur if n.startswith("learned_")), ("--", "-.", ":")):
            ax.plot(x, cur[name], style, color="tab:purple", label=name)
        if "constant" in cur:
            ax.plot(x, cur["constant"], ":", color="grey", label="base rate")
        panels = [ax]
        if soft:
            ax2 = axes[rows * j + 1, 0]
            for name, colour in zip(soft, ("tab:orange", "tab:brown")):
                style = "--" if name == "logsumexp" and "mellowmax" in soft else "-"
                ax2.plot(x, cur[name], style, color=colour, lw=1.2, label=name)
            ax2.set_ylabel("soft value\n(logit units)", fontsize=8)
            ax2.sharex(ax)
            panels.append(ax2)
        for a in panels:
            if forks and i in forks:
                a.axvspan(forks[i], forks[i] + 1, color="tab:red", alpha=0.25, label="forking token")
            for _, e in t.step_spans:
                a.axvline(e, color="k", alpha=0.08)
            a.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("P(success)")
        ax.set_title(f"trace {t.trace_id} (outcome {t.outcome:g})", fontsize=9)
        if soft:  # the soft-value panel below carries the position axis
            ax.tick_params(labelbottom=False)
    axes[-1, 0].set_xlabel("completion tokens in the prefix (position)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100, bbox_inches="tight")


__all__ = ["plot_calibration", "plot_scatter", "plot_value_curves", "save_figure"]
