"""The batched HF sampler: padding, KV-cache branching, seeding, filtering, stopping.

pytest tests/test_sampling.py
"""

from __future__ import annotations

import math

import pytest
import torch

from prefixvalue.sampling.hf import HFSampler
from prefixvalue.sampling.noise import counter_uniform, filter_logits, row_seed, sample_tokens
from prefixvalue.sampling.sampler import BranchRequest, SamplingParams

PROMPTS = ["Q:1+2=", "Q:3+5*2-7=", "Q:9=", "Q:4*4-1+2+3="]


def enc(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_greedy_generate_matches_hf_generate_with_left_padding(tiny_model, tiny_tokenizer):
    prompts = enc(tiny_tokenizer, PROMPTS)
    gens = HFSampler(tiny_model, tiny_tokenizer, max_batch_rows=3).generate(
        prompts, [f"k{i}" for i in range(len(prompts))], SamplingParams(temperature=0, max_new_tokens=12)
    )
    for p, g in zip(prompts, gens):
        ref = tiny_model.generate(
            torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=1,
        )
        assert g.token_ids == ref[0, len(p) :].tolist()
        assert len(g.logprobs) == len(g.token_ids)


def test_branch_cache_equals_forward_of_reencoded_prefix(tiny_model, tiny_tokenizer):
    """Logits of the first two steps of every branch equal a from-scratch forward of the prefix."""
    seqs = enc(tiny_tokenizer, ["Q:1+2=1+2=3;A:3", "Q:3+5*2-7=3+5=8", "Q:9=A:9"])
    sampler = HFSampler(tiny_model, tiny_tokenizer)
    reqs = [BranchRequest(i, c, f"r{i}/{c}") for i, s in enumerate(seqs) for c in range(1, len(s) + 1)]
    cache, state = sampler._branch_state(seqs, reqs, SamplingParams())
    with torch.no_grad():
        ref1 = torch.stack([tiny_model(torch.tensor([seqs[r.seq][: r.cut]])).logits[0, -1] for r in reqs])
        assert torch.allclose(state.logits, ref1, atol=1e-5)
        nxt = torch.full((len(reqs), 1), 7)
        mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
        step2, _ = sampler.lm.forward(nxt, mask, state.pos[:, None], cache)
        ref2 = torch.stack([tiny_model(torch.tensor([seqs[r.seq][: r.cut] + [7]])).logits[0, -1] for r in reqs])
    assert torch.allclose(step2[:, -1], ref2, atol=1e-5)


def test_greedy_branches_equal_generate_from_prefix(tiny_model, tiny_tokenizer):
    seqs = enc(tiny_tokenizer, ["Q:1+2=1+2=3;A:3", "Q:3+5*2-7=3+5=8"])
    reqs = [BranchRequest(i, c, "k", 6) for i, s in enumerate(seqs) for c in range(2, len(s) + 1, 3)]
    gens = HFSampler(tiny_model, tiny_tokenizer, max_batch_rows=4).branch(seqs, reqs, SamplingParams(temperature=0))
    for r, g in zip(reqs, gens):
        p = seqs[r.seq][: r.cut]
        ref = tiny_model.generate(
            torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=1,
        )
        assert g.token_ids == ref[0, len(p) :].tolist()


def test_seeded_rows_do_not_depend_on_batching(tiny_gpt2, tiny_tokenizer):
    prompts = enc(tiny_tokenizer, PROMPTS * 3)
    keys = [f"p{i}" for i in range(len(prompts))]
    params = SamplingParams(max_new_tokens=10, seed=7)
    a = HFSampler(tiny_gpt2, tiny_tokenizer, max_batch_rows=5).generate(prompts, keys, params)
    b = HFSampler(tiny_gpt2, tiny_tokenizer, max_batch_rows=64).generate(prompts[::-1], keys[::-1], params)[::-1]
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    c = HFSampler(tiny_gpt2, tiny_tokenizer).generate(prompts, keys, SamplingParams(max_new_tokens=10, seed=8))
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    assert len({tuple(g.token_ids) for g in a}) > 3  # different keys give different samples


def test_seeded_branches_do_not_depend_on_batching_and_outgrow_the_cache(tiny_llama, tiny_tokenizer):
    """Branch rows are batched by tokens left after the cut; a row's continuation must not depend on
    which rows share its batch, also when it outgrows the cache's preallocated room (64 columns)."""
    seqs = enc(tiny_tokenizer, ["Q:1+2=1+2=3;A:3", "Q:3+5*2-7=3+5=8", "Q:9=A:9"])
    reqs = [
        BranchRequest(i, c, f"r{i}/{c}/{m}")
        for i, s in enumerate(seqs)
        for c in range(1, len(s) + 1, 2)
        for m in range(2)
    ]
    params = SamplingParams(max_new_tokens=80, seed=3)
    a = HFSampler(tiny_llama, tiny_tokenizer, max_batch_rows=3, eos_token_ids=[]).branch(seqs, reqs, params)
    b = HFSampler(tiny_llama, tiny_tokenizer, max_batch_rows=64, eos_token_ids=[]).branch(
        seqs[::-1], [BranchRequest(len(seqs) - 1 - r.seq, r.cut, r.key) for r in reqs], params
    )
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert all(len(g.token_ids) == 80 for g in a)


def test_logprobs_are_the_models(tiny_llama, tiny_tokenizer):
    prompts = enc(tiny_tokenizer, PROMPTS[:2])
    gens = HFSampler(tiny_llama, tiny_tokenizer).generate(prompts, ["a", "b"], SamplingParams(max_new_tokens=8))
    for p, g in zip(prompts, gens):
        with torch.no_grad():
            logp = torch.log_softmax(tiny_llama(torch.tensor([p + g.token_ids])).logits[0].float(), -1)
        ref = [logp[len(p) - 1 + i, t].item() for i, t in enumerate(g.token_ids)]
        assert g.logprobs == pytest.approx(ref, abs=1e-4)


def test_counter_sampling_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rows = 20000
    logits = probs.log().expand(rows, -1)
    seeds = torch.tensor([row_seed(0, str(i)) - (1 << 64) * (row_seed(0, str(i)) >= 1 << 63) for i in range(rows)])
    tok, lp = sample_tokens(logits, SamplingParams(), seeds, torch.zeros(rows, dtype=torch.long))
    freq = torch.bincount(tok, minlength=4).double() / rows
    assert torch.allclose(freq, probs.double(), atol=0.015)
    assert torch.allclose(lp, probs.log()[tok])
    u = counter_uniform(seeds[:1000], 3, 16)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]])
    assert (
        torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
        and torch.isfinite(filter_logits(logits, top_k=2)[0, :2]).all()
    )
    kept = torch.isfinite(filter_logits(logits, top_p=0.75)[0]).tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.75, 0.5 + 0.3 >= 0.75
    assert torch.isfinite(filter_logits(logits, top_p=0.4)[0]).tolist() == [True, False, False, False]
    params = SamplingParams(top_k=1, max_new_tokens=4)
    seeds = torch.arange(50)
    tok, _ = sample_tokens(logits.expand(50, -1), params, seeds, torch.zeros(50, dtype=torch.long))
    assert (tok == 0).all()


