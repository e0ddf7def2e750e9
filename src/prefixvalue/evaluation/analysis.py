"""Analyses of an evaluation: the traces with the largest Monte Carlo value jumps and their forking
tokens, the short-prefix study (soft and learned values on the first K tokens), the seed spread, the
error-detection diagnosis and the quality goal (`prefixvalue.evaluation.loop` gathers them).

The quickstart reports them all (`prefixvalue.stages.quickstart`); `prefixvalue.evaluation.report`
renders them. Nothing here loads a model or reads a config: the caller passes what was evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import rankdata

from ..data.steps import step_facts, worst_step_drop
from ..stats import spearman
from .metrics import SATURATION_SHARE, auroc
from .scoring import EvalResult

#: share of the noise ceiling the learned value should reach (the quality goal)
CEILING_GOAL = 0.8
#: the one definition of saturated MC labels (`prefixvalue.evaluation.metrics.saturation`), in words
SATURATION_DEFINITION = f">= {SATURATION_SHARE:.0%} of the prefixes at MC success 0 or at 1"


#: samples per position when a chosen fork is re-labelled with fresh continuations
FORK_SAMPLES = 64
FORK_TEST = "two-sided Fisher exact test on fresh MC samples, Bonferroni over the reported forks"


def largest_jumps(
    result: EvalResult,
    k: int,
    tokenizer: Any = None,
    *,
    labeller: Any = None,
    refs: dict[str, Any] | None = None,
    samples: int = FORK_SAMPLES,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """The `k` traces whose MC curve has the largest jump between neighbouring labelled prefixes,
    each with a selection-aware test of whether the jump is real.

    For each trace the jump is the largest |mean(b) - mean(a)| over neighbouring labelled positions
    a < b; when b = a + 1 the forking token is completion token a (appending it moves the success
    rate). Picking the largest of many noisy jumps biases it upwards, so "the two 95% CIs are
    disjoint" is not evidence (with flat true values it fires almost always). Instead each chosen
    pair is re-labelled with `samples` fresh, independent continuations at positions a and b
    (`labeller.uniform`, an `MCLabeller` whose sampling seed differs from the labels'; `refs` maps
    trace id to its `TraceRef`), and the fresh counts are compared with a two-sided Fisher exact test;
    ``confirmed`` is p < `alpha` / (number of reported forks) (Bonferroni). The selected jump
    (``jump``, ``mc_before``, ``mc_after`` and their Wilson CIs) is kept for reference only. Without
    a labeller ``confirmed`` is None with a note: the selected jump alone cannot confirm a fork.
    """
    rows = []
    for i, (t, mc) in enumerate(zip(result.traces, result.mc)):
        pos, mean = np.asarray(mc["position"]), np.asarray(mc["mean"])
        if len(pos) < 2:
            continue
        order = np.argsort(pos)
        pos, mean, lo, hi = pos[order], mean[order], np.asarray(mc["ci_low"])[order], np.asarray(mc["ci_high"])[order]
        d = np.diff(mean)
        j = int(np.argmax(np.abs(d)))
        a, b = int(pos[j]), int(pos[j + 1])
        token_ids = t.completion_ids[a:b]
        text = tokenizer.decode(token_ids) if tokenizer is not None else str(token_ids)
        cur = result.curves[i]
        row = {
            "trace_index": i,
            "trace_id": t.trace_id,
            "prompt_id": t.prompt_id,
            "outcome": t.outcome,
            "from_position": a,
            "to_position": b,
            "token_index": a,
            "token_ids": token_ids,
            "token": text,
            "jump": float(d[j]),
            "mc_before": float(mean[j]),
            "mc_after": float(mean[j + 1]),
            "ci_before": [float(lo[j]), float(hi[j])],
            "ci_after": [float(lo[j + 1]), float(hi[j + 1])],
            "selected_note": "the largest of this trace's jumps, selected on these labels (biased upwards)",
            "prompt": t.prompt,
            "completion": t.completion,
        }
        for name in ("learned", "mellowmax"):
            if name in cur:
                row[f"{name}_before"], row[f"{name}_after"] = float(cur[name][a]), float(cur[name][b])
        rows.append(row)
    rows.sort(key=lambda r: (-abs(r["jump"]), r["trace_id"]))
    rows = rows[:k]
    _confirm_forks(rows, labeller, refs, samples, alpha)
    return rows


def _confirm_forks(
    rows: list[dict[str, Any]], labeller: Any, refs: dict[str, Any] | None, samples: int, alpha: float
) -> None:
    """Fill each fork's selection-aware test (in place): fresh means, Fisher p-value, ``confirmed``."""
    from scipy.stats import fisher_exact

    level = alpha / max(1, len(rows))
    for r in rows:
        r.update(
            test=FORK_TEST,
            alpha=alpha,
            bonferroni_level=level,
            fresh_samples=samples,
            fresh_before=None,
            fresh_after=None,
            fresh_n_before=None,
            fresh_n_after=None,
            p_value=None,
            confirmed=None,
        )
    if labeller is None or refs is None:
        for r in rows:
            r["confirmed_note"] = (
                "not tested: no sampler was given to re-label the pair with fresh samples, and "
                "the selected jump alone is biased (the largest of many noisy jumps)"
            )
        return
    todo, which = [], []
    for r in rows:
        ref = refs.get(r["trace_id"])
        if ref is None:
            r["confirmed_note"] = "not tested: the trace is not among the traces given for re-labelling"
        elif r["to_position"] >= len(ref.completion_ids):
            r["confirmed_note"] = (
                "not tested: the jump ends at the complete trace (position T), which has no continuation to sample"
            )
        else:
            todo.append(ref)
            which.append(r)
    if not todo:
        return
    est = labeller.uniform(todo, [[r["from_position"], r["to_position"]] for r in which], samples, method="fork-check")
    for n, r in enumerate(which):
        before, after = est[2 * n], est[2 * n + 1]
        kb, ka = float(before.successes), float(after.successes)
        table = [[round(kb), before.n - round(kb)], [round(ka), after.n - round(ka)]]
        p = float(fisher_exact(table, alternative="two-sided")[1])
        r.update(
            fresh_before=kb / before.n,
            fresh_after=ka / after.n,
            fresh_n_before=int(before.n),
            fresh_n_after=int(after.n),
            p_value=p,
            confirmed=bool(p < level),
        )
        if kb != round(kb) or ka != round(ka):
            r["confirmed_note"] = "fractional verifier scores were rounded to whole successes for the Fisher test"


