"""`prefixvalue distance` (issue 21, issue 28 items 2 and 7): the saturation rule on synthetic curves (n* within ε
of the best later loss, undetermined while the curve has not flattened), n* chosen on validation losses only, the
paired LoRA − soft-prompt difference and its equivalence test, the soft prompt as the only trained weights, n = 0 as
the model without a soft prompt, losses on each side of the checkpoint's split, and a tiny end-to-end sweep (slow)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from prefixvalue import cli
from prefixvalue import training as train_mod
from prefixvalue.config import ConfigError, parse_config
from prefixvalue.evaluation.distance import (
    choose_n_star,
    flattening,
    n_star_uncertainty,
    paired_seed_difference,
    saturation,
    saturation_point,
    saturation_words,
    t_interval,
)
from prefixvalue.evaluation.selection import SelectionError
from prefixvalue.studies import distance
from prefixvalue.value import ValueModelConfig, build_value_model
from prefixvalue.value.head import HeadValueModel

from conftest import make_tiny_gpt2
from test_value_fixtures import random_traces, save_traces

NS = [0, 1, 2, 4, 8, 16, 32, 64]
#: gains 0.2, 0.2, 0.1, 0.05, then 0.002 from 8 to 16: L(8) is 0.0031 above the best later loss, so n* = 8 at ε = 0.005
CURVE = [1.0, 0.8, 0.6, 0.5, 0.45, 0.448, 0.447, 0.4469]
#: issue 28's shape: the implicit model at n = 0 sits at log 2 and one token barely moves it, the gains come later;
#: 0.055 nats remain after n = 0, and the last doubling gains 0.0039 ≤ ε = 0.005 (the curve has flattened)
FLAT_START = [0.6931, 0.6929, 0.6925, 0.6900, 0.6800, 0.6600, 0.6420, 0.6381]


def _old_rule(ns, losses, eps):
    """The rule before issue 28: the first n whose next grid point gains at most ε (kept here to show the artefact)."""
    return next((a for a, la, lb in zip(ns, losses, losses[1:]) if la - lb <= eps), None)


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
    assert saturation(NS, CURVE, 0.005)["excess"]["8"] == pytest.approx(0.0031)
    assert saturation_point(NS, CURVE, 0.06) == 4  # L(4) is 0.0531 above the best later loss, ≤ 0.06
    still = saturation(NS, CURVE, 0.0)  # the last doubling still gains 0.0001 > ε = 0: undetermined
    assert still["n_star"] is None and "still falling" in still["undetermined"]
    assert saturation_point(NS, [1.0] * len(NS), 0.0) == 0  # nothing to gain: the policy already is there
    # a bump: the loss rises from 4 to 8, then falls 0.1 below L(4). The old rule stopped at 4 (L(4) − L(8) < 0);
    # the new one compares with the best later loss and goes on to 32, the first n within ε of 0.448
    bump = [1.0, 0.8, 0.6, 0.5, 0.55, 0.46, 0.449, 0.448]
    assert _old_rule(NS, bump, 0.005) == 4 and saturation_point(NS, bump, 0.005) == 32
    missing = [*CURVE[:4], None, *CURVE[5:]]  # a missing point is left out of the curve
    assert saturation_point(NS, missing, 0.005) == 16
    with pytest.raises(ValueError):
        saturation_point([0, 2, 1], [1.0, 0.9, 0.8], 0.01)


def test_a_flat_start_with_later_gains_never_gives_zero():
    """Issue 28 item 7: at n = 0 one soft token barely moves the loss, so the old rule stopped at n* = 0 while 0.055
    nats remained; the new rule reads the rest of the curve: n* > 0 or undetermined, never 0."""
    assert _old_rule(NS, FLAT_START, 0.005) == 0  # the artefact
    sat = saturation(NS, FLAT_START, 0.005)
    assert sat["n_star"] == 32 and sat["excess"]["0"] == pytest.approx(0.055)
    # the same start, still falling by 0.02 at the end of the grid: undetermined, not 0
    falling = [*FLAT_START[:6], 0.64, 0.62]
    assert _old_rule(NS, falling, 0.005) == 0
    und = saturation(NS, falling, 0.005)
    assert (
        und["n_star"] is None
        and "still falling" in und["undetermined"]
        and "L(32) − L(64) = 0.02" in und["undetermined"]
    )
    # over noisy seeds (sd 0.002 per cell), neither the mean curve, a seed's own curve nor a bootstrap replicate
    # ever gives 0; the old rule gave 0 on every seed
    rng = np.random.default_rng(7)
    for curve in (FLAT_START, falling):
        seeds = [[v + rng.normal(0, 0.002) for v in curve] for _ in range(5)]
        assert all(_old_rule(NS, s, 0.005) in (0, 1) for s in seeds)
        got = n_star_uncertainty(NS, seeds, 0.005, n_boot=400, seed=3)
        assert got["n_star"] != 0 and 0 not in got["per_seed"] and "0" not in got["bootstrap"]
        assert got["interval"][0] is None or got["interval"][0] > 0
        assert math.isclose(sum(got["bootstrap"].values()), 1.0)
    assert "undetermined" in n_star_uncertainty(NS, [falling] * 3, 0.005, n_boot=50)["bootstrap"]


def test_a_curve_that_has_not_flattened_is_undetermined():
    """Still falling at the largest n, rising at the largest n, or cells after n* still falling within their step
    budget: n* is None with the reason."""
    still = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.43]
    assert saturation(NS, still, 0.005)["n_star"] is None and _old_rule(NS, still, 0.005) is None
    rising = [*CURVE[:7], 0.5]  # the largest prompt did worse by 0.053: it was not trained to its optimum
    r = saturation(NS, rising, 0.005)
    assert r["n_star"] is None and "rising" in r["undetermined"]
    # the curve has flattened, but the cells at 16 and 64 were still falling at the end of their budget
    late = saturation(NS, CURVE, 0.005, unsettled=[4, 16, 64])
    assert late["n_star"] is None and "n = 16, 64 had not flattened" in late["undetermined"]
    assert saturation_point(NS, CURVE, 0.005, unsettled=[0, 4, 8]) == 8  # unsettled before or at n*: n* stands
    assert saturation(NS, [None, 0.5, *[None] * 6], 0.005)["undetermined"].startswith("only 1 grid point")


def test_n_star_uncertainty_over_seeds():
    same = n_star_uncertainty(NS, [CURVE, CURVE, CURVE], 0.005, n_boot=200)
    assert same["n_star"] == 8 and same["per_seed"] == [8, 8, 8] and same["interval"] == [8, 8]
    assert same["bootstrap"] == {"8": 1.0}
    late = [*CURVE[:5], 0.44, 0.439, 0.4389]  # L(8) is 0.0111 above this seed's best later loss: n* = 16
    mixed = n_star_uncertainty(NS, [CURVE, CURVE, late], 0.005, n_boot=400, seed=1)
    assert mixed["per_seed"] == [8, 8, 16]
    assert set(mixed["bootstrap"]) <= {"8", "16", "32", "undetermined"}
    assert math.isclose(sum(mixed["bootstrap"].values()), 1.0) and mixed["bootstrap"]["16"] > 0.5
    # a replicate that draws `late` at 32 and CURVE at 64 rises by 0.0079 > ε at the end: undetermined, counted as +∞
    assert mixed["bootstrap"]["undetermined"] > 0.05 and mixed["interval"] == [8, None]
    # the mean curve: L(8) = 0.45 is 0.45 − 0.44423 (its L(64)) = 0.0058 above its best later loss (> ε), L(16) within ε
    assert mixed["n_star"] == 16 and mixed["excess"]["8"] == pytest.approx(0.45 - (0.4469 * 2 + 0.4389) / 3)


def test_n_star_is_chosen_on_validation_only():
    """Issue 28 item 2: n* is a choice, recorded by `selection.choose`; test-side (or unrecorded) scores refuse."""
    for side in ("test", None, "train"):
        with pytest.raises(SelectionError, match="validation split only"):
            choose_n_star(NS, [FLAT_START, FLAT_START], 0.005, split=side, n_boot=0)
    got, choice = choose_n_star(NS, [FLAT_START, FLAT_START], 0.005, split="validation", n_boot=0)
    assert got["n_star"] == 32 and got["status"] == "chosen" and got["split"] == "validation"
    rec = choice.to_dict()
    assert rec["chosen"] == "32" and rec["split"] == "validation" and rec["n_candidates"] == len(NS)
    assert rec["candidates"] == {str(n): float(n >= 32) for n in NS} and rec["epsilon"] == 0.005
    assert rec["validation_loss"]["0"] == pytest.approx(0.6931)
    undetermined, none = choose_n_star(NS, [[*FLAT_START[:6], 0.64, 0.62]], 0.005, split="validation", n_boot=0)
    assert undetermined["n_star"] is None and undetermined["status"] == "undetermined" and none is None


def test_paired_difference_and_equivalence_on_constructed_numbers():
    """Issue 28 item 2: LoRA − soft prompt, paired by seed, with its interval; equivalent only when the TOST (90%)
    interval lies inside ±margin, never because the two arms' intervals overlap."""
    d = paired_seed_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], margin=4.0)
    assert d["per_seed"] == [1.0, 2.0, 3.0] and d["mean"] == 2.0
    assert d["ci"][1] - 2.0 == pytest.approx(4.302652729911275 / math.sqrt(3))  # t(0.975, 2) · sd / √3
    assert d["tost_ci"][1] - 2.0 == pytest.approx(2.919985580355516 / math.sqrt(3))  # t(0.95, 2) · sd / √3
    assert d["verdict"] == "equivalent" and d["equivalent"] and not d["differs"]
    assert paired_seed_difference([1.0, 2.0, 3.0], [0.0] * 3, margin=3.5)["verdict"] == "not shown equivalent"
    # two arms whose seed intervals overlap widely, with a paired difference that swings ±0.01: not equivalent at 0.005
    soft = [0.50, 0.53, 0.47, 0.52]
    lora = [0.51, 0.522, 0.482, 0.514]
    lo_i, so_i = t_interval(lora)["ci"], t_interval(soft)["ci"]
    assert lo_i[0] <= so_i[1] and so_i[0] <= lo_i[1]  # "within the seed intervals", as the old verdict read it
    swing = paired_seed_difference(lora, soft, margin=0.005)
    assert swing["verdict"] == "not shown equivalent" and swing["equivalent"] is False
    # a small, steady difference: shown different, and equivalent within a margin wider than it
    steady = [s + 0.001 + e for s, e in zip(soft, (0.0, 0.0002, -0.0002, 0.0001))]
    tight = paired_seed_difference(steady, soft, margin=0.005)
    assert tight["verdict"] == "equivalent" and tight["differs"] and tight["ci"][0] > 0
    assert paired_seed_difference(steady, soft, margin=0.0005)["verdict"] == "higher"
    assert paired_seed_difference(soft, steady, margin=0.0005)["verdict"] == "lower"
    one = paired_seed_difference([0.5, None], [0.49, 0.48], margin=1.0)  # one complete pair: no interval
    assert one["n"] == 1 and one["ci"] is None and one["verdict"] == "not shown equivalent"


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