def test_eos_stop_strings_and_length(tiny_gpt2, tiny_tokenizer):
    prompts = enc(tiny_tokenizer, PROMPTS)
    keys = ["a", "b", "c", "d"]
    sampler = HFSampler(tiny_gpt2, tiny_tokenizer)
    free = sampler.generate(prompts, keys, SamplingParams(max_new_tokens=30, seed=1))
    # make the first token sampled in each row the stop string: every row must stop right there
    firsts = [tiny_tokenizer.decode([g.token_ids[0]]) for g in free]
    for g, first in zip(
        sampler.generate(prompts, keys, SamplingParams(max_new_tokens=30, seed=1, stop=tuple(firsts))), firsts
    ):
        text = tiny_tokenizer.decode(g.token_ids)
        assert g.finish_reason in ("stop", "eos") and any(s in text for s in firsts)
        assert g.finish_reason == "eos" or first in text or text.endswith(tuple(firsts))
    short = sampler.generate(prompts, keys, SamplingParams(max_new_tokens=3, seed=1))
    for g, f in zip(short, free):
        assert g.token_ids == f.token_ids[:3] or g.finish_reason == "eos"
        assert len(g.token_ids) <= 3
    # EOS: force the model to emit EOS immediately by biasing its output logits
    model = tiny_gpt2
    bias = torch.zeros(len(tiny_tokenizer))
    bias[1] = 50.0
    handle = model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        gens = HFSampler(model, tiny_tokenizer).generate(prompts, keys, SamplingParams(max_new_tokens=5))
    finally:
        handle.remove()
    assert all(g.token_ids == [1] and g.finish_reason == "eos" for g in gens)


