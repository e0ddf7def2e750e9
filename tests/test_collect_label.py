"""`prefixvalue collect` and `prefixvalue label` through their real entry points.

pytest tests/test_collect_label.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from prefixvalue import cli
from prefixvalue.config import ConfigError
from prefixvalue.data import LABEL_FIELDS, TRACE_FIELDS, DataFormatError, load_labels, load_traces, shards
from prefixvalue.stages import collect, label
from prefixvalue.tasks import TASKS, ArithTask, VerifierResult

REPO = Path(__file__).resolve().parents[1]


def collect_args(model_dir, out, **kw):
    args = {
        "task": "arith",
        "model": str(model_dir),
        "num_prompts": 6,
        "traces_per_prompt": 3,
        "seed": 0,
        "max_new_tokens": 10,
        "chunk_prompts": 2,
        "out": str(out),
        "progress": "false",
    }
    args.update(kw)
    return [f"{k}={v}" for k, v in args.items()]


def label_args(traces, model_dir, out, **kw):
    args = {
        "traces": str(traces),
        "model": str(model_dir),
        "positions": "stride:3",
        "samples": 4,
        "seed": 0,
        "chunk_traces": 4,
        "out": str(out),
        "progress": "false",
        "prompts": "all",
    }
    args.update(kw)
    return [f"{k}={v}" for k, v in args.items()]


def rows(ds: datasets.Dataset) -> list[dict]:
    return [dict(r) for r in ds]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from prefixvalue.tokenizer import build_char_tokenizer

    from conftest import make_tiny_gpt2

    tok = build_char_tokenizer()
    path = tmp_path_factory.mktemp("m") / "tiny"
    make_tiny_gpt2(len(tok), seed=3).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def traces_dir(tmp_path_factory, model_dir):
    out = tmp_path_factory.mktemp("tr") / "traces"
    assert cli.main(["collect", *collect_args(model_dir, out)]) == 0
    return out


def test_collect_writes_the_contract(traces_dir):
    ds = load_traces(traces_dir)
    assert len(ds) == 18 and set(TRACE_FIELDS) <= set(ds.column_names)
    assert {"model", "sampling", "seed", "prefixvalue_version", "task", "backend"} <= set(ds.column_names)
    assert json.loads(ds[0]["backend"])["name"] == "hf"
    assert json.loads((traces_dir / "summary.json").read_text())["backend"]["name"] == "hf"
    assert "backend" not in json.loads((traces_dir / "run.json").read_text())  # hf runs resume as before
    assert ds[0]["trace_id"] == "arith-train-000000/s0" and len(set(ds["trace_id"])) == 18
    for r in ds:
        assert len(r["logprobs"]) == len(r["completion_ids"]) <= 10
        assert (r["completion_ids"][-1] == 1) == (r["finish_reason"] == "eos")
        assert "<eos>" not in r["completion"] and r["verifier_error"] is None
        assert r["outcome"] in (0.0, 1.0)
        assert r["step_labels"] is None or len(r["step_labels"]) == len(r["step_spans"])
        for s, e in r["step_spans"]:
            assert 0 <= s < e <= len(r["completion_ids"])
    assert json.loads(ds[0]["sampling"])["max_new_tokens"] == 10
    assert (traces_dir / "config.yaml").exists() and (traces_dir / "summary.json").exists()


def test_collect_step_spans_and_labels_on_a_real_trace(tmp_path, model_dir):
    """A correct arith completion gets one token span per ';'-step and all-true step labels."""
    from prefixvalue.sampling.sampler import Generation
    from prefixvalue.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    task = ArithTask()
    prompt = task.make_prompt("train", 0)
    ids = tok(prompt.meta["solution"], add_special_tokens=False)["input_ids"] + [1]
    row = collect.trace_rows(task, tok, [prompt], [[5]], [Generation(ids, [0.0] * len(ids), "eos")], ["t"], {}, None)[0]
    assert row["outcome"] == 1.0 and all(row["step_labels"])
    assert row["step_spans"][-1][1] == len(ids)  # EOS stays with the last step
    assert [ids[s:e] for s, e in row["step_spans"]][0] == tok(
        prompt.meta["solution"].split(";")[0] + ";", add_special_tokens=False
    )["input_ids"]


def test_collect_is_reproducible_and_sharding_does_not_matter(tmp_path, model_dir, traces_dir, monkeypatch):
    again = tmp_path / "again"
    assert collect.main(collect_args(model_dir, again)) == 0
    assert rows(load_traces(again)) == rows(load_traces(traces_dir))
    # two processes: rank 1 writes its shards, rank 0 writes its own and merges
    sharded = tmp_path / "sharded"

    class FakeState:
        device = "cpu"

        def wait_for_everyone(self):
            pass

    for rank in (1, 0):
        monkeypatch.setattr(shards, "dist_info", lambda rank=rank: (rank, 2, FakeState()))
        assert collect.main(collect_args(model_dir, sharded)) == 0
    assert rows(load_traces(sharded)) == rows(load_traces(traces_dir))
    monkeypatch.undo()
    other = tmp_path / "other"
    assert collect.main(collect_args(model_dir, other, seed=1)) == 0
    assert load_traces(other)["completion_ids"] != load_traces(traces_dir)["completion_ids"]


def test_collect_rejects_a_different_run_in_the_same_folder(model_dir, traces_dir):
    with pytest.raises(ConfigError, match="different run"):
        collect.main(collect_args(model_dir, traces_dir, traces_per_prompt=4))


@pytest.mark.slow  # a CLI subprocess; in process: a lost shard redone (test_label_reproducible_sharded_and_resumable)
def test_collect_resumes_after_a_kill(tmp_path, model_dir):
    """Kill a collect run part-way (SIGKILL), rerun it: nothing lost, nothing duplicated."""
    size = {"num_prompts": 12, "chunk_prompts": 1, "traces_per_prompt": 2, "max_new_tokens": 16}
    args = collect_args(model_dir, tmp_path / "killed", **size)
    ref_args = collect_args(model_dir, tmp_path / "ref", **size)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefixvalue.cli", "collect", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shards = tmp_path / "killed" / "shards"
    deadline = time.monotonic() + 600  # a guard against a hang, not a speed check (a busy machine may be slow)
    while time.monotonic() < deadline and proc.poll() is None:
        if shards.exists() and len([p for p in shards.glob("shard-*")]) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(shards.glob("shard-*")))
    assert 0 < done_before < 12, "the run was not killed part-way"
    assert not (tmp_path / "killed" / "state.json").exists()
    assert collect.main(args) == 0
    assert collect.main(ref_args) == 0
    killed, ref = load_traces(tmp_path / "killed"), load_traces(tmp_path / "ref")
    assert len(killed) == 24 and len(set(killed["trace_id"])) == 24
    # the killed run's first shards came from a 1-thread process: only float summation order
    # differs, so sampled tokens are identical and log-probs agree to float32 rounding
    for a, b in zip(rows(killed), rows(ref)):
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-5)
        a.pop("logprobs"), b.pop("logprobs")
        assert a == b


class CrashingArith(ArithTask):
    name = "crashing-arith"

    def verify(self, prompt, completion):
        if "3" in completion:
            raise RuntimeError("verifier exploded")
        return VerifierResult(0.0)


def test_verifier_crash_gives_outcome_zero_with_the_error(tmp_path, model_dir, monkeypatch):
    monkeypatch.setitem(TASKS, "crashing-arith", CrashingArith)
    out = tmp_path / "crash"
    assert collect.main(collect_args(model_dir, out, task="crashing-arith", num_prompts=8, max_new_tokens=20)) == 0
    ds = load_traces(out)
    crashed = [r for r in ds if r["verifier_error"] is not None]
    assert crashed and all(r["outcome"] == 0.0 and "verifier exploded" in r["verifier_error"] for r in crashed)
    assert all(("3" in r["completion"]) == (r["verifier_error"] is not None) for r in ds)


def test_label_writes_labels_and_cost(tmp_path, model_dir, traces_dir):
    out = tmp_path / "labels"
    assert cli.main(["label", *label_args(traces_dir, model_dir, out, max_traces=10)]) == 0
    ds = load_labels(out)
    assert set(LABEL_FIELDS) <= set(ds.column_names)
    traces = {r["trace_id"]: r for r in load_traces(traces_dir).select(range(10))}
    assert set(ds["trace_id"]) == set(traces)
    for r in ds:
        assert r["position"] % 3 == 0 and 0 <= r["position"] < len(traces[r["trace_id"]]["completion_ids"])
        assert r["n"] == 4 and r["mean"] == pytest.approx(r["successes"] / 4)
        assert r["ci_low"] <= r["mean"] <= r["ci_high"]
    expected = sum(len(range(0, len(t["completion_ids"]), 3)) for t in traces.values())
    assert len(ds) == expected
    cost = json.loads((out / "cost.json").read_text())
    assert cost["prefill_tokens"] > 0 and cost["generated_tokens"] > 0
    assert cost["rollouts"] == 4 * cost["prefixes_unique"] < 4 * cost["prefixes_requested"]  # position 0 is shared


def test_collect_then_label_by_default_labels_only_heldout_prompts(tmp_path, model_dir, traces_dir):
    """Issue 14, item 1: `label` as README step 2 runs it (no `prompts=`) labels only held-out traces, by the
    split train uses (heldout_fraction=0.2, split_seed=0), and max_traces counts after that choice."""
    from prefixvalue.data import SplitRecord, is_heldout, split_three

    traces = load_traces(traces_dir)
    sides = split_three(traces, 0.2, 0.1, 0)  # label's defaults, as train's
    train_side, held_side = sides["train"], sides["test"]
    assert len(held_side) >= 2 and len(train_side) > 0  # the fixture's 6 prompts hold some out
    out = tmp_path / "labels"
    args = [a for a in label_args(traces_dir, model_dir, out, max_traces=2) if not a.startswith("prompts=")]
    assert cli.main(["label", *args]) == 0
    labelled = set(load_labels(out)["trace_id"])
    assert labelled == set(held_side["trace_id"][:2])
    text = dict(zip(traces["trace_id"], traces["prompt"]))
    train_texts = set(train_side["prompt"])
    assert all(text[t] not in train_texts and is_heldout(text[t], 0.2, 0) for t in labelled)
    record = SplitRecord.load(out)
    assert record == SplitRecord.of(traces, 0.2, 0.1, 0)  # and the digest of every prompt it was drawn over
    written = json.loads((out / "split.json").read_text())
    assert written["prompts"] == "heldout" and written["n_traces_labelled"] == 2
    assert json.loads((out / "run.json").read_text())["prompts"] == "heldout"
    # prompts=train labels the training side only (MC targets for training)
    out_train = tmp_path / "labels_train"
    assert label.main(label_args(traces_dir, model_dir, out_train, prompts="train", max_traces=3)) == 0
    assert set(load_labels(out_train)["trace_id"]) == set(train_side["trace_id"][:3])
    assert json.loads((out_train / "split.json").read_text())["prompts"] == "train"
    # traces_per_prompt spreads the training labels over prompts: the first trace of each, then max_traces
    out_spread = tmp_path / "labels_spread"
    assert (
        label.main(label_args(traces_dir, model_dir, out_spread, prompts="train", traces_per_prompt=1, max_traces=3))
        == 0
    )
    firsts = list(dict.fromkeys(train_side["prompt"]))[:3]
    want = [train_side["trace_id"][train_side["prompt"].index(p)] for p in firsts]
    assert set(load_labels(out_spread)["trace_id"]) == set(want)
    # issue 28: prompts=validation labels the validation side only, recorded as such; never a train or test prompt
    val = split_three(traces, 0.2, 0.5, 0)["validation"]
    assert len(val) > 0
    out_val = tmp_path / "labels_val"
    args = label_args(traces_dir, model_dir, out_val, prompts="validation", validation_fraction=0.5, max_traces=2)
    assert label.main(args) == 0
    assert set(load_labels(out_val)["trace_id"]) == set(val["trace_id"][:2])
    written = json.loads((out_val / "split.json").read_text())
    assert written["prompts"] == "validation" and written["validation_fraction"] == 0.5
    assert {SplitRecord.load(out_val).side(text[t]) for t in load_labels(out_val)["trace_id"]} == {"validation"}


def test_label_reproducible_sharded_and_resumable(tmp_path, model_dir, traces_dir, monkeypatch):
    ref = tmp_path / "ref"
    assert label.main(label_args(traces_dir, model_dir, ref)) == 0

    class FakeState:
        device = "cpu"

        def wait_for_everyone(self):
            pass

    sharded = tmp_path / "sharded"
    for rank in (2, 1, 0):
        monkeypatch.setattr(shards, "dist_info", lambda rank=rank: (rank, 3, FakeState()))
        assert label.main(label_args(traces_dir, model_dir, sharded)) == 0
    assert rows(load_labels(sharded)) == rows(load_labels(ref))
    monkeypatch.undo()
    # a rerun after losing a shard (as after a kill) redoes only that shard
    import shutil

    shutil.rmtree(sharded / "shards" / "shard-00001")
    assert label.main(label_args(traces_dir, model_dir, sharded)) == 0
    assert rows(load_labels(sharded)) == rows(load_labels(ref))


def test_label_adaptive_and_short(tmp_path, model_dir, traces_dir):
    out = tmp_path / "adaptive"
    assert (
        label.main(
            label_args(
                traces_dir,
                model_dir,
                out,
                positions="adaptive",
                budget=40,
                round_samples=4,
                init_stride=4,
                max_traces=6,
            )
        )
        == 0
    )
    ds = load_labels(out)
    assert set(ds["method"]) == {"adaptive"}
    assert len(set(ds["trace_id"])) == 6 and min(ds["n"]) >= 4
    # the budget caps what each trace asks for; prefixes shared with other traces (position 0)
    # may hold more samples than one trace paid for
    assert json.loads((out / "cost.json").read_text())["rollouts"] <= 40 * 6
    out2 = tmp_path / "short"
    assert label.main(label_args(traces_dir, model_dir, out2, positions="short:2", max_traces=3)) == 0
    assert sorted(set(load_labels(out2)["position"])) == [0, 1, 2]


def test_label_rejects_malformed_input(tmp_path, model_dir, traces_dir):
    with pytest.raises(ConfigError):
        label.main(label_args(traces_dir, model_dir, tmp_path / "x", positions="every:3"))
    assert cli.main(["label", *label_args(traces_dir, model_dir, tmp_path / "x", positions="stride:0")]) == 2
    with pytest.raises(FileNotFoundError):
        label.main(label_args(tmp_path / "missing", model_dir, tmp_path / "y"))
    bad = tmp_path / "bad"
    load_traces(traces_dir).remove_columns(["completion_ids"]).save_to_disk(str(bad))
    with pytest.raises(DataFormatError, match="completion_ids"):
        label.main(label_args(bad, model_dir, tmp_path / "z"))
    empty = tmp_path / "empty"
    ds = load_traces(traces_dir)
    ds.map(  # no completion, so no steps (a step span past the completion is refused by load_traces)
        lambda r, i: {k: [] if i == 2 else r[k] for k in ("completion_ids", "step_spans")}, with_indices=True
    ).save_to_disk(str(empty))
    with pytest.raises(DataFormatError, match="empty completion_ids"):
        label.main(label_args(empty, model_dir, tmp_path / "w"))
    dup = tmp_path / "dup"
    datasets.concatenate_datasets([ds.select([0]), ds.select([0])]).save_to_disk(str(dup))
    with pytest.raises(DataFormatError, match="duplicate"):
        label.main(label_args(dup, model_dir, tmp_path / "v"))


# -- progress bars -----------------------------------------------------------------------------------
class RecordingBar:
    """Stands in for tqdm: records the updates and the total of the stages' bars."""

    bars: list[RecordingBar] = []

    def __init__(self, iterable=None, total=None, desc="", **kwargs):
        self.iterable, self.total, self.n, self.updates, self.postfix = iterable, total, 0, [], {}
        if str(desc).startswith(("collect", "label")):  # not the bars of model loading
            RecordingBar.bars.append(self)

    def __iter__(self):
        return iter(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.n += n
        self.updates.append(n)

    def set_postfix(self, **kwargs):
        self.postfix = kwargs

    def refresh(self):
        pass

    def close(self):
        pass


def test_progress_bars_move_per_batch_and_end_at_their_total(tmp_path, model_dir, traces_dir, monkeypatch):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    RecordingBar.bars = []
    # 3 shards of 2 prompts x 3 samples, decoded 2 rows at a time: 3 batches per shard
    out = tmp_path / "traces"
    assert collect.main(collect_args(model_dir, out, progress="true", batch_rows=2)) == 0
    (bar,) = RecordingBar.bars
    assert bar.updates == [2] * 9 and bar.n == bar.total == len(load_traces(out)) == 18
    assert "tok_s" in bar.postfix
    # label: the bar counts rollouts, several batches per shard (shards of 4 and 2 traces)
    RecordingBar.bars = []
    out = tmp_path / "labels"
    assert label.main(label_args(traces_dir, model_dir, out, max_traces=6, tree_rows=8, progress="true")) == 0
    (bar,) = RecordingBar.bars
    cost = json.loads((out / "cost.json").read_text())
    assert len(bar.updates) > cost["shards"] == 2 and all(u > 0 for u in bar.updates)
    assert bar.n == bar.total == cost["rollouts"]
    assert {"rollouts_s", "tok_s"} <= set(bar.postfix)
    # adaptive: the total starts at the budget and drops to the rollouts spent
    RecordingBar.bars = []
    out = tmp_path / "adaptive"
    args = label_args(traces_dir, model_dir, out, positions="adaptive", budget=40, round_samples=4, max_traces=6)
    assert label.main([*args, "tree_rows=8", "progress=true"]) == 0
    (bar,) = RecordingBar.bars
    rollouts = json.loads((out / "cost.json").read_text())["rollouts"]
    assert len(bar.updates) > 2 and bar.n == bar.total == rollouts < 40 * 6


# -- task options: --help and escapes ---------------------------------------------------------------
GSM = REPO / "tests" / "assets" / "jsonl_gsm.jsonl"


def test_collect_help_lists_every_task_option(capsys):
    with pytest.raises(SystemExit) as exc:
        collect.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.index("  progress (") < text.index("task_args.template (")  # after the stage's own options
    assert "task_args.template (str, default: '{prompt}')" in text
    assert "prompt template; {prompt} is the prompt field" in text
    assert "task_args.verifier_options (dict, default: {})" in text
    assert "keyword options of the verifier" in text
    assert "task_args.min_steps (int, default: 3)" in text  # arith's too
    assert r"on the command line \n, \t, \r, \\ are escapes" in text


def test_command_line_text_reads_escapes_yaml_and_paths_do_not(tmp_path, model_dir):
    out = tmp_path / "jsonl"
    args = collect_args(
        model_dir, out, task="jsonl", num_prompts=2, traces_per_prompt=1, max_new_tokens=3, chunk_prompts=2
    )
    args += [f"task_args.path={GSM}", "task_args.prompt_field=question", r"task_args.template=Q:\n{prompt}"]
    assert collect.main(args) == 0
    ds = load_traces(out)
    assert json.loads(ds[0]["task_args"])["template"] == "Q:\n{prompt}"
    assert ds[0]["prompt"].startswith("Q:\nTom has 3 apples")
    # a literal backslash before n is written \\n
    cfg = collect.CollectConfig(**{"task": "jsonl", "task_args": {"path": str(GSM)}})
    cli_cfg = collect.parse_config(collect.CollectConfig, ["task=jsonl", f"task_args.path={GSM}", r"stop=\\n,\t"])
    assert cli_cfg.stop == ["\\n", "\t"] and cfg.task_args == {"path": str(GSM)}
    # YAML values are taken as YAML gives them (single quotes: no escapes; double quotes: YAML's own)
    yml = tmp_path / "c.yaml"
    yml.write_text(f"task: jsonl\ntask_args:\n  path: {GSM}\n  template: 'Q:\\n{{prompt}}'\nstop: ['\\n', \"\\t\"]\n")
    cfg = collect.parse_config(collect.CollectConfig, ["--config", str(yml)])
    assert cfg.task_args["template"] == "Q:\\n{prompt}" and cfg.stop == ["\\n", "\t"]
    # paths are never unescaped
    odd = tmp_path / "dir\\new"
    odd.mkdir()
    (odd / "data.jsonl").write_text(GSM.read_text())
    cfg = collect.parse_config(collect.CollectConfig, ["task=jsonl", f"task_args.path={odd / 'data.jsonl'}"])
    assert cfg.task_args["path"] == str(odd / "data.jsonl") and "\\new" in cfg.task_args["path"]
