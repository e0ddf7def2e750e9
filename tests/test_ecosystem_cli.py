"""Fit the ecosystem, second pass (issue 34, items 2 and 8): `score_steps` and the rewards default to the
checkpoint's own step format; one spelling of `out` / `policy` everywhere; small held-out samples flagged.

pytest tests/test_ecosystem_cli.py
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from transformers import AutoTokenizer

from prefixvalue import training as train
from prefixvalue.config import parse_config
from prefixvalue.data import load_traces
from prefixvalue.data.bridges import trace_steps
from prefixvalue.serving import RewardServer, ServeOptions
from prefixvalue.tasks import ArithTask
from prefixvalue.value import load_value_model

from conftest import SHIPPED_POLICY
from test_value_fixtures import _rows, save_traces


# ------------------------------------------------------------------- item 2: score_steps defaults
def arith_traces(n_prompts: int = 8) -> list[dict]:
    """Arith traces as collect writes them (its row builder; the task recorded), without sampling: each prompt's
    right solution and one with a wrong final answer."""
    tok = AutoTokenizer.from_pretrained(str(SHIPPED_POLICY))
    prompts, prompt_ids, completions, tids = [], [], [], []
    for p in ArithTask().prompts(n_prompts, split="train"):
        right = p.meta["solution"]
        for k, text in enumerate((right, right[:-1] + str((int(right[-1]) + 1) % 10))):
            prompts.append(p)
            prompt_ids.append(tok(p.text)["input_ids"])
            completions.append(tok(text)["input_ids"] + [tok.eos_token_id])
            tids.append(f"{p.prompt_id}/s{k}")
    rows = _rows(ArithTask(), tok, prompts, prompt_ids, completions, tids, {"model": str(SHIPPED_POLICY)})
    return [{**r, "task": "arith", "task_args": "{}"} for r in rows]


@pytest.fixture(scope="module")
def arith_run(tmp_path_factory):
    """Arith traces of the shipped policy and a head trained on them for one step: (traces dir, checkpoint)."""
    root = tmp_path_factory.mktemp("eco")
    traces = save_traces(arith_traces(), root / "traces")
    args = {
        "traces": str(traces),
        "policy": str(SHIPPED_POLICY),
        "output_dir": str(root / "train"),
        "max_steps": 1,
        "per_device_batch_size": 4,
        "warmup_steps": 0,
        "report_to": "none",
        "heldout_fraction": 0.25,
        "threads": 1,
        "value_model.kind": "head",
        "value_model.backbone": "frozen",
    }
    train.run(parse_config(train.TrainConfig, [f"{k}={v}" for k, v in args.items()]))
    return traces, root / "train" / "final"


def _multi_step_trace(traces):
    ds = load_traces(str(traces))
    return next(r for r in ds if len(r["step_spans"]) > 2 and r["finish_reason"] == "eos")


def test_train_records_the_traces_step_format(arith_run):
    _, ckpt = arith_run
    record = json.loads((ckpt / "step_format.json").read_text())
    # arith: the prompt as collect wrote it, steps carry their own ';', and a step ends after ';'
    assert record == {"prompt_template": "{prompt}", "step_separator": "", "step_end": ";"}


def test_score_steps_defaults_score_a_trace_as_predict_does(arith_run):
    traces, ckpt = arith_run
    model = load_value_model(ckpt)
    row = _multi_step_trace(traces)
    steps = trace_steps(model.tokenizer, row["completion_ids"], row["step_spans"])
    completion_ids = row["completion_ids"][:-1]  # the steps' text holds no <eos>
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint that records its format: no warning
        got = model.score_steps(row["prompt"], steps)
    want = model.predict([row["prompt_ids"]], [completion_ids])[0]
    np.testing.assert_array_equal(got.token_values, want)
    ends = [min(e, len(completion_ids)) for _, e in row["step_spans"]]
    assert [e for _, e in got.step_spans] == ends
    np.testing.assert_array_equal(got.values, want[ends])
    # explicit overrides still win: today's old defaults write a newline after the prompt and between steps
    old = model.score_steps(row["prompt"], steps, prompt_template="{prompt}\n", step_separator="\n")
    assert len(old.token_values) == len(want) + len(steps) - 1
    assert not np.array_equal(old.values, got.values)


def test_rewards_and_serve_split_steps_where_the_checkpoint_says(arith_run):
    traces, ckpt = arith_run
    model = load_value_model(ckpt)
    row = _multi_step_trace(traces)
    steps = model.score_steps(row["prompt"], trace_steps(model.tokenizer, row["completion_ids"], row["step_spans"]))
    completion = row["completion"]
    (min_step,) = model.reward_func("min_step")([row["prompt"]], [completion])
    assert min_step == pytest.approx(steps.values.min(), abs=1e-6)
    (one_step,) = model.reward_func("min_step", step_separator="\n")([row["prompt"]], [completion])
    assert one_step == pytest.approx(steps.token_values[-1], abs=1e-6)  # no newline: one step, the override wins
    server = RewardServer(model, ServeOptions(port=0))
    try:
        assert server.step_separator == ";"
    finally:
        server.httpd.server_close()
    assert RewardServer(model, ServeOptions(port=0, step_separator="\n")).step_separator == "\n"


def test_a_checkpoint_without_a_step_format_keeps_the_old_default_and_says_so(arith_run, tmp_path):
    _, ckpt = arith_run
    old = shutil.copytree(ckpt, tmp_path / "old")
    (old / "step_format.json").unlink()
    model = load_value_model(old)
    with pytest.warns(UserWarning, match="records no step format"):
        first = model.score_steps("Q:1+2=", ["1+2=3;", "A:3"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        again = model.score_steps("Q:1+2=", ["1+2=3;", "A:3"])
    legacy = model.score_steps("Q:1+2=", ["1+2=3;", "A:3"], prompt_template="{prompt}\n", step_separator="\n")
    np.testing.assert_array_equal(first.token_values, legacy.token_values)
    np.testing.assert_array_equal(again.token_values, legacy.token_values)
    # a copy saved from the loaded model records what it has: nothing, so the copy warns too
    model.save_pretrained(tmp_path / "copy")
    assert not (tmp_path / "copy" / "step_format.json").exists()
    recorded = load_value_model(ckpt)
    recorded.save_pretrained(tmp_path / "copy2")
    assert (tmp_path / "copy2" / "step_format.json").read_text() == (ckpt / "step_format.json").read_text()


# ------------------------------------------------------------------- item 8: one spelling everywhere
def test_out_and_output_dir_name_one_train_option(tmp_path):
    from prefixvalue.config import ConfigError, config_to_dict, format_help
    from prefixvalue.stages.collect import CollectConfig

    assert parse_config(train.TrainConfig, ["out=a"]).out == "a"
    assert parse_config(train.TrainConfig, ["output_dir=a"]).out == "a"  # old recipes keep working
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("output_dir: from_yaml\n")
    assert parse_config(train.TrainConfig, ["--config", str(yaml_file), "out=cli"]).out == "cli"  # the CLI wins
    with pytest.raises(ConfigError, match="two names of one option"):
        parse_config(train.TrainConfig, ["out=a", "output_dir=b"])
    yaml_file.write_text("out: a\noutput_dir: b\n")
    with pytest.raises(ConfigError, match="two names of one option"):
        parse_config(train.TrainConfig, ["--config", str(yaml_file)])
    cfg = parse_config(train.TrainConfig, ["output_dir=a"])
    assert "out" in config_to_dict(cfg) and "output_dir" not in config_to_dict(cfg)  # the canonical name is saved
    assert "(also output_dir)" in format_help(train.TrainConfig)
    # policy / model: either spelling in every command that names the policy
    assert parse_config(train.TrainConfig, ["model=p"]).policy == "p"
    assert parse_config(CollectConfig, ["policy=p"]).model == "p"


def test_a_train_folder_saved_with_output_dir_resumes_as_out(tmp_path):
    from prefixvalue import runfolder

    cfg = parse_config(train.TrainConfig, [f"out={tmp_path / 'run'}", "traces=t", "policy=p"])
    old = {**{k: v for k, v in runfolder._config_view(cfg)[0].items() if k != "out"}, "output_dir": cfg.out}
    view, defaults, renames = runfolder._config_view(cfg)
    assert runfolder.config_differences(old, view, defaults=defaults, renames=renames) == []


def test_train_says_when_the_use_cpu_launcher_runs_one_process(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    assert "multi_cpu.yaml" in train._cpu_launcher_note(1)
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    assert train._cpu_launcher_note(1) == ""


def test_sample_warnings_flag_samples_too_small_to_read():
    """Item 8: 4 held-out prompts, a Spearman CI spanning most of [-1, 1] and an F1 from 3 traces are flagged;
    the quickstart's sizes (200 prompts, CI width 0.14, 122/78 traces) are not."""
    from prefixvalue.evaluation.scoring import sample_warnings

    small = {
        "estimators": {"learned": {"spearman": {"ci": [-0.3, 0.5]}}, "mellowmax": {"spearman": {"ci": [-1, 1]}}},
        "step_verification": {"f1": 0.0, "n_erroneous": 2, "n_correct": 1},
    }
    warnings = sample_warnings(small, 4)
    assert len(warnings) == 3
    assert warnings[0].startswith("4 prompt(s) scored: too few to read")
    assert "learned: Spearman CI [-0.30, 0.50]" in warnings[1] and "F1 from 2 test trace(s)" in warnings[2]
    large = {
        "estimators": {"learned": {"spearman": {"ci": [0.51, 0.64]}}},
        "step_verification": {"f1": 0.44, "n_erroneous": 122, "n_correct": 78},
    }
    assert sample_warnings(large, 200) == []


