"""Reliability of processes and paths (issue 36): a killed launcher takes its workers with it, traces name their
policy from any folder, label checks the model's context, an interrupted export-model resumes.

pytest tests/test_reliability_processes.py
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import prefixvalue
from prefixvalue import cli, runfolder
from prefixvalue.tokenizer import build_char_tokenizer
from prefixvalue.tools import export_model
from prefixvalue.value import ValueModelConfig, build_value_model

from conftest import make_tiny_gpt2
from test_value_fixtures import random_traces, save_traces

PY = sys.executable


def _tiny_policy(path: Path) -> Path:
    tok = build_char_tokenizer()
    make_tiny_gpt2(len(tok), seed=3).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _one_line_refusal(argv: list[str], capsys) -> str:
    """Run the CLI: exit 2 with one error line on stderr (a progress bar may come before it); that line."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    errors = [x for x in err.splitlines() if x.startswith("prefixvalue ")]
    assert len(errors) == 1 and err.endswith(errors[0]), err
    return errors[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- 1: a killed launcher leaves no worker training ------------------------------------------------------------------
@pytest.mark.slow  # two training processes under accelerate launch (gloo on CPU)
def test_a_killed_launcher_takes_its_workers_with_it(tmp_path):
    """torchrun (what ``accelerate launch`` runs for several processes) starts each worker in a session of its
    own: before, a launcher killed with SIGKILL left both workers training (holding the folder's lock)."""
    policy = _tiny_policy(tmp_path / "policy")
    traces = save_traces(random_traces(build_char_tokenizer(), n_prompts=12, per_prompt=2, seed=0), tmp_path / "tr")
    out = tmp_path / "run"
    cmd = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd += ["-m", "prefixvalue.cli", "train", f"traces={traces}", f"policy={policy}", f"output_dir={out}"]
    cmd += ["max_steps=1000000", "per_device_batch_size=2", "checkpoint_every=0", "eval_every=1000000"]
    cmd += ["report_to=none", "heldout_fraction=0.25", "threads=1"]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(prefixvalue.__file__).parents[1]),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[psutil.Process] = []
    try:
        # the main process claims the folder after the process group formed: both workers are set up by then
        deadline = time.monotonic() + 600  # a guard against a hang, not a speed check
        while not (out / runfolder.LOCK_FILE).exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert launcher.poll() is None, "the launch ended before it trained"
        workers = psutil.Process(launcher.pid).children(recursive=True)
        assert len(workers) >= 2, workers
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers still running after their launcher was killed: {alive}"
    finally:
        for p in [*workers, psutil.Process(launcher.pid)] if launcher.poll() is None else workers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


# -- 2: a local model is recorded by its absolute path ---------------------------------------------------------------
def test_traces_name_their_policy_from_any_folder(tmp_path, monkeypatch, capsys):
    """Before, collect recorded model=tiny as written, so evaluate from another folder refused the same policy,
    named by its absolute path, as "not the model that wrote the traces"."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    policy = _tiny_policy(here / "tiny")
    monkeypatch.chdir(here)
    collect = ["task=arith", "model=tiny", "num_prompts=4", "traces_per_prompt=2", "max_new_tokens=10"]
    assert cli.main(["collect", *collect, "seed=0", "out=traces", "progress=false"]) == 0
    label = ["traces=traces", "model=tiny", "positions=stride:4", "samples=2", "prompts=all", "out=labels"]
    assert cli.main(["label", *label, "progress=false"]) == 0
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    argv = [f"policy={policy}", f"traces={here / 'traces'}", f"labels={here / 'labels'}", "out=eval"]
    assert cli.main(["evaluate", *argv, "include_training_prompts=true", "n_bootstrap=0"]) == 0, capsys.readouterr()
    assert (elsewhere / "eval" / "metrics.json").is_file()


# -- 3: label checks the model's context -----------------------------------------------------------------------------
def test_label_refuses_continuations_longer_than_the_context(tmp_path, capsys):
    """Before, label max_new_tokens=500 on a 128-position model died in the embedding with an IndexError."""
    policy = _tiny_policy(tmp_path / "tiny")
    traces = tmp_path / "traces"
    collect = [f"model={policy}", "task=arith", "num_prompts=2", "traces_per_prompt=2", "max_new_tokens=10"]
    assert cli.main(["collect", *collect, f"out={traces}", "progress=false"]) == 0
    out = tmp_path / "labels"
    argv = ["label", f"traces={traces}", "positions=stride:4", "samples=2", "prompts=all", f"out={out}"]
    err = _one_line_refusal([*argv, "max_new_tokens=500", "progress=false"], capsys)
    assert "max_new_tokens=500" in err and "context is 128" in err and "positions" in err
    assert not (out / "run.json").exists()  # refused before the run's manifest: the corrected command runs
    assert cli.main([*argv, "max_new_tokens=20", "progress=false"]) == 0


# -- 4: an interrupted export-model resumes its own run --------------------------------------------------------------
def test_an_interrupted_export_model_resumes_and_a_strangers_folder_is_refused(tmp_path, monkeypatch, capsys):
    """Already held on main (export-model claims its folder: docs/design.md, "Run folders"); kept as a regression
    test: an export stopped while writing, or after writing but before its check, is redone by the same command."""
    policy = _tiny_policy(tmp_path / "tiny")
    cfg = ValueModelConfig(kind="head", backbone="lora", base_rate=0.3, base_model=str(policy))
    vm = build_value_model(cfg, make_tiny_gpt2(len(build_char_tokenizer()), seed=3))
    vm.tokenizer = build_char_tokenizer()
    ckpt = tmp_path / "ckpt"
    vm.save_pretrained(ckpt)
    out = tmp_path / "tc"
    argv = ["export-model", f"checkpoint={ckpt}", f"out={out}"]

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # where a kill would stop it

    real_install = runfolder.RunFolder.install
    for where, obj, name in [("install", runfolder.RunFolder, "install"), ("check", export_model, "compare_export")]:
        with monkeypatch.context() as m:
            m.setattr(obj, name, stop)
            with pytest.raises(KeyboardInterrupt):
                cli.main(argv)
        record = runfolder.read_record(out)
        assert record is not None and not record["complete"], where
        capsys.readouterr()
        assert cli.main(argv) == 0, (where, capsys.readouterr().err)
        assert runfolder.read_record(out)["complete"] and (out / "config.json").is_file()
        assert runfolder.RunFolder.install is real_install
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "NOTES.txt").write_text("mine")
    err = _one_line_refusal(["export-model", f"checkpoint={ckpt}", f"out={stranger}"], capsys)
    assert "NOTES.txt" in err and (stranger / "NOTES.txt").read_text() == "mine"
