"""Data bridges (issue 19): import rollouts -> traces -> label -> export (TRL, Math-Shepherd, ProcessBench) and
back; step data for evaluate through datasets.load_dataset (files, splits, the Hub); ProcessBench protocols."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from prefixvalue import cli
from prefixvalue.config import ConfigError
from prefixvalue.data import load_labels, load_traces
from prefixvalue.data.bridges import STEP_TAG
from prefixvalue.evaluation import stepscores as S
from prefixvalue.tasks import build_task

REPO = Path(__file__).resolve().parents[1]
POLICY = str(REPO / "data" / "policies" / "arith-tiny")


def _rollouts(n_prompts: int = 3) -> list[dict]:
    """Arith rollouts: each prompt's right solution and one with a wrong second step and a wrong answer."""
    task = build_task("arith", {"min_steps": 2, "max_steps": 3})
    rows = []
    for p in task.prompts(n_prompts, "train"):
        right = p.meta["solution"]
        steps = right.split(";")
        a, _, rest = steps[1].partition("=")
        wrong_steps = [steps[0], f"{a}={(int(rest) + 1) % 10}", *steps[2:-1], f"A:{(int(p.answer) + 1) % 10}"]
        wrong = ";".join(wrong_steps)
        rows.append({"prompt": p.text, "completion": right, "outcome": 1.0, "answer": p.answer})
        rows.append({"prompt": p.text, "completion": wrong, "outcome": task.verify(p, wrong).score, "answer": p.answer})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _import(tmp_path: Path, rows: list[dict], name: str = "traces", *extra: str) -> Path:
    src = _write_jsonl(tmp_path / f"{name}.jsonl", rows)
    out = tmp_path / name
    assert cli.main(["import", f"rollouts={src}", f"model={POLICY}", "task=arith", f"out={out}", *extra]) == 0
    return out


def test_import_gives_traces_that_train_and_label_accept(tmp_path):
    from prefixvalue.data.schema import TRACE_FEATURES
    from prefixvalue.loading import LoadOptions, traces_policy
    from prefixvalue.policies import check_vocabulary, load_tokenizer
    from prefixvalue.prompting import traces_prompt_format
    from prefixvalue.sampling.labelling import traces_task

    rows = _rollouts()
    ds = load_traces(_import(tmp_path, rows))
    assert len(ds) == 6 and set(TRACE_FEATURES) <= set(ds.column_names)
    tok = load_tokenizer(POLICY)
    check_vocabulary(tok, ds, "train")  # what train and evaluate check: ids in range, completions decode back
    assert traces_policy(ds, None, LoadOptions(), False, "train")[0] == POLICY
    traces_prompt_format(ds)
    assert traces_task(ds)[0] == "arith"  # label rebuilds the task from the recorded columns
    r0, r1 = ds[0], ds[1]
    assert r0["completion"] == rows[0]["completion"] and r0["outcome"] == 1.0 and r1["outcome"] == 0.0
    assert r0["completion_ids"][-1] == tok.eos_token_id and r0["finish_reason"] == "eos"
    assert r0["trace_id"] == f"{r0['prompt_id']}/s0" and r1["trace_id"] == f"{r0['prompt_id']}/s1"
    # steps from arith's splitter (';' ends a step), exact labels from the task: the second step is wrong
    n_steps = rows[0]["completion"].count(";") + 1
    assert len(r0["step_spans"]) == n_steps and r0["step_labels"] == [True] * n_steps
    assert r1["step_labels"][:2] == [True, False]


