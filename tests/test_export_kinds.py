"""Exports every value-model kind can use (issue 34, item 3): two-label token classifiers that plain transformers
loads (a standard class for the plain head, ``modeling_prefixvalue.py`` with trust_remote_code for the other
kinds), scored on ProcessBench-format step data to the toolkit's values, and LoRA adapters whose base path peft
finds from any working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prefixvalue import cli
from prefixvalue.data.steps import StepExample, prefix_step_scores, tokenize_step_example
from prefixvalue.value import ValueModelConfig, build_value_model, load_value_model
from prefixvalue.value.export import export_token_classification

from conftest import make_tiny_gpt2, make_tiny_llama

#: ProcessBench-format examples (problem, steps, label), scored as evaluate scores step data
EXAMPLES = [
    StepExample("0", "Q:6-3-9*6-9=", ["6-3=3", "3-9=4", "4*6=4", "A:4"], 1, "g0", {}),
    StepExample("1", "Q:1+2=", ["1+2=3", "A:3"], -1, "g1", {}),
    StepExample("2", "Q:7*7-5=", ["7*7=9", "9-5=4"], 0, "g2", {}),
]

#: the kinds (and options) whose export carries modeling_prefixvalue.py
REMOTE_KINDS = {
    "head-policy-features-lora": dict(kind="head", policy_features=True),
    "head-policy-features-full": dict(kind="head", policy_features=True, backbone="full"),
    "head-inner-layer-frozen": dict(kind="head", backbone="frozen", head_layer=1),
    "qhead-lora": dict(kind="qhead", q_top_k=8),
    "qhead-frozen-all-tokens": dict(kind="qhead", backbone="frozen", q_top_k=0),
    "implicit-lora": dict(kind="implicit", prior_tokens=2.0),
    "implicit-sum": dict(kind="implicit", readout="sum"),
    "implicit-sequence": dict(kind="implicit", loss="sequence"),
}


def _value_model(tokenizer, arch: str = "gpt2", **options):
    """A fresh value model of `options` whose heads, adapters (and a fully trained backbone) are perturbed, so that
    every term of its value is non-zero."""
    make = make_tiny_gpt2 if arch == "gpt2" else make_tiny_llama
    vm = build_value_model(ValueModelConfig(base_rate=0.3, **options), make(len(tokenizer)))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in vm.named_parameters():
            if "lora_B" in name or name.startswith(("head.", "feature_head.", "q_features.", "q_token.")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif options.get("backbone") == "full" and name.startswith("lm."):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)  # the trained backbone differs from π_ref
    vm.tokenizer = tokenizer
    return vm.eval()


def _step_rows(vm) -> tuple[list[list[int]], list[list[int]], list[list[tuple[int, int]]]]:
    rows = [tokenize_step_example(vm.tokenizer, ex, prompt_format=vm.prompt_format) for ex in EXAMPLES]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _first_error(step_values) -> int:
    """ProcessBench's prediction from per-step values: the first step judged wrong (P̂ <= 0.5), −1 when none."""
    wrong = [j for j, v in enumerate(step_values) if v <= 0.5]
    return wrong[0] if wrong else -1


