"""Issue 36 "Reliability 2": checkpoint and split records are not trusted blindly.

An edited ``split.json`` is checked against the digests it records before anything is scored as held out; a
missing, malformed or truncated file of a checkpoint (``split.json``, ``value_config.json``,
``prompt_format.json``, ``backbone/config.json``, the safetensors weights, the adapter's files) is one line
naming the file and exit code 2 from ``prefixvalue evaluate``, and a ConfigError naming it from
``load_value_model`` / ``ValueModel.from_pretrained``, never a traceback or a Hub download attempt.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from prefixvalue import cli, value
from prefixvalue.config import ConfigError
from prefixvalue.data import SplitRecord, load_traces, rows_to_dataset

from conftest import make_tiny_gpt2
from test_value_fixtures import random_traces, save_traces


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """A tiny policy, traces of 12 prompts with labels, and two checkpoints trained (not really) on them: a head
    on a fully trained backbone (``backbone/``, ``head.safetensors``) and an implicit model with a LoRA adapter,
    each with the split record train writes (``SplitRecord.of`` the traces)."""
    import torch

    root = tmp_path_factory.mktemp("reliability2")
    policy = root / "policy"
    make_tiny_gpt2(len(tiny_tokenizer)).save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    traces = save_traces(random_traces(tiny_tokenizer, n_prompts=12, per_prompt=2), root / "traces")
    rows = load_traces(traces)
    labels = [
        {"trace_id": t, "position": p, "n": 4, "successes": k, "mean": k / 4, "ci_low": 0.0, "ci_high": 1.0}
        for i, (t, c) in enumerate(zip(rows["trace_id"], rows["completion_ids"]))
        for p, k in ((0, i % 5), (len(c), (3 * i) % 5))
    ]
    rows_to_dataset(labels).save_to_disk(str(root / "labels"))
    record = SplitRecord.of(rows, 0.5, 0.0, 0)
    torch.manual_seed(0)
    out = {"policy": policy, "traces": traces, "labels": root / "labels"}
    for name, kind, backbone in (("head", "head", "full"), ("implicit", "implicit", "lora")):
        cfg = value.ValueModelConfig(kind=kind, base_model=str(policy), base_rate=0.5, backbone=backbone)
        folder = value.build_value_model(cfg).save_pretrained(root / name / "final")
        record.save(folder)
        out[name] = folder
    return out


def evaluate_argv(files: dict[str, Path], checkpoint: Path, out: Path) -> list[str]:
    return [
        "evaluate",
        f"checkpoint={checkpoint}",
        f"traces={files['traces']}",
        f"labels={files['labels']}",
        f"out={out}",
        "device=cpu",
        "report_to=disk",
        "soft_values=false",
        "progress=false",
        "n_bootstrap=5",
        "noise_ceiling_repeats=2",
    ]


def one_line_exit_2(argv: list[str], capsys) -> str:
    """The stderr line of `argv` through `prefixvalue.cli.main`, which must exit 2 with one line."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------ fault 1
def test_edited_split_is_refused_by_its_digest(files, tmp_path, capsys):
    """Fault 1: split.json edited to another seed or fraction scored training prompts as held out with no
    word; its training-prompt digest is now checked against the split it claims, over the traces scored (a
    record with the digest of all its prompts) or the traces its training run recorded (an older record)."""
    for i, change in enumerate(({"split_seed": 3}, {"heldout_fraction": 0.8})):
        ckpt = shutil.copytree(files["head"], tmp_path / f"edited{i}" / "final")
        edit_json(ckpt / "split.json", lambda d, change=change: d.update(change))
        err = one_line_exit_2(evaluate_argv(files, ckpt, tmp_path / f"e{i}"), capsys)
        assert str(ckpt / "split.json") in err and "training prompts it records" in err
    # an older record (no digest of all its prompts) in its training run's folder: checked against the run's
    # traces, whichever traces are scored
    run = tmp_path / "old_run"
    ckpt = shutil.copytree(files["head"], run / "final")
    edit_json(ckpt / "split.json", lambda d: (d.pop("n_prompts"), d.pop("prompts_sha256"), d.update(split_seed=5)))
    (run / ".prefixvalue-run.json").write_text(
        json.dumps({"command": "train", "config": {"traces": str(files["traces"]), "max_length": 0}})
    )
    err = one_line_exit_2(evaluate_argv(files, ckpt, tmp_path / "e_old"), capsys)
    assert str(ckpt / "split.json") in err and str(files["traces"]) in err
    # the split as written is verified and evaluates
    assert cli.main(evaluate_argv(files, files["head"], tmp_path / "e_ok")) == 0


# ------------------------------------------------------------------------------------------ faults 2-4
def _rm(name: str) -> Callable[[Path], None]:
    return lambda ckpt: (ckpt / name).unlink()


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda ckpt: (ckpt / name).write_text(text)


