"""`prefixvalue distance` (issue 21): the saturation rule on synthetic curves, the soft prompt as the only
trained weights, n = 0 as the model without a soft prompt, and a tiny end-to-end sweep (slow)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import datasets
import pytest
import torch

from prefixvalue import cli
from prefixvalue import training as train_mod
from prefixvalue.config import ConfigError, parse_config
from prefixvalue.evaluation.distance import flattening, n_star_uncertainty, saturation_point, t_interval
from prefixvalue.studies import distance
from prefixvalue.value import ValueModelConfig, build_value_model
from prefixvalue.value.head import HeadValueModel

from conftest import make_tiny_gpt2
from test_value_fixtures import random_traces, save_traces

NS = [0, 1, 2, 4, 8, 16, 32, 64]
#: gains 0.2, 0.2, 0.1, 0.05, then 0.002 from 8 to 16: with ε = 0.005, n* = 8
CURVE = [1.0, 0.8, 0.6, 0.5, 0.45, 0.448, 0.447, 0.4469]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_tokenizer):
    """A saved tiny GPT-2 policy and 24 traces over 12 prompts."""
    root = tmp_path_factory.mktemp("distance")
    policy = root / "policy"
    make_tiny_gpt2(len(tiny_tokenizer)).save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    traces = save_traces(random_traces(tiny_tokenizer, n_prompts=12, per_prompt=2, seed=0), root / "traces")
    return policy, traces


# ------------------------------------------------------------------------------ the rule
def test_saturation_rule_on_a_synthetic_curve():
    assert saturation_point(NS, CURVE, 0.005) == 8
    assert saturation_point(NS, CURVE, 0.06) == 4  # 4 → 8 gains 0.05 ≤ 0.06
    assert saturation_point(NS, CURVE, 0.0) is None  # still improving at the end of the grid
    assert saturation_point(NS, [1.0] * len(NS), 0.0) == 0  # nothing to gain: the policy already is there
    rising = [*CURVE[:4], 0.7, 0.6, 0.5, 0.4]  # a loss that goes up from 4 to 8 saturates at 4
    assert saturation_point(NS, rising, 0.005) == 4
    missing = [*CURVE[:4], None, *CURVE[5:]]  # a missing point skips both of its pairs
    assert saturation_point(NS, missing, 0.005) == 16
    with pytest.raises(ValueError):
        saturation_point([0, 2, 1], [1.0, 0.9, 0.8], 0.01)


def test_n_star_uncertainty_over_seeds():
    same = n_star_uncertainty(NS, [CURVE, CURVE, CURVE], 0.005, n_boot=200)
    assert same["n_star"] == 8 and same["per_seed"] == [8, 8, 8] and same["interval"] == [8, 8]
    assert same["bootstrap"] == {"8": 1.0}
    late = [*CURVE[:5], 0.44, 0.439, 0.4389]  # this seed still gains 0.01 from 8 to 16: n* = 16
    mixed = n_star_uncertainty(NS, [CURVE, CURVE, late], 0.005, n_boot=400, seed=1)
    assert mixed["per_seed"] == [8, 8, 16]
    assert set(mixed["bootstrap"]) <= {"8", "16"} and math.isclose(sum(mixed["bootstrap"].values()), 1.0)
    assert mixed["interval"][0] == 8 and mixed["interval"][1] == 16
    # the mean curve gains (0.45 − 0.4453) = 0.0047 ≤ ε from 8 to 16
    assert mixed["n_star"] == 8


def test_seed_interval_and_flattening():
    s = t_interval([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and math.isclose(s["sd"], 1.0)
    assert math.isclose(s["ci"][1] - 2.0, 4.302652729911275 / math.sqrt(3), rel_tol=1e-9)
    assert t_interval([0.5, None])["ci"] is None and t_interval([0.5, None])["n_missing"] == 1
    falling = [[50, 0.9], [100, 0.8], [150, 0.7], [200, 0.6]]
    flat = [[50, 0.9], [100, 0.7], [150, 0.651], [200, 0.650]]
    assert flattening(falling, 200, 0.005) == {
        "drop": pytest.approx(0.1),
        "from_step": 150,
        "to_step": 200,
        "flattened": False,
    }
    assert flattening(flat, 200, 0.005)["flattened"] is True
    assert flattening([[200, 0.6]], 200, 0.005)["flattened"] is None


# --------------------------------------------------------------------- what the sweep trains
@pytest.mark.parametrize("kind", ["implicit", "head"])
def test_only_the_soft_prompt_trains(tiny_setup, tmp_path, monkeypatch, kind):
    """The backbone's weights after training are bit-identical to the policy on disk; the prompt moved."""
    policy, traces = tiny_setup
    seen = []
    real_load = train_mod.load_causal_lm

    def capture(*args, **kwargs):
        model = real_load(*args, **kwargs)
        seen.append(model)
        return model

    monkeypatch.setattr(train_mod, "load_causal_lm", capture)
    cfg = distance.DistanceConfig(
        traces=str(traces),
        out=str(tmp_path),
        tokens=[0, 2],
        curve_points=2,
        train=train_mod.TrainConfig(
            policy=str(policy),
            max_steps=3,
            per_device_batch_size=4,
            lr=0.1,
            warmup_steps=0,
            weight_decay=0.1,
            heldout_fraction=0.25,
            report_to="none",
            checkpoint_every=0,
            threads=1,
        ),
    )
    tcfg = cfg.cell_config(kind, 2, 0)
    assert tcfg.value_model.backbone == "frozen" and tcfg.value_model.soft_prompt_tokens == 2
    train_mod.run(tcfg)
    (backbone,) = seen
    fresh = real_load(str(policy), "float32", "cpu")
    after, before = backbone.state_dict(), fresh.state_dict()
    assert after.keys() == before.keys()
    for name, w in before.items():
        assert torch.equal(after[name], w), f"{name} changed in training"
    parts = distance.adapter_parameters(Path(tcfg.output_dir) / "final")
    assert parts["prompt"] == 2 * 32 and parts["lora"] == 0 and parts["head"] == (33 if kind == "head" else 0)
    from prefixvalue.value import load_value_model

    model = load_value_model(Path(tcfg.output_dir) / "final")
    prompt = model.lm.get_prompt(batch_size=1)[0]
    start = model.ref_prompt if kind == "implicit" else fresh.get_input_embeddings().weight
    if kind == "implicit":
        assert not torch.equal(prompt, start)  # the soft prompt itself trained
    else:
        assert not any(torch.equal(prompt[i], row) for i in range(2) for row in start)  # moved off its vocab init


