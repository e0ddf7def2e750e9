"""Step splitters (`prefixvalue.tasks.steps`), the step-count warning, and the ``steps`` position fallback.

pytest tests/test_steps.py
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_collect_label import label_args, model_dir, traces_dir  # noqa: F401 - fixtures reused

from prefixvalue.config import ConfigError, format_help, parse_config
from prefixvalue.data import load_labels, load_traces
from prefixvalue.sampling.positions import (
    PositionSpecError,
    parse_step_fallback,
    positions,
    positions_for_trace,
    step_boundaries,
    uses_step_fallback,
)
from prefixvalue.stages import label
from prefixvalue.tasks import JsonlConfig, JsonlTask, Prompt, Task, VerifierResult, build_task, char_to_token_spans
from prefixvalue.tasks.base import token_end_offsets
from prefixvalue.tasks.steps import (
    SPLITTERS,
    StepSplitter,
    StepSplitterError,
    parse_splitter,
    single_step_warning,
    step_count_summary,
)

GSM = Path(__file__).resolve().parent / "assets" / "jsonl_gsm.jsonl"


def pieces(spec: str, text: str) -> list[str]:
    return [text[s:e] for s, e in parse_splitter(spec)(text)]


def check_contract(spans: list[tuple[int, int]], text: str) -> None:
    """Non-empty, ordered, non-overlapping spans inside the text."""
    end = 0
    for s, e in spans:
        assert end <= s < e <= len(text)
        end = e


class _LineTask(Task):
    """The base `Task`, whose `split_steps` is the old newline splitter."""

    def prompts(self, num: int | None = None, split: str = "train") -> Iterator[Prompt]:
        yield from ()

    def verify(self, prompt: Prompt, completion: str) -> VerifierResult:
        return VerifierResult(0.0)


def old_separator_split(text: str, sep: str) -> list[tuple[int, int]]:
    """jsonl's splitter before `steps` existed, copied verbatim."""
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        i = text.find(sep, start)
        end = len(text) if i < 0 else i
        if end > start:
            spans.append((start, end))
        if i < 0:
            return spans
        start = i + len(sep)


ODD_TEXTS = [
    "",
    "one line",
    "a\nb\n",
    "\n\nstep one\nstep two\n\nstep three\n\n",
    "a\n  \nb\r\nc",  # a whitespace-only line and a CR: kept as the old splitter kept them
    "x = 3.5. Then y!\n\n\n",
]


# -- the splitters -------------------------------------------------------------------------------------
def test_registry_lists_every_spec_name() -> None:
    assert list(SPLITTERS) == ["newline", "blank_line", "sentence", "markers", "regex", "separator"]
    for name in ("newline", "blank_line", "sentence", "markers"):
        assert parse_splitter(name).spec == name
    assert parse_splitter(" Sentence ").spec == "sentence"
    s = parse_splitter("newline")
    assert isinstance(s, StepSplitter) and parse_splitter(s) is s


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_newline_gives_exactly_the_old_spans(text: str) -> None:
    assert parse_splitter("newline")(text) == _LineTask().split_steps(text) == old_separator_split(text, "\n")


def test_newline_spans() -> None:
    assert parse_splitter("newline")("ab\n\ncd\n") == [(0, 2), (4, 6)]


def test_blank_line_spans() -> None:
    text = "First para\nstill first.\n\n  \n\nSecond para.\n\n"
    assert parse_splitter("blank_line")(text) == [(0, 23), (29, 41)]
    assert pieces("blank_line", text) == ["First para\nstill first.", "Second para."]
    assert parse_splitter("blank_line")("one line only") == [(0, 13)]
    assert parse_splitter("blank_line")(" \n\n\t\n") == []


def test_sentence_spans_keep_terminators_and_split_lines() -> None:
    text = "We add 2 and 3. That gives 5!  Is it right? Yes\nSo the answer is 5."
    assert parse_splitter("sentence")(text) == [(0, 15), (16, 29), (31, 43), (44, 47), (48, 67)]
    assert pieces("sentence", text) == [
        "We add 2 and 3.",
        "That gives 5!",
        "Is it right?",
        "Yes",
        "So the answer is 5.",
    ]


