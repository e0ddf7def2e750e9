"""Value models: training reduces the loss, save → load is exact, accumulation and losses are right."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from prefixvalue.data import rows_to_dataset
from prefixvalue.data.collate import ResumableSampler, ValueCollator, attach_prefix_labels
from prefixvalue.value import (
    VALUE_MODELS,
    HeadValueModel,
    ImplicitValueModel,
    ValueModelConfig,
    build_value_model,
    check_value_config,
    load_value_model,
    margin_bce_with_logits,
    normalise_loss,
)
from prefixvalue.value.heldout import evaluate_heldout

from conftest import make_tiny_gpt2, make_tiny_llama
from test_value_fixtures import random_traces

# (kind, backbone, soft prompt tokens, loss): every supported combination
VARIANTS = [
    ("implicit", "lora", 0, "prefix"),
    ("implicit", "lora", 0, "sequence"),
    ("implicit", "frozen", 4, "prefix"),
    ("head", "frozen", 0, "prefix"),
    ("head", "lora", 0, "prefix"),
    ("head", "full", 0, "prefix"),
    ("head", "frozen", 4, "prefix"),
    ("qhead", "lora", 0, "prefix"),
    ("qhead", "frozen", 0, "prefix"),
]
BUILDERS = {"gpt2": make_tiny_gpt2, "llama": make_tiny_llama}


def _cfg(kind: str, backbone: str, soft: int, loss: str, base: str = "") -> ValueModelConfig:
    return ValueModelConfig(
        kind=kind, backbone=backbone, soft_prompt_tokens=soft, loss=loss, base_model=base, base_rate=0.4
    )


@pytest.fixture(scope="module")
def rows(tiny_tokenizer):
    return random_traces(tiny_tokenizer, n_prompts=4, per_prompt=2, seed=1)


def _ids(rows):
    return [r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v)))
def test_loss_goes_down_and_save_load_is_exact(variant, arch, rows, tiny_tokenizer, tmp_path):
    kind, backbone, soft, loss = variant
    torch.manual_seed(0)
    model = build_value_model(_cfg(kind, backbone, soft, loss, base="unused"), BUILDERS[arch](len(tiny_tokenizer)))
    assert isinstance(model, VALUE_MODELS[kind]) and model.kind == kind
    batch = ValueCollator(0)(rows)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=2e-2)
    losses = []
    for _ in range(8):
        ls = model.value_loss(
            model(batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"]),
            batch,
            loss,
            model.config.margin,
        )
        (ls.total / ls.count).backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(ls.total.detach() / ls.count))
    assert losses[-1] < losses[0] - 1e-3, losses

    prompts, completions = _ids(rows)
    before = model.predict(prompts, completions, batch_size=3)
    assert [len(v) for v in before] == [len(c) + 1 for c in completions]
    assert all(v.dtype == np.float64 and np.all((v > 0) & (v < 1)) for v in before)
    model.save_pretrained(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").rglob("*")}
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files), files
    cfg = json.loads((tmp_path / "ckpt" / "value_config.json").read_text())
    assert {"kind", "base_model", "beta", "margin", "base_rate", "soft_prompt_tokens"} <= set(cfg)
    # a fresh copy of the untrained base policy: everything trained must come from the folder
    base = None if backbone == "full" else BUILDERS[arch](len(tiny_tokenizer))
    loaded = load_value_model(tmp_path / "ckpt", base_model=base)
    after = loaded.predict(prompts, completions, batch_size=3)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    if kind == "implicit":
        np.testing.assert_allclose(after[0][0], 0.4)  # P̂ at p = 0 is the base rate
        for a, b in zip(model.token_log_ratios(prompts, completions), loaded.token_log_ratios(prompts, completions)):
            np.testing.assert_array_equal(a, b)


def test_implicit_values_follow_the_formula(rows, tiny_tokenizer):
    model = build_value_model(_cfg("implicit", "lora", 0, "prefix"), make_tiny_gpt2(len(tiny_tokenizer)))
    prompts, completions = _ids(rows)
    # a fresh LoRA (B = 0) is the reference: log-ratios 0, P̂ = σ(0) = 0.5 after the prompt
    assert all(np.allclose(r, 0.0) for r in model.token_log_ratios(prompts, completions))
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    ratios = model.token_log_ratios(prompts, completions)
    values = model.predict(prompts, completions)
    for r, v in zip(ratios, values):
        assert np.abs(r).max() > 1e-4
        steps = np.arange(1, len(r) + 1)
        expected = 1 / (1 + np.exp(-model.config.beta * np.cumsum(r) / steps))
        np.testing.assert_allclose(v[1:], expected, rtol=1e-5, atol=1e-6)
    # counterfactual value of the token actually taken = the value of the next prefix
    cf = model.counterfactual_values(prompts, completions, candidate_ids=list(range(len(tiny_tokenizer))))
    top = model.counterfactual_values(prompts, completions, top_k=3)
    for c, t, v, comp in zip(cf, top, values, completions):
        assert c.values.shape == (len(comp), len(tiny_tokenizer)) and t.token_ids.shape == (len(comp), 3)
        # two float32 paths (all candidates at once vs the written tokens): agreement to float32 accumulation
        np.testing.assert_allclose(c.values[np.arange(len(comp)), comp], v[1:], rtol=1e-4, atol=1e-5)
        assert np.all(np.diff(t.ref_logprobs, axis=1) <= 1e-6)  # top-k sorted by π_ref


def test_values_do_not_depend_on_batching(rows, tiny_tokenizer):
    model = build_value_model(_cfg("head", "frozen", 0, "prefix"), make_tiny_llama(len(tiny_tokenizer)))
    with torch.no_grad():
        model.head.weight.normal_()
    prompts, completions = _ids(rows)
    for a, b in zip(
        model.predict(prompts, completions, batch_size=len(rows)), model.predict(prompts, completions, batch_size=1)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["implicit", "head"])
def test_batch8_equals_8_accumulated_batches_of_1(kind, tiny_tokenizer):
    rows8 = random_traces(tiny_tokenizer, n_prompts=4, per_prompt=2, seed=3)
    assert len({len(r["completion_ids"]) for r in rows8}) > 1  # unequal lengths: the normaliser matters
    grads = []
    for split in (False, True):
        torch.manual_seed(0)
        model = build_value_model(_cfg(kind, "lora", 0, "prefix"), make_tiny_gpt2(len(tiny_tokenizer)))
        with torch.no_grad():  # move off B = 0 so every LoRA weight gets a gradient
            for p in model.trainable_parameters():
                p.add_(0.02 * torch.randn_like(p))
        collate = ValueCollator(0)
        micro = [collate([r]) for r in rows8] if split else [collate(rows8)]
        n_items = sum(model.loss_mask(b).sum() for b in micro).float()
        for b in micro:
            ls = model.value_loss(model(b["input_ids"], b["attention_mask"], b["prompt_lengths"]), b, "prefix", 5.0)
            normalise_loss(ls.total, n_items, world_size=1).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.trainable_parameters()]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_margin_bce_matches_definition():
    z = torch.tensor([-12.0, -2.0, 0.0, 1.5, 9.0], dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 0.3, 1.0, 0.0], dtype=torch.float64)
    m = 5.0
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [
        -(ri * math.log(sig(zi - m)) + (1 - ri) * math.log(1 - sig(zi + m))) for zi, ri in zip(z.tolist(), r.tolist())
    ]
    torch.testing.assert_close(margin_bce_with_logits(z, r, m), torch.tensor(expected, dtype=torch.float64))
    # no overflow far from the margin: the loss grows linearly
    big = margin_bce_with_logits(torch.tensor([1e4, -1e4]), torch.tensor([0.0, 1.0]), m)
    torch.testing.assert_close(big, torch.tensor([1e4 + m, 1e4 + m]))
    torch.testing.assert_close(
        margin_bce_with_logits(z, r, 0.0), torch.nn.functional.binary_cross_entropy_with_logits(z, r, reduction="none")
    )


def test_loss_masks_and_sequence_loss(tiny_tokenizer):
    rows = random_traces(tiny_tokenizer, n_prompts=2, per_prompt=1, seed=4)
    b = ValueCollator(0)(rows)
    t = b["completion_lengths"]
    assert HeadValueModel.loss_mask(b).sum() == int((t + 1).sum())
    assert ImplicitValueModel.loss_mask(b).sum() == int(t.sum())
    seq = ImplicitValueModel.loss_mask(b, "sequence")
    assert seq.sum() == 2 and all(seq[i, t[i]] for i in range(2))
    logits = torch.randn(b["targets"].shape)
    ls = ImplicitValueModel.value_loss(logits, b, "sequence")
    expected = sum(
        float(torch.nn.functional.binary_cross_entropy_with_logits(logits[i, t[i]] * t[i], b["outcome"][i]))
        for i in range(2)
    )
    assert math.isclose(float(ls.total), expected, rel_tol=1e-5) and float(ls.count) == 2


def test_soft_labels_survive_the_collator_as_floats(tiny_tokenizer):
    rows = random_traces(tiny_tokenizer, n_prompts=2, per_prompt=2, seed=5)
    traces = rows_to_dataset(rows)
    tid = rows[1]["trace_id"]
    labels = rows_to_dataset(
        [
            {"trace_id": tid, "position": 0, "n": 16, "successes": 6, "mean": 0.375, "ci_low": 0.2, "ci_high": 0.6},
            {"trace_id": tid, "position": 3, "n": 16, "successes": 11, "mean": 0.6875, "ci_low": 0.4, "ci_high": 0.9},
        ]
    )
    ds = attach_prefix_labels(traces, labels)
    batch = ValueCollator(0)(ds.select(range(2)).to_list())
    assert batch["targets"].dtype == torch.float32
    assert batch["targets"][1, 0].item() == 0.375 and batch["targets"][1, 3].item() == 0.6875
    assert batch["targets"][1, 1].item() == rows[1]["outcome"]  # unlabelled: the outcome fills in
    only = ValueCollator(0, labels_only=True)(ds.select(range(2)).to_list())
    assert only["target_mask"].sum() == 2 and only["target_mask"][1, 0] and only["target_mask"][1, 3]
    # a soft target changes the loss continuously (it is not rounded to a class)
    z = torch.ones_like(batch["targets"])
    mid = HeadValueModel.value_loss(z, batch).total
    batch["targets"][1, 0] = 0.9
    assert HeadValueModel.value_loss(z, batch).total != mid


def test_resumable_sampler_is_a_deterministic_stream():
    full = list(ResumableSampler(7, seed=3, start=0, stop=20))
    assert sorted(full[:7]) == list(range(7)) and sorted(full[7:14]) == list(range(7))
    assert full[:7] != full[7:14]
    assert list(ResumableSampler(7, seed=3, start=9, stop=20)) == full[9:]


def test_heldout_metrics(rows, tiny_tokenizer):
    model = build_value_model(_cfg("head", "frozen", 0, "prefix"), make_tiny_gpt2(len(tiny_tokenizer)))
    m = evaluate_heldout(model, rows, batch_size=3)
    # a fresh head predicts the base rate everywhere: it ties the base-rate predictor
    assert math.isclose(m["brier_all"], m["brier_base_rate_all"], rel_tol=1e-6)
    assert m["auroc_last"] == 0.5 and m["n_traces"] == len(rows)
    one = evaluate_heldout(model, rows[:1], batch_size=3)
    assert one["auroc_last"] is None  # one class only: undefined, not a number


def test_position_zero_is_the_base_rate_for_the_implicit_model(rows, tiny_tokenizer):
    model = build_value_model(_cfg("implicit", "lora", 0, "prefix"), make_tiny_gpt2(len(tiny_tokenizer)))
    prompts, completions = _ids(rows)
    vals = model.predict(prompts, completions)
    assert all(v[0] == np.float32(0.4) for v in vals)  # exactly the training base rate (float32), whatever the prompt
    assert "position 0" in ImplicitValueModel.position0_note and HeadValueModel.position0_note is None
    assert ImplicitValueModel.process_scores and not HeadValueModel.process_scores


def test_config_rules():
    with pytest.raises(ValueError, match="frozen"):
        ValueModelConfig(kind="head", backbone="lora", soft_prompt_tokens=4)
    with pytest.raises(ValueError, match="implicit"):
        check_value_config(ValueModelConfig(kind="implicit", backbone="full"))
    with pytest.raises(ValueError, match="sequence"):
        check_value_config(ValueModelConfig(kind="head", loss="sequence"))
    with pytest.raises(ValueError, match="choose from"):
        check_value_config(ValueModelConfig(kind="critic"))


def test_what_differs_between_kinds_is_on_the_classes():
    """Card rows, the token-classification export and the studies' questions are answered by the kind's class."""
    head, implicit = VALUE_MODELS["head"], VALUE_MODELS["implicit"]
    assert implicit.uses_beta and implicit.needs_adapter and implicit.counterfactuals
    assert not (head.uses_beta or head.needs_adapter or head.counterfactuals)
    assert head.description and implicit.description
    cfg = ValueModelConfig(kind="implicit")
    assert implicit.card_rows(cfg) == [("readout, loss", "mean, prefix (margin 5.0)")]
    assert implicit.export_problem(cfg, 2) is None and not implicit.standard_export(cfg, 2)
    assert "soft prompt" in implicit.export_problem(
        ValueModelConfig(kind="implicit", backbone="frozen", soft_prompt_tokens=2)
    )
    assert head.card_rows(ValueModelConfig(kind="head")) == []
    assert head.export_problem(ValueModelConfig(kind="head")) is None
    assert head.standard_export(ValueModelConfig(kind="head", head_layer=2), 2)  # the last of 2 layers
    assert not head.standard_export(ValueModelConfig(kind="head", head_layer=1), 2)  # an inner layer: remote code
    assert not head.standard_export(ValueModelConfig(kind="head", policy_features=True))
    assert head.export_problem(ValueModelConfig(kind="head", policy_features=True)) is None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("backbone, soft", [("lora", 0), ("frozen", 4)], ids=["lora", "soft-prompt"])
def test_fresh_implicit_model_predicts_one_half(backbone, soft, arch, rows, tiny_tokenizer, tmp_path):
    """Issue 14, item 13: a fresh implicit model, LoRA or soft prompt, predicts exactly P̂ = 0.5 at p >= 1
    (the soft prompt's π_ref is the policy behind the initial prompt, not the policy without one)."""
    torch.manual_seed(0)
    model = build_value_model(_cfg("implicit", backbone, soft, "prefix"), BUILDERS[arch](len(tiny_tokenizer)))
    prompts, completions = _ids(rows)
    for v, r in zip(model.predict(prompts, completions), model.token_log_ratios(prompts, completions)):
        assert np.all(v[1:] == 0.5) and np.all(r == 0.0)
    if soft:  # training moves the prompt, not the reference; save → load keeps both
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.add_(0.1 * torch.randn_like(p))
        ref = model.ref_prompt.clone()
        assert not torch.equal(model.lm.get_prompt(batch_size=1)[0], ref)
        before = model.predict(prompts, completions)
        assert any(np.abs(v[1:] - 0.5).max() > 1e-4 for v in before)
        model.save_pretrained(tmp_path / "ckpt")
        loaded = load_value_model(tmp_path / "ckpt", base_model=BUILDERS[arch](len(tiny_tokenizer)))
        assert torch.equal(loaded.ref_prompt, ref)
        for a, b in zip(before, loaded.predict(prompts, completions)):
            np.testing.assert_array_equal(a, b)


def test_sequence_loss_model_reads_out_what_it_trained(rows, tiny_tokenizer):
    """Issue 14, item 2: a model trained with loss=sequence (BCE on σ(V_T)) predicts σ(V_p) = σ(β Σ_{t≤p} ℓ_t),
    in predict, the held-out monitor and counterfactual values; loss=prefix still reads σ(V_p / p)."""
    torch.manual_seed(0)
    model = build_value_model(_cfg("implicit", "lora", 0, "sequence"), make_tiny_gpt2(len(tiny_tokenizer)))
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts, completions = _ids(rows)
    ratios = model.token_log_ratios(prompts, completions)
    values = model.predict(prompts, completions)
    beta = model.config.beta
    for r, v in zip(ratios, values):
        assert np.abs(r).max() > 1e-4
        np.testing.assert_allclose(v[1:], 1 / (1 + np.exp(-beta * np.cumsum(r))), rtol=1e-5, atol=1e-6)
        assert v[0] == np.float32(0.4)
    cf = model.counterfactual_values(prompts, completions, candidate_ids=list(range(len(tiny_tokenizer))))
    for c, v, comp in zip(cf, values, completions):
        # two float32 paths (all candidates at once vs the written tokens): agreement to float32 accumulation
        np.testing.assert_allclose(c.values[np.arange(len(comp)), comp], v[1:], rtol=1e-4, atol=1e-5)
    # the held-out monitor reads the same values: its Brier at p = T is that of predict's last values
    y = np.array([r["outcome"] for r in rows])
    m = evaluate_heldout(model, rows, batch_size=3)
    assert math.isclose(m["brier_last"], float(np.mean((np.array([v[-1] for v in values]) - y) ** 2)), rel_tol=1e-5)


@pytest.mark.parametrize("backbone", ["frozen", "lora", "full"])
def test_policy_features_come_from_the_starting_policy_and_save_load_is_exact(backbone, rows, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    policy = make_tiny_gpt2(len(tiny_tokenizer))
    reference = make_tiny_gpt2(len(tiny_tokenizer))  # the same weights (seeded), never trained
    cfg = ValueModelConfig(kind="head", backbone=backbone, policy_features=True, base_model="unused", base_rate=0.4)
    model = build_value_model(cfg, policy)
    batch = ValueCollator(0)(rows)
    args = (batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
    opt = torch.optim.Adam(model.trainable_parameters(), lr=2e-2)
    assert any(p is model.feature_head.weight for p in model.trainable_parameters())
    for _ in range(6):
        ls = model.value_loss(model(*args), batch)
        (ls.total / ls.count).backward()
        opt.step()
        opt.zero_grad()
    assert model.feature_head.weight.abs().sum() > 0
    # the features are the *starting* policy's log-probs of the written tokens: sum, minimum, last
    feats = model.policy_features(*args)
    with torch.no_grad():
        logp = torch.log_softmax(reference(input_ids=batch["input_ids"]).logits.double(), -1)
    for i, (plen, clen) in enumerate(zip(batch["prompt_lengths"].tolist(), batch["completion_lengths"].tolist())):
        ids = batch["input_ids"][i]
        lp = [max(float(logp[i, plen - 1 + t, ids[plen + t]]), -30.0) for t in range(clen)]  # floored per token
        want = np.array([[0.0, 0.0, 0.0]] + [[sum(lp[: p + 1]), min(lp[: p + 1]), lp[p]] for p in range(clen)])
        np.testing.assert_allclose(feats[i, : clen + 1].double().numpy(), want, atol=1e-4)
    prompts, completions = _ids(rows)
    before = model.predict(prompts, completions)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_value_model(tmp_path / "ckpt", base_model=make_tiny_gpt2(len(tiny_tokenizer)))
    for a, b in zip(before, loaded.predict(prompts, completions)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_implicit_sum_readout_follows_its_formula(rows, tiny_tokenizer):
    cfg = ValueModelConfig(kind="implicit", readout="sum", base_rate=0.3)
    model = build_value_model(cfg, make_tiny_gpt2(len(tiny_tokenizer)))
    prompts, completions = _ids(rows)
    assert all(np.allclose(v, 0.3) for v in model.predict(prompts, completions))  # fresh: the base rate
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    ratios = model.token_log_ratios(prompts, completions)
    values = model.predict(prompts, completions)
    cf = model.counterfactual_values(prompts, completions, candidate_ids=list(range(len(tiny_tokenizer))))
    for r, v, c, comp in zip(ratios, values, cf, completions):
        expected = 1 / (1 + np.exp(-(math.log(0.3 / 0.7) + model.config.beta * np.cumsum(r))))
        np.testing.assert_allclose(v[1:], expected, rtol=1e-5, atol=1e-6)
        # two float32 paths (all candidates at once vs the written tokens): agreement to float32 accumulation
        np.testing.assert_allclose(c.values[np.arange(len(comp)), comp], v[1:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="readout=sum"):
        check_value_config(ValueModelConfig(kind="implicit", readout="sum", loss="sequence"))


def test_head_layer_chooses_the_hidden_state(rows, tiny_tokenizer):
    backbone = make_tiny_gpt2(len(tiny_tokenizer))
    model = build_value_model(ValueModelConfig(kind="head", backbone="frozen", head_layer=1), backbone)
    with torch.no_grad():
        model.head.weight.normal_()
    batch = ValueCollator(0)(rows)
    with torch.no_grad():
        z = model(batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
        h = backbone(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states[1]
    plen = int(batch["prompt_lengths"][0])
    np.testing.assert_allclose(float(z[0, 0]), float(model.head(h[0, plen - 1])), rtol=1e-5)
    with pytest.raises(ValueError, match="head_layer"):
        build_value_model(ValueModelConfig(kind="head", head_layer=9), make_tiny_gpt2(len(tiny_tokenizer)))


def test_qhead_values_follow_the_formula(rows, tiny_tokenizer):
    """V(s_p) is the π_ref-weighted mean of Q(s_p, ·) over the top q_top_k tokens for p < T and Q(s_{T−1}, y_T) at
    p = T; a Q-head's candidate values are one pass (`candidate_values`: one sequence) and equal the
    token-level API's."""
    cfg = ValueModelConfig(kind="qhead", backbone="lora", base_rate=0.4, q_top_k=3)
    model = build_value_model(cfg, make_tiny_gpt2(len(tiny_tokenizer)))
    model.tokenizer = tiny_tokenizer
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    prompts, completions = _ids(rows[:2])
    vals = model.predict(prompts, completions)
    for i, (pr, comp) in enumerate(zip(prompts, completions)):
        ids = torch.tensor([pr + comp])
        logp = torch.log_softmax(model.reference_logits(ids, torch.ones_like(ids))[0].double(), -1)
        for p in range(len(comp) + 1):
            lp = logp[len(pr) - 1 + p]
            top_lp, top = lp.topk(3)
            q = model.token_candidate_values([pr], [comp + [0]], [np.full(3, p)], [top.numpy()])[0]
            want = float((torch.softmax(top_lp, 0).numpy() * q).sum())
            if p == len(comp):  # the last prefix: Q of the token that ended the trace
                want = model.token_candidate_values([pr], [comp], [np.array([p - 1])], [np.array([comp[-1]])])[0][0]
            assert vals[i][p] == pytest.approx(want, abs=1e-6), (i, p)
    cv = model.candidate_values(tiny_tokenizer.decode(prompts[0]), tiny_tokenizer.decode(completions[0][:3]), k=4)
    assert cv.sequences == 1 and len(cv.values) == 4 and np.all(np.diff(cv.logprobs) <= 0)
    np.testing.assert_allclose(cv.advantages, cv.values - cv.prefix_value)
    # P̂(s) of a prefix that goes on is the aggregate: the π-weighted mean of its candidates' Q over the top 3
    cv3 = model.candidate_values(tiny_tokenizer.decode(prompts[0]), tiny_tokenizer.decode(completions[0][:3]), k=3)
    weights = np.exp(cv3.logprobs) / np.exp(cv3.logprobs).sum()
    assert cv3.prefix_value == pytest.approx(float(weights @ cv3.values), abs=1e-6)
    with pytest.raises(ValueError, match="policy_features"):
        build_value_model(ValueModelConfig(kind="qhead", policy_features=True), make_tiny_gpt2(len(tiny_tokenizer)))
    with pytest.raises(ValueError, match="positions must be in"):
        model.token_candidate_values(prompts[:1], completions[:1], [np.array([len(completions[0])])], [np.array([1])])