def _corr_summary(m: dict[str, Any]) -> dict[str, Any]:
    """Value and CI of the Spearman and Pearson correlations of one estimator's metrics."""
    return {c: {"value": m[c].get("value"), "ci": m[c].get("ci")} for c in ("spearman", "pearson")}


def short_prefix_study(labels: Any, k_max: int, score: Callable[[list[dict[str, Any]]], EvalResult]) -> dict[str, Any]:
    """The short-prefix study: for K = 1..k_max, soft and learned values vs MC success on prefixes of
    at most K completion tokens (positions 0..K, one trace per prompt), with bootstrap CIs.

    `labels` are the MC labels of the short prefixes (a dataset or rows); `score(rows)` scores every
    estimator on a subset of them (`prefixvalue.evaluation.evaluator.evaluate` on the study's traces,
    with the models and options of the main evaluation). Returns ``{"short:K": {"n_prefixes", "n_traces",
    "samples_per_prefix", "label_mean", "label_variance", "saturated", "noise_ceiling_spearman",
    "estimators": {name: {spearman, pearson}}}}``."""
    rows = [dict(r) for r in labels]
    out: dict[str, Any] = {}
    for k in range(1, k_max + 1):
        res = score([r for r in rows if int(r["position"]) <= k])
        mc = res.metrics["mc"]
        out[f"short:{k}"] = {
            "n_prefixes": res.metrics["n_prefixes"],
            "n_traces": res.metrics["n_traces"],
            "samples_per_prefix": mc["samples_per_prefix"],
            "label_mean": mc["label_mean"],
            "label_variance": mc["label_variance"],
            "saturated": mc["saturated"],
            "noise_ceiling_spearman": mc["noise_ceiling"].get("spearman"),
            "estimators": {n: _corr_summary(m) for n, m in res.metrics["estimators"].items()},
        }
    return out


