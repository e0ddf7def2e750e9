"""Values of alternatives (`prefixvalue actions`, `prefixvalue advantages`) against exact values.

The exact-value toy LM of tests/test_mc.py (a Markov GPT-2 over {a, b, x}; success iff the completion ends
in 'a' and never wrote 'x') gives the exact value of any prefix, so the MC values of actions x ⊕ a and of
counterfactual tokens s ⊕ y' are checked against the truth; the scores and the counterfactual values of
the value models are checked against hand-computable cases.

    pytest tests/test_alternatives.py
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_mc import MAX_NEW, EndsInA, markov_gpt2, prefix_value

from prefixvalue.config import ConfigError
from prefixvalue.evaluation.actions import (
    ActionState,
    action_estimates,
    action_items,
    arith_step_states,
    arith_strategy_states,
    mc_action_values,
    read_action_states,
    score_actions,
)
from prefixvalue.evaluation.advantages import (
    TraceInput,
    _ceiling_per_prefix,
    candidate_cost,
    candidate_logprobs,
    candidate_table,
    choose_check_prefixes,
    clear_sign,
    forks_from_labels,
    implicit_candidate_values,
    mc_check,
    model_candidate_values,
    policy_candidates,
    render_advantages_section,
    score_check,
)
from prefixvalue.sampling.hf import HFSampler
from prefixvalue.sampling.mc import MCLabeller, TraceRef
from prefixvalue.sampling.sampler import SamplingParams
from prefixvalue.stats import wilson_interval
from prefixvalue.tasks import ArithTask, Prompt
from prefixvalue.tokenizer import build_char_tokenizer
from prefixvalue.value import ValueModelConfig, build_value_model

from conftest import SHIPPED_POLICY

SAMPLES = 64


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    tok = build_char_tokenizer("abx")
    model = markov_gpt2(tok)
    labeller = MCLabeller(
        HFSampler(model, tok), tok, EndsInA(), SamplingParams(max_new_tokens=MAX_NEW, seed=3), verifier_timeout_s=None
    )
    return tok, model, labeller


def _covers(mean: float, n: int, exact: float) -> bool:
    """|Ẑ − exact| within 3.3 binomial standard errors (99.9%), floored for exact values near 0 or 1."""
    return abs(mean - exact) <= 3.3 * math.sqrt(max(exact * (1 - exact), 0.02) / n)


def test_mc_values_of_actions_match_exact_values(toy):
    tok, model, labeller = toy
    prompt = Prompt("p0", "b")
    states = [
        ActionState("s0", prompt, "", ["a", "ab", "x"]),
        ActionState("s1", prompt, "ba", ["a", "bb", "xa"]),
        ActionState("s2", prompt, "abab", ["aaaa", "b"]),
    ]
    items = action_items(states, tok, lambda text: tok.encode(text))
    est = mc_action_values(labeller, states, items, SAMPLES, tok.eos_token_id)
    exact = [prefix_value("b", states[it.state].prefix + states[it.state].actions[it.action]) for it in items]
    assert all(e.n == SAMPLES and e.position == len(it.completion_ids) for e, it in zip(est, items))
    assert all(_covers(e.mean, e.n, x) for e, x in zip(est, exact)), [(e.mean, x) for e, x in zip(est, exact)]
    # the exact values differ across actions, so the check is not vacuous ('x' sends the value to 0)
    assert max(exact) - min(exact) > 0.3 and min(exact) == 0.0
    # the estimators run on the same pairs: log π(a | x) is the Markov chain's product of transitions
    with torch.no_grad():
        vals = action_estimates(model, items, {}, omega=1.0)
    assert vals["logprob"][0] == pytest.approx(math.log(0.35), abs=1e-4)  # 'a' after 'b'
    assert vals["logprob"][1] == pytest.approx(math.log(0.35 * 0.30), abs=1e-4)  # 'ab' after 'b'
    assert vals["logprob_per_token"][1] == pytest.approx(vals["logprob"][1] / 2)
    assert set(vals) == {"logprob", "logprob_per_token", "mellowmax", "logsumexp"}


def test_counterfactual_token_values_match_exact_values(toy):
    tok, model, labeller = toy
    comp = tok.encode("abab") + [tok.eos_token_id]
    trace = TraceInput("t0", "p0", tok.encode("b"), comp)
    ref = TraceRef("t0", Prompt("p0", "b"), tuple(trace.prompt_ids), tuple(comp))
    with torch.no_grad():
        cands = policy_candidates(model, [trace], top_k=4)
    # every prefix: the four tokens the chain can write (eos, a, b, x), the sampled one among them
    assert len(cands[0]["token_id"]) == 4 * len(comp)
    table = candidate_table([trace], cands, {}, tok)
    chosen = choose_check_prefixes([trace], 2, forks=[("t0", 3)], seed=0)
    assert chosen[0] == (0, 3, True) and len(chosen) == 2
    check = mc_check(labeller, {"t0": ref}, [trace], table, chosen, SAMPLES, [tok.eos_token_id])
    text = {tok.convert_tokens_to_ids(c): c for c in "abx"}
    for p, y, mean, n, prefix in zip(
        check["position"], check["token_id"], check["mc_mean"], check["mc_n"], check["mc_prefix"]
    ):
        written = tok.decode(comp[:p])
        if y == tok.eos_token_id:  # a finished completion: its verifier score, no sampling
            assert n == 0 and mean == float(written.endswith("a") and "x" not in written)
        else:
            assert _covers(mean, n, prefix_value("b", written + text[int(y)])), (p, y, mean)
        assert _covers(prefix, SAMPLES, prefix_value("b", written))
    # the prefix's own Wilson interval is kept, so a clear sign counts both estimates' noise (`clear_sign`)
    for prefix, lo, hi in zip(check["mc_prefix"], check["mc_prefix_ci_low"], check["mc_prefix_ci_high"]):
        assert (lo, hi) == pytest.approx(wilson_interval(prefix * SAMPLES, SAMPLES))
    assert "Newcombe" in clear_sign(check)[1]
    assert check["fork"].sum() == 4  # the fork's four candidates
    # the probabilities in the dataset are the chain's transitions
    row = (table["position"] == 1) & (table["token_id"] == tok.convert_tokens_to_ids("x"))
    assert table["prob"][row][0] == pytest.approx(0.15, abs=1e-5)  # 'x' after 'a'


def _sequences(model, traces, cands, batch_size):
    """Every candidate's value from its own sequence s_p ⊕ y' (the head's way), for any kind."""
    return model._sequence_candidate_values(
        [t.prompt_ids for t in traces],
        [t.completion_ids for t in traces],
        [c["position"] for c in cands],
        [c["token_id"] for c in cands],
        batch_size,
    )


def test_one_pass_values_equal_their_own_sequences(tiny_tokenizer):
    """The one-pass candidate values (implicit, Q-head) are V(s ⊕ y') of s ⊕ y' itself, and the head's value of
    the sampled token is its value at the next prefix of the trace; `candidate_cost` counts what each ran."""
    from conftest import make_tiny_gpt2

    tok = tiny_tokenizer
    implicit = build_value_model(ValueModelConfig(kind="implicit", base_rate=0.3), make_tiny_gpt2(len(tok)))
    head = build_value_model(ValueModelConfig(kind="head", backbone="frozen", base_rate=0.3), make_tiny_gpt2(len(tok)))
    qhead = build_value_model(ValueModelConfig(kind="qhead", base_rate=0.3, q_top_k=3), make_tiny_gpt2(len(tok)))
    with torch.no_grad():
        for n, p in [*implicit.named_parameters(), *qhead.named_parameters()]:
            if "lora_B" in n:
                p.normal_(0, 0.5)  # an adapted model: non-zero log-ratios
        for p in [*head.head_parameters(), *qhead.head_parameters()]:
            p.normal_(0, 0.5)
    traces = [
        TraceInput("t0", "p0", tok.encode("Q:1+2="), tok.encode("1+2=3;A:3")),
        TraceInput("t1", "p1", tok.encode("Q:4*2="), tok.encode("4*2=8")),
    ]
    with torch.no_grad():
        cands = policy_candidates(implicit.lm.get_base_model(), traces, top_k=2)
        one_pass = implicit_candidate_values(implicit, traces, cands)
        api = model_candidate_values(implicit, traces, cands, batch_size=1)
        direct = _sequences(implicit, traces, cands, batch_size=7)
        head_vals = model_candidate_values(head, traces, cands, batch_size=5)
        head_next = head.predict([t.prompt_ids for t in traces], [t.completion_ids for t in traces])
        q_one = model_candidate_values(qhead, traces, cands, batch_size=2)
        q_seq = _sequences(qhead, traces, cands, batch_size=3)
        q_next = qhead.predict([t.prompt_ids for t in traces], [t.completion_ids for t in traces])
    for (v, r), a, d in zip(one_pass, api, direct):
        np.testing.assert_allclose(v, d, atol=1e-5)
        np.testing.assert_allclose(a, d, atol=1e-5)
        assert np.abs(r).max() > 1e-3  # the adapters moved π_φ away from π_ref
    for c, hv, nxt in zip(cands, head_vals, head_next):
        s = c["sampled"]
        np.testing.assert_allclose(hv[s], nxt[c["position"][s] + 1], atol=1e-5)
    # the Q-head: one pass equals its own sequences (whose last position reads Q of the last token); its value
    # of a sampled token is Q(s, y), not the aggregate V(s ⊕ y) at the next prefix
    gaps = []
    for c, q1, qs, nxt in zip(cands, q_one, q_seq, q_next):
        np.testing.assert_allclose(q1, qs, atol=1e-5)
        s = c["sampled"] & (c["position"] + 1 < len(nxt) - 1)
        gaps.append(np.abs(q1[s] - nxt[c["position"][s] + 1]))
    assert np.concatenate(gaps).max() > 1e-3
    n_cands = sum(len(c["token_id"]) for c in cands)
    assert candidate_cost(traces, cands, one_pass=True)["sequences"] == 2
    seq_cost = candidate_cost(traces, cands, one_pass=False)
    assert seq_cost["sequences"] == n_cands
    assert seq_cost["tokens"] == sum(
        len(t.prompt_ids) + p + 1 for t, c in zip(traces, cands) for p in c["position"].tolist()
    )
    # a model that runs the reference beside its adapted backbone (or an ensemble) counts every pass's tokens
    twice = candidate_cost(traces, cands, one_pass=False, passes=2)
    assert twice["tokens"] == 2 * seq_cost["tokens"] and twice["passes"] == 2
    assert twice["sequences"] == seq_cost["sequences"]


def test_candidate_logprobs_are_the_models_own_next_token_logprobs(tiny_tokenizer):
    """A checker's log-probability of each candidate equals that of the model run on s_p alone, whatever the batch
    (right padding), in the candidates' order."""
    from conftest import make_tiny_gpt2

    tok = tiny_tokenizer
    policy, checker = make_tiny_gpt2(len(tok)), make_tiny_gpt2(len(tok))
    with torch.no_grad():
        for p in checker.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # a different model from the policy
    traces = [
        TraceInput("t0", "p0", tok.encode("Q:1+2="), tok.encode("1+2=3;A:3")),
        TraceInput("t1", "p1", tok.encode("Q:4*2="), tok.encode("4*2=8")),
    ]
    with torch.no_grad():
        cands = policy_candidates(policy, traces, top_k=3)
        together = candidate_logprobs(checker, traces, cands, batch_size=2)
        alone = candidate_logprobs(checker, traces, cands, batch_size=1)
        for t, c, lp in zip(traces, cands, together):
            for p, y, v in zip(c["position"].tolist(), c["token_id"].tolist(), lp.tolist()):
                ids = torch.tensor([t.prompt_ids + t.completion_ids[:p]])
                direct = torch.log_softmax(checker(input_ids=ids).logits[0, -1].float(), -1)[y]
                assert v == pytest.approx(float(direct), abs=1e-4)
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # the policy itself: its candidates' own log-probabilities
    own = candidate_logprobs(policy, traces, cands, batch_size=2)
    for c, lp in zip(cands, own):
        np.testing.assert_allclose(lp, c["logprob"], atol=1e-4)


def test_scores_on_known_cases():
    state = np.repeat(np.arange(4), 3)
    mc = np.array([0.9, 0.5, 0.1, 0.2, 0.8, 0.4, 0.3, 0.6, 0.0, 1.0, 0.5, 0.25])
    n = np.full(12, 40)
    succ = mc * 40
    # each state its own prompt (the bootstrap unit); the first-listed action is the best in states 0 and 3
    s = score_actions(state, state, mc, n, succ, {"truth": mc, "reversed": -mc}, np.tile([True, False, False], 4), 50)
    t, r = s["estimators"]["truth"], s["estimators"]["reversed"]
    assert t["within_spearman"]["value"] == pytest.approx(1.0) and r["within_spearman"]["value"] == pytest.approx(-1.0)
    assert t["selection"]["accuracy"] == 1.0 and t["selection"]["regret"] == 0.0
    worst = np.mean([mc[state == k].max() - mc[state == k].min() for k in range(4)])
    assert r["selection"]["accuracy"] == 0.0 and r["selection"]["regret"] == pytest.approx(worst)
    assert s["random_choice"]["accuracy"] == pytest.approx(1 / 3)
    # no information scores a random choice; listing first is right in 2 of 4 states
    assert s["baselines"]["constant"]["selection"]["accuracy"] == pytest.approx(1 / 3)
    assert s["baselines"]["constant"]["selection"]["n_tied_states"] == 4
    assert s["baselines"]["first_listed"]["selection"]["accuracy"] == 0.5
    assert s["n_prompts"] == 4 and s["bootstrap"]["unit"] == "prompt"
    # the advantage check: a model whose values are the MC values agrees in sign wherever MC is clear
    check = {
        "prefix_id": np.repeat(np.array(["a", "b"]), 3),
        "sampled": np.array([True, False, False] * 2),
        "mc_mean": np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.6]),
        "mc_ci_low": np.array([0.8, 0.0, 0.4, 0.1, 0.7, 0.5]),
        "mc_ci_high": np.array([1.0, 0.2, 0.6, 0.3, 0.9, 0.7]),
        "mc_prefix": np.array([0.5] * 3 + [0.4] * 3),
        "fork": np.zeros(6, bool),
        "logprob": np.log([0.8, 0.1, 0.1, 0.95, 0.04, 0.01]),
        "mc_n": np.zeros(6, dtype=np.int64),
    }
    check["mc_advantage"] = check["mc_mean"] - check["mc_prefix"]
    check["value_m"] = check["mc_mean"].copy()
    check["advantage_m"] = check["mc_advantage"].copy()
    sc = score_check(check, ["m"], n_boot=20)
    m = sc["models"]["m"]
    assert m["within_spearman"]["value"] == pytest.approx(1.0)
    assert m["sign_agreement_counterfactual"]["value"] == 1.0 and m["sign_agreement_counterfactual"]["n"] == 3
    assert m["sign_agreement_sampled"]["n"] == 2
    assert m["calibration_counterfactual"]["brier"] == 0.0 and m["calibration_counterfactual"]["ece"] == 0.0
    # prefix a is a decision (the policy's top token 0.8 < 0.9), b a confident prefix (0.95): scored apart
    check["value_half"] = np.where(check["prefix_id"] == "a", check["mc_mean"], -check["mc_mean"])
    check["advantage_half"] = check["value_half"] - check["mc_prefix"]
    assert "checker_prob" not in sc  # no checker column, no checker row
    check["checker_logprob"] = np.log(np.where(check["prefix_id"] == "a", check["mc_mean"], 1.0 - check["mc_mean"]))
    half = score_check(check, ["half"], n_boot=20)
    # a checker that ranks prefix a's candidates as MC does and b's reversed: scored as the policy is, by part
    ch = half["checker_prob"]
    assert ch["within_spearman"]["value"] == pytest.approx(0.0)
    assert ch["within_by_prefix"]["decision"]["value"] == pytest.approx(1.0)
    assert ch["within_by_prefix"]["confident"]["value"] == pytest.approx(-1.0)
    shown = render_advantages_section(
        {
            "n_traces": 2,
            "top_k": 2,
            "n_rows": 6,
            "dataset": "advantages.parquet",
            "samples": 2,
            "check": half,
            "checker": {"read_by": "half", "path": "ckpt/checker"},
            "verdict": None,
        }
    )
    assert "| checker π_c(y'|s), read by half | `ckpt/checker` | 0.000" in shown
    by = half["models"]["half"]["within_by_prefix"]
    assert by["decision"]["value"] == pytest.approx(1.0) and by["decision"]["n_prefixes"] == 1
    assert by["confident"]["value"] == pytest.approx(-1.0) and by["confident"]["n_prefixes"] == 1
    assert half["models"]["half"]["within_spearman"]["value"] == pytest.approx(0.0)
    assert half["policy_prob"]["within_by_prefix"]["decision"]["n_prefixes"] == 1
    # exact candidate values (n = 0, a terminal score) redraw to themselves: the ceiling is 1; 2 samples each lose rank
    assert sc["within_noise_ceiling"]["value"] == pytest.approx(1.0) and sc["within_noise_ceiling"]["n_prefixes"] == 2
    check["mc_n"] = np.full(6, 2)
    redrawn = score_check(check, ["m"], n_boot=20)
    whole, parts = redrawn["within_noise_ceiling"], redrawn["within_noise_ceiling_by_prefix"]
    assert whole["value"] < 0.9
    # the decision and confident ceilings average the same per-prefix redraws as the whole one
    assert whole["value"] * whole["n_prefixes"] == pytest.approx(
        sum((p["value"] or 0.0) * p["n_prefixes"] for p in parts.values())
    )