def test_sentence_does_not_split_decimals_or_abbreviations() -> None:
    text = "The cost is 3.5 dollars, e.g. for Mr. Smith and Dr. Who. The rest, i.e. 1.25, is tax."
    assert pieces("sentence", text) == [
        "The cost is 3.5 dollars, e.g. for Mr. Smith and Dr. Who.",
        "The rest, i.e. 1.25, is tax.",
    ]
    assert parse_splitter("sentence")(text) == [(0, 56), (57, 85)]
    # runs of terminators, closing quotes, and a list number at a line start
    assert pieces("sentence", 'He said "stop." Then?! Wait...  ok') == ['He said "stop."', "Then?!", "Wait...", "ok"]
    assert pieces("sentence", "1. Add them.\n2. Done\n3.5 is half of 7.") == [
        "1. Add them.",
        "2. Done",
        "3.5 is half of 7.",
    ]


def test_markers_spans() -> None:
    text = "Let us solve it.\nStep 1: add 2 and 3.\n**Step 2:** double it.\nStep 3. The answer is 10."
    assert parse_splitter("markers")(text) == [(0, 16), (17, 37), (38, 60), (61, 86)]
    assert pieces("markers", text) == [
        "Let us solve it.",
        "Step 1: add 2 and 3.",
        "**Step 2:** double it.",
        "Step 3. The answer is 10.",
    ]
    numbered = "1. Add.\n   more of step one\n2) Double.\n3.5 is not a marker\n## Step 4: end"
    assert pieces("markers", numbered) == [
        "1. Add.\n   more of step one",
        "2) Double.\n3.5 is not a marker",
        "## Step 4: end",
    ]
    assert pieces("markers", "no markers at all.\nJust prose.") == ["no markers at all.\nJust prose."]
    assert pieces("markers", "Step 1: only") == ["Step 1: only"]  # no empty step before the first marker
    assert pieces("markers", "I use step 1 later. Step 2: not at a line start") == [
        "I use step 1 later. Step 2: not at a line start"
    ]


def test_regex_spans() -> None:
    assert parse_splitter(r"regex:\n\s*\n")("a\n\nb\n  \n c") == [(0, 1), (3, 4), (8, 10)]
    assert pieces(r"regex:;\s*", "x=1; y=2;  ;z") == ["x=1", "y=2", "z"]  # whitespace-only pieces dropped
    assert pieces(r"regex:(?<=\.)\s+", "a. b. c") == ["a.", "b.", "c"]
    assert pieces("regex:(;)", "a;b") == ["a", "b"]  # groups do not become steps


def test_separator_spans_and_escapes() -> None:
    assert parse_splitter(r"separator:\n\n")("a\n\nb\n\n\n\nc") == [(0, 1), (3, 4), (8, 9)]
    assert parse_splitter("separator:; ")("a=1; b=2; ") == [(0, 3), (5, 8)]
    assert parse_splitter(r"separator:\t")("a\tb") == [(0, 1), (2, 3)]
    for text in ODD_TEXTS:
        assert parse_splitter(r"separator:\n")(text) == old_separator_split(text, "\n")


@pytest.mark.parametrize("spec", ["newline", "blank_line", "sentence", "markers", r"regex:\s+", "separator: "])
@pytest.mark.parametrize("text", ODD_TEXTS + ["Step 1: a. b.\n\n2) c e.g. d 3.5\n"])
def test_every_splitter_keeps_the_span_contract(spec: str, text: str) -> None:
    spans = parse_splitter(spec)(text)
    check_contract(spans, text)
    if spec not in ("newline", "separator: "):  # the two old splitters keep whitespace-only lines
        assert all(text[s:e].strip() for s, e in spans)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("lines", "unknown steps spec 'lines'"),
        ("regex:(", "bad regex"),
        ("regex:", "needs an argument"),
        ("separator:", "needs an argument"),
        ("regex:x*", "matches the empty string"),
        ("sentence:3", "takes no argument"),
    ],
)
def test_bad_specs_fail_listing_the_valid_ones(spec: str, match: str) -> None:
    with pytest.raises(StepSplitterError, match=match) as info:
        parse_splitter(spec)
    assert isinstance(info.value, ValueError)
    assert "newline, blank_line, sentence, markers, regex:PATTERN, separator:TEXT" in str(info.value)


