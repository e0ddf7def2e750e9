"""Checkpoints that travel (issue 19): portable base-model paths, the model card, the Hub (against a local
stand-in, never the network), the token-classification export, and the Python API of the README."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import prefixvalue
from prefixvalue import cli
from prefixvalue import training as train
from prefixvalue.config import ConfigError, parse_config
from prefixvalue.value import ValueModel, ValueModelConfig, build_value_model, load_value_model
from prefixvalue.value.hub import BASE_MODEL_ENV, push_to_hub

from conftest import REPO, make_tiny_gpt2, make_tiny_llama
from test_value_fixtures import random_traces, save_traces

PROMPT, COMPLETION = "Q:6-3-9*6-9=", "6-3=3;3-9=4;4*6=4;"


def code_blocks(text: str, lang: str = "python") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_tokenizer):
    """A repository-like folder: a tiny policy at data/policies/tiny, traces, and a head checkpoint trained for
    two steps at runs/demo/train/final, trained from that folder with the policy named by a relative path."""
    root = tmp_path_factory.mktemp("travel")
    policy = root / "data" / "policies" / "tiny"
    make_tiny_gpt2(len(tiny_tokenizer)).save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    save_traces(random_traces(tiny_tokenizer, n_prompts=12, per_prompt=2, seed=0), root / "runs" / "demo" / "traces")
    args = {
        "traces": "runs/demo/traces",
        "policy": "data/policies/tiny",
        "output_dir": "runs/demo/train",
        "max_steps": 2,
        "per_device_batch_size": 4,
        "lr": 5e-2,
        "warmup_steps": 0,
        "report_to": "none",
        "heldout_fraction": 0.25,
        "threads": 1,
        "value_model.kind": "head",
        "value_model.backbone": "lora",
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        train.run(parse_config(train.TrainConfig, [f"{k}={v}" for k, v in args.items()]))
    return root


def _rows(tokenizer):
    rows = random_traces(tokenizer, n_prompts=3, per_prompt=2, seed=5)
    return [r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows]


def test_checkpoint_loads_from_any_directory(demo, tmp_path, monkeypatch, tiny_tokenizer):
    ckpt = demo / "runs" / "demo" / "train" / "final"
    cfg = json.loads((ckpt / "value_config.json").read_text())
    # the relative policy path given to train is stored absolute, and relative to the checkpoint
    assert cfg["base_model"] == str(demo / "data" / "policies" / "tiny")
    assert cfg["base_model_relative"] == "../../../../data/policies/tiny"
    prompts, completions = _rows(tiny_tokenizer)
    monkeypatch.chdir(tmp_path)  # another working directory
    ref = load_value_model(ckpt).predict(prompts, completions)

    # another machine: the absolute path is gone, the checkpoint travelled with its base model
    moved = tmp_path / "elsewhere"
    shutil.copytree(demo / "data", moved / "data")
    shutil.copytree(ckpt, moved / "runs" / "demo" / "train" / "final")
    moved_ckpt = moved / "runs" / "demo" / "train" / "final"
    cfg["base_model"] = "/no/such/machine/data/policies/tiny"
    (moved_ckpt / "value_config.json").write_text(json.dumps(cfg))
    vm = load_value_model(moved_ckpt)
    assert vm.config.base_model == str(moved_ckpt / "../../../../data/policies/tiny")
    for a, b in zip(vm.predict(prompts, completions), ref):
        np.testing.assert_array_equal(a, b)

    # an old checkpoint: the base recorded relative to the repository root, no relative path
    old = dict(cfg, base_model="data/policies/tiny", base_model_relative="")
    (moved_ckpt / "value_config.json").write_text(json.dumps(old))
    monkeypatch.chdir(moved)  # the repository root, as before
    assert load_value_model(moved_ckpt).config.base_model == "data/policies/tiny"
    monkeypatch.chdir(tmp_path)  # elsewhere: found under a folder above the checkpoint
    assert load_value_model(moved_ckpt).config.base_model == str(moved / "data" / "policies" / "tiny")

    # a lone checkpoint: one line naming what is missing and how to point at it; then both ways to do so
    lone = tmp_path / "lone"
    shutil.copytree(moved_ckpt, lone)
    with pytest.raises(ConfigError) as exc:
        load_value_model(lone)
    msg = str(exc.value)
    assert "\n" not in msg and "base model data/policies/tiny" in msg and "base_model=PATH" in msg
    assert BASE_MODEL_ENV in msg
    assert cli.main(["export-model", f"checkpoint={lone}", f"out={tmp_path / 'x'}"]) == 2
    base = str(demo / "data" / "policies" / "tiny")
    np.testing.assert_array_equal(load_value_model(lone, base_model=base).predict(prompts, completions)[0], ref[0])
    monkeypatch.setenv(BASE_MODEL_ENV, base)
    np.testing.assert_array_equal(load_value_model(lone).predict(prompts, completions)[0], ref[0])
    with pytest.raises(ConfigError, match="not found"):
        ValueModel.from_pretrained(tmp_path / "no" / "such" / "checkpoint")


def test_readme_python_api_runs_as_written(demo, monkeypatch, capsys):
    block = code_blocks(section((REPO / "README.md").read_text(), "Python API"))[0]
    assert 'ValueModel.from_pretrained("runs/demo/train/final")' in block
    monkeypatch.chdir(demo)
    # the README's demo checkpoint is trained on arith traces; this stand-in's traces (no task) record line steps
    arith = '{"prompt_template": "{prompt}", "step_end": ";", "step_separator": ""}\n'
    (demo / "runs" / "demo" / "train" / "final" / "step_format.json").write_text(arith)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # exactly the README's lines
    vm, values, steps = scope["vm"], scope["values"], scope["steps"]
    assert capsys.readouterr().out.count("[") >= 3
    # score: the prompt through the checkpoint's prompt format, the completion as written
    tok = vm.tokenizer
    assert vm.prompt_format.chat_template is False and len(values) == len(COMPLETION) + 1
    expected = vm.predict([tok(PROMPT)["input_ids"]], [tok(COMPLETION)["input_ids"]])[0]
    np.testing.assert_array_equal(values, expected)
    # score_steps: P̂ after each step, TD step scores are the value's change over the step
    assert [tuple(s) for s in steps.step_spans] == [(0, 6), (6, 12), (12, 18)]
    np.testing.assert_array_equal(steps.token_values, values)
    np.testing.assert_array_equal(steps.values, values[[6, 12, 18]])
    np.testing.assert_allclose(steps.td, np.diff(values[[0, 6, 12, 18]]), atol=1e-12)
    assert steps.process is None  # a head has no process-level score
    assert type(vm).__name__ == "HeadValueModel" and prefixvalue.ValueModel is ValueModel


def test_model_card_written_by_train(demo, tmp_path, capsys):
    ckpt = tmp_path / "final"
    shutil.copytree(demo / "runs" / "demo" / "train" / "final", ckpt)
    card = (ckpt / "README.md").read_text()
    training = json.loads((ckpt / "training.json").read_text())
    assert not (ckpt / "adapter" / "README.md").exists()  # peft's empty template is gone
    assert f"`{demo / 'data' / 'policies' / 'tiny'}`" in card and "| kind | `head`" in card
    assert "| training signal | outcome |" in card and f"| {training['base_rate']:.4f} |" in card
    assert "Training-time monitors" in card and "brier_all" in card
    # the usage snippet works as written, from anywhere
    snippet = code_blocks(section(card, "Usage"))[0]
    assert repr(training["example"]["prompt"]) in snippet
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert len(scope["values"]) == len(training["example"]["completion"]) + 1
    capsys.readouterr()


@pytest.mark.slow
def test_evaluate_writes_its_metrics_with_cis_into_the_card(demo, tmp_path, tiny_tokenizer):
    from test_evaluate import _write, make_tiny_eval, run_evaluate

    ckpt = tmp_path / "final"
    shutil.copytree(demo / "runs" / "demo" / "train" / "final", ckpt)
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=4)
    tdir, ldir = _write(tmp_path, traces, labels)
    metrics = run_evaluate(
        [
            f"checkpoint={ckpt}",
            f"traces={tdir}",
            f"labels={ldir}",
            f"out={tmp_path / 'eval'}",
            "n_bootstrap=20",
            "noise_ceiling_repeats=5",
            "report_to=disk",
            "device=cpu",
            "soft_values=false",
            "include_training_prompts=true",
        ]
    )
    card = (ckpt / "README.md").read_text()
    sp = metrics["estimators"]["learned"]["spearman"]
    lo, hi = sp["ci"]
    assert f"| Spearman ρ vs MC | {sp['value']:.3f} [{lo:.3f}, {hi:.3f}] |" in card
    assert "AUROC of the final outcome" in card and "Training-time monitors" not in card
    assert json.loads((ckpt / "evaluation.json").read_text())["out"] == str(tmp_path / "eval")


class LocalHub:
    """Stand-in for ``huggingface_hub.HfApi``: repos are folders under `root`, a commit writes its files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple] = []

    def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False, token=None):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, commit_message, revision=None, token=None, repo_type=None):
        self.calls.append(("create_commit", repo_id, len(operations), commit_message))
        for op in operations:
            dest = self.root / repo_id / op.path_in_repo
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = op.path_or_fileobj
            dest.write_bytes(src if isinstance(src, bytes) else Path(src).read_bytes())


