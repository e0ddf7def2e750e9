"""The step-label oracle: what a perfect error detector reaches (docs/design.md, "The step-label oracle").

For tasks whose traces carry exact step labels (``step_spans`` and ``step_labels``, e.g. ``arith``), a
prefix is described by two exact facts: has a wrong step been written so far, and how many steps are
left. The oracle predicts, for each (wrong step written, steps left) group, the mean outcome of the
*training* prefixes in that group. It knows nothing about the coming steps' difficulty, so a value model
can beat it; it is the reference a learned value should pass.

A step counts as written at position p once all its tokens are in the prefix (p ≥ its span's end).

Both facts are read from the prefix and the prompt only, never from the rest of the completion. "Steps
left" is the task's known number of steps for the prompt minus the steps written so far (at least 0), not
the number of steps the trace ends up writing (that would look ahead: a trace that stops early, or skips or
adds a step, would tell the oracle so at its first token). The known number comes from the prompt through
`KNOWN_STEPS`, keyed by the traces' ``task`` column:

- ``arith``: the prompt ``Q:a<op>b<op>c...=`` asks for one step per operator and then the final ``A:x``
  step, so len(operators) + 1 (`prefixvalue.tasks.arith.ArithTask.parse_prompt`; the traces' ``prompt`` is
  the task's prompt text).

When the count is not known for every training trace (a task outside `KNOWN_STEPS`, no ``task`` or
``prompt`` column, a prompt the rule cannot read), the oracle groups by (wrong step written, steps written
so far) instead, still without look-ahead. `StepOracle.steps` says which rule was used (``"known"`` or
``"written"``) and ``note`` why; the estimator's description (the evaluation's ``estimator_info``) says it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..data.steps import has_step_labels, step_facts
from ..tasks.arith import ArithTask
from .estimators import Estimator, EstimatorInputs, TraceRecord


def _arith_steps(prompt: str) -> int:
    """Steps a correct arith completion of `prompt` writes: one per operator, then ``A:x``."""
    _, ops = ArithTask.parse_prompt(prompt)
    return len(ops) + 1


def _arith_step_kinds(prompt: str) -> list[str]:
    """The kind of each step a correct arith completion of `prompt` writes: its operator, then ``A``."""
    _, ops = ArithTask.parse_prompt(prompt)
    return [*ops, "A"]


#: tasks whose number of steps is fixed by the prompt: task name -> (prompt text -> number of steps), reading
#: the prompt only (a ValueError when the prompt is not the task's)
KNOWN_STEPS: dict[str, Callable[[str], int]] = {"arith": _arith_steps}

#: tasks whose steps' kinds are fixed by the prompt: task name -> (prompt text -> the kind of each step, in
#: order), reading the prompt only; the operator oracle groups by the kinds still to write
STEP_KINDS: dict[str, Callable[[str], list[str]]] = {"arith": _arith_step_kinds}

#: the oracle's "steps" rules: what the second fact of a group is
STEPS_RULES: dict[str, str] = {
    "known": "steps left = the task's known step count for the prompt − steps written",
    "written": "steps written so far (the task's step count is not known)",
    "operators": "the steps left, by kind: the prompt's operators not yet written, in order, then the answer",
}


def _from_prompt(rules: dict[str, Callable[[str], Any]], task: str | None, prompt: str | None) -> Any:
    """What `task`'s rule of `rules` reads from `prompt` alone; None when the task has no rule or the prompt
    cannot be read by it."""
    rule = rules.get(task or "")
    if rule is None or not prompt:
        return None
    try:
        return rule(prompt)
    except ValueError:
        return None


def known_steps(task: str | None, prompt: str | None) -> int | None:
    """The number of steps `task` asks for in `prompt` (`KNOWN_STEPS`), from the prompt text alone; None when
    the task has no such rule or the prompt cannot be read by it."""
    n = _from_prompt(KNOWN_STEPS, task, prompt)
    return None if n is None else int(n)


def group_keys(written: np.ndarray, n_steps: int | None) -> np.ndarray:
    """The second fact of each position's group: steps left, max(`n_steps` − written, 0), when the task's
    step count `n_steps` is known; else the steps written."""
    return written if n_steps is None else np.maximum(int(n_steps) - written, 0)


def step_kinds(task: str | None, prompt: str | None) -> list[str] | None:
    """The kind of each step `task` asks for in `prompt` (`STEP_KINDS`), from the prompt text alone; None when
    the task has no such rule or the prompt cannot be read by it."""
    kinds = _from_prompt(STEP_KINDS, task, prompt)
    return None if kinds is None else list(kinds)


def kind_keys(written: np.ndarray, kinds: Sequence[str]) -> list[str]:
    """The operator oracle's second fact at each position: the kinds of the steps still to write, joined."""
    return ["".join(kinds[min(int(w), len(kinds)) :]) for w in written.tolist()]


