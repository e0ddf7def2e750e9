"""Values of structured actions: local estimates Q̂(x, a) against Monte Carlo Ẑ_Φ(x ⊕ a) (docs/design.md,
"Values of alternatives").

A *state* x is a prompt plus the completion text written so far (empty at the prompt, or a step boundary);
an *action* a is a whole macro-step written after it (a reasoning step, a strategy choice). Per (x, a):

- ``logprob`` / ``logprob_per_token``: the policy's log π(a | x), total and divided by the action's tokens;
- ``mellowmax`` / ``logsumexp``: the policy's soft values at x ⊕ a (`prefixvalue.evaluation.softvalues`);
- ``learned_<name>``: P̂(x ⊕ a) of every value checkpoint given;
- ``mc``: Ẑ_Φ(x ⊕ a) = k/n from continuations sampled after the action (`MCLabeller.uniform`), Wilson CI.

x ⊕ a is tokenised as prompt ids + ids of the prefix text + ids of the action text (each without special
tokens), and handed to the labeller as a trace prefix, so identical x ⊕ a are sampled once.

Actions come from a JSON-lines file (`read_action_states`) or from the task: for ``arith``,
`arith_step_states` (correct next step + wrong variants at every step boundary of the correct solution) and
`arith_strategy_states` (how much of the chain the first step folds, or the bare final answer).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from ..data.collate import collated_batches
from ..formatting import fixed, interval
from ..jsonlines import jsonl_records
from ..sampling.mc import MCLabeller, PrefixEstimate, TraceRef
from ..tasks.arith import ArithTask
from ..tasks.base import Prompt
from ..tracking import jsonable
from .metrics import (
    _spearman_raw,
    cluster_bootstrap,
    constant_note,
    correlation,
    split_half_noise_ceiling,
    wilson_interval,
)
from .softvalues import SoftValueSpec, policy_soft_values


@dataclass
class ActionState:
    """A state and its candidate actions. `prefix` is completion text already written after the prompt
    ("" at the prompt); `kind` groups states in the scores (``step``, ``strategy``, or the file's own);
    `correct` marks actions known to be right (task-generated sets; None when unknown)."""

    state_id: str
    prompt: Prompt
    prefix: str
    actions: list[str]
    kind: str = "user"
    correct: list[bool] | None = None
    labels: list[str] = field(default_factory=list)  #: short names of the actions (e.g. "wrong result")


# ------------------------------------------------------------------------------------------- input
def read_action_states(path: str | Path) -> list[ActionState]:
    """States from a JSON-lines file, one object per line:
    ``{"prompt": str, "actions": [str, ...], "prefix"?: str, "state_id"?: str, "prompt_id"?: str,
    "answer"?: str, "kind"?: str}``, read by `prefixvalue.jsonlines.jsonl_records`. ConfigError naming the file
    and line (``FILE, line N``) for a malformed line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"actions: file not found: {p}")
    states: list[ActionState] = []
    seen: set[str] = set()
    for lineno, where, obj in jsonl_records(p, ConfigError):
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        prompt, actions = obj.get("prompt"), obj.get("actions")
        if not isinstance(prompt, str) or not prompt:
            raise ConfigError(f"{where}: 'prompt' must be a non-empty string")
        if not isinstance(actions, list) or len(actions) < 2 or not all(isinstance(a, str) and a for a in actions):
            raise ConfigError(f"{where}: 'actions' must be a list of at least 2 non-empty strings")
        if len(set(actions)) != len(actions):
            raise ConfigError(f"{where}: 'actions' holds the same string twice")
        prefix = obj.get("prefix", "")
        if not isinstance(prefix, str):
            raise ConfigError(f"{where}: 'prefix' must be a string")
        sid = str(obj.get("state_id", f"{p.stem}-{lineno}"))
        if sid in seen:
            raise ConfigError(f"{where}: duplicate state_id {sid!r}")
        seen.add(sid)
        answer = obj.get("answer")
        pid = str(obj.get("prompt_id", sid))
        states.append(
            ActionState(
                sid,
                Prompt(pid, prompt, None if answer is None else str(answer)),
                prefix,
                list(actions),
                str(obj.get("kind", "user")),
            )
        )
    if not states:
        raise ConfigError(f"actions: {p} holds no states")
    return states


