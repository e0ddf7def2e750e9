"""Step data: problems with step-by-step solutions and where each step's tokens are (docs/design.md,
"Data bridges").

Loaders read step data through `datasets` (`open_step_data`: a .json/.jsonl/.parquet file, a saved or data
folder, a Hub id; named splits, never merged) and turn ProcessBench rows (``problem``, ``steps``, ``label``)
and TRL stepwise-supervision rows (``prompt``, ``completions``, ``labels``) into `StepExample`s;
`tokenize_step_example` gives the token ids and step spans a value model scores, joined as
`resolve_step_options` says (the user's options, else those a project export's ``export.json`` records, else
the problem and each step on a line of its own). A value curve (P̂ at
positions 0..T) is read per step by `prefix_step_scores` (the value right after the step), `td_errors`
(token TD errors, γ = 1) and `process_step_scores` (σ(β · the step's log-ratio sum), for models with
token log-ratios); `worst_step_drop` gives, per position, the largest fall of the value across one step
written so far. `prefixvalue.evaluation.stepscores` scores them under the ProcessBench protocol;
`ValueModel.score_steps` scores one solution.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ..config import ConfigError
from ..jsonlines import jsonl_records
from ..prompting import PromptFormat
from ..tasks.base import first_error


# -------------------------------------------------------------------------------------- exact step labels
def step_facts(
    step_spans: Sequence[Sequence[int]], step_labels: Sequence[bool], length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per position p = 0..T: (a wrong step has been written, number of steps written), both read from the
    prefix alone: a step counts once p ≥ its span's end."""
    if len(step_spans) != len(step_labels):
        raise ValueError(f"{len(step_spans)} step spans but {len(step_labels)} step labels")
    p = np.arange(length + 1)
    wrong = np.zeros(length + 1, dtype=bool)
    written = np.zeros(length + 1, dtype=np.int64)
    for (_, end), ok in zip(step_spans, step_labels):
        done = p >= int(end)
        written += done
        if not ok:
            wrong |= done
    return wrong, written


def has_step_labels(ds: Any) -> bool:
    """Whether a traces dataset (or a list of trace rows) carries exact step labels for every row."""
    if isinstance(ds, list):
        return bool(ds) and all(r.get("step_labels") is not None for r in ds)
    if "step_labels" not in ds.column_names or len(ds) == 0:
        return False
    return all(x is not None for x in ds["step_labels"])


