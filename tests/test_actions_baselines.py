"""Honest baselines of `prefixvalue actions` (issue 28, item 5): ties among an estimator's highest values are
broken uniformly at random (never to action 0), the study shuffles each state's actions, a constant estimator
and the first-listed action are scored beside a random choice, and every CI resamples prompts, not states.

    pytest tests/test_actions_baselines.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefixvalue.evaluation.actions import (
    arith_step_states,
    arith_strategy_states,
    score_actions,
    selection_outcome,
    shuffle_actions,
)
from prefixvalue.tasks import ArithTask


def _correct_first(n_states: int = 12, per: int = 4, seed: int = 0):
    """States whose first action is the best by MC (as the generators list the correct step), each its own
    prompt: (state, mc, n, successes)."""
    rng = np.random.default_rng(seed)
    mc = np.concatenate([np.r_[0.9, rng.uniform(0.0, 0.6, per - 1)] for _ in range(n_states)])
    state = np.repeat(np.arange(n_states), per)
    n = np.full(len(mc), 40)
    return state, mc, n, np.round(mc * 40)


def test_constant_estimator_scores_a_random_choice_not_the_first_action():
    state, mc, n, k = _correct_first()
    first = np.tile([True, False, False, False], 12)
    s = score_actions(state, state, mc, n, k, {"flat": np.full(len(mc), 0.3)}, first, n_boot=50)
    rand = s["random_choice"]
    for e in (s["estimators"]["flat"], s["baselines"]["constant"]):
        sel = e["selection"]
        # np.argmax of a constant picks action 0, the best here: accuracy 1.0, regret 0
        assert sel["accuracy"] == pytest.approx(rand["accuracy"]) == pytest.approx(0.25)
        assert sel["regret"] == pytest.approx(rand["regret"]) and sel["regret"] > 0.3
        assert sel["n_tied_states"] == 12
        assert e["within_spearman"]["value"] is None and e["within_spearman"]["skipped"]["constant_estimator"] == 12
        assert e["pooled_spearman"]["value"] is None
    fl = s["baselines"]["first_listed"]["selection"]
    assert fl["accuracy"] == 1.0 and fl["regret"] == 0.0 and fl["n_tied_states"] == 0


def test_partial_ties_are_broken_uniformly_whatever_the_order():
    # the estimator ties its two highest values: one of them is the best by MC, the other 0.8 worse
    hit, regret, tied = selection_outcome(np.array([1.0, 1.0, 0.0]), np.array([0.9, 0.1, 0.5]))
    assert (hit, regret, tied) == (0.5, pytest.approx(0.4), True)
    # a unique maximum is taken as it is; NaN is never the choice
    hit, regret, tied = selection_outcome(np.array([0.0, np.nan, 2.0]), np.array([0.1, 0.9, 0.3]))
    assert (hit, regret, tied) == (0.0, pytest.approx(0.6), False)
    # the same pairs in another order within each state: identical selection scores
    state, mc, n, k = _correct_first(seed=1)
    est = np.where(np.arange(len(mc)) % 4 < 2, 1.0, 0.0)  # actions 0 and 1 of every state tie at the top
    perm = np.concatenate([4 * s + np.random.default_rng(s).permutation(4) for s in range(12)])
    a = score_actions(state, state, mc, n, k, {"e": est}, n_boot=0)["estimators"]["e"]["selection"]
    b = score_actions(state, state, mc[perm], n[perm], k[perm], {"e": est[perm]}, n_boot=0)["estimators"]["e"]
    assert a["accuracy"] == pytest.approx(b["selection"]["accuracy"]) == pytest.approx(0.5)
    assert a["regret"] == pytest.approx(b["selection"]["regret"])


def test_shuffle_moves_the_correct_action_and_keeps_what_was_listed_first():
    task = ArithTask()
    prompts = list(task.prompts(4, split="test"))
    states = arith_step_states(task, prompts, wrong=3, seed=0) + arith_strategy_states(task, prompts)
    shuffled = shuffle_actions(states, seed=0)
    assert all(st.correct[0] for st in states if st.kind == "step")  # as generated: index 0
    where = [st.correct.index(True) for st in shuffled if st.kind == "step"]
    assert len(set(where)) >= 3, where  # the correct step's index varies
    assert len({st.labels.index("fold 1") for st in shuffled if st.kind == "strategy"}) >= 2
    for old, new in zip(states, shuffled):
        assert sorted(new.actions) == sorted(old.actions) and new.state_id == old.state_id
        # actions, flags, labels and listing order move together
        assert [old.actions[i] for i in new.listed] == new.actions
        assert [old.labels[i] for i in new.listed] == new.labels
        assert new.labels[new.first_listed] == ("correct" if old.kind == "step" else "fold 1")
        if old.correct is not None:
            assert [old.correct[i] for i in new.listed] == new.correct
    # seeded: the same seed repeats, per state whatever else is shuffled; another seed differs
    assert [st.actions for st in shuffle_actions(states, seed=0)] == [st.actions for st in shuffled]
    assert shuffle_actions(states[3:4], seed=0)[0].actions == shuffled[3].actions
    assert [st.actions for st in shuffle_actions(states, seed=1)] != [st.actions for st in shuffled]
    # shuffling a shuffled list keeps the original listing
    again = shuffle_actions(shuffled, seed=5)
    assert all(st.labels[st.first_listed] == old.labels[0] for st, old in zip(again, states))


def test_bootstrap_resamples_prompts_not_states():
    state, mc, n, k = _correct_first(n_states=40)
    # 8 prompts of 5 states; the estimator is right in every state of half the prompts, wrong in the others
    prompt = np.repeat(np.arange(8), 20)
    good = np.isin(prompt, [0, 2, 4, 6])
    est = np.where(good, mc, -mc)
    by_prompt = score_actions(state, prompt, mc, n, k, {"e": est}, n_boot=400)
    by_state = score_actions(state, state, mc, n, k, {"e": est}, n_boot=400)
    sp, ss = by_prompt["estimators"]["e"]["selection"], by_state["estimators"]["e"]["selection"]
    assert sp["accuracy"] == ss["accuracy"] == 0.5 and by_prompt["n_prompts"] == 8 and by_state["n_prompts"] == 40
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    # 8 independent units, not 40: the interval is about sqrt(5) times wider
    assert width(sp["accuracy_ci"]) > 1.6 * width(ss["accuracy_ci"])
    w_p, w_s = by_prompt["estimators"]["e"]["within_spearman"], by_state["estimators"]["e"]["within_spearman"]
    assert width(w_p["ci"]) > 1.6 * width(w_s["ci"])
    assert width(by_prompt["estimators"]["e"]["pooled_spearman"]["ci"]) > width(
        by_state["estimators"]["e"]["pooled_spearman"]["ci"]
    )
    # one prompt of many states: nothing to resample, no interval (a note says why)
    one = score_actions(state, np.zeros(len(mc), int), mc, n, k, {"e": est}, n_boot=200)
    e = one["estimators"]["e"]
    assert one["n_prompts"] == 1 and one["n_states"] == 40
    assert e["selection"]["accuracy_ci"] is None and "only 1 prompt" in e["selection"]["note"]
    assert e["within_spearman"]["ci"] is None and e["pooled_spearman"]["ci"] is None
    assert one["random_choice"]["accuracy_ci"] is None
    with pytest.raises(ValueError, match="several prompts"):
        score_actions(state, np.arange(len(mc)), mc, n, k, {"e": est}, n_boot=0)


@pytest.mark.slow  # the study end to end (about 5 s); the scoring, shuffle and bootstrap have fast tests above
def test_study_writes_the_baselines(tmp_path, tiny_model_dir):
    """The command end to end on a tiny random policy: shuffled actions in the table, the baselines and the
    prompt bootstrap in metrics.json and report.md."""
    import pyarrow.parquet as pq

    from prefixvalue.studies.actions import main

    out = tmp_path / "actions"
    argv = [f"out={out}", f"policy={tiny_model_dir}", "num_prompts=4", "samples=2", "max_new_tokens=24"]
    assert main([*argv, "n_bootstrap=20", "noise_ceiling_repeats=3", "threads=1", "device=cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())["actions"]
    t = pq.read_table(out / "actions.parquet").to_pydict()
    step = [i for i, kind in enumerate(t["kind"]) if kind == "step"]
    first = [i for i in step if t["listed"][i] == 0]
    assert {t["action_label"][i] for i in first} == {"correct"} and len(first) == len(set(t["state"][i] for i in step))
    # the correct step is not always the state's first row
    first_row = {t["state"][i]: i for i in reversed(step)}
    assert {t["action_label"][i] for i in first_row.values()} != {"correct"}
    for kind, sc in m["kinds"].items():
        assert sc["bootstrap"]["unit"] == "prompt" and sc["n_prompts"] == 4
        assert sc["baselines"]["constant"]["selection"]["accuracy"] == pytest.approx(sc["random_choice"]["accuracy"])
        want = {"step": ["correct"], "strategy": ["fold 1"], "all": ["correct", "fold 1"]}[kind]
        assert sc["baselines"]["first_listed"]["labels"] == want
    md = (out / "report.md").read_text()
    assert "bootstrap over prompts" in md and "*baseline:* constant estimator" in md
    assert "*baseline:* first-listed action (correct)" in md
