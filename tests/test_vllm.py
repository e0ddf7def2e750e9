"""The vLLM sampling backend (backend=vllm) against the HF sampler, on the shipped tiny policy.

    make test-vllm                                   # in .venv-vllm (make install-vllm)
    .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm.py

Tests marked ``vllm`` need the vllm package and are left out of `make test` (pytest's addopts); they
share one engine per module (start-up is most of their time). The tests without the mark check what a
user without vllm sees, and run in the default suite.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from prefixvalue import cli
from prefixvalue.config import ConfigError
from prefixvalue.data import load_labels, load_traces, shards
from prefixvalue.sampling import backend as backend_mod
from prefixvalue.sampling.noise import filter_logits
from prefixvalue.sampling.sampler import BranchRequest, SamplingParams
from prefixvalue.stages import collect, label

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "data" / "policies" / "arith-tiny"
HAVE_VLLM = backend_mod.vllm_available()
#: family-wise level of the two-sample tests below (two tests at ALPHA / 2 each)
ALPHA = 0.01


def collect_args(out: Path, **kw) -> list[str]:
    args = {
        "task": "arith",
        "split": "test",
        "model": str(POLICY),
        "num_prompts": 12,
        "traces_per_prompt": 2,
        "seed": 0,
        "max_new_tokens": 64,
        "chunk_prompts": 6,
        "out": str(out),
        "progress": "false",
    }
    args.update(kw)
    return [f"{k}={v}" for k, v in args.items()]


def label_args(traces: Path, out: Path, **kw) -> list[str]:
    args = {
        "traces": str(traces),
        "positions": "stride:4",
        "samples": 16,
        "seed": 0,
        "chunk_traces": 8,
        "prompts": "all",
        "out": str(out),
        "progress": "false",
    }
    args.update(kw)
    return [f"{k}={v}" for k, v in args.items()]


def rows(ds: datasets.Dataset) -> list[dict]:
    return [dict(r) for r in ds]


# ---------------------------------------------------------------------------------------------
# without vllm (default suite)


def test_asking_for_vllm_without_it_is_one_line_naming_the_install_target(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backend_mod, "vllm_available", lambda: False)
    with pytest.raises(ConfigError, match="make install-vllm"):
        collect.main(collect_args(tmp_path / "t", backend="vllm"))
    assert cli.main(["label", *label_args(tmp_path / "t", tmp_path / "l", backend="vllm")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "make install-vllm" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="sglang.*not one of"):
        collect.main(collect_args(tmp_path / "t", backend="sglang"))
    assert not (tmp_path / "t").exists()


def test_the_vllm_module_imports_without_vllm_and_help_lists_the_backend(capsys):
    import prefixvalue.sampling.vllm_sampler as vs

    assert vs.fold_seed(2**64 - 1) == 2**63 - 1 and vs.fold_seed(5) == 5
    if not HAVE_VLLM:
        assert "vllm" not in sys.modules  # imported lazily, when an engine starts
    with pytest.raises(SystemExit):
        collect.main(["--help"])
    out = capsys.readouterr().out
    assert "backend" in out and "vllm_tensor_parallel_size" in out


# ---------------------------------------------------------------------------------------------
# with vllm: one engine for the module


@pytest.fixture(scope="module")
def hf_policy():
    from prefixvalue.policies import load_policy

    return load_policy(str(POLICY), "float32", "cpu")


@pytest.fixture(scope="module")
def vllm_sampler(hf_policy):
    """The module's engine: the same arguments as the stages' defaults, so their runs reuse it."""
    from prefixvalue.sampling.vllm_sampler import VLLMSampler

    return VLLMSampler(str(POLICY), hf_policy[1])


@pytest.fixture(scope="module")
def hf_traces(tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "traces_hf"
    assert collect.main(collect_args(out)) == 0
    return out


def _prompt_ids(tok, n: int) -> tuple[list[list[int]], list]:
    from prefixvalue.tasks import ArithTask

    prompts = list(ArithTask().prompts(n, "test"))
    return [tok(p.text, add_special_tokens=False)["input_ids"] for p in prompts], prompts


def _model_logprobs(model, prompt: list[int], completion: list[int], params: SamplingParams) -> list[float]:
    """The HF model's own log-probs of `completion` after `prompt`, under `params`' sampling distribution."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    if params.temperature == 0:
        logp = torch.log_softmax(logits, -1)
    else:
        logp = torch.log_softmax(filter_logits(logits / params.temperature, params.top_k, params.top_p), -1)
    return logp.gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, max_new_tokens=40, seed=3),
        SamplingParams(temperature=0.7, top_k=5, top_p=0.9, max_new_tokens=40, seed=4),
        SamplingParams(temperature=0.0, max_new_tokens=40),
    ],
    ids=["t1", "t0.7-k5-p0.9", "greedy"],
)
@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed (make install-vllm)")
def test_logprobs_are_the_models_own_under_the_sampling_distribution(vllm_sampler, hf_policy, params):
    model, tok = hf_policy
    ids, _ = _prompt_ids(tok, 8)
    keys = [f"p{i}" for i in range(len(ids))]
    gens = vllm_sampler.generate(ids, keys, params)
    for p, g in zip(ids, gens):
        assert len(g.logprobs) == len(g.token_ids) >= 1
        want = _model_logprobs(model, p, g.token_ids, params)
        assert g.logprobs == pytest.approx(want, abs=2e-3)
        # conventions: EOS kept as the last token exactly when the reason is eos
        assert (g.finish_reason == "eos") == (g.token_ids[-1] in vllm_sampler.eos_token_ids)
        assert not any(t in vllm_sampler.eos_token_ids for t in g.token_ids[:-1])
        assert (g.finish_reason == "length") == (len(g.token_ids) == 40 and g.finish_reason != "eos")
    if params.temperature == 0:  # greedy: the HF sampler gives the same tokens
        from prefixvalue.sampling.hf import HFSampler

        hf = HFSampler(model, tok).generate(ids, keys, params)
        assert [g.token_ids for g in gens] == [h.token_ids for h in hf]


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed (make install-vllm)")
def test_stop_strings_branch_seeds_progress_and_stats(vllm_sampler, hf_policy):
    from prefixvalue.sampling.vllm_sampler import VLLMSampler

    _, tok = hf_policy
    ids, _ = _prompt_ids(tok, 6)
    keys = [f"k{i}" for i in range(len(ids))]
    # stop strings: kept at the end, and the first occurrence ends the continuation
    stop = SamplingParams(max_new_tokens=48, stop=(";",), seed=1)
    stopped = vllm_sampler.generate(ids, keys, stop)
    assert any(g.finish_reason == "stop" for g in stopped)
    for g in stopped:
        text = tok.decode(g.token_ids, skip_special_tokens=True)
        if g.finish_reason == "stop":
            assert text.endswith(";") and text.count(";") == 1
        else:
            assert ";" not in text
    # per-request seeds: a row's tokens depend on its key, not on the other rows of the call
    params = SamplingParams(max_new_tokens=48, seed=7)
    full = vllm_sampler.generate(ids, keys, params)
    part = vllm_sampler.generate(ids[::2], keys[::2], params)
    assert [g.token_ids for g in part] == [g.token_ids for g in full[::2]]
    assert len({tuple(g.token_ids) for g in full}) > 1
    # branch: prefixes of given sequences, in request order, with per-request budgets; progress per chunk
    seqs = [ids[i] + full[i].token_ids for i in range(3)]
    reqs = [
        BranchRequest(s, c, f"b{s}/{c}/{j}", 3 if j == 0 else None) for s in range(3) for c in (4, 9) for j in range(3)
    ]
    small = VLLMSampler(str(POLICY), tok, chunk_rows=5)  # the same engine, smaller chunks
    assert small.llm is vllm_sampler.llm
    calls: list[tuple[int, int]] = []
    gens = small.branch(seqs, reqs, params, on_batch=lambda r, t: calls.append((r, t)))
    assert len(gens) == len(reqs) and len(calls) == math.ceil(len(reqs) / 5)
    assert sum(r for r, _ in calls) == len(reqs) and sum(t for _, t in calls) == sum(len(g.token_ids) for g in gens)
    assert all(len(g.token_ids) <= 3 for g, r in zip(gens, reqs) if r.max_new_tokens == 3)
    # a branch of a prefix is a generation from that prefix under the same key
    again = vllm_sampler.generate([seqs[r.seq][: r.cut] for r in reqs[1:3]], [r.key for r in reqs[1:3]], params)
    assert [g.token_ids for g in again] == [g.token_ids for g in gens[1:3]]
    st = small.stats
    assert st.generated_tokens == sum(len(g.token_ids) for g in gens)
    assert st.decode_tokens == st.generated_tokens - len(reqs)  # every request's first token comes from prefill
    assert 0 < st.prefill_tokens <= sum(r.cut for r in reqs)
    assert st.decode_steps > 0
    with pytest.raises(ValueError, match="cut 0 outside"):
        small.branch(seqs, [BranchRequest(0, 0, "x")], params)


