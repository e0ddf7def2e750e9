"""Counterfactual token values and TD advantages, checked against Monte Carlo (docs/design.md, "Values of
alternatives").

At every prefix s_p of a trace (p = 0..T−1 completion tokens) the candidates are the policy's top-k next
tokens plus the token the trace sampled. For each candidate y' and value model:

- value V(s_p ⊕ y') and TD advantage A(s_p, y') = V(s_p ⊕ y') − V(s_p), both in probability units;
- every model through `ValueModel.token_candidate_values`, with what it cost (`candidate_cost`): one forward pass
  per trace for the kinds with one-pass values (the implicit model, V_φ(s ⊕ y') = V_φ(s) + β·[log π_φ(y'|s) −
  log π_ref(y'|s)], read out as trained; the Q-head, Q(s, y')), one sequence s_p ⊕ y' per candidate for the head,
  its value read at the last position;
- `consistency`: the model's value of the sampled candidate against its own value of the next prefix.

`mc_check` labels s_p and s_p ⊕ y' by Monte Carlo for a sample of prefixes (forking tokens first) and
`score_check` compares: Spearman of the candidates' values within a prefix, and the sign of the advantages
against the MC sign (`sign_scores`), each for the sampled tokens and the counterfactual (unsampled) ones apart.
Sign agreement alone flatters: most unsampled tokens are worse than their prefix, so the constant guess
"always negative" agrees with MC for most of them. Every agreement therefore comes with that majority-sign base
rate, the agreement's excess over it, balanced accuracy (mean per-sign recall) and the AUROC of A for the MC
sign, the last two 0.5 for any constant guess, with bootstrap CIs over prompts. Each model's entry names the
checkpoint it was read from.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.collate import collated_batches
from ..formatting import fixed, interval
from ..sampling.mc import MCLabeller, TraceRef
from ..tracking import jsonable
from .metrics import _spearman_raw, auroc, cluster_bootstrap, constant_note, correlation, ece, wilson_interval

#: a decision prefix: the policy's most likely next token has probability below this (elsewhere every candidate but
#: the top one is a token the policy almost never writes, and its MC value says how the policy recovers from it)
DECISION_TOP_PROB = 0.9
#: redraws per prefix of the within-prefix noise ceiling (`within_noise_ceiling`)
CEILING_REPLICATES = 50
#: the value ceiling's prior on each candidate's success probability, Beta(a, a) (Jeffreys: a = 0.5)
VALUE_CEILING_PRIOR = 0.5

#: columns of the advantages dataset (advantages.parquet), in order; per value model <m> four more columns
COLUMNS: dict[str, str] = {
    "prefix_id": "'<trace_id>@<position>': one prefix s_p",
    "trace_id": "the trace the prefix comes from",
    "prompt_id": "its prompt",
    "position": "p, completion tokens in the prefix (the candidate is completion token p + 1)",
    "token_id": "candidate next token y'",
    "token": "its text (tokenizer.decode)",
    "sampled": "y' is the token the trace wrote at this position",
    "rank": "rank of y' under the policy at s_p (0 = most likely)",
    "prob": "π(y' | s_p) under the policy (temperature 1)",
    "logprob": "log π(y' | s_p), nats",
}
#: one more column when a compared model reads a checker (docs/design.md, "Checker features"): the checker's own ranking
#: of the candidates, the baseline a value that reads it has to beat
CHECKER_COLUMNS: dict[str, str] = {
    "checker_logprob": "log π_checker(y' | s_p), nats, under the checker model a compared value model reads",
}
MODEL_COLUMNS: dict[str, str] = {
    "value_{m}": "V(s_p ⊕ y') of value model m, P̂ in [0, 1]",
    "prefix_value_{m}": "V(s_p) of model m",
    "advantage_{m}": "TD advantage V(s_p ⊕ y') − V(s_p) of model m",
    "log_ratio_{m}": "implicit models only: log π_φ(y'|s_p) − log π_ref(y'|s_p) (NaN for other kinds)",
}


@dataclass
class TraceInput:
    """What the advantages need of one trace."""

    trace_id: str
    prompt_id: str
    prompt_ids: list[int]
    completion_ids: list[int]


# --------------------------------------------------------------------------------- candidates
@torch.no_grad()
def policy_candidates(
    policy: Any, traces: Sequence[TraceInput], top_k: int, batch_size: int = 8
) -> list[dict[str, np.ndarray]]:
    """Per trace, per prefix p = 0..T−1: the policy's top-`top_k` tokens plus the sampled one.

    Returns per trace a dict of flat arrays over (position, candidate): ``position``, ``token_id``,
    ``sampled``, ``rank``, ``logprob``. Candidates of one prefix are the top-k in rank order, then the
    sampled token when it is not among them."""
    device = next(policy.parameters()).device
    out: list[dict[str, np.ndarray]] = []
    prompts, comps = [t.prompt_ids for t in traces], [t.completion_ids for t in traces]
    for b0, batch in collated_batches(prompts, comps, batch_size, device):
        chunk = traces[b0 : b0 + batch_size]
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for r, t in enumerate(chunk):
            p0, n = len(t.prompt_ids), len(t.completion_ids)
            lp = torch.log_softmax(logits[r, p0 - 1 : p0 - 1 + n].float(), dim=-1)
            k = min(top_k, lp.shape[1])
            top_lp, top = lp.topk(k, dim=-1)  # [T, k], most likely first
            written = torch.tensor(t.completion_ids, device=lp.device)
            # rank of the written token: how many tokens are strictly more likely (no full sort of the vocabulary)
            own = lp.gather(1, written[:, None])
            own_rank = (lp > own).sum(1).cpu()
            top, top_lp, own = top.cpu(), top_lp.double().cpu(), own[:, 0].double().cpu()
            pos, tok, samp, rank, logp = [], [], [], [], []
            for p in range(n):
                y = int(t.completion_ids[p])
                cands = top[p].tolist()
                if y not in cands:
                    cands.append(y)
                for j, c in enumerate(cands):
                    pos.append(p)
                    tok.append(c)
                    samp.append(c == y)
                    rank.append(int(own_rank[p]) if c == y else j)
                    logp.append(float(own[p]) if c == y else float(top_lp[p, j]))
            out.append(
                {
                    "position": np.array(pos, dtype=np.int64),
                    "token_id": np.array(tok, dtype=np.int64),
                    "sampled": np.array(samp, dtype=bool),
                    "rank": np.array(rank, dtype=np.int64),
                    "logprob": np.array(logp, dtype=np.float64),
                }
            )
    return out


@torch.no_grad()
def candidate_logprobs(
    lm: Any, traces: Sequence[TraceInput], cands: Sequence[dict[str, np.ndarray]], batch_size: int = 8
) -> list[np.ndarray]:
    """log lm(y' | s_p) of every candidate of `cands` (per trace, aligned with its ``token_id``), one forward pass
    per trace: what another model than the policy (a checker) makes of the same candidates."""
    device = next(lm.parameters()).device
    out: list[np.ndarray] = []
    prompts, comps = [t.prompt_ids for t in traces], [t.completion_ids for t in traces]
    for b0, batch in collated_batches(prompts, comps, batch_size, device):
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        for r, (t, c) in enumerate(zip(traces[b0 : b0 + batch_size], cands[b0 : b0 + batch_size])):
            rows = torch.as_tensor(len(t.prompt_ids) - 1 + c["position"], device=logits.device)
            lp = torch.log_softmax(logits[r, rows].float(), dim=-1)
            out.append(
                lp.gather(1, torch.as_tensor(c["token_id"], device=lp.device)[:, None])[:, 0].double().cpu().numpy()
            )
    return out


# ----------------------------------------------------------------------------- model values
def implicit_candidate_values(
    model: Any, traces: Sequence[TraceInput], cands: Sequence[dict[str, np.ndarray]], batch_size: int = 8
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(values, log-ratios) of every candidate of `cands` under an implicit model, from one forward pass
    per trace (`counterfactual_values` with the trace's candidate tokens as the fixed candidate list)."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for b0 in range(0, len(traces), batch_size):
        chunk = list(range(b0, min(b0 + batch_size, len(traces))))
        vocab = sorted({int(x) for i in chunk for x in cands[i]["token_id"]})
        col = {v: j for j, v in enumerate(vocab)}
        cf = model.counterfactual_values(
            [traces[i].prompt_ids for i in chunk],
            [traces[i].completion_ids for i in chunk],
            candidate_ids=vocab,
            batch_size=batch_size,
        )
        for i, c in zip(chunk, cf):
            j = np.array([col[int(x)] for x in cands[i]["token_id"]], dtype=np.int64)
            p = cands[i]["position"]
            out.append((c.values[p, j], c.log_ratios[p, j]))
    return out


def model_candidate_values(
    model: Any, traces: Sequence[TraceInput], cands: Sequence[dict[str, np.ndarray]], batch_size: int = 32
) -> list[np.ndarray]:
    """Value of every candidate through the model's own API (`ValueModel.token_candidate_values`): one forward
    pass per trace for kinds with one-pass values, one sequence s_p ⊕ y' per candidate otherwise."""
    return model.token_candidate_values(
        [t.prompt_ids for t in traces],
        [t.completion_ids for t in traces],
        [c["position"] for c in cands],
        [c["token_id"] for c in cands],
        batch_size=batch_size,
    )


def candidate_cost(
    traces: Sequence[TraceInput], cands: Sequence[dict[str, np.ndarray]], one_pass: bool, passes: int = 1
) -> dict[str, Any]:
    """What valuing every candidate costs a value model: sequences run and tokens in them, each token counted once
    per forward pass the model runs over a sequence (`passes`: its ``forward_passes``, e.g. 2 with the reference
    policy beside an adapted backbone, an ensemble's members together). One pass: the trace itself, once
    (prompt ⊕ completion); otherwise one sequence prompt ⊕ s_p ⊕ y' per candidate."""
    if one_pass:
        tokens = sum(len(t.prompt_ids) + len(t.completion_ids) for t in traces)
        return {"one_pass": True, "sequences": len(traces), "passes": passes, "tokens": int(tokens) * passes}
    tokens = sum(int(np.sum(len(t.prompt_ids) + c["position"] + 1)) for t, c in zip(traces, cands))
    sequences = int(sum(len(c["token_id"]) for c in cands))
    return {"one_pass": False, "sequences": sequences, "passes": passes, "tokens": int(tokens) * passes}


def consistency(table: dict[str, np.ndarray], name: str) -> dict[str, Any]:
    """How far model `name`'s value of the sampled candidate, V(s_p ⊕ y_{p+1}) (for a Q-head: Q(s_p, y_{p+1})),
    agrees with its value of the next prefix, V(s_{p+1}), over every prefix whose next one is not the last:
    mean |difference| and Pearson r. A head and the implicit model agree by construction; a Q-head's aggregate
    V(s) = Σ π Q(s, ·) does only as far as training made it."""
    nxt = {
        (t, int(p)): v
        for t, p, v, s in zip(table["trace_id"], table["position"], table[f"prefix_value_{name}"], table["sampled"])
        if s
    }
    q, v = [], []
    for t, p, val, s in zip(table["trace_id"], table["position"], table[f"value_{name}"], table["sampled"]):
        if s and (t, int(p) + 1) in nxt:
            q.append(float(val))
            v.append(float(nxt[(t, int(p) + 1)]))
    if len(q) < 2:
        return {"n": len(q), "mean_abs_difference": None, "pearson": None}
    qa, va = np.array(q), np.array(v)
    r = float(np.corrcoef(qa, va)[0, 1]) if qa.std() > 0 and va.std() > 0 else None
    return {"n": len(q), "mean_abs_difference": float(np.mean(np.abs(qa - va))), "pearson": r}


def candidate_table(
    traces: Sequence[TraceInput],
    cands: Sequence[dict[str, np.ndarray]],
    models: dict[str, Any],
    tokenizer: Any = None,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """The advantages dataset as columns (`COLUMNS`, then `MODEL_COLUMNS` per model of `models`)."""
    cols: dict[str, list[Any]] = {k: [] for k in COLUMNS}
    for t, c in zip(traces, cands):
        n = len(c["token_id"])
        cols["prefix_id"] += [f"{t.trace_id}@{p}" for p in c["position"].tolist()]
        cols["trace_id"] += [t.trace_id] * n
        cols["prompt_id"] += [t.prompt_id] * n
        cols["position"] += c["position"].tolist()
        cols["token_id"] += c["token_id"].tolist()
        cols["token"] += [tokenizer.decode([y]) if tokenizer is not None else str(y) for y in c["token_id"].tolist()]
        cols["sampled"] += c["sampled"].tolist()
        cols["rank"] += c["rank"].tolist()
        cols["prob"] += np.exp(c["logprob"]).tolist()
        cols["logprob"] += c["logprob"].tolist()
    table: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in cols.items()}
    for name, model in models.items():
        prefix_vals = model.predict([t.prompt_ids for t in traces], [t.completion_ids for t in traces], batch_size)
        if hasattr(model, "counterfactual_values"):  # the implicit model: values and log-ratios, one pass
            vr = implicit_candidate_values(model, traces, cands, batch_size)
            vals = np.concatenate([v for v, _ in vr])
            ratios = np.concatenate([r for _, r in vr])
        else:  # one pass (a Q-head) or one sequence per candidate (a head), batched 4x as many sequences
            per_batch = batch_size if getattr(model, "counterfactuals", False) else batch_size * 4
            vals = np.concatenate(model_candidate_values(model, traces, cands, per_batch))
            ratios = np.full(len(vals), np.nan)
        before = np.concatenate([pv[c["position"]] for pv, c in zip(prefix_vals, cands)])
        table[f"value_{name}"] = vals
        table[f"prefix_value_{name}"] = before
        table[f"advantage_{name}"] = vals - before
        table[f"log_ratio_{name}"] = ratios
    return table


# ------------------------------------------------------------------------------------ MC check
def choose_check_prefixes(
    traces: Sequence[TraceInput],
    n_prefixes: int,
    forks: Sequence[tuple[str, int]] = (),
    seed: int = 0,
) -> list[tuple[int, int, bool]]:
    """(trace index, position, is a fork) of the prefixes to check: the forks first (trace id, position of
    the prefix before the forking token), then uniformly random (trace, position) pairs up to `n_prefixes`."""
    index = {t.trace_id: i for i, t in enumerate(traces)}
    chosen: list[tuple[int, int, bool]] = []
    seen: set[tuple[int, int]] = set()
    for tid, p in forks:
        i = index.get(tid)
        if i is not None and 0 <= p < len(traces[i].completion_ids) and (i, p) not in seen:
            chosen.append((i, p, True))
            seen.add((i, p))
    rng = random.Random(seed)
    pool = [(i, p) for i, t in enumerate(traces) for p in range(len(t.completion_ids)) if (i, p) not in seen]
    rng.shuffle(pool)
    for i, p in pool[: max(0, n_prefixes - len(chosen))]:
        chosen.append((i, p, False))
    return chosen


def forks_from_labels(
    labels: Any, count: int, min_jump: float = 0.25, trace_ids: set[str] | None = None
) -> list[tuple[str, int]]:
    """Known forking tokens from a prefix-labels dataset: per trace (of `trace_ids` when given), the
    neighbouring labelled positions (p, p + 1) whose MC means differ most (at least `min_jump`); the `count`
    largest, as (trace id, p). Only labels at neighbouring tokens count (positions=all or adaptive), so the
    forking token is known exactly: completion token p + 1."""
    by: dict[str, dict[int, float]] = {}
    for tid, p, m in zip(labels["trace_id"], labels["position"], labels["mean"]):
        if trace_ids is not None and tid not in trace_ids:
            continue
        by.setdefault(tid, {})[int(p)] = float(m)
    best: list[tuple[float, str, int]] = []
    for tid, d in by.items():
        jumps = [(abs(d[p + 1] - d[p]), p) for p in d if p + 1 in d]
        if jumps:
            j, p = max(jumps)
            if j >= min_jump:
                best.append((j, tid, p))
    best.sort(key=lambda x: (-x[0], x[1], x[2]))
    return [(tid, p) for _, tid, p in best[:count]]


def mc_check(
    labeller: MCLabeller,
    refs: dict[str, TraceRef],
    traces: Sequence[TraceInput],
    table: dict[str, np.ndarray],
    chosen: Sequence[tuple[int, int, bool]],
    samples: int,
    eos_ids: Sequence[int],
) -> dict[str, np.ndarray]:
    """Monte Carlo Ẑ of every chosen prefix s_p and of each of its candidates s_p ⊕ y' (`samples`
    continuations each; an EOS candidate ends the completion, so its value is the verifier's score of it).
    Returns the rows of `table` for the chosen prefixes, with ``mc_mean``, ``mc_ci_low``, ``mc_ci_high``,
    ``mc_n``, ``mc_successes``, ``mc_prefix`` (Ẑ(s_p)) with its Wilson CI (``mc_prefix_ci_low``,
    ``mc_prefix_ci_high``), ``mc_advantage`` and ``fork``."""
    rows = {(traces[i].trace_id, p): f for i, p, f in chosen}
    key = list(zip(table["trace_id"].tolist(), table["position"].tolist()))
    sel = np.array([k in rows for k in key], dtype=bool)
    idx = np.flatnonzero(sel)
    by_trace: dict[str, list[int]] = {}
    for r in idx.tolist():
        by_trace.setdefault(str(table["trace_id"][r]), []).append(r)
    cand_refs = [refs[tid] for tid in by_trace]
    cand_est = labeller.candidates(
        cand_refs,
        [[int(table["position"][r]) for r in rs] for rs in by_trace.values()],
        [[int(table["token_id"][r]) for r in rs] for rs in by_trace.values()],
        samples,
        eos_ids,
        method="counterfactual",
    )
    owners = [r for rs in by_trace.values() for r in rs]
    prefix_rows = sorted({(traces[i].trace_id, p) for i, p, _ in chosen})
    prefix_est = labeller.uniform([refs[tid] for tid, _ in prefix_rows], [[p] for _, p in prefix_rows], samples)
    prefix_mc = {k: e for k, e in zip(prefix_rows, prefix_est)}
    out = {k: v[idx] for k, v in table.items()}
    mean = np.zeros(len(idx))
    lo, hi, n, succ = np.zeros(len(idx)), np.zeros(len(idx)), np.zeros(len(idx), dtype=np.int64), np.zeros(len(idx))
    pos_of = {r: j for j, r in enumerate(idx.tolist())}
    for r, e in zip(owners, cand_est):
        j = pos_of[r]
        mean[j], lo[j], hi[j], n[j], succ[j] = e.mean, e.ci_low, e.ci_high, e.n, e.successes
    out["mc_mean"], out["mc_ci_low"], out["mc_ci_high"], out["mc_n"], out["mc_successes"] = mean, lo, hi, n, succ
    at = [prefix_mc[(t, int(p))] for t, p in zip(out["trace_id"], out["position"])]
    out["mc_prefix"] = np.array([e.mean for e in at])
    out["mc_prefix_ci_low"], out["mc_prefix_ci_high"] = (
        np.array([e.ci_low for e in at]),
        np.array([e.ci_high for e in at]),
    )
    out["mc_advantage"] = out["mc_mean"] - out["mc_prefix"]
    out["fork"] = np.array([rows[(t, int(p))] for t, p in zip(out["trace_id"], out["position"])], dtype=bool)
    return out


#: the clear-sign rule of a check written without the prefix's interval (`clear_sign`)
POINT_RULE = "the candidate's interval excludes the prefix's mean"


def clear_sign(check: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """Which candidates of `check` have a clear MC sign, and the rule used. With the prefix's own interval
    (``mc_prefix_ci_low``/``_high``), Newcombe's interval for the difference of the two MC means (hybrid Wilson
    score, both estimates' noise counted) must exclude 0; a check written without it falls back to the candidate's
    Wilson interval excluding the prefix's point estimate, which counts the prefix's noise as signal."""
    pc, ps = check["mc_mean"], check["mc_prefix"]
    if "mc_prefix_ci_low" not in check:
        return (check["mc_ci_low"] > ps) | (
            check["mc_ci_high"] < ps
        ), "the candidate's interval excludes the prefix's mean"
    d = pc - ps
    low = d - np.sqrt((pc - check["mc_ci_low"]) ** 2 + (check["mc_prefix_ci_high"] - ps) ** 2)
    high = d + np.sqrt((check["mc_ci_high"] - pc) ** 2 + (ps - check["mc_prefix_ci_low"]) ** 2)
    return (low > 0) | (high < 0), "Newcombe interval of the difference excludes 0"


def sign_scores(
    model_adv: np.ndarray,
    mc_adv: np.ndarray,
    clear: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    unit: str = "prompt",
) -> dict[str, Any]:
    """How well the sign of a model's advantage matches the MC sign, over the candidates where the MC sign is
    clear (`clear`) and the model's advantage is finite. Returns a dict:

    - ``value``, ``ci``, ``n``: sign agreement (share with the MC sign; an advantage of exactly 0 agrees with
      neither) and its Wilson CI, as before;
    - ``n_positive``, ``n_negative``: candidates whose MC advantage is > 0 and < 0;
    - ``base_rate``: ``{"value", "ci", "sign"}``, the agreement of the constant majority-sign guess ("always
      negative" when most are worse than their prefix), Wilson CI;
    - ``excess_over_base_rate``: ``{"value", "ci"}``, agreement minus that base rate, paired bootstrap CI;
    - ``balanced_accuracy``: ``{"value", "ci", "recall_positive", "recall_negative"}``, the mean of the share of
      MC-positive candidates with A > 0 and of MC-negative ones with A < 0 (0.5 for any constant sign);
    - ``auroc``: ``{"value", "ci"}``, AUROC of A for the MC sign being positive (0.5 for a constant A);
    - ``unit``: the bootstrap's resampling unit (`groups`, one per candidate: prompts in `score_check`; each
      candidate its own group when None).

    Values are None (with ``note``) when there is no candidate or a measure needs both MC signs and one is
    absent; a CI is None when the bootstrap cannot give one (one group, ``n_boot`` = 0)."""
    m = clear & np.isfinite(model_adv)
    x = model_adv[m]
    a, s = np.sign(x), np.sign(mc_adv[m])
    g = (np.arange(len(model_adv)) if groups is None else np.asarray(groups))[m]
    n, n_pos, n_neg = int(m.sum()), int((s > 0).sum()), int((s < 0).sum())
    k = int(np.sum(a == s))
    none = {"value": None, "ci": None}
    out: dict[str, Any] = {
        "value": k / n if n else None,
        "ci": list(wilson_interval(k, n)) if n else None,
        "n": n,
        "n_positive": n_pos,
        "n_negative": n_neg,
        "base_rate": {**none, "sign": None},
        "excess_over_base_rate": dict(none),
        "balanced_accuracy": {**none, "recall_positive": None, "recall_negative": None},
        "auroc": dict(none),
        "unit": unit if groups is not None else "candidate",
    }
    if not n:
        out["note"] = "no candidate with a clear MC sign"
        return out
    major = -1.0 if n_neg >= n_pos else 1.0  # the constant guess; ties: "worse than the prefix"
    k_major = n_neg if major < 0 else n_pos
    out["base_rate"] = {
        "value": k_major / n,
        "ci": list(wilson_interval(k_major, n)),
        "sign": "negative" if major < 0 else "positive",
    }

    def excess(i: np.ndarray) -> float:
        return float(np.mean(a[i] == s[i]) - np.mean(s[i] == major))

    def balanced(i: np.ndarray) -> float:
        pos, neg = s[i] > 0, s[i] < 0
        if not pos.any() or not neg.any():
            return math.nan
        return float((np.mean(a[i][pos] > 0) + np.mean(a[i][neg] < 0)) / 2)

    def area(i: np.ndarray) -> float:
        v, _ = auroc(x[i], (s[i] > 0).astype(float))
        return math.nan if v is None else float(v)

    def boot(fn: Any) -> list[float] | None:
        ci, _ = cluster_bootstrap(fn, g, n_boot, seed, unit=out["unit"])
        return ci

    idx = np.arange(n)
    out["excess_over_base_rate"] = {"value": excess(idx), "ci": boot(excess)}
    if n_pos and n_neg:
        out["balanced_accuracy"] = {
            "value": balanced(idx),
            "ci": boot(balanced),
            "recall_positive": float(np.mean(a[s > 0] > 0)),
            "recall_negative": float(np.mean(a[s < 0] < 0)),
        }
        out["auroc"] = {"value": area(idx), "ci": boot(area)}
    else:
        out["note"] = (
            f"balanced accuracy and AUROC undefined: every one of the {n} clear-sign candidates has MC sign "
            f"{out['base_rate']['sign']}"
        )
    return out


def within_noise_ceiling(
    check: dict[str, np.ndarray], groups: Sequence[np.ndarray], replicates: int = CEILING_REPLICATES, seed: int = 0
) -> dict[str, Any]:
    """The within-prefix Spearman that MC labels of this size allow: per prefix (≥ 3 candidates, MC values not all
    equal), the mean Spearman between two independent binomial redraws of its candidates' MC values (n = each
    candidate's ``mc_n``, p = its MC mean; terminal candidates, n = 0, keep their exact score), averaged over
    prefixes; a plug-in ceiling, the same rule as the prefix-level one."""
    return _ceiling_summary(_ceiling_per_prefix(check, groups, replicates, seed), replicates)


def _ceiling_per_prefix(
    check: dict[str, np.ndarray], groups: Sequence[np.ndarray], replicates: int, seed: int, rule: str = "redraw"
) -> np.ndarray | None:
    """Per-prefix means [len(groups)] of a within-prefix ceiling, NaN where none was drawn; None without ``mc_n``.

    - ``redraw`` (`within_noise_ceiling`): the Spearman between two binomial redraws of the candidates' MC values
      (n = ``mc_n``, p = the MC mean): how well MC labels of this size agree with each other. A candidate with no
      successes redraws to 0 every time, so tied MC zeros stay tied in both redraws.
    - ``value``: the Spearman of a continuous value equal to the candidates' true success probabilities with the MC
      labels themselves, the truth drawn from each candidate's posterior Beta(successes + a, failures + a)
      (a = `VALUE_CEILING_PRIOR`): an estimate of what a perfect value reaches against these labels. Below the
      redraw ceiling where MC ties (many candidates with 0 of 32 successes): true values differ, and a value that
      orders them cannot match a tie. The priors are independent (no shrinkage across a prefix's candidates), so
      where true values cluster it credits differences MC cannot resolve. Terminal candidates (n = 0) keep their
      exact score in both rules."""
    if "mc_n" not in check:  # a check without sample counts (hand-made): no ceiling to draw
        return None
    if rule not in ("redraw", "value"):
        raise ValueError(f"ceiling rule must be 'redraw' or 'value', got {rule!r}")
    rng = np.random.default_rng(seed)
    mc, n = check["mc_mean"], np.asarray(check["mc_n"]).astype(np.int64)
    succ = np.asarray(check["mc_successes"], dtype=float) if "mc_successes" in check else mc * n
    fails = np.maximum(n - succ, 0.0)
    per_prefix = np.full(len(groups), np.nan)
    for i, g in enumerate(groups):
        if len(g) < 3 or constant_note(mc[g], "mc"):
            continue
        reps = []
        for _ in range(replicates):
            if rule == "redraw":
                a, b = (np.where(n[g] > 0, rng.binomial(n[g], mc[g]) / np.maximum(n[g], 1), mc[g]) for _ in range(2))
            else:
                prior = VALUE_CEILING_PRIOR
                a = np.where(n[g] > 0, rng.beta(succ[g] + prior, fails[g] + prior), mc[g])
                b = mc[g]
            if not constant_note(a, "a") and not constant_note(b, "b"):
                reps.append(_spearman_raw(a, b))
        reps = [r for r in reps if math.isfinite(r)]
        if reps:
            per_prefix[i] = float(np.mean(reps))
    return per_prefix


def _ceiling_summary(per_prefix: np.ndarray | None, replicates: int, keep: np.ndarray | None = None) -> dict[str, Any]:
    """The mean of `per_prefix` (`_ceiling_per_prefix`) over the prefixes `keep` (default all) that have one."""
    if per_prefix is None:
        return {"value": None, "n_prefixes": 0, "replicates": replicates}
    drawn = np.isfinite(per_prefix)
    v = per_prefix[drawn if keep is None else drawn & keep]
    return {"value": float(v.mean()) if len(v) else None, "n_prefixes": len(v), "replicates": replicates}


def score_check(
    check: dict[str, np.ndarray],
    models: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    checkpoints: dict[str, str] | None = None,
    kinds: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Per model: within-prefix Spearman of candidate values vs MC (averaged over prefixes with ≥ 3
    candidates and non-constant values; bootstrap CI over prefixes), calibration of the counterfactual
    candidates' values against their MC means (Brier against the MC mean, ECE), pooled Spearman of
    values over counterfactual and over sampled candidates (cluster bootstrap by prefix), and the sign of the
    advantage against the MC advantage over candidates with a clear MC sign (`clear_sign`; `sign_scores`:
    agreement beside the majority-sign base rate, balanced accuracy and AUROC; bootstrap over prompts, over
    prefixes when `check` has no ``prompt_id``). Each model's entry names its ``checkpoint``
    and ``kind`` (from `checkpoints` and `kinds`, None when not given). The within-prefix Spearman (the policy's,
    each model's and the noise ceiling) is also given apart for decision prefixes, where the policy's most likely
    next token has probability below `DECISION_TOP_PROB`, and for the confident rest (``within_by_prefix``)."""
    pid = check["prefix_id"]
    groups = [np.flatnonzero(pid == g) for g in np.unique(pid)]
    decision = np.array([np.exp(np.max(check["logprob"][g])) < DECISION_TOP_PROB for g in groups], dtype=bool)
    by_prefix = {"decision": decision, "confident": ~decision}  # which prefixes (of `groups`) each part keeps
    sampled = check["sampled"].astype(bool)
    mc = check["mc_mean"]
    clear, rule = clear_sign(check)
    sign_unit = "prompt" if "prompt_id" in check else "prefix"
    sign_groups = np.asarray(check["prompt_id"] if "prompt_id" in check else pid)
    out: dict[str, Any] = {
        "n_prefixes": len(groups),
        "n_forks": int(len({p for p, f in zip(pid, check["fork"]) if f})),
        "n_candidates": int(len(mc)),
        "n_sampled": int(sampled.sum()),
        "n_clear_sign": {
            "sampled": int((clear & sampled).sum()),
            "counterfactual": int((clear & ~sampled).sum()),
            "rule": rule,
        },
        "decision_rule": f"the policy's most likely next token has probability < {DECISION_TOP_PROB}",
        "policy_prob": {
            "within_spearman": None,
        },
        "models": {},
    }

    def within(values: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
        """The mean within-prefix Spearman over every prefix, and over each part of `by_prefix`: one Spearman per
        prefix (NaN where skipped: fewer than 3 candidates, or constant MC or values)."""
        rho, skipped = np.full(len(groups), np.nan), np.zeros(len(groups), dtype=bool)
        for i, g in enumerate(groups):
            if len(g) < 3 or constant_note(mc[g], "mc") or constant_note(values[g], "v"):
                skipped[i] = True
            else:
                rho[i] = _spearman_raw(values[g], mc[g])

        def summary(keep: np.ndarray) -> dict[str, Any]:
            r, n_skipped = rho[keep & np.isfinite(rho)], int((skipped & keep).sum())
            if not len(r):
                return {"value": None, "ci": None, "n_prefixes": 0, "skipped": n_skipped}
            ci, _ = cluster_bootstrap(lambda i: float(np.mean(r[i])), np.arange(len(r)), n_boot, seed, unit="prefix")
            return {"value": float(r.mean()), "ci": ci, "n_prefixes": len(r), "skipped": n_skipped}

        return summary(np.ones(len(groups), dtype=bool)), {k: summary(keep) for k, keep in by_prefix.items()}

    def signs(a: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
        return sign_scores(
            a[rows], check["mc_advantage"][rows], clear[rows], sign_groups[rows], n_boot, seed, unit=sign_unit
        )

    def calibration(v: np.ndarray, target: np.ndarray) -> dict[str, Any]:
        ok = np.isfinite(v)
        if not ok.any():
            return {"brier": None, "ece": None, "mean_value": None, "mean_mc": None}
        v, target = v[ok], target[ok]
        return {
            "brier": float(np.mean((v - target) ** 2)),
            "ece": ece(v, target),
            "mean_value": float(v.mean()),
            "mean_mc": float(target.mean()),
        }

    out["policy_prob"]["within_spearman"], out["policy_prob"]["within_by_prefix"] = within(check["logprob"])
    if "checker_logprob" in check:  # the checker's own ranking, beside the policy's (`CHECKER_COLUMNS`)
        whole, parts = within(check["checker_logprob"])
        out["checker_prob"] = {"within_spearman": whole, "within_by_prefix": parts}
    for key, rule in (("within_noise_ceiling", "redraw"), ("within_value_ceiling", "value")):
        per_prefix = _ceiling_per_prefix(check, groups, CEILING_REPLICATES, seed, rule=rule)
        out[key] = _ceiling_summary(per_prefix, CEILING_REPLICATES)
        out[f"{key}_by_prefix"] = {
            k: _ceiling_summary(per_prefix, CEILING_REPLICATES, keep) for k, keep in by_prefix.items()
        }
    for m in models:
        v, a = check[f"value_{m}"], check[f"advantage_{m}"]
        whole, parts = within(v)
        out["models"][m] = {
            "checkpoint": (checkpoints or {}).get(m),
            "kind": (kinds or {}).get(m),
            "within_spearman": whole,
            "within_by_prefix": parts,
            "spearman_counterfactual": correlation(
                v[~sampled], mc[~sampled], pid[~sampled], n_boot=n_boot, seed=seed, unit="prefix"
            ),
            "spearman_sampled": correlation(
                v[sampled], mc[sampled], pid[sampled], n_boot=n_boot, seed=seed, unit="prefix"
            ),
            "sign_agreement_counterfactual": signs(a, ~sampled),
            "sign_agreement_sampled": signs(a, sampled),
            "calibration_counterfactual": calibration(v[~sampled], mc[~sampled]),
        }
    return jsonable(out)


def _f(v: Any, d: int = 3) -> str:
    return fixed(v, d, none="–")  # a missing number in this section: an en dash


def _ci(ci: Any, d: int = 2) -> str:
    return interval(ci, d, missing="", sep=" ")


def _model_label(m: str, e: dict[str, Any]) -> str:
    """A model's row label: its name, with its value-model kind when known and not the name itself."""
    return f"{m} ({e['kind']})" if e.get("kind") and e["kind"] != m else m


def _sign_cells(sa: dict[str, Any]) -> str:
    """The cells of one sign row: n (MC +/−), base rate (sign), agreement, excess, balanced accuracy, AUROC."""
    br, ex, ba, au = sa["base_rate"], sa["excess_over_base_rate"], sa["balanced_accuracy"], sa["auroc"]
    base = f"{_f(br['value'], 2)}{_ci(br['ci'])} ({br['sign']})" if br["value"] is not None else "–"
    return (
        f"{sa['n']} ({sa['n_positive']}/{sa['n_negative']}) | {base} | {_f(sa['value'], 2)}{_ci(sa['ci'])} | "
        f"{_f(ex['value'], 2)}{_ci(ex['ci'])} | {_f(ba['value'], 2)}{_ci(ba['ci'])} | {_f(au['value'], 2)}{_ci(au['ci'])}"
    )


def render_advantages_section(metrics: dict[str, Any]) -> str:
    """Markdown section: do counterfactual token values carry information, against MC? Two tables: the
    Spearman correlations of the candidates' values, then the sign of each model's advantage beside the
    majority-sign base rate, balanced accuracy and AUROC; each model named with its checkpoint."""
    sc = metrics["check"]
    unit = next((e["sign_agreement_counterfactual"].get("unit", "prompt") for e in sc["models"].values()), "prompt")
    lines = [
        "## Counterfactual token values and advantages vs Monte Carlo",
        "",
        f"Candidates at every prefix of {metrics['n_traces']} traces: the policy's top-{metrics['top_k']} tokens "
        f"and the sampled one ({metrics['n_rows']} rows in `{metrics['dataset']}`). MC check: "
        f"{sc['n_prefixes']} prefixes ({sc['n_forks']} at known forking tokens), {sc['n_candidates']} candidates, "
        f"{metrics['samples']} continuations each.",
        "",
        "| value | checkpoint | within-prefix Spearman [CI] (prefixes) | at decision prefixes | at confident "
        "prefixes | Spearman, counterfactual tokens | Spearman, sampled tokens |",
        "|---|---|---|---|---|---|---|",
    ]

    def split_cells(by: dict[str, Any] | None) -> str:
        by = by or {}
        cells = [by.get(k) or {} for k in ("decision", "confident")]
        return " | ".join(f"{_f(c.get('value'))} ({c.get('n_prefixes', 0)})" for c in cells)

    pw = sc["policy_prob"]["within_spearman"]
    nc = sc.get("within_noise_ceiling") or {}
    if nc.get("value") is not None:
        lines.append(
            f"| noise ceiling: MC against a redraw of MC | – | {_f(nc['value'])} ({nc['n_prefixes']}) | "
            f"{split_cells(sc.get('within_noise_ceiling_by_prefix'))} | – | – |"
        )
    vc = sc.get("within_value_ceiling") or {}
    if vc.get("value") is not None:
        lines.append(
            f"| value ceiling: the true values (posterior draws) against MC | – | {_f(vc['value'])} "
            f"({vc['n_prefixes']}) | {split_cells(sc.get('within_value_ceiling_by_prefix'))} | – | – |"
        )
    lines.append(
        f"| policy π(y'|s) | – | {_f(pw['value'])}{_ci(pw['ci'])} ({pw['n_prefixes']}) | "
        f"{split_cells(sc['policy_prob'].get('within_by_prefix'))} | – | – |"
    )
    if sc.get("checker_prob"):
        cw, checker = sc["checker_prob"]["within_spearman"], metrics.get("checker") or {}
        path = f"`{checker['path']}`" if checker.get("path") else "–"
        lines.append(
            f"| checker π_c(y'|s), read by {checker.get('read_by', '?')} | {path} | {_f(cw['value'])}{_ci(cw['ci'])} "
            f"({cw['n_prefixes']}) | {split_cells(sc['checker_prob'].get('within_by_prefix'))} | – | – |"
        )
    for m, e in sc["models"].items():
        w = e["within_spearman"]
        cf, sp = e["spearman_counterfactual"], e["spearman_sampled"]
        ckpt = f"`{e['checkpoint']}`" if e.get("checkpoint") else "–"
        lines.append(
            f"| {_model_label(m, e)} | {ckpt} | {_f(w['value'])}{_ci(w['ci'])} ({w['n_prefixes']}) | "
            f"{split_cells(e.get('within_by_prefix'))} | "
            f"{_f(cf.get('value'))}{_ci(cf.get('ci'))} | {_f(sp.get('value'))}{_ci(sp.get('ci'))} |"
        )
    if sc.get("decision_rule"):
        lines += [
            "",
            f"Decision prefixes: {sc['decision_rule']}; at the confident rest every candidate but the top one is a "
            "token the policy almost never writes, and its MC value says how the policy recovers from it.",
        ]
    lines += [
        "",
        "Sign of the advantage A against the MC advantage, over candidates with a clear MC sign (rule: "
        f"{sc['n_clear_sign'].get('rule', POINT_RULE)}; {sc['n_clear_sign']['sampled']} sampled, "
        f"{sc['n_clear_sign']['counterfactual']} counterfactual). The base rate is the agreement of a constant "
        "guess of the majority MC sign ('always negative' when most candidates are worse than their prefix): sign "
        "agreement is only informative above it. Balanced accuracy (the mean of the shares of MC-positive candidates with A > 0 and of MC-negative ones "
        "with A < 0) and the AUROC of A for a positive MC sign are 0.5 for any constant guess. CIs: Wilson for "
        f"agreement and base rate; bootstrap over {unit}s for the others.",
        "",
        "| value | tokens | n (MC +/−) | base rate (sign) | sign agreement | agreement − base rate | "
        "balanced accuracy | AUROC of A |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, e in sc["models"].items():
        for kind, key in (("counterfactual", "sign_agreement_counterfactual"), ("sampled", "sign_agreement_sampled")):
            lines.append(f"| {_model_label(m, e)} | {kind} | {_sign_cells(e[key])} |")
    cost, cons = metrics.get("cost", {}), metrics.get("consistency", {})
    if cost:
        lines += [
            "",
            "What valuing every candidate cost each model (sequences run, tokens in them: one pass per trace, or one "
            "sequence per candidate, each token counted once per forward pass: 2 with the reference policy beside an "
            "adapted backbone, an ensemble's members together), how calibrated its counterfactual values are against "
            "their MC means, and how far its value of the sampled token, Q(s, y), agrees with its own value of the "
            "next prefix, V(s ⊕ y) (by construction for a head and the implicit model).",
            "",
            "| value | one pass | sequences | passes | tokens | Brier, counterfactual | ECE | mean value / MC | "
            "consistency: mean abs Q − V (r) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m, e in sc["models"].items():
            c, k, cal = cost.get(m, {}), cons.get(m, {}), e.get("calibration_counterfactual", {})
            lines.append(
                f"| {_model_label(m, e)} | {'yes' if c.get('one_pass') else 'no'} | {c.get('sequences', '–')} | "
                f"{c.get('passes', 1)} | {c.get('tokens', '–')} | {_f(cal.get('brier'))} | {_f(cal.get('ece'))} | "
                f"{_f(cal.get('mean_value'), 2)} / {_f(cal.get('mean_mc'), 2)} | "
                f"{_f(k.get('mean_abs_difference'))} ({_f(k.get('pearson'), 2)}) |"
            )
    if metrics.get("verdict"):
        lines += [
            "",
            f"**Do one-pass counterfactual values carry information?** {metrics['verdict']}",
        ]
    lines.append("")
    return "\n".join(lines)


def one_pass_verdict(check: dict[str, Any], name: str) -> str | None:
    """One sentence from the measured figures on the one-pass model `name` (None when not scored): its
    within-prefix Spearman against the policy's probability, and the sign of its advantages on unsampled
    tokens against the majority-sign base rate, with balanced accuracy."""
    e = check["models"].get(name)
    if e is None:
        return None
    w = e["within_spearman"]
    sa = e["sign_agreement_counterfactual"]
    if w["value"] is None or w["ci"] is None:
        return f"undetermined: too few prefixes with varied MC values ({w['n_prefixes']} scored)."
    lo = w["ci"][0]
    sign = ""
    if sa["n"]:
        br, ba = sa["base_rate"], sa["balanced_accuracy"]
        sign = (
            f"; its advantages have the MC sign for {_f(sa['value'], 2)} of {sa['n']} unsampled tokens with a clear "
            f"sign, against {_f(br['value'], 2)} for always guessing {br['sign']}"
        )
        if ba["value"] is not None:
            sign += f" (balanced accuracy {_f(ba['value'], 2)}{_ci(ba['ci'])}; 0.5 is chance)"
    ckpt = f" (`{e['checkpoint']}`)" if e.get("checkpoint") else ""
    base = check["policy_prob"]["within_spearman"]["value"]
    checker = (check.get("checker_prob") or {}).get("within_spearman", {}).get("value")
    baselines = [f"the policy's own probability ranks them at {_f(base)}"] if base is not None else []
    if baselines and checker is not None:
        baselines.append(f"the checker's at {_f(checker)}")
    rel = f" ({', '.join(baselines)})" if baselines else ""
    return (
        ("Yes" if lo > 0 else "Not measurably")
        + f": within a prefix, the values of {name}{ckpt} rank the candidate tokens with MC at Spearman "
        f"{_f(w['value'])} [{lo:.2f}, {w['ci'][1]:.2f}] over {w['n_prefixes']} prefixes{rel}{sign}."
    )
