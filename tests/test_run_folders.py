"""One run-folder contract for every command that writes (`prefixvalue.runfolder`; docs/design.md, "Run
folders"): a file no run wrote (a user's NOTES.txt) is refused and kept, a folder holding a run with another
config is refused naming the key, and the same command run again resumes, each in one line with exit 2
when refused. Every command is run for real on a tiny policy; those that need the collected, labelled and
trained `world` (seconds each) are in the slow set.

    pytest tests/test_run_folders.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_bridges import POLICY, _rollouts, _write_jsonl

from prefixvalue import cli, runfolder
from prefixvalue.config import ConfigError
from prefixvalue.stages import evaluate as evaluate_stage
from prefixvalue.tools.export import ExportConfig

from conftest import make_tiny_gpt2

NOTE = "my own notes: keep me\n"


# ------------------------------------------------------------------------------------------ helpers
def listing(out: Path) -> dict[str, tuple[int, int]]:
    """Every top-level file of `out` (the lock aside) with its size and modification time."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(out.iterdir()) if p.name != runfolder.LOCK_FILE
    }


def refused(argv: list[str], capsys) -> str:
    """Run the command line `argv`, which must be refused in one line with exit 2; returns that line."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def ok(argv: list[str], capsys) -> None:
    capsys.readouterr()
    rc = cli.main(argv)
    assert rc == 0, capsys.readouterr().err


def check_contract(argv: list[str], out: Path, other: list[str], key: str, capsys) -> None:
    """`argv` ran into `out` before: another config (`other`) is refused naming `key` and changes nothing; a
    stranger's file is refused and kept; the same command again resumes and succeeds."""
    before = listing(out)
    err = refused([*argv, *other], capsys)
    assert key in err and str(out) in err, err
    assert listing(out) == before
    notes = out / "NOTES.txt"
    notes.write_text(NOTE)
    err = refused(argv, capsys)
    assert "NOTES.txt" in err and "nothing was deleted" in err, err
    assert notes.read_text() == NOTE and set(listing(out)) == {*before, "NOTES.txt"}
    notes.unlink()
    ok(argv, capsys)
    record = runfolder.read_record(out)
    assert record is not None and record["command"] == argv[0] and record["complete"] in (True, False)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny policy, its traces (6 arith prompts x 2; the first prompt is held out at fraction 0.25),
    MC labels of the held-out traces and a head checkpoint trained for one step on the traces."""
    from prefixvalue.tokenizer import build_char_tokenizer

    root = tmp_path_factory.mktemp("folders")
    tok = build_char_tokenizer()
    policy = root / "policy"
    make_tiny_gpt2(len(tok), seed=3).save_pretrained(policy)
    tok.save_pretrained(policy)
    w = {"root": root, "policy": policy}
    w["collect"] = [
        "collect",
        "task=arith",
        f"model={policy}",
        "num_prompts=6",
        "traces_per_prompt=2",
        "max_new_tokens=12",
        "chunk_prompts=3",
        f"out={root / 'traces'}",
        "progress=false",
    ]
    assert cli.main(w["collect"]) == 0
    w["label"] = [
        "label",
        f"traces={root / 'traces'}",
        f"model={policy}",
        "positions=stride:4",
        "samples=2",
        "heldout_fraction=0.25",
        "chunk_traces=2",
        f"out={root / 'labels'}",
        "progress=false",
    ]
    assert cli.main(w["label"]) == 0
    w["train"] = [
        "train",
        f"traces={root / 'traces'}",
        f"policy={policy}",
        f"output_dir={root / 'train'}",
        "max_steps=1",
        "per_device_batch_size=4",
        "warmup_steps=0",
        "heldout_fraction=0.25",
        "report_to=disk",
        "threads=1",
        "value_model.kind=head",
        "value_model.backbone=lora",
    ]
    assert cli.main(w["train"]) == 0
    return w


# ---------------------------------------------------------------------------- the issue's own case
def test_import_into_a_folder_holding_notes_refuses_and_keeps_them(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "rollouts.jsonl", _rollouts(2))
    out = tmp_path / "traces"
    out.mkdir()
    (out / "NOTES.txt").write_text(NOTE)
    argv = ["import", f"rollouts={src}", f"model={POLICY}", "task=arith", f"out={out}"]
    err = refused(argv, capsys)  # before: shutil.rmtree(out) took the notes with it
    assert "NOTES.txt" in err and "nothing was deleted" in err
    assert (out / "NOTES.txt").read_text() == NOTE and [p.name for p in out.iterdir()] == ["NOTES.txt"]


def test_import(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "rollouts.jsonl", _rollouts(2))
    out = tmp_path / "traces"
    argv = ["import", f"rollouts={src}", f"model={POLICY}", "task=arith", f"out={out}"]
    ok(argv, capsys)
    check_contract(argv, out, ["append_eos=false"], "append_eos", capsys)
    from prefixvalue.data import load_traces

    assert len(load_traces(out)) == 4


def test_export(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "rollouts.jsonl", _rollouts(2))
    traces = tmp_path / "traces"
    ok(["import", f"rollouts={src}", f"model={POLICY}", "task=arith", f"out={traces}"], capsys)
    out = tmp_path / "export"
    argv = ["export", f"traces={traces}", f"out={out}"]
    ok(argv, capsys)
    # before: another formats= wrote its files beside the old run's (a mixture when killed)
    check_contract(argv, out, ["formats=[trl]"], "formats", capsys)
    assert {"trl.jsonl", "math_shepherd.jsonl", "processbench.jsonl", "export.json"} <= set(listing(out))


# ------------------------------------------------------------------------------------------ the loop
@pytest.mark.slow  # the `world` fixture collects, labels and trains (> 5 s)
def test_collect(world, capsys):
    out = world["root"] / "traces"
    check_contract(world["collect"], out, ["seed=1"], "sampling.seed", capsys)


@pytest.mark.slow  # the `world` fixture collects, labels and trains (> 5 s)
def test_label(world, capsys):
    out = world["root"] / "labels"
    check_contract(world["label"], out, ["samples=3"], "samples", capsys)


@pytest.mark.slow  # the `world` fixture collects, labels and trains (> 5 s)
def test_train(world, capsys):
    out = world["root"] / "train"
    check_contract(world["train"], out, ["lr=0.5"], "lr", capsys)  # the rerun: a finished run, nothing to do
    assert runfolder.read_record(out)["complete"] is True and (out / "final" / "value_config.json").is_file()


@pytest.mark.slow  # the `world` fixture collects, labels and trains (> 5 s)
def test_evaluate(world, tmp_path, capsys):
    root = world["root"]
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        f"checkpoint={root / 'train' / 'final'}",
        f"traces={root / 'traces'}",
        f"labels={root / 'labels'}",
        f"out={out}",
        "soft_values=false",
        "n_bootstrap=0",
        "noise_ceiling_repeats=2",
        "report_to=disk",
        "progress=false",
    ]
    ok(argv, capsys)
    assert (out / "metrics.json").is_file()
    check_contract(argv, out, ["seed=7"], "seed", capsys)
    # overwrite=true replaces that evaluation's files, never a stranger's
    (out / "NOTES.txt").write_text(NOTE)
    assert "NOTES.txt" in refused([*argv, "seed=7", "overwrite=true"], capsys)
    (out / "NOTES.txt").unlink()
    ok([*argv, "seed=7", "overwrite=true"], capsys)
    assert runfolder.read_record(out)["config"]["seed"] == 7


@pytest.mark.slow  # the `world` fixture collects, labels and trains (> 5 s)
def test_export_model(world, tmp_path, capsys):
    out = tmp_path / "tc"
    argv = ["export-model", f"checkpoint={world['root'] / 'train' / 'final'}", f"out={out}", "check=false"]
    ok(argv, capsys)
    assert (out / "config.json").is_file() and (out / "README.md").is_file()
    assert str(out.resolve()) in (out / "README.md").read_text()  # named by its folder, not the temp one
    check_contract(argv, out, ["dtype=bfloat16"], "dtype", capsys)
    # a killed export leaves its temp folder: the rerun resumes (before: refused as "not empty")
    (out / f"{runfolder.TEMP_PREFIX}999999999-deadbeef-install").mkdir()
    ok(argv, capsys)
    assert not list(out.glob(runfolder.TEMP_PREFIX + "*"))
    ok([*argv, "dtype=bfloat16", "overwrite=true"], capsys)  # its own files replaced
    assert runfolder.read_record(out)["config"]["dtype"] == "bfloat16"


# ------------------------------------------------------------------------------------------ the studies
@pytest.mark.slow
def test_actions(world, tmp_path, capsys):
    out = tmp_path / "actions"
    argv = [
        "actions",
        f"policy={world['policy']}",
        "num_prompts=1",
        "wrong=1",
        "strategy=false",
        "samples=2",
        "n_bootstrap=0",
        "noise_ceiling_repeats=2",
        "threads=1",
        f"out={out}",
    ]
    ok(argv, capsys)
    check_contract(argv, out, ["samples=3"], "samples", capsys)


@pytest.mark.slow
def test_advantages(world, tmp_path, capsys):
    root = world["root"]
    out = tmp_path / "advantages"
    argv = [
        "advantages",
        f"traces={root / 'traces'}",
        f"checkpoints=[{root / 'train' / 'final'}]",
        "top_candidates=2",
        "max_traces=4",
        "mc_prefixes=2",
        "mc_forks=0",
        "samples=2",
        "n_bootstrap=0",
        "threads=1",
        f"out={out}",
    ]
    ok(argv, capsys)
    # before: another top_k killed midway left the new RL dataset beside the old metrics
    check_contract(argv, out, ["top_candidates=3"], "top_candidates", capsys)


@pytest.mark.slow
def test_distance(world, tmp_path, capsys):
    root = world["root"]
    out = tmp_path / "distance"
    argv = [
        "distance",
        f"traces={root / 'traces'}",
        f"labels={root / 'labels'}",
        f"out={out}",
        "kinds=[head]",
        "tokens=[0,1]",
        "seeds=1",
        "lora=false",
        "curve_points=2",
        "n_bootstrap=0",
        f"train.policy={world['policy']}",
        "train.max_steps=2",
        "train.per_device_batch_size=4",
        "train.heldout_fraction=0.25",
        "train.threads=1",
    ]
    ok(argv, capsys)
    curve = out / "cells" / "head_n001_s0" / "curve.json"
    assert json.loads(curve.read_text())["heldout_traces"] > 0
    assert "curve.json" in runfolder.read_record(curve.parent)["files"]  # written atomically, recorded
    check_contract(argv, out, ["epsilon=0.01"], "epsilon", capsys)


# --------------------------------------------------------------------------- the contract, piece by piece
def _export_cfg(out: Path, **kw) -> ExportConfig:
    return ExportConfig(traces="t", out=str(out), **kw)


OUTS = (runfolder.CONFIG_FILE, "export.json", "trl.jsonl")


def test_every_main_returns_its_exit_status():
    import ast
    import importlib.util

    for cmd, module in cli.COMMANDS.items():  # read from the source: importing them all takes seconds
        tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
        (main,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        assert ast.unparse(main.returns) == "int", cmd


def test_a_folder_written_before_the_record_resumes_when_it_is_the_commands(tmp_path):
    from prefixvalue.config import save_resolved_config

    out = tmp_path / "eval"
    cfg = evaluate_stage.EvaluateConfig(out=str(out), traces="t", labels="l", policy="p")
    save_resolved_config(cfg, out)
    for name in ("metrics.json", "metrics.jsonl", "report.md", "scatter.png"):
        (out / name).write_text("{}\n")
    evaluate_stage.prepare_out(cfg, out)  # the same config: resumes, its outputs removed before it writes
    assert sorted(p.name for p in out.iterdir() if p.name != runfolder.LOCK_FILE) == [
        runfolder.RECORD_FILE,
        runfolder.CONFIG_FILE,
    ]
    # another command's folder (by its config class), and a folder of outputs with no config, are refused
    other = tmp_path / "export"
    save_resolved_config(_export_cfg(other), other)
    with pytest.raises(ConfigError, match="prefixvalue export` run"):
        evaluate_stage.prepare_out(evaluate_stage.EvaluateConfig(out=str(other)), other)
    bare = tmp_path / "pictures"
    bare.mkdir()
    (bare / "holiday.png").write_bytes(b"png")
    with pytest.raises(ConfigError, match="holiday.png.*no record"):
        evaluate_stage.prepare_out(evaluate_stage.EvaluateConfig(out=str(bare)), bare)
    evaluate_stage.prepare_out(evaluate_stage.EvaluateConfig(out=str(bare), overwrite=True), bare)
    assert (bare / "holiday.png").read_bytes() == b"png"  # written over by name at most, never deleted


def test_overwrite_removes_only_the_runs_own_files(tmp_path):
    out = tmp_path / "o"
    with runfolder.claim(out, "export", _export_cfg(out), outputs=OUTS) as folder:
        folder.write_text("trl.jsonl", "old\n")
        folder.write_json("export.json", {"old": True})
    with pytest.raises(ConfigError, match="file_format: 'jsonl' there, 'parquet' now"):
        runfolder.claim(out, "export", _export_cfg(out, file_format="parquet"), outputs=OUTS, overwrite=False)
    folder = runfolder.claim(out, "export", _export_cfg(out, file_format="parquet"), outputs=OUTS, overwrite=True)
    assert folder.state == "replace" and not (out / "trl.jsonl").exists() and not (out / "export.json").exists()
    folder.release()


def test_a_start_that_wrote_nothing_but_its_config_is_taken_over(tmp_path):
    out = tmp_path / "o"
    runfolder.claim(out, "export", _export_cfg(out), outputs=OUTS).release()
    (out / runfolder.CONFIG_FILE).write_text("config_class: ExportConfig\n")
    folder = runfolder.claim(out, "export", _export_cfg(out, formats=["trl"]), outputs=OUTS)
    assert folder.state == "takeover" and runfolder.read_record(out)["config"]["formats"] == ["trl"]
    folder.release()


def test_writes_are_atomic_and_recorded(tmp_path):
    out = tmp_path / "o"
    folder = runfolder.claim(out, "export", _export_cfg(out), outputs=OUTS)
    folder.write_text("export.json", "complete\n")

    def dies(path: Path) -> None:
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        folder.write_with("export.json", dies)
    assert (out / "export.json").read_text() == "complete\n"  # the old file, never half a new one
    assert not list(out.glob(runfolder.TEMP_PREFIX + "*"))
    folder.replace_dir("sub", lambda p: (p.mkdir(), (p / "a").write_text("1")))
    folder.replace_dir("sub", lambda p: (p.mkdir(), (p / "b").write_text("2")))
    assert [p.name for p in (out / "sub").iterdir()] == ["b"]
    folder.finish()
    assert runfolder.read_record(out)["files"] == ["export.json", "sub"] and runfolder.held(out) is None
    # a temp name of a dead process is ours to remove at the next claim; a live one's stays
    dead = out / f"{runfolder.TEMP_PREFIX}999999999-0-export.json"
    live = out / f"{runfolder.TEMP_PREFIX}{os.getppid()}-0-export.json"
    dead.write_text("x")
    live.write_text("x")
    runfolder.claim(out, "export", _export_cfg(out), outputs=OUTS).release()
    assert not dead.exists() and live.exists()


def test_a_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "eval"
    with runfolder.lock(out, "evaluate"):  # another process's evaluation holds it
        err = refused(["evaluate", f"out={out}", "traces=t", "labels=l", "policy=p"], capsys)
    assert "in use by another run" in err


def test_a_study_into_an_evaluations_folder_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "eval"
    evaluate_stage.prepare_out(evaluate_stage.EvaluateConfig(out=str(out), traces="t", labels="l", policy="p"), out)
    for name in ("metrics.json", "report.md", "heatmap.html"):
        (out / name).write_text("the evaluation's\n")
    before = listing(out)
    # before: actions wrote its metrics.json, report.md and config.yaml over the evaluation's
    err = refused(["actions", f"policy={POLICY}", f"out={out}"], capsys)
    assert "`prefixvalue evaluate` run" in err and listing(out) == before