def test_bad_requests_raise(tiny_gpt2, tiny_tokenizer):
    sampler = HFSampler(tiny_gpt2, tiny_tokenizer)
    with pytest.raises(ValueError):
        sampler.branch([[3, 4]], [BranchRequest(0, 3, "k")], SamplingParams())
    with pytest.raises(ValueError):
        sampler.branch([[3, 4]], [BranchRequest(1, 1, "k")], SamplingParams())
    with pytest.raises(ValueError):
        sampler.generate([[]], ["k"], SamplingParams())
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)


def test_on_batch_reports_each_batch_and_changes_nothing(tiny_gpt2, tiny_tokenizer):
    prompts = enc(tiny_tokenizer, PROMPTS + ["Q:7-2=", "Q:1="])
    keys = [f"k{i}" for i in range(len(prompts))]
    params = SamplingParams(max_new_tokens=8, seed=4)
    sampler = HFSampler(tiny_gpt2, tiny_tokenizer, max_batch_rows=4)
    calls: list[tuple[int, int]] = []
    gens = sampler.generate(prompts, keys, params, on_batch=lambda rows, tokens: calls.append((rows, tokens)))
    assert calls == [(4, calls[0][1]), (2, calls[1][1])]  # one call per batch, rows of that batch
    assert sum(t for _, t in calls) == sampler.stats.generated_tokens == sum(len(g.token_ids) for g in gens)
    plain = HFSampler(tiny_gpt2, tiny_tokenizer, max_batch_rows=4).generate(prompts, keys, params)
    assert [(g.token_ids, g.logprobs) for g in gens] == [(g.token_ids, g.logprobs) for g in plain]
    seqs = enc(tiny_tokenizer, ["Q:1+2=1+2=3;A:3", "Q:3+5*2-7=3+5=8"])
    reqs = [BranchRequest(i, c, f"r{i}/{c}", 5) for i, s in enumerate(seqs) for c in range(1, len(s) + 1, 2)]
    for tree in (False, True):  # batches of max_batch_rows (plain path) or max_tree_rows (trie path)
        calls.clear()
        branched = HFSampler(tiny_gpt2, tiny_tokenizer, max_batch_rows=3, max_tree_rows=3, tree_attention=tree).branch(
            seqs, reqs, params, on_batch=lambda rows, tokens: calls.append((rows, tokens))
        )
        assert len(calls) == math.ceil(len(reqs) / 3) and sum(r for r, _ in calls) == len(reqs)
        assert all(r > 0 and t >= r for r, t in calls)  # every row samples at least one token
        ref = HFSampler(tiny_gpt2, tiny_tokenizer, max_batch_rows=64).branch(seqs, reqs, params)
        assert [g.token_ids for g in branched] == [g.token_ids for g in ref]


# -- the trie path of branch (prefixvalue.sampling.tree) ---------------------------------------


def _branch_both(model, tok, seqs, reqs, params, **trie_kwargs):
    plain = HFSampler(model, tok, tree_attention=False).branch(seqs, reqs, params)
    sampler = HFSampler(model, tok, **trie_kwargs)
    trie = sampler.branch(seqs, reqs, params)
    return plain, trie, sampler


def test_trie_branches_equal_the_plain_path(tiny_model, tiny_tokenizer):
    """Same tokens, log-probs and finish reasons as the plain path, for GPT-2 and Llama (GQA), with
    per-request budgets, EOS and stop strings, in batches that split a sequence's rows."""
    seqs = enc(tiny_tokenizer, ["Q:1+2=1+2=3;A:3", "Q:3+5*2-7=3+5=8", "Q:9=A:9"])
    reqs = [
        BranchRequest(i, c, f"r{i}/{c}/{m}", 3 + (c + m) % 9)
        for i, s in enumerate(seqs)
        for c in range(1 + i % 2, len(s) + 1, 2)
        for m in range(2)
    ]
    for params in (SamplingParams(max_new_tokens=12, seed=5), SamplingParams(max_new_tokens=12, seed=6, stop=(";",))):
        plain, trie, sampler = _branch_both(tiny_model, tiny_tokenizer, seqs, reqs, params, max_tree_rows=40)
        assert sampler.tree_attention is True, sampler.tree_attention_reason
        assert [g.token_ids for g in trie] == [g.token_ids for g in plain]
        assert [g.finish_reason for g in trie] == [g.finish_reason for g in plain]
        for a, b in zip(plain, trie):
            assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


