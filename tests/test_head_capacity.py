"""Capacity of the explicit head (issue 31, item 2): a feature MLP over normalised policy features
(``value_model.feature_head=mlp``) and hidden states of several layers (``value_model.head_layers``); the defaults
keep today's head bit for bit (docs/design.md, "Explicit value head").

pytest tests/test_head_capacity.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefixvalue import cli
from prefixvalue.config import ConfigError
from prefixvalue.value import ValueModelConfig, build_value_model, load_value_model
from prefixvalue.value.base import max_completion_length, prefix_indices
from prefixvalue.value.export import is_standard, to_token_classification
from prefixvalue.value.head import normalised_policy_features

from conftest import make_tiny_gpt2
from test_value_fixtures import collated, random_traces, save_traces


@pytest.fixture(scope="module")
def rows(tiny_tokenizer):
    return random_traces(tiny_tokenizer, n_prompts=4, per_prompt=2, seed=1)


def _ids(rows):
    return [r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows]


def _perturb(model, seed: int = 1) -> None:
    """Every head weight (a Q-head's too, and LoRA's B) non-zero, so that each term of the value shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith(("head.", "feature_head.", "feature_mlp.", "q_mlp.", "q_token.")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_default_config_is_todays_head_bit_for_bit(rows, tiny_tokenizer):
    """feature_head defaults to linear and head_layers to None: z = w·h_last + b + u·f exactly, the same ops."""
    cfg = ValueModelConfig(kind="head", policy_features=True, base_rate=0.4)
    assert cfg.feature_head == "linear" and cfg.head_layers is None
    model = build_value_model(cfg, make_tiny_gpt2(len(tiny_tokenizer)))
    assert model.feature_mlp is None and model.head.in_features == 32
    _perturb(model)
    batch, args = collated(rows)
    with torch.no_grad():
        z = model(*args)
        out = model.lm(input_ids=args[0], attention_mask=args[1], use_cache=False, output_hidden_states=True)
        tmax = max_completion_length(args[1], args[2])
        idx = prefix_indices(args[2], tmax + 1, args[0].shape[1])
        hidden = out.hidden_states[-1]
        h = hidden.gather(1, idx[..., None].expand(-1, -1, hidden.shape[-1]))
        want = model.head(h.float()).squeeze(-1) + model.feature_head(model.policy_features(*args)).squeeze(-1)
    assert torch.equal(z, want)
    assert set(model._extra_state_tensors()) == {"head.weight", "head.bias", "feature_head.weight"}


def test_mlp_head_starts_at_the_base_rate_and_learns(rows, tiny_tokenizer):
    cfg = ValueModelConfig(kind="head", policy_features=True, feature_head="mlp", base_rate=0.3)
    model = build_value_model(cfg, make_tiny_gpt2(len(tiny_tokenizer)))
    assert model.feature_head is None and model.feature_mlp is not None
    prompts, completions = _ids(rows)
    assert all(np.allclose(v, 0.3) for v in model.predict(prompts, completions))
    # the MLP trains with the head (head_parameters: head_lr) and moves the values off the constant
    head_ids = {id(p) for p in model.head_parameters()}
    assert all(id(p) in head_ids for p in model.feature_mlp.parameters())
    batch, args = collated(rows)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=2e-2)
    for _ in range(5):
        ls = model.value_loss(model(*args), batch)
        (ls.total / ls.count).backward()
        opt.step()
        opt.zero_grad()
    assert model.feature_mlp[2].weight.abs().sum() > 0
    assert not all(np.allclose(v, 0.3) for v in model.predict(prompts, completions))


def test_normalised_features_are_the_documented_transforms():
    from prefixvalue.value.head import normalised_policy_features

    feats = torch.tensor([[[0.0, 0.0, 0.0], [-2.0, -2.0, -2.0], [-8.0, -6.0, -6.0]]])
    g = normalised_policy_features(feats)[0]

    def s(x):
        return -np.log1p(-x)

    want = [[0, 0, 0, 0, 0], [s(-2), s(-2), s(-2), s(-2), np.log(2)], [s(-8), s(-4), s(-6), s(-6), np.log(3)]]
    np.testing.assert_allclose(g.numpy(), np.array(want), rtol=1e-6, atol=1e-7)


