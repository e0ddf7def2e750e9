"""The jsonl task: reading user data, clear errors on malformed lines, verifiers that crash or hang."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefixvalue.config import ConfigError, format_help, parse_config
from prefixvalue.tasks import (
    TASKS,
    JsonlConfig,
    JsonlFormatError,
    JsonlTask,
    Prompt,
    build_task,
    safe_verify,
)

ASSETS = Path(__file__).resolve().parent / "assets"
GSM = ASSETS / "jsonl_gsm.jsonl"
USER = ASSETS / "jsonl_user_verifiers.py"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def simple(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "simple.jsonl", [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(1, 5)])


def gsm_task(**kwargs: object) -> JsonlTask:
    args = {"path": str(GSM), "prompt_field": "question", "id_field": "id"} | kwargs
    return build_task("jsonl", args)  # type: ignore[return-value]


# -- reading ---------------------------------------------------------------------------------------
def test_registered_and_reads_fields_ids_and_template() -> None:
    assert TASKS["jsonl"] is JsonlTask
    task = gsm_task(template="Q: {prompt}\nA:")
    prompts = list(task.prompts())
    assert [p.prompt_id for p in prompts] == ["q1", "q2", "q3"]  # the blank line is skipped
    assert prompts[0].text == "Q: Tom has 3 apples and buys 4 more. How many apples?\nA:"
    assert prompts[1].answer == "900"  # a number answer becomes text
    assert prompts[2].meta == {"source": str(GSM), "line": 4}
    assert [p.prompt_id for p in task.prompts(2)] == ["q1", "q2"]
    # the file is the data: `split` does not change it
    assert [p.text for p in task.prompts(split="test")] == [p.text for p in prompts]


def test_solution_field_goes_into_prompt_meta(simple: Path) -> None:
    rows = [{"prompt": "1+1=", "answer": "2", "worked": "1+1=2;A:2"}]
    task = JsonlTask(path=str(write_jsonl(simple.parent / "worked.jsonl", rows)), solution_field="worked")
    (prompt,) = task.prompts()
    assert prompt.meta["solution"] == "1+1=2;A:2"  # what train's signal=reference reads
    assert "solution" not in next(iter(JsonlTask(path=str(simple)).prompts())).meta
    with pytest.raises(JsonlFormatError, match="missing field 'worked'"):
        list(JsonlTask(path=str(simple), solution_field="worked").prompts())


def test_default_ids_are_file_stem_and_line_and_stable() -> None:
    a = [p.prompt_id for p in JsonlTask(path=str(ASSETS / "jsonl_choice.jsonl"), verifier="choice").prompts()]
    b = [p.prompt_id for p in JsonlTask(path=str(ASSETS / "jsonl_choice.jsonl"), verifier="choice").prompts()]
    assert a == b == ["jsonl_choice-1", "jsonl_choice-2"]


def test_template_can_use_other_fields(tmp_path: Path) -> None:
    with pytest.raises(JsonlFormatError, match=r"jsonl_gsm\.jsonl, line 1: missing field 'level'"):
        gsm_task(template="[{level}] {prompt}")  # line 1 has no 'level'
    path = write_jsonl(tmp_path / "lv.jsonl", [{"prompt": "p {x}", "answer": "1", "level": 2}])
    assert next(JsonlTask(path=str(path), template="[{level}] {prompt}").prompts()).text == "[2] p {x}"


def test_limit_reads_only_the_first_records(simple: Path) -> None:
    assert [p.prompt_id for p in JsonlTask(path=str(simple), limit=2).prompts()] == ["simple-1", "simple-2"]


@pytest.mark.parametrize(
    ("asset", "match"),
    [
        ("jsonl_bad_json.jsonl", r"jsonl_bad_json\.jsonl, line 3: invalid JSON"),
        ("jsonl_not_object.jsonl", r"jsonl_not_object\.jsonl, line 2: expected a JSON object, got list"),
        (
            "jsonl_missing_field.jsonl",
            (
                r"jsonl_missing_field\.jsonl, line 3: missing field 'answer' "
                r"\(fields present: \['prompt', 'solution'\]\)"
            ),
        ),
        ("jsonl_empty_field.jsonl", r"jsonl_empty_field\.jsonl, line 2: field 'prompt' is empty"),
    ],
)
def test_malformed_lines_name_file_line_and_problem(asset: str, match: str) -> None:
    with pytest.raises(JsonlFormatError, match=match):
        JsonlTask(path=str(ASSETS / asset))


@pytest.mark.parametrize(
    ("rows", "id_field", "match"),
    [
        ([{"prompt": "a", "answer": None}], None, r"line 1: field 'answer' must be a string or a number"),
        ([{"prompt": "a", "answer": [1, 2]}], None, r"line 1: field 'answer' must be a string or a number"),
        ([{"prompt": "a", "answer": True}], None, r"line 1: field 'answer' must be a string or a number"),
        (
            [{"prompt": "a", "answer": "1", "id": "x"}, {"prompt": "b", "answer": "2", "id": "x"}],
            "id",
            r"rows\.jsonl, line 2: duplicate id 'x'.*line 1",
        ),
        (
            [{"prompt": "a", "answer": "1", "id": "x"}, {"prompt": "b", "answer": "2"}],
            "id",
            r"rows\.jsonl, line 2: missing field 'id'",
        ),
    ],
)
def test_bad_values_and_duplicate_ids(tmp_path: Path, rows: list[dict], id_field: str | None, match: str) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(JsonlFormatError, match=match):
        JsonlTask(path=str(path), id_field=id_field)


def test_empty_file_fails(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(JsonlFormatError, match="empty.jsonl: no records"):
        JsonlTask(path=str(tmp_path / "empty.jsonl"))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({}, "exactly one of `path`"),
        ({"path": "x.jsonl", "dataset": "json"}, "exactly one of `path`"),
        ({"path": "/no/such/file.jsonl"}, "file not found"),
        ({"path": str(GSM), "verifier_timeout_s": 0}, "verifier_timeout_s must be > 0"),
        ({"path": str(GSM), "limit": 0}, "limit must be >= 1"),
        ({"path": str(GSM), "template": "{prompt"}, "bad template"),
        ({"path": str(GSM), "template": "{} {prompt}"}, "template fields must be names"),
        ({"path": str(GSM), "step_separator": ""}, "step_separator must be non-empty"),
    ],
)
def test_config_validation(args: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        JsonlConfig(**args)


def test_unknown_verifier_fails_when_the_task_is_built() -> None:
    with pytest.raises(ConfigError, match="unknown verifier 'boxd'"):
        gsm_task(verifier="boxd")


def test_config_from_command_line_and_help() -> None:
    cfg = parse_config(
        JsonlConfig,
        [
            f"path={GSM}",
            "prompt_field=question",
            "verifier=marker",
            "verifier_options={markers: ['####'], tolerance: 0.01}",
            "verifier_timeout_s=2",
            "limit=2",
            r"step_separator=\n\n",
        ],
    )
    assert cfg.verifier_options == {"markers": ["####"], "tolerance": 0.01}
    assert cfg.verifier_timeout_s == 2.0 and cfg.limit == 2 and cfg.step_separator == "\n\n"
    assert len(list(JsonlTask(cfg).prompts())) == 2
    text = format_help(JsonlConfig)
    for key in (
        "path",
        "dataset",
        "prompt_field",
        "answer_field",
        "id_field",
        "solution_field",
        "verifier",
        "verifier_options",
        "template",
        "step_separator",
        "verifier_timeout_s",
        "limit",
    ):
        assert f"  {key} (" in text


# -- verification ---------------------------------------------------------------------------------
def test_verify_delegates_to_the_chosen_verifier() -> None:
    task = gsm_task()
    p1, p2, p3 = task.prompts()
    assert task.verify(p1, "3 + 4 = 7\n#### 7").score == 1.0
    assert task.verify(p1, "3 + 4 = 8\n#### 8").score == 0.0
    assert task.verify(p2, "25% off: $900.\n#### $900").score == 1.0
    res = task.verify(p3, "#### 3/2")
    assert res.score == 1.0 and res.error is None and res.details["verifier"] == "marker"
    choice = JsonlTask(path=str(ASSETS / "jsonl_choice.jsonl"), verifier="choice")
    c1, c2 = choice.prompts()
    assert [choice.verify(c1, "The answer is C."), choice.verify(c2, "Answer: (B)")] == [
        choice.verify(c1, "(C)"),
        choice.verify(c2, "b"),
    ]
    assert choice.verify(c1, "Answer: (B)").score == 0.0 and choice.verify(c2, "Answer: (B)").score == 1.0
    regex = gsm_task(verifier="regex", verifier_options={"pattern": r"=\s*(\d+)"})
    assert regex.verify(p2, "price = 900").score == 1.0 and regex.verify(p2, "price = 1200").score == 0.0


def test_crashing_user_verifier_scores_zero_records_error_and_run_goes_on(simple: Path) -> None:
    task = JsonlTask(path=str(simple), verifier=f"{USER}:crash_on_boom")
    prompts = list(task.prompts())
    results = [task.verify(p, c) for p, c in zip(prompts, ["2", "boom", "6", "8"])]
    assert [r.score for r in results] == [1.0, 0.0, 1.0, 1.0]
    assert results[1].error == "RuntimeError: verifier exploded"
    assert [r.error for r in results if r is not results[1]] == [None, None, None]
    # the way collect/label call it: through safe_verify again, same outcome
    outer = safe_verify(task, prompts[1], "boom", timeout_s=5.0)
    assert outer.score == 0.0 and outer.error == "RuntimeError: verifier exploded"


def test_sleeping_user_verifier_times_out_and_next_item_is_verified(simple: Path) -> None:
    task = JsonlTask(path=str(simple), verifier=f"{USER}:sleep_on_slow", verifier_timeout_s=0.1)
    p1, p2 = list(task.prompts(2))
    slow = task.verify(p1, "slow")
    assert slow.score == 0.0 and slow.error is not None and slow.error.startswith("TimeoutError")
    assert task.pool is not None and task.pool.restarts == 1  # abandoned, not waited for: its worker was killed
    nxt = task.verify(p2, "4")
    assert nxt.score == 1.0 and nxt.error is None


def test_non_score_return_and_missing_answer_are_recorded_errors(simple: Path) -> None:
    task = JsonlTask(path=str(simple), verifier=f"{USER}:not_a_score")
    res = task.verify(next(task.prompts()), "2")
    assert res.score == 0.0 and "TypeError" in (res.error or "")
    plain = JsonlTask(path=str(simple))
    res = plain.verify(Prompt("free", "2+2=", answer=None), "#### 4")
    assert res.score == 0.0 and "has no reference answer" in (res.error or "")
    res = plain.verify(Prompt("bad", "2+2=", answer="four"), "#### 4")  # a data problem, not a crash of the run
    assert res.score == 0.0 and "not a number" in (res.error or "")


def test_module_function_verifier_from_a_temp_module(
    simple: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pv_jsonl_tmp_check.py").write_text(
        "def twice(completion, answer, factor=2):\n"
        "    return float(completion.strip() == str(factor * int(answer) // 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    task = JsonlTask(path=str(simple), verifier="pv_jsonl_tmp_check:twice", verifier_options={"factor": 4})
    p = next(task.prompts())  # answer "2"
    assert task.verify(p, "4").score == 1.0 and task.verify(p, "2").score == 0.0


# -- steps ------------------------------------------------------------------------------------------
def test_split_steps_with_default_and_custom_separators() -> None:
    text = "step one\nstep two\n\nstep three"
    spans = gsm_task().split_steps(text)
    assert [text[s:e] for s, e in spans] == ["step one", "step two", "step three"]
    para = gsm_task(step_separator="\n\n").split_steps(text)  # escapes are read on the command line only
    assert [text[s:e] for s, e in para] == ["step one\nstep two", "step three"]
    semi = gsm_task(step_separator="; ").split_steps("a=1; b=2; ")
    assert semi == [(0, 3), (5, 8)]
    assert gsm_task().split_steps("") == []
    assert gsm_task().step_labels(next(gsm_task().prompts()), text) is None


# -- datasets sources ------------------------------------------------------------------------------
def test_datasets_saved_folder_and_split_selection(tmp_path: Path) -> None:
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"q": "1+1", "a": "2"}, {"q": "2+2", "a": "4"}]),
            "test": datasets.Dataset.from_list([{"q": "3+3", "a": "6"}]),
        }
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    task = JsonlTask(dataset=str(tmp_path / "ds"), prompt_field="q", answer_field="a", verifier="last_number")
    train, test = list(task.prompts(split="train")), list(task.prompts(split="test"))
    assert [p.prompt_id for p in train] == ["ds-train-0", "ds-train-1"] and [p.answer for p in test] == ["6"]
    assert task.verify(test[0], "it is 6").score == 1.0
    with pytest.raises(ConfigError, match="no split 'validation'"):
        list(task.prompts(split="validation"))
    fixed = JsonlTask(dataset=str(tmp_path / "ds"), dataset_split="test", prompt_field="q", answer_field="a")
    assert [p.text for p in fixed.prompts(split="train")] == ["3+3"]


def test_datasets_bad_row_is_named(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list([{"q": "1+1", "a": "2"}, {"q": "", "a": "4"}]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(JsonlFormatError, match=r"\[train\], row 1: field 'q' is empty"):
        list(JsonlTask(dataset=str(tmp_path / "bad"), prompt_field="q", answer_field="a").prompts())
