"""Reliability of configs and of the environment (issue 36, "Reliability 2": CONFIGS and ENVIRONMENT).

Each fault is one line on stderr and exit code 2 from `prefixvalue.cli.main`, never a traceback: a YAML
"billion laughs", a duplicate key, a non-finite number, a config file that is not UTF-8, an unclosed list on
the command line, a disk that refuses writes however a library wraps the error, a model the Hub cannot give
(offline, missing, unreachable) and an upload that cannot happen. The multi-CPU accelerate recipe starts and
counts two processes (slow).

pytest tests/test_reliability_config_env.py
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import math
import os
import re
import socket
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import requests
from huggingface_hub import constants as hub_constants
from huggingface_hub import errors as hub_errors

import prefixvalue
from prefixvalue import cli, config, policies
from prefixvalue.config import ConfigError, RawMapping, field, parse_config

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``prefixvalue ARGV``'s exit status and its stderr (checked to be one line, no traceback)."""
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("prefixvalue ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return rc, lines[0]


@dataclass
class FreeForm:
    """A config with a free-form mapping option (like a task's ``task_args``)."""

    options: RawMapping = field(default_factory=RawMapping, help="free-form options")


def test_yaml_alias_bomb_refused(tmp_path, capsys):
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text("options:\n" + "".join(f"  {line}\n" for line in levels))  # 10**10 values once expanded
    with pytest.raises(ConfigError, match=r"laughs\.yaml: .*aliases .* more than \d+ values"):
        parse_config(FreeForm, ["--config", str(bomb)])
    task_bomb = tmp_path / "task_laughs.yaml"
    task_bomb.write_text("task_args:\n" + "".join(f"  {line}\n" for line in levels))
    rc, line = run_cli(capsys, "collect", "--config", task_bomb, f"out={tmp_path / 'out'}")
    assert rc == 2 and "task_laughs.yaml" in line and "aliases" in line
    # a few aliases, as configs use them, still read
    fine = tmp_path / "fine.yaml"
    fine.write_text("options:\n  base: &b {lr: 0.1}\n  again: *b\n")
    assert parse_config(FreeForm, ["--config", str(fine)]).options["again"] == {"lr": 0.1}


def test_duplicate_yaml_key_refused(tmp_path, capsys):
    dup = tmp_path / "dup.yaml"
    dup.write_text("lr: 0.1\nmax_steps: 3\nlr: 0.2\n")
    rc, line = run_cli(capsys, "train", "--config", dup, f"output_dir={tmp_path / 'run'}")
    assert rc == 2 and "dup.yaml" in line and "duplicate key 'lr'" in line and "line 3" in line
    nested = tmp_path / "nested.yaml"
    nested.write_text("value_model:\n  kind: head\n  kind: implicit\n")
    rc, line = run_cli(capsys, "train", "--config", nested, f"output_dir={tmp_path / 'run'}")
    assert rc == 2 and "duplicate key 'kind'" in line and "line 3" in line
    merged = tmp_path / "merged.yaml"  # a merge key (<<) may be overridden: not a duplicate
    merged.write_text("options:\n  base: &b {lr: 0.1}\n  run: {<<: *b, lr: 0.2}\n")
    assert parse_config(FreeForm, ["--config", str(merged)]).options["run"] == {"lr": 0.2}


def _config_classes() -> list[type]:
    """Every config dataclass of every command (help-texted fields), nested ones included."""
    found: dict[type, None] = {}

    def add(cls: type) -> None:
        if cls in found or not any("help" in f.metadata for f in dataclasses.fields(cls)):
            return
        found[cls] = None
        for tp in typing.get_type_hints(cls).values():
            for arg in (tp, *typing.get_args(tp)):
                if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                    add(arg)

    for module in sorted(set(cli.COMMANDS.values())):
        for obj in vars(importlib.import_module(module)).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj):
                add(obj)
    return list(found)