def _arith_problem(task: ArithTask, prompt: Prompt) -> tuple[list[int], list[str]]:
    meta = prompt.meta or {}
    if "operands" in meta and "operators" in meta:
        return list(meta["operands"]), list(meta["operators"])
    return task.parse_prompt(prompt.text)


def arith_step_states(task: ArithTask, prompts: Sequence[Prompt], wrong: int = 3, seed: int = 0) -> list[ActionState]:
    """At every step boundary of each prompt's correct solution (the correct steps written so far): the
    correct next step and up to `wrong` wrong variants, alternating a wrong result (same operands, another
    result) and a wrong operand (another right operand, its result computed correctly, so the step reads
    consistently but solves a different problem). The final step ``A:x`` has only wrong-result variants."""
    m = task.config.modulus

    def reduce(v: int) -> int:
        return v % m if m is not None else v

    states: list[ActionState] = []
    for prompt in prompts:
        nums, ops = _arith_problem(task, prompt)
        steps = task.solve(nums, ops).split(";")
        rng = random.Random(f"{seed}|{prompt.prompt_id}")
        for i, step in enumerate(steps):
            prefix = "".join(s + ";" for s in steps[:i])
            final = i == len(ops)
            end = "" if final else ";"
            actions, labels = [step + end], ["correct"]
            if final:
                r = int(step[2:])
                results = [v for v in (range(m) if m else range(r - 3, r + 4)) if v != r]
                for v in rng.sample(results, min(wrong, len(results))):
                    actions.append(f"A:{v}")
                    labels.append("wrong result")
            else:
                a = int(steps[i - 1].split("=")[1]) if i else reduce(nums[0])  # the running result
                op, b, r = ops[i], nums[i + 1], int(step.split("=")[1])
                results = [v for v in (range(m) if m else range(r - 3, r + 4)) if v != r]
                operands = [v for v in range(task.config.operand_min, task.config.operand_max + 1) if v != b]
                rng.shuffle(results)
                rng.shuffle(operands)
                for k in range(wrong):
                    if k % 2 == 0 and results:
                        cand, lab = f"{a}{op}{b}={results.pop()}", "wrong result"
                    elif operands:
                        b2 = operands.pop()
                        cand, lab = f"{a}{op}{b2}={reduce(_apply(op, a, b2))}", "wrong operand"
                    else:
                        continue
                    if cand + end not in actions:
                        actions.append(cand + end)
                        labels.append(lab)
            states.append(
                ActionState(
                    f"{prompt.prompt_id}@step{i}",
                    prompt,
                    prefix,
                    actions,
                    "step",
                    [lab == "correct" for lab in labels],
                    labels,
                )
            )
    return states


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def arith_strategy_states(task: ArithTask, prompts: Sequence[Prompt], max_fold: int = 3) -> list[ActionState]:
    """The strategy variant of ``arith``: at the bare prompt, the first action commits to how much of the
    chain the first step folds, without its result: ``fold c`` writes the first c operations then ``=``
    (``3+5=`` is the usual one-at-a-time path, ``3+5*2=`` asks for two operations in one result), and
    ``direct`` writes ``A:`` (the whole chain in the answer's single number). Every action is correct so far;
    what differs is how hard the rest is for the policy, which MC measures."""
    states = []
    for prompt in prompts:
        nums, ops = _arith_problem(task, prompt)
        actions, labels = [], []
        for c in range(1, min(max_fold, len(ops)) + 1):
            actions.append(str(nums[0]) + "".join(f"{op}{n}" for op, n in zip(ops[:c], nums[1 : c + 1])) + "=")
            labels.append(f"fold {c}")
        actions.append("A:")
        labels.append("direct")
        states.append(ActionState(f"{prompt.prompt_id}@strategy", prompt, "", actions, "strategy", None, labels))
    return states


