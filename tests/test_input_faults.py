"""Faults a user's input can cause, each refused in one line (exit code 2 through the CLI), never a traceback.

pytest tests/test_input_faults.py
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import datasets
import pytest
from test_collect_label import collect_args, label_args, model_dir, traces_dir  # noqa: F401 - fixtures

from prefixvalue import cli
from prefixvalue.config import ConfigError
from prefixvalue.data import DataFormatError, load_labels, load_traces, shards
from prefixvalue.data.collate import attach_prefix_labels
from prefixvalue.jsonlines import MAX_LINE_BYTES
from prefixvalue.loading import resolve_model_path
from prefixvalue.policies import check_vocabulary
from prefixvalue.sampling.sampler import SamplingParams
from prefixvalue.tasks import JsonlFormatError, JsonlTask


def cli_fails(args: list[str], capsys) -> str:
    """Run the CLI, assert exit status 2 with one error line on stderr; return that line (model loading may
    draw a progress bar before it)."""
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    errors = [x for x in err.splitlines() if x.startswith("prefixvalue ")]
    assert len(errors) == 1 and err.endswith(errors[0]), err
    return errors[0]


def resave(ds: datasets.Dataset, path: Path) -> Path:
    """Save `ds` at `path`, replacing what is there (the dataset may be read from `path`)."""
    tmp = path.with_name(path.name + ".new")
    ds.save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


# -- 6: non-finite sampling parameters ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw", [{"temperature": math.nan}, {"temperature": math.inf}, {"top_p": math.nan}, {"temperature": -1.0}]
)
def test_sampling_params_reject_non_finite(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


def test_collect_and_label_refuse_nan_temperature(tmp_path, model_dir, traces_dir, capsys):  # noqa: F811
    err = cli_fails(["collect", *collect_args(model_dir, tmp_path / "c", temperature="nan")], capsys)
    assert "temperature" in err
    err = cli_fails(["label", *label_args(traces_dir, model_dir, tmp_path / "l", temperature="nan")], capsys)
    assert "temperature" in err
    err = cli_fails(["label", *label_args(traces_dir, model_dir, tmp_path / "l2", top_p="inf")], capsys)
    assert "top_p" in err


# -- 7: traces re-collected in place under a label run -------------------------------------------------------
def test_label_resume_notices_traces_changed_in_place(tmp_path, model_dir, traces_dir, capsys):  # noqa: F811
    traces = tmp_path / "traces"
    shutil.copytree(traces_dir, traces)
    out = tmp_path / "labels"
    args = label_args(traces, model_dir, out, max_traces=2, samples=1)
    assert cli.main(["label", *args]) == 0
    manifest = json.loads((out / "run.json").read_text())
    assert "traces_sha256" in manifest
    assert cli.main(["label", *args]) == 0  # an unchanged folder resumes
    # the same trace ids, other completions: what a re-collection with another seed writes
    ds = load_traces(traces)
    resave(ds.map(lambda r: {"completion_ids": list(reversed(r["completion_ids"]))}), traces)
    err = cli_fails(["label", *args], capsys)
    assert "traces" in err and "changed" in err


# -- 9 and 14: labels outside [0, 1] ------------------------------------------------------------------------
def _labels(tmp_path: Path, traces_dir: Path, mean: float) -> Path:  # noqa: F811
    tid = load_traces(traces_dir)[0]["trace_id"]
    rows = [
        {"trace_id": tid, "position": p, "n": 4, "successes": 2.0, "mean": m, "ci_low": 0.0, "ci_high": 1.0}
        for p, m in [(0, 0.5), (1, mean)]
    ]
    path = tmp_path / f"labels-{mean}"
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("mean", [1.7, -0.1, math.nan])
def test_labels_outside_unit_interval_are_refused(tmp_path, traces_dir, mean):  # noqa: F811
    path = _labels(tmp_path, traces_dir, mean)
    with pytest.raises(DataFormatError, match=rf"{path.name}.*row 1.*'mean'"):
        load_labels(path)
    raw = datasets.load_from_disk(str(path))
    with pytest.raises(ValueError, match=r"row 1.*'mean'"):
        attach_prefix_labels(load_traces(traces_dir), raw)


# -- 11: label max_new_tokens ---------------------------------------------------------------------------------
def test_label_max_new_tokens(tmp_path, model_dir, traces_dir, capsys):  # noqa: F811
    err = cli_fails(["label", *label_args(traces_dir, model_dir, tmp_path / "a", max_new_tokens=0)], capsys)
    assert "max_new_tokens" in err
    capsys.readouterr()
    args = label_args(traces_dir, model_dir, tmp_path / "b", max_new_tokens=1, max_traces=1, samples=1)
    assert cli.main(["label", *args]) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if "max_new_tokens" in x]
    assert len(warnings) == 1 and "raised" in warnings[0], warnings


# -- 12 and 13: JSONL encoding and line size -----------------------------------------------------------------
def _jsonl(path: Path, data: bytes) -> JsonlTask:
    path.write_bytes(data)
    return JsonlTask(path=str(path))


def test_jsonl_utf16_non_utf8_and_huge_lines(tmp_path, model_dir, capsys):  # noqa: F811
    text = '{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?", "answer": "4"}\n'
    with pytest.raises(JsonlFormatError, match=r"u16\.jsonl.*UTF-16.*UTF-8"):
        _jsonl(tmp_path / "u16.jsonl", text.encode("utf-16"))
    bad = text.encode() + b'{"prompt": "caf\xe9", "answer": "3"}\n'
    with pytest.raises(JsonlFormatError, match=r"latin\.jsonl, line 3.*UTF-8"):
        _jsonl(tmp_path / "latin.jsonl", bad)
    huge = text.encode() + b'{"prompt": "' + b"x" * (MAX_LINE_BYTES + 10) + b'", "answer": "1"}\n'
    with pytest.raises(JsonlFormatError, match=r"huge\.jsonl, line 3.*bytes"):
        _jsonl(tmp_path / "huge.jsonl", huge)
    err = cli_fails(
        [
            "collect",
            *collect_args(model_dir, tmp_path / "c", task="jsonl", **{"task_args.path": tmp_path / "u16.jsonl"}),
        ],
        capsys,
    )
    assert "UTF-16" in err
    assert not (tmp_path / "c" / "run.json").exists()


def test_collect_refuses_prompts_longer_than_the_context(tmp_path, model_dir, capsys):  # noqa: F811
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "1+" * 100 + "1", "answer": "101"}) + "\n")
    out = tmp_path / "c"
    args = collect_args(model_dir, out, task="jsonl", num_prompts=1, **{"task_args.path": data})
    err = cli_fails(["collect", *args], capsys)
    assert "long-1" in err and "201" in err and "128" in err
    assert not (out / "run.json").exists()
    err = cli_fails(["collect", *collect_args(model_dir, tmp_path / "d", max_new_tokens=200)], capsys)
    assert "context" in err


# -- 14: malformed traces ----------------------------------------------------------------------------------------
def test_malformed_traces_are_refused_in_one_line(tmp_path, model_dir, traces_dir, capsys):  # noqa: F811
    ds = load_traces(traces_dir)
    empty = tmp_path / "empty"
    ds.select([]).save_to_disk(str(empty))
    with pytest.raises(DataFormatError, match=r"empty.*no rows"):
        load_traces(empty)
    nan = tmp_path / "nan"
    ds.map(lambda r, i: {"outcome": math.nan if i == 3 else r["outcome"]}, with_indices=True).save_to_disk(str(nan))
    with pytest.raises(DataFormatError, match=rf"nan.*row 3.*{ds[3]['trace_id']}.*outcome"):
        load_traces(nan)
    text = tmp_path / "text"
    ds.cast_column("outcome", datasets.Value("string")).save_to_disk(str(text))
    with pytest.raises(DataFormatError, match=r"text.*outcome.*number"):
        load_traces(text)
    err = cli_fails(["label", *label_args(nan, model_dir, tmp_path / "l")], capsys)
    assert "outcome" in err
    neg = tmp_path / "neg"
    ds.map(
        lambda r, i: {"completion_ids": [-5] + r["completion_ids"][1:] if i == 4 else r["completion_ids"]},
        with_indices=True,
    ).save_to_disk(str(neg))
    err = cli_fails(["label", *label_args(neg, model_dir, tmp_path / "l2")], capsys)
    assert "-5" in err and ds[4]["trace_id"] in err
    from prefixvalue.tokenizer import build_char_tokenizer

    with pytest.raises(ConfigError, match=ds[5]["trace_id"]):
        sel = load_traces(traces_dir).map(
            lambda r, i: {"prompt_ids": r["prompt_ids"] + [10_000] if i == 5 else r["prompt_ids"]}, with_indices=True
        )
        check_vocabulary(build_char_tokenizer(), sel.select(range(2, 8)), "label")


# -- 16: missing model path; manifest written only after the model loads -------------------------------------
def test_missing_model_path_says_so(tmp_path, capsys):
    for name in ("./nope/x", str(tmp_path / "nope"), "~/nope-prefixvalue/x", "a/b/c"):
        with pytest.raises(ConfigError, match="does not exist"):
            resolve_model_path(name)
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M")[0] == "HuggingFaceTB/SmolLM2-135M"  # a hub id
    err = cli_fails(["collect", *collect_args(tmp_path / "nope" / "model", tmp_path / "c")], capsys)
    assert "does not exist" in err and "nope" in err


def test_collect_manifest_after_model_loads_and_paths_compare_resolved(
    tmp_path,
    model_dir,  # noqa: F811
    monkeypatch,
    capsys,
):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    for f in broken.glob("*.safetensors"):
        f.unlink()
    out = tmp_path / "c"
    err = cli_fails(["collect", *collect_args(broken, out, num_prompts=2)], capsys)
    assert "cannot load the model" in err and "broken" in err
    assert not (out / "run.json").exists()
    monkeypatch.chdir(model_dir.parent)
    assert cli.main(["collect", *collect_args(Path(model_dir.name), out, num_prompts=2)]) == 0
    assert cli.main(["collect", *collect_args(f"./{model_dir.name}", out, num_prompts=2)]) == 0


# -- housekeeping: stale temp folders of a killed run -----------------------------------------------------------
def test_stale_temp_folders_are_removed_when_a_stage_starts(tmp_path, model_dir):  # noqa: F811
    out = tmp_path / "c"
    assert cli.main(["collect", *collect_args(model_dir, out, num_prompts=2)]) == 0
    old = time.time() - 3600
    stale = [out / "shards" / ".tmp-shard-00000-999999-deadbeef", out / ".merge-deadbeef"]
    for p in stale:
        (p / "data").mkdir(parents=True)
        (p / "data" / "x.arrow").write_bytes(b"x")
        for q in (p / "data" / "x.arrow", p / "data", p):
            os.utime(q, (old, old))
    live = out / "shards" / f".tmp-shard-00001-{os.getpid()}-cafe0000"
    live.mkdir()
    assert cli.main(["collect", *collect_args(model_dir, out, num_prompts=2)]) == 0
    assert not any(p.exists() for p in stale) and live.exists()
    assert shards.clean_stale_temp(out, time.time()) == []  # a live process's folder stays