def test_push_to_hub_and_load_by_hub_id(demo, tmp_path, monkeypatch, tiny_tokenizer):
    import huggingface_hub

    ckpt = demo / "runs" / "demo" / "train" / "final"
    before = {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}
    hub = LocalHub(tmp_path / "hub")
    res = push_to_hub(ckpt, "someone/arith-value", private=True, api=hub)
    assert hub.calls[0] == ("create_repo", "someone/arith-value", True, True) and hub.calls[1][0] == "create_commit"
    assert {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()} == before  # the local folder is unchanged
    repo = tmp_path / "hub" / "someone" / "arith-value"
    assert sorted(res.files) == sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    assert {"value_config.json", "head.safetensors", "adapter/adapter_model.safetensors", "README.md"} <= set(res.files)
    assert "ValueModel.from_pretrained('someone/arith-value')" in (repo / "README.md").read_text()

    asked = []

    def fake_snapshot_download(repo_id, revision=None, token=None, **kw):
        asked.append((repo_id, revision))
        return str(tmp_path / "hub" / repo_id)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)
    prompts, completions = _rows(tiny_tokenizer)
    vm = ValueModel.from_pretrained("someone/arith-value", revision="v1")
    assert asked == [("someone/arith-value", "v1")] and vm.source == repo
    for a, b in zip(vm.predict(prompts, completions), load_value_model(ckpt).predict(prompts, completions)):
        np.testing.assert_array_equal(a, b)

    # the command line, with the stand-in in place of HfApi
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: hub)
    assert cli.main(["push-model", f"checkpoint={ckpt}", "repo_id=someone/cli"]) == 0
    assert (tmp_path / "hub" / "someone" / "cli" / "head.safetensors").is_file()
    assert cli.main(["push-model", f"checkpoint={tmp_path}", "repo_id=someone/cli"]) == 2  # not a checkpoint

    # a loaded model pushes itself (saved to a temporary folder first), card records included
    res2 = vm.push_to_hub("someone/again", api=hub)
    assert "training.json" in res2.files and "tokenizer.json" in res2.files

    def offline(repo_id, **kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache and outgoing traffic is disabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ConfigError, match="value checkpoint 'someone/missing'.* cache"):
        ValueModel.from_pretrained("someone/missing")