# ------------------------------------------------------------------------------------ tokenising
@dataclass
class ActionItem:
    """One (state, action) pair as token ids: x ⊕ a = prompt_ids + prefix_ids + action_ids."""

    state: int
    action: int
    prompt_ids: list[int]
    prefix_ids: list[int]
    action_ids: list[int]

    @property
    def completion_ids(self) -> list[int]:
        return self.prefix_ids + self.action_ids


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens ([] for "")."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def action_items(states: Sequence[ActionState], tokenizer: Any, encode_prompt: Any) -> list[ActionItem]:
    """Every (state, action) pair tokenised; `encode_prompt(text)` gives a prompt's ids (its chat format).
    ConfigError for an action that encodes to no tokens."""
    items = []
    for s, st in enumerate(states):
        pids = list(encode_prompt(st.prompt.text))
        xids = encode_text(tokenizer, st.prefix)
        for a, act in enumerate(st.actions):
            aids = encode_text(tokenizer, act)
            if not aids:
                raise ConfigError(f"actions: state {st.state_id}: action {act!r} encodes to no tokens")
            items.append(ActionItem(s, a, pids, xids, aids))
    return items


# ------------------------------------------------------------------------------------- estimators
@torch.no_grad()
def action_log_probs(policy: Any, items: Sequence[ActionItem], batch_size: int = 16) -> np.ndarray:
    """log π(a | x) summed over each action's tokens (nats), float64 [N]."""
    device = next(policy.parameters()).device
    out = np.zeros(len(items))
    prompts, comps = [it.prompt_ids for it in items], [it.completion_ids for it in items]
    for b0, batch in collated_batches(prompts, comps, batch_size, device):
        chunk = items[b0 : b0 + batch_size]
        ids = batch["input_ids"]
        logits = policy(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        for r, it in enumerate(chunk):
            start = len(it.prompt_ids) + len(it.prefix_ids)  # index of the action's first token
            rows = logits[r, start - 1 : start - 1 + len(it.action_ids)].float()
            lp = torch.log_softmax(rows, dim=-1).gather(-1, ids[r, start : start + len(it.action_ids), None])
            out[b0 + r] = float(lp.sum().double())
    return out


@torch.no_grad()
def action_estimates(
    policy: Any,
    items: Sequence[ActionItem],
    value_models: dict[str, Any],
    omega: float = 1.0,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Every estimator per (x, a), float64 [N] each: logprob, logprob_per_token, mellowmax (at `omega`,
    full vocabulary), logsumexp, and ``learned_<name>`` for each value model of `value_models`."""
    lp = action_log_probs(policy, items, batch_size)
    out = {"logprob": lp, "logprob_per_token": lp / np.array([len(it.action_ids) for it in items], dtype=np.float64)}
    spec = SoftValueSpec(omegas=(omega,), default_omega=omega, top_k=())
    prompts = [it.prompt_ids for it in items]
    comps = [it.completion_ids for it in items]
    soft, _ = policy_soft_values(policy, prompts, comps, spec, batch_size=batch_size)
    for name in ("mellowmax", "logsumexp"):
        out[name] = np.array([v[name][-1] for v in soft], dtype=np.float64)
    for name, vm in value_models.items():
        preds = vm.predict(prompts, comps, batch_size=batch_size)
        out[f"learned_{name}"] = np.array([p[-1] for p in preds], dtype=np.float64)
    return out


def mc_action_values(
    labeller: MCLabeller, states: Sequence[ActionState], items: Sequence[ActionItem], samples: int, eos_id: int
) -> list[PrefixEstimate]:
    """Ẑ_Φ(x ⊕ a) per item from `samples` continuations after the action (the labeller's sampling
    parameters; its ``max_new_tokens`` counts from the prompt, so the prefix and action use up part of it).
    Each x ⊕ a is a trace prefix (one placeholder EOS after it, never read: the cut is before it)."""
    refs, positions = [], []
    for it in items:
        st = states[it.state]
        comp = tuple(it.completion_ids) + (eos_id,)
        refs.append(TraceRef(f"{st.state_id}#a{it.action}", st.prompt, tuple(it.prompt_ids), comp))
        positions.append([len(it.completion_ids)])
    return labeller.uniform(refs, positions, samples, method="actions")


# ------------------------------------------------------------------------------------------ scores
def _mean_ci(values: np.ndarray, n_boot: int, seed: int) -> tuple[float | None, list[float] | None]:
    if len(values) == 0:
        return None, None
    ci, _ = cluster_bootstrap(
        lambda idx: float(np.mean(values[idx])), np.arange(len(values)), n_boot, seed, unit="state"
    )
    return float(np.mean(values)), ci


def score_actions(
    state_index: np.ndarray,
    mc: np.ndarray,
    n: np.ndarray,
    successes: np.ndarray,
    estimates: dict[str, np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    ceiling_repeats: int = 50,
) -> dict[str, Any]:
    """Scores of each estimator against MC over (state, action) pairs grouped by `state_index`:

    - ``within_spearman``: Spearman over one state's actions, averaged over states (bootstrap CI over
      states); states with fewer than 3 actions, or constant MC or estimator values, are left out and counted;
    - ``selection``: share of states where the estimator's argmax action has the best MC value (ties in MC
      count as right; Wilson CI) and the mean regret max_a Ẑ − Ẑ(argmax) (bootstrap CI over states);
    - ``pooled_spearman``: Spearman over all pairs (cluster bootstrap by state), beside ``noise_ceiling``
      (split-half, `split_half_noise_ceiling`) and ``random_choice`` (the expected accuracy and regret of a
      uniformly random action)."""
    groups = [np.flatnonzero(state_index == s) for s in np.unique(state_index)]
    out: dict[str, Any] = {
        "n_states": len(groups),
        "n_pairs": int(len(mc)),
        "noise_ceiling": split_half_noise_ceiling(n, successes, repeats=ceiling_repeats, seed=seed),
    }
    best = [float(mc[g].max()) for g in groups]
    rand_acc = np.array([np.mean(mc[g] >= mc[g].max() - 1e-12) for g in groups])
    rand_regret = np.array([mc[g].max() - mc[g].mean() for g in groups])
    out["random_choice"] = {"accuracy": float(rand_acc.mean()), "regret": float(rand_regret.mean())}
    out["mc_spread"] = {
        "mean_best_minus_worst": float(np.mean([mc[g].max() - mc[g].min() for g in groups])),
        "mean_best": float(np.mean(best)),
    }
    ests: dict[str, Any] = {}
    for name, est in estimates.items():
        rhos, skipped = [], {"fewer_than_3_actions": 0, "constant_mc": 0, "constant_estimator": 0}
        hits, regrets = [], []
        for g, b in zip(groups, best):
            chosen = g[int(np.argmax(est[g]))]
            hits.append(float(mc[chosen] >= b - 1e-12))
            regrets.append(b - float(mc[chosen]))
            if len(g) < 3:
                skipped["fewer_than_3_actions"] += 1
            elif constant_note(mc[g], "mc"):
                skipped["constant_mc"] += 1
            elif constant_note(est[g], "est"):
                skipped["constant_estimator"] += 1
            else:
                rhos.append(_spearman_raw(est[g], mc[g]))
        r = np.array([x for x in rhos if math.isfinite(x)])
        w_mean, w_ci = _mean_ci(r, n_boot, seed)
        acc = float(np.mean(hits))
        reg_mean, reg_ci = _mean_ci(np.array(regrets), n_boot, seed)
        ests[name] = {
            "within_spearman": {"value": w_mean, "ci": w_ci, "n_states": len(r), "skipped": skipped},
            "selection": {
                "accuracy": acc,
                "accuracy_ci": list(wilson_interval(sum(hits), len(hits))),
                "regret": reg_mean,
                "regret_ci": reg_ci,
                "n_states": len(hits),
            },
            "pooled_spearman": correlation(est, mc, groups=state_index, n_boot=n_boot, seed=seed, unit="state"),
        }
    out["estimators"] = ests
    return jsonable(out)


# ------------------------------------------------------------------------------------------ report
def plot_action_states(
    table: dict[str, np.ndarray],
    states: Sequence[ActionState],
    estimators: Sequence[str],
    chosen: Sequence[int],
    path: Path,
) -> Path | None:
    """One panel per chosen state: each action's MC value (x, Wilson bars) against each estimator's value
    standardised within the state (y: z-score, so estimators of different units share an axis)."""
    if not chosen:
        return None
    from .report import _plt

    plt = _plt()
    cols = min(len(chosen), 4)
    fig, axes = plt.subplots(1, cols, figsize=(4 * cols, 3.6), squeeze=False)
    markers = "osD^v<>pX*"
    for ax, s in zip(axes[0], chosen):
        g = np.flatnonzero(table["state"] == s)
        mc = table["mc_mean"][g]
        for k, name in enumerate(estimators):
            v = table[name][g]
            sd = v.std()
            z = (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)
            ax.scatter(mc, z, marker=markers[k % len(markers)], s=28, label=name, alpha=0.8)
        lo, hi = table["mc_ci_low"][g], table["mc_ci_high"][g]
        ax.errorbar(mc, np.full(len(g), -2.6), xerr=[mc - lo, hi - mc], fmt="|", color="grey", lw=1)
        st = states[s]
        ax.set_title(f"{st.state_id}\n{st.prompt.text}{st.prefix}", fontsize=8)
        ax.set_xlabel("MC value of x ⊕ a (bars: Wilson 95%)")
        ax.set_xlim(-0.05, 1.05)
    axes[0][0].set_ylabel("estimator, z-score within the state")
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _f(v: Any, d: int = 3) -> str:
    return fixed(v, d, none="–")  # a missing number in this section: an en dash


def _ci(ci: Any, d: int = 2) -> str:
    return interval(ci, d, missing="", sep=" ")


def render_actions_section(metrics: dict[str, Any], plot: str | None) -> str:
    """Markdown section of the actions study: one table per kind of state, the noise ceiling, the plot."""
    lines = [
        "## Values of actions: Q̂(x, a) vs Monte Carlo Ẑ(x ⊕ a)",
        "",
        f"{metrics['n_states']} states, {metrics['n_pairs']} (state, action) pairs, "
        f"{metrics['samples']} MC continuations after each action ({metrics['seconds']:.1f} s). "
        "Within-state Spearman: ranking of one state's actions, averaged over states; selection: does the "
        "estimator's best action have the best MC value, and the MC value lost when it does not (regret).",
        "",
    ]
    for kind, sc in metrics["kinds"].items():
        nc = sc["noise_ceiling"]
        rc = sc["random_choice"]
        lines += [
            f"### {kind} states ({sc['n_states']} states, {sc['n_pairs']} pairs; mean MC best − worst "
            f"{sc['mc_spread']['mean_best_minus_worst']:.2f})",
            "",
            "| estimator | within-state Spearman [95% CI] (states) | selection accuracy [CI] | regret [CI] | "
            "Spearman over all pairs [CI] |",
            "|---|---|---|---|---|",
        ]
        for name, e in sc["estimators"].items():
            w, s, p = e["within_spearman"], e["selection"], e["pooled_spearman"]
            lines.append(
                f"| {name} | {_f(w['value'])}{_ci(w['ci'])} ({w['n_states']}) | {_f(s['accuracy'], 2)}"
                f"{_ci(s['accuracy_ci'])} | {_f(s['regret'])}{_ci(s['regret_ci'])} | {_f(p.get('value'))}"
                f"{_ci(p.get('ci'))} |"
            )
        lines.append(f"| random action | – | {_f(rc['accuracy'], 2)} | {_f(rc['regret'])} | – |")
        lines += ["", f"Noise ceiling of the pooled Spearman: {_f(nc.get('spearman'))} ({nc.get('note', '')})", ""]
    if plot:
        lines += [f"![actions: estimators vs MC]({plot})", ""]
    return "\n".join(lines)
