"""Answer checkers for user data: a plain-dict registry `VERIFIERS` and `get_verifier`.

A verifier is a function ``(completion: str, answer: str, **options) -> VerifierResult | float``
that scores `completion` against the reference `answer` in [0, 1]. Built-in ones:

- ``marker``: the number after the last answer marker (``####``, ``Answer:``, ``answer is``).
- ``last_number``: the last number anywhere in the completion.
- ``boxed``: the content of the last ``\\boxed{...}`` (nested braces allowed).
- ``choice``: a multiple-choice letter (A–J by default) from "Answer: (B)", "the answer is B", ...
- ``regex``: a user pattern; its capture group is compared to the answer, or in ``mode="full"``
  the whole completion must match it (``{answer}`` in the pattern stands for the escaped answer).
- ``exact``: the whole completion equals the answer after light normalisation.

`get_verifier` also resolves a user function named ``module:function`` or
``path/to/file.py:function``; the jsonl task runs such a function in a worker process that is killed at
the time limit (`prefixvalue.tasks.isolated`), the built-in ones in process. A score may be any real
number (bool, int, float, Fraction, Decimal, numpy scalars); NaN or a value outside [0, 1] is an error.
Numbers compare with a tolerance after removing ``$``, thousands
commas and a trailing full stop; fractions (``3/4``, ``\\frac{3}{4}``) and decimals are exact
rationals before the comparison. The extraction helpers (`parse_number`, `extract_after_marker`,
`extract_last_number`, `extract_boxed`, `extract_choice`) are public so user verifiers can reuse them.

Usage::

    check = get_verifier("marker", markers=["####"])
    check("... so she has 12 apples.\\n#### 12", "12").score  # -> 1.0
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .base import VerifierResult, as_score

VerifierFn = Callable[..., "VerifierResult | float"]

#: a number as written in text: sign, optional $, digits with optional thousands commas, decimals,
#: an optional exponent, and an optional "/denominator" (a fraction)
NUMBER_PATTERN = (
    r"[-+−]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?<=\d)(?:[eE][-+]?\d+)?"
    r"(?:\s?/\s?[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)?"
)
_NUMBER_RE = re.compile(NUMBER_PATTERN)
_DEFAULT_MARKERS: tuple[str, ...] = ("####", "Answer:", "answer is")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


# -- extraction helpers --------------------------------------------------------------------------
def parse_number(text: str | None) -> Fraction | None:
    """The number written in `text` as an exact rational, or None if `text` is not one number.

    Tolerates surrounding spaces, a leading ``$``, thousands commas, a trailing ``.`` or ``%``,
    LaTeX ``\\frac{a}{b}`` and ``a/b`` fractions, decimals and exponents (``1.5e3``).
    """
    if text is None:
        return None
    s = text.strip().replace("−", "-")
    s = _LATEX_FRAC.sub(r"(\1)/(\2)", s)
    s = s.replace("\\$", "$").replace("\\%", "%").replace("\\!", "").replace("\\,", "")
    s = s.strip().strip("$").strip()
    s = s.rstrip(".").rstrip("%").strip()
    s = s.replace("(", "").replace(")", "") if re.fullmatch(r"\(?[-+\d.,\s]+\)?/\(?[-+\d.,\s]+\)?", s) else s
    if s.startswith(("-$", "+$")):
        s = s[0] + s[2:]
    s = re.sub(r"\s+", "", s)
    if not s:
        return None
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if "/" in s:
        num, _, den = s.partition("/")
        a, b = parse_number(num), parse_number(den)
        if a is None or b is None or b == 0:
            return None
        return a / b
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: Fraction | float, b: Fraction | float, tolerance: float = 1e-6) -> bool:
    """True when ``|a - b| <= tolerance * max(1, |b|)`` (absolute near 0, relative for large `b`)."""
    return abs(float(a) - float(b)) <= tolerance * max(1.0, abs(float(b)))


def find_numbers(text: str) -> list[str]:
    """Every number in `text` in order of appearance, as written (``$1,234.5``, ``-3/4``)."""
    return [m.group(0).strip() for m in _NUMBER_RE.finditer(text) if re.search(r"\d", m.group(0))]


def extract_last_number(text: str) -> str | None:
    """The last number written in `text` (as written, see `find_numbers`), or None if there is none."""
    nums = find_numbers(text)
    return nums[-1] if nums else None


def extract_after_marker(text: str, markers: Sequence[str] = _DEFAULT_MARKERS, ignore_case: bool = True) -> str | None:
    """The rest of the line after the last occurrence of any of `markers` in `text`, stripped.

    Returns None when no marker occurs. With several markers, the one that occurs last wins.
    """
    best: tuple[int, int] | None = None  # (start of marker, end of marker)
    flags = re.IGNORECASE if ignore_case else 0
    for marker in markers:
        for m in re.finditer(re.escape(marker), text, flags):
            if best is None or m.start() > best[0]:
                best = (m.start(), m.end())
    if best is None:
        return None
    rest = text[best[1] :]
    return rest.split("\n", 1)[0].strip()


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in `text`, nested braces kept.

    Returns None when there is no complete boxed expression (an unclosed brace does not count).
    """
    found: str | None = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            found = text[m.end() : i - 1]
    return found


