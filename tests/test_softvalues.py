"""Soft values: MellowMax bounds and limits, float64 stability, batching equals one trace at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prefixvalue.evaluation.softvalues import (
    SoftValueSpec,
    logsumexp_value,
    mellowmax,
    policy_soft_values,
    topk_mellowmax,
)


def test_mellowmax_bounds_and_limits():
    rng = np.random.default_rng(0)
    q = rng.normal(scale=3.0, size=(20, 50))
    mean, mx = q.mean(-1), q.max(-1)
    prev = None
    for w in (1e-4, 0.1, 1.0, 10.0, 100.0):
        mm = mellowmax(q, w).numpy()
        assert np.all(mean - 1e-9 <= mm) and np.all(mm <= mx + 1e-9)
        if prev is not None:
            assert np.all(mm >= prev - 1e-9)  # non-decreasing in ω
        prev = mm
    np.testing.assert_allclose(mellowmax(q, 1e-6).numpy(), mean, atol=1e-4)
    np.testing.assert_allclose(mellowmax(q, 1e4).numpy(), mx, atol=1e-2)
    np.testing.assert_allclose(mellowmax(q, 0.0).numpy(), mean)
    np.testing.assert_allclose(mellowmax(q, math.inf).numpy(), mx)
    with pytest.raises(ValueError):
        mellowmax(q, -1.0)


def test_formulas_by_hand_and_overflow():
    q = np.array([1.0, 2.0, 3.0])
    assert logsumexp_value(q).item() == pytest.approx(math.log(math.e + math.e**2 + math.e**3))
    w = 0.5
    assert mellowmax(q, w).item() == pytest.approx(math.log(sum(math.exp(w * v) for v in q) / 3) / w)
    assert topk_mellowmax(q, w, 2).item() == pytest.approx(math.log((math.exp(w * 2) + math.exp(w * 3)) / 2) / w)
    big = torch.tensor([[1e4, 1e4 - 1.0, -1e4]], dtype=torch.float32)  # exp overflows without care
    assert math.isfinite(mellowmax(big, 10.0).item()) and mellowmax(big, 10.0).item() <= 1e4
    assert logsumexp_value(big).item() == pytest.approx(1e4 + math.log(1 + math.exp(-1.0)))
    # ω = 1 over the full vocabulary is logsumexp − log|A|
    assert mellowmax(q, 1.0).item() == pytest.approx(logsumexp_value(q).item() - math.log(3))


def test_spec_names_state_default():
    spec = SoftValueSpec(omegas=(0.1, 1.0, 10.0), default_omega=1.0, top_k=(5,))
    assert spec.names["mellowmax"] == {"operator": "mellowmax", "omega": 1.0, "vocab": "full", "default": True}
    assert "mellowmax_w1" not in spec.names and {"mellowmax_w0.1", "mellowmax_w10"} <= set(spec.names)
    assert {"mellowmax_top5_w0.1", "mellowmax_top5_w1", "mellowmax_top5_w10"} <= set(spec.names)


def test_policy_soft_values_match_single_forward(tiny_model, tiny_tokenizer):
    spec = SoftValueSpec(omegas=(0.1, 10.0), default_omega=1.0, top_k=(4,))
    prompts = [
        tiny_tokenizer("Q:1+2=", add_special_tokens=False)["input_ids"],
        tiny_tokenizer("Q:3*4-5=", add_special_tokens=False)["input_ids"],
    ]
    comps = [
        tiny_tokenizer("1+2=3;A:3", add_special_tokens=False)["input_ids"] + [1],
        tiny_tokenizer("3*4=2;", add_special_tokens=False)["input_ids"],
    ]
    vals, ftok = policy_soft_values(tiny_model, prompts, comps, spec, batch_size=2)
    assert ftok == sum(len(p) + len(c) for p, c in zip(prompts, comps))
    for v, p, c in zip(vals, prompts, comps):
        assert set(v) == set(spec.names)
        assert all(len(a) == len(c) + 1 and a.dtype == np.float64 for a in v.values())
        with torch.no_grad():
            logits = tiny_model(torch.tensor([p + c])).logits[0].double()
        for pos in (0, len(c) // 2, len(c)):
            row = logits[len(p) - 1 + pos]  # the logits that follow the prefix with `pos` completion tokens
            assert v["logsumexp"][pos] == pytest.approx(torch.logsumexp(row, -1).item(), abs=1e-4)
            assert v["mellowmax_w10"][pos] == pytest.approx(mellowmax(row, 10.0).item(), abs=1e-4)
            assert v["mellowmax_top4_w1"][pos] == pytest.approx(topk_mellowmax(row, 1.0, 4).item(), abs=1e-4)
    one, _ = policy_soft_values(tiny_model, prompts[1:], comps[1:], spec, batch_size=1)
    np.testing.assert_allclose(one[0]["mellowmax"], vals[1]["mellowmax"], atol=1e-4)


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
def test_bf16_policy_soft_values_use_float32_head(builder, tiny_tokenizer):
    """A bf16 policy: soft values come from the LM head run in float32 on the last hidden state, not
    from the bf16 logits the model returns (rounded to 8 mantissa bits before any upcast)."""
    from conftest import make_tiny_gpt2, make_tiny_llama

    model = (make_tiny_gpt2 if builder == "gpt2" else make_tiny_llama)(len(tiny_tokenizer)).to(torch.bfloat16)
    with torch.no_grad():  # larger logits, so bf16 rounding is visible
        model.get_output_embeddings().weight.mul_(40.0)
    spec = SoftValueSpec(omegas=(10.0,), default_omega=1.0, top_k=())
    p = tiny_tokenizer("Q:3*4-5=", add_special_tokens=False)["input_ids"]
    c = tiny_tokenizer("3*4=2;2-5=7;A:7", add_special_tokens=False)["input_ids"]
    vals, _ = policy_soft_values(model, [p], [c], spec, batch_size=1)
    with torch.no_grad():
        out = model(torch.tensor([p + c]), output_hidden_states=True)
        h = out.hidden_states[-1][0, len(p) - 1 :]
        exact = torch.nn.functional.linear(h.float(), model.get_output_embeddings().weight.float())
        rounded = out.logits[0, len(p) - 1 :]
    assert rounded.dtype == torch.bfloat16
    for name, fn in (
        ("logsumexp", lambda q: torch.logsumexp(q.double(), -1)),
        ("mellowmax_w10", lambda q: mellowmax(q, 10.0)),
    ):
        np.testing.assert_allclose(vals[0][name], fn(exact).numpy(), rtol=0, atol=1e-9)
        assert np.abs(vals[0][name] - fn(rounded).numpy()).max() > 1e-3  # the old, rounded computation
