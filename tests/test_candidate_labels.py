"""Candidate labels (docs/design.md, "Candidate labels"): `prefixvalue label candidates=K` labels s_p ⊕ y' for the
policy's top-K next tokens, and `prefixvalue train` adds their BCE to a Q-head's loss.

pytest tests/test_candidate_labels.py
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import test_collect_label
import torch
from safetensors.torch import load_file
from test_collect_label import collect_args, label_args

from prefixvalue import cli
from prefixvalue.config import parse_config
from prefixvalue.data import load_labels, load_traces
from prefixvalue.data.candidates import (
    CANDIDATE_COLUMNS,
    CANDIDATE_FILE,
    CandidateCollator,
    attach_candidate_labels,
    candidate_loss,
)
from prefixvalue.policies import load_policy
from prefixvalue.sampling.hf import HFSampler
from prefixvalue.sampling.labelling import sampling_from_traces, trace_refs
from prefixvalue.sampling.mc import prefix_key
from prefixvalue.sampling.sampler import BranchRequest, text_decoder
from prefixvalue.stages import label
from prefixvalue.tasks import ArithTask
from prefixvalue.value import ValueModelConfig, build_value_model

model_dir = test_collect_label.model_dir  # the tiny policy of the label tests (a module fixture)
K = 2  # candidates per prefix
SAMPLES = 4


@pytest.fixture(scope="module")
def traces_dir(tmp_path_factory, model_dir):
    out = tmp_path_factory.mktemp("tr") / "traces"
    assert cli.main(["collect", *collect_args(model_dir, out, num_prompts=4, traces_per_prompt=2)]) == 0
    return out


@pytest.fixture(scope="module")
def labels_dir(tmp_path_factory, traces_dir, model_dir):
    out = tmp_path_factory.mktemp("lab") / "labels"
    args = label_args(traces_dir, model_dir, out, positions="stride:2", samples=SAMPLES, candidates=K, max_traces=4)
    assert cli.main(["label", *args]) == 0
    return out


def _train_args(traces, model_dir, labels, out, **kw):
    args = {
        "traces": traces,
        "labels": labels,
        "policy": model_dir,
        "output_dir": out,
        "value_model.kind": "qhead",
        "value_model.backbone": "frozen",
        "heldout_fraction": 0.0,
        "validation_fraction": 0.0,
        "per_device_batch_size": 4,
        "max_steps": 3,
        "lr": 0.05,
        "eval_every": 100,
        "checkpoint_every": 0,
        "report_to": "none",
        "threads": 1,
        **kw,
    }
    return [f"{k}={v}" for k, v in args.items()]


def test_label_writes_candidate_labels_equal_to_direct_mc(labels_dir, traces_dir, model_dir):
    """Each candidate row is the MC of s_p ⊕ y' sampled directly through `branch` with the seeds its content keys;
    candidates are the policy's top-K at s_p less the written token, at the labelled positions only."""
    table = pq.read_table(labels_dir / CANDIDATE_FILE).to_pylist()
    assert table and set(table[0]) == set(CANDIDATE_COLUMNS)
    labels = load_labels(labels_dir)
    labelled = {(t, int(p)) for t, p in zip(labels["trace_id"], labels["position"])}
    traces = load_traces(traces_dir)
    by_id = {r.trace_id: r for r in trace_refs(traces)}
    cfg = parse_config(label.LabelConfig, label_args(traces_dir, model_dir, labels_dir, seed=0))
    params = sampling_from_traces(traces, cfg, warn=False)
    model, tok = load_policy(str(model_dir), "float32", "cpu")
    sampler = HFSampler(model, tok)
    decode = text_decoder(tok)
    task = ArithTask()
    for row in table:
        ref = by_id[row["trace_id"]]
        p, y = row["position"], row["token_id"]
        assert (row["trace_id"], p) in labelled and y != ref.completion_ids[p] and row["rank"] < K
        ids = list(ref.prompt_ids) + list(ref.completion_ids[:p])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
        assert y in logp.topk(K).indices.tolist() and row["logprob"] == pytest.approx(float(logp[y]), abs=1e-4)
        if row["terminal"]:
            assert row["n"] == 0 and y == tok.eos_token_id
            continue
        key = prefix_key(ref.prompt.prompt_id, ref.prompt_ids, [*ref.completion_ids[:p], y])
        budget = max(1, params.max_new_tokens - (p + 1))
        reqs = [BranchRequest(0, len(ids) + 1, f"{key}/m{m}", budget) for m in range(SAMPLES)]
        gens = sampler.branch([ids + [y]], reqs, params)
        scores = []
        for g in gens:
            text = decode([*ref.completion_ids[:p], y, *g.token_ids])
            scores.append(
                0.0
                if g.finish_reason == "length" and traces[0]["fail_truncated"]
                else task.verify(ref.prompt, text).score
            )
        assert row["n"] == SAMPLES and row["mean"] == pytest.approx(np.mean(scores))
    cost = json.loads((labels_dir / "cost.json").read_text())
    assert cost["candidates"]["k"] == K and cost["candidates"]["labels"] == len(table)
    assert 0 < cost["candidates"]["rollouts"] <= cost["rollouts"]
    assert json.loads((labels_dir / "run.json").read_text())["candidates"] == K