def seed_spread(result: EvalResult, models: dict[int, Any], ceiling: float | None) -> dict[str, Any]:
    """Spearman with MC of the same recipe trained with several seeds, on the same held-out prefixes.

    Seed 0 is ``learned`` in `result` (its values are read from there); `models` maps each further seed to
    its value model, predicted here. Returns per-seed Spearman, their mean, sd and 95% t-interval, and the
    same as a share of the noise ceiling `ceiling`.
    """
    from scipy.stats import t as student_t

    cols = result.prefixes
    y = np.asarray(cols["mc_mean"], dtype=np.float64)
    where = {(t, int(p)): i for i, (t, p) in enumerate(zip(cols["trace_id"], cols["position"]))}
    per_seed: dict[int, float | None] = {}
    undefined: dict[int, str | None] = {}
    per_seed[0], undefined[0] = spearman(np.asarray(cols["learned"], dtype=np.float64), y)
    for seed, model in models.items():
        curves = model.predict([t.prompt_ids for t in result.traces], [t.completion_ids for t in result.traces])
        x = np.empty(len(y))
        for t, curve in zip(result.traces, curves):
            for p, v in enumerate(curve):
                i = where.get((t.trace_id, p))
                if i is not None:
                    x[i] = v
        per_seed[seed], undefined[seed] = spearman(x, y)
    rho = np.array([v for v in per_seed.values() if v is not None])  # a seed whose Spearman is undefined: null
    mean = float(rho.mean()) if len(rho) else None
    out: dict[str, Any] = {"spearman_per_seed": per_seed, "seeds": len(per_seed), "spearman_mean": mean}
    if len(rho) > 1:
        sd = float(rho.std(ddof=1))
        half = float(student_t.ppf(0.975, len(rho) - 1) * sd / np.sqrt(len(rho)))
        out.update(spearman_sd=sd, spearman_ci=[float(rho.mean() - half), float(rho.mean() + half)])
    if ceiling:
        out["share_mean"] = mean / ceiling if mean is not None else None
        if "spearman_ci" in out:
            out["share_ci"] = [v / ceiling for v in out["spearman_ci"]]
    out["note"] = (
        "95% t-interval across training seeds (same data, same held-out prefixes); the spread is training noise"
    ) + "".join(f"; seed {k}: Spearman undefined, {why}" for k, why in undefined.items() if why)
    return out