def _cells(kind, val_curves, test_curves, falling_at=(), validation_fraction=0.1):
    """Synthetic cell.json dicts of one kind, one per (seed, n): validation and test loss from the curves; the
    training curve of the cells at `falling_at` still falls by 0.05 over the last quarter of 200 steps."""
    cells = []
    for seed, (vc, tc) in enumerate(zip(val_curves, test_curves)):
        for n, v, t in zip(NS, vc, tc):
            end = 0.0 if n not in falling_at else 0.05
            cells.append(
                {
                    "kind": kind,
                    "tokens": n,
                    "seed": seed,
                    "trainable_params": 32 * n,
                    "params": {"prompt": 32 * n, "lora": 0, "head": 0},
                    "validation_loss": v,
                    "test_loss": t,
                    "spearman": 0.3 if n else 0.04,
                    "validation_spearman": None,
                    "brier_all": 0.2,
                    "eval_curve": [[100, t + 0.1, None], [150, t + end, None], [200, t, None]],
                    "max_steps": 200,
                    "seconds": 1.0,
                    "split_validation_fraction": validation_fraction,
                }
            )
    return cells


def test_summary_chooses_on_validation_and_reports_test():
    """The curve that chooses n* is the validation loss; the figures at n* are the test side's; distance.json's
    selection record is the Choice; without validation losses n* is not chosen (the test curve is not used)."""
    cfg = distance.DistanceConfig(traces="t", seeds=2, n_bootstrap=100, train=train_mod.TrainConfig(max_steps=200))
    test = [[v - 0.1 for v in CURVE]] * 2  # the test curve alone would say n* = 8
    ks, choice = distance.summarise_kind(cfg, "implicit", _cells("implicit", [FLAT_START] * 2, test), [])
    assert ks["n_star"]["n_star"] == 32 and ks["n_star"]["split"] == "validation"
    assert choice.split == "validation" and choice.chosen == "32"
    assert ks["at_n_star"]["side"] == "test" and ks["at_n_star"]["loss"]["mean"] == pytest.approx(CURVE[6] - 0.1)
    assert ks["curve"]["32"]["validation_loss"]["mean"] == pytest.approx(FLAT_START[6])
    words = distance.render_distance_section(
        {
            "policy": "p",
            "max_steps": 200,
            "batch_size": 8,
            "train_traces": 10,
            "heldout_traces": 4,
            "validation_traces": 3,
            "spearman_prefixes": 0,
            "spearman_traces": 0,
            "split_note": "-",
            "seeds": 2,
            "flat_tolerance": 0.005,
            "epsilon": 0.005,
            "kinds": {"implicit": ks},
        }
    )
    assert "saturates at n* = 32" in words and "At n* the test (held-out) loss is" in words
    # cells after n* still falling within their step budget: undetermined, no choice
    und, none = distance.summarise_kind(cfg, "implicit", _cells("implicit", [FLAT_START] * 2, test, (64,)), [])
    assert und["n_star"]["n_star"] is None and "n = 64 had not flattened" in und["n_star"]["undetermined"]
    assert none is None and und["at_n_star"] is None
    # no validation side in the cells' split: n* is not chosen, whatever the test curve says
    blind, nothing = distance.summarise_kind(
        cfg, "head", _cells("head", [[None] * len(NS)] * 2, test, validation_fraction=0.0), []
    )
    assert blind["n_star"]["n_star"] is None and blind["n_star"]["status"] == "no validation" and nothing is None
    assert "needs validation labels" in blind["n_star"]["note"] and "validation_fraction 0" in blind["n_star"]["note"]
    assert "needs validation labels" in saturation_words(blind, 0.005, 64)


