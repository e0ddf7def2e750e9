"""Every built-in verifier on right and wrong answers and edge cases; resolution of user functions."""

from __future__ import annotations

import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest

from prefixvalue.config import ConfigError
from prefixvalue.tasks import VerifierResult
from prefixvalue.tasks.verifiers import (
    VERIFIERS,
    Verifier,
    extract_after_marker,
    extract_boxed,
    extract_choice,
    extract_last_number,
    find_numbers,
    get_verifier,
    normalize_answer,
    numbers_equal,
    parse_number,
)

ASSETS = Path(__file__).resolve().parent / "assets"


def score(name: str, completion: str, answer: str, **options: object) -> float:
    return get_verifier(name, **options)(completion, answer).score


# -- helpers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12", Fraction(12)),
        (" $1,234.50. ", Fraction(246900, 200)),
        ("-3/4", Fraction(-3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac{-1}{2}", Fraction(-1, 2)),
        ("1.5e3", Fraction(1500)),
        (".5", Fraction(1, 2)),
        ("1,234,567", Fraction(1234567)),
        ("50%", Fraction(50)),
        ("-$5", Fraction(-5)),
        ("−7", Fraction(-7)),
    ],
)
def test_parse_number_reads_written_numbers(text: str, value: Fraction) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["abc", "", None, "1,23", "3/0", "12 apples", "1.2.3", "\\frac{x}{2}"])
def test_parse_number_rejects_non_numbers(text: str | None) -> None:
    assert parse_number(text) is None


def test_numbers_equal_is_relative_for_large_and_absolute_near_zero() -> None:
    assert numbers_equal(Fraction(1, 3), 0.3333333, 1e-6)
    assert not numbers_equal(Fraction(1, 3), 0.333, 1e-6)
    assert numbers_equal(1_000_000.5, 1_000_000, 1e-6)
    assert not numbers_equal(1e-7, 0, 1e-9)


def test_find_numbers_and_last_number() -> None:
    assert find_numbers("paid $1,234.50 for 3/4 of -2 items, 1e3 total.") == ["$1,234.50", "3/4", "-2", "1e3"]
    assert extract_last_number("first 3, then 4 and finally 10.") == "10"
    assert extract_last_number("no digits here") is None


def test_extract_after_marker_takes_the_last_marker_and_its_line() -> None:
    text = "Answer: 3 (draft)\nwork...\n#### 42 apples\nthanks"
    assert extract_after_marker(text, ["####", "Answer:"]) == "42 apples"
    assert extract_after_marker("answer: 5", ["Answer:"]) == "5"
    assert extract_after_marker("answer: 5", ["Answer:"], ignore_case=False) is None
    assert extract_after_marker("nothing", ["####"]) is None


def test_extract_boxed_nested_last_wins_and_unclosed_ignored() -> None:
    assert extract_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{x^{2}+\sqrt{y_{1}}}") == r"x^{2}+\sqrt{y_{1}}"
    assert extract_boxed(r"\boxed{3} and \boxed{unclosed") == "3"
    assert extract_boxed("no box") is None


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("Answer: (B)", "B"),
        ("the answer is b", "B"),
        ("So the answer is C.", "C"),
        ("D", "D"),
        ("(e)", "E"),
        ("I first thought (A) but I pick (F)", "F"),
        ("The correct option is J", "J"),
        ("answer is [c], done", "C"),
        ("Answer: (A)\nOn reflection, the answer is D.", "D"),
    ],
)
def test_extract_choice_forms(text: str, letter: str) -> None:
    assert extract_choice(text) == letter


@pytest.mark.parametrize("text", ["Answer: none", "the answer is a bit unclear", "answer: K", "no idea", ""])
def test_extract_choice_finds_nothing(text: str) -> None:
    assert extract_choice(text) is None


def test_normalize_answer_strips_latex_wrappers() -> None:
    assert normalize_answer(r" \text{Paris}. ") == "paris"
    assert normalize_answer(r"$\left( 1, 2 \right)$") == "(1,2)"
    assert normalize_answer(r"\dfrac{1}{x}") == normalize_answer(r"\frac{1}{x}")


