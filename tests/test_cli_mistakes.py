"""Mistakes a user can make on the command line: each one is a single clear line on stderr and exit
code 2 from `prefixvalue.cli.main`, never a traceback.

pytest tests/test_cli_mistakes.py
"""

from __future__ import annotations

import pytest

from prefixvalue import cli

from conftest import make_tiny_gpt2
from test_value_fixtures import random_traces, save_traces


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    """Paths the mistakes below point at: a tiny policy, traces and a value checkpoint, an empty
    folder, a plain file, and step data that cannot be read."""
    root = tmp_path_factory.mktemp("mistakes")
    model_dir = root / "policy"
    make_tiny_gpt2(len(tiny_tokenizer)).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    traces_dir = save_traces(random_traces(tiny_tokenizer, n_prompts=2, per_prompt=1), root / "traces")
    (root / "empty").mkdir()
    (root / "plain.txt").write_text("not a dataset\n")
    (root / "bad_steps.jsonl").write_text('{"problem": "1+1", "steps": ["2"], "label": -1}\n{not json\n')
    (root / "bad.yaml").write_text("max_steps: [1,\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "bad.parquet").write_bytes(b"PAR1 not really parquet")
    from prefixvalue import value

    cfg = value.ValueModelConfig(kind="head", base_model=str(model_dir), base_rate=0.5, backbone="frozen")
    value.build_value_model(cfg).save_pretrained(root / "ckpt")
    return {"model": str(model_dir), "traces": str(traces_dir), "root": root, "ckpt": str(root / "ckpt")}


#: (name, argv with {model}, {traces}, {root} filled in, words the error line must contain)
MISTAKES = [
    ("unknown command", ["colect"], "collect"),
    ("unknown key", ["train", "traces={traces}", "max_step=3"], "max_steps"),
    ("value of the wrong type", ["train", "traces={traces}", "max_steps=many"], "max_steps"),
    ("missing --config file", ["train", "--config", "{root}/nope.yaml"], "nope.yaml"),
    ("unreadable --config file", ["train", "--config", "{root}/bad.yaml"], "bad.yaml"),
    ("--config not a mapping", ["evaluate", "--config", "{root}/list.yaml"], "list.yaml"),
    ("unknown task", ["collect", "task=arithmetic", "model={model}", "out={root}/c1"], "arithmetic"),
    ("missing model folder", ["collect", "task=arith", "model={root}/no_model", "out={root}/c2"], "no_model"),
    ("missing traces folder", ["label", "traces={root}/no_traces", "model={model}", "out={root}/l1"], "no_traces"),
    ("traces folder is empty", ["label", "traces={root}/empty", "model={model}", "out={root}/l2"], "empty"),
    ("traces path is a file", ["train", "traces={root}/plain.txt", "output_dir={root}/t1"], "plain.txt"),
    ("train without traces", ["train", "output_dir={root}/t2"], "traces"),
    ("evaluate without out", ["evaluate", "policy={model}", "traces={traces}", "labels={traces}"], "out"),
    (
        "missing checkpoint folder",
        ["evaluate", "checkpoint={root}/no_ckpt", "step_data={root}/bad_steps.jsonl", "out={root}/e1"],
        "no_ckpt",
    ),
    (
        "checkpoint is not one",
        ["evaluate", "checkpoint={root}/empty", "step_data={root}/bad_steps.jsonl", "out={root}/e5"],
        "empty",
    ),
    ("missing step data", ["evaluate", "checkpoint={ckpt}", "step_data={root}/none.jsonl", "out={root}/e6"], "none"),
    (
        "unreadable step data",
        ["evaluate", "checkpoint={ckpt}", "step_data={root}/bad_steps.jsonl", "out={root}/e7"],
        "bad_steps.jsonl",
    ),
    (
        "step data not parquet",
        ["evaluate", "checkpoint={ckpt}", "step_data={root}/bad.parquet", "out={root}/e8"],
        "bad.parquet",
    ),
    (
        "labels folder missing",
        ["evaluate", "policy={model}", "traces={traces}", "labels={root}/no_labels", "out={root}/e2"],
        "no_labels",
    ),
    (
        "labels are not labels",
        ["evaluate", "policy={model}", "traces={traces}", "labels={traces}", "out={root}/e3"],
        "labels",
    ),
    ("quickstart without policy", ["quickstart", "out={root}/q"], "policy"),
    ("bad choice", ["evaluate", "bootstrap_unit=prefix", "out={root}/e4"], "bootstrap_unit"),
]


@pytest.mark.parametrize(("argv", "words"), [(m[1], m[2]) for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_user_mistake_is_one_line_and_exit_code_2(argv, words, files, capsys):
    args = [a.format(**files) for a in argv]
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    # model loading may draw a progress bar before it; the error is the last line, and the only one
    errors = [x for x in lines if x.startswith("prefixvalue")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert words in errors[0], errors[0]