def _float_fields(cls: type) -> list[dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    return [
        f
        for f in dataclasses.fields(cls)
        if f.init and (hints[f.name] is float or float in typing.get_args(hints[f.name]))
    ]


def test_non_finite_numbers_refused_at_config_time(tmp_path, capsys):
    nan = tmp_path / "nan.yaml"
    nan.write_text("lr: .nan\n")
    rc, line = run_cli(capsys, "train", "--config", nan, f"output_dir={tmp_path / 'run'}")
    assert rc == 2 and "lr" in line and "finite" in line
    rc, line = run_cli(capsys, "train", "lr=inf", f"output_dir={tmp_path / 'run'}")
    assert rc == 2 and "lr" in line and "finite" in line
    checked = 0
    for cls in _config_classes():
        for f in _float_fields(cls):
            with pytest.raises(ConfigError, match=f.name):
                config.coerce_fields(cls, {f.name: math.nan})
            if f.metadata.get("allow_inf"):
                assert config.coerce_fields(cls, {f.name: "inf"})[f.name] in (math.inf, [math.inf])
            else:
                with pytest.raises(ConfigError, match="finite"):
                    config.coerce_fields(cls, {f.name: -math.inf})
            checked += 1
    assert checked > 20
    # MellowMax ω = inf is the max (prefixvalue.evaluation.softvalues.mellowmax): those fields keep it
    from prefixvalue.stages.evaluate import EvaluateConfig

    assert config.coerce_fields(EvaluateConfig, {"omegas": "[1, .inf]"})["omegas"] == [1.0, math.inf]


def test_non_utf8_config_file(tmp_path, capsys):
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("max_steps: 3\n".encode("utf-16"))
    rc, line = run_cli(capsys, "train", "--config", utf16, f"output_dir={tmp_path / 'run'}")
    assert rc == 2 and "utf16.yaml" in line and "UTF-8" in line
    bom = tmp_path / "bom.yaml"  # UTF-8 with a byte-order mark is UTF-8
    bom.write_bytes("options: {a: 1}\n".encode("utf-8-sig"))
    assert parse_config(FreeForm, ["--config", str(bom)]).options == {"a": 1}


def test_unclosed_list_on_the_command_line(tmp_path, capsys):
    rc, line = run_cli(capsys, "actions", "policy=data/policies/arith-tiny", "checkpoints=[a,b", f"out={tmp_path}")
    assert rc == 2 and "checkpoints" in line and "not valid YAML" in line
    rc, line = run_cli(capsys, "collect", "task=jsonl", "task_args={path: [x", f"out={tmp_path}")
    assert rc == 2 and "task_args" in line


def test_disk_errors_however_wrapped(tmp_path, capsys, monkeypatch, shipped_head_checkpoint):
    from safetensors import SafetensorError

    from prefixvalue.value import export

    def chained() -> Exception:
        try:
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "x"))
        except OSError as exc:
            try:
                raise RuntimeError("could not save the shard") from exc
            except RuntimeError as outer:
                return outer

    wrapped = [
        SafetensorError("Error while serializing: I/O error: Read-only file system (os error 30)"),
        chained(),
        OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"),
    ]
    for i, error in enumerate(wrapped):

        def refuse(*args, _error=error, **kwargs):
            raise _error

        monkeypatch.setattr(export, "export_token_classification", refuse)
        out = tmp_path / f"export{i}"
        rc, line = run_cli(capsys, "export-model", f"checkpoint={shipped_head_checkpoint}", f"out={out}")
        assert rc == 2 and ("Read-only file system" in line or "No space left" in line), line
    monkeypatch.undo()
    if os.geteuid() != 0:  # root writes through permissions
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            rc, line = run_cli(capsys, "export-model", f"checkpoint={shipped_head_checkpoint}", f"out={locked / 'x'}")
            assert rc == 2 and "ermission" in line
        finally:
            locked.chmod(0o755)