def test_value_ceiling_counts_ties_a_value_cannot_match():
    """MC with one right candidate (32 of 32) and four at 0 of 32: two redraws keep the zeros tied (ceiling 1), a
    value equal to the true probabilities orders them and cannot (5 / √50 ≈ 0.707 whatever its order); with
    distinct, well-separated MC values both ceilings are near 1."""
    mc = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.7, 0.5, 0.3, 0.1])
    n = np.full(10, 32)
    check = {
        "prefix_id": np.repeat(np.array(["tied", "spread"]), 5),
        "sampled": np.array([True, False, False, False, False] * 2),
        "mc_mean": mc,
        "mc_n": n,
        "mc_successes": mc * n,
        "mc_prefix": np.full(10, 0.5),
        "fork": np.zeros(10, bool),
        "logprob": np.log(np.array([0.96, 0.01, 0.01, 0.01, 0.01] * 2)),
    }
    check["mc_ci_low"], check["mc_ci_high"] = mc - 0.05, mc + 0.05
    check["mc_advantage"] = mc - check["mc_prefix"]
    check["value_m"], check["advantage_m"] = mc.copy(), check["mc_advantage"].copy()
    groups = [np.arange(5), np.arange(5, 10)]
    redraw = _ceiling_per_prefix(check, groups, 200, 0, rule="redraw")
    value = _ceiling_per_prefix(check, groups, 200, 0, rule="value")
    assert redraw[0] == pytest.approx(1.0)
    assert value[0] == pytest.approx(5 / np.sqrt(50), abs=1e-9)
    assert value[1] > 0.9 and redraw[1] > 0.9
    sc = score_check(check, ["m"], n_boot=20)
    assert sc["within_value_ceiling"]["value"] == pytest.approx(np.mean(value), abs=0.02)
    assert sc["within_value_ceiling"]["n_prefixes"] == 2
    assert sc["within_value_ceiling_by_prefix"]["confident"]["n_prefixes"] == 2
    shown = render_advantages_section(
        {"n_traces": 2, "top_k": 4, "n_rows": 10, "dataset": "advantages.parquet", "samples": 32, "check": sc}
    )
    assert "| value ceiling: the true values (posterior draws) against MC | – | 0.8" in shown
    with pytest.raises(ValueError, match="ceiling rule"):
        _ceiling_per_prefix(check, groups, 2, 0, rule="plug-in")


