"""Data bridges: traces (+ MC labels) to the step formats of other tools, and the user's rollouts to traces.

    prefixvalue export traces=runs/traces labels=runs/labels out=runs/export
    prefixvalue import rollouts=my_rollouts.jsonl model=data/policies/arith-tiny task=arith out=runs/traces_mine

Export formats (conventions in docs/design.md, "Data bridges"):

- ``trl``: TRL stepwise supervision, what TRL's PRM trainer reads: ``prompt`` (str), ``completions``
  (list of step texts), ``labels`` (one bool per step).
- ``math_shepherd``: the Math-Shepherd dataset's format, as TRL's converter reads it: ``input`` (the problem,
  then ``Step k: `` and each step followed by the tag `STEP_TAG` " ки"), ``label`` (the same text with each tag
  replaced by ``+`` or ``-``, the hard label), ``task`` (the traces' task), plus ``steps``, ``hard_labels``
  (any continuation of the step correct) and ``soft_labels`` (the fraction of continuations correct).
- ``processbench``: ProcessBench records: ``id``, ``generator``, ``problem``, ``steps``, ``label`` (index of
  the first wrong step, -1 when every step is right), ``final_answer_correct``; by default from the task's
  exact step labels when the traces carry them (`processbench_label_source`).

`stepwise_token_classification_features` tokenises a TRL stepwise row for a token-classification PRM (what
TRL's PRMTrainer did; recipes/train_prm.py trains one), and `outcome_from_labels` gives an import the outcome
of a stepwise row that has none.

Every exported row also carries ``trace_id``, ``prompt_id``, ``completion``, ``outcome``, ``answer`` and
``label_source`` (``mc``, ``task`` or ``outcome``), so an export can be imported back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError
from ..jsonlines import jsonl_records
from ..tasks.base import first_error
from . import DataFormatError

#: the step tag of Math-Shepherd's ``input`` text (Cyrillic "ки"), written after every step
STEP_TAG = "ки"
#: export formats: name -> file stem
EXPORT_FORMATS: tuple[str, ...] = ("trl", "math_shepherd", "processbench")
#: where step labels come from (see `step_label_source`)
LABEL_SOURCES: tuple[str, ...] = ("auto", "mc", "task", "outcome")
#: where ProcessBench's first-error labels come from (see `processbench_label_source`)
PROCESSBENCH_LABELS: tuple[str, ...] = ("auto", "exact", "mc")
#: how an import finds the outcome of a record (see `prefixvalue.tools.import_rollouts`)
OUTCOME_FROM: tuple[str, ...] = ("auto", "field", "verify", "labels")
#: longest line read from a rollouts JSON-lines file, in bytes
MAX_LINE_BYTES = 4_000_000


# ------------------------------------------------------------------------------------------- export
def step_char_ranges(tokenizer: Any, completion_ids: Sequence[int], step_spans: Sequence[Sequence[int]]) -> list:
    """Character range ``(start, end)`` in ``tokenizer.decode(completion_ids, skip_special_tokens=True)`` of
    each token span ``[s, e)``: ``len(decode(ids[:s]))`` to ``len(decode(ids[:e]))``. Special tokens (``<eos>``)
    decode to no text, so they stay out of every step; a byte-level token split across steps is not cut."""
    ids = list(completion_ids)
    cache: dict[int, int] = {}

    def chars(k: int) -> int:
        if k not in cache:
            cache[k] = len(tokenizer.decode(ids[:k], skip_special_tokens=True)) if k > 0 else 0
        return cache[k]

    return [(chars(int(s)), chars(int(e))) for s, e in (span[:2] for span in step_spans)]


def trace_steps(tokenizer: Any, completion_ids: Sequence[int], step_spans: Sequence[Sequence[int]]) -> list[str]:
    """Text of each step of a trace, decoded from its token spans, stripped of surrounding whitespace;
    ``<eos>`` and other special tokens are left out (a step of nothing but them is the empty string)."""
    text = tokenizer.decode(list(completion_ids), skip_special_tokens=True)
    return [text[a:b].strip() for a, b in step_char_ranges(tokenizer, completion_ids, step_spans)]


def step_separator(tokenizer: Any, completion_ids: Sequence[int], step_spans: Sequence[Sequence[int]]) -> list[str]:
    """The text between consecutive steps of one trace (what evaluate's ``step_separator`` should be)."""
    text = tokenizer.decode(list(completion_ids), skip_special_tokens=True)
    ranges = step_char_ranges(tokenizer, completion_ids, step_spans)
    return [text[ranges[j][1] : ranges[j + 1][0]] for j in range(len(ranges) - 1)]


@dataclass(frozen=True)
class StepValue:
    """The MC value right after a step: `mean` = successes / n (n = 0: the trace's own verified outcome,
    when the step ends the completion)."""

    mean: float
    n: int
    successes: float

    @property
    def hard(self) -> bool:
        """Math-Shepherd's hard label: some continuation of the step was correct."""
        return self.successes > 0


def labels_by_trace(labels: Any) -> dict[str, dict[int, StepValue]]:
    """``{trace_id: {position: StepValue}}`` of a prefix-labels dataset (`prefixvalue.data.load_labels`)."""
    cols = labels.select_columns(["trace_id", "position", "n", "successes", "mean"]).to_dict()
    out: dict[str, dict[int, StepValue]] = {}
    for tid, pos, n, k, m in zip(cols["trace_id"], cols["position"], cols["n"], cols["successes"], cols["mean"]):
        out.setdefault(str(tid), {})[int(pos)] = StepValue(float(m), int(n), float(k))
    return out


def mc_step_values(
    by_position: dict[int, StepValue], step_spans: Sequence[Sequence[int]], completion_len: int, outcome: float
) -> list[StepValue] | None:
    """MC value after each step: the label at the position where the step ends (the prefix holding the
    step's last token). A step that ends the completion takes the trace's verified `outcome` (position T is
    the finished trace; label never samples it). None when a step's end position carries no label (label
    ran with positions other than ``steps``, or a fallback)."""
    out: list[StepValue] = []
    for span in step_spans:
        end = int(span[1])
        if end >= completion_len:
            out.append(StepValue(float(outcome), 0, float(outcome)))
        elif end in by_position:
            out.append(by_position[end])
        else:
            return None
    return out


def step_label_source(requested: str, has_mc: bool, has_task_labels: bool) -> str:
    """The label source an export uses: `requested`, or for ``auto``: ``mc`` when MC labels are given, else
    ``task`` when the traces carry exact step labels, else ``outcome`` (every step labelled with the trace's
    outcome: no step information, a fallback). ConfigError when the requested source is unavailable."""
    if requested not in LABEL_SOURCES:
        raise ConfigError(f"export: label_source must be one of {', '.join(LABEL_SOURCES)}, got {requested!r}")
    if requested == "auto":
        return "mc" if has_mc else "task" if has_task_labels else "outcome"
    if requested == "mc" and not has_mc:
        raise ConfigError(
            "export: label_source=mc needs MC labels: pass labels=DIR (prefixvalue label positions=steps)"
        )
    if requested == "task" and not has_task_labels:
        raise ConfigError("export: label_source=task but the traces carry no step labels (their task gives none)")
    return requested


def processbench_label_source(requested: str, source: str, has_mc: bool, has_task_labels: bool) -> str:
    """The label source of the ProcessBench file (docs/design.md, "Data bridges"): ``exact`` is the task's
    step labels (``task``), the true first error where the task has one; ``mc`` the MC labels; ``auto``:
    ``task`` when the traces carry step labels, else `source` (the other formats' source). ConfigError when
    the requested source is unavailable."""
    if requested not in PROCESSBENCH_LABELS:
        raise ConfigError(
            f"export: processbench_labels must be one of {', '.join(PROCESSBENCH_LABELS)}, got {requested!r}"
        )
    if requested == "exact" or (requested == "auto" and has_task_labels):
        return step_label_source("task", has_mc, has_task_labels)
    if requested == "mc":
        return step_label_source("mc", has_mc, has_task_labels)
    return source


@dataclass
class ExportedTrace:
    """One trace ready for every export format: step texts and their labels from one source."""

    trace_id: str
    prompt_id: str
    prompt: str
    answer: str | None
    completion: str
    outcome: float
    model: str | None
    steps: list[str]
    hard: list[bool]  # per step: right (task), some continuation correct (mc), outcome correct (outcome)
    soft: list[float] | None  # per step: MC value after the step (mc), the outcome (outcome); None (task)
    n_rollouts: list[int] | None  # per step: MC continuations (0: the finished trace's own outcome)
    source: str
    task: str | None = None  # the task that verified the trace (Math-Shepherd's ``task`` column)

    def first_error(self) -> int:
        """ProcessBench label: index of the first step labelled wrong, -1 if none."""
        fe = first_error(self.hard)
        return -1 if fe is None else fe


def exported_trace(
    row: dict[str, Any], steps: list[str], source: str, values: list[StepValue] | None
) -> ExportedTrace | None:
    """`row` (a traces row) with its step texts and labels from `source`; None when the source has no label
    for this trace (task: no step labels; mc: `values` None)."""
    outcome = float(row["outcome"])
    soft: list[float] | None = None
    n_rollouts: list[int] | None = None
    if source == "mc":
        if values is None:
            return None
        hard = [v.hard for v in values]
        soft = [v.mean for v in values]
        n_rollouts = [v.n for v in values]
    elif source == "task":
        labels = row.get("step_labels")
        if labels is None or len(labels) != len(steps):
            return None
        hard = [bool(x) for x in labels]
    else:
        hard = [outcome >= 0.5] * len(steps)
        soft = [outcome] * len(steps)
    keep = [j for j, s in enumerate(steps) if s]  # a step of only special tokens has no text to export
    pick = lambda xs: None if xs is None else [xs[j] for j in keep]  # noqa: E731
    return ExportedTrace(
        trace_id=str(row["trace_id"]),
        prompt_id=str(row["prompt_id"]),
        prompt=str(row["prompt"]),
        answer=row.get("answer"),
        completion=str(row["completion"]),
        outcome=outcome,
        model=row.get("model"),
        steps=[steps[j] for j in keep],
        hard=[hard[j] for j in keep],
        soft=pick(soft),
        n_rollouts=pick(n_rollouts),
        source=source,
        task=row.get("task"),
    )


def first_error_disagreements(mc: Sequence[ExportedTrace], exact: Sequence[ExportedTrace]) -> dict[str, Any]:
    """How many traces' first error (ProcessBench's label) differs between MC-derived labels (`mc`) and the
    task's exact step labels (`exact`, the same traces in the same order), with up to 5 examples."""
    differ = [(a, b) for a, b in zip(mc, exact) if a.first_error() != b.first_error()]
    return {
        "compared": min(len(mc), len(exact)),
        "differ": len(differ),
        "examples": [
            {"trace_id": a.trace_id, "mc_first_error": a.first_error(), "exact_first_error": b.first_error()}
            for a, b in differ[:5]
        ],
    }


def _common(t: ExportedTrace) -> dict[str, Any]:
    return {
        "trace_id": t.trace_id,
        "prompt_id": t.prompt_id,
        "completion": t.completion,
        "outcome": t.outcome,
        "answer": t.answer,
        "label_source": t.source,
    }


def trl_row(t: ExportedTrace) -> dict[str, Any]:
    """TRL stepwise supervision: ``prompt``, ``completions`` (steps), ``labels`` (bool per step)."""
    return {"prompt": t.prompt, "completions": t.steps, "labels": t.hard, **_common(t)}


def math_shepherd_row(t: ExportedTrace) -> dict[str, Any]:
    """The Math-Shepherd dataset's format (docs/design.md, "Data bridges"): ``input`` is the problem, then
    ``Step k: `` and each step followed by `STEP_TAG`, one step a line; ``label`` the same text with ``+``/``-``
    where each tag is (TRL's converter reads the label at the tag's place and takes the first step from the
    text after ``Step 1:``); ``task`` the traces' task; and the hard and soft labels as lists. Soft labels
    are null for task labels (there is no fraction to give)."""
    tagged = "\n".join(f"Step {k}: {s} {STEP_TAG}" for k, s in enumerate(t.steps, 1))
    marked = "\n".join(f"Step {k}: {s} {'+' if h else '-'}" for k, (s, h) in enumerate(zip(t.steps, t.hard), 1))
    return {
        "input": f"{t.prompt} {tagged}",
        "label": f"{t.prompt} {marked}",
        "task": t.task or "unknown",
        "prompt": t.prompt,
        "steps": t.steps,
        "hard_labels": t.hard,
        "soft_labels": t.soft,
        "n_rollouts": t.n_rollouts,
        **_common(t),
    }


def processbench_row(t: ExportedTrace) -> dict[str, Any]:
    """ProcessBench: ``label`` is the first wrong step (-1: none); every step after it counts as wrong."""
    return {
        "id": t.trace_id,
        "generator": t.model,
        "problem": t.prompt,
        "steps": t.steps,
        "label": t.first_error(),
        "final_answer_correct": t.outcome >= 0.5,
        **_common(t),
    }


ROW_BUILDERS = {"trl": trl_row, "math_shepherd": math_shepherd_row, "processbench": processbench_row}


def stepwise_token_classification_features(
    row: dict[str, Any],
    tokenizer: Any,
    step_separator: str = "\n",
    max_length: int | None = None,
    add_bos: bool = True,
) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` of one TRL stepwise row (``prompt``, ``completions``, ``labels``) for a
    token-classification PRM (``AutoModelForTokenClassification``, two classes), tokenised as TRL's
    PRMTrainer did (docs/design.md, "Data bridges"): the prompt (after the tokenizer's bos token, when it has
    one and `add_bos`), then each step followed by `step_separator`, each tokenised on its own; the label (1:
    good, 0: bad) sits on the last token of each step with its separator, -100 (ignored) everywhere else.
    `max_length` truncates the whole sequence. ValueError when the steps and labels differ in number."""
    steps, labels = list(row["completions"]), [int(bool(x)) for x in row["labels"]]
    if len(steps) != len(labels):
        raise ValueError(f"{len(steps)} steps but {len(labels)} labels")
    ids = list(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    if add_bos and tokenizer.bos_token_id is not None:
        ids = [int(tokenizer.bos_token_id), *ids]
    targets = [-100] * len(ids)
    sep = list(tokenizer(step_separator, add_special_tokens=False)["input_ids"]) if step_separator else []
    for step, label in zip(steps, labels):
        piece = list(tokenizer(step, add_special_tokens=False)["input_ids"]) + sep
        if not piece:  # an empty step without a separator has no token to carry its label
            continue
        ids += piece
        targets += [-100] * (len(piece) - 1) + [label]
    if max_length is not None:
        ids, targets = ids[:max_length], targets[:max_length]
    return {"input_ids": ids, "labels": targets}


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write `rows` as JSON lines (``.jsonl``) or parquet (``.parquet``), atomically (temp file, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        import datasets

        datasets.Dataset.from_list(rows).to_parquet(str(tmp))
    else:
        with tmp.open("w") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------- import
def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def read_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for every record of a JSON-lines, JSON (a list of objects) or parquet file;
    `where` names the file and line (or row). DataFormatError naming file:line on a malformed line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataFormatError(f"rollouts file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(str(path))
        except Exception as exc:  # noqa: BLE001 - any reader failure is the user's file
            raise DataFormatError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
        for i, rec in enumerate(table.to_pylist()):
            yield f"{path}, row {i}", rec
        return
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", None)
            raise DataFormatError(f"{path}{f', line {line}' if line else ''}: not valid JSON ({exc})") from None
        if isinstance(data, list):
            for i, rec in enumerate(data):
                yield f"{path}, item {i}", rec
            return
        if not isinstance(data, dict):
            raise DataFormatError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        yield f"{path}, item 0", data
        return
    for _, where, rec in jsonl_records(path, DataFormatError, MAX_LINE_BYTES):
        yield where, rec


@dataclass
class Rollout:
    """One rollout read from the user's file: where it came from and its checked fields."""

    where: str
    prompt: str
    completion: str
    outcome: float | None  # None: to be verified by the task (outcome_from=verify)
    steps: list[str] | None
    trace_id: str | None
    prompt_id: str | None
    answer: str | None
    labels: list[bool] | None = None  # one per step text (TRL stepwise ``labels``), when the record gives them


def prompt_hash_id(prompt: str) -> str:
    """A stable prompt id from the prompt text: ``p-`` and 12 hex digits of its SHA-256."""
    return "p-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]


def _text(value: Any, key: str, where: str, allow_number: bool = False) -> str:
    """`value` of field `key` as text; DataFormatError naming `where` unless it is a string (or, with
    `allow_number`, a number) that is text: a lone UTF-16 surrogate (JSON ``"\\ud800"`` without its pair)
    cannot be tokenised or saved."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataFormatError(
                f"{where}: field {key!r} holds {value[exc.start]!r} at character {exc.start + 1}, a lone UTF-16 "
                "surrogate (an escape like \\ud800 without its pair), which is not text"
            ) from None
        return value
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    raise DataFormatError(f"{where}: field {key!r} must be a string, got {_short(value)}")


def parse_rollout(
    rec: Any,
    where: str,
    fields: dict[str, str | None],
    steps_field: str | None,
    step_separator: str,
    outcome_from: str = "field",
    labels_field: str | None = None,
) -> Rollout:
    """Check one record against the field names in `fields` (keys prompt, completion, outcome, id,
    prompt_id, answer; None: not read). A record needs the prompt, the completion or the steps (joined with
    `step_separator` when the completion is absent) and, as `outcome_from` says, the outcome field
    (``field``), step labels (``labels``: `outcome_from_labels`) or nothing (``verify``: the caller's task
    verifies it). Step labels (`labels_field`, one bool per step text) are read when present.
    DataFormatError naming `where`."""
    if not isinstance(rec, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {_short(rec)}")
    pf, cf, of = fields["prompt"], fields["completion"], fields["outcome"]
    for key in (pf, of) if outcome_from == "field" else (pf,):
        if key not in rec:
            raise DataFormatError(f"{where}: missing field {key!r} (fields present: {sorted(rec)})")
    prompt = _text(rec[pf], str(pf), where)
    steps: list[str] | None = None
    if steps_field is not None and rec.get(steps_field) is not None:
        raw = rec[steps_field]
        if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
            raise DataFormatError(f"{where}: field {steps_field!r} must be a list of step texts, got {_short(raw)}")
        steps = [_text(s, f"{steps_field}[{j}]", where) for j, s in enumerate(raw)]
    if cf in rec and rec[cf] is not None:
        completion = _text(rec[cf], str(cf), where)
    elif steps is not None:
        completion = step_separator.join(steps)
    else:
        need = f"{cf!r}" + (f" or {steps_field!r}" if steps_field else "")
        raise DataFormatError(f"{where}: missing field {need} (fields present: {sorted(rec)})")
    labels: list[bool] | None = None
    if labels_field is not None and rec.get(labels_field) is not None:
        raw = rec[labels_field]
        if not isinstance(raw, list) or not all(isinstance(x, bool) for x in raw):
            raise DataFormatError(f"{where}: field {labels_field!r} must be a list of booleans, got {_short(raw)}")
        if steps is not None and len(raw) != len(steps):
            raise DataFormatError(f"{where}: {len(steps)} steps in {steps_field!r} but {len(raw)} {labels_field!r}")
        labels = list(raw)
    outcome: float | None = None
    if outcome_from == "labels":
        if labels is None:
            raise DataFormatError(
                f"{where}: outcome_from=labels but the record has no step labels {labels_field!r} "
                f"(fields present: {sorted(rec)})"
            )
        outcome = outcome_from_labels(labels)
    elif outcome_from == "field":
        value = rec[of]
        if isinstance(value, bool):
            outcome = float(value)
        elif isinstance(value, (int, float)) and np.isfinite(value) and 0 <= value <= 1:
            outcome = float(value)
        else:
            raise DataFormatError(f"{where}: field {of!r} must be a number in [0, 1] or a boolean, got {_short(value)}")
    opt = {}
    for key in ("id", "prompt_id", "answer"):
        name = fields.get(key)
        opt[key] = None if name is None or rec.get(name) is None else _text(rec[name], name, where, True).strip()
    if outcome_from == "verify" and opt["answer"] is None:
        raise DataFormatError(
            f"{where}: outcome_from=verify needs the record's answer {fields.get('answer')!r} to verify the completion "
            f"(fields present: {sorted(rec)})"
        )
    return Rollout(where, prompt, completion, outcome, steps, opt["id"], opt["prompt_id"], opt["answer"], labels)


def outcome_from_labels(labels: Sequence[bool]) -> float:
    """The outcome of a stepwise record that gives none, from its step labels: 1.0 when every step is
    labelled good, else 0.0. An approximation (docs/design.md, "Data bridges"): a right answer reached
    through a wrong step counts as 0, and labels from MC estimates are themselves estimates."""
    return float(all(bool(x) for x in labels))


def steps_in_completion(completion: str, steps: Sequence[str], where: str) -> list[tuple[int, int]]:
    """Character spans of `steps` found in order in `completion` (each step's text, surrounding whitespace
    ignored); DataFormatError naming `where` and the step when one is not found after the previous one."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for j, step in enumerate(steps):
        text = step.strip()
        if not text:
            continue
        at = completion.find(text, pos)
        if at < 0:
            raise DataFormatError(
                f"{where}: step {j} {_short(text, 40)} is not in the completion after step {j - 1}; "
                "the steps must be pieces of the completion, in order"
            )
        spans.append((at, at + len(text)))
        pos = at + len(text)
    return spans


__all__ = [
    "EXPORT_FORMATS",
    "LABEL_SOURCES",
    "OUTCOME_FROM",
    "PROCESSBENCH_LABELS",
    "ROW_BUILDERS",
    "STEP_TAG",
    "ExportedTrace",
    "Rollout",
    "StepValue",
    "exported_trace",
    "first_error_disagreements",
    "labels_by_trace",
    "math_shepherd_row",
    "mc_step_values",
    "outcome_from_labels",
    "parse_rollout",
    "processbench_label_source",
    "processbench_row",
    "prompt_hash_id",
    "read_records",
    "step_char_ranges",
    "step_label_source",
    "step_separator",
    "steps_in_completion",
    "stepwise_token_classification_features",
    "trace_steps",
    "trl_row",
    "write_rows",
]
