"""What decides a counterfactual token's MC value on the quickstart's task, and what a one-pass value would need.

    python benchmarks/counterfactual_bound.py runs/quickstart [model=qhead-candidates] [check=advantages_validation]

Issue 35's one-pass goal asks candidate values to rank a prefix's top-5 next tokens at Spearman >= 0.5 with MC.
The gap sits at the confident prefixes, where every candidate but the top one is a token the policy almost never
writes and its MC value is how the policy recovers from it. On `arith` (``Q:3+5*2-7=`` →
``3+5=8;8*2=6;6-7=9;A:9``, modulus 10, evaluated left to right), if the policy continued from what is written, a
wrong digit d in place of c would end right iff the rest of the chain maps d and c to the same answer (iff the product
M of the multipliers still to come has M·(d − c) ≡ 0 mod 10), and the arithmetic alone would rank the candidates.
This script measures how far that holds, on a stored `advantages` check (validation by default: nothing here reads
held-out labels), every figure from `score_check`, the `advantages` evaluator:

- **the continuation oracle**: each candidate's final answer if the chain is completed correctly from what is
  written (s ⊕ y′), 1 when it is the expected answer, 0 when not or where s ⊕ y′ cannot be read as complete steps
  and the start of one; its within-prefix Spearman with MC over all, decision and confident prefixes, and its
  advantages' balanced sign accuracy, beside the policy's probability, `model`'s values and both ceilings (MC
  against a redraw; the value ceiling);
- **the oracle's bit in front of a value**: candidates ranked by the oracle's bit, then by `model`'s value (or the
  policy's probability): what a value that knew the task's arithmetic exactly would reach;
- **where the bit flips**: among unsampled candidates at confident prefixes, the share the oracle calls right, and
  their MC mean against those it calls wrong (and how many of those the policy still finishes right).

The oracle knows the task's rules; it is a measurement, not a value model. Writes
benchmarks/frontier/counterfactual_bound.{json,md} and ``counterfactual_bound`` in benchmarks/results.json.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from prefixvalue.data import load_traces
from prefixvalue.evaluation.advantages import DECISION_TOP_PROB, score_check
from prefixvalue.formatting import with_ci
from prefixvalue.policies import load_tokenizer
from prefixvalue.tasks.arith import _OPS, _STEP, ArithTask
from prefixvalue.tasks.base import Prompt

from common import REPO, record

OUT = REPO / "benchmarks" / "frontier"
MODULUS = 10  #: the quickstart's arith modulus
#: the start of a step as written: a, operator, b, '=', c, each possibly still missing (single-digit operands)
_PARTIAL_STEP = re.compile(r"^(\d*)([+\-*]?)(\d*)(=?)(\d*)$")
_PARTIAL_FINAL = re.compile(r"^(A?)(:?)(\d*)$")


def continued_answer(prompt: str, written: str) -> int | None:
    """The final answer of `prompt`'s chain when it is completed correctly from the completion text `written`
    (each step from the operands as written, the rest from the prompt); None when `written` cannot be read as
    complete steps followed by the start of one."""
    nums, ops = ArithTask.parse_prompt(prompt)
    *done, current = written.split(";")
    acc = nums[0] % MODULUS
    for i, seg in enumerate(done):
        if i >= len(ops):
            return None  # a separator after the final answer
        m = _STEP.match(seg)
        if not m:
            return None
        acc = int(m.group(4))
    i = len(done)
    if i < len(ops):
        m = _PARTIAL_STEP.match(current)
        if not m:
            return None
        a, op, b, eq, c = m.groups()
        if (op and not a) or (b and not op) or (eq and not b) or (c and not eq):
            return None
        a_v = int(a) if a else acc
        op_v = op or ops[i]
        b_v = int(b) if b else nums[i + 1]
        acc = int(c) if c else _OPS[op_v](a_v, b_v) % MODULUS
        for op_j, b_j in zip(ops[i + 1 :], nums[i + 2 :]):
            acc = _OPS[op_j](acc, b_j) % MODULUS
        return acc
    if i == len(ops):
        m = _PARTIAL_FINAL.match(current)
        if not m or (m.group(2) and not m.group(1)) or (m.group(3) and not m.group(2)):
            return None
        return int(m.group(3)) if m.group(3) else acc
    return None


def oracle_bits(check: dict[str, np.ndarray], traces: Any, tok: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate row of `check`: the continuation oracle's bit for s ⊕ y′ (NaN where unreadable) and for s."""
    by_id = {t: i for i, t in enumerate(traces["trace_id"])}
    eos = set(tok.all_special_ids)
    task = ArithTask()
    bit, at_prefix = np.full(len(check["mc_mean"]), np.nan), np.full(len(check["mc_mean"]), np.nan)
    prefix_bits: dict[tuple[str, int], float] = {}  # one per prefix, shared by its candidates
    for r in range(len(bit)):
        tid, p, y = str(check["trace_id"][r]), int(check["position"][r]), int(check["token_id"][r])
        t = traces[by_id[tid]]
        comp, expected = t["completion_ids"], int(t["answer"])
        written = tok.decode(comp[:p], skip_special_tokens=True)
        if (tid, p) not in prefix_bits:
            ans = continued_answer(t["prompt"], written)
            prefix_bits[tid, p] = np.nan if ans is None else float(ans == expected)
        at_prefix[r] = prefix_bits[tid, p]
        if y in eos:  # the completion ends here: the task's verifier reads what is written
            bit[r] = task.verify(Prompt(t["prompt_id"], t["prompt"], t["answer"]), written).score
        else:
            ans = continued_answer(t["prompt"], tok.decode(comp[:p] + [y], skip_special_tokens=True))
            bit[r] = np.nan if ans is None else float(ans == expected)
    return bit, at_prefix


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    run = Path(argv[0])
    opts = dict(a.split("=", 1) for a in argv[1:])
    model, check_dir = opts.get("model", "qhead-candidates"), run / opts.get("check", "advantages_validation")
    check = {k: np.asarray(v) for k, v in pq.read_table(check_dir / "mc_check.parquet").to_pydict().items()}
    cfg = json.loads((check_dir / "metrics.json").read_text())["config"]
    traces = load_traces(cfg["traces"])
    bit, at_prefix = oracle_bits(check, traces, load_tokenizer(cfg["policy"] or traces[0]["model"]))
    readable = np.isfinite(bit)
    bit0, prefix0 = np.where(readable, bit, 0.0), np.nan_to_num(at_prefix)  # unreadable counts as wrong
    value, prefix_value = check[f"value_{model}"], check[f"prefix_value_{model}"]
    p_policy = np.exp(check["logprob"])
    names = {
        "oracle": "continuation oracle",
        "model": model,
        "oracle_then_model": f"oracle bit, then {model}",
        "oracle_then_policy": "oracle bit, then the policy's probability",
    }
    # lexicographic rankings: the bit first, values in [0, 1] break its ties
    check["value_oracle"], check["advantage_oracle"] = bit0, bit0 - prefix0
    check["value_model"], check["advantage_model"] = value, value - prefix_value
    check["value_oracle_then_model"] = bit0 + value / 2.0
    check["advantage_oracle_then_model"] = check["value_oracle_then_model"] - (prefix0 + prefix_value / 2.0)
    check["value_oracle_then_policy"] = bit0 + p_policy / 2.0
    check["advantage_oracle_then_policy"] = check["value_oracle_then_policy"] - prefix0
    sc = score_check(check, list(names))
    parts = ("decision", "confident")
    pid = check["prefix_id"]
    groups = [np.flatnonzero(pid == g) for g in np.unique(pid)]
    confident = np.zeros(len(pid), bool)
    for g in groups:
        confident[g] = np.exp(check["logprob"][g].max()) >= DECISION_TOP_PROB
    alt = confident & ~check["sampled"].astype(bool) & readable
    right, wrong = alt & (bit == 1), alt & (bit == 0)
    flips = {
        "unsampled_confident": int((confident & ~check["sampled"].astype(bool)).sum()),
        "share_unreadable": float(1 - alt.sum() / max(1, (confident & ~check["sampled"].astype(bool)).sum())),
        "share_oracle_right": float(bit[alt].mean()) if alt.any() else None,
        "mc_mean_oracle_right": float(check["mc_mean"][right].mean()) if right.any() else None,
        "mc_mean_oracle_wrong": float(check["mc_mean"][wrong].mean()) if wrong.any() else None,
        "share_oracle_wrong_mc_above_quarter": float((check["mc_mean"][wrong] > 0.25).mean()) if wrong.any() else None,
    }
    out = {
        "run": str(run),
        "check": str(check_dir),
        "model": model,
        "share_readable": float(readable.mean()),
        "counterfactual_flips": flips,
        "scores": {names[k]: v for k, v in sc["models"].items()},
        "policy_prob": sc["policy_prob"],
        "within_noise_ceiling": [sc["within_noise_ceiling"], sc["within_noise_ceiling_by_prefix"]],
        "within_value_ceiling": [sc["within_value_ceiling"], sc["within_value_ceiling_by_prefix"]],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "counterfactual_bound.json").write_text(json.dumps(out, indent=2))

    def cell(d: dict[str, Any] | None) -> str:
        if not d or d.get("value") is None:
            return "n/a"
        return f"{with_ci(d['value'], d.get('ci'), 3, 2)} ({d['n_prefixes']})"

    def row(label: str, whole: dict[str, Any], by: dict[str, Any], signs: dict[str, Any] | None = None) -> str:
        ba = (signs or {}).get("balanced_accuracy") or {}
        sign = "–" if not signs else cell({**ba, "n_prefixes": signs.get("n", 0)})
        return f"| {label} | {cell(whole)} | " + " | ".join(cell(by.get(k)) for k in parts) + f" | {sign} |"

    lines = [
        "# What decides a counterfactual token's MC value (arith)",
        "",
        f"`python benchmarks/counterfactual_bound.py {run}` on `{check_dir.name}` ({len(bit)} candidates of "
        f"{len(groups)} prefixes; {readable.mean():.3f} readable as complete steps and the start of one). Scored by "
        "`prefixvalue.evaluation.advantages.score_check`, the `advantages` command's evaluator.",
        "",
        "| ranks candidates within a prefix | all prefixes | decision | confident | balanced sign accuracy, "
        "unsampled (n) |",
        "|---|---|---|---|---|",
        row("policy probability", sc["policy_prob"]["within_spearman"], sc["policy_prob"]["within_by_prefix"]),
        *(
            row(names[k], e["within_spearman"], e["within_by_prefix"], e["sign_agreement_counterfactual"])
            for k, e in sc["models"].items()
        ),
        row(
            "noise ceiling: MC against a redraw of MC", sc["within_noise_ceiling"], sc["within_noise_ceiling_by_prefix"]
        ),
        row(
            "value ceiling: the true values (posterior draws)",
            sc["within_value_ceiling"],
            sc["within_value_ceiling_by_prefix"],
        ),
        "",
        f"Unsampled candidates at confident prefixes: {flips['unsampled_confident']}, "
        f"{1 - flips['share_unreadable']:.3f} readable; the oracle calls {flips['share_oracle_right']:.3f} of those "
        "right (the rest of the chain maps them to the expected answer). Their MC mean "
        f"{flips['mc_mean_oracle_right']:.3f}, against {flips['mc_mean_oracle_wrong']:.3f} for the ones it calls "
        f"wrong, {flips['share_oracle_wrong_mc_above_quarter']:.3f} of which the policy still finishes right more "
        "than a quarter of the time: it does not continue from what is written.",
    ]
    (OUT / "counterfactual_bound.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    record(
        "counterfactual_bound",
        sc["models"]["oracle"]["within_by_prefix"]["confident"]["value"],
        model=model,
        check=str(check_dir),
        unit="within-prefix Spearman at confident prefixes, continuation oracle",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
