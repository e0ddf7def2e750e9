"""Collect with the samples of a prompt sharing it (`HFSampler.generate_shared`, `collect share_prompts`): the same
traces as one decode per sample, from one prefill per prompt and shared forwards where tokens coincide.

pytest tests/test_collect_shared.py
"""

from __future__ import annotations

import json

import pytest
import torch
from test_collect_label import collect_args, model_dir  # noqa: F401 - the tiny policy fixture, re-used

from prefixvalue.data import load_traces
from prefixvalue.policies import load_policy
from prefixvalue.sampling import hf as hf_mod
from prefixvalue.sampling import noise
from prefixvalue.sampling.hf import HFSampler
from prefixvalue.sampling.sampler import SamplingParams
from prefixvalue.stages import collect
from prefixvalue.tasks import ArithTask

from conftest import SHIPPED_POLICY, make_tiny_llama

SAMPLES = 6


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the tiny models' decode steps are too small to split, and two threads on a busy machine
    made this file ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(tok, prompts: list[str], samples: int = SAMPLES) -> tuple[list[list[int]], list[str]]:
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return [x for x in ids for _ in range(samples)], [f"p{i}/s{j}" for i in range(len(ids)) for j in range(samples)]


def _same(a, b) -> None:
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.finish_reason for g in a] == [g.finish_reason for g in b]
    for x, y in zip(a, b):
        assert y.logprobs == pytest.approx(x.logprobs, abs=1e-4)


# every finish reason: EOS (long budget), stop strings, the token budget (short budget)
PARAMS = [
    SamplingParams(max_new_tokens=40, seed=0),
    SamplingParams(max_new_tokens=24, seed=1, stop=(";",)),
    SamplingParams(max_new_tokens=5, seed=2),
    SamplingParams(max_new_tokens=12, seed=3, temperature=0.7, top_k=8, top_p=0.9),
]


def test_shared_samples_equal_one_decode_per_sample_on_the_shipped_policy():
    """Same tokens, log-probs and finish reasons as `generate`; each prompt prefilled once, and the peaked policy's
    samples share most forwards."""
    model, tok = load_policy(str(SHIPPED_POLICY), "float32", "cpu")
    prompts = [p.text for p in ArithTask().prompts(8, "test")]
    rows, keys = _rows(tok, prompts)
    reasons = set()
    for params in PARAMS:
        plain = HFSampler(model, tok, max_batch_rows=16).generate(rows, keys, params)
        # batches of 16 rows split a prompt's samples over two batches
        sampler = HFSampler(model, tok, max_batch_rows=16, max_tree_rows=16)
        shared = sampler.generate_shared(rows, keys, params)
        assert sampler.tree_attention is True, sampler.tree_attention_reason
        _same(plain, shared)
        reasons |= {g.finish_reason for g in shared}
        assert sampler.stats.prefill_tokens < sum(len(r) for r in rows) / 2
    assert reasons == {"eos", "stop", "length"}
    sampler = HFSampler(model, tok, max_tree_rows=256)
    sampler.generate_shared(rows, keys, PARAMS[0])
    assert sampler.stats.prefill_tokens == sum(len(r) for r in rows[::SAMPLES])  # one prefill per prompt
    assert sampler.stats.decode_tokens * 2 < sampler.stats.generated_tokens  # shared forwards


def test_shared_samples_equal_one_decode_per_sample_on_llama_with_grouped_kv_heads(tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer), seed=1)
    rows, keys = _rows(tiny_tokenizer, ["Q:1+2=", "Q:3+5*2-7=", "Q:9=", "Q:4*4-1=", "Q:8-3="], samples=4)
    rows.append(rows[0])  # a prompt given again under another key is one more sample of it
    keys.append("again")
    for params in PARAMS:
        plain = HFSampler(model, tiny_tokenizer).generate(rows, keys, params)
        sampler = HFSampler(model, tiny_tokenizer, max_tree_rows=7)
        _same(plain, sampler.generate_shared(rows, keys, params))
        assert sampler.tree_attention is True, sampler.tree_attention_reason