def test_zero_tokens_is_the_model_without_a_soft_prompt(tiny_tokenizer):
    cfg = distance.DistanceConfig(traces="t", tokens=[0, 1], train=train_mod.TrainConfig(max_steps=8))
    head0 = cfg.cell_config("head", 0, 0).value_model
    assert head0.soft_prompt_tokens == 0 and head0.backbone == "frozen"
    backbone = make_tiny_gpt2(len(tiny_tokenizer))
    swept = build_value_model(head0, make_tiny_gpt2(len(tiny_tokenizer)))
    plain = HeadValueModel(ValueModelConfig(kind="head", backbone="frozen", margin=0.0), backbone)
    assert swept.lm.__class__ is backbone.__class__  # no peft wrapper, no virtual tokens
    with torch.no_grad():
        torch.manual_seed(3)
        w = torch.randn_like(plain.head.weight)
        for m in (swept, plain):
            m.head.weight.copy_(w)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    plens = torch.tensor([3, 3])
    assert torch.equal(swept(ids, mask, plens), plain(ids, mask, plens))
    assert [p.numel() for p in swept.trainable_parameters()] == [32, 1]  # the linear probe: w and b only

    # the implicit model at n = 0 has nothing to train: a fresh no-op adapter, V_φ ≡ 0, run at lr 0
    imp0 = cfg.cell_config("implicit", 0, 0)
    assert imp0.lr == 0.0 and imp0.max_steps == 1 and imp0.value_model.soft_prompt_tokens == 0
    model = build_value_model(imp0.value_model, make_tiny_gpt2(len(tiny_tokenizer)))
    vals = model.prefix_values(ids, mask, plens)
    assert torch.all(vals[:, 1:] == 0.5) and torch.all(vals[:, 0] == imp0.value_model.base_rate)
    lora = cfg.cell_config("implicit", 0, 0, lora_r=3).value_model
    assert lora.backbone == "lora" and lora.lora_r == 3 and lora.soft_prompt_tokens == 0