def extract_choice(text: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The multiple-choice letter a completion commits to, or None.

    Looks, in order, for the last "answer/option/choice is/: (B)" form, then a completion that is
    only a letter ("B", "(B)", "B."), then the last parenthesised letter "(B)". Letters are upper
    case, except in brackets, alone, or ending the line after "answer is", where "b" also counts
    (so "the answer is a bit unclear" picks nothing).
    """
    upper = "[" + re.escape(letters.upper()) + "]"
    cls = "[" + re.escape(letters.upper() + letters.lower()) + "]"
    keyed = re.compile(
        r"(?i:\b(?:answer|option|choice))\s*(?i:is|:|=)?\s*(?i:option|choice)?\s*[:\-]?\s*(?:"
        r"[\(\[]\s*(" + cls + r")\s*[\)\]]"  # (B), [b]
        r"|(" + upper + r")(?![A-Za-z0-9])"  # B
        r"|(" + cls + r")(?=\s*[.!]?\s*$))",  # b at the end of a line ("the answer is b.")
        re.MULTILINE,
    )
    hits = list(keyed.finditer(text))
    if hits:
        last = hits[-1]
        return next(g for g in last.groups() if g is not None).upper()
    alone = re.fullmatch(r"\s*[\(\[]?\s*(" + cls + r")\s*[\)\]]?\s*[.:]?\s*", text)
    if alone:
        return alone.group(1).upper()
    paren = list(re.finditer(r"\((" + "[" + re.escape(letters) + "]" + r")\)", text))
    if paren:
        return paren[-1].group(1)
    return None


def normalize_answer(text: str) -> str:
    """A light normal form for string comparison: LaTeX wrappers and spacing removed, lower case.

    Removes ``$``, ``\\left``/``\\right``, ``\\text{..}`` wrappers, thin spaces, all whitespace and
    a trailing full stop; ``\\dfrac``/``\\tfrac`` become ``\\frac``.
    """
    s = text.strip()
    for _ in range(3):
        s = _LATEX_TEXT.sub(r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "").replace("\\;", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("$", "")
    s = re.sub(r"\s+", "", s).rstrip(".")
    return s.lower()


def _compare(predicted: str | None, expected: str, numeric: bool = True, tolerance: float = 1e-6) -> VerifierResult:
    """Score `predicted` against `expected`: numerically when both are numbers, else normal forms."""
    if predicted is None:
        return VerifierResult(0.0, details={"predicted": None, "expected": expected, "reason": "no answer found"})
    if numeric:
        a, b = parse_number(predicted), parse_number(expected)
        if a is not None and b is not None:
            ok = numbers_equal(a, b, tolerance)
            details = {"predicted": predicted, "expected": expected, "compared": "number"}
            return VerifierResult(float(ok), details=details)
    ok = normalize_answer(predicted) == normalize_answer(expected)
    return VerifierResult(float(ok), details={"predicted": predicted, "expected": expected, "compared": "string"})


def _as_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _reference_number(answer: str, markers: Sequence[str], ignore_case: bool = True) -> Fraction:
    """The reference number of `answer`: the answer itself, or what follows a marker in it.

    GSM8K-style answers carry a worked solution ending in ``#### 72``; both forms are accepted.
    Raises ValueError when no number can be read (a data problem, recorded as the error).
    """
    value = parse_number(answer)
    if value is None:
        after = extract_after_marker(answer, markers, ignore_case)
        first = find_numbers(after)[0] if after and find_numbers(after) else None
        value = parse_number(first)
    if value is None:
        raise ValueError(f"reference answer {answer!r} is not a number")
    return value


# -- verifiers -------------------------------------------------------------------------------------
def verify_marker(
    completion: str,
    answer: str,
    markers: str | Sequence[str] = _DEFAULT_MARKERS,
    tolerance: float = 1e-6,
    ignore_case: bool = True,
) -> VerifierResult:
    """1.0 when the first number after the last marker equals the numeric `answer` within `tolerance`."""
    marks = _as_tuple(markers)
    expected = _reference_number(answer, marks, ignore_case)
    after = extract_after_marker(completion, marks, ignore_case)
    if after is None:
        return VerifierResult(0.0, details={"predicted": None, "expected": answer, "reason": "no marker found"})
    nums = find_numbers(after)
    predicted = nums[0] if nums else None
    value = parse_number(predicted)
    if value is None:
        return VerifierResult(0.0, details={"predicted": after, "expected": answer, "reason": "no number after marker"})
    ok = numbers_equal(value, expected, tolerance)
    return VerifierResult(float(ok), details={"predicted": predicted, "expected": answer})


def verify_last_number(completion: str, answer: str, tolerance: float = 1e-6) -> VerifierResult:
    """1.0 when the last number in `completion` equals the numeric `answer` within `tolerance`."""
    expected = _reference_number(answer, _DEFAULT_MARKERS)
    predicted = extract_last_number(completion)
    value = parse_number(predicted)
    if value is None:
        return VerifierResult(0.0, details={"predicted": predicted, "expected": answer, "reason": "no number found"})
    ok = numbers_equal(value, expected, tolerance)
    return VerifierResult(float(ok), details={"predicted": predicted, "expected": answer})


def verify_boxed(completion: str, answer: str, tolerance: float = 1e-6) -> VerifierResult:
    """Compare the last ``\\boxed{...}`` to `answer`: numerically if both are numbers, else normal forms.

    A reference answer that is itself boxed is unboxed first.
    """
    expected = extract_boxed(answer) or answer
    return _compare(extract_boxed(completion), expected, numeric=True, tolerance=tolerance)


def verify_choice(completion: str, answer: str, letters: str = "ABCDEFGHIJ") -> VerifierResult:
    """1.0 when the chosen letter (see `extract_choice`) equals the reference letter ("B", "(B)", "b")."""
    ref = extract_choice(answer.strip(), letters)
    if ref is None:
        raise ValueError(f"reference answer {answer!r} is not one of the letters {letters!r}")
    predicted = extract_choice(completion, letters)
    return VerifierResult(float(predicted == ref), details={"predicted": predicted, "expected": ref})


def verify_regex(
    completion: str,
    answer: str,
    pattern: str,
    mode: str = "capture",
    group: int | str = 1,
    flags: str = "",
    numeric: bool = True,
    tolerance: float = 1e-6,
    which: str = "last",
) -> VerifierResult:
    """Score with a user regular expression.

    ``mode="capture"``: the `group` of the `which` ("first" or "last") match is compared to `answer`
    (numerically when both are numbers). ``mode="full"``: 1.0 when the whole stripped completion
    matches `pattern`, where ``{answer}`` in the pattern stands for the escaped answer. `flags` is a
    string of ``i`` (ignore case), ``m`` (multi-line), ``s`` (dot matches newline).
    """
    rx = _compile_regex(pattern, flags, mode, answer)
    if mode == "full":
        ok = rx.fullmatch(completion.strip()) is not None
        return VerifierResult(float(ok), details={"expected": answer, "pattern": rx.pattern})
    matches = list(rx.finditer(completion))
    if not matches:
        return VerifierResult(0.0, details={"predicted": None, "expected": answer, "reason": "pattern did not match"})
    m = matches[-1] if which == "last" else matches[0]
    return _compare(m.group(group), answer, numeric=numeric, tolerance=tolerance)


def verify_exact(completion: str, answer: str, normalize: bool = True) -> VerifierResult:
    """1.0 when the stripped completion equals `answer` (after `normalize_answer` when `normalize`)."""
    a, b = completion.strip(), answer.strip()
    if normalize:
        a, b = normalize_answer(a), normalize_answer(b)
    return VerifierResult(float(a == b), details={"predicted": completion.strip(), "expected": answer})


_FLAG_BITS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


def _compile_regex(pattern: str, flags: str, mode: str, answer: str | None) -> re.Pattern[str]:
    if mode not in ("capture", "full"):
        raise ValueError(f"regex: mode must be 'capture' or 'full', got {mode!r}")
    bits = 0
    for ch in flags:
        if ch not in _FLAG_BITS:
            raise ValueError(f"regex: unknown flag {ch!r} (use any of {''.join(_FLAG_BITS)})")
        bits |= _FLAG_BITS[ch]
    if mode == "full" and answer is not None:
        pattern = pattern.replace("{answer}", re.escape(answer.strip()))
    return re.compile(pattern, bits)


def _check_regex(options: dict[str, Any]) -> None:
    """Fail at set-up, not on every item, when the regex options cannot work."""
    if "pattern" not in options:
        raise ConfigError("verifier 'regex' needs the option 'pattern'")
    mode = options.get("mode", "capture")
    try:
        rx = _compile_regex(
            str(options["pattern"]), str(options.get("flags", "")), mode, "0" if mode == "full" else None
        )
    except (re.error, ValueError) as exc:
        raise ConfigError(f"verifier 'regex': bad pattern or options: {exc}") from None
    group = options.get("group", 1)
    if mode == "capture":
        if isinstance(group, int) and not 0 <= group <= rx.groups:
            raise ConfigError(f"verifier 'regex': group {group} but the pattern has {rx.groups} capture group(s)")
        if isinstance(group, str) and group not in rx.groupindex:
            raise ConfigError(f"verifier 'regex': the pattern has no group named {group!r}")
    if options.get("which", "last") not in ("first", "last"):
        raise ConfigError("verifier 'regex': which must be 'first' or 'last'")


#: the built-in verifiers by name (a plain dict: add your own entry or pass ``module:function``)
VERIFIERS: dict[str, VerifierFn] = {
    "marker": verify_marker,
    "last_number": verify_last_number,
    "boxed": verify_boxed,
    "choice": verify_choice,
    "regex": verify_regex,
    "exact": verify_exact,
}
_OPTION_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"regex": _check_regex}


# -- resolution ------------------------------------------------------------------------------------
@dataclass
class Verifier:
    """A verifier function bound to its options: ``Verifier(...)(completion, answer) -> VerifierResult``.

    Scores given as any real number (bool, int, float, Fraction, Decimal, numpy scalars) are wrapped in
    a `VerifierResult`; anything else raises TypeError, NaN or a value outside [0, 1] ValueError.
    Exceptions of the function propagate: run it through `safe_verify` semantics (`JsonlTask.verify`
    does) so that a crash scores 0 with the error recorded.
    """

    name: str
    fn: VerifierFn
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        """True for a registered verifier (run in process); False for a user function ``module:function``."""
        return is_registered(self.name)

    def __call__(self, completion: str, answer: str) -> VerifierResult:
        """Score `completion` against `answer`; returns a VerifierResult (score in [0, 1] is checked later)."""
        res = self.fn(completion, answer, **self.options)
        if isinstance(res, VerifierResult):
            return res
        return VerifierResult(as_score(res))


def is_registered(name: str) -> bool:
    """True when `name` is a registered verifier (`VERIFIERS`), not a reference to user code."""
    return name in VERIFIERS


def load_function(spec: str) -> VerifierFn:
    """Import the function named by ``module:function`` or ``path/to/file.py:function``.

    The function part may be dotted (``module:Class.method``). A file path is loaded as a fresh
    module (relative paths from the working directory). Raises ConfigError saying what failed.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(
            f"verifier {spec!r}: expected a registered name {sorted(VERIFIERS)}, "
            "'module:function' or 'path/to/file.py:function'"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise ConfigError(f"verifier {spec!r}: file {path} not found")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        stem = re.sub(r"\W", "_", path.stem)
        mod_name = f"_prefixvalue_user_verifier_{stem}_{digest}"
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        if mspec is None or mspec.loader is None:
            raise ConfigError(f"verifier {spec!r}: cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        try:
            mspec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise ConfigError(f"verifier {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"verifier {spec!r}: cannot import module {target!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"verifier {spec!r}: {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"verifier {spec!r}: {attr!r} is not callable")
    return obj


def get_verifier(name_or_spec: str, **options: Any) -> Verifier:
    """Resolve a registered verifier name or a ``module:function`` spec, bound to `options`.

    Options are checked against the function's signature now, so a misspelt option fails at set-up
    with a ConfigError rather than scoring every completion 0. Returns a `Verifier`.
    """
    if name_or_spec in VERIFIERS:
        fn = VERIFIERS[name_or_spec]
    elif ":" in name_or_spec:
        fn = load_function(name_or_spec)
    else:
        raise ConfigError(
            f"unknown verifier {name_or_spec!r}; registered verifiers: {sorted(VERIFIERS)} "
            "(or name a user function as 'module:function' or 'path/to/file.py:function')"
        )
    if name_or_spec in _OPTION_CHECKS:
        _OPTION_CHECKS[name_or_spec](options)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind("completion", "answer", **options)
        except TypeError as exc:
            accepted = list(sig.parameters)[2:]
            raise ConfigError(
                f"verifier {name_or_spec!r}: options {sorted(options)} do not fit: {exc} (its options: {accepted})"
            ) from None
    return Verifier(name_or_spec, fn, dict(options))


__all__ = [
    "NUMBER_PATTERN",
    "VERIFIERS",
    "Verifier",
    "extract_after_marker",
    "extract_boxed",
    "extract_choice",
    "extract_last_number",
    "find_numbers",
    "get_verifier",
    "is_registered",
    "load_function",
    "normalize_answer",
    "numbers_equal",
    "parse_number",
    "verify_boxed",
    "verify_choice",
    "verify_exact",
    "verify_last_number",
    "verify_marker",
    "verify_regex",
]