def second_facts(steps: str, task: str | None, prompt: str | None, written: np.ndarray) -> list[Any] | None:
    """The second fact of each position's group under the oracle's rule `steps` (`STEPS_RULES`): steps written,
    steps left by `task`'s known count (`group_keys`), or the kinds of the steps left (`kind_keys`); None when
    the rule needs the prompt and `task` cannot read it."""
    if steps == "written":
        return written.tolist()
    if steps == "operators":
        kinds = step_kinds(task, prompt)
        return None if kinds is None else kind_keys(written, kinds)
    n_steps = known_steps(task, prompt)
    return None if n_steps is None else group_keys(written, n_steps).tolist()


class StepOracle:
    """Group means of training outcomes by (wrong step written, steps left), fit once; by (wrong step written,
    steps written) when the task's step count is not known (`steps`). `fit_operators` gives the operator
    oracle: by (wrong step written, the kinds of the steps left)."""

    def __init__(
        self,
        means: dict[tuple[bool, Any], float],
        fallback: dict[bool, float],
        overall: float,
        n: int,
        steps: str = "written",
        task: str | None = None,
        note: str | None = None,
    ):
        if steps not in STEPS_RULES:
            raise ValueError(f"unknown steps rule {steps!r}; choose from {list(STEPS_RULES)}")
        if steps == "known" and task not in KNOWN_STEPS:
            raise ValueError(f"steps='known' needs a task with a known step count ({list(KNOWN_STEPS)}), got {task!r}")
        if steps == "operators" and task not in STEP_KINDS:
            raise ValueError(f"steps='operators' needs a task with known step kinds ({list(STEP_KINDS)}), got {task!r}")
        self.means, self.fallback, self.overall, self.n_prefixes = means, fallback, overall, n
        self.steps, self.task, self.note = steps, task, note

    @classmethod
    def fit(cls, rows: Iterable[dict[str, Any]], task: str | None = None) -> StepOracle:
        """Fit on training trace rows (``completion_ids``, ``outcome``, ``step_spans``, ``step_labels``, and
        ``prompt`` with ``task`` for the known step count; `task` names the task when the rows carry no
        ``task``): every prefix of every trace is one observation of its trace's outcome. Groups by steps
        left when every row's prompt gives its task's step count (`known_steps`), else by steps written."""
        rows = list(rows)
        if not rows:
            raise ValueError("the step-label oracle has no training prefixes to fit on")
        for r in rows:
            if r.get("step_labels") is None:
                raise ValueError("the step-label oracle needs traces with step_labels (exact step verdicts)")
        tasks = {r.get("task") or task for r in rows}
        name = next(iter(tasks)) if len(tasks) == 1 else None
        counts = [known_steps(name, r.get("prompt")) for r in rows]
        missing = sum(c is None for c in counts)
        if len(tasks) > 1:
            note = f"the traces name {len(tasks)} tasks ({sorted(map(str, tasks))}), not one"
        elif name is None:
            note = "the traces name no task (no `task` column, none given)"
        elif name not in KNOWN_STEPS:
            note = f"task {name!r} has no known step count (tasks with one: {sorted(KNOWN_STEPS)})"
        elif missing:
            note = f"{missing} of {len(rows)} training traces have no prompt the {name} step count can be read from"
        else:
            note = None
        steps = "known" if note is None else "written"
        return cls._fit_groups(rows, steps, name, note)

    @classmethod
    def _fit_groups(cls, rows: list[dict[str, Any]], steps: str, task: str | None, note: str | None) -> StepOracle:
        """The oracle of rule `steps`: the mean outcome of the training prefixes of each (wrong step written,
        second fact) group (`second_facts`), and of each side of the first fact alone (the fallback of a group
        no training prefix fell in)."""
        sums: dict[tuple[bool, Any], list[float]] = {}
        for r in rows:
            wrong, written = step_facts(r["step_spans"] or [], r["step_labels"], len(r["completion_ids"]))
            y = float(r["outcome"])
            for w, k in zip(wrong.tolist(), second_facts(steps, task, r.get("prompt"), written) or []):
                acc = sums.setdefault((w, k), [0.0, 0.0])
                acc[0] += y
                acc[1] += 1.0
        means = {key: t / c for key, (t, c) in sums.items()}
        fallback = {}
        for w in (False, True):
            tot = [v for key, v in sums.items() if key[0] == w]
            if tot:
                fallback[w] = sum(t for t, _ in tot) / sum(c for _, c in tot)
        n = int(sum(c for _, c in sums.values()))
        return cls(means, fallback, sum(t for t, _ in sums.values()) / n, n, steps, task, note)

    @classmethod
    def fit_operators(cls, rows: Iterable[dict[str, Any]], task: str | None = None) -> StepOracle | None:
        """The operator oracle: group means by (wrong step written, the kinds of the steps left, e.g. ``*-A``),
        on the same rows as `fit`; None when the rows' task has no known step kinds (`STEP_KINDS`) or a prompt
        cannot be read by it. It knows which operations are still to come, so it sees more of what makes the
        rest of a chain hard than the step count alone."""
        rows = list(rows)
        tasks = {r.get("task") or task for r in rows}
        name = next(iter(tasks)) if len(tasks) == 1 else None
        kinds = [step_kinds(name, r.get("prompt")) for r in rows]
        if not rows or name not in STEP_KINDS or any(k is None for k in kinds):
            return None
        if any(r.get("step_labels") is None for r in rows):
            raise ValueError("the operator oracle needs traces with step_labels (exact step verdicts)")
        return cls._fit_groups(rows, "operators", name, None)

    def predict(self, record: TraceRecord) -> np.ndarray:
        """The oracle's value at positions 0..T of one trace (its group's training mean). Reads the trace's
        prefix and prompt only: the value at p does not change with the completion's tokens after p."""
        if record.step_labels is None:
            raise ValueError(f"trace {record.trace_id} has no step_labels: the oracle cannot score it")
        wrong, written = step_facts(record.step_spans, record.step_labels, record.length)
        keys = second_facts(self.steps, self.task, record.prompt, written)
        if keys is None:
            what, fit_on = (
                ("step kinds", "the kinds of the steps left")
                if self.steps == "operators"
                else ("step count", "steps left by the known count")
            )
            raise ValueError(
                f"trace {record.trace_id}: its prompt {record.prompt[:60]!r} gives no {self.task} {what}, "
                f"and this oracle was fit on {fit_on}"
            )
        return np.array(
            [self.means.get((w, k), self.fallback.get(w, self.overall)) for w, k in zip(wrong.tolist(), keys)],
            dtype=np.float64,
        )

    def describe(self) -> str:
        """One line: what the oracle groups by, on how many training prefixes, and why when not by the known
        step count."""
        second = {
            "known": "steps left by the task's known step count",
            "written": "steps written so far",
            "operators": "the kinds of the steps left: operators still to apply, from the prompt",
        }[self.steps]
        why = f" ({self.note}; steps left would read the trace's own step count, a look-ahead)" if self.note else ""
        what = "operator oracle" if self.steps == "operators" else "step-label oracle"
        return (
            f"{what}: mean training outcome by (wrong step written, {second}){why}, fit on "
            f"{self.n_prefixes} training prefixes; exact facts of the prefix and prompt, no learned difficulty"
        )

    def estimator(self) -> Estimator:
        """This oracle as an evaluation estimator (probabilities: Brier and ECE are reported); its description
        (`describe`) names the steps rule."""

        def fn(inputs: EstimatorInputs) -> list[np.ndarray]:
            return [self.predict(t) for t in inputs.traces]

        return Estimator(fn, probability=True, description=self.describe())