def test_plain_head_exports_two_labels_for_pipeline_and_trl_style_processbench(tmp_path, tiny_tokenizer):
    """A plain head (GPT-2 with LoRA, Llama fully trained) is a standard class with labels wrong / correct:
    softmax(logits)[..., 1] is P̂, argmax at each step's last token is TRL's PRM reading, and transformers'
    pipeline scores the argmax label with P̂ (not 1.0 everywhere)."""
    from transformers import AutoModelForTokenClassification, pipeline

    for arch, backbone in (("gpt2", "lora"), ("llama", "full")):
        vm = _value_model(tiny_tokenizer, arch, kind="head", backbone=backbone)
        out = export_token_classification(vm, tmp_path / arch)
        assert not (out / "modeling_prefixvalue.py").exists()
        tc = AutoModelForTokenClassification.from_pretrained(str(out)).eval()
        assert tc.config.id2label == {0: "wrong", 1: "correct"}
        prompts, completions, spans = _step_rows(vm)
        ours = vm.predict(prompts, completions)
        for p, c, s, v in zip(prompts, completions, spans, ours):
            with torch.no_grad():
                logits = tc(input_ids=torch.tensor([p + c])).logits[0].double()
            theirs = logits.softmax(-1)[len(p) - 1 :, 1].numpy()
            np.testing.assert_allclose(theirs, v, atol=1e-5)
            # TRL-style PRM evaluation: the argmax label at each step's last token
            at_steps = [len(p) - 1 + s1 for _, s1 in s]
            argmax = logits[at_steps].argmax(-1).tolist()
            predicted = argmax.index(0) if 0 in argmax else -1
            assert predicted == _first_error(prefix_step_scores(v, s))
        text = EXAMPLES[0].prompt + "\n" + "\n".join(EXAMPLES[0].steps)
        tokens = pipeline("token-classification", model=str(out))(text)
        ids = tiny_tokenizer(text)["input_ids"]
        values = vm.predict([ids[:1]], [ids[1:]])[0]  # the head's value at a token does not depend on the prompt
        got = [t["score"] if t["entity"] == "correct" else 1 - t["score"] for t in tokens]
        assert {t["entity"] for t in tokens} <= {"wrong", "correct"} and len(got) == len(values)
        np.testing.assert_allclose(got, values, atol=1e-5)


SCORER = r"""
import importlib.abc, json, sys
class NoPrefixvalue(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "prefixvalue":
            raise ImportError("prefixvalue must not be imported by an export")
sys.meta_path.insert(0, NoPrefixvalue())
sys.path = [p for p in sys.path if "prefixvalue" not in p and not p.endswith("/src")]
import torch
from transformers import AutoModelForTokenClassification

jobs = json.load(open(sys.argv[1]))
result = {}
for name, job in jobs.items():
    model = AutoModelForTokenClassification.from_pretrained(job["folder"], trust_remote_code=True).eval()
    rows = list(zip(job["prompts"], job["completions"]))
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, c) in enumerate(rows):  # one right-padded batch
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, : len(p) + len(c)] = 1
    lengths = torch.tensor([len(p) for p, _ in rows])
    with torch.no_grad():
        probs = model(input_ids=ids, attention_mask=mask, prompt_lengths=lengths).logits.softmax(-1)[..., 1]
    values = [probs[i, len(p) - 1 : len(p) + len(c)].tolist() for i, (p, c) in enumerate(rows)]
    try:
        model(input_ids=ids[:1])
        refused = ""
    except ValueError as exc:
        refused = str(exc)
    scope = {}
    exec(compile(job["snippet"], "README.md", "exec"), scope)
    result[name] = {"values": values, "refused": refused, "snippet": scope["values"].tolist()}
result["imported"] = sorted(m for m in sys.modules if m.split(".")[0] == "prefixvalue")
open("scores.json", "w").write(json.dumps(result))
"""


def _score_elsewhere(jobs: dict, tmp_path: Path) -> dict:
    """Score `jobs` in a fresh interpreter started in another directory, with prefixvalue unimportable."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "jobs.json").write_text(json.dumps(jobs))
    (other / "score.py").write_text(SCORER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "score.py", "jobs.json"], cwd=other, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((other / "scores.json").read_text())


@pytest.mark.slow
def test_every_kind_exports_and_scores_processbench_data_in_plain_transformers(tmp_path, tiny_tokenizer):
    """Heads with policy features or on an inner layer, Q-heads and implicit models export with
    modeling_prefixvalue.py: loaded with trust_remote_code in another directory, without prefixvalue, they give
    `ValueModel.predict`'s values on ProcessBench-format step data (one padded batch) to 1e-5, and so does the
    README's snippet; without prompt_lengths they say what is missing."""
    jobs, expected = {}, {}
    for name, options in REMOTE_KINDS.items():
        vm = _value_model(tiny_tokenizer, **options)
        out = export_token_classification(vm, tmp_path / name)
        assert (out / "modeling_prefixvalue.py").is_file()
        config = json.loads((out / "config.json").read_text())
        assert config["auto_map"]["AutoModelForTokenClassification"].startswith("modeling_prefixvalue.")
        readme = (out / "README.md").read_text()
        assert "trust_remote_code=True" in readme and "prompt_lengths=torch.tensor" in readme
        snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
        prompts, completions, spans = _step_rows(vm)
        jobs[name] = {"folder": str(out), "prompts": prompts, "completions": completions, "snippet": snippet}
        # without a training record the snippet scores its placeholder texts
        expected[name] = (vm.predict(prompts, completions), spans, vm.score("PROMPT TEXT", "COMPLETION TEXT"))
    got = _score_elsewhere(jobs, tmp_path)
    assert got.pop("imported") == []
    for name, (ours, spans, snippet_values) in expected.items():
        for theirs, v, s in zip(got[name]["values"], ours, spans):
            np.testing.assert_allclose(theirs, v, atol=1e-5, err_msg=name)
            assert _first_error(prefix_step_scores(np.array(theirs), s)) == _first_error(prefix_step_scores(v, s))
        np.testing.assert_allclose(got[name]["snippet"], snippet_values, atol=1e-5, err_msg=name)
        # a plain head on an inner layer reads no completion sums: it needs no prompt_lengths
        assert ("prompt_lengths" in got[name]["refused"]) == (name != "head-inner-layer-frozen")


