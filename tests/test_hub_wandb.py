"""Issue 34, items 7 and 9, and the README's examples run verbatim: train logs to wandb by default and its
checkpoint names its wandb run, which evaluate links to (offline wandb runs read back from their files);
traces and labels pushed to the Hub as a `datasets` dataset with a card (against a local stand-in, never
the network); the README's value-model snippets run as written against a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_checkpoints_travel import LocalHub
from test_tracking import _of, offline, offline_runs  # noqa: F401 - the offline fixture is re-used

from prefixvalue import training as train
from prefixvalue.config import parse_config
from prefixvalue.stages import evaluate as ev
from prefixvalue.tracking import WANDB_ID_FILE, WANDB_RUN_FILE, training_run

from test_evaluate import _write, make_tiny_eval


def _config(records: list) -> dict:
    """The wandb config of an offline run: its run record's, then every config update, keys to values."""
    items = [*_of(records, "run")[0].config.update]
    for c in _of(records, "config"):
        items += list(c.update)
    return {i.key: json.loads(i.value_json) for i in items}


# ------------------------------------------------------------------------------- item 7: wandb
@pytest.mark.usefixtures("offline")
def test_train_logs_to_wandb_by_default_and_evaluate_links_to_its_run(tmp_path, tiny_tokenizer, tiny_model_dir):
    assert "wandb" in train.TrainConfig(traces="x").report_to.split(",")  # as evaluate's default
    assert train.TrainConfig(traces="x").report_to == ev.EvaluateConfig().report_to
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=6)
    tdir, ldir = _write(tmp_path, traces, labels)
    out = tmp_path / "train"
    args = {
        "traces": tdir,
        "policy": tiny_model_dir,
        "output_dir": out,
        "max_steps": 2,
        "per_device_batch_size": 4,
        "warmup_steps": 0,
        "heldout_fraction": 0.34,
        "threads": 1,
        "value_model.kind": "head",
        "wandb.group": "g-train",
        "log_checkpoints": "true",
    }  # no report_to: the default
    train.run(parse_config(train.TrainConfig, [f"{k}={v}" for k, v in args.items()]))
    train_id = (out / WANDB_ID_FILE).read_text().strip()
    record = training_run(out / "final")
    assert record is not None and json.loads((out / "final" / WANDB_RUN_FILE).read_text()) == record
    assert (record["id"], record["group"], record["project"], record["mode"]) == (
        train_id,
        "g-train",
        "prefixvalue",
        "offline",
    )
    assert record["artifact"] == "train-value:step_2"  # the artifact train logged final/ as

    evaluated = tmp_path / "eval"
    argv = [f"checkpoint={out / 'final'}", f"traces={tdir}", f"labels={ldir}", f"out={evaluated}"]
    argv += ["n_bootstrap=5", "noise_ceiling_repeats=2", "soft_values=false", "progress=false", "report_to=disk,wandb"]
    ev.run(parse_config(ev.EvaluateConfig, argv))
    (records,) = offline_runs(evaluated, 1).values()
    (run,) = _of(records, "run")
    assert (run.run_group, run.job_type) == ("g-train", "evaluate")  # the training run's group
    assert _config(records)["training_run"]["id"] == train_id

    # a group given to evaluate wins; a checkpoint without a wandb record links to nothing
    (out / "final" / WANDB_RUN_FILE).unlink()
    assert training_run(out / "final") is None and training_run("someone/hub-id") is None
    argv2 = [a for a in argv if not a.startswith("out=")] + [f"out={tmp_path / 'eval2'}", "overwrite=true"]
    ev.run(parse_config(ev.EvaluateConfig, argv2))
    (records2,) = offline_runs(tmp_path / "eval2", 1).values()
    assert _of(records2, "run")[0].run_group == "" and "training_run" not in _config(records2)


def test_wandb_disabled_writes_no_run_record(monkeypatch, tmp_path, tiny_tokenizer, tiny_model_dir):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=6)
    tdir, _ = _write(tmp_path, traces, labels)
    out = tmp_path / "train"
    args = [f"traces={tdir}", f"policy={tiny_model_dir}", f"output_dir={out}", "max_steps=1", "threads=1"]
    train.run(parse_config(train.TrainConfig, [*args, "per_device_batch_size=4", "value_model.kind=head"]))
    assert not (out / "final" / WANDB_RUN_FILE).exists() and not (out / WANDB_ID_FILE).exists()


