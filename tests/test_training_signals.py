"""Every training signal of `prefixvalue train`, checked against exact prefix values.

The policy is the Markov GPT-2 of `test_mc` (its next-token distribution depends only on the last token).
The task succeeds iff the completion ends in 'a'; with a long budget the value of a prefix depends only on
its last character, which is what a linear head on the frozen Markov backbone can represent exactly
(its hidden state is a function of the last token). So training a head with any correct signal must
converge to the exact values, and a wrong target (a shifted TD bootstrap, a trie that mixes prefixes, a
label read at the wrong position) would converge somewhere else.
"""

from __future__ import annotations

import functools
import json
import random

import numpy as np
import pytest
import torch
from test_mc import TABLE, markov_gpt2
from transformers import AutoModelForCausalLM

from prefixvalue import training as train_stage
from prefixvalue.config import ConfigError, parse_config
from prefixvalue.data import rows_to_dataset
from prefixvalue.sampling.hf import HFSampler
from prefixvalue.sampling.mc import MCLabeller, TraceRef
from prefixvalue.sampling.positions import positions
from prefixvalue.sampling.sampler import SamplingParams
from prefixvalue.tasks.base import Prompt, Task, VerifierResult
from prefixvalue.tokenizer import build_char_tokenizer
from prefixvalue.value import load_value_model
from prefixvalue.value.signals import SIGNALS, build_signal
from prefixvalue.value.targets import (
    attach_reference_targets,
    reference_path_values,
    reference_solutions,
    sibling_targets,
    td_lambda_targets,
)

from test_value_fixtures import _rows

MAX_NEW = 40  # long enough that the value of a short prefix no longer depends on the tokens left
PROMPTS = ("b", "a")


class EndsInA(Task):
    name = "ends-in-a-only"

    def prompts(self, num=None, split="train"):
        return iter(())

    def verify(self, prompt: Prompt, completion: str) -> VerifierResult:
        return VerifierResult(float((prompt.text + completion).endswith("a")))


@functools.cache
def exact_value(last: str, left: int) -> float:
    """P(success) from a state: last character of prompt ⊕ completion, tokens left."""
    if left == 0:
        return float(last == "a")
    total = 0.0
    for nxt, pr in TABLE[last].items():
        total += pr * (float(last == "a") if nxt == "<eos>" else exact_value(nxt, left - 1))
    return total


def prefix_value(prompt: str, completion: str) -> float:
    return exact_value((prompt + completion)[-1], MAX_NEW - len(completion))