#: the columns of a traces dataset the oracle reads (``prompt`` and ``task`` when present: the known step count)
ORACLE_COLUMNS: tuple[str, ...] = ("completion_ids", "outcome", "step_spans", "step_labels", "prompt", "task")


def training_oracles(traces: Any, record: Any) -> dict[str, StepOracle]:
    """The oracles fit on the traces (a traces dataset or a list of trace rows) whose prompts are on the
    training side of `record` (a `prefixvalue.data.SplitRecord`: neither test nor validation):
    ``step_oracle`` (`StepOracle.fit`) and, for a task with known step kinds, ``operator_oracle``
    (`StepOracle.fit_operators`); {} when there is no record, the traces lack exact step labels, or no prompt
    is a training prompt (an oracle never sees held-out or validation outcomes)."""
    if record is None or not has_step_labels(traces):
        return {}
    prompts = [r["prompt"] for r in traces] if isinstance(traces, list) else traces["prompt"]
    keep = [i for i, p in enumerate(prompts) if record.side(p) == "train"]
    if not keep:
        return {}
    if isinstance(traces, list):
        rows: Any = [traces[i] for i in keep]
    else:
        rows = list(traces.select(keep).select_columns([c for c in ORACLE_COLUMNS if c in traces.column_names]))
    out = {"step_oracle": StepOracle.fit(rows)}
    operators = StepOracle.fit_operators(rows)
    if operators is not None:
        out["operator_oracle"] = operators
    return out


def training_oracle(traces: Any, record: Any) -> StepOracle | None:
    """The step-label oracle of `training_oracles`, None when there is none."""
    return training_oracles(traces, record).get("step_oracle")
