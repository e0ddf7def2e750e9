"""`prefixvalue evaluate`: main() on tiny data with a stand-in value model, the registry, and end to end."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from prefixvalue import value
from prefixvalue.config import ConfigError
from prefixvalue.data import rows_to_dataset
from prefixvalue.evaluation.estimators import ESTIMATORS, Estimator, EstimatorInputs
from prefixvalue.evaluation.metrics import wilson_interval
from prefixvalue.evaluation.scoring import evaluate_prefixes
from prefixvalue.stages import evaluate as ev
from prefixvalue.tasks import ArithTask

REPO = Path(__file__).resolve().parents[1]


def run_evaluate(argv: list[str]) -> dict:
    """`prefixvalue evaluate` with `argv`, as its command line parses it; returns the metrics (`ev.main`
    returns the exit status, `ev.run` the metrics)."""
    return ev.run(ev.parse_config(ev.EvaluateConfig, argv))


@dataclass
class _FakeConfig:
    base_model: str
    base_rate: float = 0.5
    beta: float = 10.0
    base_load: dict = dataclasses.field(default_factory=dict)


class FakeValueModel:
    """Stand-in honouring the `prefixvalue.value` interface: a model with fixed token log-ratios, so it
    gives process-level step scores, and a note on its value at position 0."""

    kind = "fake"
    process_scores = True
    position0_note = "at position 0 the fake gives its base rate"

    def __init__(self, base_model: str, base_rate: float = 0.5, beta: float = 10.0) -> None:
        self.config = _FakeConfig(base_model, base_rate, beta)
        self.calls = 0

    def token_log_ratios(self, prompt_ids_list, completion_ids_list, batch_size=32):
        return [np.array([((t * 7919) % 13 - 6) / 25.0 for t in c], dtype=np.float64) for c in completion_ids_list]

    def predict(self, prompt_ids_list, completion_ids_list, batch_size=32):
        self.calls += 1
        out = []
        for r in self.token_log_ratios(prompt_ids_list, completion_ids_list, batch_size):
            t = np.arange(1, len(r) + 1)
            v = self.config.beta * np.cumsum(r) / t
            out.append(np.concatenate([[self.config.base_rate], 1 / (1 + np.exp(-v))]))
        return out


def write_split(folder: Path, texts, heldout_fraction: float = 0.999999, split_seed: int = 0) -> Path:
    """Save the split record of a checkpoint trained on the prompts among `texts` that the split (a hash of
    the text, `prefixvalue.data.split`) puts on the training side; the default holds out (nearly) all."""
    from prefixvalue.data import SplitRecord, is_heldout

    train = [t for t in set(texts) if not is_heldout(t, heldout_fraction, split_seed)]
    SplitRecord.from_prompts(train, heldout_fraction, split_seed).save(folder)
    return folder


def make_tiny_eval(
    tokenizer, n_prompts: int = 6, per_prompt: int = 3, samples: int = 8, seed: int = 0, saturate: bool = False
):
    """Traces of the arith task written by hand (some steps wrong) and MC labels drawn around the fake P̂."""
    rng = np.random.default_rng(seed)
    task = ArithTask(min_steps=2, max_steps=3)
    prompts = list(task.prompts(n_prompts, split="test"))
    fake = FakeValueModel("unused")
    traces, labels = [], []
    for pi, prm in enumerate(prompts):
        nums, ops = task.parse_prompt(prm.text)
        right = task.solve(nums, ops)
        for j in range(per_prompt):
            completion = right
            if j == 1:  # corrupt one step's result
                steps = right.split(";")
                k = int(rng.integers(0, len(steps) - 1))
                a, c = steps[k].split("=")
                steps[k] = f"{a}={(int(c) + 1) % 10}"
                completion = ";".join(steps)
            elif j == 2 and pi % 2:  # wrong final answer only
                completion = right.rsplit("A:", 1)[0] + f"A:{(int(right.rsplit(':', 1)[1]) + 3) % 10}"
            pids = tokenizer(prm.text, add_special_tokens=False)["input_ids"]
            cids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            spans = task.split_steps(completion)  # one char per token: char spans are token spans
            tid = f"{prm.prompt_id}-{j}"
            traces.append(
                {
                    "trace_id": tid,
                    "prompt_id": prm.prompt_id,
                    "prompt": prm.text,
                    "completion": completion,
                    "prompt_ids": pids,
                    "completion_ids": cids,
                    "outcome": task.verify(prm, completion).score,
                    "verifier_error": None,
                    "step_spans": [list(s) for s in spans],
                    "step_labels": task.step_labels(prm, completion),
                    "logprobs": [0.0] * len(cids),
                }
            )
            p_hat = fake.predict([pids], [cids])[0]
            positions = sorted({0, 1, 2, 3, *[e for _, e in spans], len(cids)})
            for p in positions:
                k = samples if saturate else int(rng.binomial(samples, p_hat[p]))
                lo, hi = wilson_interval(k, samples)
                labels.append(
                    {
                        "trace_id": tid,
                        "position": p,
                        "n": samples,
                        "successes": k,
                        "mean": k / samples,
                        "ci_low": lo,
                        "ci_high": hi,
                    }
                )
    return traces, labels


def _write(tmp_path: Path, traces, labels, cost: dict | None = None) -> tuple[Path, Path]:
    tdir, ldir = tmp_path / "traces", tmp_path / "labels"
    rows_to_dataset(traces).save_to_disk(str(tdir))
    rows_to_dataset(labels).save_to_disk(str(ldir))
    if cost is not None:
        (ldir / "cost.json").write_text(json.dumps(cost))
    return tdir, ldir


def _no_nan(obj) -> None:
    if isinstance(obj, dict):
        for v in obj.values():
            _no_nan(v)
    elif isinstance(obj, list):
        for v in obj:
            _no_nan(v)
    elif isinstance(obj, float):
        assert math.isfinite(obj)


def test_main_on_tiny_data(tmp_path, tiny_tokenizer, tiny_model_dir, monkeypatch):
    traces, labels = make_tiny_eval(tiny_tokenizer)
    tdir, ldir = _write(tmp_path, traces, labels, cost={"generated_tokens": 50000, "prefill_tokens": 7000})
    fake = FakeValueModel(str(tiny_model_dir))
    monkeypatch.setattr(ev, "_load_value_model", lambda path, device, options=None: fake)
    ckpt = write_split(tmp_path / "ckpt", [t["prompt"] for t in traces])
    from prefixvalue.data import SplitRecord

    assert all(SplitRecord.load(ckpt).is_heldout(t["prompt"]) for t in traces)  # every prompt held out
    out = tmp_path / "eval"
    metrics = run_evaluate(
        [
            f"checkpoint={ckpt}",
            f"traces={tdir}",
            f"labels={ldir}",
            f"out={out}",
            "n_bootstrap=40",
            "noise_ceiling_repeats=10",
            "report_to=disk",
            "mellowmax_top_k=[5]",
        ]
    )

    for name in (
        "metrics.json",
        "report.md",
        "heatmap.html",
        "calibration.png",
        "scatter.png",
        "value_curves.png",
        "predictions.parquet",
        "config.yaml",
    ):
        assert (out / name).exists(), name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["n_traces"] == len(traces)
    assert on_disk["n_prefixes"] == len(labels)
    for key in ("positions", "mc", "estimators", "step_verification", "cost"):
        assert key in on_disk
    for key in ("samples_per_prefix", "label_mean", "label_variance", "noise_ceiling", "saturated", "note"):
        assert key in on_disk["mc"]
    assert on_disk["mc"]["samples_per_prefix"] == 8
    assert on_disk["mc"]["noise_ceiling"]["method"] == "hypergeometric"
    assert on_disk["mc"]["noise_ceiling"]["spearman"] is not None

    ests = on_disk["estimators"]
    assert {
        "learned",
        "constant",
        "logsumexp",
        "mellowmax",
        "mellowmax_w0.1",
        "mellowmax_w10",
        "mellowmax_top5_w1",
    } <= set(ests)
    assert ests["mellowmax"]["params"]["omega"] == 1.0 and on_disk["mellowmax_default"]["omega"] == 1.0
    for m in ests.values():
        for c in ("pearson", "spearman", "kendall"):
            assert set(m[c]) >= {"value", "ci"}
        for k in ("brier", "ece", "auroc_outcome"):
            assert k in m
            if m[k] is None:
                assert m[f"{k}_note"]
    # labels were drawn around the fake's P̂: the learned value must track them
    assert ests["learned"]["spearman"]["value"] > 0.3
    lo, hi = ests["learned"]["spearman"]["ci"]
    assert lo <= ests["learned"]["spearman"]["value"] <= hi
    assert ests["learned"]["brier"] is not None and 0 <= ests["learned"]["ece"] <= 1
    # soft values are not probabilities; the constant has no variance: null with words, never NaN
    assert ests["mellowmax"]["brier"] is None and "probability" in ests["mellowmax"]["brier_note"]
    assert ests["constant"]["spearman"]["value"] is None
    assert "zero variance" in ests["constant"]["spearman"]["note"]
    assert ests["constant"]["auroc_outcome"] == pytest.approx(0.5)

    sv = on_disk["step_verification"]
    assert sv["threshold_split"] == "calibration"
    assert sv["n_calibration"] > 0 and sv["n_test"] > 0
    assert sv["n_calibration"] + sv["n_test"] == len(traces)
    assert "process_level" in sv
    assert set(on_disk["by_position_group"]) == {"first_k", "step_boundary", "middle"}
    cost = on_disk["cost"]
    assert cost["value_forward_passes"] == 1  # a model that names no passes counts one
    assert cost["value_forward_tokens"] == sum(len(t["prompt_ids"]) + len(t["completion_ids"]) for t in traces)
    assert cost["mc_generated_tokens"] == 50000
    assert cost["ratio_mc_to_value"] == pytest.approx(50000 / cost["value_forward_tokens"])
    assert cost["ratio_mc_to_value_compute"] is None and "parameters" in cost["ratio_mc_to_value_compute_note"]
    _no_nan(on_disk)
    assert metrics["n_prefixes"] == on_disk["n_prefixes"]

    import pyarrow.parquet as pq

    table = pq.read_table(out / "predictions.parquet")
    assert table.num_rows == len(labels)
    assert {"trace_id", "position", "mc_mean", "learned", "mellowmax", "learned_td"} <= set(table.column_names)
    report = (out / "report.md").read_text()
    assert "Spearman" in report and "![" in report and "heatmap.html" in report


def test_saturated_labels_are_explained(tmp_path, tiny_tokenizer):
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=3, saturate=True)
    cfg = ev.EvaluateConfig(n_bootstrap=20, noise_ceiling_repeats=5)
    res = evaluate_prefixes(
        rows_to_dataset(traces), rows_to_dataset(labels), value_model=FakeValueModel("x"), options=cfg
    )
    m = res.metrics
    assert m["mc"]["saturated"] is True
    assert m["mc"]["label_variance"] == 0.0
    assert f"all {len(labels)} prefixes" in m["mc"]["note"]
    assert m["mc"]["noise_ceiling"]["spearman"] is None and m["mc"]["noise_ceiling"]["note"]
    learned = m["estimators"]["learned"]
    assert learned["spearman"]["value"] is None and "zero variance" in learned["spearman"]["note"]
    text = json.dumps(m, allow_nan=False)  # valid JSON: raises on NaN
    assert "NaN" not in text


def test_user_registered_estimator(tmp_path, tiny_tokenizer, monkeypatch):
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=3)

    def length_fraction(inputs: EstimatorInputs) -> list[np.ndarray]:
        return [np.linspace(0, 1, t.length + 1) for t in inputs.traces]

    monkeypatch.setitem(
        ESTIMATORS, "length_fraction", Estimator(length_fraction, probability=True, description="p / T")
    )
    cfg = ev.EvaluateConfig(n_bootstrap=20, noise_ceiling_repeats=5, base_rate=0.4)
    res = evaluate_prefixes(traces, labels, options=cfg)
    est = res.metrics["estimators"]
    assert set(est) == {"constant", "length_fraction"}  # no value model, no policy given
    assert est["constant"]["base_rate"] == 0.4
    assert est["length_fraction"]["spearman"]["value"] is not None
    assert est["length_fraction"]["description"] == "p / T"
    assert res.metrics["step_verification"]["f1"] is None and res.metrics["step_verification"]["note"]
    assert res.metrics["cost"]["mc_generated_tokens"] is None and res.metrics["cost"]["mc_generated_tokens_note"]


def test_config_validation():
    with pytest.raises(ConfigError):
        ev.EvaluateConfig(out="x", checkpoint="c", traces="t").check_inputs()  # labels missing
    with pytest.raises(ConfigError):
        ev.EvaluateConfig(out="x", checkpoint="c", traces="t", labels="l", mellowmax_omega=0)
    with pytest.raises(ConfigError):
        ev.EvaluateConfig(checkpoint="c", traces="t", labels="l").check_inputs()  # out missing
    with pytest.raises(ConfigError):
        ev.main(["out=x", "policy=p"])  # nothing to evaluate
    with pytest.raises(ConfigError):
        ev.parse_config(ev.EvaluateConfig, ["out=x", "checkpoint=c", "step_data=f", "omegaz=1"])


@pytest.mark.slow  # the whole loop; each stage has fast tests of its own
def test_end_to_end_collect_label_train_evaluate(tmp_path):
    """collect -> label -> train (few steps) -> evaluate on the shipped policy, with the real value model."""
    from prefixvalue.cli import main as cli

    policy = REPO / "data" / "policies" / "arith-tiny"
    traces, labels, ckpt, out = (tmp_path / d for d in ("traces", "labels", "ckpt", "eval"))
    collect_argv = ["collect", "task=arith", f"model={policy}", "num_prompts=6", "traces_per_prompt=3", f"out={traces}"]
    assert cli(collect_argv) == 0
    assert cli(["label", f"traces={traces}", f"model={policy}", "positions=steps", "samples=4", f"out={labels}"]) == 0
    spec = importlib.util.spec_from_file_location("pv_train_recipe", REPO / "recipes" / "train.py")
    train = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(train)
    train.main(
        [
            "--config",
            str(REPO / "recipes" / "configs" / "arith-tiny.yaml"),
            f"traces={traces}",
            f"output_dir={ckpt}",
            "max_steps=2",
            "report_to=none",
            f"policy={policy}",
        ]
    )
    # training wrote its split record; label labelled held-out traces only, so evaluate drops nothing
    metrics = run_evaluate(
        [
            f"checkpoint={ckpt / 'final'}",
            f"traces={traces}",
            f"labels={labels}",
            f"out={out}",
            "n_bootstrap=20",
            "report_to=disk",
        ]
    )
    assert metrics["n_traces"] > 0 and "learned" in metrics["estimators"]
    assert metrics["split"]["includes_training_prompts"] is False and metrics["split"]["heldout_prompts"] > 0
    assert metrics["split"]["dropped_prefixes"] == 0
    for name in ("metrics.json", "report.md", "heatmap.html", "calibration.png", "value_curves.png"):
        assert (out / name).exists()


@pytest.mark.parametrize("kind", list(value.VALUE_MODELS))
def test_main_with_real_value_model(tmp_path, tiny_tokenizer, tiny_model_dir, kind):
    """evaluate main() on a saved checkpoint of each real value model."""
    import torch

    torch.manual_seed(0)
    cfg = value.ValueModelConfig(kind=kind, base_model=str(tiny_model_dir), base_rate=0.4, backbone="lora")
    vm = value.build_value_model(cfg)
    vm.save_pretrained(tmp_path / "ckpt")
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=4)
    tdir, ldir = _write(tmp_path, traces, labels)
    out = tmp_path / "eval"
    metrics = run_evaluate(
        [
            f"checkpoint={tmp_path / 'ckpt'}",
            f"traces={tdir}",
            f"labels={ldir}",
            f"out={out}",
            "n_bootstrap=20",
            "noise_ceiling_repeats=5",
            "report_to=disk",
            "device=cpu",
            "include_training_prompts=true",
        ]
    )  # a hand-built checkpoint has no split record
    assert metrics["split"]["includes_training_prompts"] is True
    assert "not held-out figures" in (out / "report.md").read_text().split("## ")[0]
    assert metrics["policy"] == str(tiny_model_dir)  # defaults to the checkpoint's reference model
    learned = metrics["estimators"]["learned"]
    assert learned["kind"] == kind and learned["probability"] is True
    assert metrics["estimators"]["constant"]["base_rate"] == pytest.approx(0.4)
    assert ("process_level" in metrics["step_verification"]) == getattr(vm, "process_scores", False)
    assert metrics["cost"]["mc_generated_tokens"] is None and metrics["cost"]["mc_generated_tokens_note"]
    # LoRA: the implicit model and the Q-head also run the reference policy (adapters off), the plain head does not
    passes = {"implicit": 2, "qhead": 2, "head": 1}[kind]
    one_pass = sum(len(t["prompt_ids"]) + len(t["completion_ids"]) for t in traces)
    assert metrics["cost"]["value_forward_passes"] == vm.forward_passes == passes
    assert metrics["cost"]["value_forward_tokens"] == passes * one_pass
    # compute: each pass's tokens weighed by what it runs per token (the reference pass: the base without adapters)
    backbone = sum(p.numel() for p in vm.lm.parameters())
    base = sum(p.numel() for n, p in vm.lm.named_parameters() if "lora_" not in n)
    assert (
        vm.pass_parameters == [backbone, base][:passes]
        and metrics["cost"]["value_pass_parameters"] == vm.pass_parameters
    )
    policy_n = metrics["cost"]["policy_parameters"]
    assert policy_n == base  # the policy is the checkpoint's reference model here
    assert metrics["cost"]["value_forward_policy_tokens"] == pytest.approx(
        one_pass * sum(vm.pass_parameters) / policy_n
    )
    assert metrics["cost"]["ratio_mc_to_value_compute"] is None  # no MC cost known
    on_disk = json.loads((out / "metrics.json").read_text())
    _no_nan(on_disk)
    for name in ("report.md", "heatmap.html", "value_curves.png", "predictions.parquet"):
        assert (out / name).exists()


def test_main_scores_processbench_file(tmp_path, tiny_model_dir, monkeypatch):
    """``--step_data`` alone: ProcessBench JSON lines scored with the value model, threshold on calibration."""
    fake = FakeValueModel(str(tiny_model_dir))
    monkeypatch.setattr(ev, "_load_value_model", lambda path, device, options=None: fake)
    rows = [
        {
            "id": f"p{i}-{g}",
            "problem": f"Q:{i}+1=",
            "steps": [f"{i}+1={i + 1}", f"A:{i + 1 + g}"],
            "label": 1 if g else -1,
        }
        for i in range(10)
        for g in (0, 1)
    ]
    pb = tmp_path / "pb.jsonl"
    pb.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "pb_eval"
    metrics = run_evaluate(["checkpoint=ckpt", f"step_data={pb}", f"out={out}", "report_to=disk"])
    sb = metrics["step_benchmark"]
    assert sb["n_examples"] == 20 and sb["threshold_split"] == "calibration"
    assert sb["n_calibration"] + sb["n_test"] == 20 and sb["n_calibration"] > 0 and sb["n_test"] > 0
    assert "process_level" in sb  # the stand-in gives process-level scores
    assert json.loads((out / "metrics.json").read_text())["step_benchmark"]["source"] == str(pb)
    assert "Step benchmark" in (out / "report.md").read_text()


def test_evaluate_scores_only_heldout_prompts(tmp_path, tiny_tokenizer, tiny_model_dir, monkeypatch):
    """Issue 14 item 1: the checkpoint's split record drops training prompts and metrics.json counts them;
    a checkpoint without a record is refused; include_training_prompts scores all and says so."""
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=4)
    tdir, ldir = _write(tmp_path, traces, labels)
    monkeypatch.setattr(ev, "_load_value_model", lambda path, device, options=None: FakeValueModel(str(tiny_model_dir)))
    from prefixvalue.data import is_heldout

    texts = sorted({t["prompt"] for t in traces})
    # a split seed that puts some but not all of the 4 prompts on the training side (the split is a hash)
    seed = next(s for s in range(100) if 0 < sum(not is_heldout(t, 0.3, s) for t in texts) < len(texts))
    train_texts = {t for t in texts if not is_heldout(t, 0.3, seed)}
    n_drop_traces = sum(t["prompt"] in train_texts for t in traces)
    drop_ids = {t["trace_id"] for t in traces if t["prompt"] in train_texts}
    n_drop_prefixes = sum(r["trace_id"] in drop_ids for r in labels)
    ckpt = write_split(tmp_path / "ckpt", texts, 0.3, seed)
    base = [
        f"checkpoint={ckpt}",
        f"traces={tdir}",
        f"labels={ldir}",
        "n_bootstrap=10",
        "noise_ceiling_repeats=5",
        "report_to=disk",
        "soft_values=false",
    ]
    m = run_evaluate([*base, f"out={tmp_path / 'e1'}"])
    sp = m["split"]
    assert sp["includes_training_prompts"] is False
    assert sp["dropped_training_prompts"] == len(train_texts) and sp["dropped_prefixes"] == n_drop_prefixes
    assert (
        sp["heldout_prompts"] == len(texts) - len(train_texts) and sp["heldout_traces"] == len(traces) - n_drop_traces
    )
    assert sp["kept_prefixes"] == m["n_prefixes"] == len(labels) - n_drop_prefixes
    assert sp["heldout_fraction"] == 0.3 and sp["split_seed"] == seed and sp["source"].endswith("split.json")
    assert json.loads((tmp_path / "e1" / "metrics.json").read_text())["split"] == sp
    import pyarrow.parquet as pq

    assert not drop_ids & set(pq.read_table(tmp_path / "e1" / "predictions.parquet")["trace_id"].to_pylist())
    # include_training_prompts: nothing dropped, and the report says so in words at the top
    m = run_evaluate([*base, f"out={tmp_path / 'e2'}", "include_training_prompts=true"])
    assert m["n_prefixes"] == len(labels) and m["split"]["includes_training_prompts"] is True
    assert m["split"]["dropped_prefixes"] == 0 and m["split"]["training_prompts_scored"] == len(train_texts)
    top = (tmp_path / "e2" / "report.md").read_text().split("## ")[0]
    assert f"include {len(train_texts)} training prompt(s)" in top and "not held-out figures" in top
    # a checkpoint without a record: refused in one line
    (tmp_path / "bare").mkdir()
    with pytest.raises(ConfigError, match="records no split"):
        ev.main([*base[1:], f"checkpoint={tmp_path / 'bare'}", f"out={tmp_path / 'e3'}"])


def test_bootstrap_resamples_prompts_by_default(tiny_tokenizer):
    """Issue 14 item 3: the CI resamples prompts (traces of a prompt together); trace resampling differs."""
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=4, per_prompt=2)
    m_prompt = evaluate_prefixes(
        traces,
        labels,
        value_model=FakeValueModel("x"),
        options=ev.EvaluateConfig(n_bootstrap=200, noise_ceiling_repeats=5),
    ).metrics
    m_trace = evaluate_prefixes(
        traces,
        labels,
        value_model=FakeValueModel("x"),
        options=ev.EvaluateConfig(n_bootstrap=200, noise_ceiling_repeats=5, bootstrap_unit="trace"),
    ).metrics
    assert m_prompt["bootstrap_unit"] == "prompt" and m_trace["bootstrap_unit"] == "trace"
    assert "resample whole prompts (4 of them)" in m_prompt["bootstrap_note"]
    a = m_prompt["estimators"]["learned"]["spearman"]
    b = m_trace["estimators"]["learned"]["spearman"]
    assert a["value"] == b["value"] and a["ci"] != b["ci"]
    # by hand: the prompt bootstrap of the same statistic
    from prefixvalue.evaluation.metrics import CORRELATION_FUNCS, cluster_bootstrap
    from prefixvalue.evaluation.scoring import POSITION_GROUPS  # noqa: F401  (the table's columns)

    res = evaluate_prefixes(
        traces,
        labels,
        value_model=FakeValueModel("x"),
        options=ev.EvaluateConfig(n_bootstrap=200, noise_ceiling_repeats=5),
    )
    x, y = np.asarray(res.prefixes["learned"]), np.asarray(res.prefixes["mc_mean"])
    ci, _ = cluster_bootstrap(
        lambda i: CORRELATION_FUNCS["spearman"](x[i], y[i]), np.asarray(res.prefixes["prompt_id"]), n_boot=200, seed=0
    )
    assert a["ci"] == pytest.approx(ci)
    g = res.metrics["by_position_group"]["step_boundary"]["estimators"]["learned"]["spearman"]
    assert g["value"] is None or "noise_ceiling" in g


def test_nan_labels_are_dropped_and_fractional_successes_kept(tiny_tokenizer):
    """Issue 14 items 9 and 10: a label with n = 0 is dropped with a counted note (no NaN anywhere, report
    renders); fractional successes stay floats (k/n and the noise ceiling use them)."""
    from prefixvalue.evaluation.report import render_markdown

    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=4)
    labels = [dict(r) for r in labels]
    labels[0].update(n=0, successes=0, mean=float("nan"), ci_low=0.0, ci_high=1.0)
    for r in labels[1:6]:
        r["successes"] = r["successes"] + 0.5 if r["successes"] < r["n"] else r["successes"] - 0.5
        r["mean"] = r["successes"] / r["n"]
    res = evaluate_prefixes(
        traces,
        labels,
        value_model=FakeValueModel("x"),
        options=ev.EvaluateConfig(n_bootstrap=10, noise_ceiling_repeats=5),
    )
    m = res.metrics
    assert m["n_prefixes"] == len(labels) - 1 and m["dropped_labels_without_samples"] == 1
    assert any("no MC samples" in n for n in m["notes"])
    assert "nan" not in m["mc"]["note"].lower()
    assert m["estimators"]["learned"]["brier"] is not None
    assert [s for s in res.prefixes["successes"] if s != int(s)]  # fractional kept
    assert "randomly rounded" in m["mc"]["noise_ceiling"]["method"]
    json.dumps(m, allow_nan=False)
    m["mc"]["label_mean"] = None  # a None label mean must render, not crash
    render_markdown(m, {})


def test_forward_passes_show_a_progress_bar_over_traces(tiny_gpt2, tiny_tokenizer, monkeypatch):
    import tqdm.auto

    from prefixvalue.evaluation.estimators import TraceRecord, estimate_values
    from prefixvalue.evaluation.softvalues import SoftValueSpec

    bars = []

    class Bar:
        def __init__(self, total=None, desc="", disable=False, **kwargs):
            self.total, self.desc, self.disable, self.updates = total, desc, disable, []
            bars.append(self)

        def update(self, n=1):
            self.updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    traces, _ = make_tiny_eval(tiny_tokenizer, n_prompts=3)
    records = [TraceRecord.from_row(t) for t in traces]
    spec = SoftValueSpec(omegas=(1.0,), default_omega=1.0, top_k=())
    kw = {"batch_size": 2, "soft_values": spec}
    shown = estimate_values(records, FakeValueModel("x"), tiny_gpt2, tiny_tokenizer, progress=True, **kw)
    assert [b.desc for b in bars] == [
        "evaluate: value model",
        "evaluate: value log-ratios",
        "evaluate: policy soft values",
    ]
    for b in bars:
        assert not b.disable and len(b.updates) == math.ceil(len(records) / 2)
        assert sum(b.updates) == b.total == len(records)
    bars.clear()
    hidden = estimate_values(records, FakeValueModel("x"), tiny_gpt2, tiny_tokenizer, **kw)
    assert all(b.disable for b in bars)  # progress=False: the bars are off
    for a, b in zip(shown.curves, hidden.curves):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert ev.EvaluateConfig().progress is True and ev.EvaluateConfig(progress=False).progress is False


def test_one_evaluator_takes_checkpoint_folders_or_loaded_models(tmp_path, tiny_tokenizer, tiny_model_dir):
    """Issue 27 item 1: `prefixvalue.evaluate` (the evaluator the evaluate stage, the quickstart and distance
    call) scores a checkpoint given as a folder or as a loaded model alike: the first is ``learned``, the
    others ``learned_<name>``; a folder's split record holds out its training prompts, its labels folder
    gives the MC cost, and only `ScoringOptions` (no stage config) say how."""
    import torch

    from prefixvalue import ScoringOptions, evaluate

    torch.manual_seed(0)
    vcfg = value.ValueModelConfig(kind="head", base_model=str(tiny_model_dir), base_rate=0.4, backbone="lora")
    value.build_value_model(vcfg).save_pretrained(tmp_path / "ckpt")
    traces, labels = make_tiny_eval(tiny_tokenizer, n_prompts=4)
    ckpt = write_split(tmp_path / "ckpt", [t["prompt"] for t in traces])
    tdir, ldir = _write(tmp_path, traces, labels, cost={"generated_tokens": 5000, "prefill_tokens": 700})
    options = ScoringOptions(n_bootstrap=10, noise_ceiling_repeats=5)
    by_path = evaluate({"head": ckpt, "again": str(ckpt)}, tdir, ldir, options).metrics
    vm = value.load_value_model(ckpt)
    loaded = evaluate({"head": vm, "again": vm}, rows_to_dataset(traces), labels, options).metrics
    assert {"learned", "learned_again", "constant"} == set(by_path["estimators"]) == set(loaded["estimators"])
    assert by_path["estimators"] == loaded["estimators"]
    assert by_path["split"]["source"] == str(ckpt / "split.json") and by_path["split"]["dropped_prefixes"] == 0
    assert loaded["split"]["source"] is None and "cannot be checked" in loaded["split"]["note"]  # no folder given
    assert by_path["cost"]["mc_generated_tokens"] == 5000 and loaded["cost"]["mc_generated_tokens"] is None
    # arith traces carry exact step labels: with a split record the oracle is fit on the training prompts
    texts = sorted({t["prompt"] for t in traces})
    from prefixvalue.data import is_heldout

    seed = next(s for s in range(100) if 0 < sum(not is_heldout(t, 0.5, s) for t in texts) < len(texts))
    write_split(tmp_path / "half", texts, 0.5, seed)
    half = evaluate({"head": vm}, tdir, ldir, dataclasses.replace(options, split_record=str(tmp_path / "half")))
    assert "step_oracle" in half.metrics["estimators"] and half.metrics["split"]["dropped_training_prompts"] > 0


def test_components_import_no_stage():
    """Issue 27 item 2: the components know nothing of the stages (scoring once typed its options as the
    evaluate stage's config, a cycle); the evaluation package, the one evaluator with it, imports no stage."""
    import ast

    for path in sorted((REPO / "src" / "prefixvalue" / "evaluation").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "stages" not in (node.module or "").split("."), f"{path} imports {node.module}"


def test_cost_weighs_each_pass_by_the_parameters_it_runs():
    """A value model smaller than the policy costs less per token: its passes' tokens count in tokens of the policy."""
    from prefixvalue.evaluation.scoring import _cost_section, _sampler_cost

    cost = {"value_forward_tokens": 200, "value_pass_parameters": [100, 50], "policy_parameters": 300}
    out = _cost_section(cost, {"generated_tokens": 3000}, n_pref=10, n_labelled=10)
    assert out["ratio_mc_to_value"] == pytest.approx(15.0)
    assert out["value_forward_policy_tokens"] == pytest.approx(100 * 150 / 300)  # 2 passes of 100 tokens
    assert out["ratio_mc_to_value_compute"] == pytest.approx(3000 / 50)
    # the policy itself, twice (a head reading the reference beside its adapted backbone): tokens and compute agree
    same = _cost_section({**cost, "value_pass_parameters": [300, 300]}, {"generated_tokens": 3000}, 10, 10)
    assert same["ratio_mc_to_value_compute"] == pytest.approx(same["ratio_mc_to_value"])
    # another policy than the one that wrote the traces (allow_other_policy) does not price the MC tokens
    other = torch.nn.Linear(2, 2)
    other.config = SimpleNamespace(_name_or_path="models/other")
    kept = _sampler_cost(cost, other, "models/other")
    assert kept is cost
    dropped = _sampler_cost(cost, other, "models/sampler")
    assert "policy_parameters" not in dropped and "models/sampler" in dropped["policy_parameters_note"]
    out = _cost_section(dropped, {"generated_tokens": 3000}, 10, 10)
    assert out["ratio_mc_to_value_compute"] is None and "models/sampler" in out["ratio_mc_to_value_compute_note"]