def test_models_the_trie_cannot_serve_sample_through_generate(tiny_gpt2, tiny_tokenizer, monkeypatch):
    rows, keys = _rows(tiny_tokenizer, ["Q:1+2=", "Q:3+5*2-7="])
    params = SamplingParams(max_new_tokens=8, seed=4)
    plain = HFSampler(tiny_gpt2, tiny_tokenizer)
    expected = plain.generate(rows, keys, params)
    monkeypatch.setattr(hf_mod, "supports_tree", lambda model: "no AttentionInterface")
    sampler = HFSampler(tiny_gpt2, tiny_tokenizer)
    _same(expected, sampler.generate_shared(rows, keys, params))
    assert sampler.tree_attention is False and sampler.tree_attention_reason == "no AttentionInterface"
    assert sampler.stats.as_dict() == plain.stats.as_dict()  # it ran generate: every sample prefilled its prompt
    with pytest.raises(ValueError, match="empty prompt"):
        sampler.generate_shared([[]], ["k"], params)
    assert sampler.generate_shared([], [], params) == []


def test_gumbel_noise_in_row_chunks_is_the_noise():
    """The CPU noise, computed a few rows at a time in place, is -log(-log(u)) of the counter uniforms, bit for bit
    (a large vocabulary: several chunks)."""
    seeds = noise.fold_seeds([noise.row_seed(0, f"k{i}") for i in range(7)], torch.device("cpu"))
    for steps in (3, torch.arange(7) * 5):
        u = noise.counter_uniform(seeds, steps, 49152)
        assert torch.equal(noise.gumbel_noise(seeds, steps, 49152, torch.float32), (-torch.log(-torch.log(u))).float())


def _traces(out) -> list[dict]:
    rows = [dict(r) for r in load_traces(out)]
    for r in rows:
        r["logprobs"] = pytest.approx(r["logprobs"], abs=1e-4)
    return rows


def test_collect_shares_prompts_and_writes_the_same_traces(tmp_path, model_dir):  # noqa: F811
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    assert collect.main(collect_args(model_dir, shared, max_new_tokens=16)) == 0
    assert collect.main(collect_args(model_dir, alone, max_new_tokens=16, share_prompts="false")) == 0
    assert [dict(r) for r in load_traces(alone)] == _traces(shared)
    got = json.loads((shared / "summary.json").read_text())["sampling"]
    base = json.loads((alone / "summary.json").read_text())["sampling"]
    assert got["paths"] == {"shared": 3} and got["reasons"] == []
    assert base["paths"] == {"generate": 3} and base["reasons"] == ["share_prompts=false"]
    assert (
        got["generated_tokens"]
        == base["generated_tokens"]
        == sum(len(c) for c in load_traces(shared)["completion_ids"])
    )
    assert got["prefill_tokens"] * 3 == base["prefill_tokens"]  # 3 samples per prompt: one prefill instead of 3
    assert got["seconds"] > 0 and got["generated_tokens_per_s"] > 0


def test_a_partial_collect_resumes_on_either_path(tmp_path, model_dir, monkeypatch):  # noqa: F811
    """A run stopped after its first shard resumes (the rest shared) into the traces of an uninterrupted run; the
    summary counts shards per path, and a shard written by an older version is `unrecorded`."""
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    assert collect.main(collect_args(model_dir, ref)) == 0
    calls = []
    real = HFSampler.generate

    def stop_second(self, *a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(HFSampler, "generate", stop_second)
    with pytest.raises(KeyboardInterrupt):
        collect.main(collect_args(model_dir, out, share_prompts="false"))
    monkeypatch.undo()
    done = out / "shards" / "shard-00000" / "done.json"
    assert done.exists() and not (out / "shards" / "shard-00001").exists()
    record = json.loads(done.read_text())
    assert record["path"] == "generate"
    done.write_text(json.dumps({k: v for k, v in record.items() if k not in ("path", "path_reason")}))
    assert collect.main(collect_args(model_dir, out)) == 0
    assert [dict(r) for r in load_traces(ref)] == _traces(out)
    assert json.loads((out / "summary.json").read_text())["sampling"]["paths"] == {"unrecorded": 1, "shared": 2}
