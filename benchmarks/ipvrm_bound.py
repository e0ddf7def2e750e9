"""Why the IPVRM stays low at the quickstart's budget: what its values can express, against what it learns.

    python benchmarks/ipvrm_bound.py runs/quickstart [checkpoint=PATH]   # after make quickstart (alternatives=true)

The implicit value at prefix s_p is V(p) = β Σ_{t ≤ p} ℓ_t with ℓ_t = log π_φ(y_t|s_t) − log π_ref(y_t|s_t), read
as σ(V(p)/p) (the quickstart's mean readout) or σ(logit(base rate) + V(p)) (`readout=sum`). Since log π_φ <= 0,
every token's log-ratio is at most −log π_ref(y_t|s_t): at a token the policy writes with probability 0.999 the
value can rise by at most β·0.001, and the gradient of log π_φ(y_t) with respect to the logits, e_y − π_φ,
has norm at most √2·(1 − π_φ(y_t)), so it vanishes there too. Three measurements, on labels of validation prompts only:

- **what the form can express**: the values closest to the MC labels (least squares on the labels' logits, per
  trace) among all V with increments ℓ_t <= −log π_ref(y_t), by pool-adjacent-violators on V − β Σ c_t, and
  their Spearman with the labels: an upper bound for any IPVRM at that β and readout (1 without the constraint);
- **how saturated the policy is**: the share of written tokens with π_ref >= 0.99 and the mean 1 − π_ref(y_t);
- **what it learns**: the checkpoint's (default RUN/train_implicit/final) Spearman with MC on the validation prefixes and, when RUN holds MC labels
  of training traces (`labels_candidates`, written by `quickstart alternatives=true`), on the training prefixes it
  was trained on: if both are low, it underfits its own training data rather than failing to generalise.

Writes benchmarks/frontier/ipvrm_bound.{json,md} and ``ipvrm_bound`` in benchmarks/results.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from prefixvalue.data import load_labels, load_traces
from prefixvalue.policies import load_policy
from prefixvalue.value import load_value_model

from common import REPO, record

OUT = REPO / "benchmarks" / "frontier"
BETAS = (1.0, 10.0, 100.0)
SATURATED = 0.99  #: a written token the policy gives at least this probability


def pav_nonincreasing(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-increasing fit to `y` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for yi, wi in zip(y.tolist(), w.tolist()):
        blocks.append([yi, wi, 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.repeat([b[0] for b in blocks], [b[2] for b in blocks])


def best_values(
    logit_labels: np.ndarray, positions: np.ndarray, caps: np.ndarray, beta: float, readout: str, base_logit: float
) -> np.ndarray:
    """The implicit values' logits at `positions` closest to `logit_labels` (least squares in the readout's logit)
    with V(0) = 0 and V(p) − V(p − 1) <= β·caps[p − 1]: V − D is non-increasing (D = β Σ caps), so the fit is
    pool-adjacent-violators with V(0) pinned."""
    d = np.concatenate([[0.0], np.cumsum(beta * caps)])[positions]
    if readout == "sum":  # logit = base + V(p)
        target, weight = logit_labels - base_logit - d, np.ones(len(positions))
    else:  # logit = V(p)/p: least squares in V/p weighs V's error by 1/p²
        target, weight = positions * logit_labels - d, 1.0 / np.maximum(positions, 1) ** 2
    pinned = pav_nonincreasing(np.concatenate([[0.0], target]), np.concatenate([[1e12], weight]))[1:]
    v = pinned + d
    if readout == "sum":
        return base_logit + v
    return np.where(positions > 0, v / np.maximum(positions, 1), base_logit)


def _labelled(traces_dir: Path, labels_dir: Path) -> list[tuple[list[int], list[int], np.ndarray, np.ndarray]]:
    """(prompt ids, completion ids, labelled positions, their MC (k, n, mean) rows) of every labelled trace."""
    traces = load_traces(traces_dir)
    labels = load_labels(labels_dir, traces)
    by: dict[str, dict[int, tuple[float, float, float]]] = {}
    for t, p, k, n, m in zip(labels["trace_id"], labels["position"], labels["successes"], labels["n"], labels["mean"]):
        if n:
            by.setdefault(str(t), {})[int(p)] = (float(k), float(n), float(m))
    out = []
    for tid, prompt, completion in zip(traces["trace_id"], traces["prompt_ids"], traces["completion_ids"]):
        if str(tid) in by:
            got = by[str(tid)]
            pos = np.array(sorted(p for p in got if p <= len(completion)))
            out.append((list(prompt), list(completion), pos, np.array([got[p] for p in pos])))
    return out


def _caps(policy: Any, rows: list) -> list[np.ndarray]:
    """−log π_ref(y_t | s_t) of every written token of each row."""
    caps = []
    with torch.no_grad():
        for prompt, completion, _, _ in rows:
            logits = policy(torch.tensor([prompt + completion])).logits[0].float()
            lp = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)], -1)
            caps.append((-lp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)).double().numpy())
    return caps


def _spearman(model: Any, rows: list) -> float:
    values = model.predict([r[0] for r in rows], [r[1] for r in rows])
    pred = np.concatenate([v[r[2]] for v, r in zip(values, rows)])
    return float(spearmanr(pred, np.concatenate([r[3][:, 2] for r in rows]))[0])


def main(argv: list[str]) -> int:
    opts = dict(a.partition("=")[::2] for a in argv[1:])
    if not argv or set(opts) - {"checkpoint"}:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    run = Path(argv[0])
    torch.set_num_threads(1)
    rows = _labelled(run / "validation_traces", run / "labels_validation")
    policy, _ = load_policy(str(json.loads((run / "metrics.json").read_text())["policy"]), "float32", "cpu")
    caps = _caps(policy.eval(), rows)
    written = np.concatenate(caps)
    means = np.concatenate([r[3][:, 2] for r in rows])
    base = float(np.clip(means.mean(), 1e-3, 1 - 1e-3))
    base_logit = float(np.log(base / (1 - base)))
    bound: dict[str, dict[str, float]] = {}
    for readout in ("mean", "sum"):
        for beta in BETAS:
            fits = []
            for (_, _, pos, lab), c in zip(rows, caps):
                k, n = lab[:, 0], lab[:, 1]
                fits.append(best_values(np.log((k + 0.5) / (n - k + 0.5)), pos, c, beta, readout, base_logit))
            bound.setdefault(readout, {})[f"beta {beta:g}"] = float(spearmanr(np.concatenate(fits), means)[0])
    result: dict[str, Any] = {
        "validation_prefixes": int(len(means)),
        "validation_traces": len(rows),
        "written_tokens": int(len(written)),
        "share_saturated": float(np.mean(written <= -np.log(SATURATED))),
        "mean_one_minus_p": float(np.mean(1 - np.exp(-written))),
        "bound_spearman": bound,
    }
    ckpt = Path(opts.get("checkpoint") or run / "train_implicit" / "final")
    if ckpt.exists():
        model = load_value_model(ckpt, device="cpu")
        result["checkpoint"] = str(ckpt)
        result["beta"] = float(model.config.beta)
        result["readout"] = str(model.config.readout)
        result["fit_validation"] = _spearman(model, rows)
        train_labels = run / "labels_candidates"
        if train_labels.exists():  # on-trace MC labels of training traces: what it was trained on
            train_rows = _labelled(run / "traces", train_labels)
            result["fit_training"] = _spearman(model, train_rows)
            result["training_prefixes"] = int(sum(len(r[2]) for r in train_rows))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ipvrm_bound.json").write_text(json.dumps(result, indent=2))
    lines = [
        "What an implicit value can express on the quickstart's validation labels (Spearman with MC of the closest "
        "values whose token log-ratios respect log π_φ <= 0), and what the quickstart's IPVRM reaches.",
        "",
        f"Written tokens the policy gives >= {SATURATED}: {result['share_saturated']:.3f}; mean 1 − π_ref(y_t): "
        f"{result['mean_one_minus_p']:.4f} ({result['written_tokens']} tokens, {result['validation_traces']} traces).",
        "",
        "| readout | " + " | ".join(f"β = {b:g}" for b in BETAS) + " |",
        "|---|" + "---|" * len(BETAS),
        *(f"| {r} | " + " | ".join(f"{v:.3f}" for v in bound[r].values()) + " |" for r in bound),
    ]
    if "fit_validation" in result:
        fit = f"IPVRM ({result['checkpoint']}, β {result['beta']:g}, {result['readout']} readout): Spearman "
        fit += f"{result['fit_validation']:.3f} on the validation prefixes"
        if "fit_training" in result:
            fit += f", {result['fit_training']:.3f} on {result['training_prefixes']} labelled training prefixes"
        lines += ["", fit + "."]
    (OUT / "ipvrm_bound.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    record(
        "ipvrm_bound",
        bound["mean"].get("beta 10"),
        unit="Spearman bound, mean readout, β 10",
        **{k: v for k, v in result.items() if k != "bound_spearman"},
        bound_spearman=bound,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
