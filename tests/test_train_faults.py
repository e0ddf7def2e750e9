"""Faults of issue "Reliability and safety" (fault-injection run): a diverging loss, a folder holding
another run, two trainings in one folder, unreadable or truncated checkpoints, duplicated metrics after
a resume, evaluate writing over another evaluation, and config mistakes in recipes/train.py. Each test
reproduces the fault as it was reported and checks the fixed behaviour."""

from __future__ import annotations

import functools
import json
import pickle
import runpy
import sys
from pathlib import Path

import pytest
import test_train_recipe
import torch
from safetensors.torch import load_file
from test_train_recipe import RECIPE, _args

from prefixvalue import cli
from prefixvalue import training as train_stage
from prefixvalue.config import ConfigError, parse_config, save_resolved_config
from prefixvalue.stages import evaluate as evaluate_stage
from prefixvalue.stages import train as train_command

tiny_setup = test_train_recipe.tiny_setup  # the recipe tests' fixture: a tiny GPT-2 policy and 24 traces


def _cli_train(args: list[str], capsys) -> tuple[int, str]:
    rc = cli.main(["train", *args])
    return rc, capsys.readouterr().err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("prefixvalue train:")]


def _train_rows(out: Path) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


def _all_finite(folder: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(folder / "model.safetensors")).values())


# ---------------------------------------------------------------------------------- item 1: NaN loss
def test_diverging_run_stops_at_the_step_and_keeps_its_last_good_checkpoint(tiny_setup, tmp_path, monkeypatch, capsys):
    # the loss turns non-finite from step 4 on, as a run diverging under lr=1e6 did; injected, because whether a
    # real lr=1e6 run reaches NaN (or saturates at a finite loss) varied with the machine's thread count
    policy, traces = tiny_setup
    _nan_on_calls(monkeypatch, set(range(4, 100)))
    out = tmp_path / "run"
    rc, err = _cli_train(_args(policy, traces, out, max_steps=8, checkpoint_every=1, keep_checkpoints=2), capsys)
    assert rc == 2, err  # before: exit 0 with every adapter weight NaN
    (line,) = _error_lines(err)
    assert "non-finite" in line and "at step 4" in line and "Traceback" not in err
    assert not (out / "final").exists() and not (out / "final_metrics.json").exists()
    kept = train_stage.complete_checkpoints(out / "checkpoints")
    assert kept and all(_all_finite(p) for p, _ in kept)
    assert str(kept[0][0]) in line  # the message names the last good checkpoint


def _nan_on_calls(monkeypatch, calls: set[int]) -> None:
    """Make the loss of the given backward calls (1-based) NaN: a fault injected into one step."""
    real, count = train_stage.normalise_loss, [0]

    def faulty(*a, **kw):
        count[0] += 1
        loss = real(*a, **kw)
        return loss * float("nan") if count[0] in calls else loss

    monkeypatch.setattr(train_stage, "normalise_loss", faulty)


