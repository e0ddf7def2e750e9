"""The error head (issue 31, "Capacity where it matters"): a second head on the value head's state predicts whether
a wrong step has been written, trained on the training traces' exact step labels; the value is σ(z)·(1 − e)
(docs/design.md, "Error head").

pytest tests/test_error_head.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_train_recipe
import torch
from test_train_recipe import _args

from prefixvalue import cli
from prefixvalue.data import rows_to_dataset
from prefixvalue.data.collate import ERROR_TARGETS, ValueCollator
from prefixvalue.data.steps import step_facts
from prefixvalue.policies import load_causal_lm
from prefixvalue.stats import auroc
from prefixvalue.value import ValueModelConfig, build_value_model, load_value_model
from prefixvalue.value.head import ERROR_PRIOR, error_adjusted_logits
from prefixvalue.value.targets import attach_error_targets

from conftest import SHIPPED_POLICY, make_tiny_gpt2
from test_value_fixtures import policy_traces, random_traces, save_traces

tiny_setup = test_train_recipe.tiny_setup  # a tiny GPT-2 policy and its traces, without step labels
needs_policy = pytest.mark.skipif(
    not SHIPPED_POLICY.exists(), reason="the shipped policy data/policies/arith-tiny is absent"
)


@pytest.fixture(scope="module")
def arith_rows():
    """Traces of the shipped arith policy: exact step labels, some of them wrong."""
    return policy_traces(SHIPPED_POLICY, n_prompts=24, samples=4, seed=0)


def test_error_adjusted_logits_are_the_product_in_log_space():
    z = torch.tensor([-30.0, -2.0, 0.0, 3.0, 40.0, 40.0])
    e = torch.tensor([0.0, 1.5, -40.0, 2.0, -40.0, 30.0])
    out = error_adjusted_logits(z, e)
    assert torch.isfinite(out).all()
    want = torch.sigmoid(z.double()) * (1 - torch.sigmoid(e.double()))
    torch.testing.assert_close(torch.sigmoid(out.double()), want, rtol=1e-4, atol=1e-6)
    # no error believed: the value is the value head's own; an error believed: the value goes to 0
    assert abs(float(out[2]) - float(z[2])) < 1e-4 and float(torch.sigmoid(out[5])) < 1e-10


def test_a_new_model_starts_at_the_base_rate_and_round_trips(tmp_path, tiny_tokenizer, tiny_model_dir):
    rows = random_traces(tiny_tokenizer, n_prompts=3, per_prompt=2, seed=2)
    cfg = ValueModelConfig(
        kind="head", policy_features=True, error_head=True, base_rate=0.4, base_model=str(tiny_model_dir)
    )
    model = build_value_model(cfg, load_causal_lm(str(tiny_model_dir)))
    prompts, completions = [r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows]
    assert all(np.allclose(v, 0.4 * (1 - ERROR_PRIOR), atol=1e-6) for v in model.predict(prompts, completions))
    assert {"error_head.weight", "error_head.bias", "error_features.weight"} <= set(model._extra_state_tensors())
    assert {id(p) for p in model.error_head.parameters()} <= {id(p) for p in model.head_parameters()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("head.", "feature_head.", "error_head.", "error_features.")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    batch = ValueCollator(0)(rows)
    args = (batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
    with torch.no_grad():
        z, e = model(*args, error_logits=True)
        torch.testing.assert_close(model(*args), z)
    before = model.predict(prompts, completions)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_value_model(tmp_path / "ckpt")
    assert loaded.config.error_head
    for a, b in zip(before, loaded.predict(prompts, completions)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    plain = build_value_model(ValueModelConfig(kind="head"), make_tiny_gpt2(len(tiny_tokenizer)))
    with pytest.raises(ValueError, match="error_head"):
        plain(*args, error_logits=True)


@needs_policy
def test_error_targets_are_the_step_facts_and_need_step_labels(arith_rows, tiny_tokenizer):
    ds, info = attach_error_targets(rows_to_dataset(arith_rows))
    for r, flags in zip(arith_rows, ds[ERROR_TARGETS]):
        wrong, _ = step_facts(r["step_spans"], r["step_labels"], len(r["completion_ids"]))
        assert flags == wrong.astype(float).tolist()
    assert 0 < info["error_share"] < 1 and info["positions"] == sum(len(r["completion_ids"]) + 1 for r in arith_rows)
    with pytest.raises(ValueError, match="step labels"):
        attach_error_targets(rows_to_dataset(random_traces(tiny_tokenizer, n_prompts=2, per_prompt=2)))


@needs_policy
def test_the_error_head_learns_to_see_written_errors(arith_rows):
    """On the policy's own traces, a few steps of the error BCE alone separate the positions after a wrong step from
    the others: the policy features carry the policy's surprise at what it wrote."""
    torch.manual_seed(0)
    cfg = ValueModelConfig(kind="head", backbone="frozen", policy_features=True, error_head=True, base_rate=0.5)
    model = build_value_model(cfg, load_causal_lm(str(SHIPPED_POLICY)))
    ds, _ = attach_error_targets(rows_to_dataset(arith_rows))
    batch = ValueCollator(0)([{**r, ERROR_TARGETS: f} for r, f in zip(arith_rows, ds[ERROR_TARGETS])])
    args = (batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
    mask, y = batch["target_mask"], batch[ERROR_TARGETS]
    opt = torch.optim.Adam(model.head_parameters(), lr=5e-2)

    def area() -> float:
        with torch.no_grad():
            _, e = model(*args, error_logits=True)
        return auroc(e[mask].numpy(), y[mask].numpy())[0]

    assert area() == pytest.approx(0.5)  # a new error head: a constant
    for _ in range(40):
        _, e = model(*args, error_logits=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(e[mask], y[mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert area() > 0.8


@needs_policy
def test_train_records_the_error_targets_and_refuses_what_cannot_use_them(arith_rows, tiny_setup, tmp_path, capsys):
    traces = save_traces(arith_rows, tmp_path / "traces")
    out = tmp_path / "run"
    flags = ["value_model.kind=head", "value_model.policy_features=true", "value_model.error_head=true"]
    rc = cli.main(["train", *_args(SHIPPED_POLICY, traces, out, max_steps=3, checkpoint_every=0), *flags])
    assert rc == 0, capsys.readouterr().err
    record = json.loads((out / "final" / "training.json").read_text())
    assert "error_targets" in json.dumps(record)
    assert load_value_model(out / "final").config.error_head
    # traces without step labels, and kinds without the error head: one line, exit 2, nothing written
    plain_policy, plain = tiny_setup
    for policy, folder, kind in (
        (plain_policy, plain, "head"),
        (SHIPPED_POLICY, traces, "qhead"),
        (SHIPPED_POLICY, traces, "implicit"),
    ):
        run = tmp_path / f"refused-{kind}"
        rc = cli.main(
            [
                "train",
                *_args(policy, folder, run, max_steps=1),
                f"value_model.kind={kind}",
                "value_model.error_head=true",
            ]
        )
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("prefixvalue train:")]
        assert rc == 2 and len(lines) == 1 and "error_head" in lines[0] and "Traceback" not in err, err
        assert not (run / "final").exists()
