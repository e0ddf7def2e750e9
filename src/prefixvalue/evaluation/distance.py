"""Conditional distance: how many soft-prompt tokens the frozen policy needs to become its own value
model (docs/design.md, "Conditional distance").

The numerics of `prefixvalue distance` (the stage in `prefixvalue.studies.distance` runs the sweep):
the saturation rule (n* = the first n whose loss is within ε of the best loss at any n' ≥ n, undetermined
while the curve has not flattened), the choice of n* on validation losses (`choose_n_star`, recorded by
`prefixvalue.evaluation.selection.choose`), its uncertainty over seeds, summaries across seeds (mean, 95%
t-interval, spread), the paired LoRA − soft-prompt difference with its equivalence test, whether a training
curve had flattened by the end of its step budget, the L(n) / Spearman(n) plot and the report section.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..formatting import fixed, with_ci
from .selection import Choice, check_side, choose

#: the rule, as distance.json states it
RULE = (
    "n* = the first n of the grid whose mean validation loss is within ε of the best mean validation loss at any "
    "n' ≥ n; undetermined while the curve has not flattened (its last two grid points differ by more than ε, or "
    "cells after n* were still falling at the end of their step budget)"
)
#: a loss difference this small counts as equal (floating-point noise in sums of losses)
_TINY = 1e-12


# ------------------------------------------------------------------------------- saturation rule
def saturation(
    ns: Sequence[int], losses: Sequence[float | None], epsilon: float, unsettled: Sequence[int] = ()
) -> dict[str, Any]:
    """n* of one curve: the first grid point n whose loss is within `epsilon` of the best loss at any
    n' ≥ n (itself included): L(n) − min_{n' ≥ n} L(n') ≤ ε.

    The curve has to have flattened for n* to mean anything, so n* is undetermined (None, with the reason)
    when the last two grid points with a loss differ by more than ε (still falling: more tokens would
    gain more; rising: the largest prompts were not trained to their optimum, which is at most the smaller
    one's), when a grid point after the n* found is in `unsettled` (its cells were still falling at the end
    of their step budget, so L there could drop and move n* up), or when fewer than two grid points have a
    loss. A best loss at the largest n with the last step gaining ≤ ε is accepted: that is the rule's ε.

    `ns` must be strictly increasing; None or non-finite losses are left out. Returns ``{"n_star": int |
    None, "undetermined": reason | None, "excess": {"<n>": L(n) − min_{n' ≥ n} L(n') | None}}``.
    """
    if list(ns) != sorted(set(ns)):
        raise ValueError(f"the token grid must be strictly increasing, got {list(ns)}")
    if len(ns) != len(losses):
        raise ValueError(f"{len(ns)} grid points but {len(losses)} losses")
    pts = [(int(n), float(v)) for n, v in zip(ns, losses) if v is not None and math.isfinite(v)]
    excess: dict[str, float | None] = {str(int(n)): None for n in ns}
    out: dict[str, Any] = {"n_star": None, "undetermined": None, "excess": excess}
    if len(pts) < 2:
        out["undetermined"] = f"only {len(pts)} grid point(s) have a loss: no curve to read n* from"
        return out
    best_later = math.inf
    for n, v in reversed(pts):
        best_later = min(best_later, v)
        excess[str(n)] = v - best_later
    (a, la), (b, lb) = pts[-2], pts[-1]
    if abs(la - lb) > epsilon + _TINY:
        how = (
            f"still falling: L({a}) − L({b}) = {la - lb:.4g} > ε = {epsilon:g} at the end of the grid, so more tokens "
            "would gain more"
            if la > lb
            else f"rising at the end of the grid: L({b}) − L({a}) = {lb - la:.4g} > ε = {epsilon:g}, so the largest "
            f"prompts were not trained to their optimum (at most L({a}))"
        )
        out["undetermined"] = f"the curve has not flattened ({how})"
        return out
    n_star = next(n for n, _ in pts if excess[str(n)] <= epsilon + _TINY)
    late = sorted(int(m) for m in unsettled if m > n_star)
    if late:
        out["undetermined"] = (
            f"the cells at n = {', '.join(map(str, late))} had not flattened within their step budget; more steps "
            f"could lower L there and move n* up from {n_star}"
        )
        return out
    out["n_star"] = n_star
    return out


def saturation_point(
    ns: Sequence[int], losses: Sequence[float | None], epsilon: float, unsettled: Sequence[int] = ()
) -> int | None:
    """n* of one curve under `saturation`'s rule, or None when it is undetermined."""
    return saturation(ns, losses, epsilon, unsettled)["n_star"]


def t_interval(values: Sequence[float | None], level: float = 0.95) -> dict[str, Any]:
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


def _curve(values: Any) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def n_star_uncertainty(
    ns: Sequence[int],
    per_seed: Sequence[Sequence[float | None]],
    epsilon: float,
    n_boot: int = 1000,
    seed: int = 0,
    unsettled: Sequence[int] = (),
) -> dict[str, Any]:
    """n* of the mean curve (`saturation`) and its uncertainty across seeds.

    `per_seed[s][i]` is seed s's loss at grid point ns[i]; `unsettled` the grid points whose cells had not
    flattened (applied to every curve below). Returns ``{"n_star"`` (of the curve of means, None when
    undetermined), ``"undetermined"`` (the reason, or None), ``"excess"`` (L(n) − min_{n' ≥ n} L(n') of the
    mean curve), ``"per_seed"`` (n* of each seed's own curve), ``"bootstrap"``: the share of each outcome over
    `n_boot` replicates that redraw, at every n independently, the seeds with replacement (the runs at
    different n are independent trainings) and apply the rule to the mean curve (key "undetermined"), and
    ``"interval"``: the 5th–95th percentile of those n* (an undetermined replicate counts as +∞, shown as
    None)}.
    """
    arr = np.asarray([[np.nan if v is None else v for v in row] for row in per_seed], dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(ns):
        raise ValueError(f"per_seed must be seeds × {len(ns)} losses")
    with np.errstate(all="ignore"):
        mean = np.nanmean(arr, axis=0) if len(arr) and np.isfinite(arr).any() else np.full(len(ns), np.nan)
    sat = saturation(ns, _curve(mean), epsilon, unsettled)
    own = [saturation_point(ns, _curve(row), epsilon, unsettled) for row in arr]
    out: dict[str, Any] = {
        "n_star": sat["n_star"],
        "undetermined": sat["undetermined"],
        "excess": sat["excess"],
        "per_seed": own,
        "epsilon": epsilon,
        "bootstrap": None,
        "interval": None,
    }
    if len(arr) < 2 or n_boot <= 0:
        return out
    rng = np.random.default_rng(seed)
    k = len(arr)
    draws: list[float] = []
    counts: dict[str, int] = {}
    for _ in range(n_boot):
        pick = rng.integers(0, k, size=(k, len(ns)))
        with np.errstate(all="ignore"):
            curve = np.nanmean(arr[pick, np.arange(len(ns))[None, :]], axis=0)
        n = saturation_point(ns, _curve(curve), epsilon, unsettled)
        key = str(n) if n is not None else "undetermined"
        counts[key] = counts.get(key, 0) + 1
        draws.append(math.inf if n is None else float(n))
    lo, hi = np.quantile(np.asarray(draws), [0.05, 0.95], method="inverted_cdf")
    out["bootstrap"] = {key: c / n_boot for key, c in sorted(counts.items(), key=lambda kv: _order(kv[0]))}
    out["interval"] = [None if math.isinf(lo) else int(lo), None if math.isinf(hi) else int(hi)]
    out["n_boot"] = n_boot
    return out


def _order(key: str) -> float:
    return math.inf if key == "undetermined" else float(key)


def choose_n_star(
    ns: Sequence[int],
    per_seed: Sequence[Sequence[float | None]],
    epsilon: float,
    *,
    split: str | None,
    n_boot: int = 1000,
    seed: int = 0,
    unsettled: Sequence[int] = (),
    what: str = "soft-prompt tokens n*",
) -> tuple[dict[str, Any], Choice | None]:
    """n* chosen on the loss curves `per_seed` (seeds × grid, as `n_star_uncertainty`), which must be
    validation losses: `split` is the side of the split they were measured on, and any other side raises
    `prefixvalue.evaluation.selection.SelectionError` (n* is a choice; the test side is read for the figures
    reported at it, never to make it). Returns `n_star_uncertainty`'s dict with ``"split"`` and ``"status"``
    (``chosen`` | ``undetermined``), and the `Choice` (`selection.choose` over the grid: 1 for the n within
    ε of the best later loss, the first of them chosen; None when n* is undetermined)."""
    check_side(what, split)
    out = n_star_uncertainty(ns, per_seed, epsilon, n_boot, seed, unsettled)
    out.update(split=split, status="chosen" if out["n_star"] is not None else "undetermined", rule=RULE)
    if out["n_star"] is None:
        return out, None
    qualifies = {n: (None if e is None else float(e <= epsilon + _TINY)) for n, e in out["excess"].items()}
    with np.errstate(all="ignore"):
        arr = np.asarray([[np.nan if v is None else v for v in row] for row in per_seed], dtype=np.float64)
        mean = np.nanmean(arr, axis=0)
    choice = choose(
        what,
        qualifies,
        split=split,
        metric="within ε of the best later mean validation loss (1 = yes); the first such n in grid order",
        higher_is_better=True,
        note=RULE,
        epsilon=epsilon,
        validation_loss={str(n): (float(v) if np.isfinite(v) else None) for n, v in zip(ns, mean)},
        excess=dict(out["excess"]),
    )
    if int(choice.chosen) != out["n_star"]:  # the record and the rule are the same computation
        raise RuntimeError(f"{what}: selection chose n = {choice.chosen}, the rule n* = {out['n_star']}")
    return out, choice


def n_star_without_validation(ns: Sequence[int], epsilon: float, why: str) -> dict[str, Any]:
    """`choose_n_star`'s dict when there is nothing to choose on: n* None, status ``no validation``, and
    `why` (n* is a choice and needs validation labels; the test side is never used to make it)."""
    return {
        "n_star": None,
        "status": "no validation",
        "undetermined": None,
        "note": f"n* not chosen: it is a choice and needs validation labels ({why}); the test side is not used to "
        "choose it",
        "excess": {str(int(n)): None for n in ns},
        "per_seed": [],
        "epsilon": epsilon,
        "split": None,
        "bootstrap": None,
        "interval": None,
        "rule": RULE,
    }


# ----------------------------------------------------------------------------- paired comparison
def paired_seed_difference(
    a: Sequence[float | None], b: Sequence[float | None], margin: float, level: float = 0.95, alpha: float = 0.05
) -> dict[str, Any]:
    """The paired difference a − b over seeds (a[s] and b[s] trained with the same seed, data order and
    held-out prompts; pairs with a missing side are left out), with its `level` t-interval, and an
    equivalence test within ±`margin` by two one-sided tests (TOST at `alpha`: equivalent when the
    (1 − 2·alpha) t-interval lies inside (−margin, margin)).

    Returns ``{"per_seed", "mean", "ci", "level", "tost_ci", "tost_alpha", "margin", "n", "equivalent":
    bool | None, "differs": bool | None, "verdict"}``, the verdict ``equivalent`` (TOST passes), ``lower`` /
    ``higher`` (the `level` interval excludes 0, a below b / above b), or ``not shown equivalent`` (neither;
    also with fewer than two pairs). Overlapping intervals of a and b are not evidence of equivalence.
    """
    diffs = [
        float(x) - float(y)
        for x, y in zip(a, b)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    s = t_interval(diffs, level)
    tost = t_interval(diffs, 1.0 - 2.0 * alpha)["ci"]
    out: dict[str, Any] = {
        "per_seed": diffs,
        "mean": s["mean"],
        "ci": s["ci"],
        "level": level,
        "tost_ci": tost,
        "tost_alpha": alpha,
        "margin": margin,
        "n": len(diffs),
        "equivalent": None,
        "differs": None,
        "verdict": "not shown equivalent",
    }
    if s["ci"] is None or tost is None:
        return out
    out["equivalent"] = bool(-margin < tost[0] and tost[1] < margin)
    out["differs"] = bool(s["ci"][1] < 0 or s["ci"][0] > 0)
    if out["equivalent"]:
        out["verdict"] = "equivalent"
    elif out["differs"]:
        out["verdict"] = "lower" if s["ci"][1] < 0 else "higher"
    return out


# ----------------------------------------------------------------------------- training curves
def flattening(curve: Sequence[Sequence[float | None]], max_steps: int, tolerance: float) -> dict[str, Any]:
    """Whether a training run's monitor loss curve (validation, or held-out) had flattened by the end of its
    step budget.

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
    """Two panels on a log-n axis: test (held-out) loss L(n) and Spearman(n) with MC, for each kind — the
    mean over seeds with its 95% interval, every seed as a faint dot, the validation curve n* is chosen on
    as a dotted line, n* as a dashed line, and the LoRA run at matched trainable parameters as a diamond at
    its parameter-equivalent number of tokens. Returns `path`."""
    from .report import _plt, save_figure

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
            ax.plot(xs, mean, "o-", color=c, label=f"{kind}: soft prompt (test)")
            ax.fill_between(xs, lo, hi, color=c, alpha=0.15, lw=0)
            val = [ks["curve"][str(n)].get(f"validation_{metric}") or {} for n in ns]
            if any(v.get("mean") is not None for v in val):  # the curve n* is chosen on
                vmean = [v["mean"] if v.get("mean") is not None else np.nan for v in val]
                ax.plot(xs, vmean, "s:", color=c, ms=4, alpha=0.8, label=f"{kind}: validation (chooses n*)")
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
    for ax, label in zip(axes, ("loss L(n)", "Spearman with MC")):
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
    axes[0].set_title(f"L(n), ε = {summary['epsilon']:g} (n* chosen on validation)")
    axes[1].set_title("Spearman(n)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


# -------------------------------------------------------------------------------------- report
def _f(v: Any, d: int = 3) -> str:
    return fixed(v, d, none="—")  # a missing number in this section: an em dash


def _ci(s: dict[str, Any], d: int = 3) -> str:
    return with_ci(s["mean"], s["ci"], d, none="—")


def saturation_words(ks: dict[str, Any], epsilon: float, max_n: int) -> str:
    """Sentences on n*: where the validation loss saturates (or why n* is undetermined or not chosen), its
    uncertainty across seeds, and the test (held-out) figures at n*."""
    ns = ks["n_star"]
    status = ns.get("status")
    if status == "no validation":
        return ns["note"] + "."
    rule = f"the first n whose validation loss is within ε = {epsilon:g} of the best validation loss at any n' ≥ n"
    if ns["n_star"] is not None:
        text = f"On the validation prompts the loss saturates at n* = {ns['n_star']} soft-prompt tokens ({rule})"
    else:
        text = f"n* is undetermined ({rule}): {ns['undetermined']}"
    per_seed = ", ".join("undetermined" if n is None else str(n) for n in ns["per_seed"])
    if ns["per_seed"]:
        text += f"; each seed's own validation curve gives n* = {per_seed}"
    if ns.get("interval"):
        lo, hi = ns["interval"]
        und = (ns.get("bootstrap") or {}).get("undetermined", 0.0)
        text += (
            f"; over {ns['n_boot']} seed bootstraps n* lies in [{lo if lo is not None else 'undetermined'}, "
            f"{hi if hi is not None else 'undetermined'}] (5–95%"
            + (f"; undetermined in {und:.0%} of them)" if und else ")")
        )
    text += "."
    at = ks.get("at_n_star")
    if at:
        text += (
            f" At n* the test (held-out) loss is {_ci(at['loss'], 4)} and Spearman with MC {_ci(at['spearman'])} "
            "(means over seeds, 95% t-intervals; the test labels are read for these figures, not for the choice)."
        )
    return text


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
        + "). Test loss: the kind's training loss on "
        f"{summary['heldout_traces']} traces of the prompts each checkpoint's split holds out (test); validation loss: "
        f"the same on {summary.get('validation_traces') or 0} traces of its validation prompts, the curve n* is chosen "
        f"on. Spearman is against MC labels of {summary['spearman_prefixes']} test prefixes of "
        f"{summary['spearman_traces']} traces ({summary['split_note']}). Means over {summary['seeds']} seeds with 95% "
        "t-intervals; sd = spread across initialisations. Flattened: the training run's monitor loss (validation) "
        f"fell by ≤ {summary['flat_tolerance']:g} over the last quarter of the step budget (cells flattened / cells).",
        "",
    ]
    max_n = max(int(n) for ks in summary["kinds"].values() for n in ks["tokens"])
    for kind, ks in summary["kinds"].items():
        lines += [f"### {kind}", "", saturation_words(ks, eps, max_n), ""]
        val_sp = any(
            (ks["curve"][str(n)].get("validation_spearman") or {}).get("mean") is not None for n in ks["tokens"]
        )
        head = (
            "| n | trainable params | validation loss | L_val(n) − best later | test loss | sd (seeds) "
            "| Spearman with MC |"
        )
        rule = "|---:|---:|---|---:|---|---:|---|"
        if val_sp:
            head, rule = head + " Spearman (validation) |", rule + "---|"
        lines += [head + " sd | flattened |", rule + "---:|---:|"]
        for n in ks["tokens"]:
            row = ks["curve"][str(n)]
            flat = row["flattened"]
            vl = row.get("validation_loss") or {"mean": None, "ci": None}
            cells = [
                str(n),
                f"{row['params']:,}" if row["params"] is not None else "—",
                _ci(vl, 4),
                _f((ks["n_star"].get("excess") or {}).get(str(n)), 4),
                _ci(row["loss"], 4),
                _f(row["loss"]["sd"], 4),
                _ci(row["spearman"]),
            ]
            if val_sp:
                cells.append(_ci(row.get("validation_spearman") or {"mean": None, "ci": None}))
            cells += [_f(row["spearman"]["sd"]), f"{flat['yes']}/{flat['of']}"]
            lines.append("| " + " | ".join(cells) + " |")
        lora = ks.get("lora")
        if lora:
            flat = lora["flattened"]
            vl = lora.get("validation_loss") or {"mean": None, "ci": None}
            cells = [
                f"LoRA r={lora['lora_r']}",
                f"{lora['params']:,}",
                _ci(vl, 4),
                "",
                _ci(lora["loss"], 4),
                _f(lora["loss"]["sd"], 4),
                _ci(lora["spearman"]),
            ]
            if val_sp:
                cells.append("")
            cells += [_f(lora["spearman"]["sd"]), f"{flat['yes']}/{flat['of']}"]
            lines += ["| " + " | ".join(cells) + " |", "", lora["verdict"]]
        notes = ks.get("notes") or []
        lines += [""] + [f"- {t}" for t in notes] + ([""] if notes else [])
    if summary.get("plot"):
        lines += [f"![L(n) and Spearman(n)]({summary['plot']})", ""]
    return "\n".join(lines)
