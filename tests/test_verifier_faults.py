"""Verifier faults from the fault-injection run: code named by data, numpy scores, task_args checks, hung verifiers.

pytest tests/test_verifier_faults.py
"""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import datasets
import numpy as np
import psutil
import pytest
from test_collect_label import collect_args, label_args, model_dir, traces_dir  # noqa: F401 - fixtures re-used

from prefixvalue import cli
from prefixvalue.config import ConfigError
from prefixvalue.sampling.labelling import traces_task
from prefixvalue.tasks import TASKS, JsonlTask, Prompt, Task, VerifierResult, safe_verify
from prefixvalue.tasks.verifiers import get_verifier

USER_VERIFIER = """
import pathlib, sys
pathlib.Path({sentinel!r}).write_text("imported")

def exact(completion, answer):
    return float(completion.strip() == answer)
"""

SCORES = """
from decimal import Decimal
from fractions import Fraction
import numpy as np

class MyInt(int):
    pass

KINDS = {"f32": np.float32(1.0), "f64": np.float64(0.5), "npbool": np.bool_(True), "myint": MyInt(1),
         "fraction": Fraction(1, 4), "decimal": Decimal("0.75"), "true": True, "nan": float("nan"),
         "big": np.float32(1.5), "text": "1", "result32": None}

def score(completion, answer):
    kind = completion.strip()
    if kind == "result32":
        from prefixvalue.tasks.base import VerifierResult
        return VerifierResult(np.float32(1.0))
    return KINDS[kind]

def spin(completion, answer):
    if "hang" in completion:
        while True:
            pass
    return float(completion.strip() == answer)
"""


def _data(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "answer": str(i)}) + "\n" for i in range(n)))
    return path


def _traces(task: str, task_args: dict | str) -> datasets.Dataset:
    text = task_args if isinstance(task_args, str) else json.dumps(task_args)
    return datasets.Dataset.from_dict({"task": [task], "task_args": [text]})


# -- 3: code named by a traces dataset does not run without allow_code_from_data ----------------------
def test_traces_naming_a_user_verifier_are_refused_without_the_flag(tmp_path: Path) -> None:
    sentinel = tmp_path / "imported.txt"
    mod = tmp_path / "evil.py"
    mod.write_text(USER_VERIFIER.format(sentinel=str(sentinel)))
    ds = _traces("jsonl", {"path": str(_data(tmp_path)), "verifier": f"{mod}:exact"})
    with pytest.raises(ConfigError, match=r"evil\.py:exact.*allow_code_from_data=true"):
        traces_task(ds)
    assert not sentinel.exists()  # refused before any import
    _, _, task = traces_task(ds, allow_code_from_data=True)
    assert sentinel.exists() and task.verify(next(task.prompts()), "0").score == 1.0
    # a registered verifier recorded in the traces needs no flag
    traces_task(_traces("jsonl", {"path": str(_data(tmp_path)), "verifier": "exact"}))


def test_a_verifier_the_user_gives_on_the_command_line_runs(tmp_path: Path) -> None:
    sentinel = tmp_path / "imported.txt"
    mod = tmp_path / "mine.py"
    mod.write_text(USER_VERIFIER.format(sentinel=str(sentinel)))
    ds = _traces("jsonl", {"path": str(_data(tmp_path)), "verifier": "marker"})
    args = {"path": str(_data(tmp_path)), "verifier": f"{mod}:exact"}
    _, recorded, task = traces_task(ds, "jsonl", args)
    assert sentinel.exists() and recorded["verifier"] == f"{mod}:exact"


