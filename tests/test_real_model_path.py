"""What a real pretrained model needs, on tiny models (the SmolLM2 run itself is tests/test_smollm2.py, slow):
chat templates, policy/trace agreement, finish reasons, loading options, the implicit model's short-prefix prior.

pytest tests/test_real_model_path.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_collect_label import collect_args

from prefixvalue import cli
from prefixvalue.config import ConfigError
from prefixvalue.data import load_labels, load_traces
from prefixvalue.loading import LoadOptions, resolve_model_path, traces_policy
from prefixvalue.prompting import PromptFormat, choose_prompt_format
from prefixvalue.stages import collect, label, train
from prefixvalue.tasks import TASKS, ArithTask, VerifierResult
from prefixvalue.value import ValueModelConfig, build_value_model

from conftest import make_tiny_gpt2, make_tiny_llama

#: a chat template the character tokenizer can spell (no special tokens needed)
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}S:{{ m['content'] }}\n"
    "{% else %}U:{{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
)


def _model_dir(path, seed=3, chat=False, llama=False):
    from prefixvalue.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    (make_tiny_llama if llama else make_tiny_gpt2)(len(tok), seed=seed).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _collect(model_dir, out, **kw):
    """`prefixvalue collect` of arith on `model_dir` (test_collect_label's arguments, 12 tokens, 3 prompts a shard)."""
    args = collect_args(model_dir, out, **{"max_new_tokens": 12, "chunk_prompts": 3, **kw})
    assert cli.main(["collect", *args]) == 0
    return load_traces(out)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return _model_dir(tmp_path_factory.mktemp("chat") / "m", chat=True)


# ---------------------------------------------------------------------------------- chat template
def test_collect_applies_the_chat_template_by_default_and_records_it(tmp_path, chat_dir):
    from prefixvalue.policies import load_tokenizer

    tok = load_tokenizer(str(chat_dir))
    ds = _collect(chat_dir, tmp_path / "t", system_prompt="Be exact.")
    row = ds[0]
    templated = f"S:Be exact.\nU:{row['prompt']}\nA:"
    assert row["prompt_ids"] == tok(templated, add_special_tokens=False)["input_ids"]
    assert "U:" not in row["prompt"]  # the user-facing text stays the task's prompt
    assert PromptFormat.from_json(row["prompt_format"]) == PromptFormat(True, "Be exact.")
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["prompt_format"]["chat_template"] is True

    raw = _collect(chat_dir, tmp_path / "raw", chat_template="false")
    assert raw[0]["prompt_ids"] == tok(raw[0]["prompt"], add_special_tokens=False)["input_ids"]
    assert PromptFormat.from_json(raw[0]["prompt_format"]) == PromptFormat(False, None)


def test_prompt_format_choices_are_checked(tmp_path, chat_dir):
    from prefixvalue.policies import load_tokenizer

    plain = load_tokenizer(str(_model_dir(tmp_path / "plain")))
    assert choose_prompt_format(plain, None, None) == PromptFormat(False, None)  # auto: no template, raw text
    with pytest.raises(ConfigError, match="no chat template"):
        choose_prompt_format(plain, True, None)
    with pytest.raises(ConfigError, match="system_prompt"):
        choose_prompt_format(plain, None, "hi")
    chat = load_tokenizer(str(chat_dir))
    assert choose_prompt_format(chat, None, None) == PromptFormat(True, None)


def test_step_data_is_tokenised_with_the_checkpoints_prompt_format(chat_dir):
    from prefixvalue.evaluation.stepscores import StepExample, tokenize_step_example
    from prefixvalue.policies import load_tokenizer

    tok = load_tokenizer(str(chat_dir))
    ex = StepExample("e", "1+2=?", ["1+2=3"], -1, "e", {})
    p_raw, _, _ = tokenize_step_example(tok, ex)
    p_chat, _, _ = tokenize_step_example(tok, ex, prompt_format=PromptFormat(True, None))
    assert tok.decode(p_raw) == "1+2=?\n" and tok.decode(p_chat) == "U:1+2=?\n\nA:"


# ------------------------------------------------------------------------- policy and traces agree
def test_train_takes_the_policy_from_the_traces_and_refuses_another(tmp_path, chat_dir, capsys):
    traces = tmp_path / "t"
    _collect(chat_dir, traces, num_prompts=10)
    common = [f"traces={traces}", "max_steps=2", "eval_every=1", "per_device_batch_size=4", "report_to=none"]
    other = _model_dir(tmp_path / "other", seed=9)  # same vocabulary, another model
    capsys.readouterr()
    code = cli.main(["train", *common, f"policy={other}", f"output_dir={tmp_path / 'x'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not the model that wrote the traces" in err[0]

    result = train.run(train.TrainConfig(**_cfg(common), out=str(tmp_path / "ok")))  # default: the traces'
    saved = ValueModelConfig.from_dict(json.loads((tmp_path / "ok" / "final" / "value_config.json").read_text()))
    assert saved.base_model == str(chat_dir) and result["step"] == 2
    fmt = json.loads((tmp_path / "ok" / "final" / "prompt_format.json").read_text())
    assert fmt == {"chat_template": True, "system_prompt": None}


def _cfg(args):
    out = {}
    for a in args:
        k, v = a.split("=", 1)
        out[k] = int(v) if v.isdigit() else v
    return out


def test_a_vocabulary_mismatch_is_one_clear_line(tmp_path, chat_dir):
    from prefixvalue.policies import check_vocabulary
    from prefixvalue.tokenizer import build_char_tokenizer

    ds = _collect(chat_dir, tmp_path / "t")
    check_vocabulary(build_char_tokenizer(), ds, "train")  # the same tokenizer reads them
    small = build_char_tokenizer("0123456789+-*=;A:Q")
    with pytest.raises(ConfigError, match="vocabularies disagree|not the one that wrote"):
        check_vocabulary(small, ds, "train")
    with pytest.raises(ConfigError, match="vocabulary has 10 tokens"):
        check_vocabulary(build_char_tokenizer(), ds, "evaluate", vocab_size=10)


def test_traces_policy_defaults_and_recorded_load_options(tmp_path, chat_dir):
    ds = _collect(chat_dir, tmp_path / "t")
    name, opts = traces_policy(ds, None, LoadOptions(), False, "label")
    assert name == str(chat_dir) and opts == LoadOptions()
    rec = ds.map(lambda r: {"model_load": json.dumps({"revision": "v1", "gguf_file": "m.gguf"})})
    _, opts = traces_policy(rec, None, LoadOptions(trust_remote_code=True), False, "label")
    assert opts == LoadOptions(revision="v1", trust_remote_code=True, gguf_file="m.gguf")
    _, opts = traces_policy(rec, None, LoadOptions(revision="v2"), False, "label")
    assert opts.revision == "v2"  # what the user gives wins over the record
    name, _ = traces_policy(ds, "elsewhere", LoadOptions(), True, "label")
    assert name == "elsewhere"


# ------------------------------------------------------------------------------- finish reasons
class AlwaysRight(ArithTask):
    """A verifier that accepts anything: what a lenient `last_number` does to a cut-off completion."""

    name = "always-right"

    def verify(self, prompt, completion):
        return VerifierResult(1.0)


def test_cut_off_completions_fail_by_default_with_the_reason(tmp_path, chat_dir, monkeypatch):
    monkeypatch.setitem(TASKS, "always-right", AlwaysRight)
    ds = _collect(chat_dir, tmp_path / "t", task="always-right", max_new_tokens=6)
    cut = [r for r in ds if r["finish_reason"] == "length"]
    done = [r for r in ds if r["finish_reason"] != "length"]
    assert cut and all(r["outcome"] == 0.0 and r["outcome_note"].startswith("truncated") for r in cut)
    assert all(r["outcome"] == 1.0 and r["outcome_note"] is None for r in done)
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["finish_reasons"]["length"] == len(cut) and summary["failed_as_truncated"] == len(cut)

    lenient = _collect(chat_dir, tmp_path / "l", task="always-right", max_new_tokens=6, fail_truncated="false")
    assert all(r["outcome"] == 1.0 for r in lenient)

    # label continues the traces under the rule they were collected with: a cut-off continuation scores 0
    out = tmp_path / "lab"
    args = [f"traces={tmp_path / 't'}", "positions=all", "samples=4", "prompts=all", f"out={out}", "progress=false"]
    assert label.main(args) == 0
    cost = json.loads((out / "cost.json").read_text())
    labels = load_labels(out)
    assert cost["truncated"] > 0 and max(labels["mean"]) < 1.0  # every verification passes; truncation fails
    assert label.main([*args[:-2], f"out={tmp_path / 'lab2'}", "progress=false"]) == 0


# ------------------------------------------------------------------------------- loading options
def test_a_gguf_path_is_its_folder_plus_gguf_file(tmp_path):
    f = tmp_path / "m" / "model.Q4.gguf"
    f.parent.mkdir()
    f.write_bytes(b"GGUF")
    name, opts = resolve_model_path(str(f), LoadOptions(revision="r"))
    assert name == str(f.parent) and opts == LoadOptions(revision="r", gguf_file="model.Q4.gguf")
    assert resolve_model_path("org/model")[0] == "org/model"
    with pytest.raises(ConfigError, match="not found"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    kw = LoadOptions(gguf_file="a.gguf", attn_implementation="eager").model_kwargs()
    assert kw == {"trust_remote_code": False, "gguf_file": "a.gguf", "attn_implementation": "eager"}
    assert LoadOptions(trust_remote_code=True, device_map="auto").record() == {}  # never carried downstream


def test_every_stage_takes_the_loading_options():
    from prefixvalue.stages.evaluate import EvaluateConfig
    from prefixvalue.stages.quickstart import QuickstartConfig

    for cls in (collect.CollectConfig, label.LabelConfig, train.TrainConfig, EvaluateConfig, QuickstartConfig):
        names = {f.name for f in __import__("dataclasses").fields(cls)}
        assert {"revision", "trust_remote_code", "attn_implementation", "device_map", "gguf_file"} <= names, cls
    with pytest.raises(ConfigError, match="device_map"):
        train.TrainConfig(traces="x", device_map="auto")


# ------------------------------------------------------------------ implicit model at short prefixes
def test_prior_tokens_shrink_short_prefixes_toward_the_base_rate(tiny_tokenizer):
    paper = build_value_model(
        ValueModelConfig(kind="implicit", base_rate=0.02, margin=0.0), make_tiny_llama(len(tiny_tokenizer))
    )
    with torch.no_grad():
        for n, p in paper.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # an adapted model: non-zero log-ratios
    shrunk = build_value_model(
        ValueModelConfig(kind="implicit", base_rate=0.02, margin=0.0, prior_tokens=8),
        make_tiny_llama(len(tiny_tokenizer)),
    )
    shrunk.load_state_dict(paper.state_dict())
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    mask = torch.ones_like(ids)
    plen = torch.tensor([3])
    with torch.no_grad():
        z0, z8 = paper(ids, mask, plen), shrunk(ids, mask, plen)
    v = z0[0, 1:] * torch.arange(1, 6)  # V_φ(p) = p · v̄(p) under the paper's readout
    b = math.log(0.02 / 0.98)
    torch.testing.assert_close(z8[0, 1:], (v + 8 * b) / (torch.arange(1, 6) + 8))
    assert float(z8[0, 0]) == float(z0[0, 0]) == pytest.approx(b)
    assert abs(z8[0, 1] - b) < abs(z0[0, 1] - b)  # the first token moves P̂ less
    with pytest.raises(ValueError, match="prior_tokens"):
        build_value_model(ValueModelConfig(kind="head", prior_tokens=2), make_tiny_llama(len(tiny_tokenizer)))