def test_trie_shares_forwards_and_survives_dropping_node_logits(tiny_tokenizer, monkeypatch):
    """On the shipped (peaked) policy, continuations of one trace share most histories: the trie runs
    far fewer decode tokens than it samples. Dropping node logits when the table is full (forced
    here) recomputes them and changes no sample."""
    from prefixvalue.policies import load_policy
    from prefixvalue.sampling import trie as sampler_mod

    model, tok = load_policy("data/policies/arith-tiny", "float32", "cpu")
    seq = tok("Q:3+5*2-7=3+5=8;8*2=16;16-7=9;A:9", add_special_tokens=False)["input_ids"] + [1]
    reqs = [BranchRequest(0, c, f"{c}/{m}") for c in range(6, len(seq), 2) for m in range(6)]
    params = SamplingParams(max_new_tokens=40, seed=1)
    plain, trie, sampler = _branch_both(model, tok, [seq], reqs, params)
    assert [g.token_ids for g in trie] == [g.token_ids for g in plain]
    assert sampler.stats.decode_tokens * 3 < sampler.stats.generated_tokens
    monkeypatch.setattr(sampler_mod, "_NODE_LOGITS_BYTES", 0)
    small = HFSampler(model, tok, max_tree_rows=len(reqs))
    monkeypatch.setattr(small, "_logits_budget", lambda vocab: 4)
    assert [g.token_ids for g in small.branch([seq], reqs, params)] == [g.token_ids for g in plain]
    assert small.stats.decode_tokens > sampler.stats.decode_tokens  # dropped nodes were recomputed


def test_models_the_trie_cannot_serve_take_the_plain_path(tiny_gpt2, tiny_tokenizer, monkeypatch):
    from prefixvalue.sampling import hf as sampler_mod
    from prefixvalue.sampling import tree

    seqs = enc(tiny_tokenizer, ["Q:1+2=1+2=3;A:3"])
    reqs = [BranchRequest(0, c, f"k{c}") for c in range(2, 8)]
    params = SamplingParams(max_new_tokens=6, seed=2)
    expected = [
        g.token_ids for g in HFSampler(tiny_gpt2, tiny_tokenizer, tree_attention=False).branch(seqs, reqs, params)
    ]
    # a model without AttentionInterface dispatch (or with sliding windows, sinks, ALiBi)
    monkeypatch.setattr(sampler_mod, "supports_tree", lambda model: "no AttentionInterface")
    s = HFSampler(tiny_gpt2, tiny_tokenizer)
    assert [g.token_ids for g in s.branch(seqs, reqs, params)] == expected
    assert s.tree_attention is False and s.tree_attention_reason == "no AttentionInterface"
    monkeypatch.undo()
    # a model whose attention layers do something the trie does not reproduce: caught by the probe
    right = tree.tree_attention
    monkeypatch.setattr(tree, "tree_attention", lambda *a, **k: (right(*a, **k)[0] * 1.5, None))
    s = HFSampler(tiny_gpt2, tiny_tokenizer)
    assert [g.token_ids for g in s.branch(seqs, reqs, params)] == expected
    assert s.tree_attention is False and "differ" in s.tree_attention_reason
    # a model on which the trie fails outright (e.g. an attention layer that rejects the custom function)

    def broken(*a, **k):
        raise TypeError("unexpected keyword")

    monkeypatch.setattr(tree, "tree_attention", broken)
    s = HFSampler(tiny_gpt2, tiny_tokenizer)
    assert [g.token_ids for g in s.branch(seqs, reqs, params)] == expected
    assert s.tree_attention is False and "probe failed (TypeError" in s.tree_attention_reason
    assert s.stats.generated_tokens == sum(len(t) for t in expected)  # the probe's work is not counted
    monkeypatch.undo()
    tree.register()  # the right function again for later tests


def test_text_decoder_is_the_tokenizers_decode(tiny_tokenizer):
    from prefixvalue.sampling.sampler import text_decoder

    ids = tiny_tokenizer("Q:3+5*2-7=3+5=8;A:8", add_special_tokens=False)["input_ids"] + [1, 0, 5]
    for cut in range(len(ids) + 1):
        assert text_decoder(tiny_tokenizer)(ids[:cut]) == tiny_tokenizer.decode(ids[:cut], skip_special_tokens=True)