# -- verifiers -------------------------------------------------------------------------------------
def test_registry_is_a_plain_dict_of_builtins() -> None:
    assert {"marker", "last_number", "boxed", "choice", "regex", "exact"} <= set(VERIFIERS)
    assert all(callable(f) for f in VERIFIERS.values())


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("3 + 4 = 7\n#### 7", "7", 1.0),
        ("3 + 4 = 8\n#### 8", "7", 0.0),
        ("The price is $1,200.\n#### $1,200.", "1200", 1.0),
        ("Answer: 0.75", "3/4", 1.0),
        ("Answer: 3/4", "0.75", 1.0),
        ("Answer: 0.7500001", "0.75", 1.0),  # inside the default tolerance
        ("Answer: 0.76", "0.75", 0.0),
        ("so the answer is 12 apples", "12", 1.0),
        ("#### 5\nwait, recheck.\nAnswer: 6", "6", 1.0),  # the last marker wins
        ("7", "7", 0.0),  # no marker at all
        ("Answer: seven", "7", 0.0),  # no number after the marker
        ("3 + 4 = 7\n#### 7", "Tom bought 4.\n#### 7", 1.0),  # GSM8K-style reference
    ],
)
def test_marker(completion: str, answer: str, expected: float) -> None:
    assert score("marker", completion, answer) == expected


def test_marker_options_and_details() -> None:
    res = get_verifier("marker", markers="RESULT=")("RESULT= 10 #### 9", "10")
    assert res.score == 1.0 and res.details["predicted"] == "10"
    assert score("marker", "Answer: 0.76", "0.75", tolerance=0.05) == 1.0
    assert score("marker", "answer: 6", "6", markers=["Answer:"], ignore_case=False) == 0.0
    assert get_verifier("marker")("nothing", "3").details["reason"] == "no marker found"


def test_marker_reference_that_is_not_a_number_raises() -> None:
    with pytest.raises(ValueError, match="not a number"):
        get_verifier("marker")("#### 3", "three")


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [("3+4=7, so 7.", "7", 1.0), ("7 then 8", "7", 0.0), ("it is -2.50", "-5/2", 1.0), ("none", "1", 0.0)],
)
def test_last_number(completion: str, answer: str, expected: float) -> None:
    assert score("last_number", completion, answer) == expected


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        (r"so \boxed{0.5}", r"\frac{1}{2}", 1.0),
        (r"\boxed{1} no wait \boxed{2}", "2", 1.0),
        (r"\boxed{1} no wait \boxed{2}", "1", 0.0),
        (r"\boxed{\text{Paris}}", "paris", 1.0),
        (r"\boxed{x^{2} + 1}", r"x^{2}+1", 1.0),
        (r"\boxed{x^{2}+2}", r"x^{2}+1", 0.0),
        ("the answer is 2", "2", 0.0),  # nothing boxed
        (r"\boxed{2}", r"so \boxed{2}", 1.0),  # boxed reference is unboxed
    ],
)
def test_boxed(completion: str, answer: str, expected: float) -> None:
    assert score("boxed", completion, answer) == expected


def test_boxed_details_say_how_it_compared() -> None:
    assert get_verifier("boxed")(r"\boxed{1/2}", "0.5").details["compared"] == "number"
    assert get_verifier("boxed")(r"\boxed{a}", "b").details["compared"] == "string"


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("Answer: (B)", "B", 1.0),
        ("the answer is b", "(B)", 1.0),
        ("Answer: (C)", "B", 0.0),
        ("I cannot tell", "B", 0.0),
        ("The answer is J.", "j", 1.0),
    ],
)
def test_choice(completion: str, answer: str, expected: float) -> None:
    assert score("choice", completion, answer) == expected


def test_choice_custom_letters_and_bad_reference() -> None:
    assert score("choice", "Answer: E", "D", letters="ABCD") == 0.0  # E is not an option
    assert score("choice", "Answer: D", "D", letters="ABCD") == 1.0
    with pytest.raises(ValueError, match="not one of the letters"):
        get_verifier("choice")("Answer: A", "Z")