# -- the jsonl task ------------------------------------------------------------------------------------
def gsm_task(**kwargs: object) -> JsonlTask:
    return build_task("jsonl", {"path": str(GSM), "prompt_field": "question", "id_field": "id"} | kwargs)  # type: ignore[return-value]


class _WordTokenizer:
    """A tokenizer stand-in whose tokens are given text pieces (`token_end_offsets` only decodes)."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.pieces[i] for i in ids)


def test_jsonl_steps_sentence_maps_to_token_spans() -> None:
    task = gsm_task(steps="sentence")
    assert task.config.step_splitter().spec == "sentence"
    toks = ["Tom", " has", " 3.5", " apples.", " He", " buys", " 4", " more", "!", " Total", ":", " 7.5", "."]
    text = "".join(toks)
    chars = task.split_steps(text)
    assert [text[s:e] for s, e in chars] == ["Tom has 3.5 apples.", "He buys 4 more!", "Total: 7.5."]
    ends = token_end_offsets(_WordTokenizer(toks), list(range(len(toks))))
    assert char_to_token_spans(chars, ends) == [(0, 4), (4, 9), (9, 13)]
    # the default stays one step per line: this one-line answer is a single step
    assert char_to_token_spans(gsm_task().split_steps(text), ends) == [(0, 13)]


def test_jsonl_step_separator_still_works_and_conflicts_are_refused() -> None:
    text = "step one\nstep two\n\nstep three"
    old = gsm_task(step_separator="\n\n")
    assert old.config.step_splitter().spec == "separator:\n\n"
    assert old.split_steps(text) == old_separator_split(text, "\n\n") == [(0, 17), (19, 29)]
    assert gsm_task(step_separator="; ").split_steps("a=1; b=2; ") == [(0, 3), (5, 8)]
    assert gsm_task().split_steps(text) == old_separator_split(text, "\n")
    assert gsm_task(steps="blank_line").split_steps(text) == [(0, 17), (19, 29)]
    with pytest.raises(ConfigError, match="both set"):
        JsonlConfig(path=str(GSM), steps="sentence", step_separator="; ")
    with pytest.raises(ConfigError, match="jsonl: steps: unknown steps spec 'sentences'"):
        JsonlConfig(path=str(GSM), steps="sentences")
    with pytest.raises(ConfigError, match="jsonl: steps: bad regex"):
        gsm_task(steps="regex:[")
    # from a command line, and listed in --help with the specs
    cfg = parse_config(JsonlConfig, [f"path={GSM}", "prompt_field=question", r"steps=regex:\n\s*\n"])
    assert cfg.steps == r"regex:\n\s*\n" and JsonlTask(cfg).split_steps("a\n \nb") == [(0, 1), (4, 5)]
    assert "blank_line | sentence | markers" in format_help(JsonlConfig)


# -- step counts and the warning ---------------------------------------------------------------------------
def test_step_count_summary_counts() -> None:
    summary = step_count_summary([[], None, [(0, 3)], [(0, 1), (1, 4)], [(0, 1), (1, 2), (2, 3)]])
    assert summary == {"completions": 5, "zero_steps": 2, "one_step": 1, "multi_step": 2, "mean_steps": 6 / 5}
    assert step_count_summary([]) == {
        "completions": 0,
        "zero_steps": 0,
        "one_step": 0,
        "multi_step": 0,
        "mean_steps": 0.0,
    }


def test_single_step_warning_fires_only_past_half() -> None:
    two = [(0, 1), (1, 2)]
    half = step_count_summary([[(0, 3)], [(0, 3)], two, two])  # 2 of 4: not more than half
    assert single_step_warning(half, "collect") is None
    assert single_step_warning(step_count_summary([]), "collect") is None
    most = step_count_summary([[(0, 3)], [], [(0, 3)], two])  # 3 of 4
    line = single_step_warning(most, "collect")
    assert line is not None and "\n" not in line
    assert line.startswith("collect: 3 of 4 completions have at most one step (1 with none, 2 with one")
    assert "task_args.steps=sentence" in line and "step_fallback" in line


# -- positions: the fallback of `steps` --------------------------------------------------------------------
def test_steps_fallback_positions() -> None:
    one = [(0, 12)]
    three = [(0, 4), (4, 9), (9, 12)]
    assert positions_for_trace("steps", 12, one, step_fallback="stride:4") == [0, 4, 8]
    assert positions_for_trace("steps", 12, [], step_fallback="stride:4") == [0, 4, 8]
    assert positions_for_trace("steps", 12, None, step_fallback="all") == list(range(12))
    assert positions_for_trace("steps", 12, three, step_fallback="stride:4") == [0, 4, 9]
    # None keeps the old behaviour: the bare prompt alone for a one-step trace
    assert positions_for_trace("steps", 12, one) == positions_for_trace("steps", 12, one, step_fallback="none") == [0]
    assert positions("steps", [12, 12], [one, three], step_fallback="short:2") == [[0, 1, 2], [0, 4, 9]]
    # the fallback is for `steps` only; adaptive keeps its own grid
    assert positions_for_trace("stride:5", 12, one, step_fallback="stride:4") == [0, 5, 10]
    assert positions_for_trace("adaptive", 12, one, 8, "stride:4") == [0, 8, 11]
    assert uses_step_fallback("steps", one, "stride:4") and not uses_step_fallback("steps", three, "stride:4")
    assert not uses_step_fallback("steps", one, None) and not uses_step_fallback("all", one, "stride:4")
    assert step_boundaries(12, three) == [0, 4, 9]


@pytest.mark.parametrize("bad", ["steps", "adaptive", "stride:0", "every:3"])
def test_bad_step_fallback(bad: str) -> None:
    with pytest.raises(PositionSpecError):
        parse_step_fallback(bad)
    with pytest.raises(ConfigError, match="step_fallback"):
        label.LabelConfig(step_fallback=bad)


def test_label_config_step_fallback_default_and_none() -> None:
    assert label.LabelConfig().step_fallback == "stride:16"
    assert parse_step_fallback(label.LabelConfig(step_fallback="none").step_fallback) is None
    assert parse_step_fallback(label.LabelConfig(step_fallback=None).step_fallback) is None
    assert "step_fallback" in format_help(label.LabelConfig)


def test_label_steps_warns_and_falls_back(tmp_path, model_dir, traces_dir, capsys):  # noqa: F811
    """`label positions=steps` on traces that are mostly one step: one warning line on stderr with the
    counts and how many traces used the fallback; those traces are labelled at the fallback's positions."""
    src = load_traces(traces_dir).select(range(4))
    lens = [len(c) for c in src["completion_ids"]]
    assert min(lens) >= 4
    spans = [[[0, lens[0]]], [], [[0, lens[2]]], [[0, 2], [2, 3], [3, lens[3]]]]
    steps_dir = tmp_path / "traces"
    src.map(lambda r, i: {"step_spans": spans[i]}, with_indices=True).save_to_disk(str(steps_dir))
    out = tmp_path / "labels"
    capsys.readouterr()
    assert label.main(label_args(steps_dir, model_dir, out, positions="steps", step_fallback="stride:3")) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: label")]
    assert len(err) == 1
    assert "3 of 4 completions have at most one step (1 with none, 2 with one" in err[0]
    assert "3 of them labelled at step_fallback=stride:3" in err[0]
    got: dict[str, set[int]] = {}
    for r in load_labels(out):
        got.setdefault(r["trace_id"], set()).add(r["position"])
    tids = src["trace_id"]
    for i in range(3):
        assert sorted(got[tids[i]]) == list(range(0, lens[i], 3))
    assert sorted(got[tids[3]]) == [0, 2, 3]
    assert json.loads((out / "run.json").read_text())["step_fallback"] == "stride:3"
    # without the fallback the one-step traces get the bare prompt alone, and the warning says so
    out_none = tmp_path / "labels_none"
    assert label.main(label_args(steps_dir, model_dir, out_none, positions="steps", step_fallback="none")) == 0
    assert "step_fallback=none" in capsys.readouterr().err
    assert sorted(set(load_labels(out_none).filter(lambda r: r["trace_id"] == tids[0])["position"])) == [0]
