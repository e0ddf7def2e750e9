"""Conditional distance: how many soft-prompt tokens the frozen policy needs to become its own value
model (docs/design.md, "Conditional distance").

The numerics of `prefixvalue distance` (the stage in `prefixvalue.studies.distance` runs the sweep):
the saturation rule n* = the first n of the grid with L(n) − L(next n) ≤ ε, its uncertainty over seeds,
summaries across seeds (mean, 95% t-interval, spread), whether a training curve had flattened by the
end of its step budget, the L(n) / Spearman(n) plot and the markdown section of the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..formatting import fixed, with_ci


# ------------------------------------------------------------------------------- saturation rule
def saturation_point(ns: Sequence[int], losses: Sequence[float | None], epsilon: float) -> int | None:
    """n* of one curve: the first grid point n_i (not the last) whose loss the next grid point n_{i+1}
    (2n on a doubling grid; 1 after 0) improves by at most `epsilon`: L(n_i) − L(n_{i+1}) ≤ ε.

    `ns` must be increasing; a None or non-finite loss on either side skips that pair. Returns None when
    no pair qualifies (the loss still improves by more than ε at the end of the grid: n* > max n).
    """
    if list(ns) != sorted(set(ns)):
        raise ValueError(f"the token grid must be strictly increasing, got {list(ns)}")
    if len(ns) != len(losses):
        raise ValueError(f"{len(ns)} grid points but {len(losses)} losses")
    for i in range(len(ns) - 1):
        a, b = losses[i], losses[i + 1]
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        if a - b <= epsilon:
            return int(ns[i])
    return None


def t_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of `values` across seeds with its Student-t interval, standard deviation and range:
    ``{"mean", "ci": [lo, hi] | None, "sd", "min", "max", "n"}`` (ci and sd need two values; None
    and non-finite values are left out and counted in ``n_missing``)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    out: dict[str, Any] = {
        "mean": None,
        "ci": None,
        "sd": None,
        "min": None,
        "max": None,
        "n": int(len(x)),
        "n_missing": len(values) - len(x),
    }
    if len(x) == 0:
        return out
    out.update(mean=float(x.mean()), min=float(x.min()), max=float(x.max()))
    if len(x) >= 2:
        sd = float(x.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
        out.update(sd=sd, ci=[out["mean"] - half, out["mean"] + half])
    return out


def n_star_uncertainty(
    ns: Sequence[int],
    per_seed: Sequence[Sequence[float | None]],
    epsilon: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """n* of the mean curve and its uncertainty across seeds.

    `per_seed[s][i]` is seed s's loss at grid point ns[i]. Returns ``{"n_star"`` (of the curve of means),
    ``"per_seed"`` (n* of each seed's own curve), ``"bootstrap"``: the share of each outcome over `n_boot`
    replicates that redraw, at every n independently, the seeds with replacement (the runs at different n
    are independent trainings) and apply the rule to the mean curve (key "none" = not reached), and
    ``"interval"``: the 5th–95th percentile of those n* (None above the grid counts as +∞, shown as None)}.
    """
    arr = np.asarray([[np.nan if v is None else v for v in row] for row in per_seed], dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(ns):
        raise ValueError(f"per_seed must be seeds × {len(ns)} losses")
    mean = np.nanmean(arr, axis=0) if len(arr) else np.full(len(ns), np.nan)
    point = saturation_point(ns, [float(v) if np.isfinite(v) else None for v in mean], epsilon)
    own = [saturation_point(ns, [None if not np.isfinite(v) else float(v) for v in row], epsilon) for row in arr]
    out: dict[str, Any] = {"n_star": point, "per_seed": own, "epsilon": epsilon, "bootstrap": None, "interval": None}
    if len(arr) < 2 or n_boot <= 0:
        return out
    rng = np.random.default_rng(seed)
    k = len(arr)
    draws: list[float] = []
    counts: dict[str, int] = {}
    for _ in range(n_boot):
        pick = rng.integers(0, k, size=(k, len(ns)))
        curve = np.nanmean(arr[pick, np.arange(len(ns))[None, :]], axis=0)
        n = saturation_point(ns, [float(v) if np.isfinite(v) else None for v in curve], epsilon)
        counts[str(n) if n is not None else "none"] = counts.get(str(n) if n is not None else "none", 0) + 1
        draws.append(math.inf if n is None else float(n))
    lo, hi = np.quantile(np.asarray(draws), [0.05, 0.95], method="inverted_cdf")
    out["bootstrap"] = {key: c / n_boot for key, c in sorted(counts.items(), key=lambda kv: _order(kv[0]))}
    out["interval"] = [None if math.isinf(lo) else int(lo), None if math.isinf(hi) else int(hi)]
    out["n_boot"] = n_boot
    return out


def _order(key: str) -> float:
    return math.inf if key == "none" else float(key)


# ----------------------------------------------------------------------------- training curves
def flattening(curve: Sequence[Sequence[float | None]], max_steps: int, tolerance: float) -> dict[str, Any]:
    """Whether a held-out loss curve had flattened by the end of its step budget.

    `curve` holds ``[step, loss]`` pairs (the held-out evaluations during training, the last at
    `max_steps`). The drop over the last quarter of the budget is L(s₀) − L(end), s₀ the evaluation step
    nearest 0.75 · max_steps before the end; the curve has flattened when that drop is ≤ `tolerance` (a
    rising loss has flattened too: more steps would not have helped). Returns ``{"drop", "from_step",
    "to_step", "flattened"}``, with None values when the curve has fewer than two finite points.
    """
    pts = [(int(s), float(v)) for s, v in curve if v is not None and math.isfinite(v)]
    out: dict[str, Any] = {"drop": None, "from_step": None, "to_step": None, "flattened": None}
    if len(pts) < 2:
        return out
    end_step, end = pts[-1]
    before = [p for p in pts[:-1]]
    s0, l0 = min(before, key=lambda p: abs(p[0] - 0.75 * max_steps))
    drop = l0 - end
    out.update(drop=drop, from_step=s0, to_step=end_step, flattened=bool(drop <= tolerance))
    return out


# ------------------------------------------------------------------------------------------ plot
def _x_positions(ns: Sequence[int]) -> tuple[list[float], float | None]:
    """Log-axis x of each n: n itself for n ≥ 1; n = 0 sits half a doubling left of the smallest n > 0
    (labelled "0", separated by a break mark). Returns the positions and the x of n = 0 (None if absent)."""
    positive = [n for n in ns if n > 0]
    zero_x = (min(positive) / 2**0.5 / 1.5) if positive else 1.0
    return [zero_x if n == 0 else float(n) for n in ns], (zero_x if 0 in ns else None)


def plot_distance(summary: dict[str, Any], path: Path) -> Path:
    """Two panels on a log-n axis: held-out loss L(n) and Spearman(n) with MC, for each kind — the mean
    over seeds with its 95% interval, every seed as a faint dot, n* as a dashed line, and the LoRA run
    at matched trainable parameters as a diamond at its parameter-equivalent number of tokens."""
    from .report import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    zero_x = None
    all_ns: list[int] = []
    for j, (kind, ks) in enumerate(summary["kinds"].items()):
        ns = [int(n) for n in ks["tokens"]]
        all_ns = sorted(set(all_ns) | set(ns))
        xs, zx = _x_positions(ns)
        zero_x = zx if zx is not None else zero_x
        c = colours[j % len(colours)]
        for ax, metric in zip(axes, ("loss", "spearman")):
            rows = [ks["curve"][str(n)][metric] for n in ns]
            mean = [r["mean"] if r["mean"] is not None else np.nan for r in rows]
            # a correlation's t-interval over few seeds can pass ±1: drawn clipped to [-1, 1]
            bound = 1.0 if metric == "spearman" else np.inf
            lo = [max(r["ci"][0], -bound) if r["ci"] else np.nan for r in rows]
            hi = [min(r["ci"][1], bound) if r["ci"] else np.nan for r in rows]
            ax.plot(xs, mean, "o-", color=c, label=f"{kind}: soft prompt")
            ax.fill_between(xs, lo, hi, color=c, alpha=0.15, lw=0)
            for x, n in zip(xs, ns):
                vals = [v for v in ks["curve"][str(n)][f"{metric}_per_seed"] if v is not None]
                ax.scatter([x] * len(vals), vals, s=8, color=c, alpha=0.35, lw=0)
            lora = ks.get("lora")
            if lora and lora[metric]["mean"] is not None:
                x = max(lora["params"] / max(ks["hidden"], 1), 0.01)
                err = None
                if lora[metric]["ci"]:
                    m = lora[metric]["mean"]
                    err = [[m - max(lora[metric]["ci"][0], -bound)], [min(lora[metric]["ci"][1], bound) - m]]
                ax.errorbar(
                    [x],
                    [lora[metric]["mean"]],
                    yerr=err,
                    fmt="D",
                    color=c,
                    mfc="white",
                    ms=7,
                    capsize=3,
                    label=f"{kind}: LoRA r={lora['lora_r']} ({lora['params']:,} params ≡ {x:.3g} tokens)",
                )
            n_star = ks["n_star"]["n_star"]
            if n_star is not None and metric == "loss":
                ax.axvline(xs[ns.index(n_star)], color=c, ls="--", lw=1, label=f"{kind}: n* = {n_star}")
    for ax, label in zip(axes, ("held-out loss L(n)", "Spearman with MC (held-out prefixes)")):
        ax.set_xscale("log", base=2)
        xs, _ = _x_positions(all_ns)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(n) for n in all_ns])
        ax.minorticks_off()
        if zero_x is not None:  # a break between n = 0 and the doubling grid
            mid = (zero_x * min(n for n in all_ns if n > 0)) ** 0.5 if any(n > 0 for n in all_ns) else zero_x
            ax.axvspan(mid / 1.08, mid * 1.08, color="0.85", lw=0)
        ax.set_xlabel("soft-prompt tokens n (log scale; 0 = no prompt)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"L(n), ε = {summary['epsilon']:g}")
    axes[1].set_title("Spearman(n)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------- report
def _f(v: Any, d: int = 3) -> str:
    return fixed(v, d, none="—")  # a missing number in this section: an em dash


def _ci(s: dict[str, Any], d: int = 3) -> str:
    return with_ci(s["mean"], s["ci"], d, none="—")


def saturation_words(ks: dict[str, Any], epsilon: float, max_n: int) -> str:
    """One sentence on where the loss saturates, with its uncertainty across seeds."""
    ns = ks["n_star"]
    where = (
        f"saturates at n* = {ns['n_star']} soft-prompt tokens"
        if ns["n_star"] is not None
        else f"has not saturated within the grid (n* > {max_n})"
    )
    per_seed = ", ".join("none" if n is None else str(n) for n in ns["per_seed"])
    extra = f"; each seed's own curve gives n* = {per_seed}" if ns["per_seed"] else ""
    if ns.get("interval"):
        lo, hi = ns["interval"]
        extra += (
            f"; over {ns['n_boot']} seed bootstraps n* lies in [{lo if lo is not None else f'>{max_n}'}, "
            f"{hi if hi is not None else f'>{max_n}'}] (5–95%)"
        )
    return f"The held-out loss {where} (rule L(n) − L(2n) ≤ ε = {epsilon:g}){extra}."


def render_distance_section(summary: dict[str, Any]) -> str:
    """The report section of a `prefixvalue distance` sweep (markdown), from distance.json's dict."""
    eps = summary["epsilon"]
    lines = [
        "## Conditional distance: soft-prompt tokens needed for the value behaviour",
        "",
        f"Frozen policy `{summary['policy']}`; every cell trains {summary['max_steps']} steps of batch "
        f"{summary['batch_size']} on the same training prompts ({summary['train_traces']} traces"
        + (
            f" of at most {summary['max_length']} tokens, so that the largest soft prompt fits the policy's positions"
            if summary.get("max_length")
            else ""
        )
        + f"); the held-out loss "
        f"is the kind's training loss on {summary['heldout_traces']} traces of held-out prompts, Spearman is against "
        f"MC labels of {summary['spearman_prefixes']} prefixes of {summary['spearman_traces']} held-out traces "
        f"({summary['split_note']}). Means over {summary['seeds']} seeds with 95% t-intervals; "
        f"sd = spread across initialisations. Flattened: the held-out loss fell by ≤ {summary['flat_tolerance']:g} "
        "over the last quarter of the step budget (cells flattened / cells).",
        "",
    ]
    max_n = max(int(n) for ks in summary["kinds"].values() for n in ks["tokens"])
    for kind, ks in summary["kinds"].items():
        lines += [f"### {kind}", "", saturation_words(ks, eps, max_n), ""]
        lines += [
            "| n | trainable params | held-out loss | sd (seeds) | L(n) − L(next) | Spearman with MC | sd | flattened |",
            "|---:|---:|---|---:|---:|---|---:|---:|",
        ]
        for n in ks["tokens"]:
            row = ks["curve"][str(n)]
            flat = row["flattened"]
            lines.append(
                f"| {n} | {row['params']:,} | {_ci(row['loss'])} | {_f(row['loss']['sd'])} | {_f(row['gain'], 4)} | "
                f"{_ci(row['spearman'])} | {_f(row['spearman']['sd'])} | {flat['yes']}/{flat['of']} |"
            )
        lora = ks.get("lora")
        if lora:
            flat = lora["flattened"]
            lines += [
                f"| LoRA r={lora['lora_r']} | {lora['params']:,} | {_ci(lora['loss'])} | {_f(lora['loss']['sd'])} | | "
                f"{_ci(lora['spearman'])} | {_f(lora['spearman']['sd'])} | {flat['yes']}/{flat['of']} |",
                "",
                lora["verdict"],
            ]
        notes = ks.get("notes") or []
        lines += [""] + [f"- {t}" for t in notes] + ([""] if notes else [])
    if summary.get("plot"):
        lines += [f"![L(n) and Spearman(n)]({summary['plot']})", ""]
    return "\n".join(lines)