def test_lora_verdict_is_the_paired_difference():
    """Issue 28 item 2: the LoRA sentence states the paired difference and its interval; seed intervals that
    overlap are not called equivalent, and equivalence is claimed only inside the stated margin."""
    cfg = distance.DistanceConfig(traces="t", seeds=4, n_bootstrap=0, train=train_mod.TrainConfig(max_steps=200))
    soft = [0.50, 0.53, 0.47, 0.52]
    test = [[s + (0.0 if n <= 32 else 0.001) for n in NS] for s in soft]  # flat: n* = 0 on this test curve
    cells = _cells("head", [FLAT_START] * 4, test)

    def verdict(lora_losses, margin=None):
        lora = [
            {
                **c,
                "test_loss": v,
                "validation_loss": None,
                "lora_r": 2,
                "params": {"prompt": 0, "lora": 1000, "head": 33},
            }
            for c, v in zip(_cells("head", [FLAT_START] * 4, test)[:4], lora_losses)
        ]
        lora = [{**c, "seed": i, "matched_tokens": 32, "matched_by": "n_star"} for i, c in enumerate(lora)]
        run_cfg = dataclasses.replace(cfg, equivalence_margin=margin)
        ks, _ = distance.summarise_kind(run_cfg, "head", cells, lora)
        return ks["lora"]["comparison"], distance.lora_verdict(ks, 32)

    cmp_, text = verdict([0.51, 0.522, 0.482, 0.514])  # overlapping seed intervals, differences swinging ±0.01
    assert cmp_["verdict"] == "not shown equivalent" and cmp_["seeds"] == [0, 1, 2, 3] and cmp_["margin"] == 0.005
    assert cmp_["per_seed"] == pytest.approx([0.01, -0.008, 0.012, -0.006])
    assert "Not shown equivalent" in text and "within the seeds" not in text and "not the bottleneck" not in text
    assert "n* chosen on validation" in text and "LoRA − soft prompt = +0.0020" in text
    cmp_, text = verdict([s + 0.001 for s in soft], margin=0.01)
    assert cmp_["verdict"] == "equivalent" and "Equivalent within ±0.01" in text
    cmp_, text = verdict([s - 0.03 + 0.001 * i for i, s in enumerate(soft)])
    assert cmp_["verdict"] == "lower" and "the soft prompt is the bottleneck" in text


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
    parts = distance.adapter_parameters(Path(tcfg.out) / "final")
    assert parts["prompt"] == 2 * 32 and parts["lora"] == 0 and parts["head"] == (33 if kind == "head" else 0)
    from prefixvalue.value import load_value_model

    model = load_value_model(Path(tcfg.out) / "final")
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
    assert cfg.equivalence_margin == 0.005 and cfg.train.validation_fraction == 0.1  # n* needs a validation side
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
    final = Path(tcfg.out) / "final"
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
    assert got["dropped_traces"] == len(rows) - len(held) > 0  # training and validation prompts


