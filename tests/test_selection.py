"""Issue 28: three splits by prompt text, and every choice made on validation (a choice asked of test scores fails)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

from prefixvalue.config import ConfigError
from prefixvalue.data import SplitRecord, is_heldout, labels_side, normalise_prompt, split_side, split_three, unit_hash
from prefixvalue.evaluation.evaluator import check_labels_side
from prefixvalue.evaluation.options import ScoringOptions
from prefixvalue.evaluation.selection import SelectionError, choose, choose_estimator
from prefixvalue.evaluation.stepscores import validation_threshold, verification_at

REPO = Path(__file__).resolve().parents[1]


def test_three_sides_by_prompt_text():
    texts = [f"Q{i}: {i} + {i} =" for i in range(400)]
    sides = [split_side(t, 0.2, 0.25, 3) for t in texts]
    # test is today's held-out split, unchanged by the validation fraction; validation is hashed apart from it
    assert [s == "test" for s in sides] == [is_heldout(t, 0.2, 3) for t in texts]
    for t, s in zip(texts, sides):
        if s != "test":
            want = unit_hash(f"3|validation|{normalise_prompt(t)}") < 0.25
            assert (s == "validation") == want
    n = {s: sides.count(s) for s in ("train", "validation", "test")}
    assert 40 < n["test"] < 120 and 40 < n["validation"] < 120 and n["train"] > 200
    # no validation side: the train side is every non-held-out prompt, as splits recorded before it read
    assert all((split_side(t, 0.2, 0.0, 3) == "train") == (not is_heldout(t, 0.2, 3)) for t in texts)
    # whitespace variants of one text land on one side
    assert split_side("  Q7:  7 + 7 =\n", 0.2, 0.25, 3) == split_side("Q7: 7 + 7 =", 0.2, 0.25, 3)


def test_split_record_records_both_digests_and_reads_old_records(tmp_path):
    ds = datasets.Dataset.from_dict({"prompt": [f"P{i}" for i in range(200)] * 2})
    parts = split_three(ds, 0.2, 0.3, 1)
    rec = SplitRecord.of(ds, 0.2, 0.3, 1)
    assert rec.n_train_prompts == len(set(parts["train"]["prompt"]))
    assert rec.n_validation_prompts == len(set(parts["validation"]["prompt"])) > 0
    assert rec.validation_prompts_sha256 and rec.validation_prompts_sha256 != rec.train_prompts_sha256
    rec.save(tmp_path, prompts="validation")
    back = SplitRecord.load(tmp_path)
    assert back == rec and back.same_split(rec) and labels_side(tmp_path) == "validation"
    assert {back.side(t) for t in parts["validation"]["prompt"]} == {"validation"}
    # a record written before the validation side existed reads as "no validation side"
    old = {k: v for k, v in rec.to_dict().items() if "validation" not in k}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "split.json").write_text(json.dumps({**old, "prompts": "heldout"}))
    legacy = SplitRecord.load(tmp_path / "old")
    assert legacy.validation_fraction == 0 and labels_side(tmp_path / "old") == "test"
    assert not legacy.same_split(rec)


def test_a_choice_asked_of_test_scores_raises():
    with pytest.raises(SelectionError, match="validation split only"):
        choose("learned", {"a": 0.5, "b": 0.6}, split="test", metric="spearman")
    with pytest.raises(SelectionError):
        choose("learned", {"a": 0.5}, split=None, metric="spearman")
    with pytest.raises(SelectionError, match="no candidate"):
        choose("learned", {"a": None, "b": float("nan")}, split="validation", metric="spearman")
    pick = choose("learned", {"a": 0.5, "b": 0.6, "c": 0.6, "d": None}, split="validation", metric="spearman")
    assert pick.chosen == "b" and pick.to_dict()["n_candidates"] == 4 and pick.to_dict()["candidates"]["d"] is None
    assert choose("loss", {"a": 0.5, "b": 0.4}, split="validation", metric="loss", higher_is_better=False).chosen == "b"
    # from an evaluation: its recorded side decides
    metrics = {"split": {"side": "test"}, "estimators": {"learned": {"spearman": {"value": 0.3}}}}
    with pytest.raises(SelectionError):
        choose_estimator("learned", metrics, {"head": "learned"})
    metrics["split"]["side"] = "validation"
    assert choose_estimator("learned", metrics, {"head": "learned"}).chosen == "head"


def test_the_evaluator_refuses_labels_of_the_other_side(tmp_path):
    rec = SplitRecord.from_prompts(["a"], 0.2, 0, ["b"], 0.1)
    rec.save(tmp_path / "test_labels", prompts="heldout")
    rec.save(tmp_path / "val_labels", prompts="validation")
    with pytest.raises(ConfigError, match="pass split=test"):  # test labels read for a choice
        check_labels_side(tmp_path / "test_labels", ScoringOptions(split="validation"))
    with pytest.raises(ConfigError, match="pass split=validation"):  # validation labels reported as test figures
        check_labels_side(tmp_path / "val_labels", ScoringOptions(split="test"))
    check_labels_side(tmp_path / "val_labels", ScoringOptions(split="validation"))
    check_labels_side(tmp_path / "test_labels", ScoringOptions(split="test"))


def test_step_threshold_chosen_on_validation_scores_every_test_trace():
    # validation: errors have low scores after the first wrong step; the chosen threshold separates them
    val_scores = [[0.9, 0.2], [0.8, 0.9], [0.95, 0.1], [0.9, 0.85]]
    val_labels = [1, -1, 1, -1]
    chosen = validation_threshold(val_scores, val_labels, ["p1", "p2", "p3", "p4"])
    assert chosen["threshold_split"] == "validation" and 0.2 < chosen["threshold"] < 0.85
    test = verification_at([[0.9, 0.3], [0.7, 0.8]], [1, -1], chosen)
    assert test["n_test"] == 2 and test["f1"] == 1.0 and test["threshold"] == chosen["threshold"]
    one_class = validation_threshold([[0.9], [0.8]], [-1, -1], ["p1", "p2"])
    assert one_class["threshold"] is None and "no threshold" in one_class["note"]
    assert verification_at([[0.9]], [-1], one_class)["f1"] is None


def test_frontier_chooses_on_validation_and_measures_the_selection_effect(tmp_path, monkeypatch):
    """benchmarks/frontier.py: the recipe is the validation argmax even where test ranks another first, and the
    report carries the test figure of that choice, the best test figure, and the rank agreement."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("frontier", None)
    import frontier

    rng = np.random.default_rng(0)
    n = 120
    prompts = [f"p{i // 3}" for i in range(n)]
    sides = {side: rng.uniform(size=n) for side in ("validation", "test")}
    # recipe a: good on validation, a little worse on test; b: the reverse; c: noise
    quality = {"a": (0.9, 0.6), "b": (0.6, 0.8), "c": (0.0, 0.0)}
    rows = []
    for recipe, (qv, qt) in quality.items():
        for seed in range(2):
            pred = {}
            for side, q in (("validation", qv), ("test", qt)):
                y = sides[side]
                x = q * y + (1 - q) * rng.uniform(size=n)
                pred[side] = {
                    "trace_id": [f"t{i}" for i in range(n)],
                    "prompt_id": prompts,
                    "position": list(range(n)),
                    "mc_mean": y.tolist(),
                    "learned": x.tolist(),
                }
            path = frontier._preds_path(tmp_path, recipe, 100, seed)
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(pred))
            rho = {side: frontier._rho(np.asarray(pred[side]["learned"]), sides[side]) for side in pred}
            rows.append(
                {"recipe": recipe, "budget": 100, "seed": seed, "tokens": 1, "steps": 1}
                | {"spearman": rho["test"], "spearman_validation": rho["validation"]}
            )
    summary = frontier._summarise(rows, 0.9)
    sel = frontier.protocol(rows, summary, tmp_path, 100, 0.9, n_boot=100)
    assert sel["split"] == "validation" and sel["chosen"] == "a" and sel["best_on_test"] == "b"
    assert sel["selection_effect_share"] > 0 and sel["n_candidates"] == 3
    assert sel["paired_vs_chosen_test"]["b"]["value"] > 0 and set(sel["paired_vs_chosen_test"]) == {"b", "c"}
    assert sel["rank_agreement"]["ci"] is not None and -1 <= sel["rank_agreement"]["spearman_over_recipes"] <= 1
    md = frontier.markdown(
        summary,
        {"noise_ceiling": 0.9, "seeds": 2, "steps": 1, "validation_prefixes": n}
        | {"measured_at": "today", "recipes": []},
        sel,
    )
    assert "Chosen on validation" in md and "`a`" in md