def test_evaluate_warns_when_the_sample_is_too_small(tmp_path, tiny_tokenizer, tiny_model_dir, capsys):
    """Item 8: the README's demo-sized evaluation says on stderr, in metrics.json and at the top of report.md that
    its figures are too few to read."""
    import torch

    from prefixvalue import value
    from prefixvalue.stages import evaluate as ev

    from test_evaluate import _write, make_tiny_eval

    torch.manual_seed(0)
    cfg = value.ValueModelConfig(kind="head", base_model=str(tiny_model_dir), base_rate=0.4)
    value.build_value_model(cfg).save_pretrained(tmp_path / "ckpt")
    tdir, ldir = _write(tmp_path, *make_tiny_eval(tiny_tokenizer, n_prompts=4))
    out = tmp_path / "eval"
    argv = [f"checkpoint={tmp_path / 'ckpt'}", f"traces={tdir}", f"labels={ldir}", f"out={out}", "n_bootstrap=20"]
    argv += ["noise_ceiling_repeats=5", "report_to=disk", "device=cpu", "include_training_prompts=true"]
    metrics = ev.run(ev.parse_config(ev.EvaluateConfig, argv))
    assert metrics["warnings"][0].startswith("4 prompt(s) scored: too few to read")
    assert json.loads((out / "metrics.json").read_text())["warnings"] == metrics["warnings"]
    report = (out / "report.md").read_text()
    assert report.index("## Warnings") < report.index("## ", report.index("## Warnings") + 1)
    err = capsys.readouterr().err
    assert all(f"prefixvalue evaluate: warning: {w}" in err for w in metrics["warnings"])


def test_a_runs_saved_config_is_a_config_file_again(tmp_path):
    """A run's own config.yaml (with the version and class save_resolved_config adds) reads back through
    ``--config`` to the same config; another command's saved config is refused in one line."""
    from prefixvalue.config import ConfigError, save_resolved_config
    from prefixvalue.stages.evaluate import EvaluateConfig

    cfg = parse_config(train.TrainConfig, ["traces=t", "out=o", "max_steps=7", "value_model.kind=head"])
    saved = save_resolved_config(cfg, tmp_path)
    assert parse_config(train.TrainConfig, ["--config", str(saved)]) == cfg
    with pytest.raises(ConfigError, match="saved by TrainConfig, not EvaluateConfig"):
        parse_config(EvaluateConfig, ["--config", str(saved)])
