"""``prefixvalue import``: the user's own rollouts (prompt, completion, outcome) as a traces dataset.

    prefixvalue import rollouts=my_rollouts.jsonl model=data/policies/arith-tiny task=arith out=runs/traces_mine
    prefixvalue import rollouts=runs/export/trl.jsonl model=data/policies/arith-tiny task=arith out=runs/traces_back
    prefixvalue import rollouts=gen.parquet model=Qwen/Qwen2.5-0.5B-Instruct task=jsonl \
        task_args.path=problems.jsonl steps=blank_line out=runs/traces_qwen
    prefixvalue import rollouts=trl_stepwise.jsonl model=data/policies/arith-tiny outcome_from=labels out=runs/t

Each record (a JSON-lines, JSON or parquet file) gives a prompt, a completion and its outcome (a number in
[0, 1] or a boolean); optionally the steps (a list of step texts: pieces of the completion, or the completion
itself when it is absent), a trace id, a prompt id and a reference answer. The prompt is tokenised with the
policy's tokenizer in its prompt format (the chat template when the tokenizer has one, as collect does) and
the completion on its own, with ``<eos>`` after it (``append_eos``). Step spans come from the given steps,
else from ``steps=SPEC`` (see `prefixvalue.tasks.steps`), else from the task's splitter. ``task`` and
``task_args`` are recorded, as collect records them, so ``prefixvalue label`` can verify continuations; the
task's exact step labels are computed when it has them. The result is what label, train and evaluate read.

TRL-native stepwise data (``prompt``, ``completions``, ``labels``, no outcome) imports too: the outcome is
the record's field when present, else the task's verdict on the completion given the record's answer
(``outcome_from=verify``; the default when task= is given and the records carry answers), else, asked for
with ``outcome_from=labels``, 1 when every step is labelled good (an approximation); each trace's
``outcome_note`` says which. The records' step labels become the traces' ``step_labels`` when the task gives
none, so an export writes them back (docs/design.md, "Data bridges").
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .. import __version__, runfolder
from ..config import ConfigError, RawMapping, field, parse_config, save_resolved_config
from ..data.bridges import (
    OUTCOME_FROM,
    Rollout,
    parse_rollout,
    prompt_hash_id,
    read_records,
    steps_in_completion,
)
from ..data.schema import TRACE_FEATURES
from ..loading import ModelLoadConfig, recorded_model, resolve_model_path
from ..prompting import choose_prompt_format
from ..sampling.sampler import SamplingParams
from ..tasks import Prompt, build_task, char_to_token_spans, task_configs, task_options, token_end_offsets
from ..tasks.base import safe_verify
from ..tasks.steps import StepSplitterError, parse_splitter, single_step_warning, step_count_summary

#: how the out folder is claimed (`prefixvalue.runfolder`): the traces dataset (``save_to_disk``) and the
#: import's own files; paths compared resolved
FOLDER_RULES: dict[str, Any] = {
    "outputs": (runfolder.CONFIG_FILE, "summary.json", "data-*.arrow", "dataset_info.json", "state.json"),
    "path_keys": ("rollouts", "model"),
}


@dataclass
class ImportConfig(ModelLoadConfig):
    """Turn the user's rollouts (prompt, completion, outcome; optional steps) into a traces dataset."""

    rollouts: str | None = field(None, help="JSON-lines, JSON (a list of objects) or parquet file of rollouts")
    model: str | None = field(
        None, help="the policy that wrote the rollouts (its tokenizer and prompt format)", synonyms=("policy",)
    )
    out: str | None = field(None, help="output folder (the traces dataset)")
    task: str | None = field(
        None, help="task that verifies continuations when labelling (recorded; None: label needs task=)"
    )
    task_args: RawMapping = field(
        default_factory=RawMapping, help="options of the task's config (recorded for label)", configs=task_configs
    )
    prompt_field: str = field("prompt", help="field holding the prompt text")
    completion_field: str = field("completion", help="field holding the completion text")
    outcome_field: str = field("outcome", help="field holding the outcome: a number in [0, 1] or a boolean")
    outcome_from: str = field(
        "auto",
        help="where the outcome comes from: auto (outcome_field when the records have it, else verify when task= "
        "is given and they have answers) | field | verify (the task's verifier on the completion and the record's "
        "answer) | labels (1 when every step label is true: an approximation, for TRL stepwise data)",
    )
    labels_field: str | None = field(
        "auto",
        help="field holding one boolean label per step text (TRL stepwise 'labels'; auto: 'labels' when present; "
        "None: none); kept as the traces' step_labels when the task gives none",
    )
    steps_field: str | None = field(
        "auto", help="field holding the step texts (auto: 'completions' or 'steps' when present; None: none)"
    )
    id_field: str | None = field(
        "auto", help="field holding a unique trace id (auto: 'trace_id' when present; else '{prompt_id}/s{j}')"
    )
    prompt_id_field: str | None = field(
        "auto", help="field holding the prompt id (auto: 'prompt_id' when present; else a hash of the prompt text)"
    )
    answer_field: str | None = field("answer", help="field holding the reference answer, when present (for label)")
    steps: str | None = field(
        None,
        help="step splitter for records without step texts: newline | blank_line | sentence | markers | "
        "regex:PATTERN | separator:TEXT (None: the task's splitter, else newline)",
    )
    step_separator: str = field("\n", help="joins the steps of a record that has steps but no completion", escapes=True)
    chat_template: bool | None = field(
        None, help="wrap each prompt in the tokenizer's chat template (None: when the tokenizer has one)"
    )
    system_prompt: str | None = field(None, help="system message when the chat template is on", escapes=True)
    append_eos: bool = field(True, help="end every completion with the tokenizer's eos token (a finished rollout)")
    temperature: float = field(1.0, help="sampling temperature the rollouts were drawn at (label continues with it)")
    top_p: float = field(1.0, help="nucleus mass the rollouts were drawn with")
    top_k: int = field(0, help="top-k the rollouts were drawn with (0 = off)")
    max_new_tokens: int | None = field(None, help="token budget recorded for label (None: the longest completion)")

    def __post_init__(self) -> None:
        if self.task is not None:
            try:
                self.task_args = task_options(self.task, self.task_args)
            except KeyError as exc:
                raise ConfigError(f"import: {exc.args[0]}") from None
        elif self.task_args:
            raise ConfigError("import: task_args given without task=")
        if self.outcome_from not in OUTCOME_FROM:
            raise ConfigError(
                f"import: outcome_from must be one of {', '.join(OUTCOME_FROM)}, got {self.outcome_from!r}"
            )
        if self.outcome_from == "verify" and self.task is None:
            raise ConfigError(
                "import: outcome_from=verify needs task= (the task whose verifier scores each completion)"
            )
        if self.steps is not None:
            try:
                parse_splitter(self.steps)
            except StepSplitterError as exc:
                raise ConfigError(f"import: {exc}") from None
        try:  # the sampling parameters recorded for label: a NaN temperature would sample nothing
            SamplingParams(
                self.temperature, self.top_p, self.top_k, 1 if self.max_new_tokens is None else self.max_new_tokens
            )
        except ValueError as exc:
            raise ConfigError(f"import: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """Run ``prefixvalue import``; returns the exit status."""
    run(parse_config(ImportConfig, argv, prog="prefixvalue import"))
    return 0


def _pick(cfg_value: str | None, auto: tuple[str, ...], first: dict[str, Any] | None = None) -> str | None:
    """`cfg_value`, or for ``auto`` the first of `auto` present in `first` (any of them when `first` is None)."""
    if cfg_value != "auto":
        return cfg_value
    return next((name for name in auto if first is None or name in first), None)


def run(cfg: ImportConfig) -> dict[str, Any]:
    """Import as `cfg` says; returns the summary (also ``OUT/summary.json``)."""
    import datasets
    from transformers import AutoConfig

    from ..policies import check_context, load_tokenizer, model_context

    if not cfg.rollouts or not cfg.model or not cfg.out:
        raise ConfigError("import: rollouts=FILE, model=POLICY and out=DIR are required")
    runfolder.check(cfg.out, "import", cfg, **FOLDER_RULES)  # refuse another run's folder before reading anything
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    records = list(read_records(cfg.rollouts))
    if not records:
        raise ConfigError(f"import: {cfg.rollouts} holds no records")
    first = records[0][1] if isinstance(records[0][1], dict) else {}
    fields = {
        "prompt": cfg.prompt_field,
        "completion": cfg.completion_field,
        "outcome": cfg.outcome_field,
        "id": _pick(cfg.id_field, ("trace_id",), first),
        "prompt_id": _pick(cfg.prompt_id_field, ("prompt_id",), first),
        "answer": cfg.answer_field,
    }
    recs = [rec for _, rec in records if isinstance(rec, dict)]
    steps_field = _pick(cfg.steps_field, tuple(f for f in ("completions", "steps") if any(f in r for r in recs)))
    labels_field = _pick(cfg.labels_field, ("labels",), first)
    outcome_from = _outcome_from(cfg, first, records[0][0], labels_field)
    need = [cfg.prompt_field] + ([cfg.outcome_field] if outcome_from == "field" else [])
    missing = [f for f in need if f not in first]
    if cfg.completion_field not in first and (steps_field is None or steps_field not in first):
        missing.append(cfg.completion_field)
    if missing:
        raise ConfigError(
            f"import: {records[0][0]}: the rollouts lack field(s) {missing} (fields present: {sorted(first)}); "
            "name them with prompt_field=, completion_field=, outcome_field="
        )
    rollouts = [
        parse_rollout(rec, where, fields, steps_field, cfg.step_separator, outcome_from, labels_field)
        for where, rec in records
    ]

    model_name, load = resolve_model_path(cfg.model, cfg.load_options())
    tokenizer = load_tokenizer(model_name, load)
    try:  # the context label and train will need, found as collect finds it (its config, not its weights)
        config = AutoConfig.from_pretrained(model_name, **load.tokenizer_kwargs())
    except (OSError, ValueError):  # a tokenizer without a model config: the tokenizer's limit, if it has one
        config = None
    context = model_context(SimpleNamespace(config=config), tokenizer)
    fmt = choose_prompt_format(tokenizer, cfg.chat_template, cfg.system_prompt)
    task = build_task(cfg.task, cfg.task_args) if cfg.task is not None else None
    splitter = parse_splitter(cfg.steps) if cfg.steps is not None else None
    eos = tokenizer.eos_token_id
    if cfg.append_eos and eos is None:
        raise ConfigError(f"import: the tokenizer of {cfg.model} has no eos token; set append_eos=false")

    counts: Counter[str] = Counter()  # how each trace's steps were found
    label_counts: Counter[str] = Counter()  # where each trace's step labels came from
    per_prompt: Counter[str] = Counter()  # rollouts so far of each prompt (default trace ids)
    seen: dict[str, str] = {}
    prompt_of: dict[str, tuple[str, str]] = {}  # prompt id -> (its prompt text, where first given)
    prompt_cache: dict[str, list[int]] = {}
    rows = []
    for r in rollouts:
        rows.append(
            _trace_row(
                r, tokenizer, fmt, task, splitter, cfg, prompt_cache, counts, per_prompt, eos, context, label_counts
            )
        )
        tid, pid = rows[-1]["trace_id"], rows[-1]["prompt_id"]
        if tid in seen:
            raise ConfigError(f"import: {r.where}: duplicate trace id {tid!r} (first at {seen[tid]})")
        seen[tid] = r.where
        text, first = prompt_of.setdefault(pid, (r.prompt, r.where))
        if text != r.prompt:  # the split, the labels' prompts and the summary count prompts by id and text
            raise ConfigError(
                f"import: {r.where}: prompt_id {pid!r} names another prompt text than at {first} "
                f"({r.prompt[:40]!r} vs {text[:40]!r}); give each prompt text its own id, "
                "or leave the ids out (prompt_id_field=None: a hash of the text)"
            )
    longest = max(len(r["completion_ids"]) for r in rows)
    params = SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_new_tokens or max(longest, 1))
    m = params.max_new_tokens
    if cfg.max_new_tokens is not None:  # a budget given for label, which continues every prefix up to it
        check_context(
            "import",
            [len(row["prompt_ids"]) + m for row in rows],
            *context,
            lambda i: f"{rollouts[i].where}: the prompt ({len(rows[i]['prompt_ids'])} tokens) with max_new_tokens={m}",
            "lower max_new_tokens",
        )
    meta = {
        "task": cfg.task,
        "task_args": json.dumps(dict(cfg.task_args), sort_keys=True),
        "model": recorded_model(cfg.model),  # a local path absolute: later stages find it from any folder
        "sampling": params.to_json(),
        "prompt_format": fmt.to_json(),
        "model_load": json.dumps(load.record(), sort_keys=True),
        "backend": None,  # sampled outside prefixvalue: no sampling backend of ours
        "fail_truncated": False,
        "seed": 0,
        "prefixvalue_version": __version__,
    }
    for row in rows:
        row.update(meta)
        for name in TRACE_FEATURES:  # any other run column collect writes that an import has no value for
            row.setdefault(name, None)
    out = Path(cfg.out)
    folder = runfolder.claim(out, "import", cfg, **FOLDER_RULES)  # never removes a file no import wrote
    # the dataset is saved whole into a temp folder, then moved in (state.json last): no half-written traces
    traces = datasets.Dataset.from_list(rows, features=TRACE_FEATURES)
    folder.install(lambda tmp: traces.save_to_disk(str(tmp)), last=("state.json",), stale=("data-*.arrow",))
    save_resolved_config(cfg, out)
    summary = {
        "traces": len(rows),
        "prompts": len({r["prompt_id"] for r in rows}),
        "accuracy": sum(r["outcome"] for r in rows) / len(rows),
        "source": cfg.rollouts,
        "prompt_format": json.loads(fmt.to_json()),
        "steps_from": dict(counts),
        "steps": step_count_summary([r["step_spans"] for r in rows]),
        "step_labels": sum(r["step_labels"] is not None for r in rows),
        "step_labels_from": dict(label_counts),
        "outcome_from": outcome_from,
        "outcome_means": OUTCOME_NOTES[outcome_from].format(field=cfg.outcome_field, task=cfg.task),
    }
    folder.write_text("summary.json", json.dumps(summary, indent=1))
    folder.finish()
    print(
        f"import: {len(rows)} traces of {summary['prompts']} prompts, accuracy {summary['accuracy']:.3f}, steps "
        f"from {dict(counts)}, outcomes from {summary['outcome_means']} -> {out}"
    )
    warning = single_step_warning(summary["steps"], "import")
    if warning:
        print(warning, file=sys.stderr)
    return summary


#: what each outcome source means, in each trace's outcome_note and the summary
OUTCOME_NOTES = {
    "field": "the record's field {field!r}",
    "verify": "task {task}'s verifier (the completion against the record's answer)",
    "labels": "the step labels (1 when every step is labelled good: an APPROXIMATION)",
}


def _outcome_from(cfg: ImportConfig, first: dict[str, Any], where: str, labels_field: str | None) -> str:
    """The outcome source: `cfg.outcome_from`, or for ``auto`` the records' outcome field when the first has
    it, else ``verify`` when a task is given and the first record has an answer. ConfigError (one line)
    naming both routes when neither is possible."""
    if cfg.outcome_from != "auto":
        return cfg.outcome_from
    if cfg.outcome_field in first:
        return "field"
    if cfg.task is not None and cfg.answer_field is not None and first.get(cfg.answer_field) is not None:
        return "verify"
    labels = f"; they have step labels {labels_field!r}" if labels_field is not None else ""
    raise ConfigError(
        f"import: {where}: the rollouts have no outcome field {cfg.outcome_field!r} (fields present: {sorted(first)})"
        f"{labels}: name it with outcome_field=, give task= with answers (answer_field=) to verify each completion, "
        "or outcome_from=labels to count a rollout right when every step is labelled good (an approximation)"
    )


def _trace_row(
    r: Rollout,
    tokenizer: Any,
    fmt: Any,
    task: Any,
    splitter: Any,
    cfg: ImportConfig,
    prompt_cache: dict[str, list[int]],
    counts: Counter[str],
    per_prompt: Counter[str],
    eos: int | None,
    context: tuple[int | None, str] = (None, ""),
    label_counts: Counter[str] | None = None,
) -> dict[str, Any]:
    """One traces row (contract fields; the run columns are added by the caller). ConfigError naming the
    rollout when its prompt and completion do not fit in `context` (``(positions, where it came from)``,
    `prefixvalue.policies.model_context`; None: unknown)."""
    if r.prompt not in prompt_cache:
        try:
            prompt_cache[r.prompt] = fmt.encode(tokenizer, r.prompt)
        except ValueError as exc:
            raise ConfigError(f"import: {r.where}: {exc}") from None
    ids = list(tokenizer(r.completion, add_special_tokens=False)["input_ids"])
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if text != r.completion:  # the traces' contract: completion == decode(completion_ids)
        raise ConfigError(
            f"import: {r.where}: the completion does not survive tokenisation by {cfg.model} "
            f"({r.completion[:40]!r} decodes back as {text[:40]!r}); is this the policy that wrote it?"
        )
    if cfg.append_eos:
        ids.append(int(eos))  # type: ignore[arg-type]
    positions, source = context
    need = len(prompt_cache[r.prompt]) + len(ids)
    if positions is not None and need > positions:  # checked before the steps are found (that decodes each prefix)
        raise ConfigError(
            f"import: {r.where}: the prompt ({len(prompt_cache[r.prompt])} tokens) and the completion ({len(ids)} "
            f"tokens) need {need} positions but the model's context is {positions} ({source}); {cfg.model} cannot "
            "have written this rollout: leave it out or shorten it"
        )
    prompt_id = r.prompt_id or prompt_hash_id(r.prompt)
    trace_id = r.trace_id or f"{prompt_id}/s{per_prompt[prompt_id]}"
    per_prompt[prompt_id] += 1
    prompt = Prompt(prompt_id, r.prompt, r.answer, {})
    if r.steps is not None:
        char_spans = steps_in_completion(r.completion, r.steps, r.where)
        how = "given step texts"
    elif splitter is not None:
        char_spans, how = splitter(r.completion), f"steps={splitter.spec}"
    elif task is not None:
        char_spans, how = task.split_steps(r.completion), f"task {cfg.task}"
    else:
        char_spans, how = parse_splitter("newline")(r.completion), "steps=newline"
    counts[how] += 1
    spans = char_to_token_spans(list(char_spans), token_end_offsets(tokenizer, ids))
    labels, labels_from = None, None
    if task is not None:
        try:
            got = task.step_labels(prompt, r.completion)
            labels = None if got is None or len(got) != len(spans) else [bool(x) for x in got]
        except (ValueError, LookupError):
            labels = None
        labels_from = None if labels is None else f"task {cfg.task}"
    if labels is None and r.labels is not None:  # the record's own labels, one per step with text
        given = r.labels if r.steps is None else [x for x, s in zip(r.labels, r.steps) if s.strip()]
        if len(given) != len(spans):
            raise ConfigError(
                f"import: {r.where}: {len(given)} step labels but {len(spans)} steps found in the completion "
                f"({how}); give the step texts with the labels"
            )
        labels, labels_from = list(given), "the record's labels"
    if label_counts is not None:
        label_counts[labels_from or "none"] += 1
    outcome, verifier_error = r.outcome, None
    if outcome is None:  # outcome_from=verify: the task's verdict, as collect records it
        result = safe_verify(task, prompt, r.completion)
        outcome, verifier_error = float(result.score), result.error
        how_outcome = "verify"
    else:
        how_outcome = "labels" if cfg.outcome_from == "labels" else "field"
    row = {
        "trace_id": trace_id,
        "prompt_id": prompt_id,
        "prompt": r.prompt,
        "completion": r.completion,
        "prompt_ids": prompt_cache[r.prompt],
        "completion_ids": ids,
        "outcome": outcome,
        "verifier_error": verifier_error,
        "step_spans": [list(s) for s in spans],
        "step_labels": labels,
        "logprobs": [],
        "finish_reason": "eos" if cfg.append_eos else "stop",
        "outcome_note": f"imported from {r.where}; outcome from "
        + OUTCOME_NOTES[how_outcome].format(field=cfg.outcome_field, task=cfg.task),
        "answer": r.answer,
        "prompt_meta": json.dumps({"source": r.where, "step_labels_from": labels_from}),
    }
    return row


__all__ = ["ImportConfig", "main", "run"]