def sample_completion(rng: random.Random, last: str) -> str:
    out = ""
    while len(out) < MAX_NEW:
        row = TABLE[last]
        nxt = rng.choices(list(row), weights=list(row.values()))[0]
        if nxt == "<eos>":
            break
        out += nxt
        last = nxt
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The saved Markov policy and 1500 traces sampled from it (750 per prompt), in the traces contract."""
    root = tmp_path_factory.mktemp("signals")
    tok = build_char_tokenizer("abx")
    policy = root / "policy"
    markov_gpt2(tok).save_pretrained(policy)
    tok.save_pretrained(policy)
    rng = random.Random(0)
    prompts, prompt_ids, comps, tids = [], [], [], []
    for i in range(1500):
        text = PROMPTS[i % 2]
        completion = sample_completion(rng, text)
        ids = tok.encode(completion)
        if len(completion) < MAX_NEW:
            ids = ids + [tok.eos_token_id]
        prompts.append(Prompt(f"p{i % 2}", text))
        prompt_ids.append(tok.encode(text))
        comps.append(ids)
        tids.append(f"t{i}")
    rows = _rows(EndsInA(), tok, prompts, prompt_ids, comps, tids, {})
    traces = root / "traces"
    rows_to_dataset(rows).save_to_disk(str(traces))
    return tok, policy, traces, rows


def _train(toy, out, **kw) -> dict:
    tok, policy, traces, _ = toy
    args = {
        "traces": traces,
        "policy": policy,
        "output_dir": out,
        "value_model.kind": "head",
        "value_model.backbone": "frozen",
        "heldout_fraction": 0.0,  # two prompts only: every trace trains
        "validation_fraction": 0.0,
        "per_device_batch_size": 64,
        "max_steps": 600,
        "lr": 0.1,
        "lr_scheduler": "cosine",
        "warmup_steps": 0,
        "eval_every": 1000,
        "checkpoint_every": 0,
        "report_to": "none",
        "threads": 1,
        **kw,
    }
    return train_stage.run(parse_config(train_stage.TrainConfig, [f"{k}={v}" for k, v in args.items()]))


# probe prefixes: (prompt, completion) with many tokens left; their exact values differ by state
PROBES = [("b", ""), ("a", ""), ("b", "a"), ("b", "b"), ("b", "x"), ("a", "ab"), ("b", "aax"), ("a", "bba")]


def _max_error(toy, checkpoint) -> float:
    tok = toy[0]
    model = load_value_model(checkpoint)
    preds = model.predict([tok.encode(p) for p, _ in PROBES], [tok.encode(c) for _, c in PROBES])
    got = np.array([v[-1] for v in preds])
    want = np.array([prefix_value(p, c) for p, c in PROBES])
    return float(np.abs(got - want).max())


def test_exact_values_differ_between_states():
    """The check below is only meaningful if a constant predictor fails it."""
    vals = [prefix_value(p, c) for p, c in PROBES]
    assert max(vals) - min(vals) > 0.25


def test_sibling_trie_means_and_counts():
    prompts = [[1, 2], [1, 2], [1, 2], [1, 2], [1, 3]]  # prompt token ids: the last is another prompt
    comps = [[5, 6, 7], [5, 6, 8], [5, 9], [4], [5, 6]]
    outcomes = [1.0, 0.0, 1.0, 0.0, 1.0]
    means, counts = sibling_targets(prompts, comps, outcomes)
    assert counts[0] == [4, 3, 2, 1] and means[0] == [0.5, pytest.approx(2 / 3), 0.5, 1.0]
    assert counts[1] == [4, 3, 2, 1] and means[1] == [0.5, pytest.approx(2 / 3), 0.5, 0.0]
    assert counts[2] == [4, 3, 1] and means[2] == [0.5, pytest.approx(2 / 3), 1.0]
    assert counts[3] == [4, 1] and means[3] == [0.5, 0.0]
    assert counts[4] == [1, 1, 1] and means[4] == [1.0, 1.0, 1.0]  # another prompt shares nothing
    with pytest.raises(ValueError, match="outside"):
        sibling_targets([[1]], [[1]], [1.5])


def test_sibling_means_are_unbiased_for_exact_values(toy):
    """On 1500 sampled traces, the sibling label of every prefix seen by >= 200 traces is within 4 standard
    errors of its exact value (a trie mixing prefixes or prompts would be far off)."""
    _, _, _, rows = toy
    tok = toy[0]
    means, counts = sibling_targets(
        [r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], [r["outcome"] for r in rows]
    )
    checked = 0
    for r, m, c in zip(rows, means, counts):
        for p in range(len(r["completion_ids"])):
            if c[p] >= 200:
                comp = tok.decode(r["completion_ids"][:p], skip_special_tokens=True)
                v = prefix_value(r["prompt"], comp)
                assert abs(m[p] - v) <= 4 * np.sqrt(v * (1 - v) / c[p]) + 1e-9
                checked += 1
    assert checked > 1000


def test_td_targets_are_lambda_returns():
    values = torch.tensor([[0.5, 0.2, 0.9, 0.7, 0.3]])
    outcome, lengths = torch.tensor([1.0]), torch.tensor([3])
    g0 = td_lambda_targets(values, outcome, lengths, 0.0)  # TD(0): the next prediction, outcome at T
    assert g0.tolist()[0][:4] == pytest.approx([0.2, 0.9, 1.0, 1.0])
    g1 = td_lambda_targets(values, outcome, lengths, 1.0)  # λ = 1: the outcome everywhere
    assert g1.tolist()[0][:4] == pytest.approx([1.0, 1.0, 1.0, 1.0])
    gl = td_lambda_targets(values, outcome, lengths, 0.5)
    g2 = 1.0
    g1_ = 0.5 * 0.9 + 0.5 * g2
    assert gl.tolist()[0][:4] == pytest.approx([0.5 * 0.2 + 0.5 * g1_, g1_, 1.0, 1.0])


def test_signals_are_a_registry():
    """`signal` names a class of SIGNALS: the config takes its keys only, and each signal's per-step targets
    (TD keeps MC labels where given), record and words on the model card come from its class."""
    assert list(SIGNALS) == ["outcome", "siblings", "td", "reference"]
    with pytest.raises(ConfigError, match="outcome, siblings, td, reference"):
        train_stage.TrainConfig(traces="x", signal="nope")
    with pytest.raises(ConfigError, match="labels_only"):
        train_stage.TrainConfig(traces="x", labels="y", labels_only=True, signal="siblings")
    td, outcome = build_signal("td", td_lambda=0.0), build_signal("outcome", td_lambda=0.0)
    assert td.per_step and not outcome.per_step and not build_signal("siblings").per_step
    batch = {
        "targets": torch.tensor([[0.3, 0.3, 0.3, 0.3]]),
        "label_mask": torch.tensor([[False, True, False, False]]),
        "outcome": torch.tensor([1.0]),
        "completion_lengths": torch.tensor([3]),
    }
    values = torch.tensor([[0.5, 0.2, 0.9, 0.7]])
    assert td.step_targets(batch, values).tolist()[0] == pytest.approx([0.2, 0.3, 1.0, 1.0])
    assert outcome.step_targets(batch, values) is batch["targets"]
    assert td.attach(None)[1] == {"signal": "td", "td_lambda": 0.0}
    assert SIGNALS["td"].describe({"signal": "td", "td_lambda": 0.5}) == "td (λ = 0.5)"
    assert SIGNALS["siblings"].describe({"signal": "siblings"}) == "siblings"


def test_td_targets_of_exact_values_are_unbiased(toy):
    """Fed the exact values, TD(0) targets average to the exact value of the prefix they belong to
    (Bellman consistency); a bootstrap from the wrong position would not."""
    tok, _, _, rows = toy
    acc: dict[str, list[float]] = {}
    for r in rows[:1000]:
        comp = r["completion_ids"]
        text = [tok.decode(comp[:p], skip_special_tokens=True) for p in range(len(comp) + 1)]
        v = torch.tensor([[prefix_value(r["prompt"], t) for t in text]])
        g = td_lambda_targets(v, torch.tensor([r["outcome"]]), torch.tensor([len(comp)]), 0.0)[0]
        acc.setdefault(r["prompt"], []).append(float(g[0]))
    for prompt, gs in acc.items():
        want = prefix_value(prompt, "")
        assert abs(np.mean(gs) - want) < 4 * np.std(gs) / np.sqrt(len(gs))


@pytest.mark.slow  # 600 steps each (about 40 s for the three); each signal's targets are checked fast above
@pytest.mark.parametrize("signal", ["outcome", "siblings", "td"])
def test_training_converges_to_exact_values(toy, tmp_path, signal):
    extra = {"signal": signal, "td_lambda": 0.5} if signal == "td" else {"signal": signal}
    result = _train(toy, tmp_path / signal, **extra)
    assert result["training_signal"]["signal"] == signal
    assert _max_error(toy, result["checkpoint"]) < 0.05


@pytest.mark.slow  # 600 steps; the Q-head's formula and API are checked fast in test_value_models
def test_qhead_learns_candidate_values(toy, tmp_path):
    """A Q-head on the frozen Markov backbone, trained on the sampled tokens' sibling targets: V(s) at the bare
    prompts is the exact value, and every candidate's Q(s, y), end of text included, is near the exact value of
    s ⊕ y at the probes whose state is frequent ('a', 'b'; x→x is seen 54 times). Adam approaches the optimum slowly
    along the candidates of 'a' (0.13 off after 600 steps, 0.02 after 4000 full-batch steps; L-BFGS fits the
    training means exactly), hence 0.15; a Q trained towards the value of s instead of s ⊕ y would be 0.3 off."""
    tok = toy[0]
    result = _train(toy, tmp_path / "qhead", signal="siblings", **{"value_model.kind": "qhead"})
    model = load_value_model(result["checkpoint"])
    prompts = [tok.encode(p) for p in PROMPTS]
    bare = [v[0] for v in model.predict(prompts, [[] for _ in PROMPTS])]
    np.testing.assert_allclose(bare, [prefix_value(p, "") for p in PROMPTS], atol=0.05)
    cands = [tok.convert_tokens_to_ids(c) for c in "abx"] + [tok.eos_token_id]
    for prompt, comp in PROBES:
        if (prompt + comp)[-1] == "x":
            continue
        ids = tok.encode(comp)
        q = model.token_candidate_values(
            [tok.encode(prompt)], [ids + [cands[0]]], [np.full(4, len(ids))], [np.array(cands)]
        )[0]
        want = [prefix_value(prompt, comp + c) for c in "abx"] + [float((prompt + comp).endswith("a"))]
        np.testing.assert_allclose(q, want, atol=0.15, err_msg=f"{prompt!r} + {comp!r}")


@pytest.mark.parametrize(
    "n_traces, samples, steps",
    [pytest.param(200, 32, 600, marks=pytest.mark.slow, id="converges"), pytest.param(20, 4, 3, id="wiring")],
)
def test_training_on_mc_labels_converges_to_exact_values(toy, tmp_path, n_traces, samples, steps):
    """MC labels (k/n floats from the labeller) of 200 training traces as the only targets. The fast `wiring`
    case (20 traces, 3 steps) checks that only the labelled traces train, not the convergence."""
    tok, policy, traces, rows = toy
    model = markov_gpt2(tok)
    labeller = MCLabeller(
        HFSampler(model, tok, max_batch_rows=4096),
        tok,
        EndsInA(),
        SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, seed=5),
    )
    refs = [
        TraceRef(r["trace_id"], Prompt(r["prompt_id"], r["prompt"]), tuple(r["prompt_ids"]), tuple(r["completion_ids"]))
        for r in rows[:n_traces]
    ]
    est = labeller.uniform(refs, positions("all", [len(t.completion_ids) for t in refs]), samples=samples)
    labels = tmp_path / "labels"
    rows_to_dataset(
        [
            {
                "trace_id": e.trace_id,
                "position": e.position,
                "n": e.n,
                "successes": float(e.successes),
                "mean": e.mean,
                "ci_low": e.ci_low,
                "ci_high": e.ci_high,
            }
            for e in est
        ]
    ).save_to_disk(str(labels))
    assert any(0.0 < e.mean < 1.0 for e in est)  # soft labels, kept as floats
    result = _train(toy, tmp_path / "mc", labels=labels, labels_only="true", max_steps=steps)
    assert result["train_traces"] == n_traces  # only labelled traces are drawn
    if steps == 600:  # the wiring case trains 3 steps: nothing to converge
        assert _max_error(toy, result["checkpoint"]) < 0.05


def test_step_oracle_facts_and_group_means():
    from prefixvalue.evaluation.estimators import TraceRecord
    from prefixvalue.evaluation.oracle import StepOracle, step_facts

    # steps [0, 3), [3, 6), [6, 8); the second is wrong: written once p >= 6
    wrong, written = step_facts([[0, 3], [3, 6], [6, 8]], [True, False, True], 8)
    assert wrong.tolist() == [False] * 6 + [True] * 3
    assert written.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3]
    rows = [
        {"completion_ids": [1, 2], "outcome": 1.0, "step_spans": [[0, 2]], "step_labels": [True]},
        {"completion_ids": [1, 3], "outcome": 0.0, "step_spans": [[0, 2]], "step_labels": [False]},
        {"completion_ids": [4, 3], "outcome": 0.0, "step_spans": [[0, 2]], "step_labels": [True]},
    ]
    oracle = StepOracle.fit(rows)  # no task or prompt: grouped by steps written, never by the trace's own count
    assert oracle.steps == "written"
    # (no wrong step, 0 written) holds positions 0, 1 of all three traces: 2 of 6 succeed
    assert oracle.means[(False, 0)] == pytest.approx(1 / 3)
    assert oracle.means[(False, 1)] == pytest.approx(0.5) and oracle.means[(True, 1)] == 0.0
    rec = TraceRecord("t", "p", [9], [1, 2], 1.0, [(0, 2)], [False])
    assert oracle.predict(rec).tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])
    with pytest.raises(ValueError, match="step_labels"):
        StepOracle.fit([{"completion_ids": [1], "outcome": 1.0, "step_spans": [], "step_labels": None}])


# ----------------------------------------------------------------------------------- signal=reference
REFERENCE = "ab"  # the "reference solution" of both toy prompts: its path is a, b, then the end of text


def _ref_probs(prompt: str, ref: str) -> list[float]:
    """Π_{t≥p} TABLE of the reference's rest, p = 0..len(ref)+1 (end of text included): the exact answer."""
    steps = list(ref) + ["<eos>"]
    lasts = [prompt[-1], *ref]
    probs = [TABLE[last][nxt] for last, nxt in zip(lasts, steps)]
    return [float(np.prod(probs[p:])) for p in range(len(probs) + 1)]


