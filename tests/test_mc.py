"""Monte Carlo prefix labels against a language model whose prefix values are known exactly.

The model is a GPT-2 whose blocks output zero and whose positional embeddings are zero, so its
next-token distribution depends only on the last token: a fixed-transition (Markov) LM over the
alphabet {a, b, x}. The task succeeds iff the completion ends in 'a' and never wrote 'x', so the
value of any prefix follows from a dynamic programme over (last token, x seen, tokens left).

    pytest tests/test_mc.py
"""

from __future__ import annotations

import functools
import math
import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from prefixvalue.sampling.hf import HFSampler
from prefixvalue.sampling.mc import (
    AdaptiveConfig,
    MCLabeller,
    TraceRef,
    distinct_prefixes,
    first_jump,
    wilson_halfwidth,
    wilson_interval,
)
from prefixvalue.sampling.positions import PositionSpecError, parse_positions, positions, positions_for_trace
from prefixvalue.sampling.sampler import SamplingParams
from prefixvalue.tasks.base import Prompt, Task, VerifierResult
from prefixvalue.tokenizer import build_char_tokenizer

# transition probabilities P(next | last); ids: <pad>=0 <eos>=1 <unk>=2 a=3 b=4 x=5
TABLE = {
    "a": {"<eos>": 0.30, "a": 0.25, "b": 0.30, "x": 0.15},
    "b": {"<eos>": 0.10, "a": 0.35, "b": 0.35, "x": 0.20},
    "x": {"<eos>": 0.30, "a": 0.35, "b": 0.30, "x": 0.05},
}
MAX_NEW = 12


class EndsInA(Task):
    name = "ends-in-a"

    def prompts(self, num=None, split="train"):
        yield Prompt("p0", "b")

    def verify(self, prompt: Prompt, completion: str) -> VerifierResult:
        return VerifierResult(float(completion.endswith("a") and "x" not in completion))


def markov_gpt2(tok) -> GPT2LMHeadModel:
    """GPT-2 whose logits are log TABLE[last token] (exact to float32 rounding)."""
    vocab = len(tok)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=64,
        n_embd=16,
        n_layer=2,
        n_head=2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
        attn_pdrop=0,
        resid_pdrop=0,
        embd_pdrop=0,
    )
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.transformer.h.parameters():
            p.zero_()
        model.transformer.wpe.weight.zero_()
        emb = torch.zeros(vocab, cfg.n_embd)
        emb[torch.arange(vocab), torch.arange(vocab)] = 1.0
        model.transformer.wte.weight.copy_(emb)
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.ln_f.bias.zero_()
        u = torch.nn.functional.layer_norm(emb, (cfg.n_embd,), eps=cfg.layer_norm_epsilon)  # hidden per token
        target = torch.full((vocab, vocab), -30.0)
        for last, row in TABLE.items():
            for nxt, pr in row.items():
                target[tok.convert_tokens_to_ids(last), tok.convert_tokens_to_ids(nxt)] = math.log(pr)
        w = (torch.linalg.pinv(u.double()) @ target.double()).T  # u @ W^T = target (u has full row rank)
        model.lm_head.weight.copy_(w.float())
    return model


@functools.cache
def exact_value(last: str, seen_x: bool, left: int) -> float:
    """P(success) from a state: last character, whether 'x' was written, tokens left (>= 1)."""
    total = 0.0
    for nxt, pr in TABLE[last].items():
        if nxt == "<eos>":
            total += pr * float(last == "a" and not seen_x)
            continue
        sx = seen_x or nxt == "x"
        total += pr * (float(nxt == "a" and not sx) if left == 1 else exact_value(nxt, sx, left - 1))
    return total


def prefix_value(prompt: str, completion: str) -> float:
    text = prompt + completion
    return exact_value(text[-1], "x" in completion, MAX_NEW - len(completion))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = build_char_tokenizer("abx")
    model = markov_gpt2(tok)
    return tok, model


def make_traces(tok, n: int, seed: int = 0) -> list[TraceRef]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(6, MAX_NEW - 1)
        comp = "".join(rng.choice("aab") for _ in range(length))
        if i % 2:  # half the traces write an 'x' somewhere: a value jump to 0
            j = rng.randint(3, length - 2)
            comp = comp[:j] + "x" + comp[j + 1 :]
        ids = tuple(tok.encode(comp)) + (tok.eos_token_id,)
        out.append(TraceRef(f"t{i}", Prompt("p0", "b"), tuple(tok.encode("b")), ids))
    return out


