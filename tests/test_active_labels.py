"""Active labelling (docs/design.md, "Active labelling"): `prefixvalue label select_prefixes=N` labels the N candidate
prefixes value checkpoints score highest (spread, jump) or N drawn uniformly (random), and `prefixvalue train
labels=DIR1,DIR2` trains on several label folders at once.

pytest tests/test_active_labels.py
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import test_candidate_labels
import test_collect_label
from test_collect_label import label_args

from prefixvalue import cli
from prefixvalue.data import load_labels, load_traces, rows_to_dataset
from prefixvalue.data.collate import attach_prefix_labels
from prefixvalue.sampling.acquisition import acquisition_scores, choose_prefixes
from prefixvalue.sampling.positions import parse_positions, positions_for_trace
from prefixvalue.value import load_value_model

model_dir = test_collect_label.model_dir  # the tiny policy of the label tests (a module fixture)
traces_dir = test_candidate_labels.traces_dir  # 4 prompts x 2 traces of it (a module fixture)
POSITIONS = "stride:3"
SAMPLES = 4


def _train_args(traces, model_dir, out, **kw):
    args = {
        "traces": traces,
        "policy": model_dir,
        "output_dir": out,
        "value_model.kind": "head",
        "value_model.backbone": "frozen",
        "heldout_fraction": 0.0,
        "validation_fraction": 0.0,
        "per_device_batch_size": 4,
        "max_steps": 2,
        "lr": 0.5,
        "eval_every": 100,
        "checkpoint_every": 0,
        "report_to": "none",
        "threads": 1,
        **kw,
    }
    return [f"{k}={v}" for k, v in args.items()]


def _label(traces, model_dir, out, **kw):
    split = {"prompts": "train", "heldout_fraction": 0.0, "validation_fraction": 0.0}
    return label_args(traces, model_dir, out, **{"positions": POSITIONS, "samples": SAMPLES, **split, **kw})


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, traces_dir, model_dir):
    """Two tiny head checkpoints (seeds 0 and 1) trained on every trace (no held-out side)."""
    root = tmp_path_factory.mktemp("ens")
    out = []
    for seed in (0, 1):
        assert cli.main(["train", *_train_args(traces_dir, model_dir, root / f"s{seed}", seed=seed)]) == 0
        out.append(root / f"s{seed}" / "final")
    return out


@pytest.fixture(scope="module")
def uniform_dir(tmp_path_factory, traces_dir, model_dir):
    """Every candidate labelled (no selection): the labels the chosen ones must equal."""
    out = tmp_path_factory.mktemp("uni") / "labels"
    assert cli.main(["label", *_label(traces_dir, model_dir, out)]) == 0
    return out


def _candidates(traces_dir):
    ds = load_traces(traces_dir)
    spec = parse_positions(POSITIONS)
    plan = [
        sorted(set(positions_for_trace(spec, len(r["completion_ids"]), r["step_spans"], 8, "stride:16"))) for r in ds
    ]
    return ds, plan


def _pairs(folder):
    ds = load_labels(folder)
    return {(str(t), int(p)) for t, p in zip(ds["trace_id"], ds["position"])}


def test_scores_follow_the_definitions():
    a = [np.array([0.1, 0.5, 0.9, 0.2])]
    b = [np.array([0.3, 0.5, 0.1, 0.2])]
    plan = [[0, 1, 2, 3]]
    spread = acquisition_scores([a, b], plan, "spread")[0]
    assert np.allclose(spread, [0.1, 0.0, 0.4, 0.0])  # population std of two values: half their distance
    one = acquisition_scores([a], plan, "spread")[0]
    assert np.allclose(one, [0.09, 0.25, 0.09, 0.16])  # one model: P̂(1 - P̂)
    jump = acquisition_scores([a, b], [[0, 2, 3]], "jump")[0]
    # previous candidate position: 0 -> itself, 2 -> 0, 3 -> 2; mean over the two models
    assert np.allclose(jump, [0.0, (0.8 + 0.2) / 2, (0.7 + 0.1) / 2])
    assert np.allclose(acquisition_scores([], plan, "random")[0], 0.0)


def test_choice_is_top_n_with_seeded_ties_and_exclusions():
    plan = [[0, 1, 2], [0, 1]]
    scores = [np.array([0.3, 0.1, 0.3]), np.array([0.2, 0.3])]
    sel = choose_prefixes(["a", "b"], plan, scores, 2, seed=0)
    assert sum(map(len, sel.positions)) == 2 and sel.scores == [0.3, 0.3] and sel.candidates == 5
    tied = {("a", 0), ("a", 2), ("b", 1)}
    assert {(t, p) for t, pos in zip("ab", sel.positions) for p in pos} <= tied
    # ties fall to the seeded order: the same seed chooses the same, some seed chooses otherwise
    again = choose_prefixes(["a", "b"], plan, scores, 2, seed=0)
    assert again.positions == sel.positions
    picks = {str(choose_prefixes(["a", "b"], plan, scores, 2, seed=s).positions) for s in range(20)}
    assert len(picks) > 1
    ex = choose_prefixes(["a", "b"], plan, scores, 3, seed=0, exclude={("a", 0), ("b", 1)})
    assert ex.excluded == 2 and ex.candidates == 3 and ex.positions == [[1, 2], [0]]
    # random: all scores equal, N of the candidates drawn by the seed
    flat = [np.zeros(3), np.zeros(2)]
    draws = [choose_prefixes(["a", "b"], plan, flat, 2, seed=s).positions for s in range(30)]
    assert all(sum(map(len, d)) == 2 for d in draws) and len({str(d) for d in draws}) > 3


def test_spread_labels_the_prefixes_the_ensemble_disagrees_on(traces_dir, model_dir, ensemble, uniform_dir, tmp_path):
    out = tmp_path / "active"
    n = 6
    sel = {"select": ",".join(map(str, ensemble)), "select_prefixes": n, "select_by": "spread"}
    assert cli.main(["label", *_label(traces_dir, model_dir, out, **sel)]) == 0
    # the definition, computed here from the checkpoints' own predictions
    ds, plan = _candidates(traces_dir)
    curves = [
        load_value_model(c).predict([list(r["prompt_ids"]) for r in ds], [list(r["completion_ids"]) for r in ds])
        for c in ensemble
    ]
    scores = [np.std([c[t][pos] for c in curves], axis=0) for t, pos in enumerate(plan)]
    flat = sorted((round(float(s), 6) for sc in scores for s in sc), reverse=True)
    assert flat[0] > 0  # the two seeds disagree somewhere
    chosen = _pairs(out)
    assert len(chosen) == n
    got = sorted(
        (
            round(float(scores[t][plan[t].index(p)]), 6)
            for t, tid in enumerate(ds["trace_id"])
            for (u, p) in chosen
            if u == tid
        ),
        reverse=True,
    )
    assert got == flat[:n]  # the n highest spreads (ties may fall either way)
    # each chosen prefix carries exactly the label the uniform labeller gives it with the same seed
    uni = {(str(r["trace_id"]), int(r["position"])): r for r in load_labels(uniform_dir)}
    for r in load_labels(out):
        u = uni[str(r["trace_id"]), int(r["position"])]
        assert (r["n"], r["successes"], r["mean"]) == (u["n"], u["successes"], u["mean"])
    cost = json.loads((out / "cost.json").read_text())
    assert cost["selection"]["select_by"] == "spread" and cost["selection"]["chosen"] == n
    assert cost["selection"]["candidates_scored"] == sum(map(len, plan))
    assert cost["selection"]["score_chosen"]["min"] == pytest.approx(flat[n - 1], abs=1e-6)
    assert cost["rollouts"] <= n * SAMPLES
    # a run that lost a shard (as after a kill) chooses the same prefixes again and redoes only that shard
    before = [dict(r) for r in load_labels(out)]
    shutil.rmtree(out / "shards" / "shard-00000")
    assert cli.main(["label", *_label(traces_dir, model_dir, out, **sel)]) == 0
    assert [dict(r) for r in load_labels(out)] == before


def test_random_and_exclude_and_rounds_train(traces_dir, model_dir, ensemble, tmp_path):
    first, second = tmp_path / "r1", tmp_path / "r2"
    rnd = {"select_prefixes": 5, "select_by": "random", "seed": 3}
    assert cli.main(["label", *_label(traces_dir, model_dir, first, **rnd)]) == 0
    assert len(_pairs(first)) == 5
    # round two: a jump selection that leaves out what round one labelled
    jump = {"select": str(ensemble[0]), "select_prefixes": 4, "select_by": "jump", "exclude": str(first)}
    assert cli.main(["label", *_label(traces_dir, model_dir, second, **jump)]) == 0
    assert len(_pairs(second)) == 4 and not _pairs(first) & _pairs(second)
    cost = json.loads((second / "cost.json").read_text())
    assert cost["selection"]["candidates_excluded"] == 5
    # train merges the two rounds
    out = tmp_path / "t"
    assert cli.main(["train", *_train_args(traces_dir, model_dir, out, labels=f"{first},{second}")]) == 0


def test_a_checkpoint_of_another_split_is_refused(traces_dir, model_dir, ensemble, tmp_path, capsys):
    args = _label(traces_dir, model_dir, tmp_path / "l", select=str(ensemble[0]), select_prefixes=3)
    args = [a for a in args if not a.startswith("heldout_fraction=")] + ["heldout_fraction=0.5"]
    assert cli.main(["label", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another split or other traces" in err
    assert not (tmp_path / "l").exists() or not any((tmp_path / "l").iterdir())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"select_prefixes": 3, "select_by": "spread"}, "pass select=CKPT"),
        ({"select": "x"}, "needs select_prefixes=N"),
        ({"select_prefixes": 3, "select_by": "random", "positions": "adaptive"}, "not adaptive"),
    ],
)
def test_label_refuses_selections_it_cannot_make(extra, message, traces_dir, model_dir, tmp_path, capsys):
    assert cli.main(["label", *_label(traces_dir, model_dir, tmp_path / "l", **extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_prefix_labelled_twice_pools_k_and_n():
    traces = rows_to_dataset([{"trace_id": "t", "completion_ids": [1, 2, 3]}])
    row = {"trace_id": "t", "ci_low": 0.0, "ci_high": 1.0}
    one = rows_to_dataset([{**row, "position": 1, "n": 4, "successes": 1, "mean": 0.25}])
    two = rows_to_dataset(
        [
            {**row, "position": 1, "n": 12, "successes": 9, "mean": 0.75},
            {**row, "position": 2, "n": 8, "successes": 8, "mean": 1.0},
        ]
    )
    soft = attach_prefix_labels(traces, [one, two])[0]["prefix_targets"]
    assert soft[0] is None and soft[3] is None
    assert soft[1] == pytest.approx(10 / 16) and soft[2] == pytest.approx(1.0)
