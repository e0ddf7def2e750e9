"""wandb tracking, offline only: where a run goes (config keys and WANDB_* variables), a resumed
training run continuing its wandb run by id, checkpoints as artifacts, a finished run left alone.
The runs are read back from wandb's own offline run files (``run-<id>.wandb``), never the network."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from prefixvalue import training as train
from prefixvalue.config import parse_config
from prefixvalue.tracking import WANDB_ID_FILE, WandbConfig, build_logger

from conftest import make_tiny_gpt2
from test_value_fixtures import random_traces, save_traces


def wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file: a LevelDB-style log (a 7-byte ``:W&B`` header,
    32 KiB blocks of chunks with a 7-byte header each: CRC, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # block trailer, or zero padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def offline_runs(folder: Path, n: int, timeout: float = 60.0) -> dict[str, list]:
    """``{offline run folder name: its records}`` of the `n` finished runs under ``folder/wandb``.

    wandb's service process may still be writing a run file when ``finish()`` returns (seen on a
    loaded machine), so this waits until `n` files each end with the run's exit record."""
    deadline = time.monotonic() + timeout
    while True:
        done = {}
        for p in sorted((folder / "wandb").glob("offline-run-*/run-*.wandb")):
            try:
                records = wandb_records(p)
            except Exception:  # a record still being written
                continue
            if records and records[-1].WhichOneof("record_type") == "exit":
                done[p.parent.name] = records
        if len(done) >= n or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def _of(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_settings_from_config_then_environment(monkeypatch, offline):
    assert WandbConfig().init_kwargs("train") == {
        "project": "prefixvalue",
        "entity": None,
        "group": None,
        "tags": None,
        "job_type": "train",
    }
    monkeypatch.setenv("WANDB_PROJECT", "env-project")
    monkeypatch.setenv("WANDB_ENTITY", "env-team")
    got = WandbConfig().init_kwargs("evaluate")
    assert (got["project"], got["entity"], got["job_type"]) == ("env-project", "env-team", "evaluate")
    mine = WandbConfig(project="p", entity="e", group="g", tags=["a", "b"], job_type="sweep").init_kwargs("train")
    assert mine == {"project": "p", "entity": "e", "group": "g", "tags": ["a", "b"], "job_type": "sweep"}
    cfg = parse_config(train.TrainConfig, ["traces=x", "wandb.project=q", "wandb.tags=[x, y]"])
    assert cfg.wandb.project == "q" and cfg.wandb.tags == ["x", "y"]


def test_offline_run_records_settings_id_and_artifact(monkeypatch, offline, tmp_path):
    monkeypatch.setenv("WANDB_PROJECT", "env-project")
    monkeypatch.setenv("WANDB_ENTITY", "env-team")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "weights.txt").write_text("w")
    logger = build_logger("wandb", tmp_path, {"lr": 0.1}, "r1", WandbConfig(group="g1", tags=["t"]), job_type="train")
    first = logger.wandb_run_id
    logger.log({"train/loss": 1.0}, 1)
    logger.log_artifact("r1 value/final", tmp_path / "ckpt", "model", ["final"])
    logger.finish()
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == first
    ((name, records),) = offline_runs(tmp_path, 1).items()
    assert name.endswith(first)
    (run,) = _of(records, "run")
    assert (run.project, run.entity, run.run_group, run.job_type, list(run.tags)) == (
        "env-project",
        "env-team",
        "g1",
        "train",
        ["t"],
    )
    (art,) = _of(records, "artifact")
    assert (art.name, art.type) == ("r1-value-final", "model") and "final" in art.aliases
    again = build_logger("wandb", tmp_path, resume=True)  # continues the run named in wandb_run_id
    assert again.wandb_run_id == first
    again.finish()
    fresh = build_logger("wandb", tmp_path)
    assert fresh.wandb_run_id != first
    fresh.finish()


def test_train_resumes_its_wandb_run_and_leaves_a_finished_run(offline, tmp_path, tiny_tokenizer, capsys):
    policy = tmp_path / "policy"
    make_tiny_gpt2(len(tiny_tokenizer)).save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    traces = save_traces(random_traces(tiny_tokenizer, n_prompts=6, per_prompt=2, seed=0), tmp_path / "traces")
    out = tmp_path / "run"

    def run(max_steps: int) -> dict:
        args = {
            "traces": traces,
            "policy": policy,
            "output_dir": out,
            "per_device_batch_size": 4,
            "warmup_steps": 0,
            "eval_every": 1,
            "checkpoint_every": 1,
            "heldout_fraction": 0.34,
            "threads": 1,
            "max_steps": max_steps,
            "report_to": "disk,wandb",
            "log_checkpoints": "true",
            "wandb.group": "g",
            "value_model.kind": "head",
        }
        return train.run(parse_config(train.TrainConfig, [f"{k}={v}" for k, v in args.items()]))

    first = run(2)
    run_id = (out / WANDB_ID_FILE).read_text().strip()
    (records,) = offline_runs(out, 1).values()
    assert _of(records, "run")[0].job_type == "train"
    arts = {(a.type, frozenset(a.aliases)) for a in _of(records, "artifact")}
    assert arts == {
        ("checkpoint", frozenset({"latest", "step_1"})),
        ("model", frozenset({"latest", "final", "step_2"})),
    }
    log = (out / "metrics.jsonl").read_text()

    capsys.readouterr()
    again = run(2)  # finished: said so, nothing trained, logged or started
    assert "holds a finished run" in capsys.readouterr().out
    assert (out / "metrics.jsonl").read_text() == log and len(offline_runs(out, 1, timeout=0)) == 1
    assert again["step"] == 2 and again["brier_all"] == first["brier_all"]
    assert [h["step"] for h in again["eval_history"]] == [h["step"] for h in first["eval_history"]] == [1, 2]

    more = run(3)  # max_steps raised: resumes from checkpoints/step_1 into the same wandb run
    assert more["step"] == 3 and "resumed from" in capsys.readouterr().out
    runs = offline_runs(out, 2)
    assert len(runs) == 2 and {_of(recs, "run")[0].run_id for recs in runs.values()} == {run_id}
    assert json.loads((out / "final_metrics.json").read_text())["step"] == 3


def test_quickstart_runs_share_one_group(offline, monkeypatch, tmp_path):
    from prefixvalue.stages.quickstart import QuickstartConfig, with_wandb_group

    cfg = parse_config(QuickstartConfig, ["policy=some/policy", f"out={tmp_path}"])
    grouped = with_wandb_group(cfg, tmp_path)
    group = grouped.evaluate.wandb.group
    assert group.startswith(f"quickstart-{tmp_path.name}-")
    runs = [grouped.train_config(name, tmp_path, s) for name in grouped.value_models for s in (0, 1)]
    assert {r.wandb.group for r in runs} == {group}
    assert with_wandb_group(cfg, tmp_path).train.wandb.group == group  # a rerun keeps its group
    monkeypatch.setenv("WANDB_RUN_GROUP", "mine")
    assert with_wandb_group(cfg, tmp_path / "other").evaluate.wandb.group == "mine"
