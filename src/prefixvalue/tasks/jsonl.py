"""`jsonl`: the user's own prompts and answers, from a JSON-lines file or a `datasets` source.

    prefixvalue collect task=jsonl task_args.path=data/mine.jsonl task_args.verifier=marker ...

Each line of the file is a JSON object with a prompt field and an answer field (names set in
`JsonlConfig`). The whole file is read and checked when the task is built, so a malformed line
fails before any model work with the file name, the line number and what is wrong. Prompt ids are
the id field when one is named, else ``"{file stem}-{line number}"`` (1-based), so they are stable
as long as the file is. The file is the data: `prompts(split=...)` ignores `split` for a file; for
a `datasets` source `split` selects the split unless `dataset_split` is set.

Verification delegates to a verifier from `prefixvalue.tasks.verifiers` (a registered name or a user
function ``module:function``). A verifier that raises or runs past `verifier_timeout_s` scores 0
with the error recorded in `VerifierResult.error`; the run goes on. Built-in verifiers run in process;
a user function runs in a worker process (`prefixvalue.tasks.isolated`) that is killed and replaced at
the time limit (about 0.13 ms per verification over a direct call, 0.15 s to start the worker).
`label` refuses a user function named by a traces dataset's recorded ``task_args`` unless the user
passes ``allow_code_from_data=true``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, build_config, field, read_yaml
from ..jsonlines import jsonl_records, short_text
from . import verifiers as verifier_registry
from .base import Prompt, Task, VerifierResult, safe_verify
from .isolated import VerifierPool
from .steps import StepSplitter, StepSplitterError, parse_splitter, separator_splitter, splitter_stops


class JsonlFormatError(ConfigError):
    """A record of the user's data is malformed; the message names the file, the line and the problem.

    A `ConfigError` (so a ValueError): the command line reports it in one line with exit status 2."""


@dataclass
class JsonlConfig:
    """Where the user's data lives, which fields to read, and how completions are verified."""

    path: str | None = field(None, help="JSON-lines file, one object per line (or set `dataset`)")
    dataset: str | None = field(
        None,
        help="a `datasets` source for datasets.load_dataset (a builder such as "
        "'json'/'csv'/'parquet' with data_files, a local dataset script or "
        "folder), or a folder written by save_to_disk; used when `path` is unset",
    )
    dataset_config: str | None = field(None, help="configuration name of the `datasets` source")
    data_files: str | None = field(None, help="data_files for a builder `dataset` such as 'json' or 'csv'")
    dataset_split: str | None = field(
        None,
        help="split of the `datasets` source to read (default: the split asked of prompts(), e.g. collect's `split`)",
    )
    prompt_field: str = field("prompt", help="field holding the prompt text")
    answer_field: str = field("answer", help="field holding the reference answer (string or number)")
    id_field: str | None = field(None, help="field holding a unique prompt id (default: '{file stem}-{line}')")
    solution_field: str | None = field(
        None,
        help="field holding a reference solution, the completion a right answer would be, kept in each trace's "
        "prompt_meta as 'solution' (train's signal=reference reads it)",
    )
    template: str = field(
        "{prompt}",
        help="prompt template; {prompt} is the prompt field, other {names} are fields of the same record",
        escapes=True,
    )
    verifier: str = field(
        "marker",
        help="verifier: marker | last_number | boxed | choice | regex | exact (run in process), "
        "or a user function 'module:function' / 'path/to/file.py:function', run in a worker process "
        "killed and replaced at verifier_timeout_s (about 0.13 ms per verification, 0.15 s to start; label "
        "runs one named only by the traces' task_args with allow_code_from_data=true)",
    )
    verifier_options: dict = field(  # noqa: RUF009 - the project's `field` wraps dataclasses.field
        default_factory=dict, help="keyword options of the verifier, e.g. {markers: ['####'], tolerance: 1e-6}"
    )
    verifier_timeout_s: float | None = field(
        10.0, help="time limit of one verification in seconds (None: no limit); past it the outcome is 0"
    )
    steps: str = field(
        "newline",
        help="how a completion splits into steps: newline | blank_line | sentence | markers | regex:PATTERN | "
        "separator:TEXT (see prefixvalue.tasks.steps)",
    )
    step_separator: str = field(
        "\n",
        help="old form of steps=separator:TEXT, kept working: text separating the steps of a completion; "
        "used when `steps` is left at newline",
        escapes=True,
    )
    limit: int | None = field(None, help="read at most this many records (None: all)")

    def __post_init__(self) -> None:
        if (self.path is None) == (self.dataset is None):
            raise ConfigError("jsonl: set exactly one of `path` (a JSON-lines file) or `dataset` (a datasets source)")
        if self.path is not None and not Path(self.path).expanduser().is_file():
            raise ConfigError(f"jsonl: file not found: {self.path}")
        if not self.prompt_field or not self.answer_field:
            raise ConfigError("jsonl: prompt_field and answer_field must be non-empty")
        if isinstance(self.verifier_options, str):  # from a command line, as YAML text
            self.verifier_options = read_yaml(self.verifier_options, "jsonl: verifier_options") or {}
        if not isinstance(self.verifier_options, dict):
            raise ConfigError(f"jsonl: verifier_options must be a mapping, got {self.verifier_options!r}")
        if self.verifier_timeout_s is not None:
            try:
                self.verifier_timeout_s = float(self.verifier_timeout_s)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"jsonl: verifier_timeout_s must be a number, got {self.verifier_timeout_s!r}"
                ) from None
            if self.verifier_timeout_s <= 0:
                raise ConfigError("jsonl: verifier_timeout_s must be > 0 (or None for no limit)")
        if self.limit is not None:
            try:
                self.limit = int(self.limit)
            except (TypeError, ValueError):
                raise ConfigError(f"jsonl: limit must be an integer, got {self.limit!r}") from None
            if self.limit < 1:
                raise ConfigError("jsonl: limit must be >= 1 (or None for all records)")
        if not self.step_separator:
            raise ConfigError("jsonl: step_separator must be non-empty")
        try:
            steps = parse_splitter(self.steps)
        except StepSplitterError as exc:
            raise ConfigError(f"jsonl: steps: {exc}") from None
        if steps.spec != "newline" and self.step_separator != "\n":
            raise ConfigError(
                f"jsonl: steps ({self.steps!r}) and step_separator ({self.step_separator!r}) are both set; "
                "set only steps (step_separator=TEXT is the old form of steps=separator:TEXT)"
            )
        self.template_fields()  # raises on a malformed template

    def step_splitter(self) -> StepSplitter:
        """The splitter of `steps`, or ``separator:<step_separator>`` when only the old `step_separator`
        is set; raises StepSplitterError on a bad spec."""
        steps = parse_splitter(self.steps)
        if steps.spec == "newline" and self.step_separator != "\n":
            return StepSplitter(
                f"separator:{self.step_separator}", separator_splitter(self.step_separator, read_escapes=False)
            )
        return steps

    def template_fields(self) -> list[str]:
        """Names used by `template` (``{prompt}`` and record fields); raises ConfigError if malformed."""
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as exc:
            raise ConfigError(f"jsonl: bad template {self.template!r}: {exc}") from None
        for name in names:
            if not name or not name.isidentifier():
                raise ConfigError(
                    f"jsonl: template fields must be names like {{prompt}}, got {{{name}}} in {self.template!r}"
                )
        return names