def test_arith_action_sets():
    task = ArithTask()
    prompts = list(task.prompts(3, split="test"))
    states = arith_step_states(task, prompts, wrong=3, seed=0)
    # the generators list the correct step first (the study shuffles: tests/test_actions_baselines.py)
    for st in states:
        full = [st.prefix + a for a in st.actions]
        labels = [task.step_labels(st.prompt, f) for f in full]
        # the correct action keeps every step right; each wrong variant makes its own step wrong
        assert all(labels[0]) and st.correct[0] and not any(st.correct[1:])
        assert all(not lab[-1] for lab in labels[1:]), (st.state_id, st.actions)
        assert len(set(st.actions)) == len(st.actions) >= 3
    assert sum(st.prefix == "" for st in states) == 3
    strat = arith_strategy_states(task, prompts, max_fold=3)
    nums, ops = task.parse_prompt(prompts[0].text)
    assert strat[0].actions[0] == f"{nums[0]}{ops[0]}{nums[1]}=" and strat[0].actions[-1] == "A:"
    assert strat[0].labels[strat[0].first_listed] == "fold 1" and states[0].first_listed == 0


def test_read_action_states_names_the_bad_line(tmp_path):
    path = tmp_path / "a.jsonl"
    good = {"prompt": "Q:1+2=", "actions": ["1+2=3;", "1+2=4;"], "state_id": "s"}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"prompt": "Q:1=", "actions": ["x"]}) + "\n")
    with pytest.raises(ConfigError, match=r"a\.jsonl, line 3: 'actions' must be a list of at least 2"):
        read_action_states(path)
    path.write_text(json.dumps(good) + "\n")
    (st,) = read_action_states(path)
    assert st.prefix == "" and st.actions == good["actions"] and st.prompt.prompt_id == "s"
    path.write_text("{not json\n")
    with pytest.raises(ConfigError, match=r"a\.jsonl, line 1: invalid JSON"):
        read_action_states(path)