def test_training_reads_candidate_labels_and_zero_weight_is_without(labels_dir, traces_dir, model_dir, tmp_path):
    """candidate_weight=0 trains the very weights of the same labels without candidates.parquet; weight 1 moves
    them and records what it trained on."""
    plain = tmp_path / "plain_labels"
    shutil.copytree(labels_dir, plain)
    (plain / CANDIDATE_FILE).unlink()
    runs = {}
    for name, labels, weight in (("none", plain, 1.0), ("zero", labels_dir, 0.0), ("one", labels_dir, 1.0)):
        out = tmp_path / name
        assert cli.main(["train", *_train_args(traces_dir, model_dir, labels, out, candidate_weight=weight)]) == 0
        runs[name] = (
            load_file(out / "final" / "head.safetensors"),
            json.loads((out / "final_metrics.json").read_text()),
        )
    for k, v in runs["none"][0].items():
        assert torch.equal(v, runs["zero"][0][k]), k
    assert any(not torch.equal(v, runs["one"][0][k]) for k, v in runs["none"][0].items())
    assert "candidate_labels" not in runs["none"][1]["training_signal"]
    record = runs["one"][1]["training_signal"]["candidate_labels"]
    n = len(pq.read_table(labels_dir / CANDIDATE_FILE))
    assert record["weight"] == 1.0 and record["labels"] == n and record["train_labels"] == n


def test_collator_and_one_pass_candidate_logits(labels_dir, traces_dir, model_dir):
    """The collator's dense candidate tensors hold each label at its prefix; the Q-head's forward with them gives
    the Q values `token_candidate_values` reads, and the loss is the BCE over the labelled slots."""
    from prefixvalue.data.candidates import load_candidate_labels

    traces = attach_candidate_labels(load_traces(traces_dir), load_candidate_labels(labels_dir), "test")
    rows = [r for r in traces if r["candidate_positions"]][:2]
    batch = CandidateCollator(0)(rows)
    for i, r in enumerate(rows):
        got = sorted(
            (p, int(batch["candidate_ids"][i, p, k]), round(float(batch["candidate_targets"][i, p, k]), 5))
            for p, k in zip(*torch.nonzero(batch["candidate_mask"][i], as_tuple=True))
            for p, k in [(int(p), int(k))]
        )
        want = sorted(
            (p, y, round(m, 5))
            for p, y, m in zip(r["candidate_positions"], r["candidate_tokens"], r["candidate_targets"])
        )
        assert got == want
    model, _ = load_policy(str(model_dir), "float32", "cpu")
    q = build_value_model(ValueModelConfig(kind="qhead", backbone="frozen", base_rate=0.4, q_top_k=3), model).eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(q.q_token.weight, std=0.5)
    with torch.no_grad():
        plain = q(batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
        logits, cand = q(
            batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"], candidate_ids=batch["candidate_ids"]
        )
    assert torch.equal(plain, logits)
    vals = q.token_candidate_values(
        [r["prompt_ids"] for r in rows],
        [r["completion_ids"] for r in rows],
        [np.array(r["candidate_positions"]) for r in rows],
        [np.array(r["candidate_tokens"]) for r in rows],
    )
    for i in range(len(rows)):
        m = batch["candidate_mask"][i]
        expect = sorted(torch.sigmoid(cand[i][m]).double().tolist())
        assert np.allclose(sorted(vals[i]), expect, atol=1e-6)
    total, n = candidate_loss(cand, batch)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        cand[batch["candidate_mask"]], batch["candidate_targets"][batch["candidate_mask"]], reduction="sum"
    )
    assert int(n) == int(batch["candidate_mask"].sum()) and torch.allclose(total, ref)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"candidates": -1}, "candidates must be >= 0"),
        ({"candidates": 2, "positions": "adaptive"}, "candidates=K needs fixed positions"),
        ({"candidates": 2, "backend": "vllm"}, "candidates=K reads the policy's next-token ranking"),
    ],
)
def test_label_refuses_candidates_it_cannot_make(extra, message, traces_dir, model_dir, tmp_path, capsys):
    assert cli.main(["label", *label_args(traces_dir, model_dir, tmp_path / "l", **extra)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_train_refuses_bad_weight_and_bad_labels_and_notes_other_kinds(
    labels_dir, traces_dir, model_dir, tmp_path, capsys
):
    args = _train_args(traces_dir, model_dir, labels_dir, tmp_path / "w", candidate_weight=-1)
    assert cli.main(["train", *args]) == 2
    assert "candidate_weight must be a finite number >= 0" in capsys.readouterr().err
    # a candidate past the end of its trace, and a mean outside [0, 1]: one line each, naming the file
    for change, message in (("position", "past the end of trace"), ("mean", "must be a finite number in [0, 1]")):
        bad = tmp_path / f"bad_{change}"
        shutil.copytree(labels_dir, bad)
        table = pq.read_table(bad / CANDIDATE_FILE).to_pylist()
        table[0][change] = 999 if change == "position" else 1.5
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(table), bad / CANDIDATE_FILE)
        assert cli.main(["train", *_train_args(traces_dir, model_dir, bad, tmp_path / f"t_{change}")]) == 2
        err = capsys.readouterr().err
        assert message in err and "candidate" in err and len(err.strip().splitlines()) == 1, err
    # a head does not train on them: trained as without, with a note and a record saying so
    out = tmp_path / "head"
    assert (
        cli.main(["train", *_train_args(traces_dir, model_dir, labels_dir, out, **{"value_model.kind": "head"})]) == 0
    )
    assert "does not train on them" in capsys.readouterr().err
    record = json.loads((out / "final_metrics.json").read_text())["training_signal"]["candidate_labels"]
    assert record["weight"] == 0.0 and "ignored" in record["note"]