def test_skip_nonfinite_skips_and_counts_the_step(tiny_setup, tmp_path, monkeypatch, capsys):
    policy, traces = tiny_setup
    _nan_on_calls(monkeypatch, {2})
    out = tmp_path / "skip"
    rc, err = _cli_train(_args(policy, traces, out, max_steps=4, checkpoint_every=0, skip_nonfinite="true"), capsys)
    assert rc == 0, err
    result = json.loads((out / "final_metrics.json").read_text())
    assert result["skipped_nonfinite"] == 1 and result["step"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_nonfinite"] for r in rows if "train/loss" in r] == [0, 1, 1, 1]
    assert all(
        torch.isfinite(t).all() for t in load_file(str(out / "final/adapter/adapter_model.safetensors")).values()
    )
    # without the option the same fault stops the run, naming the step
    _nan_on_calls(monkeypatch, {2})
    rc, err = _cli_train(_args(policy, traces, tmp_path / "stop", max_steps=4, checkpoint_every=0), capsys)
    assert rc == 2 and "at step 2" in _error_lines(err)[0]


def test_skip_nonfinite_stops_after_too_many_in_a_row(tiny_setup, tmp_path, monkeypatch, capsys):
    policy, traces = tiny_setup
    _nan_on_calls(monkeypatch, set(range(1, 100)))
    out = tmp_path / "run"
    rc, err = _cli_train(_args(policy, traces, out, max_steps=30, checkpoint_every=0, skip_nonfinite="true"), capsys)
    assert rc == 2
    (line,) = _error_lines(err)
    assert f"at step {train_stage.MAX_NONFINITE_IN_ROW + 1}" in line and "in a row" in line
    assert not (out / "final").exists()


# ------------------------------------------------------------------- item 2: one run per output_dir
def test_a_folder_holding_another_run_is_refused_naming_the_keys(tiny_setup, tmp_path, capsys):
    policy, traces = tiny_setup
    out = tmp_path / "run"
    assert cli.main(["train", *_args(policy, traces, out, max_steps=2, checkpoint_every=1)]) == 0
    before = (out / "config.yaml").read_text()
    changes = [
        ({"lr": 0.5}, "lr"),
        ({"traces": tmp_path / "other"}, "traces"),
        ({"value_model.kind": "head"}, "value_model.kind"),
    ]
    for change, key in changes:
        args = {"max_steps": 3, "checkpoint_every": 1, **change}
        rc, err = _cli_train(_args(policy, args.pop("traces", traces), out, **args), capsys)
        assert rc == 2, err  # before: resumed under the new lr / "Missing key(s) in state_dict"
        (line,) = _error_lines(err)
        assert f"{key}:" in line and "another run" in line
    assert (out / "config.yaml").read_text() == before
    # keys that may change on resume (RESUMABLE_KEYS): a longer run resumes
    rc, err = _cli_train(_args(policy, traces, out, max_steps=3, checkpoint_every=1, eval_every=7), capsys)
    assert rc == 0, err
    assert json.loads((out / "final_metrics.json").read_text())["step"] == 3


def test_two_trainings_cannot_share_a_folder(tiny_setup, tmp_path, capsys):
    policy, traces = tiny_setup
    out = tmp_path / "run"
    with train_stage.output_lock(out):  # another training holds the folder
        rc, err = _cli_train(_args(policy, traces, out, max_steps=1), capsys)
    assert rc == 2
    (line,) = _error_lines(err)
    assert "in use by another run" in line and not (out / "metrics.jsonl").exists()
    rc, err = _cli_train(_args(policy, traces, out, max_steps=1), capsys)  # released: the folder is free
    assert rc == 0, err


# --------------------------------------------- items 4, 8, 17: checkpoint files, fallback, metrics
def test_checkpoint_holds_json_state_and_safetensors(tiny_setup, tmp_path):
    policy, traces = tiny_setup
    out = tmp_path / "run"
    assert train_command.main(_args(policy, traces, out, max_steps=3, checkpoint_every=1)) == 0
    ckpt = out / "checkpoints" / "step_2"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state == {"step": 2, "samples_seen": 8, "skipped_nonfinite": 0}
    assert (ckpt / "model.safetensors").exists() and not (ckpt / "pytorch_model.bin").exists()
    assert train_stage.checkpoint_problem(ckpt) is None


def test_truncated_checkpoint_falls_back_and_metrics_are_not_duplicated(tiny_setup, tmp_path, capsys):
    policy, traces = tiny_setup
    out = tmp_path / "run"
    args = _args(policy, traces, out, max_steps=4, checkpoint_every=1, keep_checkpoints=3)
    assert cli.main(["train", *args]) == 0
    assert _train_rows(out) == [1, 2, 3, 4]
    broken = out / "checkpoints" / "step_3" / "optimizer.bin"
    broken.write_bytes(broken.read_bytes()[:100])  # a save cut short
    capsys.readouterr()
    args = _args(policy, traces, out, max_steps=5, checkpoint_every=1, keep_checkpoints=3)
    rc = cli.main(["train", *args])
    captured = capsys.readouterr()
    assert rc == 0, captured.err  # before: a low-level unpickling error naming no file
    assert str(broken) in captured.err and "resumed from" in captured.out and "step_2" in captured.out
    assert _train_rows(out) == [1, 2, 3, 4, 5]  # before: 3 and 4 twice
    assert json.loads((out / "final_metrics.json").read_text())["step"] == 5
    # every checkpoint's weights cut short: a fresh start, said in words
    for ckpt, _ in train_stage.complete_checkpoints(out / "checkpoints"):
        weights = ckpt / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
    rc = cli.main(["train", *_args(policy, traces, out, max_steps=6, checkpoint_every=0)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "model.safetensors" in captured.err and "starting from step 0" in captured.err
    assert _train_rows(out) == [1, 2, 3, 4, 5, 6]


def test_refused_random_states_are_named_in_a_warning(tiny_setup, tmp_path, capsys):
    policy, traces = tiny_setup
    out = tmp_path / "run"
    assert cli.main(["train", *_args(policy, traces, out, max_steps=3, checkpoint_every=1)]) == 0
    rng = out / "checkpoints" / "step_2" / "random_states_0.pkl"
    rng.write_bytes(pickle.dumps({"step": 0, "random_state": functools.partial(print)}))  # weights_only refuses it
    capsys.readouterr()
    # max_steps raised: the run resumes from step_2 (rerun as it was, a finished run trains nothing)
    assert cli.main(["train", *_args(policy, traces, out, max_steps=4, checkpoint_every=1)]) == 0
    captured = capsys.readouterr()
    assert "random states not restored" in captured.err and str(rng) in captured.err
    assert "resumed from" in captured.out


# ------------------------------------------------------------------ item 8: evaluate's out folder
def _eval_cfg(out: Path, **kw) -> evaluate_stage.EvaluateConfig:
    return evaluate_stage.EvaluateConfig(out=str(out), traces="t", labels="l", policy="p", **kw)


def test_evaluate_refuses_another_evaluations_folder_unless_overwrite(tmp_path):
    out = tmp_path / "eval"
    save_resolved_config(_eval_cfg(out, seed=1), out)
    for name in ("metrics.json", "metrics.jsonl", "report.md", "scatter.png"):
        (out / name).write_text("{}\n")
    with pytest.raises(ConfigError, match="another config.*seed"):
        evaluate_stage.prepare_out(_eval_cfg(out, seed=2), out)  # before: metrics.jsonl appended to
    assert (out / "metrics.json").exists()
    evaluate_stage.prepare_out(_eval_cfg(out, seed=2, overwrite=True), out)
    assert not any((out / n).exists() for n in ("metrics.json", "metrics.jsonl", "report.md", "scatter.png"))
    # the same config rerun (the folder now holds seed=2's run) replaces its own outputs (none appended to)
    (out / "metrics.json").write_text("{}\n")
    (out / "metrics.jsonl").write_text("{}\n")
    evaluate_stage.prepare_out(_eval_cfg(out, seed=2, report_to="none"), out)
    assert not (out / "metrics.jsonl").exists()
    # through the CLI: one line, exit 2, before any model is loaded
    (out / "metrics.json").write_text("{}\n")
    assert cli.main(["evaluate", f"out={out}", "traces=t", "labels=l", "policy=p", "seed=3"]) == 2


# --------------------------------------------------------------- item 18: recipes/train.py mistakes
@pytest.mark.parametrize(
    ("arg", "expect"),
    [("lerning_rate=0.1", "did you mean 'lr'?"), ("lr=fast", "lr: expected a number")],
)
def test_recipe_reports_config_mistakes_in_one_line(arg, expect, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(RECIPE), arg])
    with pytest.raises(SystemExit) as exc:  # the script as `python recipes/train.py ARG` runs it, in process
        runpy.run_path(str(RECIPE), run_name="__main__")
    assert exc.value.code == 2  # before: a traceback, exit 1, and "did you mean 'run_name'"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and "'run_name'?" not in lines[0]


def test_far_keys_get_no_suggestion_and_close_ones_do():
    with pytest.raises(ConfigError) as exc:
        parse_config(train_stage.TrainConfig, ["zzqq=1"])
    assert "did you mean" not in str(exc.value) and "--help" in str(exc.value)
    with pytest.raises(ConfigError, match="did you mean 'head_lr'"):
        parse_config(train_stage.TrainConfig, ["head_learning_rate=1"])
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        parse_config(train_stage.TrainConfig, ["max_step=1"])
