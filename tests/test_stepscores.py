"""TD errors, step scores, ProcessBench F1 by hand, threshold calibration split, step-data loaders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from prefixvalue.data.steps import STEP_DROP_FLOOR, worst_step_drop
from prefixvalue.evaluation import stepscores as S


def test_td_and_step_scores():
    v = np.array([0.5, 0.6, 0.4, 0.9, 1.0])
    np.testing.assert_allclose(S.td_errors(v), [0.1, -0.2, 0.5, 0.1])
    assert S.td_errors(v).sum() == pytest.approx(v[-1] - v[0])  # γ = 1 telescopes
    np.testing.assert_allclose(S.prefix_step_scores(v, [(0, 2), (2, 4)]), [0.4, 1.0])
    with pytest.raises(ValueError):
        S.prefix_step_scores(v, [(0, 5)])
    r = np.array([0.1, -0.3, 0.05, 0.2])
    got = S.process_step_scores(r, [(0, 2), (2, 4)], beta=10.0)
    np.testing.assert_allclose(got, [1 / (1 + math.exp(2.0)), 1 / (1 + math.exp(-2.5))])
    assert np.all(np.isfinite(S.process_step_scores(np.array([500.0, -500.0]), [(0, 1), (1, 2)], 10.0)))


def test_worst_step_drop_is_the_largest_log_fall_across_a_written_step():
    v = np.array([0.8, 0.8, 0.4, 0.4, 0.5, 0.05, 0.1])
    spans = [(0, 2), (3, 4), (4, 6)]  # a separator at token 2 belongs to no step
    got = worst_step_drop(v, spans)
    first, third = math.log(0.4 / 0.8), math.log(0.1 / 0.5)
    np.testing.assert_allclose(got, [0.0, 0.0, first, first, first, first, third])
    assert got[4] == pytest.approx(first)  # a step that raised the value (0.4 → 0.5) does not hide an earlier fall
    assert np.all(worst_step_drop(v, []) == 0)  # no step written: nothing went wrong
    zero = worst_step_drop(np.array([0.5, 0.0]), [(0, 1)])
    assert zero[1] == pytest.approx(math.log(STEP_DROP_FLOOR / 0.5))  # a value of 0 gives a finite drop
    with pytest.raises(ValueError, match="past position"):
        worst_step_drop(v, [(0, 7)])


def test_first_error_prediction():
    assert S.predict_first_error([0.9, 0.4, 0.2], 0.5) == 1
    assert S.predict_first_error([0.9, 0.8], 0.5) == -1
    assert S.predict_first_error([], 0.5) == -1


def test_processbench_f1_by_hand():
    # erroneous: labels 1, 2, 0 -> predictions 1 (right), 0 (wrong), 0 (right): acc_err = 2/3
    # correct: two traces -> predictions -1 (right), 2 (wrong): acc_cor = 1/2
    res = S.processbench_f1([1, 0, 0, -1, 2], [1, 2, 0, -1, -1])
    assert res["acc_erroneous"] == pytest.approx(2 / 3)
    assert res["acc_correct"] == pytest.approx(0.5)
    assert res["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert (res["n_erroneous"], res["n_correct"]) == (3, 2)
    only_err = S.processbench_f1([0], [0])
    assert only_err["f1"] is None and "needs both" in only_err["note"]
    assert S.processbench_f1([-1, 0], [0, -1])["f1"] == 0.0


def test_choose_threshold_separates():
    scores = [[0.9, 0.2, 0.8], [0.9, 0.9], [0.3, 0.9]]
    labels = [1, -1, 0]
    t, f1 = S.choose_threshold(scores, labels)
    assert f1 == 1.0 and 0.3 < t <= 0.9


def test_threshold_never_chosen_on_test_split():
    # calibration prompts and test prompts want opposite thresholds; the reported threshold must be
    # the calibration one, so test scores are bad. A leak (tuning on test) would give F1 = 1.
    groups = [f"p{i}" for i in range(40)]
    cal = S.calibration_split(groups, 0.5, seed=3)
    assert 0 < cal.sum() < len(groups)
    # calibration: errors score 0.2 at step 0; test: errors score 0.6 at step 0
    scores = [[0.2, 0.9] if c else [0.6, 0.9] for c in cal]
    labels = [0] * len(cal)
    # add all-correct traces to both sides
    groups += [f"q{i}" for i in range(40)]
    cal2 = S.calibration_split(groups, 0.5, seed=3)
    assert np.array_equal(cal2[:40], cal)  # a prompt's side does not depend on the others
    for c in cal2[40:]:
        scores.append([0.5, 0.5] if c else [0.9, 0.9])
        labels.append(-1)
    res = S.step_verification(scores, labels, groups, 0.5, seed=3)
    assert res["threshold_split"] == "calibration"
    assert 0.2 < res["threshold"] <= 0.5  # chosen on calibration data
    assert res["calibration_f1"] == 1.0
    assert res["acc_erroneous"] == 0.0  # test errors (0.6) are not caught by a threshold <= 0.5
    assert res["f1"] == 0.0
    assert res["n_calibration"] + res["n_test"] == len(groups)
    test_groups = {g for g, c in zip(groups, cal2) if not c}
    cal_groups = {g for g, c in zip(groups, cal2) if c}
    assert not test_groups & cal_groups


def test_calibration_split_keeps_prompts_together():
    groups = ["a", "a", "b", "b", "c"]
    cal = S.calibration_split(groups, 0.5, seed=0)
    assert cal[0] == cal[1] and cal[2] == cal[3]
    assert 0 < cal.sum() < 5  # both sides non-empty
    res = S.step_verification([[0.1]], [0], ["only"])
    assert res["f1"] is None and ">= 2 prompts" in res["note"]


def test_loaders(tmp_path):
    pb = tmp_path / "pb.jsonl"
    pb.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": "gsm8k-0", "problem": "1+1?", "steps": ["1+1=2", "A:2"], "label": -1},
                {"id": "gsm8k-1", "problem": "2*3?", "steps": ["2*3=5", "A:5"], "label": 0},
            ]
        )
    )
    ex = S.load_step_data(pb)
    assert [e.label for e in ex] == [-1, 0] and ex[1].steps == ["2*3=5", "A:5"] and ex[0].example_id == "gsm8k-0"
    trl = tmp_path / "trl.jsonl"
    trl.write_text(json.dumps({"prompt": "1+1?", "completions": ["1+1=2", "A:3"], "labels": [True, False]}))
    ex = S.load_step_data(trl)
    assert ex[0].label == 1 and ex[0].meta["step_labels"] == [True, False]
    import datasets

    datasets.Dataset.from_list([{"prompt": "x", "completions": ["a", "b"], "labels": [True, True]}]).save_to_disk(
        str(tmp_path / "trl_ds")
    )
    assert S.load_step_data(tmp_path / "trl_ds", "trl")[0].label == -1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "?"}))
    with pytest.raises(ValueError):
        S.load_step_data(bad)


def test_tokenize_and_score_step_examples(tiny_tokenizer):
    ex = S.StepExample("0", "Q:1+2=", ["1+2=3", "A:3"], -1, "g", {})
    _, c, spans = S.tokenize_step_example(tiny_tokenizer, ex)
    assert tiny_tokenizer.decode(c) == "1+2=3\nA:3"
    assert spans == [(0, 6), (6, 9)] and tiny_tokenizer.decode(c[spans[1][0] : spans[1][1]]) == "A:3"

    class Fake:  # no token log-ratios: prefix-based scores only
        process_scores = False

        def predict(self, prompts, comps, batch_size=32):
            # value drops to 0.1 right after any step containing '9'
            out = []
            for cc in comps:
                text = tiny_tokenizer.decode(cc)
                out.append(np.array([0.1 if "9" in text[:i] else 0.8 for i in range(len(cc) + 1)]))
            return out

    examples = [
        S.StepExample(str(i), f"Q{i}", ["1+1=2", "2+7=9" if i % 2 else "2+7=8", "A:x"], 1 if i % 2 else -1, f"g{i}", {})
        for i in range(12)
    ]
    res = S.score_step_examples(Fake(), tiny_tokenizer, examples)
    assert res["threshold_split"] == "calibration" and res["n_examples"] == 12
    assert res["f1"] == 1.0 and "process_level" not in res


def _names(prefix, n, want_cal, seed=0, fraction=0.5):
    from prefixvalue.data.split import unit_hash

    out, i = [], 0
    while len(out) < n:
        name = f"{prefix}{i}"
        if (unit_hash(f"calibration|{seed}|{name}") < fraction) == want_cal:
            out.append(name)
        i += 1
    return out


def test_f1_is_null_when_no_threshold_can_be_tuned():
    """Issue 14 item 6: the calibration split has no all-correct trace (the one correct prompt hashes to the
    test side), so no threshold is tuned: F1 and accuracies are null with a note, never 0.0."""
    err = [f"e{i}" for i in range(10)]
    (correct,) = _names("c", 1, want_cal=False)
    groups = err + [correct]
    labels = [0] * 10 + [-1]
    scores = [[0.9, 0.9]] * 10 + [[0.9, 0.9]]
    res = S.step_verification(scores, labels, groups, 0.5, seed=0)
    assert res["f1"] is None and res["acc_erroneous"] is None and res["acc_correct"] is None
    assert res["threshold"] is None and "no threshold can be tuned" in res["note"]


def test_calibration_split_is_stratified_by_label():
    """Issue 14 item 6: all-correct prompts that the hash would all put on the calibration side are split
    so that both sides see both classes; prompts stay together; deterministic."""
    correct = _names("c", 3, want_cal=True)
    err = _names("e", 2, want_cal=True) + _names("e", 2, want_cal=False)[-2:]
    groups = correct + err + [err[0]]
    labels = [-1] * 3 + [1] * 4 + [0]
    cal = S.calibration_split(groups, 0.5, 0, labels)
    assert np.array_equal(cal, S.calibration_split(groups, 0.5, 0, labels))
    assert cal[3] == cal[-1]  # one prompt, one side
    lab = np.array(labels)
    for side in (cal, ~cal):
        assert (lab[side] == -1).any() and (lab[side] >= 0).any()
    assert S.calibration_split(groups, 0.5, 0)[:3].all()  # unstratified: all three correct prompts in calibration