def test_largest_soft_prompt_fits_the_context(tiny_setup):
    """Every cell drops the same traces: those that would not fit beside the largest soft prompt."""
    policy, traces = tiny_setup  # a GPT-2 of 128 positions
    train = train_mod.TrainConfig(policy=str(policy), max_steps=8)
    fitted = distance.fit_context(distance.DistanceConfig(traces=str(traces), tokens=[0, 100], train=train))
    assert fitted.train.max_length == 28 and fitted.cell_config("head", 0, 0).max_length == 28
    given = dataclasses.replace(train, max_length=20)
    assert (
        distance.fit_context(distance.DistanceConfig(traces=str(traces), tokens=[0, 100], train=given)).train.max_length
        == 20
    )
    with pytest.raises(ConfigError, match="no room"):
        distance.fit_context(distance.DistanceConfig(traces=str(traces), tokens=[0, 127], train=train))


def test_cli_help_and_config_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["distance", "--help"])
    assert exc.value.code == 0 and "epsilon" in capsys.readouterr().out
    assert cli.main(["distance", "traces=x", "tokens=[4,2]"]) == 2
    assert cli.main(["distance", "traces=x", "kinds=[nope]"]) == 2
    assert "distance: unknown kind" in capsys.readouterr().err
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "distance.yaml"
    assert recipe.read_text().startswith("# prefixvalue distance --config recipes/distance.yaml")
    cfg = parse_config(distance.DistanceConfig, ["--config", str(recipe), "traces=x"])
    assert cfg.tokens == [0, 1, 2, 4, 8, 16, 32, 64] and cfg.train.max_steps == 2000
    assert cfg.cell_config("head", 4, 1).value_model.soft_prompt_tokens == 4


# ------------------------------------------------------------------------------ end to end
def _labels(traces: Path, out: Path) -> Path:
    """MC-style labels of every prefix of every trace (mean = the trace's outcome, n = 4)."""
    ds = datasets.load_from_disk(str(traces))
    rows = []
    for r in ds:
        for p in range(len(r["completion_ids"]) + 1):
            k = 4.0 * r["outcome"] if p > 2 else float(p % 3)
            rows.append(
                {
                    "trace_id": r["trace_id"],
                    "position": p,
                    "n": 4,
                    "successes": k,
                    "mean": k / 4,
                    "ci_low": 0.0,
                    "ci_high": 1.0,
                }
            )
    datasets.Dataset.from_list(rows).save_to_disk(str(out))
    return out


