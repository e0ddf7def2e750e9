"""Checker features (issue 31, item 2): a second frozen causal LM whose log-probabilities of the written tokens join
the head's policy features (``value_model.checker``; docs/design.md, "Checker features"); and the policy recipe's
``epochs``, which trains such a checker longer on the same prompts; and ``advantages split=validation``, which
scores candidate values on the validation prompts where a choice among checkpoints is made.

pytest tests/test_checker.py
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from prefixvalue import cli
from prefixvalue.config import ConfigError
from prefixvalue.data.split import SplitRecord
from prefixvalue.studies.actions import heldout_under
from prefixvalue.studies.advantages import AdvantagesConfig
from prefixvalue.tasks import ArithConfig, ArithTask
from prefixvalue.tokenizer import build_char_tokenizer
from prefixvalue.value import ValueModelConfig, build_value_model, load_value_model
from prefixvalue.value.head import HeadValueModel

from conftest import make_tiny_gpt2
from test_arith import TINY_POLICY_RUN
from test_value_fixtures import collated, random_traces, save_traces


@pytest.fixture(scope="module")
def rows(tiny_tokenizer):
    return random_traces(tiny_tokenizer, n_prompts=4, per_prompt=2, seed=3)


def _written_features(lm, batch) -> list[np.ndarray]:
    """Per row: [clen + 1, 3] sum, minimum and last of lm's floored log-probabilities of the written tokens."""
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=batch["input_ids"]).logits.double(), -1)
    out = []
    for i, (plen, clen) in enumerate(zip(batch["prompt_lengths"].tolist(), batch["completion_lengths"].tolist())):
        ids = batch["input_ids"][i]
        lp = [max(float(logp[i, plen - 1 + t, ids[plen + t]]), -30.0) for t in range(clen)]
        out.append(np.array([[0.0, 0.0, 0.0]] + [[sum(lp[: p + 1]), min(lp[: p + 1]), lp[p]] for p in range(clen)]))
    return out


@pytest.mark.parametrize("feature_head", ["linear", "mlp"])
def test_checker_features_follow_the_policy_features(feature_head, rows, tiny_tokenizer):
    """[B, P, 6]: π_ref's three, then the checker's; the checker is frozen, without dropout, one more pass."""
    checker = make_tiny_gpt2(len(tiny_tokenizer), seed=7)
    checker.config.resid_pdrop = 0.1
    cfg = ValueModelConfig(kind="head", policy_features=True, feature_head=feature_head, checker="a checker")
    model = build_value_model(cfg, make_tiny_gpt2(len(tiny_tokenizer)), checker=checker)
    plain = build_value_model(
        ValueModelConfig(kind="head", policy_features=True, feature_head=feature_head),
        make_tiny_gpt2(len(tiny_tokenizer)),
    )
    assert model.forward_passes == 3 and plain.forward_passes == 2
    if feature_head == "mlp":
        assert model.feature_mlp[0].in_features == 1 + 9 and plain.feature_mlp[0].in_features == 1 + 5
    else:
        assert model.feature_head.in_features == 6
    assert not any(p.requires_grad for p in model.checker_lm.parameters())
    assert not any(p is q for p in model.trainable_parameters() for q in model.checker_lm.parameters())
    model.train()  # dropout zeroed: the checker's features do not change in train mode
    batch, args = collated(rows)
    feats = model.policy_features(*args)
    assert feats.shape[-1] == 6
    np.testing.assert_array_equal(feats[..., :3].numpy(), plain.policy_features(*args).numpy())
    for i, want in enumerate(_written_features(make_tiny_gpt2(len(tiny_tokenizer), seed=7), batch)):
        np.testing.assert_allclose(feats[i, : len(want), 3:].double().numpy(), want, atol=1e-4)
    # the checker's features move the value once the feature weights are non-zero
    with torch.no_grad():
        if feature_head == "mlp":
            for p in model.feature_mlp.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.3)
        else:
            model.feature_head.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.5, 0.5]]))
        z = model(*args)
        model.checker_lm.transformer.wte.weight.mul_(3.0)
        assert not torch.allclose(z, model(*args))


def test_a_checker_needs_the_policy_features_and_the_policys_vocabulary(tiny_tokenizer):
    checker = make_tiny_gpt2(len(tiny_tokenizer), seed=7)
    with pytest.raises(ValueError, match="set policy_features=true"):
        build_value_model(
            ValueModelConfig(kind="head", checker="c"), make_tiny_gpt2(len(tiny_tokenizer)), checker=checker
        )
    with pytest.raises(ValueError, match="the implicit model has none"):
        build_value_model(ValueModelConfig(kind="implicit", checker="c"), make_tiny_gpt2(len(tiny_tokenizer)))
    cfg = ValueModelConfig(kind="head", policy_features=True, checker="other")
    with pytest.raises(ValueError, match="share the policy's tokenizer"):
        HeadValueModel(cfg, make_tiny_gpt2(len(tiny_tokenizer)), checker=make_tiny_gpt2(len(tiny_tokenizer) + 3))