def test_forks_from_labels_picks_the_largest_jumps():
    labels = {
        "trace_id": ["t0", "t0", "t0", "t1", "t1", "t2", "t2"],
        "position": [0, 1, 2, 0, 1, 0, 1],
        "mean": [0.9, 0.8, 0.1, 0.5, 0.45, 0.2, 0.9],
    }
    assert forks_from_labels(labels, 5) == [("t0", 1), ("t2", 0)]
    assert forks_from_labels(labels, 5, trace_ids={"t2"}) == [("t2", 0)]


def test_stage_configs_reject_bad_values():
    from prefixvalue.config import parse_config
    from prefixvalue.studies.actions import ActionsConfig, checkpoint_names
    from prefixvalue.studies.advantages import AdvantagesConfig

    with pytest.raises(ConfigError, match="samples must be >= 1"):
        parse_config(ActionsConfig, ["samples=0"])
    with pytest.raises(ConfigError, match="generates no actions"):
        parse_config(ActionsConfig, ["out=x", "policy=p", "task=jsonl"]).check_inputs()
    with pytest.raises(ConfigError, match="checkpoints is required"):
        parse_config(AdvantagesConfig, ["out=x", "traces=t"]).check_inputs()
    assert list(checkpoint_names(["r/train_head/final", "r/train_head/checkpoint-2", "m"])) == ["head", "head_2", "m"]


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED_POLICY.exists(), reason="the shipped policy data/policies/arith-tiny is absent")
def test_quickstart_alternatives_flag_writes_both_studies(tmp_path, monkeypatch):
    """`quickstart alternatives=true` at tiny sizes: the alternatives model trains on candidate labels of training
    traces, the one-pass models are ordered by their validation check, both stages run on the trained checkpoints,
    their figures land in metrics.json and their sections in report.md."""
    from prefixvalue.stages import quickstart as qs

    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "qs"
    argv = [
        f"out={out}",
        f"policy={SHIPPED_POLICY}",
        "collect.num_prompts=16",
        "collect.traces_per_prompt=4",
        "label.samples=4",
        "label_max_traces=4",
        "short_samples=4",
        "forks=1",
        "fork_samples=4",
        "threads=1",
        "seeds=1",
        "train_workers=1",
        "value_models={implicit: {value_model.kind: implicit}, head: {value_model.kind: head}}",
        "train.max_steps=2",
        "train.per_device_batch_size=8",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        "train.heldout_fraction=0.3",
        "train.validation_fraction=0.4",
        "train.report_to=disk",
        "evaluate.n_bootstrap=10",
        "evaluate.noise_ceiling_repeats=5",
        "evaluate.report_to=disk",
        "alternatives=true",
        # the Q-head reads the shipped checker: the advantages then rank the candidates by the checker too
        "alternatives_models={qc: {value_model.kind: qhead, value_model.backbone: frozen, value_model.checker: "
        f"{SHIPPED_POLICY.parent / 'arith-checker'}}}}}",
        "alternatives_traces=3",
        "alternatives_samples=2",
        "alternatives_candidates=2",
        "actions.num_prompts=2",
        "actions.samples=4",
        "actions.n_bootstrap=10",
        "advantages.max_traces=3",
        "advantages.mc_prefixes=3",
        "advantages.mc_forks=1",
        "advantages.samples=4",
        "advantages.n_bootstrap=10",
    ]
    assert qs.main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    a, v = m["actions"], m["advantages"]
    assert set(a["kinds"]) == {"step", "strategy", "all"} and "learned_implicit" in a["estimators"]
    assert a["kinds"]["step"]["estimators"]["learned_head"]["selection"]["n_states"] > 0
    assert a["kinds"]["step"]["baselines"]["first_listed"]["labels"] == ["correct"]
    assert set(v["models"]) == {"implicit", "head", "qc"} and v["check"]["n_prefixes"] == 3 and v["split"] == "test"
    assert v["checker"]["read_by"] == "qc" and v["checker"]["path"].endswith("arith-checker")
    assert v["check"]["checker_prob"]["within_spearman"]["n_prefixes"] <= 3
    table = pq.read_table(out / "advantages" / "advantages.parquet").column_names
    assert "checker_logprob" in table and "checker_logprob" in json.loads(
        (out / "advantages" / "columns.json").read_text()
    )
    # qc trained on the candidate labels of training traces; the one-pass models chosen between on validation
    cands = pq.read_table(out / "labels_candidates" / "candidates.parquet")
    record = json.loads((out / "train_qc" / "final_metrics.json").read_text())["training_signal"]["candidate_labels"]
    assert 0 < record["labels"] == len(cands) and record["weight"] == 1.0
    (pick,) = [c for c in m["selection"] if c["what"].startswith("one-pass candidate values")]
    assert pick["split"] == "validation" and set(pick["candidates"]) == {"implicit", "qc"}
    val = json.loads((out / "advantages_validation" / "metrics.json").read_text())["advantages"]
    assert val["split"] == "validation" and set(val["models"]) == {"implicit", "qc"}
    assert v["verdict_model"] == pick["chosen"] == max(pick["candidates"], key=lambda n: pick["candidates"][n] or -1)
    assert {"actions", "advantages"} <= set(m["quickstart"]["seconds"])
    md = (out / "report.md").read_text()
    assert "## Values of actions" in md and "## Counterfactual token values" in md and "actions/actions.png" in md
    assert (out / "actions" / "actions.png").exists() and (out / "advantages" / "advantages.parquet").exists()
