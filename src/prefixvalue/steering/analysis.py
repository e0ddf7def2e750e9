"""Scores of value-guided sampling: accuracy per method and budget (Wilson CI over prompt × replicate trials and
a bootstrap CI over prompts), tokens per prompt against one plain sample, paired differences between methods on
the same prompts (bootstrap over prompts), SMC's effective sample size and resampling, the share of the Monte
Carlo twist's gain a learned twist captures, and the report (docs/design.md, "Values that steer").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.report import _plt, save_figure
from ..formatting import general
from ..stats import cluster_bootstrap, wilson_interval

#: the plain reference: one sample per prompt
PLAIN = "sample"


def per_prompt(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(method, budget) → prompt ids (sorted), the mean correctness per prompt over replicates, the trials'
    sum and count, tokens and twist tokens per prompt (means over replicates), and the SMC details."""
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        key = (str(r["method"]), int(r["budget"]))
        c = cells.setdefault(key, {"by_prompt": {}, "tokens": {}, "twist_tokens": {}, "details": []})
        c["by_prompt"].setdefault(r["prompt_id"], []).append(float(r["correct"]))
        c["tokens"].setdefault(r["prompt_id"], []).append(int(r["tokens"]))
        c["twist_tokens"].setdefault(r["prompt_id"], []).append(int(r.get("twist_tokens", 0)))
        if r.get("details"):
            c["details"].append(r["details"])
    out = {}
    for key, c in cells.items():
        ids = sorted(c["by_prompt"])
        out[key] = {
            "prompt_ids": ids,
            "correct": np.array([np.mean(c["by_prompt"][p]) for p in ids]),
            "trials": sum(len(v) for v in c["by_prompt"].values()),
            "successes": float(sum(sum(v) for v in c["by_prompt"].values())),
            "replicates": sorted({len(v) for v in c["by_prompt"].values()}),
            "tokens": float(np.mean([np.mean(c["tokens"][p]) for p in ids])),
            "twist_tokens": float(np.mean([np.mean(c["twist_tokens"][p]) for p in ids])),
            "details": c["details"],
        }
    return out


def _smc_summary(details: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not details or "ess_min" not in details[0]:
        return None
    return {
        "ess_mean": round(float(np.mean([d["ess_mean"] for d in details])), 3),
        "ess_min_mean": round(float(np.mean([d["ess_min"] for d in details])), 3),
        "resamples_per_prompt": round(float(np.mean([d["resamples"] for d in details])), 3),
        "rounds_mean": round(float(np.mean([d["rounds"] for d in details])), 3),
    }


def accuracy_table(
    cells: dict[tuple[str, int], dict[str, Any]], n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, dict[str, Any]]]:
    """method → budget (as text) → accuracy, CIs, tokens per prompt and their ratio to one plain sample."""
    plain = cells.get((PLAIN, 1))
    base_tokens = plain["tokens"] if plain else float("nan")
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for (method, n), c in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        acc = c["correct"]
        ci, note = cluster_bootstrap(
            lambda idx, a=acc: float(a[idx].mean()), np.arange(len(acc)), n_boot, seed, unit="prompt"
        )
        row = {
            "accuracy": round(float(acc.mean()), 4),
            "wilson": [round(x, 4) for x in wilson_interval(c["successes"], c["trials"])],
            "ci_prompts": None if ci is None else [round(x, 4) for x in ci],
            "prompts": len(acc),
            "trials": c["trials"],
            "tokens_per_prompt": round(c["tokens"], 2),
            "token_ratio": round(c["tokens"] / base_tokens, 3) if base_tokens == base_tokens and base_tokens else None,
            "twist_tokens_per_prompt": round(c["twist_tokens"], 2),
        }
        if note:
            row["note"] = note
        smc = _smc_summary(c["details"])
        if smc:
            row["smc"] = smc
        table.setdefault(method, {})[str(n)] = row
    return table