# -------------------------------------------------------------------------------------- scores
def td_errors(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Token TD errors δ_t = V(s_{t+1}) − V(s_t) for t = 0..T−1 from values at positions 0..T."""
    v = np.asarray(values, dtype=np.float64)
    return v[1:] - v[:-1]


def prefix_step_scores(values: Sequence[float] | np.ndarray, step_spans: Sequence[Sequence[int]]) -> np.ndarray:
    """Value after each step: ``values[end]`` for each token span [start, end) of the completion."""
    v = np.asarray(values, dtype=np.float64)
    ends = [int(s[1]) for s in step_spans]
    if ends and max(ends) >= len(v):
        raise ValueError(f"a step ends at token {max(ends)} but values cover positions 0..{len(v) - 1}")
    return v[ends] if ends else np.zeros(0)


#: the floor on a value before its logarithm in `worst_step_drop` (a value of 0 would make a drop infinite)
STEP_DROP_FLOOR = 1e-6


def worst_step_drop(values: Sequence[float] | np.ndarray, step_spans: Sequence[Sequence[int]]) -> np.ndarray:
    """Per position p = 0..T of a value curve: the worst step written so far, min over the steps with end ≤ p
    of log V(end) − log V(start) (values floored at `STEP_DROP_FLOOR`), and 0 before the first step ends:
    a value model's own "a step went wrong" detector, read from how much its value fell across one step rather
    than from its level (docs/design.md, "Error detection against the policy's own features")."""
    v = np.log(np.maximum(np.asarray(values, dtype=np.float64), STEP_DROP_FLOOR))
    worst = np.zeros(len(v))
    if any(int(e) >= len(v) for _, e in step_spans):
        raise ValueError(f"a step ends past position {len(v) - 1}, the value curve's last")
    for s, e in step_spans:
        worst[int(e) :] = np.minimum(worst[int(e) :], v[int(e)] - v[int(s)])
    return worst


def process_step_scores(
    token_log_ratios: Sequence[float] | np.ndarray, step_spans: Sequence[Sequence[int]], beta: float
) -> np.ndarray:
    """Process-level step scores σ(β Σ_{i∈step} log-ratio_i) (unscaled per-token log-ratios in)."""
    r = np.asarray(token_log_ratios, dtype=np.float64)
    sums = np.array([r[int(s0) : int(s1)].sum() for s0, s1 in step_spans], dtype=np.float64)
    z = beta * sums
    # the logistic written out: scipy.special.expit differs from it in the last bit for z < 0, which
    # moves a chosen threshold by one ulp; this form keeps metrics.json bit-identical across versions
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ------------------------------------------------------------------------------------- options
#: the record `prefixvalue export` writes beside its files; its ``evaluate_options`` say how the steps were joined
EXPORT_RECORD = "export.json"
#: how step data is tokenised when neither the user nor an export record says: problem and steps one a line
DEFAULT_STEP_OPTIONS: dict[str, str] = {"step_prompt_template": "{prompt}\n", "step_separator": "\n"}


@dataclass(frozen=True)
class StepOptions:
    """How step data is tokenised (`tokenize_step_example`) and where each option came from."""

    step_prompt_template: str
    step_separator: str
    origin: dict[str, str]  # option -> given | export.json's path | default
    recorded: dict[str, str] | None = None  # what the export record holds, when the data is an export's
    messages: list[str] = field(default_factory=list)  # one line each: what was read from the record
    warnings: list[str] = field(default_factory=list)  # one line each: given options unlike the record

    def record(self) -> dict[str, Any]:
        """The options, their origin and the recorded ones, as metrics.json's ``step_options``."""
        return {
            "step_prompt_template": self.step_prompt_template,
            "step_separator": self.step_separator,
            "origin": dict(self.origin),
            "recorded": self.recorded,
            "warnings": list(self.warnings),
        }


def recorded_step_options(source: str | Path) -> tuple[Path, dict[str, str]] | None:
    """``(export.json, its evaluate_options)`` when `source` is a file that a project export wrote (an
    ``export.json`` beside it lists it among its files), else None. ConfigError (one line, naming the record)
    when that record is unreadable or its ``evaluate_options`` are not two texts."""
    path = Path(str(source)).expanduser()
    record = path.parent / EXPORT_RECORD
    if not path.is_file() or not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{record}: not a readable export record ({type(exc).__name__}: {exc})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or path.name not in {Path(str(f)).name for f in files.values()}:
        return None  # another file in the export's folder
    options = data.get("evaluate_options")
    if not isinstance(options, dict) or not all(isinstance(options.get(k), str) for k in DEFAULT_STEP_OPTIONS):
        raise ConfigError(
            f"{record}: field 'evaluate_options' must hold the texts {', '.join(DEFAULT_STEP_OPTIONS)}, got {options!r}"
        )
    return record, {k: options[k] for k in DEFAULT_STEP_OPTIONS}


def resolve_step_options(
    source: str | Path, step_prompt_template: str | None = None, step_separator: str | None = None
) -> StepOptions:
    """How the step data at `source` is tokenised (docs/design.md, "Data bridges"): each option as given;
    one left None takes what the export record beside `source` holds (`recorded_step_options`), else
    `DEFAULT_STEP_OPTIONS`. `messages` say which options came from a record; `warnings` name every given
    option that differs from the record's (the steps are then not joined as the policy wrote them)."""
    found = recorded_step_options(source)
    given = {"step_prompt_template": step_prompt_template, "step_separator": step_separator}
    values: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key, value in given.items():
        if value is not None:
            values[key], origin[key] = value, "given"
        elif found is not None:
            values[key], origin[key] = found[1][key], str(found[0])
        else:
            values[key], origin[key] = DEFAULT_STEP_OPTIONS[key], "default"
    messages, warnings = [], []
    if found is not None:
        record, rec = found
        used = [f"{k}={rec[k]!r}" for k in rec if origin[k] != "given"]
        if used:
            messages.append(
                f"step data {source} is a prefixvalue export: its steps are joined as {record} records "
                f"({', '.join(used)})"
            )
        differ = [f"{k}={values[k]!r} (recorded: {rec[k]!r})" for k in rec if values[k] != rec[k]]
        if differ:
            warnings.append(
                f"warning: {', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'} from what {record} records for {source}: its steps are "
                "not tokenised as the policy wrote them; leave the option out to use the recorded one"
            )
    return StepOptions(
        values["step_prompt_template"],
        values["step_separator"],
        origin,
        None if found is None else dict(found[1]),
        messages,
        warnings,
    )


# ------------------------------------------------------------------------------------- loaders
@dataclass
class StepExample:
    """One problem with a step-by-step solution and its ProcessBench label (−1 = all steps right)."""

    example_id: str
    prompt: str
    steps: list[str]
    label: int
    group: str  # examples of one problem share a group (calibration/test split unit)
    meta: dict[str, Any]


#: file suffixes read with a `datasets` builder: suffix -> builder name
STEP_DATA_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _first_bad_json_line(path: Path) -> str | None:
    """``"FILE, line N: ..."`` for the first line of a JSON-lines file that is not a JSON object; None if
    every line is (the file may be one JSON document instead). Read by `prefixvalue.jsonlines.jsonl_records`."""
    try:
        for lineno, where, obj in jsonl_records(path):
            if not isinstance(obj, dict) and not (lineno == 1 and isinstance(obj, list)):
                return f"{where}: expected a JSON object, got {type(obj).__name__}"
    except ConfigError as exc:
        return str(exc)
    return None


def _builder_error(source: str, path: Path | None, exc: Exception) -> ConfigError:
    where = _first_bad_json_line(path) if path is not None and path.suffix == ".jsonl" else None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(where or f"cannot read step data {source}: {type(exc).__name__}: {first[:300]}")


def _looks_local(source: str) -> bool:
    """Whether `source` is meant as a local path (it exists, starts like a path, or has a data-file suffix)
    rather than a Hub dataset id (``owner/name``)."""
    return (
        Path(source).expanduser().exists()
        or source.startswith((".", "/", "~"))
        or Path(source).suffix.lower() in STEP_DATA_BUILDERS
        or source.count("/") > 1
    )


def open_step_data(source: str | Path, splits: str | Sequence[str] | None = None) -> dict[str, Any]:
    """The step data at `source` as ``{split name: datasets.Dataset}``, loaded through `datasets`.

    `source`: a local ``.json`` / ``.jsonl`` / ``.parquet`` file (one dataset, named by its file stem), a
    folder written by ``save_to_disk``, a local data folder (``datasets.load_dataset(folder)``: splits from
    its README or file names), or a Hub dataset id such as ``Qwen/ProcessBench`` (needs the network).
    `splits`: None (the only split; ConfigError listing the splits when there are several: splits are never
    merged), a name, a comma-separated list, or ``all``. ConfigError (one line) when the source is missing,
    unreadable, or lacks a requested split.
    """
    text = str(source)
    names = (
        None
        if splits is None
        else [s.strip() for s in (splits.split(",") if isinstance(splits, str) else splits) if s.strip()]
    )
    path = Path(text).expanduser()
    loaded: Any
    if path.is_file():
        builder = STEP_DATA_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ConfigError(
                f"step data {text}: unknown file type {path.suffix!r}; expected .json, .jsonl or .parquet"
            )
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")  # one file: one split
        except Exception as exc:  # noqa: BLE001 - a reader failure is the user's file
            raise _builder_error(text, path, exc) from None
        loaded = datasets.DatasetDict({path.stem: ds})
        if names not in (None, ["all"], [path.stem]):
            raise ConfigError(f"step data {text} is one file (split {path.stem!r}); it has no split(s) {names}")
        return dict(loaded)
    if path.is_dir():
        try:
            if any((path / f).exists() for f in ("dataset_dict.json", "state.json", "dataset_info.json")):
                loaded = datasets.load_from_disk(str(path))
            else:
                loaded = datasets.load_dataset(str(path))
        except Exception as exc:  # noqa: BLE001
            raise _builder_error(text, None, exc) from None
    elif _looks_local(text):
        raise ConfigError(f"step data not found: {text} (no such file or folder)")
    else:  # a Hub dataset id
        try:
            if names and names != ["all"]:
                loaded = datasets.DatasetDict({n: datasets.load_dataset(text, split=n) for n in names})
            else:
                loaded = datasets.load_dataset(text)
        except Exception as exc:  # noqa: BLE001 - offline, unknown id, unknown split: one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"cannot load step data {text!r} from the Hugging Face Hub ({type(exc).__name__}: {first[:300]}); "
                "a local file needs a path that exists"
            ) from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({path.name or "data": loaded})
    have = list(loaded)
    if names is None:
        if len(have) > 1:
            raise ConfigError(
                f"step data {text} has splits {have}; choose with step_data_split=NAME (several: A,B, or all); "
                "splits are never merged"
            )
        return dict(loaded)
    if names == ["all"]:
        return dict(loaded)
    unknown = [n for n in names if n not in loaded]
    if unknown:
        raise ConfigError(f"step data {text} has no split(s) {unknown}; splits: {have}")
    return {n: loaded[n] for n in names}