def test_regex_capture_mode() -> None:
    check = get_verifier("regex", pattern=r"ANS=(\S+)")
    assert check("ANS=3 ANS=4", "4").score == 1.0  # the last match by default
    assert check("ANS=3 ANS=4", "3").score == 0.0
    assert get_verifier("regex", pattern=r"ANS=(\S+)", which="first")("ANS=3 ANS=4", "3").score == 1.0
    assert check("ANS=1,000", "1000").score == 1.0  # numeric comparison
    assert get_verifier("regex", pattern=r"ANS=(\S+)", numeric=False)("ANS=1,000", "1000").score == 0.0
    assert check("no match", "4").details["reason"] == "pattern did not match"
    named = get_verifier("regex", pattern=r"city: (?P<city>\w+)", group="city", flags="i")
    assert named("CITY: Paris", "paris").score == 1.0


def test_regex_full_mode_with_answer_placeholder() -> None:
    check = get_verifier("regex", pattern=r"the answer is {answer}\.?", mode="full", flags="i")
    assert check("  The answer is 1+1. ", "1+1").score == 1.0  # '+' in the answer is escaped
    assert check("The answer is 11.", "1+1").score == 0.0
    assert check("So, the answer is 1+1.", "1+1").score == 0.0  # must match the whole completion
    assert get_verifier("regex", pattern=r"\d+", mode="full")("123", "ignored").score == 1.0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({}, "needs the option 'pattern'"),
        ({"pattern": "(unclosed"}, "bad pattern"),
        ({"pattern": "no group"}, "capture group"),
        ({"pattern": "(a)", "group": "name"}, "no group named"),
        ({"pattern": "(a)", "mode": "partial"}, "mode must be"),
        ({"pattern": "(a)", "flags": "q"}, "unknown flag"),
        ({"pattern": "(a)", "which": "middle"}, "first' or 'last"),
    ],
)
def test_regex_bad_options_fail_at_setup(options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_verifier("regex", **options)


def test_exact() -> None:
    assert score("exact", "  Paris. ", "paris") == 1.0
    assert score("exact", "Paris", "paris", normalize=False) == 0.0
    assert score("exact", "London", "Paris") == 0.0


# -- resolution ------------------------------------------------------------------------------------
def test_unknown_name_and_bad_option_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="unknown verifier 'markr'.*registered verifiers"):
        get_verifier("markr")
    with pytest.raises(ConfigError, match="do not fit.*tolerence.*its options"):
        get_verifier("marker", tolerence=0.1)


def test_module_function_from_a_temp_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_pv_checks.py").write_text(
        textwrap.dedent(
            """
        from prefixvalue.tasks import VerifierResult

        def starts_with(completion, answer, prefix=""):
            return VerifierResult(float(completion.startswith(prefix + answer)), details={"p": prefix})

        class Holder:
            @staticmethod
            def yes(completion, answer):
                return True
        """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_pv_checks", raising=False)
    check = get_verifier("my_pv_checks:starts_with", prefix="=> ")
    assert isinstance(check, Verifier)
    assert check("=> 42 done", "42").score == 1.0 and check("=> 42 done", "42").details == {"p": "=> "}
    assert check("42", "42").score == 0.0
    assert get_verifier("my_pv_checks:Holder.yes")("x", "y") == VerifierResult(1.0)
    with pytest.raises(ConfigError, match="has no attribute 'missing'"):
        get_verifier("my_pv_checks:missing")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_pv'"):
        get_verifier("no_such_module_pv:f")
    with pytest.raises(ConfigError, match="do not fit"):
        get_verifier("my_pv_checks:starts_with", suffix="!")


def test_file_path_function() -> None:
    spec = f"{ASSETS / 'jsonl_user_verifiers.py'}:contains_answer"
    assert get_verifier(spec)("it is 42", "42").score == 1.0
    assert get_verifier(spec)("it is 41", "42").score == 0.0
    assert get_verifier(spec, ignore_case=True)("PARIS", "paris").score == 1.0
    with pytest.raises(ConfigError, match="not found"):
        get_verifier("nowhere/none.py:f")


def test_a_non_score_return_is_a_type_error() -> None:
    check = get_verifier(f"{ASSETS / 'jsonl_user_verifiers.py'}:not_a_score")
    with pytest.raises(TypeError, match="returned str"):
        check("a", "b")
