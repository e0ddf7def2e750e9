"""Value-guided sampling (docs/design.md, "Values that steer"): twisted SMC against the exact-value Markov LM of the
MC tests, the budget accounting, and ``prefixvalue steer`` end to end (held-out prompts, resume)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from test_mc import MAX_NEW, TABLE, EndsInA, exact_value, markov_gpt2

from prefixvalue.sampling.hf import HFSampler
from prefixvalue.sampling.sampler import SamplingParams
from prefixvalue.steering.engine import (
    Chunking,
    Generator,
    Judge,
    beam_search,
    ess,
    iid_samples,
    normalised,
    systematic_resample,
    twisted_smc,
    uniform,
    vote,
)
from prefixvalue.steering.twists import ConstantTwist, FunctionTwist, MCTwist
from prefixvalue.tasks.base import Prompt
from prefixvalue.tokenizer import build_char_tokenizer

from conftest import REPO


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    tok = build_char_tokenizer("abx")
    model = markov_gpt2(tok)
    judge = Judge(EndsInA(), tok, fail_truncated=False, timeout_s=None)
    return tok, model, judge


def _prompts(tok, n):
    return [(Prompt(f"p{i}", "b"), tok.encode("b")) for i in range(n)]


def _exact_twist(tok, judge):
    def value(state):
        if state.done:
            return judge.score(state.prompt, state.completion_ids, state.finish_reason)
        text = tok.decode(state.completion_ids, skip_special_tokens=True)
        return exact_value(("b" + text)[-1], "x" in text, MAX_NEW - len(state.completion_ids))

    return FunctionTwist("exact", value)


def _length_distribution(success_only: bool) -> np.ndarray:
    """P(completion of L characters) under the Markov LM, L = 0..MAX_NEW (jointly with success when asked)."""
    mass, out = {("b", False): 1.0}, np.zeros(MAX_NEW + 1)
    for j in range(MAX_NEW + 1):
        for (last, seen_x), m in mass.items():
            ok = (last == "a" and not seen_x) or not success_only
            if j == MAX_NEW:
                out[j] += m * ok
            elif j >= 1 or not success_only:
                out[j] += m * TABLE[last]["<eos>"] * ok
        nxt: dict = {}
        for (last, seen_x), m in mass.items():
            for t, p in TABLE[last].items():
                if t != "<eos>":
                    key = (t, seen_x or t == "x")
                    nxt[key] = nxt.get(key, 0.0) + m * p
        mass = nxt
    return out / out.sum()


def _draw_lengths(tok, runs, seed=0):
    lengths = []
    for i, r in enumerate(runs):
        j = int(systematic_resample(normalised(r.log_weights), uniform(seed, f"draw{i}"))[0])
        lengths.append(len(tok.decode(r.particles[j].completion_ids, skip_special_tokens=True)))
    return np.bincount(lengths, minlength=MAX_NEW + 1)


def _gof(observed: np.ndarray, probs: np.ndarray, pool_from: int) -> float:
    expected = probs * observed.sum()
    o = np.append(observed[:pool_from], observed[pool_from:].sum())
    e = np.append(expected[:pool_from], expected[pool_from:].sum())
    keep = e > 0
    return float(chisquare(o[keep], e[keep] * o[keep].sum() / e[keep].sum()).pvalue)


def test_smc_with_the_exact_value_samples_the_verifier_conditioned_distribution(toy):
    """Twisted SMC on the Markov LM whose prefix values are known: with the exact value as the twist (token by
    token, resampling at ESS < N/2), a particle drawn by final weight is always correct, and its length follows
    the exact π(length | correct) (chi-square goodness of fit); the twist did resample."""
    tok, model, judge = toy
    sampler = HFSampler(model, tok)
    gen = Generator(sampler, SamplingParams(max_new_tokens=MAX_NEW, seed=0), Chunking(MAX_NEW, every=1))
    runs = twisted_smc(gen, _prompts(tok, 300), 16, _exact_twist(tok, judge), "smc", 0.5, seed=0)
    collapsed = [r for r in runs if not np.isfinite(r.log_weights).any()]  # every particle failed at once
    assert len(collapsed) <= 3
    runs = [r for r in runs if np.isfinite(r.log_weights).any()]
    for r in runs:
        w = normalised(r.log_weights)
        assert all(
            judge.score(p.prompt, p.completion_ids, p.finish_reason) == 1.0 for p, x in zip(r.particles, w) if x > 0
        )
    observed = _draw_lengths(tok, runs)
    target = _length_distribution(success_only=True)
    assert observed[0] == 0 and target[0] == 0
    assert _gof(observed[1:], target[1:], 7) > 0.01
    assert np.mean([len(r.resampled) for r in runs]) > 0.5


def test_smc_with_a_constant_twist_is_plain_sampling(toy):
    """ψ ≡ 1: every weight stays equal, ESS stays N, nothing is resampled, and the particles' lengths follow
    the policy's own length distribution."""
    tok, model, judge = toy
    gen = Generator(HFSampler(model, tok), SamplingParams(max_new_tokens=MAX_NEW, seed=1), Chunking(MAX_NEW, every=3))
    runs = twisted_smc(gen, _prompts(tok, 150), 4, ConstantTwist(), "smc", 0.9, seed=1)
    assert all(not r.resampled and np.allclose(r.ess, 4.0) and np.ptp(r.log_weights) == 0 for r in runs)
    lengths = [len(tok.decode(p.completion_ids, skip_special_tokens=True)) for r in runs for p in r.particles]
    observed = np.bincount(lengths, minlength=MAX_NEW + 1)
    assert _gof(observed, _length_distribution(success_only=False), 8) > 0.01


