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
`arith_strategy_states` (how much of the chain the first step folds, or the bare final answer). Both list the
correct step (or ``fold 1``) first; `shuffle_actions` puts each state's actions in a seeded random order and
records where each was listed, so no score can profit from a fixed index.

`score_actions` breaks ties among an estimator's highest values uniformly at random (scored exactly, as the
expectation over that choice), scores a constant estimator and the first-listed action beside a random choice,
and bootstraps every CI over prompts (the states of one prompt are resampled together).
"""

from __future__ import annotations

import dataclasses
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
    #: where each action stood in the list the task or file gave (empty: `actions` is that list's order)
    listed: list[int] = field(default_factory=list)

    @property
    def first_listed(self) -> int:
        """Index in `actions` of the action the task or file listed first (the correct step, ``fold 1``)."""
        return self.listed.index(0) if self.listed else 0


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


def shuffle_actions(states: Sequence[ActionState], seed: int = 0) -> list[ActionState]:
    """Copies of `states` whose actions (with their `correct` flags and labels) are in a random order drawn
    from (`seed`, state id), so the same state is shuffled the same way whatever else is scored; `listed`
    keeps where each action stood in the order given (`ActionState.first_listed`). The generators list the
    correct step or ``fold 1`` first: shuffled, no index carries the answer."""
    out = []
    for st in states:
        order = list(range(len(st.actions)))
        random.Random(f"{seed}|order|{st.state_id}").shuffle(order)
        given = st.listed or list(range(len(st.actions)))
        out.append(
            dataclasses.replace(
                st,
                actions=[st.actions[i] for i in order],
                correct=None if st.correct is None else [st.correct[i] for i in order],
                labels=[st.labels[i] for i in order] if st.labels else [],
                listed=[given[i] for i in order],
            )
        )
    return out


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
#: MC values this close to a state's best count as best (MC ties count as right)
MC_TIE = 1e-12


def _top_actions(values: np.ndarray) -> np.ndarray:
    """Mask of the actions holding an estimator's highest value in one state: all of them when several tie
    (to 1e-12 relative), all when no value is finite. A choice among them is uniform."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.ones(len(values), bool)
    top = float(values[finite].max())
    return finite & (values >= top - 1e-12 * max(1.0, abs(top)))


def selection_outcome(values: np.ndarray, mc: np.ndarray) -> tuple[float, float, bool]:
    """One state's ``(hit, regret, tied)`` when the action with the highest value is chosen, ties broken
    uniformly at random and scored as the expectation over that choice: hit = share of the tied top actions
    whose MC value is the state's best (MC ties count as right), regret = mean of max Ẑ − Ẑ over them. An
    estimator constant within the state therefore scores a random choice exactly, whatever the action order."""
    top = _top_actions(np.asarray(values, dtype=np.float64))
    best = float(mc.max())
    return float(np.mean(mc[top] >= best - MC_TIE)), float(np.mean(best - mc[top])), bool(top.sum() > 1)


def _prompt_mean(
    values: np.ndarray, prompts: np.ndarray, n_boot: int, seed: int, empty: str = "no states"
) -> dict[str, Any]:
    """``{"value", "ci", "note"?}``: the mean of per-state `values` with a 95% percentile bootstrap CI that
    resamples prompts with replacement, all states of a prompt together (`cluster_bootstrap`); value None
    for no states, CI None (with the note) for one prompt or ``n_boot = 0``."""
    if len(values) == 0:
        return {"value": None, "ci": None, "note": empty}
    ci, note = cluster_bootstrap(lambda idx: float(np.mean(values[idx])), prompts, n_boot, seed, unit="prompt")
    out: dict[str, Any] = {"value": float(np.mean(values)), "ci": ci}
    if note:
        out["note"] = note
    return out