def test_markov_model_is_exact(setup):
    tok, model = setup
    ids = torch.tensor([tok.encode("babxa")])
    probs = torch.softmax(model(ids).logits[0].double(), -1)
    for i, ch in enumerate("babxa"):
        for nxt, pr in TABLE[ch].items():
            assert probs[i, tok.convert_tokens_to_ids(nxt)].item() == pytest.approx(pr, abs=1e-5)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_halfwidth(50, 100) < wilson_halfwidth(5, 10)


def test_positions_specs():
    spans = [[0, 4], [4, 8], [8, 11]]
    assert positions_for_trace("all", 5) == [0, 1, 2, 3, 4]
    assert positions_for_trace("stride:3", 8) == [0, 3, 6]
    assert positions_for_trace("steps", 11, spans) == [0, 4, 8]
    assert positions_for_trace("short:2", 11) == [0, 1, 2]
    assert positions_for_trace("short:20", 4) == [0, 1, 2, 3]
    assert positions_for_trace("adaptive", 11, spans, adaptive_stride=5) == [0, 4, 5, 8, 10]
    assert positions("all", [2, 3]) == [[0, 1], [0, 1, 2]]
    assert positions_for_trace("all", 0) == []
    for bad in ["every", "stride:0", "stride:x", "short", "steps:3", "short:-1"]:
        with pytest.raises(PositionSpecError):
            parse_positions(bad)


def test_wilson_covers_exact_values(setup):
    """Over many prefixes, 95% Wilson intervals from 40 samples cover the exact value >= 90% of the time."""
    tok, model = setup
    traces = make_traces(tok, 12)
    labeller = MCLabeller(
        HFSampler(model, tok, max_batch_rows=2048),
        tok,
        EndsInA(),
        SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, seed=3),
    )
    pos = positions("all", [len(t.completion_ids) for t in traces])
    est = labeller.uniform(traces, pos, samples=40)
    by_id = {t.trace_id: t for t in traces}
    covered, errs = 0, []
    for e in est:
        tr = by_id[e.trace_id]
        v = prefix_value("b", tok.decode(list(tr.completion_ids[: e.position]), skip_special_tokens=True))
        covered += e.ci_low <= v <= e.ci_high
        errs.append(abs(e.mean - v))
        assert e.n == 40
    assert len(est) > 80
    assert covered / len(est) >= 0.90, f"coverage {covered}/{len(est)}"
    assert sum(errs) / len(errs) < 0.08  # mean |error| of k/n with n=40 is ~0.06 at worst
    # deduplication: every trace shares position 0, so far fewer rollouts than pairs x samples
    assert labeller.cost.prefixes_unique < labeller.cost.prefixes_requested
    assert labeller.cost.rollouts == 40 * labeller.cost.prefixes_unique


def test_adaptive_matches_uniform_accuracy_at_equal_budget(setup):
    """Adaptive spends the same rollouts as uniform yet locates the 'x' jumps and estimates values
    at least as accurately (mean |error| at the positions it labels vs uniform at all positions)."""
    tok, model = setup
    traces = make_traces(tok, 10, seed=1)
    params = SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, seed=5)
    uni = MCLabeller(HFSampler(model, tok, max_batch_rows=2048), tok, EndsInA(), params)
    pos = positions("all", [len(t.completion_ids) for t in traces])
    m_uniform = 16
    est_u = uni.uniform(traces, pos, samples=m_uniform)
    ada = MCLabeller(HFSampler(model, tok, max_batch_rows=2048), tok, EndsInA(), params)
    # equal budget in rollouts actually sampled: uniform saves by sharing identical prefixes
    share = uni.cost.rollouts / (m_uniform * sum(len(p) for p in pos))
    start = positions("adaptive", [len(t.completion_ids) for t in traces], adaptive_stride=4)
    est_a = ada.adaptive(
        traces,
        start,
        AdaptiveConfig(round_samples=8, init_stride=4, target_halfwidth=0.05),
        budgets=[int(m_uniform * len(p) * share) for p in pos],
    )
    assert ada.cost.rollouts <= uni.cost.rollouts
    by_id = {t.trace_id: t for t in traces}

    def err(est):
        out = []
        for e in est:
            tr = by_id[e.trace_id]
            out.append(
                abs(
                    e.mean
                    - prefix_value("b", tok.decode(list(tr.completion_ids[: e.position]), skip_special_tokens=True))
                )
            )
        return sum(out) / len(out)

    assert err(est_a) <= err(est_u) + 0.01, (err(est_a), err(est_u))
    # the jump to 0 when 'x' is written (where it is a large jump) is located to the exact token:
    # both sides of it are labelled and their estimates differ by more than the jump threshold
    x_id = tok.convert_tokens_to_ids("x")
    checked = 0
    for tr in traces:
        if x_id not in tr.completion_ids:
            continue
        j = tr.completion_ids.index(x_id)
        before = prefix_value("b", tok.decode(list(tr.completion_ids[:j]), skip_special_tokens=True))
        if before < 0.4:
            continue
        means = {e.position: e.mean for e in est_a if e.trace_id == tr.trace_id}
        assert j in means and j + 1 in means, (tr.trace_id, j, sorted(means))
        assert means[j] - means[j + 1] >= 0.25
        checked += 1
    assert checked >= 2