def test_reference_path_values_are_the_policys_probability_of_the_rest(toy):
    tok, policy_dir, _, _ = toy
    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    ref = tok.encode(REFERENCE) + [tok.eos_token_id]
    keys = {p: tuple(tok.encode(p)) for p in PROMPTS}
    got = reference_path_values(model, {keys[p]: ref for p in PROMPTS}, batch_size=1)
    for p in PROMPTS:
        np.testing.assert_allclose(got[keys[p]], _ref_probs(p, REFERENCE), rtol=1e-4)
    # at temperature 2 every factor is the renormalised square root of the table's row
    hot = reference_path_values(model, {keys["b"]: ref}, temperature=2.0)[keys["b"]]
    row = {last: {k: v**0.5 / sum(x**0.5 for x in r.values()) for k, v in r.items()} for last, r in TABLE.items()}
    want = row["b"]["a"] * row["a"]["b"] * row["b"]["<eos>"]
    assert hot[0] == pytest.approx(want, rel=1e-4) and hot[-1] == 1.0


def test_reference_targets_on_the_path_and_siblings_off_it(toy):
    tok, _, _, rows = toy
    eos = tok.eos_token_id
    mk = lambda text, done=True: tok.encode(text) + ([eos] if done else [])  # noqa: E731
    picked = [
        {**rows[0], "completion_ids": mk("ab"), "outcome": 0.0},  # the whole reference: on the path throughout
        {**rows[0], "completion_ids": mk("aa"), "outcome": 1.0},  # leaves it after one token
        {**rows[0], "completion_ids": mk("b"), "outcome": 0.0},  # leaves it at once
    ]
    ds = rows_to_dataset([{**r, "prompt_meta": json.dumps({"solution": REFERENCE})} for r in picked])
    refs = reference_solutions(ds, tok)
    key = tuple(rows[0]["prompt_ids"])
    assert refs == {key: mk(REFERENCE)}  # the traces end with EOS, so the reference path does too
    values = {key: np.array(_ref_probs(rows[0]["prompt"], REFERENCE))}
    out, found = attach_reference_targets(ds, refs, values)
    sib, _ = sibling_targets(ds["prompt_ids"], ds["completion_ids"], ds["outcome"])
    t = out["prefix_targets"]
    v = values[key]
    # every unfinished prefix of the reference itself; the finished trace is worth its outcome (siblings: 0 here)
    np.testing.assert_allclose(t[0], [*v[:3], sib[0][3]], rtol=1e-6)
    assert t[0][3] == 0.0
    np.testing.assert_allclose(t[1], [v[0], v[1], sib[1][2], sib[1][3]], rtol=1e-6)
    np.testing.assert_allclose(t[2], [v[0], sib[2][1], sib[2][2]], rtol=1e-6)
    assert found["prompts_with_reference"] == 1 and found["on_path_share"] == pytest.approx(6 / 11)
    # a trace cut off inside the reference (no EOS): its last prefix is finished, so it gets the sibling label too
    cut = rows_to_dataset([{**picked[0], "completion_ids": mk("a", done=False), "outcome": 0.0}])
    np.testing.assert_allclose(attach_reference_targets(cut, refs, values)[0]["prefix_targets"][0], [v[0], 0.0])
    # an MC label wins where given
    labelled = ds.remove_columns("prefix_targets") if "prefix_targets" in ds.column_names else ds
    labelled = labelled.add_column("prefix_targets", [[0.5, None, None, None], [None] * 4, [None] * 3])
    assert attach_reference_targets(labelled, refs, values)[0]["prefix_targets"][0][0] == 0.5


