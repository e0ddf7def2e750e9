"""``executor=ray`` options without a cluster: the one-line refusals (run by make test, with or without ray)."""

from __future__ import annotations

import pytest

from prefixvalue import cli
from prefixvalue.config import ConfigError
from prefixvalue.data import shards
from prefixvalue.sampling import backend


def test_executor_ray_without_ray_installed_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(backend, "ray_available", lambda: False)
    argv = ["collect", "task=arith", "model=data/policies/arith-tiny", f"out={tmp_path / 'o'}", "executor=ray"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "make install-ray" in err and err.startswith("prefixvalue collect:")


def test_executor_ray_options_are_checked(monkeypatch):
    monkeypatch.setattr(backend, "ray_available", lambda: True)
    from prefixvalue.stages.label import LabelConfig

    with pytest.raises(ConfigError, match="ray_workers must be >= 1"):
        LabelConfig(traces="t", out="o", executor="ray", ray_workers=0)
    assert LabelConfig(traces="t", out="o").ray_options() is None  # the local executor imports no ray


def test_executor_ray_under_a_launcher_is_refused(monkeypatch, tmp_path):
    class State:
        device = "cpu"

    monkeypatch.setattr(shards, "dist_info", lambda: (0, 2, State()))
    with pytest.raises(ConfigError, match="executor=ray runs from one driver process"):
        shards.run_sharded_stage(
            None, tmp_path, {}, 1, lambda i: 1, lambda d: None, None, command="label", desc="", unit="",
            progress=False, ray_options=object(),
        )  # fmt: skip
