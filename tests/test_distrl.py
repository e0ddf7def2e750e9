"""`prefixvalue distrl`: the objective's formulas, the loop on the shipped policy (every arm and value source), and
resuming a killed run to the same weights."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prefixvalue import cli, value
from prefixvalue.config import ConfigError, parse_config
from prefixvalue.data import SplitRecord
from prefixvalue.rl import DistRLConfig, group_advantages, policy_loss, run, td_advantages
from prefixvalue.rl.loop import step_prompts

from conftest import REPO, SHIPPED_POLICY


# ------------------------------------------------------------------------------------------ objective
def test_group_advantages_are_trl_group_normalisation():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    a = group_advantages(r, 4)
    g = r[:4]
    want = (g - g.mean()) / (g.std() + 1e-4)
    assert torch.allclose(a[:4], want, atol=1e-6)
    assert torch.allclose(a[4:], torch.zeros(4))  # a group that all agrees teaches nothing
    with pytest.raises(ValueError):
        group_advantages(r, 3)


def test_td_advantages_telescope_to_reward_minus_first_value():
    values = [torch.tensor([0.4, 0.5, 0.9, 0.7]), torch.tensor([0.6, 0.2])]
    td = td_advantages(values, torch.tensor([1.0, 0.0]))
    assert torch.allclose(td[0], torch.tensor([0.1, 0.4, 0.1], dtype=torch.float64))  # last: r − V(s_2)
    assert td[0].sum().item() == pytest.approx(1.0 - 0.4)
    assert td[1].tolist() == pytest.approx([-0.6])


def test_loss_gradient_is_the_policy_gradient_and_candidates_move_their_probability():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5, requires_grad=True)
    logp_all = torch.log_softmax(logits, -1)
    sampled = torch.tensor([[1, 2, 0]])
    lp = logp_all.gather(2, sampled[..., None])[..., 0]
    adv = torch.tensor([[1.0, -0.5, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the last token is padding
    loss, parts = policy_loss(lp, lp.detach(), adv, mask)
    loss.backward()
    logits2 = logits.detach().clone().requires_grad_(True)
    lp2 = torch.log_softmax(logits2, -1).gather(2, sampled[..., None])[..., 0]
    (-(adv * lp2 * mask).sum() / 2).backward()
    assert torch.allclose(logits.grad, logits2.grad, atol=1e-6)  # −Σ A ∇log π over real tokens / their number
    assert parts["clip_fraction"] == 0.0
    # the candidate term alone: a positive advantage raises its candidate, a negative one lowers it
    logits3 = torch.zeros(1, 1, 5, requires_grad=True)
    opt = torch.optim.SGD([logits3], lr=1.0)
    for _ in range(5):
        opt.zero_grad()
        lp3 = torch.log_softmax(logits3, -1)
        cand = torch.tensor([[[3, 4]]])
        probs = lp3.gather(2, cand).exp()
        loss3, _ = policy_loss(
            lp3[..., 0],
            lp3[..., 0].detach(),
            torch.zeros(1, 1),
            torch.ones(1, 1),
            candidate_probs=probs,
            candidate_advantages=torch.tensor([[[0.5, -0.5]]]),
            candidate_coef=1.0,
        )
        loss3.backward()
        opt.step()
    p = torch.softmax(logits3.detach(), -1)[0, 0]
    assert p[3] > 0.2 > p[4]


def test_step_prompts_are_a_pure_function_of_the_step():
    train = list(range(10))
    a = [step_prompts(train, s, 4, 0) for s in range(5)]
    assert a == [step_prompts(train, s, 4, 0) for s in range(5)]
    first_pass = [x for s in a[:2] for x in s] + a[2][:2]  # steps 0, 1 and half of 2 cover one shuffle
    assert sorted(first_pass) == train


def test_config_mistakes_are_one_line():
    with pytest.raises(ConfigError, match="value_checkpoint"):
        parse_config(DistRLConfig, ["advantage=td", "out=x"])
    with pytest.raises(ConfigError, match="advantage must be"):
        parse_config(DistRLConfig, ["advantage=ppo", "out=x"])
    with pytest.raises(ConfigError, match="refresh"):
        parse_config(DistRLConfig, ["advantage=outcome", "refresh_lr=0.1", "out=x"])


def test_cli_without_a_split_exits_2(tmp_path, capsys):
    assert cli.main(["distrl", "advantage=outcome", f"out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split_from" in err[0]


# ------------------------------------------------------------------------------------------ the loop
def _qhead_checkpoint(folder):
    torch.manual_seed(0)
    cfg = value.ValueModelConfig(kind="qhead", base_model=str(SHIPPED_POLICY), base_rate=0.5, backbone="frozen")
    value.build_value_model(cfg).save_pretrained(folder)
    SplitRecord.from_prompts(["Q:1+1="], 0.5, 0).save(folder)
    return folder


def _cfg(out, cls=DistRLConfig, **kw):
    base = dict(
        out=str(out),
        policy=str(SHIPPED_POLICY),
        num_prompts=60,
        prompts_per_step=2,
        num_generations=4,
        max_steps=2,
        eval_every=2,
        eval_prompts=6,
        eval_samples=1,
        checkpoint_every=1,
        threads=1,
        max_sampled_tokens=0,
        device="cpu",
        report_to="disk",
        value_batch_size=16,
    )
    base.update(kw)
    return cls(**base)


@pytest.mark.parametrize("arm", ["outcome", "td-head", "distrl-qhead", "outcome-distrl-qhead", "distrl-mc"])
def test_every_arm_trains_and_records_its_budget(arm, tmp_path, shipped_head_checkpoint):
    kw: dict = {"split_from": str(shipped_head_checkpoint)}
    if arm == "outcome":
        kw["advantage"] = "outcome"
    elif arm == "td-head":
        kw.update(advantage="td", value="checkpoint", value_checkpoint=str(shipped_head_checkpoint))
    elif arm in ("distrl-qhead", "outcome-distrl-qhead"):
        ck = _qhead_checkpoint(tmp_path / "qhead")
        kw.update(advantage=arm.rpartition("-")[0], value="checkpoint", value_checkpoint=str(ck), split_from=None)
    else:
        kw.update(advantage="distrl", value="mc", mc_samples=1, max_steps=1, eval_every=1)
    res = run(_cfg(tmp_path / "out", **kw))
    assert res["steps"] == kw.get("max_steps", 2)
    assert [e["step"] for e in res["curve"]] == [0, res["steps"]]
    assert res["sampled_tokens"] > 0 and res["budget_tokens"] == res["sampled_tokens"] + res["value_tokens"]
    assert (res["value_tokens"] > 0) == (arm == "distrl-mc")
    assert res["final"]["n"] == 6 and 0.0 <= res["final"]["accuracy"] <= 1.0
    assert res["curve"][0]["kl_token"] == pytest.approx(0.0, abs=1e-9)  # the start policy against itself
    steps = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    trained = [s for s in steps if "loss" in s]
    assert len(trained) == res["steps"] and all(np.isfinite(s["grad_norm"]) for s in trained)
    if "distrl" in arm:
        assert all("candidate_loss" in s for s in trained)
    assert all(("td_abs_mean" in s) == arm.startswith(("td", "distrl")) for s in trained)
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, shipped_head_checkpoint):
    kw = {"advantage": "td", "value": "checkpoint", "value_checkpoint": str(shipped_head_checkpoint)}
    whole = run(_cfg(tmp_path / "whole", max_steps=3, eval_every=3, **kw))
    first = run(_cfg(tmp_path / "part", max_steps=2, eval_every=3, **kw))  # stops after step 2 (a kill's state)
    assert first["steps"] == 2
    resumed = run(_cfg(tmp_path / "part", max_steps=3, eval_every=3, **kw))
    assert resumed["steps"] == 3 and resumed["sampled_tokens"] == whole["sampled_tokens"]
    a = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "final" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    trained = [s for s in steps if s > 0]
    assert sorted(set(trained)) == [1, 2, 3]


def test_an_ensemble_gives_the_values_and_is_not_refreshed(tmp_path, shipped_head_checkpoint):
    second = tmp_path / "second"
    shutil.copytree(shipped_head_checkpoint, second)
    ens = tmp_path / "ens"
    assert cli.main(["ensemble", f"members=[{shipped_head_checkpoint},{second}]", f"out={ens}"]) == 0
    kw = {"advantage": "td", "value": "checkpoint", "value_checkpoint": str(ens), "max_steps": 1, "eval_every": 1}
    with pytest.raises(ConfigError, match="is an ensemble"):  # refresh trains the value checkpoint
        run(_cfg(tmp_path / "refresh", refresh_lr=0.1, **kw))
    res = run(_cfg(tmp_path / "out", **kw))
    assert res["steps"] == 1 and res["sampled_tokens"] > 0


def test_another_runs_folder_is_refused(tmp_path, shipped_head_checkpoint):
    run(_cfg(tmp_path / "out", advantage="outcome", split_from=str(shipped_head_checkpoint), max_steps=1, eval_every=1))
    with pytest.raises(ConfigError):
        run(
            _cfg(
                tmp_path / "out",
                advantage="outcome",
                split_from=str(shipped_head_checkpoint),
                max_steps=1,
                eval_every=1,
                learning_rate=0.5,
            )
        )


def test_padded_forward_matches_each_row_alone(tiny_gpt2):
    # a long prompt with a short completion beside a short prompt with a long one (the padding edge)
    from prefixvalue.rl.loop import completion_logprobs
    from prefixvalue.rl.values import Rollouts

    batch = Rollouts([], [[5, 6, 7, 8, 9, 10, 11], [5]], [[12, 13], [14, 15, 16, 17, 18, 19]], torch.zeros(2))
    tiny_gpt2.eval()
    logp, comp, mask = completion_logprobs(tiny_gpt2, batch, torch.device("cpu"))
    assert mask.tolist() == [[1, 1, 0, 0, 0, 0], [1] * 6]
    for i, (p, c) in enumerate(zip(batch.prompt_ids, batch.completion_ids)):
        alone = torch.log_softmax(tiny_gpt2(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
        want = alone[len(p) - 1 : len(p) + len(c) - 1]
        assert torch.allclose(logp[i, : len(c)], want, atol=1e-5)
        assert comp[i, : len(c)].tolist() == c


def test_online_refresh_trains_the_value_model(tmp_path, shipped_head_checkpoint):
    from prefixvalue.rl.values import CheckpointValues, Rollouts

    model = value.load_value_model(str(shipped_head_checkpoint), device="cpu")
    before = [p.detach().clone() for p in model.trainable_parameters()]
    src = CheckpointValues(model, batch_size=4, refresh_lr=1e-2, refresh_steps=2)
    batch = Rollouts([], [[5, 6, 7]] * 4, [[8, 9], [10, 11, 12], [8], [9, 9]], torch.tensor([1.0, 0.0, 1.0, 0.0]))
    loss = src.refresh(batch)
    assert loss is not None and np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.trainable_parameters()))
    assert CheckpointValues(model).refresh(batch) is None  # off by default
    res = run(
        _cfg(
            tmp_path / "out",
            advantage="td",
            value="checkpoint",
            value_checkpoint=str(shipped_head_checkpoint),
            refresh_lr=1e-3,
            max_steps=1,
            eval_every=1,
        )
    )
    steps = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert res["steps"] == 1 and any("value_refresh_loss" in s for s in steps)


def test_trl_anchor_runs_on_the_same_prompts_and_stops_at_the_budget(tmp_path, shipped_head_checkpoint):
    pytest.importorskip("trl")
    from prefixvalue.rl.anchor import AnchorConfig, run_trl

    cfg = _cfg(
        tmp_path / "trl",
        AnchorConfig,
        advantage="outcome",
        split_from=str(shipped_head_checkpoint),
        max_steps=5,
        eval_every=5,
        max_sampled_tokens=60,
    )
    res = run_trl(cfg)
    ours = run(
        _cfg(
            tmp_path / "ours",
            advantage="outcome",
            split_from=str(shipped_head_checkpoint),
            max_steps=5,
            eval_every=5,
            max_sampled_tokens=60,
        )
    )
    assert res["implementation"] == "trl.GRPOTrainer" and res["steps"] < 5  # stopped by the token budget
    assert res["sampled_tokens"] >= 60 and res["prompts"] == ours["prompts"]
    # the start policy scored by the one evaluator: the same draws whoever trains
    assert res["curve"][0]["accuracy"] == ours["curve"][0]["accuracy"]
    assert [e["step"] for e in res["curve"]] == [0, res["steps"]]


def test_positions_from_mask_score_left_padded_rows_as_generate_samples_them():
    from prefixvalue.policies import load_policy
    from prefixvalue.rl.anchor import positions_from_mask

    policy, tok = load_policy(str(SHIPPED_POLICY), "float32", "cpu")
    enc = tok(["Q:3+5*2-7=", "Q:1+1="], padding=True, padding_side="left", return_tensors="pt")
    alone = policy(input_ids=tok(["Q:1+1="], return_tensors="pt")["input_ids"]).logits[0]
    shifted = policy(**enc).logits[1, -alone.shape[0] :]  # a bare forward: the padding counted as positions
    assert not torch.allclose(shifted, alone, atol=1e-3)
    policy.register_forward_pre_hook(positions_from_mask, with_kwargs=True)
    fixed = policy(**enc).logits[1, -alone.shape[0] :]
    assert torch.allclose(fixed, alone, atol=1e-4)


@pytest.mark.slow  # a 2-process torch.distributed run (gloo)
def test_two_cpu_processes_match_one(tmp_path, shipped_head_checkpoint):
    """The recipe under 2 processes (each samples half of a step's prompts with the same keys) takes the same
    steps as one process: the loss is normalised by the tokens of both, so the all-reduced gradient is the same."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [
        f"policy={SHIPPED_POLICY}",
        "advantage=td",
        "value=checkpoint",
        f"value_checkpoint={shipped_head_checkpoint}",
        "num_prompts=60",
        "prompts_per_step=4",
        "num_generations=4",
        "max_steps=2",
        "eval_every=2",
        "eval_prompts=4",
        "eval_samples=1",
        "checkpoint_every=0",
        "max_sampled_tokens=0",
        "device=cpu",
        "report_to=disk",
    ]
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO / "src"),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(REPO / "recipes" / "distrl.py"),
        *args,
        f"out={tmp_path / 'two'}",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = run(parse_config(DistRLConfig, [*args, f"out={tmp_path / 'one'}"]))
    two = json.loads((tmp_path / "two" / "distrl.json").read_text())
    assert two["steps"] == one["steps"] == 2 and two["sampled_tokens"] == one["sampled_tokens"]
    a = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    start = load_file(str(SHIPPED_POLICY / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a[k], start[k]) for k in a if k in start)  # it did train