def error_diagnosis(result: EvalResult, name: str = "learned") -> dict[str, Any] | None:
    """What limits a value estimator on a task with exact step labels, measured on the held-out prefixes:

    - ``auroc_error_written``: how well its values separate prefixes where a wrong step has been written
      (AUROC, higher value = no error yet);
    - ``spearman_no_error`` / ``spearman_error``: its Spearman with MC within each of the two groups;
    - ``spearman_with_exact_error_flag``: the Spearman of its values after a perfect error detector: every
      prefix without a written error ranked above every prefix with one, its own values ordering each group;
    - ``auroc_error_written_policy``: the same AUROC for features of the policy alone, read from the traces'
      sampled log-probabilities of the written tokens (their sum, their minimum): what a value model that
      reads the policy could at least reach (null with a note when the traces carry no log-probabilities);
    - ``auroc_error_written_mc``: the same AUROC for the MC labels themselves, what a value equal to the
      labels would reach: prefixes that recover after a wrong step and error-free prefixes of hard prompts
      overlap in value, so a value (not a detector) is bounded near it even where the policy's features
      detect the error better; ``auroc_error_written_of_mc`` is the estimator's AUROC over it.
    - ``auroc_error_written_step_drop``: the same AUROC for the estimator's own detector, the worst fall of its
      value across one step written so far (`prefixvalue.data.steps.worst_step_drop`, log V after − log V
      before the step): how a process reward model flags a step, free of the value's level, so not bounded
      by the labels' AUROC (null with a note when the estimator has no curve over the traces).

    None when the traces have no step labels or the estimator is missing.
    """
    cols = result.prefixes
    if name not in cols or any(t.step_labels is None for t in result.traces):
        return None
    facts = {t.trace_id: step_facts(t.step_spans, t.step_labels, t.length)[0] for t in result.traces}
    err = np.array([bool(facts[t][int(p)]) for t, p in zip(cols["trace_id"], cols["position"])])
    x = np.asarray(cols[name], dtype=np.float64)
    y = np.asarray(cols["mc_mean"], dtype=np.float64)
    if err.all() or not err.any():
        return None
    flagged = rankdata(x) / len(x) + np.where(err, 0.0, 1.0)  # no-error group above, own order within

    notes: dict[str, str] = {}

    def rho(key: str, a: np.ndarray, b: np.ndarray) -> float | None:  # null with a "<key>_note", never NaN
        value, note = spearman(a, b)
        if note:
            notes[f"{key}_note"] = note
        return value

    out = {
        "estimator": name,
        "error_written_share": float(err.mean()),
        "auroc_error_written": auroc(x, (~err).astype(np.float64))[0],
        "spearman_no_error": rho("spearman_no_error", x[~err], y[~err]),
        "spearman_error": rho("spearman_error", x[err], y[err]),
        "spearman_with_exact_error_flag": rho("spearman_with_exact_error_flag", flagged, y),
        "mc_spearman_with_error_flag": rho("mc_spearman_with_error_flag", (~err).astype(np.float64), y),
        "auroc_error_written_mc": auroc(y, (~err).astype(np.float64))[0],
    }
    learned, labels = out["auroc_error_written"], out["auroc_error_written_mc"]
    out["auroc_error_written_of_mc"] = learned / labels if learned is not None and labels else None
    drops = step_drop_feature(result, cols, name)
    if drops is None:
        out["auroc_error_written_step_drop"] = None
        notes["auroc_error_written_step_drop_note"] = f"`{name}` has no value curve over the traces"
    else:
        out["auroc_error_written_step_drop"] = auroc(drops, (~err).astype(np.float64))[0]
    feats = sampled_logprob_features(result.traces, cols)
    if feats is None:
        out["auroc_error_written_policy"] = None
        notes["auroc_error_written_policy_note"] = "the traces carry no per-token log-probabilities"
    else:
        out["auroc_error_written_policy"] = {k: auroc(v, (~err).astype(np.float64))[0] for k, v in feats.items()}
    return {**out, **notes}


def step_drop_feature(result: EvalResult, cols: dict[str, list[Any]], name: str) -> np.ndarray | None:
    """Per labelled prefix of `cols`: `worst_step_drop` of estimator `name`'s value curve over its trace at
    the prefix's position; None when a trace has no curve of `name`."""
    if any(name not in c for c in result.curves):
        return None
    worst = {t.trace_id: worst_step_drop(c[name], t.step_spans) for t, c in zip(result.traces, result.curves)}
    return np.array([worst[t][int(p)] for t, p in zip(cols["trace_id"], cols["position"])])