def test_reference_signal_trains_and_refuses_what_it_cannot_read(toy, tmp_path):
    tok, policy, _, rows = toy
    with_ref = tmp_path / "traces_ref"
    rows_to_dataset([{**r, "prompt_meta": json.dumps({"solution": REFERENCE})} for r in rows]).save_to_disk(with_ref)
    result = _train((tok, policy, with_ref, rows), tmp_path / "ref", signal="reference", max_steps=5)
    rec = result["training_signal"]
    assert rec["signal"] == "reference" and rec["temperature"] == 1.0
    assert rec["reference"]["prompts_with_reference"] == 2 and 0 < rec["reference"]["on_path_share"] < 1
    assert "reference" in SIGNALS["reference"].describe(rec)
    with pytest.raises(ConfigError, match="no training trace's prompt_meta has a 'solution'"):
        _train(toy, tmp_path / "none", signal="reference", max_steps=5)
    nucleus = tmp_path / "traces_top_p"
    sampling = json.dumps({"temperature": 1.0, "top_k": 0, "top_p": 0.9})
    rows_to_dataset(
        [{**r, "prompt_meta": json.dumps({"solution": REFERENCE}), "sampling": sampling} for r in rows]
    ).save_to_disk(nucleus)
    with pytest.raises(ConfigError, match="top_p=0.9"):
        _train((tok, policy, nucleus, rows), tmp_path / "top_p", signal="reference", max_steps=5)
