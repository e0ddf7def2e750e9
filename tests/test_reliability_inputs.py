"""Issue 36 "Reliability 2", inputs accepted that should not be: labels and traces that break their contract
(one checked loader each, whatever stage reads them), token ids outside the vocabulary in export, rollouts
that import cannot turn into traces, and evaluate with no held-out labelled prompt. Each refusal is one line
naming the file (or folder), the row or line and the field, exit status 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_input_faults import cli_fails

from prefixvalue.data import DataFormatError, load_labels, load_traces, rows_to_dataset
from prefixvalue.stages import evaluate as ev
from prefixvalue.studies.distance import loss_rows

from test_evaluate import FakeValueModel, _write, make_tiny_eval, write_split

REPO = Path(__file__).resolve().parents[1]
POLICY = str(REPO / "data" / "policies" / "arith-tiny")


@pytest.fixture
def tiny_eval(tmp_path, tiny_tokenizer, tiny_model_dir, monkeypatch):
    """``(traces rows, label rows, evaluate argv without labels= and out=)``: hand-written arith traces, their
    MC labels, a stand-in value model whose checkpoint holds every prompt out."""
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=3)
    monkeypatch.setattr(ev, "_load_value_model", lambda path, device, options=None: FakeValueModel(str(tiny_model_dir)))
    ckpt = write_split(tmp_path / "ckpt", [t["prompt"] for t in traces])
    tdir, _ = _write(tmp_path, traces, labels)
    argv = [f"checkpoint={ckpt}", f"traces={tdir}", "soft_values=false", "n_bootstrap=5", "report_to=disk"]
    argv += ["noise_ceiling_repeats=2", "progress=false"]
    return traces, labels, argv


def _save(rows: list[dict], path: Path) -> Path:
    rows_to_dataset(rows).save_to_disk(str(path))
    return path


# -- 1: labels that break the contract, refused by the one labels loader wherever labels are read -------------
@pytest.mark.parametrize("fault", ["k_above_n", "k_negative", "duplicate_prefix", "position_past_the_trace"])
def test_bad_labels_are_refused_in_one_line_by_every_reader(tmp_path, tiny_eval, tiny_model_dir, capsys, fault):
    traces, labels, argv = tiny_eval
    rows = [dict(r) for r in labels]
    row, field = 4, {"duplicate_prefix": "position", "position_past_the_trace": "position"}.get(fault, "successes")
    if fault == "k_above_n":
        rows[row]["successes"] = rows[row]["n"] + 3
    elif fault == "k_negative":
        rows[row]["successes"] = -1
    elif fault == "duplicate_prefix":  # the same prefix labelled twice, with another mean
        flipped = {**rows[1], "successes": rows[1]["n"] - rows[1]["successes"], "mean": 1 - rows[1]["mean"]}
        rows.insert(row, flipped)
    else:
        rows[row]["position"] = 9999
    bad = _save(rows, tmp_path / "bad_labels")
    pattern = rf"bad_labels: row {row} \(trace_id '{rows[row]['trace_id']}'\): field '{field}'"
    err = cli_fails(["evaluate", *argv, f"labels={bad}", f"out={tmp_path / 'eval'}"], capsys)
    assert f"{bad}: row {row}" in err and repr(field) in err
    export = ["export", f"traces={tmp_path / 'traces'}", f"labels={bad}", f"out={tmp_path / 'export'}"]
    err = cli_fails([*export, f"model={tiny_model_dir}"], capsys)
    assert f"{bad}: row {row}" in err and repr(field) in err
    assert not (tmp_path / "export").exists()
    with pytest.raises(DataFormatError, match=pattern):  # train's reading (training.py, distance's loss rows)
        loss_rows(str(tmp_path / "traces"), str(bad))
    with pytest.raises(DataFormatError, match=pattern):
        load_labels(bad, load_traces(tmp_path / "traces"))


# -- 2: traces with one trace id twice ------------------------------------------------------------------------
def test_traces_with_a_repeated_trace_id_are_refused_by_every_reader(tmp_path, tiny_eval, capsys):
    traces, labels, argv = tiny_eval
    rows = [dict(t) for t in traces]
    rows[2]["trace_id"] = rows[0]["trace_id"]
    dup = _save(rows, tmp_path / "dup_traces")
    with pytest.raises(DataFormatError, match=rf"dup_traces: row 2: duplicate trace_id '{rows[0]['trace_id']}'"):
        load_traces(dup)
    ldir = tmp_path / "labels"
    err = cli_fails(["evaluate", *argv, f"traces={dup}", f"labels={ldir}", f"out={tmp_path / 'eval'}"], capsys)
    assert f"{dup}: row 2" in err and "duplicate trace_id" in err


# -- 3: step spans outside the completion or inverted ---------------------------------------------------------
@pytest.mark.parametrize("span", [[0, 999], [6, 2], [-1, 3], [4]])
def test_step_spans_outside_the_completion_or_inverted_are_refused(tmp_path, tiny_eval, tiny_model_dir, capsys, span):
    traces, _, _ = tiny_eval
    rows = [dict(t) for t in traces]
    rows[3]["step_spans"] = [rows[3]["step_spans"][0], span]
    bad = _save(rows, tmp_path / "bad_spans")
    with pytest.raises(
        DataFormatError, match=rf"bad_spans: row 3 .*field 'step_spans' holds step 1 as {re.escape(str(span))}"
    ):
        load_traces(bad)
    err = cli_fails(["export", f"traces={bad}", f"model={tiny_model_dir}", f"out={tmp_path / 'export'}"], capsys)
    assert f"{bad}: row 3" in err and "step_spans" in err


# -- 4: token ids outside the vocabulary in export ------------------------------------------------------------
def test_export_refuses_token_ids_outside_the_vocabulary(tmp_path, tiny_eval, tiny_model_dir, capsys):
    traces, _, _ = tiny_eval
    rows = [dict(t) for t in traces]
    rows[1]["completion_ids"] = [rows[1]["completion_ids"][0], 5000, *rows[1]["completion_ids"][2:]]
    bad = _save(rows, tmp_path / "oov")
    err = cli_fails(["export", f"traces={bad}", f"model={tiny_model_dir}", f"out={tmp_path / 'export'}"], capsys)
    assert "5000" in err and rows[1]["trace_id"] in err and "vocabulary" in err
    assert not (tmp_path / "export").exists()


# -- 5: rollouts import cannot turn into traces ----------------------------------------------------------------
GOOD = [
    {"prompt": "Q:1+2=", "completion": "1+2=3;A:3", "outcome": 1},
    {"prompt": "Q:2+2=", "completion": "A:4", "outcome": 1},
]


def _import_fails(tmp_path: Path, capsys, lines: list[str], *extra: str, good: bool = True) -> tuple[Path, str]:
    """Import `GOOD` (unless not `good`) then `lines` into a fresh out folder: exit 2, one line, no folder."""
    src = tmp_path / "rollouts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in (GOOD if good else [])) + "".join(x + "\n" for x in lines))
    out = tmp_path / "traces"
    err = cli_fails(["import", f"rollouts={src}", f"model={POLICY}", "task=arith", f"out={out}", *extra], capsys)
    assert not out.exists()
    return src, err


@pytest.mark.parametrize("where", ["completion", "prompt"])
def test_import_refuses_rollouts_longer_than_the_context(tmp_path, capsys, where):
    record = {"prompt": "Q:1+1=", "completion": "A:2", "outcome": 0, where: "1+" * 200 + "1"}
    src, err = _import_fails(tmp_path, capsys, [json.dumps(record)])
    assert f"{src}, line 3" in err and "context is 128" in err
    # the budget label continues with (max_new_tokens, counted from the prompt) must fit too: collect's check
    src, err = _import_fails(tmp_path, capsys, [], "max_new_tokens=126")
    assert f"{src}, line 1" in err and "max_new_tokens=126" in err and "context is 128" in err


def test_import_refuses_a_lone_surrogate_and_a_nan_temperature(tmp_path, capsys):
    src, err = _import_fails(tmp_path, capsys, ['{"prompt": "Q:1+1=\\ud800", "completion": "A:2", "outcome": 1}'])
    assert f"{src}, line 3: field 'prompt'" in err and "surrogate" in err
    _, err = _import_fails(tmp_path, capsys, [], "temperature=nan")
    assert "temperature" in err and "nan" in err


def test_import_refuses_one_prompt_id_for_several_prompt_texts(tmp_path, capsys):
    rows = [{**r, "prompt": f"Q:{i}+1=", "prompt_id": "p0"} for i, r in enumerate(GOOD * 3)]
    src, err = _import_fails(tmp_path, capsys, [json.dumps(r) for r in rows], good=False)
    assert f"{src}, line 2: prompt_id 'p0'" in err and f"{src}, line 1" in err


# -- 6: evaluate with no held-out labelled prompt --------------------------------------------------------------
def test_evaluate_without_a_heldout_labelled_prompt_is_one_line(tmp_path, tiny_eval, capsys):
    traces, _, argv = tiny_eval
    ckpt = write_split(tmp_path / "trained_on_all", [t["prompt"] for t in traces], heldout_fraction=1e-9)
    argv = [a for a in argv if not a.startswith("checkpoint=")] + [f"checkpoint={ckpt}"]
    err = cli_fails(["evaluate", *argv, f"labels={tmp_path / 'labels'}", f"out={tmp_path / 'eval'}"], capsys)
    assert "no labelled trace comes from a test prompt" in err and "include_training_prompts=true" in err
