"""The model card (README.md) at the root of a value checkpoint (docs/design.md, "Checkpoints that travel").

The card is rendered from files in the checkpoint, so it is rewritten whenever one of them changes:

- ``value_config.json``: base model, kind, backbone, β, base rate, readout (`save_pretrained` writes the card);
- ``training.json``: the training signal, steps, trace counts, the training-time held-out monitors and one
  held-out example for the usage snippet (train writes it, `write_training_record`);
- ``evaluation.json``: the held-out metrics with bootstrap 95% CIs of the last ``prefixvalue evaluate`` of
  this checkpoint (evaluate writes it, `write_evaluation_record`, when the checkpoint is a local folder).

``push_to_hub`` renders the card again with the repo id in the usage snippet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import runfolder
from ..formatting import num, with_ci
from ..loading import looks_like_path
from ..tracking import jsonable
from .checkpoint import CONFIG_NAME, VALUE_MODELS, read_value_config
from .signals import SIGNALS

CARD_FILE = "README.md"
TRAINING_FILE = "training.json"
EVALUATION_FILE = "evaluation.json"


def _read(folder: Path, name: str) -> dict[str, Any]:
    file = folder / name
    try:
        data = json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def evaluation_summary(metrics: dict[str, Any], out: str | None = None) -> dict[str, Any]:
    """The figures of an evaluate metrics dict that go on the card (a small JSON-able dict)."""
    learned = metrics.get("estimators", {}).get("learned", {})
    constant = metrics.get("estimators", {}).get("constant", {})
    split = metrics.get("split") or {}
    steps = metrics.get("step_verification") or {}
    bench = metrics.get("step_benchmark") or {}
    mc = metrics.get("mc") or {}

    def corr(name: str) -> dict[str, Any] | None:
        c = learned.get(name)
        return {"value": c.get("value"), "ci": c.get("ci")} if isinstance(c, dict) else None

    return {
        "out": out,
        "n_traces": metrics.get("n_traces"),
        "n_prefixes": metrics.get("n_prefixes"),
        "mc_samples_per_prefix": mc.get("samples_per_prefix"),
        "noise_ceiling_spearman": (mc.get("noise_ceiling") or {}).get("spearman"),
        "heldout_only": split.get("includes_training_prompts") is False if split else None,
        "split_note": split.get("note"),
        "spearman": corr("spearman"),
        "pearson": corr("pearson"),
        "brier": learned.get("brier"),
        "brier_constant": constant.get("brier"),
        "ece": learned.get("ece"),
        "auroc_outcome": {"value": learned.get("auroc_outcome"), "ci": learned.get("auroc_outcome_ci")}
        if "auroc_outcome" in learned
        else None,
        "step_f1": steps.get("f1"),
        "step_f1_process": (steps.get("process_level") or {}).get("f1"),
        "step_benchmark_f1": bench.get("f1"),
    }


def _metrics_section(training: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    lines = ["## Held-out metrics", ""]
    if evaluation:
        where = "prompts held out of training" if evaluation.get("heldout_only") else "the evaluated prompts"
        lines += [
            f"From `prefixvalue evaluate` on {num(evaluation.get('n_traces'))} traces "
            f"({num(evaluation.get('n_prefixes'))} prefixes) of {where}, against Monte Carlo labels "
            f"({num(evaluation.get('mc_samples_per_prefix'))} continuations per prefix); 95% bootstrap CIs in "
            "brackets.",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        for name, label in (("spearman", "Spearman ρ vs MC"), ("pearson", "Pearson r vs MC")):
            c = evaluation.get(name)
            if c:
                lines.append(f"| {label} | {with_ci(c.get('value'), c.get('ci'))} |")
        if evaluation.get("noise_ceiling_spearman") is not None:
            lines.append(f"| MC noise ceiling (Spearman) | {num(evaluation['noise_ceiling_spearman'])} |")
        lines.append(
            f"| Brier vs MC (constant base rate) | {num(evaluation.get('brier'))} "
            f"({num(evaluation.get('brier_constant'))}) |"
        )
        lines.append(f"| ECE | {num(evaluation.get('ece'))} |")
        auc = evaluation.get("auroc_outcome")
        if auc:
            lines.append(f"| AUROC of the final outcome | {with_ci(auc.get('value'), auc.get('ci'))} |")
        for key, label in (
            ("step_f1", "first-error F1 (ProcessBench protocol, value after step)"),
            ("step_f1_process", "first-error F1 (process-level step score)"),
            ("step_benchmark_f1", "step data first-error F1"),
        ):
            if evaluation.get(key) is not None:
                lines.append(f"| {label} | {num(evaluation[key])} |")
        if evaluation.get("split_note"):
            lines += ["", f"Split: {evaluation['split_note']}"]
        return lines
    heldout = training.get("heldout") or {}
    if heldout:
        side = {"test": "the held-out prompts"}.get(training.get("monitor_split"), "the validation prompts")
        lines += [
            f"Training-time monitors on {side} (no confidence intervals; run `prefixvalue "
            "evaluate` on this checkpoint for metrics against Monte Carlo labels with 95% CIs, which it writes "
            "here):",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        for key in ("brier_all", "brier_base_rate_all", "brier_last", "auroc_first", "auroc_last"):
            if key in heldout:
                lines.append(f"| {key} | {num(heldout[key])} |")
        return lines
    return [*lines, "Not evaluated yet: run `prefixvalue evaluate checkpoint=THIS_FOLDER ...` (it writes them here)."]


def render_model_card(folder: str | Path, name: str | None = None) -> str:
    """The model card of the checkpoint in `folder`; `name` is how the usage snippet loads it (default:
    the folder's absolute path; ``push_to_hub`` passes the repo id)."""
    folder = Path(folder)
    cfg = read_value_config(folder)
    training = _read(folder, TRAINING_FILE)
    evaluation = _read(folder, EVALUATION_FILE)
    fmt = _read(folder, "prompt_format.json")
    hub_base = cfg.base_model and not looks_like_path(cfg.base_model) and not Path(cfg.base_model).exists()
    meta = ["---", "library_name: prefixvalue"]
    if hub_base:
        meta.append(f"base_model: {cfg.base_model}")
    meta += ["tags:", "- prefixvalue", "- value-model", "- process-reward-model", "---", ""]
    signal = training.get("training_signal") or {}
    signal_cls = SIGNALS.get(signal.get("signal"))
    signal_text = signal_cls.describe(signal) if signal_cls else str(signal.get("signal", "n/a"))
    if training.get("labels"):
        signal_text += " and Monte Carlo prefix labels"
    backbone = cfg.backbone + (f" (r = {cfg.lora_r}, α = {cfg.lora_alpha})" if cfg.backbone == "lora" else "")
    if cfg.soft_prompt_tokens:
        backbone += f", soft prompt of {cfg.soft_prompt_tokens} tokens"
    kind = VALUE_MODELS.get(cfg.kind)  # its class; None for a kind this version does not know
    rows = [
        ("base model (the policy)", f"`{cfg.base_model}`" + ("" if hub_base else " (local path)")),
        ("kind", f"`{cfg.kind}`: {kind.description if kind else ''}"),
        ("backbone", backbone),
        ("training signal", signal_text),
        ("β", num(cfg.beta, 3) if kind and kind.uses_beta else f"n/a ({cfg.kind})"),
        ("base rate (training traces that succeed)", num(cfg.base_rate, 4)),
        *(kind.card_rows(cfg) if kind else []),
    ]
    rows.append(("prompt format", "chat template" if fmt.get("chat_template") else "raw text"))
    if training:
        rows.append(
            (
                "training",
                f"{num(training.get('step'))} steps on {num(training.get('train_traces'))} traces; "
                f"{num(training.get('heldout_traces'))} held-out traces",
            )
        )
    rows.append(("written by", f"prefixvalue {cfg.prefixvalue_version}"))
    title = f"# Prefix value model ({cfg.kind}) for `{cfg.base_model}`"
    body = [
        title,
        "",
        "Predicts P̂(s_p), the probability that the policy, continuing from the prefix s_p (the prompt and the "
        "first p tokens of a completion), ends in a verified-correct answer, at every prefix in one forward pass.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        *_metrics_section(training, evaluation),
        "",
        "## Usage",
        "",
    ]
    example = training.get("example") or {}
    prompt = example.get("prompt", "PROMPT TEXT")
    completion = example.get("completion", "COMPLETION TEXT")
    target = name or str(folder.resolve())
    body += [
        "```python",
        "from prefixvalue import ValueModel",
        "",
        f"vm = ValueModel.from_pretrained({target!r})",
        f"values = vm.score({prompt!r}, {completion!r})",
        "print(values)  # P̂ after 0, 1, ..., T completion tokens",
        "```",
        "",
        "`vm.score_steps(prompt, steps)` gives per-step values and TD step scores. The base model is loaded "
        "from `value_config.json`'s `base_model`; when it is a local path that is missing here, pass "
        "`base_model=PATH` to `from_pretrained` or set `PREFIXVALUE_BASE_MODEL`.",
    ]
    if kind and kind.export_problem(cfg) is None:
        body += ["", *_export_usage(kind.standard_export(cfg))]
    return "\n".join(meta + body) + "\n"


def _export_usage(standard: bool) -> list[str]:
    """The card's lines on ``prefixvalue export-model``: how the export loads and reads (docs/design.md,
    "Checkpoints that travel")."""
    if standard:
        lines = [
            "`prefixvalue export-model checkpoint=THIS out=DIR` writes it as a standard "
            "`AutoModelForTokenClassification` with two labels, `wrong` and `correct`; P̂ of the prefix ending at a "
            'token is the probability of `correct` there (`pipeline("token-classification", model=DIR)`: `score` '
            "where `entity` is `correct`, else `1 - score`):",
        ]
        load, extra = "", ""
    else:
        lines = [
            "`prefixvalue export-model checkpoint=THIS out=DIR` writes it as a two-label token classifier (`wrong`, "
            "`correct`) that plain transformers loads with `trust_remote_code=True`: the folder carries its "
            "architecture, `modeling_prefixvalue.py` (torch and transformers only), and `forward` needs "
            "`prompt_lengths`, the number of prompt tokens of each row:",
        ]
        load, extra = ", trust_remote_code=True", ", prompt_lengths=torch.tensor([len(prompt_ids)])"
    return [
        *lines,
        "",
        "```python",
        f'tc = AutoModelForTokenClassification.from_pretrained("DIR"{load})',
        f"p_hat = tc(input_ids=torch.tensor([prompt_ids + completion_ids]){extra}).logits.softmax(-1)[0, :, 1]",
        "```",
    ]


def write_model_card(folder: str | Path) -> Path:
    """(Re)write README.md in a checkpoint folder; returns its path."""
    path = Path(folder) / CARD_FILE
    return runfolder.write_text(path, render_model_card(folder))


#: keys of train's final result that go into training.json
TRAINING_KEYS: tuple[str, ...] = ("step", "train_traces", "heldout_traces", "base_rate", "training_signal")


def write_training_record(
    folder: str | Path,
    result: dict[str, Any],
    heldout: dict[str, Any],
    labels: bool = False,
    example: dict[str, Any] | None = None,
) -> None:
    """Write ``training.json`` into a checkpoint and rewrite its card: the `TRAINING_KEYS` of train's
    `result`, its `heldout` monitors, whether MC `labels` were used and one held-out trace's prompt and
    completion text (`example`, a traces row) for the card's usage snippet."""
    record = {k: result.get(k) for k in TRAINING_KEYS}
    record.update(heldout=heldout, labels=labels)
    if example is not None:
        record["example"] = {"prompt": example["prompt"], "completion": example["completion"]}
    runfolder.write_text(Path(folder) / TRAINING_FILE, json.dumps(jsonable(record), indent=2) + "\n")
    write_model_card(folder)


def write_evaluation_record(folder: str | Path, metrics: dict[str, Any], out: str | None = None) -> bool:
    """Write ``evaluation.json`` (`evaluation_summary` of evaluate's metrics) into a local checkpoint
    folder and rewrite its card. Returns False, changing nothing, when the folder cannot be written."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        return False
    try:
        runfolder.write_text(
            folder / EVALUATION_FILE, json.dumps(jsonable(evaluation_summary(metrics, out)), indent=2) + "\n"
        )
        write_model_card(folder)
    except (OSError, ValueError):
        return False
    return True


__all__ = [
    "CARD_FILE",
    "EVALUATION_FILE",
    "TRAINING_FILE",
    "evaluation_summary",
    "render_model_card",
    "write_evaluation_record",
    "write_model_card",
    "write_training_record",
]