def test_label_cli_refuses_traces_that_name_code_in_one_line(tmp_path: Path, model_dir, capsys) -> None:  # noqa: F811
    sentinel = tmp_path / "imported.txt"
    mod = tmp_path / "evil.py"
    mod.write_text(USER_VERIFIER.format(sentinel=str(sentinel)))
    data = _data(tmp_path, 2)
    traces = tmp_path / "traces"
    # collect: the user names the verifier on the command line, so it runs
    argv = collect_args(model_dir, traces, task="jsonl", num_prompts=2, traces_per_prompt=1, max_new_tokens=4)
    argv += [f"task_args.path={data}", f"task_args.verifier={mod}:exact"]
    assert cli.main(["collect", *argv]) == 0
    sentinel.unlink()
    capsys.readouterr()
    out = tmp_path / "labels"
    assert cli.main(["label", *label_args(traces, model_dir, out, samples=1, max_traces=1)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "evil.py:exact" in err and "allow_code_from_data=true" in err
    assert not sentinel.exists() and not out.exists()
    argv = label_args(traces, model_dir, out, samples=1, max_traces=1, allow_code_from_data="true")
    assert cli.main(["label", *argv]) == 0 and sentinel.exists()


# -- 10: any real number is a score ---------------------------------------------------------------
class _ScoreTask(Task):
    def __init__(self, value: object) -> None:
        self.value = value

    def prompts(self, num=None, split="train"):
        yield Prompt("p", "p", "1")

    def verify(self, prompt, completion):
        return self.value


@pytest.mark.parametrize(
    "value,score",
    [(np.float32(1.0), 1.0), (np.float64(0.5), 0.5), (np.bool_(True), 1.0), (np.int64(0), 0.0), (Fraction(1, 4), 0.25),
     (Decimal("0.75"), 0.75), (True, 1.0), (False, 0.0), (VerifierResult(np.float32(1.0)), 1.0)],
)  # fmt: skip
def test_numpy_and_other_real_scores_are_accepted(value: object, score: float) -> None:
    for timeout in (None, 5.0):
        res = safe_verify(_ScoreTask(value), Prompt("p", "p", "1"), "x", timeout)
        assert res.error is None and res.score == score and type(res.score) is float
    fn = get_verifier("tests/assets/jsonl_user_verifiers.py:contains_answer")
    fn.fn = lambda c, a: value  # the Verifier wrapper accepts it too
    assert fn("x", "1").score == score


@pytest.mark.parametrize("value", [float("nan"), np.float32(1.5), -0.5, "1", None, 1j])
def test_nan_out_of_range_and_non_numbers_are_recorded_errors(value: object) -> None:
    res = safe_verify(_ScoreTask(value), Prompt("p", "p", "1"), "x", 5.0)
    assert res.score == 0.0 and res.error is not None and res.error.split(":")[0] in ("TypeError", "ValueError")


def test_numpy_scores_through_a_user_verifier_in_its_worker(tmp_path: Path) -> None:
    mod = tmp_path / "scores.py"
    mod.write_text(SCORES)
    task = JsonlTask(path=str(_data(tmp_path)), verifier=f"{mod}:score")
    p = next(task.prompts())
    got = {k: task.verify(p, k) for k in ("f32", "f64", "npbool", "myint", "fraction", "decimal", "true", "result32")}
    assert {k: (r.score, r.error) for k, r in got.items()} == {
        "f32": (1.0, None), "f64": (0.5, None), "npbool": (1.0, None), "myint": (1.0, None),
        "fraction": (0.25, None), "decimal": (0.75, None), "true": (1.0, None), "result32": (1.0, None),
    }  # fmt: skip
    for bad in ("nan", "big", "text"):
        res = task.verify(p, bad)
        assert res.score == 0.0 and res.error is not None


# -- 15: task_args go through the typed config on every path ---------------------------------------
def test_recorded_task_args_with_an_unknown_key_name_the_traces_and_suggest() -> None:
    with pytest.raises(ConfigError, match=r"traces' recorded task_args.*did you mean 'task_args.min_steps'"):
        traces_task(_traces("arith", {"min_step": 2}))


@pytest.mark.parametrize("text", ["[1, 2]", "not json", '"min_steps"'])
def test_recorded_task_args_that_are_not_a_mapping_are_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="traces' task_args"):
        traces_task(_traces("arith", text))


def test_label_cli_unknown_task_arg_is_one_line_exit_2(tmp_path: Path, model_dir, traces_dir, capsys) -> None:  # noqa: F811
    argv = ["label", *label_args(traces_dir, model_dir, tmp_path / "out"), "task_args.min_step=2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'task_args.min_steps'" in err


def test_keyword_options_of_a_task_go_through_its_typed_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'task_args.verifier_timeout_s'"):
        JsonlTask(path=str(_data(tmp_path)), verifier_timeout=1)

    class Plain(_ScoreTask):
        def __init__(self, level: int = 1) -> None:
            super().__init__(1.0)

    TASKS["plain-test"] = Plain
    try:
        from prefixvalue.tasks import build_task, task_options

        with pytest.raises(ConfigError, match="did you mean 'task_args.level'"):
            task_options("plain-test", {"levl": 2})
        with pytest.raises(ConfigError, match="did you mean 'task_args.level'"):
            build_task("plain-test", {"levl": 2})
        assert isinstance(build_task("plain-test", {"level": 2}), Plain)
    finally:
        del TASKS["plain-test"]


# -- 19: a CPU-bound verifier that never returns is killed at its limit -----------------------------
def test_a_spinning_user_verifier_is_stopped_at_its_limit(tmp_path: Path) -> None:
    mod = tmp_path / "spin.py"
    mod.write_text(SCORES)
    task = JsonlTask(path=str(_data(tmp_path)), verifier=f"{mod}:spin", verifier_timeout_s=0.2)
    p = next(task.prompts())
    assert task.verify(p, "0").score == 1.0  # starts the worker
    me, threads = psutil.Process(), threading.active_count()
    started = {c.pid for c in me.children()}
    hung = [safe_verify(task, p, "hang", 10.0) for _ in range(8)]
    assert all(r.score == 0.0 and (r.error or "").startswith("TimeoutError") for r in hung)
    assert task.pool is not None and task.pool.restarts == 8  # each hung worker was killed and replaced
    # nothing is left spinning: no thread here (the old thread path left one per hang, holding the GIL), and of
    # the 9 workers started since, only the pool's worker and its spare are alive
    assert threading.active_count() <= threads  # (a thread another test left may end meanwhile)
    alive = [c for c in me.children() if c.pid not in started and c.status() != psutil.STATUS_ZOMBIE]
    assert len(alive) <= 2, alive
    assert [safe_verify(task, p, "0", 10.0).score for _ in range(20)] == [1.0] * 20
    assert task.pool.restarts == 8


def test_a_user_verifier_that_kills_its_process_is_a_recorded_error(tmp_path: Path) -> None:
    mod = tmp_path / "die.py"
    mod.write_text(
        "import os\n\ndef die(completion, answer):\n    if 'die' in completion:\n        os._exit(3)\n    return 1.0\n"
    )
    task = JsonlTask(path=str(_data(tmp_path)), verifier=f"{mod}:die")
    p = next(task.prompts())
    res = task.verify(p, "die")
    assert res.score == 0.0 and "died" in (res.error or "")
    assert task.verify(p, "fine").score == 1.0


def test_builtin_verifiers_stay_in_process(tmp_path: Path) -> None:
    assert JsonlTask(path=str(_data(tmp_path)), verifier="exact").pool is None