# ---------------------------------------------------------------------------------------------
# the stages with backend=vllm


@pytest.fixture(scope="module")
def vllm_traces(tmp_path_factory, vllm_sampler):
    out = tmp_path_factory.mktemp("vllm") / "traces_vllm"
    assert collect.main(collect_args(out, backend="vllm")) == 0
    return out


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed (make install-vllm)")
def test_collect_with_vllm_records_the_backend_and_outcomes_match_the_verifier(vllm_traces, hf_policy):
    from prefixvalue.tasks import ArithTask, Prompt, safe_verify

    model, tok = hf_policy
    ds = load_traces(vllm_traces)
    assert len(ds) == 24
    rec = json.loads(ds[0]["backend"])
    assert rec["name"] == "vllm" and rec["version"]
    summary = json.loads((vllm_traces / "summary.json").read_text())
    assert summary["backend"] == rec
    assert json.loads((vllm_traces / "run.json").read_text())["backend"] == "vllm"
    task = ArithTask()
    params = SamplingParams(**{k: v for k, v in json.loads(ds[0]["sampling"]).items() if k != "stop"})
    for r in ds:
        assert r["completion"] == tok.decode(r["completion_ids"], skip_special_tokens=True)
        res = safe_verify(task, Prompt(r["prompt_id"], r["prompt"], r["answer"], {}), r["completion"], None)
        want = 0.0 if r["finish_reason"] == "length" else float(res.score)
        assert r["outcome"] == want
        assert r["logprobs"] == pytest.approx(
            _model_logprobs(model, r["prompt_ids"], r["completion_ids"], params), abs=2e-3
        )
    assert 0 < sum(ds["outcome"]) < len(ds)  # the tiny policy solves some prompts, not all


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed (make install-vllm)")
def test_the_same_command_repeats_itself(tmp_path, vllm_traces, hf_traces):
    again = tmp_path / "again"
    assert collect.main(collect_args(again, backend="vllm")) == 0
    assert rows(load_traces(again)) == rows(load_traces(vllm_traces))
    a, b = tmp_path / "la", tmp_path / "lb"
    for out in (a, b):
        assert label.main(label_args(hf_traces, out, backend="vllm", max_traces=6, samples=4)) == 0
    assert rows(load_labels(a)) == rows(load_labels(b))
    cost = json.loads((a / "cost.json").read_text())
    assert cost["backend"]["name"] == "vllm" and cost["generated_tokens"] > 0


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed (make install-vllm)")
def test_label_with_vllm_resumes_like_hf(tmp_path, hf_traces, monkeypatch):
    """Shards done by three processes in any order, and a shard lost (as after a kill) and redone, give
    the labels of one uninterrupted run; a folder of an hf run is not resumed with vllm."""
    args = {"backend": "vllm", "max_traces": 6, "chunk_traces": 2, "samples": 4}
    ref = tmp_path / "ref"
    assert label.main(label_args(hf_traces, ref, **args)) == 0

    class FakeState:
        device = "cpu"

        def wait_for_everyone(self):
            pass

    sharded = tmp_path / "sharded"
    for rank in (2, 1, 0):
        monkeypatch.setattr(shards, "dist_info", lambda rank=rank: (rank, 3, FakeState()))
        assert label.main(label_args(hf_traces, sharded, **args)) == 0
    monkeypatch.undo()
    assert rows(load_labels(sharded)) == rows(load_labels(ref))
    shutil.rmtree(sharded / "shards" / "shard-00001")
    assert label.main(label_args(hf_traces, sharded, **args)) == 0
    assert rows(load_labels(sharded)) == rows(load_labels(ref))
    hf_out = tmp_path / "hf"
    assert label.main(label_args(hf_traces, hf_out, max_traces=2, chunk_traces=2, samples=2)) == 0
    with pytest.raises(ConfigError, match=r"differs in \['backend'\]"):
        label.main(label_args(hf_traces, hf_out, backend="vllm", max_traces=2, chunk_traces=2, samples=2))


