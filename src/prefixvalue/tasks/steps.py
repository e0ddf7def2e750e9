"""Step splitters: how a completion is cut into steps, chosen by a spec string.

    prefixvalue collect task=jsonl task_args.path=data/mine.jsonl task_args.steps=sentence ...

A splitter returns the character spans ``[start, end)`` of the steps of a completion: non-empty,
ordered, non-overlapping. The text between steps (separators, surrounding whitespace) belongs to no
step. Specs (`parse_splitter`):

- ``newline``: one step per non-empty line (the default; exactly the spans of the old splitter).
- ``blank_line``: paragraphs separated by one or more blank lines.
- ``sentence``: sentences (ends ``.``, ``!``, ``?`` before whitespace or the end) and lines.
- ``markers``: ``Step 1:``, ``**Step 2:**``, numbered lines ``1.`` / ``2)``: each marker starts a step.
- ``regex:PATTERN``: the pieces between matches of PATTERN, as `re.split` gives them.
- ``separator:TEXT``: the pieces between occurrences of the literal TEXT (escapes ``\\n``, ``\\t``).

``blank_line``, ``sentence``, ``markers`` and ``regex`` drop whitespace-only steps. ``newline`` and
``separator`` keep the old splitters' spans exactly, so a line of only spaces is still a step there.

A prose answer is often one line, so ``newline`` gives it one step and ``positions=steps`` would
label only the bare prompt; `step_count_summary` and `single_step_warning` say so before it happens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import unescape

#: character spans [start, end) of the steps of one completion
Spans = list[tuple[int, int]]
#: a split function: completion text -> step spans
SplitFn = Callable[[str], Spans]

_USAGE = "steps must be one of: newline, blank_line, sentence, markers, regex:PATTERN, separator:TEXT"


class StepSplitterError(ValueError):
    """A step splitter spec could not be read; the message lists the valid specs."""


@dataclass(frozen=True)
class StepSplitter:
    """A parsed step splitter: `spec` as given, `split(text)` the character spans of its steps."""

    spec: str
    split: SplitFn

    def __call__(self, text: str) -> Spans:
        """Character spans [start, end) of the steps of `text`."""
        return self.split(text)


# -- helpers ------------------------------------------------------------------------------------------
def _strip(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``(start, end)`` shrunk past leading and trailing whitespace; None if nothing is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def _pieces(text: str, separators: Sequence[tuple[int, int]]) -> Spans:
    """The spans between the separator spans (sorted, non-overlapping), empty ones left out."""
    out: Spans = []
    pos = 0
    for s, e in separators:
        if s > pos:
            out.append((pos, s))
        pos = max(pos, e)
    if pos < len(text):
        out.append((pos, len(text)))
    return out


def _stripped(text: str, spans: Sequence[tuple[int, int]]) -> Spans:
    """`spans` each shrunk past surrounding whitespace; whitespace-only spans dropped."""
    return [s for s in (_strip(text, a, b) for a, b in spans) if s is not None]


# -- the splitters --------------------------------------------------------------------------------------
def split_lines(text: str) -> Spans:
    """``newline``: one step per non-empty line, the line break excluded.

    Exactly the spans of the old default (`Task.split_steps`): a line is kept whole, so a line of
    only spaces is a step and ``"a\\r\\nb"`` gives ``"a\\r"``, ``"b"``.
    """
    return _pieces(text, [(m.start(), m.end()) for m in re.finditer("\n", text)])


_BLANK_LINES = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")


def split_paragraphs(text: str) -> Spans:
    """``blank_line``: paragraphs, separated by one or more blank (empty or whitespace-only) lines.

    Each paragraph is trimmed of surrounding whitespace; single line breaks stay inside a step.
    """
    return _stripped(text, _pieces(text, [(m.start(), m.end()) for m in _BLANK_LINES.finditer(text)]))


#: words ending in "." that do not end a sentence (compared lower-case, leading brackets removed)
ABBREVIATIONS = frozenset(
    {"e.g.", "i.e.", "cf.", "vs.", "mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.", "fig.", "eq.", "approx."}
)
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
_ENUMERATOR = re.compile(r"\s*\d+\.")


def split_sentences(text: str) -> Spans:
    """``sentence``: sentences and lines; each step keeps its terminator.

    A sentence ends at ``.``, ``!`` or ``?`` (a run such as ``?!`` or ``...``, with any closing quotes
    or brackets) followed by whitespace or the end of the text, and at every line break. Not an end:
    a period inside a number (``3.5``), after a listed abbreviation (`ABBREVIATIONS`: ``e.g.``,
    ``i.e.``, ``Mr.``, ``Dr.``, ..) or after a list number at the start of a line (``1. First``).
    Steps are trimmed of surrounding whitespace.
    """
    out: Spans = []
    for a, b in split_lines(text):
        line = text[a:b]
        start = 0
        for m in _SENTENCE_END.finditer(line):
            if m.group().startswith("."):
                word_start = max(line.rfind(" ", 0, m.start()), line.rfind("\t", 0, m.start())) + 1
                word = line[word_start : m.start() + 1].lstrip("([{\"'").lower()
                if word in ABBREVIATIONS:
                    continue
                if _ENUMERATOR.fullmatch(line[start : m.start() + 1]) and start == 0:
                    continue
            out.append((a + start, a + m.end()))
            start = m.end()
        out.append((a + start, b))
    return _stripped(text, out)


_MARKER = re.compile(
    r"^[ \t]*(?:"
    r"(?:#{1,6}[ \t]*)?(?:\*\*|__)?step[ \t]*\d+[ \t]*[:.)\-]"  # Step 1:  ## Step 2.  **Step 3:**
    r"|(?:\*\*|__)?\d+[.)](?:\*\*|__)?(?=\s|$)"  # 1.  2)  **3.**  at a line start, then a space (not 3.5)
    r")",
    re.IGNORECASE | re.MULTILINE,
)


def split_markers(text: str) -> Spans:
    """``markers``: each step marker at a line start begins a new step.

    Markers: ``Step N`` followed by ``:``, ``.``, ``)`` or ``-`` (any case, optionally bold ``**Step N:**``
    or after a Markdown heading ``## ``), and numbered lines ``N.`` / ``N)`` followed by whitespace. A
    step runs from its marker to the next one; text before the first marker is a step of its own if it
    is not blank. Without any marker the whole text is one step. Steps are trimmed of surrounding
    whitespace.
    """
    starts = [m.start() for m in _MARKER.finditer(text)]
    bounds = [0, *starts, len(text)]
    return _stripped(text, [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)])


def regex_splitter(pattern: str) -> SplitFn:
    """``regex:PATTERN``: the pieces between matches of `pattern` (the separators, as in `re.split`).

    Capture groups are ignored (the separators belong to no step); pieces are kept as they are, except
    that empty and whitespace-only ones are dropped. A pattern that matches the empty string is refused
    (it would split between every character); zero-width patterns such as ``(?<=\\.)\\s*`` are fine.
    Raises StepSplitterError on a bad pattern.
    """
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise StepSplitterError(f"bad regex in steps spec regex:{pattern}: {exc}; {_USAGE}") from None
    if compiled.fullmatch(""):
        raise StepSplitterError(f"regex in steps spec regex:{pattern} matches the empty string; {_USAGE}")

    def split(text: str) -> Spans:
        pieces = _pieces(text, [(m.start(), m.end()) for m in compiled.finditer(text)])
        return [(a, b) for a, b in pieces if text[a:b].strip()]

    return split


def separator_splitter(separator: str, read_escapes: bool = True) -> SplitFn:
    """``separator:TEXT``: the pieces between occurrences of the literal `separator`.

    With `read_escapes` the escapes ``\\n``, ``\\t``, ``\\r`` in `separator` are read as newline, tab,
    carriage return (`prefixvalue.config.unescape`); pass False for text already read. Empty pieces are
    dropped; the rest are kept exactly (the spans of jsonl's `step_separator`). Raises
    StepSplitterError on an empty separator.
    """
    sep = unescape(separator) if read_escapes else separator
    if not sep:
        raise StepSplitterError(f"steps spec separator:TEXT needs a non-empty TEXT; {_USAGE}")

    def split(text: str) -> Spans:
        found: list[tuple[int, int]] = []
        i = text.find(sep)
        while i >= 0:
            found.append((i, i + len(sep)))
            i = text.find(sep, i + len(sep))
        return _pieces(text, found)

    return split


def _fixed(fn: SplitFn) -> Callable[[str | None], SplitFn]:
    """A registry builder for a splitter that takes no argument."""

    def build(arg: str | None) -> SplitFn:
        return fn

    return build


def _with_arg(make: Callable[[str], SplitFn]) -> Callable[[str | None], SplitFn]:
    """A registry builder for a splitter that needs an argument (``name:ARG``)."""

    def build(arg: str | None) -> SplitFn:
        assert arg is not None
        return make(arg)

    return build


#: the step splitters: spec name -> builder of its split function from the spec's argument
SPLITTERS: dict[str, Callable[[str | None], SplitFn]] = {
    "newline": _fixed(split_lines),
    "blank_line": _fixed(split_paragraphs),
    "sentence": _fixed(split_sentences),
    "markers": _fixed(split_markers),
    "regex": _with_arg(regex_splitter),
    "separator": _with_arg(separator_splitter),
}
#: splitters whose spec carries an argument after a colon
_TAKES_ARG = frozenset({"regex", "separator"})


def parse_splitter(spec: str | StepSplitter) -> StepSplitter:
    """The splitter named by `spec` (see the module docstring); StepSplitterError, listing the valid
    specs, on an unknown name, a missing or unexpected argument, or a bad regex."""
    if isinstance(spec, StepSplitter):
        return spec
    text = str(spec)
    name, colon, arg = text.partition(":")
    name = name.strip().lower()
    if name not in SPLITTERS:
        raise StepSplitterError(f"unknown steps spec {text!r}; {_USAGE}")
    if name in _TAKES_ARG:
        if not arg:
            raise StepSplitterError(f"steps spec {text!r} needs an argument ({name}:...); {_USAGE}")
        return StepSplitter(f"{name}:{arg}", SPLITTERS[name](arg))
    if colon:
        raise StepSplitterError(f"steps spec {text!r} takes no argument; {_USAGE}")
    return StepSplitter(name, SPLITTERS[name](None))


#: strings that end a step of each splitter, for generation that stops at step boundaries (value-guided
#: sampling); ``regex`` has none (a pattern is not a stop string)
_STOPS: dict[str, tuple[str, ...]] = {
    "newline": ("\n",),
    "blank_line": ("\n\n",),
    "sentence": (". ", "! ", "? ", ".\n", "!\n", "?\n", "\n"),
    "markers": ("\n",),
}


def splitter_stops(spec: str | StepSplitter) -> tuple[str, ...] | None:
    """Stop strings at which a step of splitter `spec` ends (``separator:TEXT``: TEXT); None for ``regex``."""
    text = spec.spec if isinstance(spec, StepSplitter) else str(spec)
    name, _, arg = text.partition(":")
    if name == "separator":
        return (unescape(arg),) if arg else None
    return _STOPS.get(name.strip().lower())


# -- how many steps the completions have -------------------------------------------------------------------
def step_count_summary(step_spans: Sequence[Sequence[Any] | None]) -> dict[str, Any]:
    """Step counts over completions, from each completion's step spans (None: no steps).

    Returns ``{"completions", "zero_steps", "one_step", "multi_step" (>= 2 steps), "mean_steps"}``;
    ``mean_steps`` is 0.0 when there are no completions.
    """
    counts = [len(s) if s is not None else 0 for s in step_spans]
    n = len(counts)
    return {
        "completions": n,
        "zero_steps": sum(c == 0 for c in counts),
        "one_step": sum(c == 1 for c in counts),
        "multi_step": sum(c >= 2 for c in counts),
        "mean_steps": sum(counts) / n if n else 0.0,
    }


def single_step_warning(summary: dict[str, Any], where: str) -> str | None:
    """A one-line warning when more than half of the completions in `summary` (`step_count_summary`)
    have at most one step, so step boundaries label little beyond the bare prompt; else None.

    `where` opens the line (e.g. ``"label"``); the line names ``task_args.steps=`` and label's
    ``step_fallback``.
    """
    n = int(summary["completions"])
    few = int(summary["zero_steps"]) + int(summary["one_step"])
    if n == 0 or 2 * few <= n:
        return None
    return (
        f"{where}: {few} of {n} completions have at most one step ({summary['zero_steps']} with none, "
        f"{summary['one_step']} with one; mean {float(summary['mean_steps']):.2f} steps), so step boundaries "
        "label little beyond the bare prompt; split finer with task_args.steps=sentence (or blank_line, "
        "markers, regex:PATTERN), and label's step_fallback (default stride:16) labels a trace with fewer "
        "than 2 steps at its positions instead"
    )


__all__ = [
    "ABBREVIATIONS",
    "SPLITTERS",
    "SplitFn",
    "Spans",
    "StepSplitter",
    "StepSplitterError",
    "parse_splitter",
    "regex_splitter",
    "separator_splitter",
    "single_step_warning",
    "split_lines",
    "split_markers",
    "split_paragraphs",
    "split_sentences",
    "splitter_stops",
    "step_count_summary",
]