class JsonlTask(Task):
    """Prompts and reference answers from the user's JSON-lines file, scored by a chosen verifier."""

    name = "jsonl"
    config_class = JsonlConfig

    def __init__(self, config: JsonlConfig | None = None, **kwargs: Any) -> None:
        # keyword options go through the typed config like task_args (unknown keys: ConfigError, suggestion)
        self.config = config if config is not None else build_config(JsonlConfig, kwargs, prefix="task_args.")
        c = self.config
        self.verifier = verifier_registry.get_verifier(c.verifier, **c.verifier_options)
        #: user functions run in a worker process a time limit can kill; built-in verifiers in process
        self.pool = None if self.verifier.builtin else VerifierPool(c.verifier, c.verifier_options)
        self.splitter = c.step_splitter()
        self._fields = c.template_fields()
        self._cache: dict[str, list[Prompt]] = {}
        if c.path is not None:
            self._cache[""] = self._read_file(Path(c.path).expanduser())
        elif c.dataset_split is not None:
            self._cache[""] = self._read_dataset(c.dataset_split)

    # -- reading --------------------------------------------------------------------------------
    def _record_to_prompt(self, record: Any, where: str, default_id: str, meta: dict[str, Any]) -> Prompt:
        """Check one record and build its Prompt; `where` names the file and line in errors."""
        c = self.config
        if not isinstance(record, dict):
            raise JsonlFormatError(f"{where}: expected a JSON object, got {type(record).__name__} {short_text(record)}")
        values: dict[str, str] = {}
        needed = [c.prompt_field, c.answer_field] + ([c.id_field] if c.id_field else [])
        needed += [c.solution_field] if c.solution_field else []
        needed += [f for f in self._fields if f != "prompt"]
        for key in dict.fromkeys(needed):
            if key not in record:
                raise JsonlFormatError(f"{where}: missing field {key!r} (fields present: {sorted(record)})")
            value = record[key]
            if isinstance(value, (dict, list)) or value is None or isinstance(value, bool):
                raise JsonlFormatError(f"{where}: field {key!r} must be a string or a number, got {short_text(value)}")
            text = value if isinstance(value, str) else json.dumps(value)
            if not text.strip():
                raise JsonlFormatError(f"{where}: field {key!r} is empty")
            values[key] = text
        fmt = dict(values)
        fmt["prompt"] = values[c.prompt_field]
        text = c.template.format_map(fmt)
        prompt_id = values[c.id_field].strip() if c.id_field else default_id
        if c.solution_field:  # the reference solution, as the task's own prompts carry it (e.g. arith's)
            meta = {**meta, "solution": values[c.solution_field]}
        return Prompt(prompt_id=prompt_id, text=text, answer=values[c.answer_field], meta=meta)

    def _check_ids(self, prompts: list[Prompt], wheres: list[str]) -> None:
        seen: dict[str, str] = {}
        for p, where in zip(prompts, wheres):
            if p.prompt_id in seen:
                raise JsonlFormatError(
                    f"{where}: duplicate id {p.prompt_id!r} in field {self.config.id_field!r} "
                    f"(first seen at {seen[p.prompt_id]})"
                )
            seen[p.prompt_id] = where

    def _read_file(self, path: Path) -> list[Prompt]:
        """Every record of the JSON-lines file at `path` as a Prompt (blank lines are skipped)."""
        prompts: list[Prompt] = []
        wheres: list[str] = []
        limit = self.config.limit
        for lineno, where, record in jsonl_records(path, JsonlFormatError):
            prompts.append(
                self._record_to_prompt(record, where, f"{path.stem}-{lineno}", {"source": str(path), "line": lineno})
            )
            wheres.append(where)
            if limit is not None and len(prompts) >= limit:
                break
        if not prompts:
            raise JsonlFormatError(f"{path}: no records (the file is empty)")
        self._check_ids(prompts, wheres)
        return prompts

    def _read_dataset(self, split: str) -> list[Prompt]:
        """Every row of `split` of the `datasets` source as a Prompt."""
        import datasets  # heavy; only this path needs it

        c = self.config
        assert c.dataset is not None
        src = Path(c.dataset).expanduser()
        if src.is_dir() and ((src / "dataset_dict.json").exists() or (src / "state.json").exists()):
            loaded: Any = datasets.load_from_disk(str(src))
        else:
            try:
                loaded = datasets.load_dataset(c.dataset, c.dataset_config, data_files=c.data_files)
            except Exception as exc:  # re-raised with the source named
                raise ConfigError(
                    f"jsonl: cannot load dataset {c.dataset!r} (config {c.dataset_config!r}, "
                    f"data_files {c.data_files!r}): {type(exc).__name__}: {exc}"
                ) from exc
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConfigError(
                    f"jsonl: dataset {c.dataset!r} has no split {split!r}; splits: {sorted(loaded)} (set dataset_split)"
                )
            ds = loaded[split]
        else:
            ds = loaded
        stem = Path(c.data_files).stem if c.data_files else src.name or "dataset"
        label = c.data_files or c.dataset
        prompts: list[Prompt] = []
        wheres: list[str] = []
        n = len(ds) if c.limit is None else min(len(ds), c.limit)
        for i in range(n):
            where = f"{label} [{split}], row {i}"
            prompts.append(
                self._record_to_prompt(ds[i], where, f"{stem}-{split}-{i}", {"source": label, "split": split, "row": i})
            )
            wheres.append(where)
        if not prompts:
            raise JsonlFormatError(f"{label} [{split}]: no records")
        self._check_ids(prompts, wheres)
        return prompts

    def records(self, split: str = "train") -> list[Prompt]:
        """All prompts of the data (the file, or `split` of a `datasets` source), read once and cached."""
        key = "" if "" in self._cache else split
        if key not in self._cache:
            self._cache[key] = self._read_dataset(split)
        return self._cache[key]

    # -- Task interface -----------------------------------------------------------------------------
    def prompts(self, num: int | None = None, split: str = "train") -> Iterator[Prompt]:
        """Yield up to `num` prompts in file order; `split` only selects a `datasets` split."""
        data = self.records(split)
        yield from data if num is None else data[:num]

    def verify_unsafe(self, prompt: Prompt, completion: str) -> VerifierResult:
        """Run the verifier directly (exceptions propagate); returns its VerifierResult."""
        if prompt.answer is None:
            raise ValueError(f"prompt {prompt.prompt_id!r} has no reference answer")
        return self.verifier(completion, prompt.answer)

    def verify(self, prompt: Prompt, completion: str) -> VerifierResult:
        """Score `completion`; a crash or a time-out gives score 0 with the error in `.error`."""
        return self.verify_with_limit(prompt, completion, None)

    def verify_with_limit(self, prompt: Prompt, completion: str, timeout_s: float | None) -> VerifierResult:
        """Score `completion` within the smaller of `timeout_s` and the config's `verifier_timeout_s`: a
        user function in the worker process (killed at the limit), a built-in verifier in a thread."""
        limits = [t for t in (timeout_s, self.config.verifier_timeout_s) if t is not None]
        limit = min(limits) if limits else None
        if self.pool is None:
            res = safe_verify(_Unsafe(self), prompt, completion, limit)
        elif prompt.answer is None:
            res = VerifierResult(0.0, error=f"ValueError: prompt {prompt.prompt_id!r} has no reference answer")
        else:
            res = self.pool.verify(completion, prompt.answer, limit)
        res.details.setdefault("verifier", self.config.verifier)
        return res

    @classmethod
    def code_references(cls, args: dict[str, Any]) -> list[str]:
        """The verifier of task options `args` when it names a user function (not a registered name)."""
        name = args.get("verifier", "marker")
        return [] if verifier_registry.is_registered(str(name)) else [str(name)]

    def split_steps(self, completion: str) -> list[tuple[int, int]]:
        """Character spans [start, end) of the steps of `completion`, by the config's `steps` splitter."""
        return self.splitter(completion)

    def step_stops(self) -> tuple[str, ...] | None:
        """The stop strings of the `steps` splitter (`prefixvalue.tasks.steps.splitter_stops`)."""
        return splitter_stops(self.splitter)


class _Unsafe(Task):
    """Adapter so `safe_verify` can time and guard `JsonlTask.verify_unsafe`."""

    def __init__(self, task: JsonlTask) -> None:
        self.task = task

    def prompts(self, num: int | None = None, split: str = "train") -> Iterator[Prompt]:
        return self.task.prompts(num, split)

    def verify(self, prompt: Prompt, completion: str) -> VerifierResult:
        return self.task.verify_unsafe(prompt, completion)