def test_cell_spearman_is_the_one_evaluators_learned_spearman(tiny_setup, tmp_path):
    """Issue 27 item 1: a cell's Spearman comes from the one evaluator (`prefixvalue.evaluate`, no soft values,
    no bootstrap) and equals Spearman of the checkpoint's P̂ with the MC labels on the labelled prefixes its
    split record holds out (what the sweep's own mini evaluator computed before); training prompts are counted."""
    from prefixvalue.data import SplitRecord, load_traces
    from prefixvalue.stats import spearman
    from prefixvalue.value import load_value_model

    policy, traces = tiny_setup
    labels = _labels(traces, tmp_path / "labels")
    cfg = distance.DistanceConfig(
        traces=str(traces),
        out=str(tmp_path),
        tokens=[0, 2],
        curve_points=2,
        train=train_mod.TrainConfig(
            policy=str(policy), max_steps=2, per_device_batch_size=4, heldout_fraction=0.5, report_to="none", threads=1
        ),
    )
    tcfg = cfg.cell_config("head", 2, 0)
    train_mod.run(tcfg)
    final = Path(tcfg.output_dir) / "final"
    labelled = distance.LabelledSet.load(str(traces), str(labels))
    got = distance.cell_spearman(final, labelled, batch_size=4)
    record, rows = SplitRecord.load(final), load_traces(traces)
    held = [r for r in rows if record.is_heldout(r["prompt"])]
    model = load_value_model(final)
    preds = model.predict([r["prompt_ids"] for r in held], [r["completion_ids"] for r in held], 4)
    by = {(r["trace_id"], r["position"]): r["mean"] for r in datasets.load_from_disk(str(labels))}
    x = [float(p[i]) for p, r in zip(preds, held) for i in range(len(r["completion_ids"]) + 1)]
    y = [by[r["trace_id"], i] for r in held for i in range(len(r["completion_ids"]) + 1)]
    assert got["spearman"] == pytest.approx(spearman(x, y)[0], abs=1e-12)
    assert got["spearman_prefixes"] == len(x) and got["spearman_traces"] == len(held)
    assert got["dropped_training_traces"] == len(rows) - len(held) > 0


@pytest.mark.slow
def test_sweep_end_to_end_and_resumes(tiny_setup, tmp_path, monkeypatch):
    policy, traces = tiny_setup
    labels = _labels(traces, tmp_path / "labels")
    out = tmp_path / "sweep"
    args = [
        f"traces={traces}",
        f"labels={labels}",
        f"out={out}",
        "tokens=[0,1,2]",
        "seeds=2",
        "n_bootstrap=50",
        f"train.policy={policy}",
        "train.max_steps=4",
        "train.per_device_batch_size=4",
        "train.heldout_fraction=0.25",
        "train.warmup_steps=0",
        "train.threads=1",
        "curve_points=2",
    ]
    monkeypatch.setenv("WANDB_MODE", "offline")  # the wandb logger runs for real, offline
    assert cli.main(["distance", *args, "report_to=disk,wandb"]) == 0
    assert list((out / "wandb").glob("offline-run-*"))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 1, 2] and "distance/head/loss" in logged[0]
    summary = json.loads((out / "distance.json").read_text())
    assert set(summary["kinds"]) == {"implicit", "head"}
    for kind, ks in summary["kinds"].items():
        assert list(ks["curve"]) == ["0", "1", "2"]
        assert len(ks["n_star"]["per_seed"]) == 2
        for row in ks["curve"].values():
            assert row["loss"]["n"] == 2 and row["loss"]["mean"] > 0
            assert row["spearman"]["n"] + row["spearman"]["n_missing"] == 2
        assert ks["curve"]["1"]["params"] == 32 + (33 if kind == "head" else 0)
        assert ks["lora"]["params"] > 0 and len(ks["lora"]["loss_per_seed"]) == 2 and ks["lora"]["verdict"]
    imp0 = summary["kinds"]["implicit"]["curve"]["0"]
    assert imp0["params"] == 0 and imp0["loss"]["sd"] == 0.0  # nothing trained: every seed is the same model
    assert summary["spearman_prefixes"] > 0 and "held out" in summary["split_note"]
    assert (out / "distance.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "n*" in report and "distance.png" in report and "LoRA r=" in report

    # a second run trains nothing and reads every finished cell back
    def refuse(tcfg):
        raise AssertionError(f"{tcfg.output_dir} trained again")

    monkeypatch.setattr(distance, "_train_cell", refuse)
    again = distance.run(parse_config(distance.DistanceConfig, args))
    assert again["kinds"]["head"]["curve"]["2"]["loss"] == summary["kinds"]["head"]["curve"]["2"]["loss"]