# --------------------------------------------------------------------------- item 9: labels to the Hub
class DatasetHub(LocalHub):
    """The push-model tests' Hub stand-in (repos are folders), remembering the repo type of each call."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.repo_types: list = []

    def create_repo(self, repo_id, repo_type=None, **kw):
        self.repo_types.append(repo_type)
        return super().create_repo(repo_id, repo_type=repo_type, **kw)


def _by_id(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["trace_id"], r.get("position", 0)))


def test_push_data_uploads_a_datasets_dataset_with_a_card(tmp_path, tiny_tokenizer, monkeypatch, capsys):
    import datasets
    import huggingface_hub

    from prefixvalue import cli
    from prefixvalue.data import SplitRecord, load_labels, load_traces

    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=8)
    tdir, ldir = _write(tmp_path, traces, labels)
    SplitRecord.from_prompts([], 0.5, 0).save(ldir, prompts="heldout")  # the labels' split record
    (ldir / "config.yaml").write_text("samples: 8\npositions: steps\nmodel: data/policies/arith-tiny\n")
    hub = DatasetHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: hub)
    argv = ["push-data", f"traces={tdir}", f"labels={ldir}", "repo_id=someone/arith-data", "license=mit"]
    assert cli.main(argv) == 0
    assert hub.repo_types == ["dataset"]
    repo = tmp_path / "hub" / "someone" / "arith-data"
    assert (repo / "split.json").read_text() == (ldir / "split.json").read_text()

    # the pushed files load back with datasets.load_dataset to the same rows, split as the record says
    got = datasets.load_dataset(str(repo), "traces")
    want = load_traces(tdir)
    assert set(got) == {"train", "test"} and sum(len(d) for d in got.values()) == len(want)
    record = SplitRecord.load(ldir)
    assert all(record.side(r["prompt"]) == side for side, d in got.items() for r in d)
    assert _by_id([r for d in got.values() for r in d.to_list()]) == _by_id(want.to_list())
    got_labels = datasets.load_dataset(str(repo), "labels")
    assert list(got_labels) == ["test"]  # drawn from held-out prompts
    assert _by_id(got_labels["test"].to_list()) == _by_id(load_labels(ldir).to_list())

    card = (repo / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n- config_name: traces\n") and "license: mit" in card
    assert 'load_dataset("someone/arith-data", "labels")["test"]' in card
    assert "samples: `8`" in card and "positions: `steps`" in card and "held-out (test) fraction 0.5" in card

    # traces alone: one split, no labels config
    assert cli.main(["push-data", f"traces={tdir}", "repo_id=someone/traces-only"]) == 0
    assert list(datasets.load_dataset(str(tmp_path / "hub" / "someone" / "traces-only"))) == ["train"]

    # a bad repo id, a missing folder, no network: one line each, exit 2
    capsys.readouterr()
    assert cli.main(["push-data", f"traces={tdir}", "repo_id=bad id!!"]) == 2
    assert cli.main(["push-data", f"traces={tmp_path / 'nope'}", "repo_id=someone/x"]) == 2
    assert cli.main(["push-data", "repo_id=someone/x"]) == 2
    monkeypatch.undo()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert cli.main(["push-data", f"traces={tdir}", "repo_id=someone/x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("prefixvalue push-data: ") for line in err), err
    assert "not a valid Hub repo id" in err[0] and "HF_HUB_OFFLINE" in err[3]


# ------------------------------------------------------------------- the README's examples, verbatim
#: README path → what stands for it in the test's folder (laid out like the repository after the quickstart):
#: a tiny value head on the shipped policy (conftest's `random_head_checkpoint`) for every checkpoint the
#: examples name, the shipped policy for itself. These and `README_TEXT` are the only changes to the lines.
README_PATHS = {
    "runs/demo/train/final": "checkpoint",
    "runs/quickstart/train_head/final": "checkpoint",
    "data/policies/arith-tiny": "policy",
}
#: text substitutions besides the paths, by section: the tests run on CPU (and log nowhere)
README_TEXT = {
    "Rewards for RL frameworks (TRL, OpenRLHF, verl)": {
        'device="cuda"': 'device="cpu"',
        'GRPOConfig(output_dir="runs/grpo")': 'GRPOConfig(output_dir="runs/grpo", use_cpu=True, bf16=False, report_to="none")',
    }
}
#: the README sections whose ```python blocks run here, and the names a block may use without defining them
README_SECTIONS = {"Python API": {}, "Rewards for RL frameworks (TRL, OpenRLHF, verl)": {"dataset"}}


def _readme_blocks(title: str) -> list[str]:
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"\n## {title}\n" in text, f"README has no section {title!r}"
    body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.mark.parametrize("title", list(README_SECTIONS))
def test_readme_value_examples_run_as_written(title, tmp_path, monkeypatch, capsys, random_head_checkpoint):
    import re
    import shutil

    import datasets
    import numpy as np

    from conftest import SHIPPED_POLICY

    blocks = _readme_blocks(title)
    assert blocks, f"README section {title!r} has no python example"
    sources = {"checkpoint": random_head_checkpoint, "policy": SHIPPED_POLICY}
    for readme_path, what in README_PATHS.items():
        (tmp_path / readme_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(sources[what], tmp_path / readme_path)
    monkeypatch.chdir(tmp_path)
    given = {"dataset": datasets.Dataset.from_dict({"prompt": ["Q:1+2=", "Q:3*3="]})}
    for old in README_TEXT.get(title, {}):
        assert any(old in b for b in blocks), f"README section {title!r} no longer holds {old!r}: update README_TEXT"
    for block in blocks:
        for path in re.findall(r"[\"']((?:runs|data)/[^\"']+)[\"']", block):  # every path the block reads
            assert path in README_PATHS or not path.endswith("final"), (
                f"README checkpoint {path}: add it to README_PATHS"
            )
        for old, new in README_TEXT.get(title, {}).items():
            block = block.replace(old, new)
        scope: dict = {k: v for k, v in given.items() if k in README_SECTIONS[title]}
        exec(compile(block, "README.md", "exec"), scope)  # the README's lines
        for name in ("values", "batch"):  # P̂ arrays (one, or one per completion) are probabilities
            for arr in np.atleast_2d(scope[name]) if name in scope and name == "values" else scope.get(name, []):
                assert np.all((np.asarray(arr) >= 0) & (np.asarray(arr) <= 1))
        if "trainer" in scope:  # the reward function TRL was given scores completions, in [0, 1]
            reward = scope["trainer"].reward_funcs[0]
            got = reward(prompts=["Q:1+2="], completions=["1+2=3;A:3"])
            assert len(got) == 1 and 0.0 <= got[0] <= 1.0
    capsys.readouterr()
