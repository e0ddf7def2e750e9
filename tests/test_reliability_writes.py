"""Every write atomic, a run folder its own (docs/design.md, "Run folders"): a killed run or a full disk leaves
the old complete state or a resumable incomplete one, never a truncated file or old and new files under a
finished record; a rerun meets what an older version left in one line, never a traceback. A kill is simulated
by raising from a writer partway.

    pytest tests/test_reliability_writes.py
"""

from __future__ import annotations

import errno
import json
import types
from pathlib import Path

import pytest
from test_bridges import POLICY, _import, _rollouts
from test_distrl import _cfg
from test_run_folders import OUTS, _export_cfg, listing, refused

from prefixvalue import cli, runfolder
from prefixvalue.stages import evaluate as evaluate_stage
from prefixvalue.studies import distance as distance_study

from test_evaluate import FakeValueModel, _write, make_tiny_eval, write_split


# ------------------------------------------------------------------------- 1. import keeps an evaluation
def test_import_into_an_evaluations_folder_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "eval"
    cfg = evaluate_stage.EvaluateConfig(out=str(out), traces="t", labels="l", policy="p")
    evaluate_stage.prepare_out(cfg, out)
    runfolder.finish(out)  # a finished evaluation
    for name in ("metrics.json", "report.md", "heatmap.html"):
        (out / name).write_text("the evaluation's\n")
    before = listing(out)
    src = tmp_path / "rollouts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _rollouts(1)))
    # before: import removed the whole folder (shutil.rmtree(out)) and wrote its traces there
    err = refused(["import", f"rollouts={src}", f"model={POLICY}", "task=arith", f"out={out}"], capsys)
    assert "`prefixvalue evaluate` run" in err and listing(out) == before