def test_losses_and_spearman_follow_the_checkpoints_split_sides(tiny_setup, tmp_path):
    """The validation loss is the training run's own monitor loss (its validation traces); the test loss and
    Spearman read only prompts `SplitRecord.side` puts on the test side, the validation ones only validation
    prompts; a split without a validation side gives no validation loss; a labels folder drawn from the test side
    is refused as validation labels."""
    from prefixvalue.data import SplitRecord
    from prefixvalue.value import load_value_model
    from prefixvalue.value.heldout import evaluate_heldout

    policy, traces = tiny_setup
    labels = _labels(traces, tmp_path / "labels")
    cfg = distance.DistanceConfig(
        traces=str(traces),
        labels=str(labels),
        out=str(tmp_path / "sweep"),
        tokens=[0, 2],
        curve_points=2,
        train=train_mod.TrainConfig(
            policy=str(policy),
            max_steps=2,
            per_device_batch_size=4,
            heldout_fraction=0.3,
            validation_fraction=0.5,
            report_to="none",
            threads=1,
        ),
    )
    tcfg = cfg.cell_config("head", 2, 0)
    result = train_mod.run(tcfg)
    final = Path(tcfg.out) / "final"
    model, record = load_value_model(final), SplitRecord.load(final)
    rows = distance.loss_rows(str(traces))
    sides = [record.side(r["prompt"]) for r in rows]
    assert result["monitor_split"] == "validation" and {"train", "validation", "test"} == set(sides)
    val = distance.side_loss(model, record, rows, "validation", batch_size=4)
    assert val["traces"] == result["monitor_traces"] == sides.count("validation")
    assert val["loss"] == pytest.approx(result["loss"], rel=1e-6)  # training's monitor read the same traces
    test = distance.side_loss(model, record, rows, "test", batch_size=4)
    test_rows = [{k: v for k, v in r.items() if k != "prompt"} for r, s in zip(rows, sides) if s == "test"]
    assert test["traces"] == result["heldout_traces"] == len(test_rows)
    assert test["loss"] == pytest.approx(evaluate_heldout(model, test_rows, 4)["loss"])
    assert distance.side_loss(model, record, rows, "test", max_traces=1)["traces"] == 1
    no_val = dataclasses.replace(record, validation_fraction=0.0)  # a split recorded before validation existed
    assert distance.side_loss(model, no_val, rows, "validation") == {"loss": None, "traces": 0}

    labelled = distance.LabelledSet.load(str(traces), str(labels))
    got = distance.cell_spearman(final, labelled, batch_size=4, split="validation", model=model)
    assert got["spearman_traces"] == sides.count("validation") and got["spearman"] is not None
    assert distance.cell_spearman(final, labelled, batch_size=4)["spearman_traces"] == sides.count("test")

    SplitRecord.from_prompts([], 0.3, 0).save(labels, prompts="heldout")  # labels of the test side
    with pytest.raises(ConfigError, match="validation_labels=.* holds test-side labels"):
        distance.SweepData.load(dataclasses.replace(cfg, labels=None, validation_labels=str(labels)))
    assert distance.SweepData.load(cfg).labelled is not None  # as test labels they are what they say


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
        "train.validation_fraction=0.4",
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
    chosen = []
    for kind, ks in summary["kinds"].items():
        assert list(ks["curve"]) == ["0", "1", "2"]
        # n* is chosen (or found undetermined) on the validation losses, never on the test ones
        assert ks["n_star"]["split"] == "validation" and ks["n_star"]["status"] in ("chosen", "undetermined")
        assert len(ks["n_star"]["per_seed"]) == 2
        if ks["n_star"]["n_star"] is not None:
            chosen.append(kind)
            assert ks["at_n_star"]["side"] == "test"
        for row in ks["curve"].values():
            assert row["loss"]["n"] == 2 and row["loss"]["mean"] > 0
            assert row["validation_loss"]["n"] == 2 and row["validation_loss"]["mean"] > 0
            assert row["spearman"]["n"] + row["spearman"]["n_missing"] == 2
        assert ks["curve"]["1"]["params"] == 32 + (33 if kind == "head" else 0)
        assert ks["lora"]["params"] > 0 and len(ks["lora"]["loss_per_seed"]) == 2 and ks["lora"]["verdict"]
        assert ks["lora"]["comparison"]["n"] == 2 and "Paired over 2 seeds" in ks["lora"]["verdict"]
    assert [r["kind"] for r in summary["selection"]] == chosen
    assert all(r["split"] == "validation" and r["what"] == "soft-prompt tokens n*" for r in summary["selection"])
    imp0 = summary["kinds"]["implicit"]["curve"]["0"]
    assert imp0["params"] == 0 and imp0["loss"]["sd"] == 0.0  # nothing trained: every seed is the same model
    assert summary["spearman_prefixes"] > 0 and "held out" in summary["split_note"]
    assert summary["validation_traces"] > 0 and summary["heldout_traces"] > 0
    assert (out / "distance.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "n*" in report and "distance.png" in report and "LoRA r=" in report

    # a second run trains nothing and reads every finished cell back
    def refuse(tcfg):
        raise AssertionError(f"{tcfg.out} trained again")

    monkeypatch.setattr(distance, "_train_cell", refuse)
    again = distance.run(parse_config(distance.DistanceConfig, args))
    assert again["kinds"]["head"]["curve"]["2"]["loss"] == summary["kinds"]["head"]["curve"]["2"]["loss"]