def test_budget_accounting_is_exact(toy):
    """Every generated token is counted once, per prompt: the generator's counts sum to the sampler's own
    count for samples, SMC (resampled particles' copied tokens are not counted again) and beams; iid samples
    cost exactly their lengths; a Monte Carlo twist's continuations are counted apart, also exactly."""
    tok, model, judge = toy
    sampler = HFSampler(model, tok)
    prompts = _prompts(tok, 20)
    chunk = Chunking(MAX_NEW, every=2)

    def counted(run):
        gen = Generator(sampler, SamplingParams(max_new_tokens=MAX_NEW, seed=3), chunk)
        before = sampler.stats.generated_tokens
        out = run(gen)
        assert sum(gen.tokens.values()) == sampler.stats.generated_tokens - before
        return gen, out

    gen, groups = counted(lambda g: iid_samples(g, prompts, 3, "iid"))
    for group in groups:
        assert gen.tokens[group[0].prompt.prompt_id] == sum(len(s.completion_ids) for s in group)
    mc = MCTwist("mc", sampler, SamplingParams(max_new_tokens=MAX_NEW, seed=3), 2, judge.score)
    g = Generator(sampler, SamplingParams(max_new_tokens=MAX_NEW, seed=3), chunk)
    before = sampler.stats.generated_tokens
    runs = twisted_smc(g, prompts, 4, mc, "smc", 0.99, seed=0)
    assert sum(g.tokens.values()) + mc.cost.tokens == sampler.stats.generated_tokens - before
    assert sum(mc.tokens_by_prompt.values()) == mc.cost.tokens > 0
    assert any(r.resampled for r in runs)  # resampling happened, and copies were not counted again
    counted(lambda g: beam_search(g, prompts, 2, 2, _exact_twist(tok, judge), "beam"))


