"""Step formats that travel and current TRL (issue 34, items 4 and 5): Math-Shepherd rows TRL's converter reads,
ProcessBench's exact first-error labels, evaluate reading a project export's recorded options, a token-
classification PRM trained on the TRL export, the README's TRL version, and TRL-native stepwise data imported."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import sys
from itertools import chain
from pathlib import Path

import datasets
import pytest
from test_bridges import POLICY, _import, _rollouts, _write_jsonl

from prefixvalue import cli
from prefixvalue.data import load_traces
from prefixvalue.data.bridges import STEP_TAG
from prefixvalue.tasks import build_task
from prefixvalue.tasks.base import first_error

REPO = Path(__file__).resolve().parents[1]


def _mc_labels(tmp_path: Path, traces: Path) -> Path:
    """MC labels at every step end but the last: successes 0, 1, 2, 0, ... of n = 2 (as label writes them)."""
    from prefixvalue.data.schema import LABEL_FEATURES

    rows = []
    for t in load_traces(traces):
        for _, e in t["step_spans"]:
            if e < len(t["completion_ids"]):
                k = float(len(rows) % 3)
                rows.append({"trace_id": t["trace_id"], "position": e, "n": 2, "successes": k, "mean": k / 2})
    full = {c: None for c in LABEL_FEATURES}
    ds = datasets.Dataset.from_list(
        [{**full, **r, "ci_low": 0.0, "ci_high": 1.0} for r in rows], features=LABEL_FEATURES
    )
    ds.save_to_disk(str(tmp_path / "labels"))
    return tmp_path / "labels"


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def trl_math_shepherd_converter(example: dict) -> dict:
    """What TRL's Math-Shepherd converter does to one row of the dataset (read, not copied, from
    https://github.com/huggingface/trl/blob/main/examples/datasets/math_shepherd.py, ``process_example``; TRL
    1.16 does not ship it in the package): the two-character tag ``ки`` becomes one character so ``input`` and
    ``label`` line up; the label at each tag's place is ``+`` or ``-``; the text before the first tag is the
    prompt with the first step after ``Step 1:``; the rest are the other steps; the map removes the ``input``,
    ``label`` and ``task`` columns (a missing one is an error). Special cases of the real dataset's annotation
    errors (prompts starting "Mr. Rocky", ...) are left out: no arith prompt starts so."""
    for column in ("input", "label", "task"):
        if column not in example:
            raise KeyError(column)
    text = example["input"].replace(STEP_TAG, "\u2dbb")
    at = [m.start() for m in re.finditer("\u2dbb", text)]
    if not all(example["label"][i] in "+-" for i in at):
        raise ValueError("a tag's place in label is not + or -")
    labels = [example["label"][i] == "+" for i in at]
    pieces = [text[i:j] for i, j in zip(chain([0], at), chain(at, [None]))][:-1]
    prompt, completions = pieces[0], [p[1:].strip() for p in pieces[1:]]
    if "Step 1:" in prompt:
        prompt, first = prompt.split("Step 1:")
        completions = [("Step 1:" + first).strip(), *completions]
    elif "step 1:" in prompt:
        prompt, first = prompt.split("step 1:")
        completions = [("step 1:" + first).strip(), *completions]
    elif "?" in prompt:
        prompt, first = prompt.split("?")
        prompt, completions = prompt + "?", [first.strip(), *completions]
    else:
        raise ValueError(f"Prompt can't be processed: {prompt}")
    if len(completions) != len(labels):
        raise ValueError("steps and labels differ in number")
    return {"prompt": prompt.strip(), "completions": completions, "labels": labels}


# ------------------------------------------------------------------------------------------- item 4
def test_math_shepherd_export_converts_with_trls_converter(tmp_path):
    traces = _import(tmp_path, _rollouts())
    out = tmp_path / "export"
    assert cli.main(["export", f"traces={traces}", f"labels={_mc_labels(tmp_path, traces)}", f"out={out}"]) == 0
    rows = _read(out / "math_shepherd.jsonl")
    assert len(rows) == 6
    for row in rows:  # every row converts, to the row's prompt, its steps (with 'Step k: ') and hard labels
        got = trl_math_shepherd_converter(row)
        assert row["task"] == "arith" and got["prompt"] == row["prompt"]
        assert got["completions"] == [f"Step {k}: {s}" for k, s in enumerate(row["steps"], 1)]
        assert got["labels"] == row["hard_labels"]


def test_processbench_labels_exact_by_default_and_disagreements_counted(tmp_path, capsys):
    traces = _import(tmp_path, _rollouts())
    labels = _mc_labels(tmp_path, traces)
    out = tmp_path / "export"
    assert cli.main(["export", f"traces={traces}", f"labels={labels}", f"out={out}"]) == 0
    said = capsys.readouterr().out
    meta = json.loads((out / "export.json").read_text())
    assert meta["label_source_by_format"] == {"trl": "mc", "math_shepherd": "mc", "processbench": "task"}
    src = {t["trace_id"]: t for t in load_traces(traces)}
    pb, ms = _read(out / "processbench.jsonl"), _read(out / "math_shepherd.jsonl")
    exact = [first_error(src[r["trace_id"]]["step_labels"]) for r in pb]
    assert [r["label"] for r in pb] == [-1 if e is None else e for e in exact]
    assert {r["label_source"] for r in pb} == {"task"} and {r["label_source"] for r in ms} == {"mc"}
    mc = [next((j for j, h in enumerate(r["hard_labels"]) if not h), -1) for r in ms]
    differ = sum(a != b["label"] for a, b in zip(mc, pb))
    assert differ > 0 and meta["processbench_label_disagreements"]["differ"] == differ
    assert meta["processbench_label_disagreements"]["compared"] == 6
    assert f"differs from the task's exact one on {differ} of 6 traces" in said
    out = tmp_path / "export_mc"  # the MC-derived first errors, asked for
    assert cli.main(["export", f"traces={traces}", f"labels={labels}", f"out={out}", "processbench_labels=mc"]) == 0
    assert [r["label"] for r in _read(out / "processbench.jsonl")] == mc
    assert json.loads((out / "export.json").read_text())["label_source_by_format"]["processbench"] == "mc"


def test_evaluate_reads_the_options_an_export_records(tmp_path, random_head_checkpoint, capsys):
    traces = _import(tmp_path, _rollouts(4))
    out = tmp_path / "export"
    assert cli.main(["export", f"traces={traces}", f"out={out}", "formats=[processbench]"]) == 0
    data = out / "processbench.jsonl"
    base = ["evaluate", f"checkpoint={random_head_checkpoint}", f"step_data={data}", "report_to=disk"]
    base += ["step_protocol=fixed", "progress=false"]
    capsys.readouterr()
    assert cli.main([*base, f"out={tmp_path / 'default'}"]) == 0
    assert "is a prefixvalue export" in capsys.readouterr().out
    default = json.loads((tmp_path / "default" / "metrics.json").read_text())["step_benchmark"]
    recorded = json.loads((out / "export.json").read_text())["evaluate_options"]
    assert default["step_options"]["recorded"] == recorded
    assert {default["step_options"][k] for k in recorded} == set(recorded.values())
    argv = [*base, f"out={tmp_path / 'given'}", f"step_prompt_template={recorded['step_prompt_template']}"]
    assert cli.main([*argv, f"step_separator={recorded['step_separator']}"]) == 0
    given = json.loads((tmp_path / "given" / "metrics.json").read_text())["step_benchmark"]
    assert default["f1"] == given["f1"] and default["threshold"] == given["threshold"]
    assert capsys.readouterr().err.count("warning") == 0
    assert cli.main([*base, f"out={tmp_path / 'other'}", "step_separator=\\n"]) == 0  # unlike the record: warned
    err = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert len(err) == 1 and "step_separator='\\n' (recorded: '')" in err[0]


# ------------------------------------------------------------------------------------------- item 5
def test_stepwise_features_put_each_label_on_the_separators_last_token():
    from transformers import AutoTokenizer

    from prefixvalue.data.bridges import stepwise_token_classification_features

    tok = AutoTokenizer.from_pretrained(POLICY)
    row = {"prompt": "Q:1+2=", "completions": ["1+2=3;", "A:3"], "labels": [True, False]}
    f = stepwise_token_classification_features(row, tok, "\n")
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    sep = enc("\n")
    want = enc("Q:1+2=") + enc("1+2=3;") + sep + enc("A:3") + sep
    assert f["input_ids"] == ([tok.bos_token_id] if tok.bos_token_id is not None else []) + want
    marked = [(i, y) for i, y in enumerate(f["labels"]) if y != -100]
    ends = [len(f["input_ids"]) - len(enc("A:3") + sep) - 1, len(f["input_ids"]) - 1]
    assert marked == list(zip(ends, [1, 0]))
    assert stepwise_token_classification_features(row, tok, "\n", max_length=4)["labels"] == [-100] * 4
    with pytest.raises(ValueError, match="2 steps but 1 labels"):
        stepwise_token_classification_features({**row, "labels": [True]}, tok)


def _recipe():
    spec = importlib.util.spec_from_file_location("train_prm", REPO / "recipes" / "train_prm.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the recipe is read
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_train_prm_recipe_on_the_trl_export(tmp_path):
    import torch
    from transformers import AutoModelForTokenClassification

    from prefixvalue.data.bridges import stepwise_token_classification_features

    traces = _import(tmp_path, _rollouts(8))
    out = tmp_path / "export"
    assert cli.main(["export", f"traces={traces}", f"out={out}", "formats=[trl]"]) == 0
    prm = tmp_path / "prm"
    argv = [f"data={out / 'trl.jsonl'}", f"model={POLICY}", f"out={prm}", "max_steps=12", "batch_size=16"]
    assert _recipe().main([*argv, "learning_rate=2e-3"]) == 0
    record = json.loads((prm / "train_prm.json").read_text())
    assert record["step_separator"] == "" and record["rows"] == 16  # the export's recorded separator
    losses = record["losses"]
    assert sum(losses[-3:]) / 3 < losses[0]
    model = AutoModelForTokenClassification.from_pretrained(prm / "final")
    row = _read(out / "trl.jsonl")[0]
    from transformers import AutoTokenizer

    f = stepwise_token_classification_features(row, AutoTokenizer.from_pretrained(prm / "final"), "")
    with torch.no_grad():
        logits = model(torch.tensor([f["input_ids"]])).logits
    assert logits.shape == (1, len(f["input_ids"]), 2)
    assert _recipe().main([f"model={POLICY}", f"out={prm}"]) == 2  # no data: one line, exit 2


def test_readme_names_the_trl_version_installed_and_pinned():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### To and from TRL") :]
    section = section[: section.index("\n## ")]
    claim = re.search(r"tested with TRL (\d+)\.(\d+) \(`trl>=(\d+)\.(\d+),<(\d+)`", section)
    assert claim, "the README's TRL section names the TRL version it was tested with"
    pyproject = (REPO / "pyproject.toml").read_text()
    pin = f'"trl>={claim[3]}.{claim[4]},<{claim[5]}"'
    assert pin in pyproject, f"pyproject pins {pin} as the README says"
    try:
        installed = importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("trl is not installed (pip install -e .[rl])")
    major, minor = (int(x) for x in installed.split(".")[:2])
    assert (int(claim[3]), int(claim[4])) <= (major, minor) < (int(claim[5]), 0), installed
    assert (major, minor) == (int(claim[1]), int(claim[2])), f"README says tested with {claim[1]}.{claim[2]}"
    import trl

    assert not hasattr(trl, "PRMTrainer"), "TRL ships a PRMTrainer again: the README's recipe may point at it"


def test_import_trl_native_stepwise_rows(tmp_path, capsys):
    rows = [
        {"prompt": "Q:1+2+3=", "completions": ["1+2=3;", "3+3=6;", "A:6"], "labels": [True, True, True]},
        {"prompt": "Q:1+2+3=", "completions": ["1+2=4;", "4+3=7;", "A:7"], "labels": [False, True, False]},
    ]
    src = _write_jsonl(tmp_path / "trl.jsonl", rows)
    base = ["import", f"rollouts={src}", f"model={POLICY}", "step_separator="]
    # no outcome, no task: one line naming both routes, exit 2
    assert cli.main([*base, f"out={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outcome_from=labels" in err[0] and "task=" in err[0]
    # from the labels (an approximation, said so); the labels kept as step_labels, and exported back
    assert cli.main([*base, f"out={tmp_path / 'b'}", "outcome_from=labels"]) == 0
    ds = load_traces(tmp_path / "b")
    assert ds["outcome"] == [1.0, 0.0] and ds["step_labels"] == [r["labels"] for r in rows]
    assert all("APPROXIMATION" in n for n in ds["outcome_note"])
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["outcome_from"] == "labels" and summary["step_labels_from"] == {"the record's labels": 2}
    assert cli.main(["export", f"traces={tmp_path / 'b'}", f"out={tmp_path / 'x'}", "formats=[trl]"]) == 0
    assert [r["labels"] for r in _read(tmp_path / "x" / "trl.jsonl")] == [r["labels"] for r in rows]
    # with task= and answers: the task verifies each completion (by default)
    _write_jsonl(src, [{**r, "answer": "6"} for r in rows])
    assert cli.main([*base, f"out={tmp_path / 'c'}", "task=arith"]) == 0
    ds = load_traces(tmp_path / "c")
    assert ds["outcome"] == [1.0, 0.0] and all("verifier" in n for n in ds["outcome_note"])
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["outcome_from"] == "verify"


#: README lines of "To and from TRL, Math-Shepherd and ProcessBench" that need the network (a Hub dataset id)
NETWORK_ONLY = ("Qwen/ProcessBench",)


def _readme_commands(title: str) -> list[str]:
    """The shell commands of the README section `title`'s bash blocks, continuation lines joined, comments dropped."""
    import re

    readme = (REPO / "README.md").read_text()
    body = readme.split(f"\n### {title}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.split(" # ")[0].strip())
    return commands


@pytest.mark.slow
def test_readme_trl_section_runs_as_written(tmp_path, monkeypatch, random_head_checkpoint):
    """Issue 34: every command of the README's "To and from TRL ..." section runs as written (but the Hub one), in a
    folder laid out as after the quickstart: arith traces and MC step labels, a value head, the shipped policy,
    and a TRL-native stepwise file."""
    import shlex
    import shutil

    root = tmp_path / "repo"
    quick = root / "runs" / "quickstart"
    quick.mkdir(parents=True)
    shutil.copytree(_import(tmp_path, _rollouts(4)), quick / "traces")
    shutil.copytree(_mc_labels(tmp_path, quick / "traces"), quick / "labels")
    shutil.copytree(random_head_checkpoint, quick / "train_head" / "final")
    shutil.copytree(POLICY, root / "data" / "policies" / "arith-tiny")
    task = build_task("arith", {"min_steps": 2, "max_steps": 3})
    stepwise = [
        {
            "prompt": p.text,
            "completions": [s + ";" for s in p.meta["solution"].split(";")[:-1]] + [p.meta["solution"].split(";")[-1]],
            "labels": [True] * len(p.meta["solution"].split(";")),
        }
        for p in task.prompts(3, "validation")
    ]
    _write_jsonl(root / "stepwise.jsonl", stepwise)
    monkeypatch.chdir(root)
    commands = _readme_commands("To and from TRL, Math-Shepherd and ProcessBench")
    ran = []
    for command in commands:
        if any(hub in command for hub in NETWORK_ONLY):
            continue
        program, *args = shlex.split(command)
        if program == ".venv/bin/prefixvalue":
            assert cli.main(args) == 0, command
        elif program == ".venv/bin/python" and args[0] == "recipes/train_prm.py":
            assert _recipe().main(args[1:]) == 0, command
        else:
            raise AssertionError(f"README command this test cannot run: {command}")
        ran.append(args[0])
    assert ran == ["export", "recipes/train_prm.py", "evaluate", "import", "import"], ran
    assert (root / "runs" / "prm" / "final" / "config.json").is_file()
    assert json.loads((root / "runs" / "pb" / "metrics.json").read_text())["step_benchmark"]
    assert (root / "runs" / "t").is_dir() and (root / "runs" / "imported").is_dir()
