"""The quickstart: fork finding and the quality verdict on hand-made data, and the whole loop at
tiny sizes on the shipped policy (every file it promises, resuming a finished folder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefixvalue.config import ConfigError, parse_config
from prefixvalue.evaluation.analysis import largest_jumps, quality_verdict
from prefixvalue.evaluation.report import render_heatmap
from prefixvalue.evaluation.scoring import evaluate_prefixes
from prefixvalue.stages import evaluate as ev
from prefixvalue.stages import quickstart as qs
from prefixvalue.value import VALUE_MODELS

from conftest import SHIPPED_POLICY
from test_evaluate import FakeValueModel, make_tiny_eval
from test_report import TokenSpans


def _result(tokenizer):
    traces, labels = make_tiny_eval(tokenizer, n_prompts=3)
    cfg = ev.EvaluateConfig(n_bootstrap=10, noise_ceiling_repeats=5)
    return evaluate_prefixes(traces, labels, value_model=FakeValueModel("x"), config=cfg)


def test_largest_jumps_names_the_token_between_the_two_prefixes(tiny_tokenizer):
    res = _result(tiny_tokenizer)
    # plant a clean fork in trace 1: MC 0.9 up to the labelled position `a`, then 0.1 from the next one `b`
    mc = res.mc[1]
    pos = np.sort(mc["position"])
    a, b = int(pos[len(pos) // 2 - 1]), int(pos[len(pos) // 2])
    mc["mean"] = np.where(mc["position"] <= a, 0.9, 0.1)
    mc["ci_low"], mc["ci_high"] = mc["mean"] - 0.05, mc["mean"] + 0.05
    for i, m in enumerate(res.mc):
        if i != 1:
            m["mean"] = np.full(len(m["position"]), 0.5)
    top = largest_jumps(res, 2, tiny_tokenizer)
    assert top[0]["trace_index"] == 1 and top[0]["jump"] == pytest.approx(-0.8)
    assert (top[0]["from_position"], top[0]["to_position"], top[0]["token_index"]) == (a, b, a)
    assert top[0]["token"] == tiny_tokenizer.decode(res.traces[1].completion_ids[a:b])
    assert top[0]["separated"] and top[0]["mc_before"] == pytest.approx(0.9)
    assert abs(top[1]["jump"]) < 0.8
    # the heatmap outlines exactly that token
    parser = TokenSpans()
    parser.feed(render_heatmap(res, [1], tiny_tokenizer, forks={1: a}))
    spans = parser.traces[res.traces[1].trace_id]
    assert [k for k, s in enumerate(spans) if "fork" in s["class"].split()] == [a]


def test_quality_verdict_measures_the_goal_and_names_limits():
    metrics = {"mc": {"noise_ceiling": {"spearman": 0.5}, "saturated": False},
               "estimators": {"learned": {"spearman": {"value": 0.3}}, "mellowmax": {"spearman": {"value": 0.35}},
                              "learned_head": {"spearman": {"value": 0.45}}}}
    curve = {"eval_curve": [[100, 0.20], [200, 0.15]], "train_loss": 0.55, "loss": 0.70}
    v = quality_verdict(metrics, {"kind_a": curve}, 1000)
    assert v["fraction_of_ceiling"] == pytest.approx(0.6) and not v["reaches_ceiling_goal"]
    assert not v["beats_mellowmax"] and not v["met"]
    assert v["learned_head_fraction_of_ceiling"] == pytest.approx(0.9)
    text = " ".join(v["limits"])
    assert "noise ceiling is only 0.50" in text and "still fell" in text and "1000 training traces" in text
    assert "overfitting (kind_a): held-out loss 0.700 vs training loss 0.550" in text
    metrics["estimators"]["learned"]["spearman"]["value"] = 0.45
    metrics["mc"]["noise_ceiling"]["spearman"] = 0.7
    v = quality_verdict(metrics, {"kind_a": {"eval_curve": [[100, 0.2], [200, 0.2]]}}, 1000)
    assert v["met"] is False and v["reaches_ceiling_goal"] is False  # 0.45 / 0.7 < 0.8
    metrics["estimators"]["learned"]["spearman"]["value"] = 0.6
    v = quality_verdict(metrics, {}, 1000)
    assert v["met"] and v["limits"] == []


def test_config_validation():
    with pytest.raises(ConfigError, match="policy is required"):
        parse_config(qs.QuickstartConfig, [])
    kinds = list(VALUE_MODELS)
    with pytest.raises(ConfigError, match="value_models"):
        parse_config(qs.QuickstartConfig, ["policy=p", f"value_models=[{kinds[0]},ipvrm]"])
    with pytest.raises(ConfigError, match="label.positions"):
        parse_config(qs.QuickstartConfig, ["policy=p", "label.positions=short:2"])
    cfg = parse_config(qs.QuickstartConfig, ["policy=p", "train.max_steps=7", "evaluate.n_bootstrap=3"])
    assert cfg.train.max_steps == 7 and cfg.evaluate.n_bootstrap == 3 and cfg.value_models == kinds


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED_POLICY.exists(), reason="the shipped policy data/policies/arith-tiny is absent")
def test_whole_loop_at_tiny_sizes_and_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "qs"
    argv = [f"out={out}", f"policy={SHIPPED_POLICY}", "collect.num_prompts=20", "collect.samples=4", "label.samples=4",
            "label_max_traces=6", "short_samples=4", "forks=2", "threads=1",
            "train.max_steps=4", "train.per_device_batch_size=8", "train.eval_every=2", "train.checkpoint_every=2",
            "train.heldout_fraction=0.3", "train.report_to=disk",
            "evaluate.n_bootstrap=10", "evaluate.noise_ceiling_repeats=5", "evaluate.report_to=disk"]
    assert qs.main(argv) == 0
    for name in ("metrics.json", "report.md", "heatmap.html", "value_curves.png", "calibration.png",
                 "train_implicit/final", "train_head/final", "labels", "labels_short"):
        assert (out / name).exists(), name
    m = json.loads((out / "metrics.json").read_text())
    q = m["quickstart"]
    assert {"learned", "learned_head", "mellowmax", "logsumexp", "constant"} <= set(m["estimators"])
    assert set(q["short"]) == {"short:1", "short:2"}
    assert q["short"]["short:1"]["n_prefixes"] < q["short"]["short:2"]["n_prefixes"]
    assert len(q["forks"]) == 2 and q["fresh_run"] is True
    assert m["cost"]["ratio_mc_to_value"] > 1
    assert q["collected_traces"] == 80 and q["labelled_heldout_traces"] <= 6
    # the labelled traces come only from prompts held out of training
    from prefixvalue.data import is_heldout, load_traces

    assert all(is_heldout(p, 0.3, 0) for p in load_traces(out / "heldout_traces")["prompt"])
    md = (out / "report.md").read_text()
    assert "## Quickstart" in md and "Short-prefix study" in md and "forking token" in md
    assert md.index("## Quickstart") < md.index("## Data") < md.index("## Estimators vs MC")
    assert "class='tok fork'" in (out / "heatmap.html").read_text()
    printed = capsys.readouterr().out
    assert "goal (>= 80% of ceiling" in printed and "short prefixes" in printed
    # the same command again resumes every stage: no label shard is written again
    shards = sorted((out / "labels" / "shards").rglob("*")) + sorted((out / "labels_short" / "shards").rglob("*"))
    before = {p: p.stat().st_mtime_ns for p in shards if p.is_file()}
    assert before
    assert qs.main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["quickstart"]["fresh_run"] is False
    assert again["mc"]["label_mean"] == m["mc"]["label_mean"]
    assert {p: p.stat().st_mtime_ns for p in before} == before