def test_same_seed_same_labels_and_batching_does_not_matter(setup):
    tok, model = setup
    traces = make_traces(tok, 4, seed=2)
    pos = positions("stride:2", [len(t.completion_ids) for t in traces])
    params = SamplingParams(max_new_tokens=MAX_NEW, seed=11)
    a = MCLabeller(HFSampler(model, tok, max_batch_rows=7), tok, EndsInA(), params).uniform(traces, pos, 6)
    b = MCLabeller(HFSampler(model, tok, max_batch_rows=512), tok, EndsInA(), params).uniform(
        traces[::-1], pos[::-1], 6
    )
    key = lambda e: (e.trace_id, e.position)  # noqa: E731
    assert sorted(map(lambda e: (key(e), e.successes), a)) == sorted(map(lambda e: (key(e), e.successes), b))
    c = MCLabeller(HFSampler(model, tok), tok, EndsInA(), SamplingParams(max_new_tokens=MAX_NEW, seed=12)).uniform(
        traces, pos, 6
    )
    assert [e.successes for e in a] != [e.successes for e in c]


def test_verifier_crash_scores_zero_and_is_counted(setup):
    tok, model = setup

    class Crashes(EndsInA):
        def verify(self, prompt, completion):
            if completion.endswith("a"):
                raise RuntimeError("boom")
            return VerifierResult(0.0)

    traces = make_traces(tok, 2)
    lab = MCLabeller(
        HFSampler(model, tok), tok, Crashes(), SamplingParams(max_new_tokens=MAX_NEW), verifier_timeout_s=None
    )
    est = lab.uniform(traces, [[0, 1], [0]], samples=16)
    assert all(e.successes == 0 for e in est)
    assert lab.cost.verifier_errors > 0


def test_first_jump():
    assert first_jump([(0, 0.6), (4, 0.6), (5, 0.0), (9, 0.0)], 0.3) == 4
    assert first_jump([(0, 0.6), (8, 0.0)], 0.3) == 3
    assert first_jump([(0, 0.5), (3, 0.6)], 0.3) is None


def test_on_batch_counts_rollouts_per_batch(setup):
    tok, model = setup
    traces = make_traces(tok, 4, seed=5)
    pos = positions("stride:2", [len(t.completion_ids) for t in traces])
    params = SamplingParams(max_new_tokens=MAX_NEW, seed=3)
    calls: list[int] = []
    lab = MCLabeller(HFSampler(model, tok, max_batch_rows=16, max_tree_rows=16), tok, EndsInA(), params)
    lab.on_batch = lambda rollouts, tokens: calls.append(rollouts)
    est = lab.uniform(traces, pos, 6)
    assert len(calls) > 1 and all(c > 0 for c in calls)
    assert sum(calls) == lab.cost.rollouts == 6 * distinct_prefixes(traces, pos) == 6 * lab.cost.prefixes_unique
    plain = MCLabeller(HFSampler(model, tok, tree_attention=False), tok, EndsInA(), params).uniform(traces, pos, 6)
    assert [e.as_row() for e in est] == [e.as_row() for e in plain]