# ------------------------------------------------------------------ 4. overwrite=true killed midway
def test_an_overwrite_killed_while_it_removes_the_old_files_leaves_no_finished_record(tmp_path, monkeypatch):
    out = tmp_path / "o"
    with runfolder.claim(out, "export", _export_cfg(out), outputs=OUTS) as folder:
        folder.write_text("trl.jsonl", "old\n")
        folder.write_json("export.json", {"old": True})
        folder.finish()
    assert runfolder.read_record(out)["complete"] is True
    removed: list[Path] = []
    remove_entry = runfolder.remove_entry

    def killed_after_one(path: Path) -> None:
        if removed:
            raise KeyboardInterrupt
        removed.append(path)
        remove_entry(path)

    monkeypatch.setattr(runfolder, "remove_entry", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        runfolder.claim(out, "export", _export_cfg(out, file_format="parquet"), outputs=OUTS, overwrite=True)
    monkeypatch.undo()
    assert len(removed) == 1 and not removed[0].exists()  # one of the old run's files is gone...
    # ...so the record must not call what is left a finished run (before: "complete": true over half of it)
    assert runfolder.read_record(out)["complete"] is False
    folder = runfolder.claim(out, "export", _export_cfg(out, file_format="parquet"), outputs=OUTS, overwrite=True)
    assert folder.state == "replace" and not (out / "trl.jsonl").exists() and not (out / "export.json").exists()
    folder.release()


# --------------------------------------------------- 6. distance meets an empty curve.json of an older version
def _distance_argv(tmp_path: Path) -> tuple[list[str], Path]:
    traces = _import(tmp_path, _rollouts(2))
    out = tmp_path / "distance"
    argv = [
        "distance",
        f"traces={traces}",
        f"out={out}",
        "kinds=[head]",
        "tokens=[0,1]",
        "seeds=1",
        "lora=false",
        "n_bootstrap=0",
        f"train.policy={POLICY}",
        "curve_points=2",
        "train.max_steps=2",
        "train.threads=1",
        "train.report_to=none",
    ]
    return argv, out


def test_distance_resume_refuses_an_empty_curve_json_in_one_line(tmp_path, monkeypatch, capsys):
    argv, out = _distance_argv(tmp_path)

    def older_version_killed(tcfg):  # trained final/, then died writing curve.json in place
        cell = Path(tcfg.out)
        (cell / "final").mkdir(parents=True)
        (cell / distance_study.CURVE_FILE).write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(distance_study, "_train_cell", older_version_killed)
    with pytest.raises(KeyboardInterrupt):
        cli.main(argv)
    monkeypatch.undo()
    (curve,) = out.glob(f"cells/*/{distance_study.CURVE_FILE}")
    # before: json.loads("") in evaluate_cell, a traceback on every later run
    err = refused(argv, capsys)
    assert str(curve) in err and "empty or not JSON" in err, err
    assert curve.read_text() == "" and (curve.parent / "final").is_dir()  # nothing of the cell was removed


def test_distance_computes_a_half_written_cell_json_again(tmp_path, monkeypatch):
    cell = tmp_path / "cells" / "head_n001_s0"
    (cell / "final").mkdir(parents=True)
    (cell / distance_study.CURVE_FILE).write_text(json.dumps({"eval_curve": [], "seconds": 1.0}))
    (cell / distance_study.CELL_FILE).write_text('{"kind": "hea')  # an older version's write, killed midway

    class Recomputed(Exception):
        pass

    def measured(final):
        raise Recomputed(final)

    monkeypatch.setattr(distance_study, "adapter_parameters", measured)
    tcfg = types.SimpleNamespace(out=str(cell))
    with pytest.raises(Recomputed):  # before: JSONDecodeError from json.loads of the half-written cell.json
        distance_study.evaluate_cell(tcfg, "head", 1, 0, None, None)


# ------------------------------------------------------------------------- 7. evaluate on a full disk
def test_evaluate_on_a_full_disk_leaves_no_truncated_metrics_json(
    tmp_path, tiny_tokenizer, tiny_model_dir, monkeypatch, capsys
):
    traces, labels = make_tiny_eval(tiny_tokenizer)
    tdir, ldir = _write(tmp_path, traces, labels)
    monkeypatch.setattr(
        evaluate_stage, "_load_value_model", lambda path, device, options=None: FakeValueModel(str(tiny_model_dir))
    )
    ckpt = write_split(tmp_path / "ckpt", [t["prompt"] for t in traces])
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        f"checkpoint={ckpt}",
        f"traces={tdir}",
        f"labels={ldir}",
        f"out={out}",
        "soft_values=false",
        "n_bootstrap=0",
        "noise_ceiling_repeats=2",
        "report_to=disk",
        "progress=false",
    ]
    assert cli.main(argv) == 0
    old = (out / "metrics.json").read_text()
    assert json.loads(old)["n_traces"] == len(traces)
    # committed last: the record says complete once every output is in place (before: never marked)
    assert runfolder.read_record(out)["complete"] is True

    write_text = Path.write_text

    def disk_full_midway(self: Path, data: str, *args, **kwargs) -> int:
        if self.name.endswith("metrics.json"):
            write_text(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_text(self, data, *args, **kwargs)

    with monkeypatch.context() as disk:
        disk.setattr(Path, "write_text", disk_full_midway)
        err = refused(argv, capsys)  # the same evaluation again, on a disk that fills up while metrics.json goes
    assert "No space left on device" in err
    metrics = out / "metrics.json"
    # before: half of metrics.json under its final name, read as the evaluation's result
    assert not metrics.exists() or metrics.read_text() == old
    assert not list(out.glob(runfolder.TEMP_PREFIX + "*"))
    assert runfolder.read_record(out)["complete"] is False  # a resumable incomplete run: the rerun redoes it
    assert cli.main(argv) == 0 and json.loads(metrics.read_text()) == json.loads(old)


# ----------------------------------------------------------------- the general rule: committed last
def test_distrl_marks_its_record_complete_once_its_outputs_are_in_place(tmp_path, shipped_head_checkpoint):
    from prefixvalue.rl.loop import run

    out = tmp_path / "out"
    res = run(_cfg(out, advantage="outcome", split_from=str(shipped_head_checkpoint), max_steps=1, eval_every=1))
    record = runfolder.read_record(out)
    # before: the record stayed "complete": false after a finished run, like a killed one's
    assert res["steps"] == 1 and record["complete"] is True
    assert {"final", "evals.jsonl", "distrl.json"} <= set(record["files"])