def sampled_logprob_features(traces: list[Any], cols: dict[str, list[Any]]) -> dict[str, np.ndarray] | None:
    """Per labelled prefix of `cols` (the evaluation's prefix table): the sum and the minimum of the sampled
    log-probabilities of the tokens written so far (0 at the empty prefix), from each trace's ``logprobs``;
    None when a trace has none."""
    if any(t.logprobs is None for t in traces):
        return None
    sums, mins = {}, {}
    for t in traces:
        lp = np.asarray(t.logprobs, dtype=np.float64)
        sums[t.trace_id] = np.concatenate([[0.0], np.cumsum(lp)])
        mins[t.trace_id] = np.concatenate([[0.0], np.minimum.accumulate(lp)]) if len(lp) else np.zeros(1)
    at = list(zip(cols["trace_id"], (int(p) for p in cols["position"])))
    return {
        "logprob_sum": np.array([sums[tid][min(p, len(sums[tid]) - 1)] for tid, p in at]),
        "logprob_min": np.array([mins[tid][min(p, len(mins[tid]) - 1)] for tid, p in at]),
    }


def quality_verdict(
    metrics: dict[str, Any],
    train_results: dict[str, dict[str, Any]],
    n_train_traces: int,
    diagnosis: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The quality goal (learned Spearman >= `CEILING_GOAL` of the noise ceiling, and above MellowMax),
    decided on bootstrap CIs, with what limits it when it is missed.

    "beats MellowMax" needs the lower bound of the paired difference learned − MellowMax in Spearman
    (``spearman.paired_vs_mellowmax``: the same resampled prompts for both) above 0; "reaches the
    ceiling goal" needs the lower bound of the share of the ceiling (``fraction_of_ceiling_ci``, the
    ceiling held fixed) at or above the goal. Without a CI the verdict is False with a note: a point
    estimate alone does not support the claim. `train_results` maps each value-model kind to its
    training result with ``eval_curve``, the (step, held-out Brier) pairs of its held-out
    evaluations; `n_train_traces` is the size of the training set. Returns the verdict dict
    (``met``, ``limits`` in words, ...)."""
    ests = metrics["estimators"]
    ceiling = metrics["mc"]["noise_ceiling"].get("spearman")
    sp = ests.get("learned", {}).get("spearman", {})
    learned = sp.get("value")
    mellow = ests.get("mellowmax", {}).get("spearman", {}).get("value")
    frac = learned / ceiling if (learned is not None and ceiling) else None
    frac_ci = sp.get("fraction_of_ceiling_ci")
    paired = sp.get("paired_vs_mellowmax") or {}
    diff_ci = paired.get("ci")
    reached = bool(frac_ci is not None and frac_ci[0] >= CEILING_GOAL)
    beats = bool(diff_ci is not None and diff_ci[0] > 0)
    oracle = sp.get("paired_vs_step_oracle")  # present when the task has exact step labels
    verdict: dict[str, Any] = {
        "goal": f"learned Spearman >= {CEILING_GOAL:.0%} of the noise ceiling and > MellowMax, "
        f"each by its 95% CI's lower bound",
        "learned_spearman": learned,
        "noise_ceiling": ceiling,
        "fraction_of_ceiling": frac,
        "fraction_of_ceiling_ci": frac_ci,
        "mellowmax_spearman": mellow,
        "paired_vs_mellowmax": {"value": paired.get("value"), "ci": diff_ci},
        "reaches_ceiling_goal": reached,
        "beats_mellowmax": beats,
        "met": bool(reached and beats),
    }
    if oracle is not None:
        beats_oracle = bool(oracle.get("ci") is not None and oracle["ci"][0] > 0)
        verdict["goal"] += ", and > the step-label oracle by the paired CI's lower bound"
        verdict["step_oracle_spearman"] = ests.get("step_oracle", {}).get("spearman", {}).get("value")
        verdict["paired_vs_step_oracle"] = {"value": oracle.get("value"), "ci": oracle.get("ci")}
        verdict["beats_step_oracle"] = beats_oracle
        verdict["met"] = bool(verdict["met"] and beats_oracle)
    operators = sp.get("paired_vs_operator_oracle")  # reported beside the goal, not part of it
    if operators is not None:
        verdict["operator_oracle_spearman"] = ests.get("operator_oracle", {}).get("spearman", {}).get("value")
        verdict["paired_vs_operator_oracle"] = {"value": operators.get("value"), "ci": operators.get("ci")}
        verdict["beats_operator_oracle"] = bool(operators.get("ci") is not None and operators["ci"][0] > 0)
    notes = []
    if frac_ci is None:
        notes.append(
            "no CI of the share of the ceiling (noise ceiling or bootstrap undefined): the ceiling goal is not claimed"
        )
    if diff_ci is None:
        notes.append(
            "no paired CI of learned − MellowMax (MellowMax not evaluated, or the bootstrap undefined): "
            "'beats MellowMax' is not claimed"
        )
    if notes:
        verdict["note"] = "; ".join(notes)
    for name, m in ests.items():
        if name.startswith("learned_"):
            v = m["spearman"].get("value")
            verdict[f"{name}_fraction_of_ceiling"] = v / ceiling if (v is not None and ceiling) else None
            verdict[f"{name}_fraction_of_ceiling_ci"] = m["spearman"].get("fraction_of_ceiling_ci")
    limits = []
    if ceiling is not None and ceiling < 0.6:
        limits.append(
            f"label noise: the split-half noise ceiling is only {ceiling:.2f}; more MC samples per "
            "prefix (label_samples) raise it"
        )
    if metrics["mc"].get("saturated"):
        limits.append(f"labels are saturated ({SATURATION_DEFINITION}): the held-out prefixes barely differ in value")
    for kind, r in train_results.items():
        tl, hl = r.get("train_loss"), r.get("loss")
        if tl is not None and hl is not None and hl > tl + 0.03:
            limits.append(
                f"overfitting ({kind}): held-out loss {hl:.3f} vs training loss {tl:.3f} at the end; "
                "more traces per parameter (num_prompts) or a smaller LoRA rank would help"
            )
        curve = r.get("eval_curve") or []
        if (
            len(curve) >= 2
            and curve[-1][1] is not None
            and curve[-2][1] is not None
            and curve[-1][1] < curve[-2][1] - 0.002
        ):
            limits.append(
                f"training ({kind}): held-out Brier still fell by {curve[-2][1] - curve[-1][1]:.4f} over "
                "the last evaluation interval; more steps (train.max_steps) or more traces would help"
            )
    if diagnosis is not None and not verdict["met"]:
        d = diagnosis
        limits.append(
            f"error detection: the learned values separate prefixes after a wrong step from the others with AUROC "
            f"{d['auroc_error_written']:.2f}"
            + (
                f" (the MC labels themselves: {d['auroc_error_written_mc']:.2f})"
                if d.get("auroc_error_written_mc") is not None
                else ""
            )
            + f"; with an exact error flag on top of the same values Spearman would be "
            f"{d['spearman_with_exact_error_flag']:.3f} ({d['spearman_with_exact_error_flag'] / ceiling:.2f} of the "
            f"ceiling), so even perfect error detection leaves the rest to the ranking within error-free prefixes "
            f"(Spearman {d['spearman_no_error']:.3f} there)"
            if ceiling
            else f"error detection: AUROC {d['auroc_error_written']:.2f} for 'a wrong step has been written'"
        )
    if not verdict["met"]:
        limits.append(
            f"data: {n_train_traces} training traces of one policy; the value model sees each "
            "outcome once, so the prefix signal is 1-bit per trace. `make frontier` measures how the share "
            "grows with sampled tokens per recipe; scaling num_prompts (and train.max_steps with it) is the "
            "first lever, then a larger policy on a GPU"
        )
    verdict["limits"] = limits if not verdict["met"] else []
    return verdict