def test_import_errors_name_the_line(tmp_path, capsys):
    good = {"prompt": "Q:1+2=", "completion": "1+2=3;A:3", "outcome": 1}
    bad = _write_jsonl(tmp_path / "bad.jsonl", [good])
    with bad.open("a") as fh:
        fh.write('{"prompt": "Q:1+2=", oops}\n')
    out = tmp_path / "t"
    assert cli.main(["import", f"rollouts={bad}", f"model={POLICY}", f"out={out}"]) == 2
    assert f"{bad}, line 2: invalid JSON" in capsys.readouterr().err
    nocol = _write_jsonl(tmp_path / "nocol.jsonl", [{"prompt": "Q:1+2=", "text": "1+2=3", "outcome": 1}])
    assert cli.main(["import", f"rollouts={nocol}", f"model={POLICY}", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "lack field(s) ['completion']" in err and "completion_field=" in err and len(err.splitlines()) == 1
    rng = _write_jsonl(tmp_path / "rng.jsonl", [good, {**good, "outcome": 2}])
    assert cli.main(["import", f"rollouts={rng}", f"model={POLICY}", f"out={out}"]) == 2
    assert f"{rng}, line 2: field 'outcome' must be a number in [0, 1]" in capsys.readouterr().err
    off = _write_jsonl(tmp_path / "off.jsonl", [{**good, "steps": ["1+2=3;", "A:4"]}])
    assert cli.main(["import", f"rollouts={off}", f"model={POLICY}", f"out={out}"]) == 2
    assert f"{off}, line 1: step 1 'A:4' is not in the completion" in capsys.readouterr().err
    assert not out.exists()


def test_export_task_labels_and_round_trip_through_import(tmp_path):
    traces = _import(tmp_path, _rollouts())
    out = tmp_path / "export"
    assert cli.main(["export", f"traces={traces}", f"out={out}"]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["label_source"] == "task" and meta["exported"] == 6 and meta["with_a_wrong_step"] == 3
    assert meta["evaluate_options"] == {"step_prompt_template": "{prompt}", "step_separator": ""}
    trl = datasets.load_dataset("json", data_files=str(out / "trl.jsonl"), split="train")
    assert trl.features["completions"].feature.dtype == "string" and trl.features["labels"].feature.dtype == "bool"
    src = load_traces(traces)
    for row, t in zip(trl, src):
        assert "".join(row["completions"]) == t["completion"]  # step texts, no '<eos>' in the last step
        assert row["labels"] == t["step_labels"] and row["prompt"] == t["prompt"]
    pb = [json.loads(x) for x in (out / "processbench.jsonl").read_text().splitlines()]
    assert [r["label"] for r in pb] == [-1, 1] * 3 and [r["final_answer_correct"] for r in pb] == [True, False] * 3
    ms = json.loads((out / "math_shepherd.jsonl").read_text().splitlines()[1])
    assert ms["input"].count(STEP_TAG) == len(ms["steps"]) and ms["soft_labels"] is None
    assert ms["label"].split("\n")[1].endswith(" -") and ms["hard_labels"][1] is False
    # the TRL export imports back to the same prompts, completions, outcomes and step spans
    back = tmp_path / "back"
    assert cli.main(["import", f"rollouts={out / 'trl.jsonl'}", f"model={POLICY}", "task=arith", f"out={back}"]) == 0
    again = load_traces(back)
    for name in ("trace_id", "prompt", "completion", "outcome", "completion_ids", "step_spans", "step_labels"):
        assert again[name] == src[name], name
    # parquet, loaded with datasets; a ProcessBench export is step data for evaluate (other options: other folders)
    out = tmp_path / "export_pb"
    assert cli.main(["export", f"traces={traces}", f"out={out}", "file_format=parquet", "formats=[processbench]"]) == 0
    assert len(datasets.load_dataset("parquet", data_files=str(out / "processbench.parquet"), split="train")) == 6
    assert [e.label for e in S.load_step_data(out / "processbench.parquet")] == [-1, 1] * 3
    out = tmp_path / "export_trl"
    assert cli.main(["export", f"traces={traces}", f"out={out}", "file_format=parquet", "formats=[trl]"]) == 0
    back = tmp_path / "back_parquet"
    assert cli.main(["import", f"rollouts={out / 'trl.parquet'}", f"model={POLICY}", "task=arith", f"out={back}"]) == 0
    assert load_traces(back)["completion_ids"] == src["completion_ids"]


def test_export_mc_labels_at_step_ends(tmp_path):
    """MC labels (written as label writes them) -> the value after each step; a trace whose labels miss a
    step end is skipped and counted; the step that ends the completion takes the trace's outcome."""
    from prefixvalue.data.schema import LABEL_FEATURES

    traces = _import(tmp_path, _rollouts(2))
    src = load_traces(traces)
    rows = []  # successes 0, 1, 2, 0, ... of n = 2 at every step end before the end of the completion
    for t in src.select(range(3)):
        for _, e in t["step_spans"]:
            if e < len(t["completion_ids"]):
                k = float(len(rows) % 3)
                rows.append({"trace_id": t["trace_id"], "position": e, "n": 2, "successes": k, "mean": k / 2})
    first_end = src[2]["step_spans"][0][1]  # trace 2 lacks its first step's label; traces 3.. have none
    rows = [r for r in rows if not (r["trace_id"] == src[2]["trace_id"] and r["position"] == first_end)]
    full = {c: None for c in LABEL_FEATURES}
    ds = datasets.Dataset.from_list(
        [{**full, **r, "ci_low": 0.0, "ci_high": 1.0} for r in rows], features=LABEL_FEATURES
    )
    ds.save_to_disk(str(tmp_path / "labels"))
    out = tmp_path / "export"
    assert cli.main(["export", f"traces={traces}", f"labels={tmp_path / 'labels'}", f"out={out}"]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["label_source"] == "mc" and meta["exported"] == 2
    assert sum(meta["skipped"].values()) == 2 and any("miss a step end" in k for k in meta["skipped"])
    _check_mc_export(out, src, load_labels(tmp_path / "labels"), n=2)


def _check_mc_export(out: Path, traces, labels, n: int) -> None:
    lab = labels.to_pandas()
    src = {t["trace_id"]: t for t in traces}
    ms = [json.loads(x) for x in (out / "math_shepherd.jsonl").read_text().splitlines()]
    for r in ms:
        t = src[r["trace_id"]]
        mine = lab[lab.trace_id == r["trace_id"]].set_index("position")
        T = len(t["completion_ids"])
        for j, (_, e) in enumerate(t["step_spans"]):
            if e < T:  # the label at the step's end position
                assert r["soft_labels"][j] == mine.loc[e, "mean"] and r["n_rollouts"][j] == n
                assert r["hard_labels"][j] == (mine.loc[e, "successes"] > 0)
            else:  # the step that ends the completion: the trace's verified outcome
                assert r["soft_labels"][j] == t["outcome"] and r["n_rollouts"][j] == 0
        assert r["label_source"] == "mc"
    pb = [json.loads(x) for x in (out / "processbench.jsonl").read_text().splitlines()]
    for p, m in zip(pb, ms):  # the task's exact first error when the traces carry step labels (issue 34)
        if p["label_source"] == "task":
            labels = src[p["trace_id"]]["step_labels"]
            assert p["label"] == next((j for j, ok in enumerate(labels) if not ok), -1)
        else:  # the first step no continuation recovered from
            assert p["label"] == next((j for j, h in enumerate(m["hard_labels"]) if not h), -1)


@pytest.mark.slow
def test_import_label_export_mc_step_labels(tmp_path):
    """import -> label positions=steps (the tiny policy) -> export: MC values after each step; and train
    runs on the imported traces (two steps)."""
    traces = _import(tmp_path, _rollouts(5))
    labels = tmp_path / "labels"
    argv = ["label", f"traces={traces}", f"out={labels}", "positions=steps", "samples=2", "prompts=all"]
    assert cli.main([*argv, "max_traces=2", "progress=false", "step_fallback=none"]) == 0
    out = tmp_path / "export"
    assert cli.main(["export", f"traces={traces}", f"labels={labels}", f"out={out}"]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["label_source"] == "mc" and meta["exported"] == 2 and meta["skipped"]
    _check_mc_export(out, load_traces(traces), load_labels(labels), n=2)
    ckpt = tmp_path / "train"
    config = str(REPO / "recipes" / "configs" / "arith-tiny.yaml")
    argv = ["train", "--config", config, f"traces={traces}", f"output_dir={ckpt}", "max_steps=2", "report_to=none"]
    assert cli.main(argv) == 0
    assert (ckpt / "final" / "value_config.json").is_file()


def test_outcome_fallback_is_marked_and_processbench_refused(tmp_path, capsys):
    # no task: steps from a splitter, or from a record's own step texts (joined by step_separator)
    rows = [
        {"prompt": "Q:1+2=", "completion": "1+2=3;A:3", "outcome": 1.0},
        {"prompt": "Q:1+2=", "steps": ["1+2=4", "A:4"], "outcome": False},
    ]
    src = _write_jsonl(tmp_path / "plain.jsonl", rows)
    traces = tmp_path / "plain"
    argv = ["import", f"rollouts={src}", f"model={POLICY}", f"out={traces}", "steps=separator:;", "step_separator=;"]
    assert cli.main(argv) == 0
    out = tmp_path / "ex"
    assert cli.main(["export", f"traces={traces}", f"out={out}"]) == 2
    assert "outcome-only labels cannot locate" in capsys.readouterr().err
    assert cli.main(["export", f"traces={traces}", f"out={out}", "formats=[trl]"]) == 0
    assert "OUTCOME ONLY" in capsys.readouterr().err
    row, row2 = (json.loads(x) for x in (out / "trl.jsonl").read_text().splitlines())
    assert row["label_source"] == "outcome" and row["labels"] == [True, True] and row2["labels"] == [False, False]
    assert row["completions"] == ["1+2=3", "A:3"] and row2["completions"] == ["1+2=4", "A:4"]
    assert load_traces(traces)[1]["completion"] == "1+2=4;A:4"


# ------------------------------------------------------------------------------- step data sources
def _pb_rows(n: int, prefix: str = "p") -> list[dict]:
    return [
        {"id": f"{prefix}{i}", "problem": f"Q:{i}+1=", "steps": [f"{i}+1={i + 1}", "A:x"], "label": -1 if i % 2 else 0}
        for i in range(n)
    ]


def test_step_data_files_and_splits(tmp_path, monkeypatch):
    rows = _pb_rows(16)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "pb.parquet"))  # crashed with UnicodeDecodeError
    assert [e.example_id for e in S.load_step_data(tmp_path / "pb.parquet")] == [r["id"] for r in rows]
    (tmp_path / "pb.json").write_text(json.dumps(rows))
    assert len(S.load_step_data(tmp_path / "pb.json")) == 16
    dd = datasets.DatasetDict(train=datasets.Dataset.from_list(rows), test=datasets.Dataset.from_list(rows[:4]))
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ConfigError, match=r"has splits \['train', 'test'\].*never merged"):
        S.load_step_data(tmp_path / "dd")  # gave 32 examples from 16 + 16
    assert len(S.load_step_data(tmp_path / "dd", split="test")) == 4
    assert {k: len(v) for k, v in S.load_step_splits(tmp_path / "dd", splits="all").items()} == {"train": 16, "test": 4}
    with pytest.raises(ConfigError, match=r"no split\(s\) \['dev'\]"):
        S.load_step_splits(tmp_path / "dd", splits="test,dev")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(ConfigError, match=rf"{bad}, line 2: invalid JSON"):
        S.load_step_data(bad)
    with pytest.raises(ConfigError, match="step data not found"):
        S.load_step_data(tmp_path / "missing.jsonl")

    calls = []

    def fake_load_dataset(name, *args, split=None, **kwargs):  # the Hub, offline: a stand-in
        calls.append((name, split))
        data = {s: datasets.Dataset.from_list(_pb_rows(3, s)) for s in ("gsm8k", "math", "olympiadbench", "omnimath")}
        return data[split] if split else datasets.DatasetDict(data)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = S.load_step_splits("Qwen/ProcessBench", splits="gsm8k,math")
    assert list(got) == ["gsm8k", "math"] and got["math"][0].example_id == "math0"
    assert calls == [("Qwen/ProcessBench", "gsm8k"), ("Qwen/ProcessBench", "math")]
    assert list(S.load_step_splits("Qwen/ProcessBench", splits="all")) == ["gsm8k", "math", "olympiadbench", "omnimath"]
    with pytest.raises(ConfigError, match="has splits"):
        S.load_step_data("Qwen/ProcessBench")


class _StepFake:
    """Value after each step: 0.2 once a step holds '9', else 0.8 (no token log-ratios)."""

    process_scores = False

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def predict(self, prompts, comps, batch_size=32):
        out = []
        for c in comps:
            text = self.tok.decode(c)
            out.append(np.array([0.2 if "9" in text[:i] else 0.8 for i in range(len(c) + 1)]))
        return out


def _split(name: str, n: int, miss: int = 0) -> list[S.StepExample]:
    """Half the examples have a wrong step 1 holding '9'; `miss` of those carry no '9' (the fake misses them)."""
    out = []
    for i in range(n):
        wrong = i % 2 == 1
        step = "2+7=9" if wrong and i // 2 >= miss else "2+6=8"
        out.append(S.StepExample(f"{name}{i}", f"Q{i}", ["1+1=2", step, "A:x"], 1 if wrong else -1, f"{name}{i}", {}))
    return out


def test_step_benchmark_fixed_and_tuned_protocols(tiny_tokenizer):
    splits = {"easy": _split("easy", 8), "hard": _split("hard", 8, miss=2)}
    m, rows = S.step_benchmark(_StepFake(tiny_tokenizer), tiny_tokenizer, splits, "fixed", 0.5)
    easy, hard = m["splits"]["easy"], m["splits"]["hard"]
    assert easy["threshold_split"] == "fixed" and easy["n_test"] == 8 and easy["f1"] == 1.0
    assert hard["acc_erroneous"] == 0.5 and hard["acc_correct"] == 1.0 and hard["f1"] == pytest.approx(2 / 3)
    assert m["average"]["f1"] == pytest.approx((1 + 2 / 3) / 2) and m["threshold"] == 0.5
    assert len(rows) == 16 and rows[1] == {
        "split": "easy",
        "id": "easy1",
        "label": 1,
        "predicted": 1,
        "match": True,
        "step_scores": [0.8, 0.2, 0.2],
    }
    # a threshold below every score predicts no error anywhere: only the all-correct half is right
    low, _ = S.step_benchmark(_StepFake(tiny_tokenizer), tiny_tokenizer, splits, "fixed", 0.1)
    assert low["average"]["acc_erroneous"] == 0.0 and low["average"]["f1"] == 0.0
    # tuned on a separate set, then applied to every example
    tuned, _ = S.step_benchmark(_StepFake(tiny_tokenizer), tiny_tokenizer, splits, "tuned", tuning=_split("t", 6))
    assert 0.2 < tuned["threshold"] <= 0.8 and tuned["splits"]["easy"]["f1"] == 1.0


def test_evaluate_processbench_mode_writes_predictions(tmp_path, tiny_model_dir, monkeypatch):
    from prefixvalue.stages import evaluate as ev

    from test_evaluate import FakeValueModel, run_evaluate

    monkeypatch.setattr(ev, "_load_value_model", lambda path, device, options=None: FakeValueModel(str(tiny_model_dir)))
    rows = {s: _pb_rows(6, s) for s in ("gsm8k", "math")}
    datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in rows.items()}).save_to_disk(str(tmp_path / "pb"))
    out = tmp_path / "eval"
    argv = ["checkpoint=ckpt", f"step_data={tmp_path / 'pb'}", f"out={out}", "report_to=disk"]
    sb = run_evaluate([*argv, "step_data_split=all", "step_protocol=fixed", "step_threshold=0.5"])["step_benchmark"]
    assert list(sb["splits"]) == ["gsm8k", "math"] and sb["threshold_split"] == "fixed"
    per = [sb["splits"][s]["f1"] for s in ("gsm8k", "math")]
    assert sb["f1"] == pytest.approx(np.mean(per)) and sb["n_test"] == 12
    preds = [json.loads(x) for x in (out / "step_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and {p["split"] for p in preds} == {"gsm8k", "math"}
    for p in preds:  # each prediction is the first step scored below the fixed threshold
        assert p["predicted"] == next((j for j, s in enumerate(p["step_scores"]) if s < 0.5), -1)
        assert p["match"] == (p["predicted"] == p["label"])
    with pytest.raises(ConfigError, match="never merged"):
        ev.main([*argv, "overwrite=true"])