def _group(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _records(ds: Any, fields: tuple[str, ...], where: str, what: str) -> list[dict[str, Any]]:
    missing = [k for k in fields if k not in ds.column_names]
    if missing:
        raise ConfigError(f"{where}: lacks {what} field(s) {missing} (fields: {ds.column_names})")
    return [dict(r) for r in ds]


def processbench_examples(ds: Any, where: str = "step data") -> list[StepExample]:
    """`StepExample`s of ProcessBench rows (``problem``, ``steps``, ``label``; ``id`` when present)."""
    out = []
    for i, r in enumerate(_records(ds, ("problem", "steps", "label"), where, "ProcessBench")):
        steps = r["steps"]
        if not isinstance(steps, list) or not isinstance(r["label"], int) or not -1 <= r["label"] < len(steps):
            raise ConfigError(
                f"{where}, row {i}: 'steps' must be a list and 'label' an integer in [-1, {len(steps or []) - 1}]"
            )
        out.append(
            StepExample(
                example_id=str(r["id"]) if r.get("id") is not None else str(i),
                prompt=str(r["problem"]),
                steps=[str(s) for s in steps],
                label=int(r["label"]),
                group=_group(str(r["problem"])),
                meta={k: v for k, v in r.items() if k not in ("problem", "steps", "label")},
            )
        )
    return out


def trl_examples(ds: Any, where: str = "step data") -> list[StepExample]:
    """`StepExample`s of TRL stepwise-supervision rows (``prompt``, ``completions``, ``labels``); the
    ProcessBench label is the first step labelled False (−1 if none)."""
    out = []
    for i, r in enumerate(_records(ds, ("prompt", "completions", "labels"), where, "TRL stepwise")):
        steps = [str(s) for s in r["completions"]]
        labs = [bool(x) for x in r["labels"]]
        if len(steps) != len(labs):
            raise ConfigError(f"{where}, row {i}: {len(steps)} steps but {len(labs)} labels")
        fe = first_error(labs)
        rid = r.get("id", r.get("trace_id"))
        out.append(
            StepExample(
                example_id=str(rid) if rid is not None else str(i),
                prompt=str(r["prompt"]),
                steps=steps,
                label=-1 if fe is None else fe,
                group=_group(str(r["prompt"])),
                meta={"step_labels": labs},
            )
        )
    return out


def step_format(ds: Any) -> str:
    """``processbench`` or ``trl`` from a dataset's columns; ``unknown`` when neither fits."""
    cols = set(ds.column_names)
    return "processbench" if {"problem", "steps"} <= cols else "trl" if "completions" in cols else "unknown"


def load_step_splits(
    source: str | Path, fmt: str = "auto", splits: str | Sequence[str] | None = None
) -> dict[str, list[StepExample]]:
    """``{split: examples}`` of ProcessBench or TRL stepwise data at `source` (see `open_step_data`);
    ``fmt="auto"`` tells the format from each split's columns. ConfigError (one line) on a bad source or rows."""
    out: dict[str, list[StepExample]] = {}
    for name, ds in open_step_data(source, splits).items():
        where = f"step data {source}" + (f" [{name}]" if name != Path(str(source)).stem else "")
        kind = step_format(ds) if fmt == "auto" else fmt
        if kind == "processbench":
            out[name] = processbench_examples(ds, where)
        elif kind == "trl":
            out[name] = trl_examples(ds, where)
        else:
            raise ConfigError(
                f"{where}: cannot tell the step-data format from fields {ds.column_names}; expected ProcessBench "
                "(problem, steps, label) or TRL stepwise (prompt, completions, labels)"
            )
    return out


def load_processbench(path: str | Path, split: str | None = None) -> list[StepExample]:
    """ProcessBench rows (``problem``, ``steps``, ``label``) of one split of the step data at `path`."""
    return _one(load_step_splits(path, "processbench", split))


def load_trl_stepwise(path: str | Path, split: str | None = None) -> list[StepExample]:
    """TRL stepwise-supervision rows (``prompt``, ``completions``, ``labels``) of one split at `path`."""
    return _one(load_step_splits(path, "trl", split))


def load_step_data(path: str | Path, fmt: str = "auto", split: str | None = None) -> list[StepExample]:
    """Examples of one split of ProcessBench or TRL stepwise data (`load_step_splits`)."""
    return _one(load_step_splits(path, fmt, split))


def _one(splits: dict[str, list[StepExample]]) -> list[StepExample]:
    if len(splits) != 1:
        raise ConfigError(f"expected one split of step data, got {list(splits)}")
    return next(iter(splits.values()))


def tokenize_step_example(
    tokenizer: Any,
    ex: StepExample,
    prompt_template: str | None = "{prompt}\n",
    step_separator: str | None = "\n",
    prompt_format: PromptFormat | None = None,
) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Token ids of the prompt and of the steps joined by `step_separator`, and each step's token span.

    The prompt goes through `prompt_format` (the chat template the value model's traces used; default:
    the raw text). Each step (with its separator, except the last) is tokenised on its own and
    concatenated, so the step spans are exact for any tokenizer. None: `DEFAULT_STEP_OPTIONS`.
    """
    if prompt_template is None:
        prompt_template = DEFAULT_STEP_OPTIONS["step_prompt_template"]
    if step_separator is None:
        step_separator = DEFAULT_STEP_OPTIONS["step_separator"]
    prompt_ids = (prompt_format or PromptFormat()).encode(tokenizer, prompt_template.format(prompt=ex.prompt))
    completion_ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for j, step in enumerate(ex.steps):
        piece = step + (step_separator if j < len(ex.steps) - 1 else "")
        ids = list(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if not ids:  # an empty step still needs a position to be scored at
            ids = list(tokenizer(step_separator or " ", add_special_tokens=False)["input_ids"])[:1]
        spans.append((len(completion_ids), len(completion_ids) + len(ids)))
        completion_ids += ids
    return prompt_ids, completion_ids, spans


__all__ = [
    "DEFAULT_STEP_OPTIONS",
    "EXPORT_RECORD",
    "STEP_DATA_BUILDERS",
    "StepExample",
    "StepOptions",
    "load_processbench",
    "load_step_data",
    "load_step_splits",
    "load_trl_stepwise",
    "open_step_data",
    "prefix_step_scores",
    "process_step_scores",
    "processbench_examples",
    "recorded_step_options",
    "resolve_step_options",
    "step_format",
    "td_errors",
    "tokenize_step_example",
    "trl_examples",
    "worst_step_drop",
]