def _prefix_counts(traces: Path, labels: Path) -> dict[tuple[int, ...], tuple[float, int]]:
    """Successes and n per distinct prefix (identical prefixes are labelled once: count them once)."""
    tr = {r["trace_id"]: r for r in load_traces(traces)}
    out = {}
    for r in load_labels(labels):
        t = tr[r["trace_id"]]
        out[tuple(t["prompt_ids"]) + tuple(t["completion_ids"][: r["position"]])] = (r["successes"], r["n"])
    return out


def two_sample_pvalues(a: dict, b: dict, draws: int = 20000, seed: int = 0) -> tuple[float, float, int]:
    """p-values that per-prefix success counts `a` and `b` (prefix -> (successes, n)) come from the same
    per-prefix success probabilities: ``(homogeneity, shift, prefixes)``.

    Conditional on each prefix's pooled successes, A's count is hypergeometric under the null.
    Homogeneity: the sum over prefixes of squared standardised deviations of A's count (a per-prefix
    chi-square, summed), its null distribution drawn by Monte Carlo from those hypergeometrics.
    Shift: the Cochran-Mantel-Haenszel statistic (sum of deviations over the root of the summed
    variances), two-sided, normal approximation.
    """
    keys = sorted(set(a) & set(b))
    ka = np.array([a[k][0] for k in keys])
    na = np.array([a[k][1] for k in keys])
    nb = np.array([b[k][1] for k in keys])
    s = ka + np.array([b[k][0] for k in keys])
    n = na + nb
    mean = na * s / n
    var = na * nb * s * (n - s) / (n**2 * (n - 1))
    keep = var > 0
    if not keep.any():
        return 1.0, 1.0, 0
    ka, na, nb, s, mean, var = ka[keep], na[keep], nb[keep], s[keep], mean[keep], var[keep]
    t_obs = float((((ka - mean) ** 2) / var).sum())
    rng = np.random.default_rng(seed)
    sim = rng.hypergeometric(
        s[None, :].astype(int), (na + nb - s)[None, :].astype(int), na[None, :].astype(int), size=(draws, len(s))
    )
    t_sim = (((sim - mean) ** 2) / var).sum(1)
    p_hom = float((1 + (t_sim >= t_obs - 1e-9).sum()) / (draws + 1))
    z = float((ka - mean).sum() / math.sqrt(var.sum()))
    p_shift = math.erfc(abs(z) / math.sqrt(2))
    return p_hom, p_shift, int(keep.sum())


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed (make install-vllm)")
def test_vllm_labels_agree_in_distribution_with_hf(tmp_path, hf_traces):
    """MC labels of the same prefixes by both backends: same success probabilities (both two-sample tests
    at ALPHA / 2 do not reject), while a real difference (vLLM at temperature 2) is rejected."""
    hf, vl, hot = tmp_path / "hf", tmp_path / "vllm", tmp_path / "hot"
    assert label.main(label_args(hf_traces, hf)) == 0
    assert label.main(label_args(hf_traces, vl, backend="vllm")) == 0
    a, b = _prefix_counts(hf_traces, hf), _prefix_counts(hf_traces, vl)
    assert set(a) == set(b) and len(a) >= 100
    p_hom, p_shift, informative = two_sample_pvalues(a, b)
    print(
        f"hf vs vllm: {len(a)} prefixes ({informative} informative), p_homogeneity={p_hom:.3f}, p_shift={p_shift:.3f}"
    )
    assert informative >= 50
    assert p_hom > ALPHA / 2 and p_shift > ALPHA / 2
    # the test has power: a hotter policy's labels differ (temperature 0.6 did not move them enough: the
    # tiny policy is confident), on half the traces
    assert label.main(label_args(hf_traces, hot, backend="vllm", temperature=2.0, max_traces=12)) == 0
    p_hom_h, p_shift_h, _ = two_sample_pvalues(a, _prefix_counts(hf_traces, hot))
    print(f"hf vs vllm at temperature 2: p_homogeneity={p_hom_h:.2g}, p_shift={p_shift_h:.2g}")
    assert min(p_hom_h, p_shift_h) < ALPHA / 2