def set_offline(monkeypatch, offline: bool) -> None:
    """Downloads off (or on) as huggingface_hub reads them when called: its constant, read at its import (which
    may come before tests/conftest.py sets HF_HUB_OFFLINE), and the environment."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", offline)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if offline:
            monkeypatch.setenv(name, "1")
        else:
            monkeypatch.delenv(name, raising=False)


def _http_error(cls: type, message: str, status: int = 404) -> Exception:
    request = httpx2.Request("GET", "https://huggingface.co/api/models/owner/missing")
    return cls(message, response=httpx2.Response(status, request=request))


def _from(outer: Exception, inner: Exception) -> Exception:
    outer.__cause__ = inner
    return outer


HUB_FAILURES = [
    (
        _from(
            OSError("owner/missing is not a local folder and is not a valid model identifier"),
            _http_error(hub_errors.RepositoryNotFoundError, "Repository Not Found for url"),
        ),
        "not found",
    ),
    (_http_error(hub_errors.GatedRepoError, "Access to model owner/missing is restricted", 403), "gated"),
    (
        _from(
            OSError("We couldn't connect to 'https://huggingface.co' to load the files"),
            hub_errors.LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub"),
        ),
        "cannot be reached",
    ),
    (httpx2.ConnectError("[Errno -2] Name or service not known"), "cannot be reached"),
    (requests.ConnectionError("Max retries exceeded with url"), "cannot be reached"),
    (OSError("owner/missing does not appear to have a file named config.json"), "cannot load the"),
    (hub_errors.HFValidationError("Repo id must use alphanumeric chars"), "not a valid Hub repo id"),
]


def test_hub_failures_are_one_line(tmp_path, capsys, monkeypatch):
    set_offline(monkeypatch, True)  # the real loaders, no network
    rc, line = run_cli(capsys, "collect", "model=owner/missing", "num_prompts=2", f"out={tmp_path / 'c'}")
    assert rc == 2 and "owner/missing" in line and "HF_HUB_OFFLINE" in line
    # online: the Hub's errors, raised by stand-ins for the loaders (no network either)
    set_offline(monkeypatch, False)
    for error, words in HUB_FAILURES:

        def fail(*args, _error=error, **kwargs):
            raise _error

        monkeypatch.setattr(policies.AutoTokenizer, "from_pretrained", fail)
        monkeypatch.setattr(policies.AutoModelForCausalLM, "from_pretrained", fail)
        with pytest.raises(ConfigError, match="owner/missing") as info:
            policies.load_tokenizer("owner/missing")
        assert words in str(info.value) and "\n" not in str(info.value), (type(error), str(info.value))
        with pytest.raises(ConfigError, match=words):
            policies.load_causal_lm("owner/missing")
    rc, line = run_cli(capsys, "collect", "model=owner/missing", "num_prompts=2", f"out={tmp_path / 'c2'}")
    assert rc == 2 and "owner/missing" in line


def test_push_model_failures_are_one_line(capsys, monkeypatch, shipped_head_checkpoint):
    ckpt = f"checkpoint={shipped_head_checkpoint}"
    set_offline(monkeypatch, True)
    rc, line = run_cli(capsys, "push-model", ckpt, "repo_id=you/value")
    assert rc == 2 and "you/value" in line and "HF_HUB_OFFLINE" in line
    rc, line = run_cli(capsys, "push-model", ckpt, "repo_id=not a repo!")
    assert rc == 2 and "not a valid Hub repo id" in line
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise httpx2.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)  # before going online
    set_offline(monkeypatch, False)
    rc, line = run_cli(capsys, "push-model", ckpt, "repo_id=you/value")
    assert rc == 2 and "you/value" in line and "cannot be reached" in line


@pytest.mark.slow
def test_multi_cpu_recipe_starts_two_processes(tmp_path):
    recipe = REPO / "recipes" / "accelerate" / "multi_cpu.yaml"
    script = tmp_path / "who.py"
    script.write_text(
        "from prefixvalue.data.shards import dist_info\nrank, world, _ = dist_info()\nprint(f'process {rank} of {world}')\n"
    )
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(prefixvalue.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(recipe)]
    cmd += ["--main_process_port", str(port), str(script)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = set(re.findall(r"process (\d+) of (\d+)", res.stdout))  # the two prints may share a line
    assert seen == {("0", "2"), ("1", "2")}, res.stdout + res.stderr[-2000:]