def _perturbed(model):
    """Make a fresh value model predict something other than a constant (LoRA B and the head are zero)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("head."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def test_export_matches_prefixvalue_with_plain_transformers(demo, tmp_path, tiny_tokenizer, capsys):
    from transformers import AutoModelForTokenClassification

    ckpt = demo / "runs" / "demo" / "train" / "final"
    out = tmp_path / "tc"
    assert cli.main(["export-model", f"checkpoint={ckpt}", f"out={out}"]) == 0
    assert "max |ΔP̂| vs prefixvalue" in capsys.readouterr().out
    prompts, completions = _rows(tiny_tokenizer)
    exported = {"gpt2-lora": (out, load_value_model(ckpt))}
    # a Llama-style backbone (the classifier is `score`) with a fully trained backbone
    llama = make_tiny_llama(len(tiny_tokenizer))
    vm = _perturbed(build_value_model(ValueModelConfig(kind="head", backbone="full", base_rate=0.3), llama))
    vm.tokenizer = tiny_tokenizer
    prefixvalue.export_token_classification(vm, tmp_path / "tc-llama")
    exported["llama-full"] = (tmp_path / "tc-llama", vm)
    for name, (folder, model) in exported.items():
        tc = AutoModelForTokenClassification.from_pretrained(str(folder))  # plain transformers, nothing else
        assert tc.config.id2label == {0: "wrong", 1: "correct"}
        ours = model.predict(prompts, completions)
        for p, c, v in zip(prompts, completions, ours):
            with torch.no_grad():
                logits = tc(input_ids=torch.tensor([p + c])).logits[0].double()
            theirs = logits.softmax(-1)[len(p) - 1 :, 1].numpy()
            assert np.abs(theirs - v).max() < 2e-6, name
    # the exported README's snippet runs as written and gives the same values
    snippet = code_blocks((out / "README.md").read_text())[0]
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    ex = json.loads((ckpt / "training.json").read_text())["example"]
    np.testing.assert_allclose(
        scope["values"].numpy(), load_value_model(ckpt).score(ex["prompt"], ex["completion"]), atol=2e-6
    )
    # what a token classifier cannot express (a soft prompt) is refused in one line
    soft = ValueModelConfig(kind="implicit", base_rate=0.3, backbone="frozen", soft_prompt_tokens=2)
    implicit = build_value_model(soft, make_tiny_gpt2(len(tiny_tokenizer)))
    with pytest.raises(ConfigError, match="soft prompt"):
        prefixvalue.export_token_classification(implicit, tmp_path / "no")


def test_implicit_model_in_plain_transformers_and_peft(tmp_path, tiny_tokenizer):
    """docs/design.md's plain transformers + peft code gives the implicit model's P̂."""
    policy = tmp_path / "policy"
    make_tiny_gpt2(len(tiny_tokenizer)).save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    vm = _perturbed(build_value_model(ValueModelConfig(kind="implicit", base_model=str(policy), base_rate=0.3)))
    vm.tokenizer = tiny_tokenizer
    checkpoint = str(tmp_path / "ckpt")
    vm.save_pretrained(checkpoint)
    design = (REPO / "docs" / "design.md").read_text()
    block = code_blocks(design.split("### The implicit model with plain transformers and peft\n", 1)[1])[0]
    scope = {"checkpoint": checkpoint, "prompt": PROMPT, "completion": COMPLETION}
    exec(compile(block, "design.md", "exec"), scope)
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert "| β | 10.000 |" in card and "| readout, loss | mean, prefix" in card
    loaded = load_value_model(checkpoint)
    np.testing.assert_allclose(scope["values"].double().numpy(), loaded.score(PROMPT, COMPLETION), atol=1e-6)
    steps = loaded.score_steps(PROMPT, ["6-3=3;", "3-9=4;", "4*6=4;"], prompt_template="{prompt}", step_separator="")
    from prefixvalue.evaluation.stepscores import process_step_scores

    ratios = loaded.token_log_ratios(*[[x] for x in loaded.encode(PROMPT, COMPLETION)])[0]
    np.testing.assert_array_equal(steps.process, process_step_scores(ratios, steps.step_spans, 10.0))


def test_top_level_exports_are_lazy():
    import subprocess
    import sys

    code = "import sys, prefixvalue, prefixvalue.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # the package and the command line start without torch
    assert set(prefixvalue.__all__) >= {"ValueModel", "load_value_model", "push_to_hub", "export_token_classification"}
    for name in prefixvalue.__all__[1:]:
        assert prefixvalue.__getattr__(name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        prefixvalue.__getattr__("nothing")