def test_several_layers_read_those_hidden_states(rows, tiny_tokenizer):
    backbone = make_tiny_gpt2(len(tiny_tokenizer))
    cfg = ValueModelConfig(kind="head", backbone="frozen", head_layers=[0, 2], base_rate=0.4)
    model = build_value_model(cfg, backbone)
    assert model.head.in_features == 64
    prompts, completions = _ids(rows)
    assert all(np.allclose(v, 0.4) for v in model.predict(prompts, completions))  # w = 0: the base rate
    with torch.no_grad():
        model.head.weight.normal_()
    batch, args = collated(rows)
    with torch.no_grad():
        z = model(*args)
        hs = backbone(input_ids=args[0], output_hidden_states=True).hidden_states
    w, b = model.head.weight[0], float(model.head.bias)
    for i in range(2):
        plen, clen = int(args[2][i]), int(batch["completion_lengths"][i])
        for p in range(clen + 1):
            want = float(w[:32] @ hs[0][i, plen - 1 + p] + w[32:] @ hs[2][i, plen - 1 + p]) + b
            np.testing.assert_allclose(float(z[i, p]), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        dict(policy_features=True, feature_head="mlp"),
        dict(head_layers=[1, -1]),
        dict(policy_features=True, feature_head="mlp", head_layers=[1, 2], backbone="full"),
    ],
    ids=["mlp-lora", "layers-lora", "both-full"],
)
def test_save_load_round_trip_card_and_export(options, rows, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_value_model(
        ValueModelConfig(kind="head", base_model="unused", base_rate=0.4, **options),
        make_tiny_gpt2(len(tiny_tokenizer)),
    )
    _perturb(model)
    prompts, completions = _ids(rows)
    before = model.predict(prompts, completions)
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    loaded = load_value_model(ckpt, base_model=make_tiny_gpt2(len(tiny_tokenizer)))
    for key in ("feature_head", "head_layers"):
        assert getattr(loaded.config, key) == getattr(model.config, key)
    for a, b in zip(before, loaded.predict(prompts, completions)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    card = (ckpt / "README.md").read_text()
    if options.get("feature_head") == "mlp":
        assert "feature head" in card and "MLP" in card
    if options.get("head_layers"):
        assert "head layers" in card and "concatenated" in card
    # the export (modeling_prefixvalue.py) gives the same values at every prefix's last token
    assert not is_standard(model)
    tc = to_token_classification(model)
    batch, args = collated(rows)
    with torch.no_grad():
        logits = tc(input_ids=args[0], attention_mask=args[1], prompt_lengths=args[2]).logits
    values = torch.softmax(logits.float(), -1)[..., 1]
    for i, v in enumerate(before):
        plen = int(args[2][i])
        np.testing.assert_allclose(values[i, plen - 1 : plen - 1 + len(v)].numpy(), v, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"value_model.feature_head": "deep"}, "feature_head must be one of"),
        ({"value_model.feature_head": "mlp"}, "reads the policy features: set policy_features=true"),
        ({"value_model.head_layers": "[1, 1]"}, "head_layers must list distinct layers"),
        ({"value_model.head_layers": "[1]", "value_model.head_layer": "2"}, "not both"),
        ({"value_model.kind": "qhead", "value_model.head_layers": "[1, 2]"}, "the Q-head reads one hidden layer"),
    ],
    ids=["unknown", "mlp-without-features", "repeated-layer", "both-layer-keys", "qhead-layers"],
)
def test_bad_values_are_one_line(options, words, tmp_path, tiny_tokenizer, capsys):
    traces = save_traces(random_traces(tiny_tokenizer, n_prompts=2, per_prompt=1), tmp_path / "traces")
    argv = ["train", f"traces={traces}", f"output_dir={tmp_path / 'out'}", "value_model.kind=head"]
    argv += [f"{k}={v}" for k, v in options.items()]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("prefixvalue train:") and words in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_layer_outside_the_backbone_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="head_layers: layer 5"):
        build_value_model(ValueModelConfig(kind="head", head_layers=[1, 5]), make_tiny_gpt2(len(tiny_tokenizer)))