def test_qhead_reads_the_checker_for_the_state_and_every_candidate(rows, tiny_tokenizer, tmp_path):
    """Q's features: the policy's five, then the checker's five (f of s, ℓ_y, min(f_min, ℓ_y)); the candidates' values
    move with the checker's log-probability of each candidate; saved and loaded exactly."""
    make_tiny_gpt2(len(tiny_tokenizer), seed=7).save_pretrained(tmp_path / "checker")
    cfg = ValueModelConfig(kind="qhead", base_model="unused", checker=str(tmp_path / "checker"))
    model = build_value_model(cfg, make_tiny_gpt2(len(tiny_tokenizer)))
    assert model.q_features.in_features == 10 and model.forward_passes == 3
    batch, args = collated(rows)
    st = model._state(*args)
    assert st["f_checker"].shape == st["f"].shape and st["logp_checker"].shape == st["logp"].shape
    with torch.no_grad():
        logp = torch.log_softmax(model.checker_lm(input_ids=args[0]).logits.double(), -1)
    for i, want in enumerate(_written_features(model.checker_lm, batch)):
        np.testing.assert_allclose(st["f_checker"][i, : len(want)].double().numpy(), want, atol=1e-4)
        plen = int(args[2][i])
        np.testing.assert_allclose(st["logp_checker"][i, 0].double().numpy(), logp[i, plen - 1].numpy(), atol=1e-5)
    cand = torch.arange(5)[None, None, :].expand(args[0].shape[0], st["h"].shape[1], -1)
    with torch.no_grad():
        model.q_features.weight.copy_(torch.tensor([[0.0] * 5 + [0.0, 0.0, 0.0, 1.0, 0.0]]))  # ℓ_y under the checker
        q = model._q_logits(st, cand) - model.head(st["h"])  # W = 0: no token term
    np.testing.assert_allclose(q.numpy(), st["logp_checker"].gather(-1, cand).clamp_min(-30.0).numpy(), atol=1e-5)
    assert any("checker" in key for key, _ in type(model).card_rows(cfg))
    prompts, completions = [r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows]
    before = model.predict(prompts, completions)
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    loaded = load_value_model(ckpt, base_model=make_tiny_gpt2(len(tiny_tokenizer)))
    for a, b in zip(before, loaded.predict(prompts, completions)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_checker_travels_with_the_checkpoint(rows, tiny_tokenizer, tmp_path):
    """Recorded as the base model is (absolute, and relative to the checkpoint); a moved pair loads through the
    relative path, a missing checker is one line naming it; the card names the checker."""
    work = tmp_path / "work"
    make_tiny_gpt2(len(tiny_tokenizer), seed=7).save_pretrained(work / "checker")
    cfg = ValueModelConfig(
        kind="head", policy_features=True, feature_head="mlp", base_model="unused", checker=str(work / "checker")
    )
    model = build_value_model(cfg, make_tiny_gpt2(len(tiny_tokenizer)))  # loads the checker from its path
    with torch.no_grad():
        for p in model.feature_mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    prompts, completions = [r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows]
    before = model.predict(prompts, completions)
    ckpt = model.save_pretrained(work / "runs" / "ckpt")
    saved = load_value_model(ckpt, base_model=make_tiny_gpt2(len(tiny_tokenizer))).config
    assert saved.checker == str(work / "checker") and saved.checker_relative == "../../checker"
    assert "checker" in (ckpt / "README.md").read_text()
    moved = tmp_path / "moved"
    shutil.move(str(work), str(moved))
    loaded = load_value_model(moved / "runs" / "ckpt", base_model=make_tiny_gpt2(len(tiny_tokenizer)))
    for a, b in zip(before, loaded.predict(prompts, completions)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    shutil.rmtree(moved / "checker")
    with pytest.raises(ConfigError, match=r"checker .* not found"):
        load_value_model(moved / "runs" / "ckpt", base_model=make_tiny_gpt2(len(tiny_tokenizer)))


def test_train_with_a_checker_and_its_mistakes(tmp_path, tiny_tokenizer, capsys):
    """`train value_model.checker=PATH` records it in the checkpoint; a checker of another vocabulary is one line."""
    traces = save_traces(random_traces(tiny_tokenizer, n_prompts=6, per_prompt=2), tmp_path / "traces")
    policy = tmp_path / "policy"
    make_tiny_gpt2(len(tiny_tokenizer)).save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    make_tiny_gpt2(len(tiny_tokenizer), seed=7).save_pretrained(tmp_path / "checker")
    make_tiny_gpt2(len(tiny_tokenizer) + 3).save_pretrained(tmp_path / "other")
    argv = [
        "train",
        f"traces={traces}",
        f"policy={policy}",
        "allow_other_policy=true",
        "value_model.kind=head",
        "value_model.policy_features=true",
        "max_steps=2",
        "per_device_batch_size=4",
        "eval_every=2",
        "checkpoint_every=0",
        "report_to=disk",
    ]
    assert cli.main([*argv, f"out={tmp_path / 'ok'}", f"value_model.checker={tmp_path / 'checker'}"]) == 0
    loaded = load_value_model(tmp_path / "ok" / "final")
    assert loaded.checker_lm is not None and loaded.config.checker == str(tmp_path / "checker")
    capsys.readouterr()
    assert cli.main([*argv, f"out={tmp_path / 'bad'}", f"value_model.checker={tmp_path / 'other'}"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip() and not x.startswith("Loading weights")]
    assert len(err) == 1 and err[0].startswith("prefixvalue train:") and "share the policy's tokenizer" in err[0], err


def _policy_recipe():
    path = Path(__file__).resolve().parents[1] / "recipes" / "train_policy.py"
    spec = importlib.util.spec_from_file_location("pv_train_policy_epochs", path)
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe  # dataclasses look their module up
    spec.loader.exec_module(recipe)
    return recipe


def test_policy_recipe_epochs_revisit_the_pool_and_never_leave_it(tmp_path):
    recipe = _policy_recipe()
    task, tok = ArithTask(ArithConfig(policy_train_prompts=100)), build_char_tokenizer()
    wrapped, _, _ = recipe.encode_batch(task, tok, "policy-train", 90, 20, wrap=True)  # prompts 90..99, then 0..9
    first, _, _ = recipe.encode_batch(task, tok, "policy-train", 0, 10)
    tail, _, _ = recipe.encode_batch(task, tok, "policy-train", 90, 10)
    for got, want in ((wrapped[10:], first), (wrapped[:10], tail)):
        width = min(got.shape[1], want.shape[1])
        assert torch.equal(got[:, :width], want[:, :width])
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        recipe.main([f"out_dir={tmp_path / 'x'}", "epochs=0"])
    # 2 epochs over 100 prompts hold 5 batches of 40 (prompts 0..199 mod 100); the sixth would start a third epoch
    report = recipe.main([f"out_dir={tmp_path / 'policy'}", "epochs=2", *TINY_POLICY_RUN])
    assert report["steps"] == 5 and report["stopped_at_pool_end"]
    assert report["policy_train_prompts_used"] == 100 and report["epochs"] == 2.0
    # the model card's command rebuilds this model: it names the architecture when it is not the policy's
    card = (tmp_path / "policy" / "README.md").read_text()
    command = next(line for line in card.splitlines() if "recipes/train_policy.py" in line)
    assert "n_layer=1 n_embd=16" in command and "epochs=2" in command


def test_heldout_under_reads_the_side_asked_for(tmp_path):
    texts = [f"Q:{a}+{b}=" for a in range(20) for b in range(20)]
    record = SplitRecord.of(datasets.Dataset.from_dict({"prompt": texts}), 0.2, 0.15, 0)
    ckpts = []
    for name in ("a", "b"):
        record.save(tmp_path / name)
        ckpts.append(str(tmp_path / name))
    sides = [record.side(t) for t in texts]
    assert {"train", "validation", "test"} <= set(sides)
    assert heldout_under(ckpts, texts, "advantages") == [s == "test" for s in sides]
    assert heldout_under(ckpts, texts, "advantages", "validation") == [s == "validation" for s in sides]
    other = SplitRecord.of(datasets.Dataset.from_dict({"prompt": texts}), 0.2, 0.15, 1)
    other.save(tmp_path / "c")  # another split seed: only prompts on the validation side of both count
    both = heldout_under([ckpts[0], str(tmp_path / "c")], texts, "advantages", "validation")
    assert both == [s == "validation" and other.side(t) == "validation" for s, t in zip(sides, texts)]
    with pytest.raises(ConfigError, match="split must be test or validation"):
        AdvantagesConfig(traces="t", checkpoints=ckpts, out=str(tmp_path / "o"), split="train")
