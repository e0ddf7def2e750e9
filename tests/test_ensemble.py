"""Value ensembles (docs/design.md, "Value ensembles"): `prefixvalue ensemble members=[...] out=DIR` writes a folder
that loads as one checkpoint, P̂ = σ(mean of the members' logit P̂), and refuses members that do not share one
split of one policy's traces.

pytest tests/test_ensemble.py
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import test_candidate_labels
import test_collect_label
from test_active_labels import _train_args
from test_collect_label import label_args
from test_serve import call

from prefixvalue import cli
from prefixvalue.config import ConfigError
from prefixvalue.data import SplitRecord, load_traces
from prefixvalue.serving import RewardServer, ServeOptions
from prefixvalue.value import ValueEnsemble, load_value_model
from prefixvalue.value.ensemble import ENSEMBLE_FILE, mean_logit

model_dir = test_collect_label.model_dir  # the tiny policy of the label tests (a module fixture)
traces_dir = test_candidate_labels.traces_dir  # 4 prompts x 2 traces of it (a module fixture)
HELDOUT = 0.5


@pytest.fixture(scope="module")
def members(tmp_path_factory, traces_dir, model_dir):
    """Two tiny head checkpoints (seeds 0 and 1) on one split of the traces, half the prompts held out."""
    root = tmp_path_factory.mktemp("members")
    out = []
    for seed in (0, 1):
        args = _train_args(traces_dir, model_dir, root / f"s{seed}", seed=seed, heldout_fraction=HELDOUT)
        assert cli.main(["train", *args]) == 0
        out.append(root / f"s{seed}" / "final")
    return out


def _ensemble(members, out) -> int:
    return cli.main(["ensemble", f"members=[{','.join(map(str, members))}]", f"out={out}"])


def test_mean_logit_is_the_mean_in_logit_space():
    a = [np.array([0.5, 0.9, 0.2]), np.array([0.7])]
    b = [np.array([0.5, 0.1, 0.8]), np.array([0.3])]
    out = mean_logit([a, b])
    assert np.allclose(out[0], [0.5, 0.5, 0.5]) and np.allclose(out[1], [0.5])  # opposite logits cancel
    c = [np.array([0.9]), np.array([0.9])]
    z = (np.log(0.7 / 0.3) + np.log(0.9 / 0.1)) / 2
    assert np.allclose(mean_logit([[a[1]], [c[0]]])[0], 1 / (1 + np.exp(-z)))
    assert np.all(np.isfinite(mean_logit([[np.array([0.0, 1.0])], [np.array([0.0, 1.0])]])[0]))  # saturated: finite


def test_an_ensemble_loads_as_one_checkpoint_and_averages_its_members(members, traces_dir, tmp_path, capsys):
    out = tmp_path / "ens"
    assert _ensemble(members, out) == 0
    assert {p.name for p in out.iterdir()} >= {ENSEMBLE_FILE, "split.json", "prompt_format.json", "step_format.json"}
    assert (out / "split.json").read_bytes() == (members[0] / "split.json").read_bytes()
    record = json.loads((out / ENSEMBLE_FILE).read_text())
    assert all(not m.startswith("/") for m in record["members"])  # relative: the folders travel together
    ens = load_value_model(out)
    assert isinstance(ens, ValueEnsemble) and ens.kind == "ensemble" and len(ens.members) == 2
    singles = [load_value_model(m) for m in members]
    assert ens.forward_passes == sum(m.forward_passes for m in singles) == 2  # frozen heads: one pass each
    ds = load_traces(traces_dir)
    prompts, comps = ds["prompt_ids"][:3], ds["completion_ids"][:3]
    got = ens.predict(prompts, comps)
    each = [m.predict(prompts, comps) for m in singles]
    for i, row in enumerate(got):
        z = np.mean([np.log(e[i] / (1 - e[i])) for e in each], axis=0)
        assert np.allclose(row, 1 / (1 + np.exp(-z)), atol=1e-9)
    assert not np.allclose(each[0][0], each[1][0])  # two seeds: the average is not a copy of one member
    positions, tokens = [np.array([0, 1, 1])], [np.array([5, 6, 7])]  # values of candidate tokens: averaged alike
    cand = ens.token_candidate_values(prompts[:1], comps[:1], positions, tokens)[0]
    per = [m.token_candidate_values(prompts[:1], comps[:1], positions, tokens)[0] for m in singles]
    assert np.allclose(cand, mean_logit([[p] for p in per])[0], atol=1e-9)
    # the text API runs on top (encoded through the shared prompt format)
    text = ens.score(ds["prompt"][0], ds["completion"][0])
    assert text.shape == (len(ens.encode(ds["prompt"][0], ds["completion"][0])[1]) + 1,)
    assert cli.main(["export-model", f"checkpoint={out}", f"out={tmp_path / 'tc'}"]) == 2  # several models: refused
    # the same command again resumes its own folder; other members there are refused
    assert _ensemble(members, out) == 0
    capsys.readouterr()
    assert _ensemble(members[::-1], out) == 2
    assert "members" in capsys.readouterr().err


def test_members_that_do_not_share_a_split_are_refused(members, tmp_path, capsys):
    assert _ensemble(members[:1], tmp_path / "one") == 2
    assert "at least two" in capsys.readouterr().err
    assert _ensemble([members[0], members[0]], tmp_path / "twice") == 2
    assert "listed twice" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(members[1], other)
    SplitRecord.from_prompts(["Q:1+1=", "Q:2+2="], HELDOUT, 0).save(other)  # trained on another split
    assert _ensemble([members[0], other], tmp_path / "split") == 2
    err = capsys.readouterr().err
    assert "another split" in err and str(other) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "split").exists()  # refused before the folder was claimed
    (other / "split.json").unlink()
    assert _ensemble([members[0], other], tmp_path / "nosplit") == 2
    assert "another split" in capsys.readouterr().err
    cfg = json.loads((members[1] / "value_config.json").read_text())
    policy = tmp_path / "policy"
    shutil.copytree(members[1], policy)
    (policy / "value_config.json").write_text(json.dumps({**cfg, "base_model": "someone/else"}))
    assert _ensemble([members[0], policy], tmp_path / "policy_ens") == 2
    assert "reads the policy" in capsys.readouterr().err
    ens = tmp_path / "ens"
    assert _ensemble(members, ens) == 0
    assert _ensemble([ens, members[0]], tmp_path / "nested") == 2
    assert "itself an ensemble" in capsys.readouterr().err


def test_a_member_moved_away_or_retrained_on_another_split_is_refused_at_load(members, tmp_path):
    copies = [tmp_path / "a", tmp_path / "b"]
    for m, c in zip(members, copies):
        shutil.copytree(m, c)
    ens = tmp_path / "ens"
    assert _ensemble(copies, ens) == 0
    SplitRecord.from_prompts(["Q:1+1="], HELDOUT, 0).save(copies[1])
    with pytest.raises(ConfigError, match="another split"):
        load_value_model(ens)
    shutil.rmtree(copies[1])
    with pytest.raises(ConfigError, match=r"ensemble\.json: member '\.\./b' is not there"):
        load_value_model(ens)


def test_evaluate_scores_an_ensemble_on_the_prompts_none_of_its_members_trained_on(
    members, traces_dir, model_dir, tmp_path
):
    ens = tmp_path / "ens"
    assert _ensemble(members, ens) == 0
    labels = tmp_path / "labels"
    split = {"prompts": "heldout", "heldout_fraction": HELDOUT, "validation_fraction": 0.0, "samples": 4}
    assert cli.main(["label", *label_args(traces_dir, model_dir, labels, **split)]) == 0
    out = tmp_path / "eval"
    args = [f"checkpoint={ens}", f"traces={traces_dir}", f"labels={labels}", f"out={out}", "soft_values=false"]
    assert cli.main(["evaluate", *args, "n_bootstrap=20", "noise_ceiling_repeats=5", "report_to=disk"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["estimators"]["learned"]["kind"] == "ensemble"
    record = SplitRecord.load(members[0])
    assert metrics["split"]["includes_training_prompts"] is False
    assert metrics["cost"]["value_forward_passes"] == 2
    ds = load_traces(traces_dir)
    heldout = [p for p in set(ds["prompt"]) if record.side(p) == "test"]
    assert metrics["n_traces"] == sum(p in heldout for p in ds["prompt"]) > 0


def test_serve_answers_with_the_ensembles_values(members, traces_dir, tmp_path):
    ens_dir = tmp_path / "ens"
    assert _ensemble(members, ens_dir) == 0
    ens = load_value_model(ens_dir)
    ds = load_traces(traces_dir)
    prompts, completions = ds["prompt"][:2], ds["completion"][:2]
    srv = RewardServer(load_value_model(ens_dir), ServeOptions(port=0)).start()
    try:
        assert call(srv, "GET", "/health")[1]["kind"] == "ensemble"
        queries = [p + c for p, c in zip(prompts, completions)]
        status, out = call(srv, "POST", "/get_reward", {"query": queries, "prompts": prompts})
    finally:
        srv.shutdown()
    assert status == 200, out
    assert out["rewards"] == pytest.approx([ens.score(p, c)[-1] for p, c in zip(prompts, completions)], abs=1e-5)