def test_weights_votes_and_resampling_helpers():
    assert ess(np.log([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert ess(np.log([1.0, 0.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert ess(np.full(3, -np.inf)) == 0.0 and np.allclose(normalised(np.full(3, -np.inf)), 1 / 3)
    idx = systematic_resample(np.array([0.5, 0.0, 0.5]), 0.25)
    assert sorted(idx.tolist()) == [0, 2, 2] or sorted(idx.tolist()) == [0, 0, 2]
    assert 1 not in systematic_resample(np.array([0.5, 0.0, 0.5]), 0.9)
    assert vote(["3", "4", "4"], [1, 1, 1]) == 1  # the majority's first sample
    assert vote(["3", "4", "4"], [0.9, 0.05, 0.05]) == 0  # weighted
    assert vote(["", "", "7"], [0.9, 0.05, 0.05]) == 2  # no answer votes only when nothing else does


def test_beam_keeps_the_best_valued_beams(toy):
    """With the exact value, step beam search ends on finished beams sorted by value, best first."""
    tok, model, judge = toy
    gen = Generator(HFSampler(model, tok), SamplingParams(max_new_tokens=MAX_NEW, seed=0), Chunking(MAX_NEW, every=2))
    runs = beam_search(gen, _prompts(tok, 30), 2, 2, _exact_twist(tok, judge), "beam")
    for r in runs:
        assert all(b.done for b in r.beams) and len(r.beams) == 2
        assert list(r.log_values) == sorted(r.log_values, reverse=True)
    best = np.mean([judge.score(r.beams[0].prompt, r.beams[0].completion_ids, r.beams[0].finish_reason) for r in runs])
    assert best > exact_value("b", False, MAX_NEW) + 0.3  # the exact value steers to correct completions


# ------------------------------------------------------------------------------------ the command
POLICY = REPO / "data" / "policies" / "arith-tiny"


@pytest.fixture(scope="module")
def head_checkpoint(shipped_head_checkpoint):
    return shipped_head_checkpoint


def _steer_args(out, ckpt, **kw):
    args = {
        "policy": str(POLICY),
        "checkpoints": f"[{ckpt}]",
        "out": str(out),
        "max_prompts": 4,
        "chunk_prompts": 2,
        "budgets": "[1,2]",
        "replicates": 1,
        "mc_samples": 1,
        "soft_value": False,
        "report_to": "none",
        "n_bootstrap": 20,
        "threads": 1,
    }
    args.update(kw)
    return [f"{k}={v}" for k, v in args.items()]


def test_steer_command_scores_held_out_prompts_and_resumes(tmp_path, head_checkpoint):
    """``prefixvalue steer`` answers only prompts on the test side of the checkpoint's split, writes steer.json,
    report.md and the plot; a run interrupted mid-batch (a torn last line, a batch without its ``done`` line)
    resumes to the same records, none twice."""
    from prefixvalue.cli import main
    from prefixvalue.data import SplitRecord
    from prefixvalue.tasks import build_task

    out = tmp_path / "steer"
    assert main(["steer", *_steer_args(out, head_checkpoint)]) == 0
    steer = json.loads((out / "steer.json").read_text())
    rec = SplitRecord.load(head_checkpoint)
    used = {
        r["prompt_id"] for r in map(json.loads, (out / "records.jsonl").read_text().splitlines()) if "prompt_id" in r
    }
    texts = {p.prompt_id: p.text for p in build_task("arith").prompts(2000, "test")}
    assert len(used) == steer["prompts"]["used"] == 4 and all(rec.side(texts[p]) == "test" for p in used)
    for method in (
        "sample",
        "majority",
        "best_of_n/head",
        "weighted_vote/head",
        "smc/head",
        "smc/mc",
        "beam/head",
    ):
        assert method in steer["accuracy"], method
    assert "smc/mellowmax" not in steer["accuracy"]  # soft_value=false
    assert steer["accuracy"]["smc/mc"]["2"]["twist_tokens_per_prompt"] > 0
    assert (out / "report.md").read_text().startswith("# prefixvalue steer")
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 0
    full = (out / "records.jsonl").read_text().splitlines()

    # interrupt: drop the last batch's done line and tear its last record
    lines = list(full)
    last_done = max(i for i, ln in enumerate(lines) if '"done"' in ln)
    torn = lines[: last_done - 1] + [lines[last_done - 1][:25]]
    (out / "records.jsonl").write_text("\n".join(torn))
    assert main(["steer", *_steer_args(out, head_checkpoint)]) == 0
    again = (out / "records.jsonl").read_text().splitlines()
    strip = lambda ls: sorted(ln for ln in ls if '"done"' not in ln)  # noqa: E731 - done lines carry seconds
    assert strip(again) == strip(full)
    assert json.loads((out / "steer.json").read_text())["accuracy"] == steer["accuracy"]


def test_steer_refuses_a_checkpoint_without_a_split(tmp_path, head_checkpoint, capsys):
    import shutil

    from prefixvalue.cli import main

    bare = tmp_path / "bare"
    shutil.copytree(head_checkpoint, bare)
    (bare / "split.json").unlink()
    assert main(["steer", *_steer_args(tmp_path / "out", bare)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no split" in err[0]


def test_step_stops_end_each_task_step():
    """SMC grows particles to the task's next step boundary: arith's ';', a jsonl splitter's separators; a regex
    splitter has none (steer then needs every=K)."""
    from prefixvalue.tasks import build_task
    from prefixvalue.tasks.steps import splitter_stops

    assert build_task("arith").step_stops() == (";",)
    assert splitter_stops("newline") == ("\n",) and splitter_stops("separator:\\n\\n") == ("\n\n",)
    assert ". " in splitter_stops("sentence") and splitter_stops("regex:;+") is None
    text = "3+5=8;8*2=6;A:6"
    arith = build_task("arith")
    ends = [e for _, e in arith.split_steps(text)]
    assert all(text[e - 1] == ";" for e in ends[:-1])  # each step but the last ends in the stop string


def test_steer_refuses_the_genlm_engine_without_genlm(tmp_path, head_checkpoint, capsys):
    import importlib.util

    from prefixvalue.cli import main

    if importlib.util.find_spec("genlm") is not None:
        pytest.skip("genlm-control is installed here (tests/test_genlm.py runs the engine)")
    assert main(["steer", *_steer_args(tmp_path / "out", head_checkpoint, methods="[smc-genlm]")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make install-genlm" in err[0]