def paired(
    cells: dict[tuple[str, int], dict[str, Any]], a: str, b: str, n: int, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any] | None:
    """acc(a) − acc(b) at budget `n` (b at budget 1 when it is the plain sample) over the prompts both
    answered, with a bootstrap CI over prompts; None when either is missing."""
    ca, cb = cells.get((a, n)), cells.get((b, 1 if b == PLAIN else n))
    if ca is None or cb is None:
        return None
    common = sorted(set(ca["prompt_ids"]) & set(cb["prompt_ids"]))
    ia = {p: i for i, p in enumerate(ca["prompt_ids"])}
    ib = {p: i for i, p in enumerate(cb["prompt_ids"])}
    d = np.array([ca["correct"][ia[p]] - cb["correct"][ib[p]] for p in common])
    if len(d) == 0:
        return None
    ci, note = cluster_bootstrap(lambda idx: float(d[idx].mean()), np.arange(len(d)), n_boot, seed, unit="prompt")
    out = {
        "a": a,
        "b": b,
        "budget": n,
        "difference": round(float(d.mean()), 4),
        "prompts": len(d),
        "ci": None if ci is None else [round(x, 4) for x in ci],
    }
    if note:
        out["note"] = note
    return out


def comparisons(
    cells: dict[tuple[str, int], dict[str, Any]], twists: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """The paired differences the report shows: for each value twist and budget, SMC against best-of-N,
    majority vote, the value-weighted vote and one sample; beam search against majority vote."""
    budgets = sorted({n for _, n in cells if n > 1})
    rows = []
    for t in twists:
        for n in budgets:
            for a, b in (
                (f"smc/{t}", f"best_of_n/{t}"),
                (f"smc/{t}", "majority"),
                (f"smc/{t}", f"weighted_vote/{t}"),
                (f"smc/{t}", PLAIN),
                (f"beam/{t}", "majority"),
                (f"smc-genlm/{t}", f"smc/{t}"),
            ):
                p = paired(cells, a, b, n, n_boot, seed)
                if p is not None:
                    rows.append(p)
    return rows


def mc_gain_share(
    table: dict[str, dict[str, dict[str, Any]]], twists: Sequence[str], reference: str | None
) -> dict[str, dict[str, float | None]]:
    """For each twist and budget: (acc(smc/t) − acc(sample)) / (acc(smc/reference) − acc(sample)), the share of
    the Monte Carlo twist's gain over one sample (None where the reference gains nothing)."""
    if not reference or f"smc/{reference}" not in table or PLAIN not in table:
        return {}
    base = table[PLAIN]["1"]["accuracy"]
    out: dict[str, dict[str, float | None]] = {}
    for t in twists:
        if t == reference or f"smc/{t}" not in table:
            continue
        for n, row in table[f"smc/{t}"].items():
            ref = table[f"smc/{reference}"].get(n)
            gain = None if ref is None else ref["accuracy"] - base
            out.setdefault(t, {})[n] = (
                round((row["accuracy"] - base) / gain, 4) if gain is not None and gain > 1e-9 else None
            )
    return out


def goals(
    table: dict[str, dict[str, dict[str, Any]]],
    pairs: Sequence[dict[str, Any]],
    twists: Sequence[str],
    max_ratio: float = 8.0,
    target: float = 0.85,
) -> dict[str, Any]:
    """The issue's goals, read off the table: budgets (token ratio ≤ `max_ratio`) where SMC with a twist beats
    both best-of-N and majority vote by a paired CI above 0, and the best SMC accuracy within that budget."""
    wins: dict[str, list[int]] = {}
    best: dict[str, Any] = {"accuracy": None}
    for t in twists:
        for n, row in table.get(f"smc/{t}", {}).items():
            if row["token_ratio"] is None or row["token_ratio"] > max_ratio:
                continue
            if best["accuracy"] is None or row["accuracy"] > best["accuracy"]:
                best = {"accuracy": row["accuracy"], "twist": t, "budget": int(n), "token_ratio": row["token_ratio"]}
            beat = [
                p
                for p in pairs
                if p["a"] == f"smc/{t}" and p["budget"] == int(n) and p["b"] in (f"best_of_n/{t}", "majority")
            ]
            if len(beat) == 2 and all(p["ci"] is not None and p["ci"][0] > 0 for p in beat):
                wins.setdefault(t, []).append(int(n))
    return {
        "max_token_ratio": max_ratio,
        "smc_beats_best_of_n_and_majority": wins,
        "best_smc_within_budget": best,
        "target_accuracy": target,
        "target_reached": best["accuracy"] is not None and best["accuracy"] >= target,
    }


# --------------------------------------------------------------------------------------------- report
def _ci(row: dict[str, Any]) -> str:
    lo, hi = row["wilson"]
    return f"{row['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"


#: line style and marker of each method family in the plot (the colour is the twist's)
_FAMILY_STYLE = {"smc": ("-", "o"), "beam": ("-.", "s"), "best_of_n": (":", "^"), "weighted_vote": ("--", "v")}
_FAMILY_STYLE["smc-genlm"] = ("-", "x")


def plot(table: dict[str, dict[str, dict[str, Any]]], path: Path, reference: str | None) -> Path:
    """Accuracy against generated tokens per prompt (× one sample), one line per method: the colour says the
    twist, the line and marker the method; the Monte Carlo twist's SMC is red and dashed (its own continuation
    tokens are not on the x-axis), pass@N (the verifier's ceiling of the N samples) grey and dotted."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.5, 5))
    twists = sorted({m.split("/", 1)[1] for m in table if "/" in m} - {reference or ""})
    colours = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(twists)}
    for method, rows in sorted(table.items()):
        pts = sorted((r["token_ratio"], r["accuracy"]) for r in rows.values() if r["token_ratio"] is not None)
        if not pts:
            continue
        xs, ys = zip(*pts)
        family, _, twist = method.partition("/")
        if method == PLAIN:
            ax.scatter(xs, ys, color="black", zorder=5, label="one sample")
        elif method == "pass@n":
            ax.plot(xs, ys, ":", color="grey", label="pass@N (verifier ceiling)")
        elif method == "majority":
            ax.plot(xs, ys, "-", color="black", marker="D", ms=3, label=method)
        elif reference and twist == reference:
            ax.plot(xs, ys, "--", color="red", marker="o", ms=3, label=f"{method} (reference)")
        else:
            line, marker = _FAMILY_STYLE.get(family, ("-", "o"))
            ax.plot(xs, ys, line, color=colours.get(twist, "grey"), marker=marker, ms=4, label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per prompt (× one sample)")
    ax.set_ylabel("accuracy (verified)")
    ax.set_title("Value-guided sampling on held-out prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def render_report(steer: dict[str, Any]) -> str:
    """report.md of ``prefixvalue steer``."""
    table, budgets = steer["accuracy"], steer["budgets"]
    lines = [
        "# prefixvalue steer",
        "",
        f"{steer['prompts']['used']} {steer['split']['side']} prompts of task `{steer['task']}` "
        f"({steer['prompts']['note']}), {steer['replicates']} replicates (sampling seeds), budgets N = "
        f"{', '.join(map(str, budgets))} (particles, samples or beam width × expansions). One plain sample "
        f"generates {table.get(PLAIN, {}).get('1', {}).get('tokens_per_prompt', float('nan')):.1f} tokens per prompt.",
        "",
        "## Accuracy (Wilson 95% CI over prompt × replicate trials) and tokens",
        "",
        "| method | " + " | ".join(f"N={n}" for n in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for method, rows in sorted(table.items()):
        cells = []
        for n in budgets:
            r = rows.get(str(n))
            cells.append("" if r is None else f"{_ci(r)} · {general(r['token_ratio'])}×")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each cell: accuracy [CI] · generated tokens per prompt as a multiple of one sample's. "
        "The Monte Carlo twist's own continuations are not in that multiple; they are below. `pass@n`: one of the N "
        "samples is correct (it reads the verifier: the ceiling of majority, best-of-N and the weighted votes, not "
        "a method).",
        "",
    ]
    mc = [(m, n, r) for m, rows in table.items() for n, r in rows.items() if r["twist_tokens_per_prompt"]]
    if mc:
        lines += ["| method | N | twist tokens per prompt (× one sample) |", "|---|---|---|"]
        base = table.get(PLAIN, {}).get("1", {}).get("tokens_per_prompt") or float("nan")
        for m, n, r in mc:
            lines.append(
                f"| {m} | {n} | {r['twist_tokens_per_prompt']:.0f} ({r['twist_tokens_per_prompt'] / base:.1f}×) |"
            )
        lines.append("")
    lines += [
        "## Paired differences (same prompts; 95% bootstrap CI over prompts)",
        "",
        "| a − b | N | difference | CI |",
        "|---|---|---|---|",
    ]
    for p in steer["paired"]:
        ci = "n/a" if p["ci"] is None else f"[{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]"
        lines.append(f"| {p['a']} − {p['b']} | {p['budget']} | {p['difference']:+.3f} | {ci} |")
    smc_rows = [(m, n, r["smc"]) for m, rows in table.items() for n, r in rows.items() if r.get("smc")]
    if smc_rows:
        lines += [
            "",
            "## SMC: effective sample size and resampling",
            "",
            "| method | N | mean ESS | mean of min ESS | resamples per prompt | rounds |",
            "|---|---|---|---|---|---|",
        ]
        for m, n, s in smc_rows:
            lines.append(
                f"| {m} | {n} | {s['ess_mean']:.2f} | {s['ess_min_mean']:.2f} | "
                f"{s['resamples_per_prompt']:.2f} | {s['rounds_mean']:.1f} |"
            )
    if steer.get("mc_gain_share"):
        lines += [
            "",
            f"## Share of the Monte Carlo twist's gain over one sample (smc/{steer['mc_reference']})",
            "",
            "| twist | " + " | ".join(f"N={n}" for n in budgets if n > 1) + " |",
            "|---|" + "---|" * len([n for n in budgets if n > 1]),
        ]
        for t, row in steer["mc_gain_share"].items():
            lines.append(
                f"| {t} | "
                + " | ".join("" if row.get(str(n)) is None else f"{row[str(n)]:.2f}" for n in budgets if n > 1)
                + " |"
            )
    g = steer["goals"]
    b = g["best_smc_within_budget"]
    lines += ["", "## Goals", ""]
    wins = g["smc_beats_best_of_n_and_majority"]
    lines.append(
        "- SMC beats best-of-N and majority vote (paired CI above 0) at: "
        + (
            "; ".join(f"{t}: N = {', '.join(map(str, ns))}" for t, ns in wins.items())
            if wins
            else f"no budget within {general(g['max_token_ratio'])}× one sample's tokens"
        )
    )
    if b.get("accuracy") is not None:
        lines.append(
            f"- Best SMC accuracy within {general(g['max_token_ratio'])}× tokens: {b['accuracy']:.3f} "
            f"(twist {b['twist']}, N = {b['budget']}, {general(b['token_ratio'])}×); target "
            f"{g['target_accuracy']}: {'reached' if g['target_reached'] else 'not reached'}."
        )
    if steer.get("limits"):
        lines += ["", "What limits it:", ""] + [f"- {x}" for x in steer["limits"]]
    if steer.get("seconds_per_method"):
        lines += [
            "",
            "## Wall clock (seconds, all replicates; the values' forward passes included)",
            "",
            "| unit | " + " | ".join(f"N={n}" for n in budgets) + " |",
            "|---|" + "---|" * len(budgets),
        ]
        for unit, row in steer["seconds_per_method"].items():
            name = "samples (majority, best-of-N, weighted vote)" if unit == "iid" else unit
            cells = [f"{row[str(n)]:.1f}" if str(n) in row else "" for n in budgets]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Wall clock: {steer['seconds']:.0f} s; generated tokens {steer['generated_tokens']:,}, "
        f"Monte Carlo twist tokens {steer['twist_tokens']:,}. Plot: accuracy_vs_tokens.png.",
        "",
    ]
    return "\n".join(lines)


def limits(table: dict[str, dict[str, dict[str, Any]]], twists: Sequence[str], reference: str | None) -> list[str]:
    """Plain-language reading of what limits SMC: the learned twist against the MC twist at the same N (twist
    quality), the MC twist's own curve over N (particle count), and the resampling rate."""
    out = []
    if reference and f"smc/{reference}" in table:
        ref = table[f"smc/{reference}"]
        ns = sorted(ref, key=int)
        out.append(
            f"particle count: with the Monte Carlo twist, SMC goes from {ref[ns[0]]['accuracy']:.3f} at N = "
            f"{ns[0]} to {ref[ns[-1]]['accuracy']:.3f} at N = {ns[-1]}"
        )
        for t in twists:
            rows = table.get(f"smc/{t}")
            if t == reference or not rows:
                continue
            gaps = [f"N={n}: {ref[n]['accuracy'] - rows[n]['accuracy']:+.3f}" for n in ns if n in rows]
            out.append(f"twist quality ({t}): the MC twist's accuracy minus {t}'s at the same N: " + ", ".join(gaps))
    for t in twists:
        rows = table.get(f"smc/{t}", {})
        rs = [(n, r["smc"]["resamples_per_prompt"], r["smc"]["rounds_mean"]) for n, r in rows.items() if r.get("smc")]
        if rs:
            out.append(
                f"resampling ({t}): " + ", ".join(f"N={n}: {a:.1f} resamples over {b:.1f} rounds" for n, a, b in rs)
            )
    return out


__all__ = [
    "PLAIN",
    "accuracy_table",
    "comparisons",
    "goals",
    "limits",
    "mc_gain_share",
    "paired",
    "per_prompt",
    "plot",
    "render_report",
]