def test_train_refuses_a_layer_the_policy_lacks_in_one_line(tmp_path, tiny_tokenizer, capsys):
    """The layer rule needs the backbone (loaded inside train): still one line, exit 2 (it was a traceback)."""
    policy = tmp_path / "policy"
    make_tiny_gpt2(len(tiny_tokenizer)).save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    traces = save_traces(random_traces(tiny_tokenizer, n_prompts=2, per_prompt=2), tmp_path / "traces")
    argv = ["train", f"traces={traces}", f"policy={policy}", f"output_dir={tmp_path / 'out'}", "max_steps=1"]
    argv += ["value_model.kind=head", "value_model.head_layers=[1,5]", "heldout_fraction=0.0", "report_to=none"]
    argv += ["validation_fraction=0.0", "allow_other_policy=true"]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert err[-1].startswith("prefixvalue train: value_model: head_layers: layer 5 is outside"), err


def test_qhead_feature_mlp_reads_each_candidate_as_if_written(rows, tiny_tokenizer, tmp_path):
    """kind=qhead with feature_head=mlp: the MLP's inputs for candidate y at s_p are the head's normalised features of
    s_p ⊕ y (for the written token: exactly those of s_{p+1}); it starts at the base rate, saves and reloads, and the
    export refuses it in one line (docs/design.md, "Q-head")."""
    cfg = ValueModelConfig(kind="qhead", feature_head="mlp", base_model="unused", base_rate=0.4, q_top_k=3)
    model = build_value_model(cfg, make_tiny_gpt2(len(tiny_tokenizer)))
    assert model.q_features is None and model.q_mlp is not None
    assert {id(p) for p in model.q_mlp.parameters()} <= {id(p) for p in model.head_parameters()}
    prompts, completions = _ids(rows)
    assert all(np.allclose(v, 0.4) for v in model.predict(prompts, completions))
    _perturb(model, seed=2)
    batch, args = collated(rows)
    seen = []
    hook = model.q_mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        st = model._state(*args)
        tmax = st["h"].shape[1] - 1
        idx = prefix_indices(args[2], tmax, args[0].shape[1])
        written = args[0].gather(1, idx + 1)  # token p + 1 after prefix p, [B, Tmax]
        q = model._q_logits(st, written[..., None])[..., 0]
    hook.remove()
    inputs = seen[0][:, :, 0]  # [B, Tmax, 1 + 5]
    want = normalised_policy_features(st["f"])[:, 1:]  # the head's features of s_{p+1}
    real = torch.arange(tmax)[None, :] < st["clens"][:, None]  # prefixes followed by a written token
    torch.testing.assert_close(inputs[..., 1:][real], want[real])
    state = model.head(st["h"][:, :tmax]).squeeze(-1)
    torch.testing.assert_close(inputs[..., 0], state)
    token = (model.q_token(st["h"][:, :tmax]) * model._token_embeddings()[written]).sum(-1) / st["h"].shape[-1] ** 0.5
    torch.testing.assert_close(q, state + model.q_mlp(inputs).squeeze(-1) + token)
    before = model.predict(prompts, completions)
    assert not all(np.allclose(v, 0.4) for v in before)
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    loaded = load_value_model(ckpt, base_model=make_tiny_gpt2(len(tiny_tokenizer)))
    assert loaded.config.feature_head == "mlp" and "q_mlp.0.weight" in loaded._extra_state_tensors()
    for a, b in zip(before, loaded.predict(prompts, completions)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert "feature head" in (ckpt / "README.md").read_text()
    with pytest.raises(ConfigError, match="Q-head's feature MLP"):
        to_token_classification(model)
    with pytest.raises(ValueError, match="set policy_features=true"):
        ValueModelConfig(kind="implicit", feature_head="mlp")