def _score_estimator(
    est: np.ndarray,
    groups: list[np.ndarray],
    state_prompt: np.ndarray,
    mc: np.ndarray,
    prompt_index: np.ndarray,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    rhos, rho_prompts = [], []
    skipped = {"fewer_than_3_actions": 0, "constant_mc": 0, "constant_estimator": 0}
    hits, regrets, tied = [], [], 0
    for g, prompt in zip(groups, state_prompt):
        hit, regret, t = selection_outcome(est[g], mc[g])
        hits.append(hit)
        regrets.append(regret)
        tied += t
        if len(g) < 3:
            skipped["fewer_than_3_actions"] += 1
        elif constant_note(mc[g], "mc"):
            skipped["constant_mc"] += 1
        elif constant_note(est[g], "est"):
            skipped["constant_estimator"] += 1
        else:
            rho = _spearman_raw(est[g], mc[g])
            if math.isfinite(rho):
                rhos.append(rho)
                rho_prompts.append(prompt)
    within = _prompt_mean(
        np.array(rhos), np.array(rho_prompts), n_boot, seed, "no state has a defined within-state Spearman (skipped)"
    )
    acc = _prompt_mean(np.array(hits), state_prompt, n_boot, seed)
    reg = _prompt_mean(np.array(regrets), state_prompt, n_boot, seed)
    selection = {
        "accuracy": acc["value"],
        "accuracy_ci": acc["ci"],
        "regret": reg["value"],
        "regret_ci": reg["ci"],
        "n_states": len(hits),
        "n_tied_states": tied,
    }
    if "note" in acc:
        selection["note"] = acc["note"]
    return {
        "within_spearman": {**within, "n_states": len(rhos), "skipped": skipped},
        "selection": selection,
        "pooled_spearman": correlation(est, mc, groups=prompt_index, n_boot=n_boot, seed=seed, unit="prompt"),
    }


def score_actions(
    state_index: np.ndarray,
    prompt_index: np.ndarray,
    mc: np.ndarray,
    n: np.ndarray,
    successes: np.ndarray,
    estimates: dict[str, np.ndarray],
    first_listed: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ceiling_repeats: int = 50,
) -> dict[str, Any]:
    """Scores of each estimator against MC over (state, action) pairs grouped by `state_index`, the states
    grouped by `prompt_index` (each pair's prompt; every CI is a 95% percentile bootstrap that resamples
    prompts with replacement and keeps all their states, since the states of one prompt share its problem):

    - ``within_spearman``: Spearman over one state's actions, averaged over states; states with fewer than 3
      actions, or constant MC or estimator values, are left out and counted;
    - ``selection``: share of states where the estimator's highest-valued action has the best MC value (MC
      ties count as right) and the mean regret max_a Ẑ − Ẑ(chosen); ties among the highest values are broken
      uniformly at random, scored as the expectation (`selection_outcome`); ``n_tied_states`` counts them;
    - ``pooled_spearman``: Spearman over all pairs, beside ``noise_ceiling`` (split-half,
      `split_half_noise_ceiling`);
    - ``random_choice``: expected accuracy and regret of a uniformly random action;
    - ``baselines``: ``constant`` (the same value for every action: under the tie rule it must equal
      ``random_choice``) and, given `first_listed` (True for the action the task or file listed first),
      ``first_listed``, each scored like an estimator.

    ValueError when the pairs of one state name different prompts."""
    state_index, prompt_index, mc = np.asarray(state_index), np.asarray(prompt_index), np.asarray(mc, np.float64)
    groups = [np.flatnonzero(state_index == s) for s in np.unique(state_index)]
    for g in groups:
        if len(set(prompt_index[g].tolist())) != 1:
            raise ValueError(f"score_actions: state {state_index[g[0]]} has pairs of several prompts")
    state_prompt = np.array([prompt_index[g[0]] for g in groups])
    out: dict[str, Any] = {
        "n_states": len(groups),
        "n_pairs": int(len(mc)),
        "n_prompts": len(np.unique(state_prompt)),
        "bootstrap": {
            "unit": "prompt",
            "replicates": n_boot,
            "method": "95% percentile interval; each replicate draws prompts with replacement and keeps all "
            "their states and pairs",
        },
        "ties": "an estimator's highest value shared by several actions of a state: each is chosen with equal "
        "probability, accuracy and regret are the expectation over that choice",
        "noise_ceiling": split_half_noise_ceiling(n, successes, repeats=ceiling_repeats, seed=seed),
    }
    best = [float(mc[g].max()) for g in groups]
    rand_acc = np.array([np.mean(mc[g] >= mc[g].max() - MC_TIE) for g in groups])
    rand_regret = np.array([mc[g].max() - mc[g].mean() for g in groups])
    acc = _prompt_mean(rand_acc, state_prompt, n_boot, seed)
    reg = _prompt_mean(rand_regret, state_prompt, n_boot, seed)
    out["random_choice"] = {
        "accuracy": acc["value"],
        "accuracy_ci": acc["ci"],
        "regret": reg["value"],
        "regret_ci": reg["ci"],
        "n_states": len(groups),
    }
    out["mc_spread"] = {
        "mean_best_minus_worst": float(np.mean([mc[g].max() - mc[g].min() for g in groups])),
        "mean_best": float(np.mean(best)),
    }
    args = (groups, state_prompt, mc, prompt_index, n_boot, seed)
    out["estimators"] = {name: _score_estimator(np.asarray(est, np.float64), *args) for name, est in estimates.items()}
    out["baselines"] = {"constant": _score_estimator(np.zeros(len(mc)), *args)}
    if first_listed is not None:
        out["baselines"]["first_listed"] = _score_estimator(np.asarray(first_listed, np.float64), *args)
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
    from .report import _plt, save_figure

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
    return save_figure(fig, path, dpi=100)


def _f(v: Any, d: int = 3) -> str:
    return fixed(v, d, none="–")  # a missing number in this section: an en dash


def _ci(ci: Any, d: int = 2) -> str:
    return interval(ci, d, missing="", sep=" ")


def _row(name: str, e: dict[str, Any]) -> str:
    w, s, p = e["within_spearman"], e["selection"], e["pooled_spearman"]
    return (
        f"| {name} | {_f(w['value'])}{_ci(w['ci'])} ({w['n_states']}) | {_f(s['accuracy'], 2)}"
        f"{_ci(s['accuracy_ci'])} | {_f(s['regret'])}{_ci(s['regret_ci'])} | {_f(p.get('value'))}{_ci(p.get('ci'))} |"
    )


def render_actions_section(metrics: dict[str, Any], plot: str | None) -> str:
    """Markdown section of the actions study: one table per kind of state (estimators, then the baselines:
    a random action, a constant estimator, the first-listed action), the noise ceiling, the plot."""
    lines = [
        "## Values of actions: Q̂(x, a) vs Monte Carlo Ẑ(x ⊕ a)",
        "",
        f"{metrics['n_states']} states, {metrics['n_pairs']} (state, action) pairs, "
        f"{metrics['samples']} MC continuations after each action ({metrics['seconds']:.1f} s). "
        "Within-state Spearman: ranking of one state's actions, averaged over states; selection: does the "
        "estimator's best action have the best MC value, and the MC value lost when it does not (regret). "
        "Each state's actions are in a seeded random order; when several actions share an estimator's highest "
        "value, each is chosen with equal probability (the figures are the expectation), so a constant "
        "estimator scores a random action. 95% CIs: bootstrap over prompts (a replicate resamples prompts and "
        "keeps all their states), not over states.",
        "",
    ]
    for kind, sc in metrics["kinds"].items():
        nc = sc["noise_ceiling"]
        rc = sc["random_choice"]
        lines += [
            f"### {kind} states ({sc['n_states']} states of {sc['n_prompts']} prompts, {sc['n_pairs']} pairs; "
            f"mean MC best − worst {sc['mc_spread']['mean_best_minus_worst']:.2f})",
            "",
            "| estimator | within-state Spearman [95% CI] (states) | selection accuracy [CI] | regret [CI] | "
            "Spearman over all pairs [CI] |",
            "|---|---|---|---|---|",
        ]
        lines += [_row(name, e) for name, e in sc["estimators"].items()]
        lines.append(
            f"| *baseline:* random action | – | {_f(rc['accuracy'], 2)}{_ci(rc['accuracy_ci'])} | "
            f"{_f(rc['regret'])}{_ci(rc['regret_ci'])} | – |"
        )
        base = sc["baselines"]
        lines.append(_row("*baseline:* constant estimator (all actions tied)", base["constant"]))
        if "first_listed" in base:
            named = ", ".join(base["first_listed"].get("labels", []))
            lines.append(_row(f"*baseline:* first-listed action{f' ({named})' if named else ''}", base["first_listed"]))
        lines += ["", f"Noise ceiling of the pooled Spearman: {_f(nc.get('spearman'))} ({nc.get('note', '')})", ""]
    if plot:
        lines += [f"![actions: estimators vs MC]({plot})", ""]
    return "\n".join(lines)