def test_export_model_command_on_implicit_and_policy_feature_checkpoints(tmp_path, tiny_tokenizer, capsys):
    """`prefixvalue export-model` writes implicit and policy-feature heads (it refused both), says the export needs
    trust_remote_code, and the checkpoints' cards show how each export loads."""
    policy = tmp_path / "policy"
    make_tiny_gpt2(len(tiny_tokenizer)).save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    for name, options in (("implicit", dict(kind="implicit")), ("pf", dict(kind="head", policy_features=True))):
        vm = _value_model(tiny_tokenizer, **options)
        vm.config.base_model = str(policy)
        ckpt = vm.save_pretrained(tmp_path / f"ckpt-{name}")
        card = (ckpt / "README.md").read_text()
        assert "trust_remote_code=True" in card and "softmax(-1)[0, :, 1]" in card
        out = tmp_path / f"out-{name}"
        assert cli.main(["export-model", f"checkpoint={ckpt}", f"out={out}"]) == 0
        said = capsys.readouterr().out
        assert "max |ΔP̂| vs prefixvalue" in said and "trust_remote_code=True" in said
        diff = float(said.split("prefixvalue: ", 1)[1].split(")", 1)[0])
        assert diff < 1e-5
        assert (out / "modeling_prefixvalue.py").is_file()
    head = _value_model(tiny_tokenizer, kind="head")
    head.config.base_model = str(policy)
    card = (head.save_pretrained(tmp_path / "ckpt-head") / "README.md").read_text()
    assert 'pipeline("token-classification"' in card and "trust_remote_code" not in card


def test_adapter_records_a_base_path_peft_finds_from_any_directory(tmp_path, tiny_tokenizer, monkeypatch):
    """A LoRA checkpoint saved with its base named by a relative path records the absolute one in
    adapter/adapter_config.json, so peft's AutoPeftModel loads the adapter from another working directory."""
    from peft import AutoPeftModelForCausalLM

    repo = tmp_path / "repo"
    make_tiny_gpt2(len(tiny_tokenizer)).save_pretrained(repo / "data" / "policy")
    tiny_tokenizer.save_pretrained(repo / "data" / "policy")
    monkeypatch.chdir(repo)
    vm = build_value_model(ValueModelConfig(kind="implicit", base_model="data/policy", base_rate=0.3))
    vm.tokenizer = tiny_tokenizer
    ckpt = vm.save_pretrained("runs/ckpt")
    recorded = json.loads((ckpt / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(repo / "data" / "policy")
    monkeypatch.chdir(tmp_path)
    model = AutoPeftModelForCausalLM.from_pretrained(str(repo / "runs" / "ckpt" / "adapter"))
    ids = torch.tensor([[5, 6, 7]])
    reference = load_value_model(repo / "runs" / "ckpt").lm
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)


@pytest.mark.parametrize("options", [dict(kind="head", soft_prompt_tokens=2, backbone="frozen")])
def test_soft_prompts_are_refused_in_one_line(tmp_path, tiny_tokenizer, options):
    from prefixvalue.config import ConfigError

    vm = _value_model(tiny_tokenizer, **options)
    with pytest.raises(ConfigError, match="soft prompt"):
        export_token_classification(vm, tmp_path / "no")