def _edit(name: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda ckpt: edit_json(ckpt / name, change)


#: (case, checkpoint, how it is damaged, the file the message names, words it holds)
RECORD_FAULTS = [
    ("split.json not JSON", "head", _write("split.json", "{not json"), "split.json", "not valid JSON"),
    ("split.json a list", "head", _write("split.json", "[1, 2]"), "split.json", "JSON object"),
    ("split.json wrong type", "head", _edit("split.json", lambda d: d.update(split_seed="abc")), "split.json", "split_seed"),
    ("split.json no key", "head", _edit("split.json", lambda d: d.pop("heldout_fraction")), "split.json", "heldout_fraction"),
    ("value_config.json not JSON", "head", _write("value_config.json", "garbage"), "value_config.json", "not valid JSON"),
    ("value_config.json wrong type", "head", _edit("value_config.json", lambda d: d.update(beta="x")), "value_config.json", "beta"),
    ("value_config.json no kind", "head", _edit("value_config.json", lambda d: d.pop("kind")), "value_config.json", "kind"),
    ("value_config.json unknown kind", "head", _edit("value_config.json", lambda d: d.update(kind="nope")), "value_config.json", "kind"),
    ("prompt_format.json not JSON", "head", _write("prompt_format.json", "nope"), "prompt_format.json", "not valid JSON"),
    ("prompt_format.json a list", "head", _write("prompt_format.json", "[1]"), "prompt_format.json", "JSON object"),
    ("prompt_format.json wrong type", "head", _edit("prompt_format.json", lambda d: d.update(chat_template="maybe")), "prompt_format.json", "chat_template"),
    ("backbone/config.json not JSON", "head", _write("backbone/config.json", "nope"), "backbone/config.json", "not valid JSON"),
    ("backbone/config.json missing", "head", _rm("backbone/config.json"), "backbone/config.json", "missing"),
    ("backbone/config.json no model_type", "head", _write("backbone/config.json", "{}"), "backbone/config.json", "model_type"),
]  # fmt: skip
WEIGHT_FAULTS = [
    ("head.safetensors truncated", "head", lambda c: truncate(c / "head.safetensors"), "head.safetensors"),
    ("head.safetensors garbage", "head", _write("head.safetensors", "hello"), "head.safetensors"),
    ("backbone truncated", "head", lambda c: truncate(c / "backbone/model.safetensors"), "backbone/model.safetensors"),
    ("adapter truncated", "implicit", lambda c: truncate(c / "adapter/adapter_model.safetensors"), "adapter_model.safetensors"),
]  # fmt: skip
ADAPTER_FAULTS = [
    ("adapter weights deleted", _rm("adapter/adapter_model.safetensors"), "adapter/adapter_model.safetensors"),
    ("adapter config deleted", _rm("adapter/adapter_config.json"), "adapter/adapter_config.json"),
    ("adapter config not JSON", _write("adapter/adapter_config.json", "nope"), "adapter/adapter_config.json"),
    ("adapter folder deleted", lambda c: shutil.rmtree(c / "adapter"), "adapter"),
]


def _damaged(files, tmp_path, which: str, damage: Callable[[Path], object]) -> Path:
    ckpt = shutil.copytree(files[which], tmp_path / "damaged" / "final")
    damage(ckpt)
    return ckpt


@pytest.mark.parametrize(("case", "which", "damage", "name", "words"), RECORD_FAULTS, ids=[c[0] for c in RECORD_FAULTS])
def test_malformed_checkpoint_record_is_one_line(files, tmp_path, capsys, case, which, damage, name, words):
    """Fault 2: garbage, wrong types or missing keys in split.json, value_config.json, prompt_format.json or
    backbone/config.json were tracebacks (exit 1), mostly without the file's name."""
    ckpt = _damaged(files, tmp_path, which, damage)
    err = one_line_exit_2(evaluate_argv(files, ckpt, tmp_path / "eval"), capsys)
    assert str(ckpt / name) in err and words in err
    if name != "split.json":  # what the library loads: one ConfigError naming the file too
        with pytest.raises(ConfigError, match=words) as exc:
            value.load_value_model(ckpt)
        assert str(ckpt / name) in str(exc.value)


@pytest.mark.parametrize(("case", "which", "damage", "name"), WEIGHT_FAULTS, ids=[c[0] for c in WEIGHT_FAULTS])
def test_truncated_weights_are_one_line(files, tmp_path, capsys, case, which, damage, name):
    """Fault 3: a truncated head.safetensors, adapter_model.safetensors or backbone/model.safetensors was a
    safetensors traceback."""
    ckpt = _damaged(files, tmp_path, which, damage)
    err = one_line_exit_2(evaluate_argv(files, ckpt, tmp_path / "eval"), capsys)
    assert name in err and str(ckpt) in err and "safetensors" in err
    with pytest.raises(ConfigError, match=name):
        value.ValueModel.from_pretrained(ckpt)


@pytest.mark.parametrize(("case", "damage", "name"), ADAPTER_FAULTS, ids=[c[0] for c in ADAPTER_FAULTS])
def test_deleted_adapter_file_is_named_not_downloaded(files, tmp_path, capsys, monkeypatch, case, damage, name):
    """Fault 4: with adapter_model.safetensors or adapter_config.json gone, peft took the folder for a Hub id
    ("Repo id must be in the form ..."); now the missing file is named and nothing is fetched."""
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("a damaged local checkpoint must not be looked up on the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    ckpt = _damaged(files, tmp_path, "implicit", damage)
    err = one_line_exit_2(evaluate_argv(files, ckpt, tmp_path / "eval"), capsys)
    assert str(ckpt / name) in err
    with pytest.raises(ConfigError, match="adapter"):
        value.load_value_model(ckpt)
    assert not (tmp_path / "eval" / "metrics.json").exists()
