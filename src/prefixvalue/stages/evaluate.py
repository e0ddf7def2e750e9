"""``prefixvalue evaluate``: learned prefix values vs raw soft values vs Monte Carlo labels.

    prefixvalue evaluate checkpoint=runs/train/final traces=runs/traces labels=runs/labels out=runs/eval
    prefixvalue evaluate checkpoint=runs/train/final step_data=processbench_gsm8k.jsonl out=runs/pb

Only labelled traces of prompts held out of the checkpoint's training are evaluated: the checkpoint's
split record (``split.json``) names them, and metrics.json's ``split`` section counts what was kept and
dropped; ``include_training_prompts=true`` scores every prompt and the report says so in words. The
estimators (`prefixvalue.evaluation.estimators`: the checkpoint's ``learned`` P̂, the policy's
``logsumexp`` and ``mellowmax`` soft values, the ``constant`` base rate, and any estimator in
``ESTIMATORS``) are scored against the MC labels and by first-error prediction with the ProcessBench
protocol by the one evaluator (`prefixvalue.evaluation.evaluator.evaluate`, which the quickstart and
``distance`` call too); metrics.json, report.md, plots, heatmap.html and predictions.parquet are written
by `prefixvalue.evaluation.report`, and logged to wandb. The scoring options are
`prefixvalue.evaluation.options.ScoringOptions`, which `EvaluateConfig` extends. Step data that a
``prefixvalue export`` wrote is tokenised as its ``export.json`` records unless the command line says
otherwise (`prefixvalue.data.steps.resolve_step_options`, docs/design.md "Data bridges"): a line says so, a
given option unlike the record is warned about, and metrics.json's ``step_benchmark.step_options`` records it.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import runfolder
from ..config import ConfigError, config_to_dict, field, parse_config, save_resolved_config
from ..evaluation.options import ScoringOptions
from ..loading import ModelLoadConfig
from ..tracking import WandbConfig


# ------------------------------------------------------------------------------------- config
@dataclass
class EvaluateInputs(ModelLoadConfig):
    """What the command reads and where it writes (the first options of `EvaluateConfig`)."""

    out: str | None = field(None, help="output folder (metrics.json, report.md, plots, heatmap.html)")
    checkpoint: str | None = field(None, help="value-model checkpoint folder; None evaluates soft values only")
    traces: str | None = field(None, help="traces dataset folder (prefixvalue collect)")
    labels: str | None = field(None, help="prefix-labels dataset folder (prefixvalue label)")
    policy: str | None = field(
        None,
        help="policy for soft values; default: the traces' model (which must be the checkpoint's reference model), "
        "else the checkpoint's",
        synonyms=("model",),
    )
    allow_other_policy: bool = field(
        False, help="let the policy or the checkpoint's reference model differ from the model that wrote the traces"
    )
    dtype: str = field("auto", help="policy dtype: auto | float32 | bfloat16 | float16 (soft values are float64)")
    device: str | None = field(None, help="torch device; default cuda if present else cpu")


@dataclass
class EvaluateConfig(ScoringOptions, EvaluateInputs):
    """Evaluate a value checkpoint and the policy's soft values against Monte Carlo prefix labels."""

    # the scoring options (`prefixvalue.evaluation.options.ScoringOptions`) come between the inputs and these
    plot_traces: int = field(4, help="traces drawn in value_curves.png")
    heatmap_traces: int = field(6, help="traces shown in heatmap.html")
    report_to: str = field("disk,stdout,wandb", help="loggers: any of disk, stdout, wandb (offline without key), none")
    run_name: str | None = field(None, help="wandb run name")
    wandb: WandbConfig = field(
        default_factory=WandbConfig, help="wandb project, entity, group, tags, job_type (wandb.project=NAME, ...)"
    )
    progress: bool = field(True, help="show a progress bar over traces for the forward passes")
    overwrite: bool = field(
        False, help="replace the outputs of another evaluation in out (else a folder with another config is refused)"
    )

    def check_inputs(self) -> None:
        """Checks of the command line (which inputs go together); library calls pass data in memory."""
        if self.out is None:
            raise ConfigError("evaluate: out is required (out=DIR)")
        has_prefix_data = self.traces is not None or self.labels is not None
        if has_prefix_data and (self.traces is None or self.labels is None):
            raise ConfigError("evaluate: give both traces= and labels= (or neither, with step_data=)")
        if not has_prefix_data and self.step_data is None:
            raise ConfigError("evaluate: nothing to evaluate; give traces= and labels=, or step_data=")
        if self.step_data is not None and self.checkpoint is None:
            raise ConfigError("evaluate: step_data is scored with a value model; give checkpoint=")
        if self.checkpoint is None and self.policy is None:
            raise ConfigError("evaluate: give checkpoint=, or policy= to evaluate soft values only")
        from ..loading import looks_like_path

        # local paths only: a name like owner/name may be a Hub checkpoint or dataset
        for key in ("checkpoint", "traces", "labels", "step_data"):
            value = getattr(self, key)
            if value is not None and looks_like_path(value) and not Path(value).expanduser().exists():
                raise ConfigError(f"evaluate: {key} {value} does not exist")


# ------------------------------------------------------------------------------------- run
def run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate as `cfg` says; returns the metrics dict (also written to ``OUT/metrics.json``)."""
    # imported here, not at the top: parsing the config (``--help``) needs no torch
    from ..data import load_split, load_traces, traces_finish_summary
    from ..evaluation.evaluator import evaluate
    from ..evaluation.report import write_report, write_step_benchmark_report
    from ..evaluation.scoring import evaluate_step_data
    from ..loading import traces_policy
    from ..policies import check_vocabulary, default_device, load_policy, load_tokenizer
    from ..prompting import checkpoint_prompt_format
    from ..tracking import build_logger

    cfg.check_inputs()
    step_options = None
    if cfg.step_data is not None:  # an export's recorded tokenisation, read before any model loads
        from ..data.steps import resolve_step_options

        step_options = resolve_step_options(cfg.step_data, cfg.step_prompt_template, cfg.step_separator)
        for line in step_options.messages:
            print(f"evaluate: {line}")
        for line in step_options.warnings:
            print(f"evaluate: {line}", file=sys.stderr)
        step_cfg = dataclasses.replace(
            cfg,
            step_prompt_template=step_options.step_prompt_template,
            step_separator=step_options.step_separator,
        )
    split_record = cfg.split_record or cfg.checkpoint  # the checkpoint's training prompts are left out
    if cfg.traces is not None and cfg.checkpoint is not None and not cfg.include_training_prompts:
        from ..evaluation.scoring import missing_split_error

        if load_split(split_record) is None:  # refuse before loading any model
            raise missing_split_error(split_record)
    out = Path(cfg.out)  # type: ignore[arg-type]
    folder = prepare_out(cfg, out)
    save_resolved_config(cfg, out)
    device = cfg.device or str(default_device())
    traces = load_traces(cfg.traces) if cfg.traces is not None else None
    if traces is not None and cfg.checkpoint is not None:  # an edited split.json, refused before loading the model
        load_split(split_record, traces["prompt"], f"the traces {cfg.traces}")
    load = cfg.load_options()
    vm = _load_value_model(cfg.checkpoint, device, load) if cfg.checkpoint else None
    if vm is not None and traces is not None:  # the checkpoint's reference model must be the traces' model
        traces_policy(traces, str(vm.config.base_model), load, cfg.allow_other_policy, "evaluate (checkpoint)")
    policy_path = cfg.policy or (str(vm.config.base_model) if vm is not None else None)
    if traces is not None:
        policy_path, load = traces_policy(traces, policy_path, load, cfg.allow_other_policy, "evaluate")
    elif vm is not None:
        load = load.with_recorded(vm.config.base_load)
    policy = tokenizer = None
    if policy_path is not None and cfg.soft_values and traces is not None:
        policy, tokenizer = load_policy(policy_path, cfg.dtype, device, load)
    elif policy_path is not None:
        tokenizer = load_tokenizer(policy_path, load)
    if traces is not None and tokenizer is not None:
        vocab = policy.get_output_embeddings().weight.shape[0] if policy is not None else None
        check_vocabulary(tokenizer, traces, "evaluate", vocab)
    fmt = checkpoint_prompt_format(cfg.checkpoint) if cfg.checkpoint else None
    logger = build_logger(
        cfg.report_to, out, config_to_dict(cfg), cfg.run_name, cfg.wandb, "evaluate", checkpoints=[cfg.checkpoint]
    )
    try:
        if traces is not None:
            result = evaluate(
                {"learned": vm} if vm is not None else None,
                traces,
                cfg.labels,
                dataclasses.replace(cfg, split_record=split_record),
                policy=policy,
                tokenizer=tokenizer,
                progress=cfg.progress,
            )
            result.metrics["policy"] = policy_path
            result.metrics["traces_finish"] = traces_finish_summary(traces)
            result.metrics["checkpoint"] = cfg.checkpoint
            if step_options is not None:
                result.metrics["step_benchmark"] = evaluate_step_data(
                    vm, tokenizer, cfg.step_data, step_cfg, fmt, cfg.out
                )
                result.metrics["step_benchmark"]["step_options"] = step_options.record()
            write_report(result, out, tokenizer=tokenizer, logger=logger, config=cfg)
            metrics = result.metrics
            for warning in metrics["warnings"]:
                print(f"prefixvalue evaluate: warning: {warning}", file=sys.stderr)
        else:
            assert step_options is not None  # check_inputs: step_data without traces
            metrics = {
                "checkpoint": cfg.checkpoint,
                "policy": policy_path,
                "step_benchmark": {
                    **evaluate_step_data(vm, tokenizer, cfg.step_data, step_cfg, fmt, cfg.out),
                    "step_options": step_options.record(),
                },
            }
            write_step_benchmark_report(metrics, out, logger=logger)
    finally:
        logger.finish()
    if traces is not None and cfg.checkpoint is not None and Path(cfg.checkpoint).is_dir():
        from ..value.card import write_evaluation_record  # the checkpoint's model card shows these figures

        write_evaluation_record(cfg.checkpoint, metrics, str(out))
    folder.finish()  # last: the record says complete only once every output is in place
    return metrics


#: what an evaluation writes into out (besides config.yaml), removed before it writes again
OUTPUTS = (
    "metrics.json",
    "metrics.jsonl",
    "report.md",
    "report.html",
    "heatmap.html",
    "predictions.parquet",
    "eval_predictions.parquet",
    "step_predictions.jsonl",
)
#: every top-level name an evaluation writes into out: a folder holding anything else is not an evaluation's
FOLDER_OUTPUTS = (*OUTPUTS, "*.png", runfolder.CONFIG_FILE, *runfolder.LOGGER_OUTPUTS)
#: keys that may differ when an evaluation is rerun into its own folder (they change no figure)
RERUN_KEYS = frozenset({"report_to", "run_name", "wandb", "progress", "overwrite", "out"})
#: keys naming files or folders: the same place written two ways (``./ckpt``, ``ckpt``) is one config
PATH_KEYS = (
    "checkpoint",
    "traces",
    "labels",
    "policy",
    "split_record",
    "oracle_traces",
    "step_data",
    "validation_traces",
)


def prepare_out(cfg: EvaluateConfig, out: Path) -> runfolder.RunFolder:
    """Claim `out` for this evaluation (`prefixvalue.runfolder.claim`, docs/design.md "Run folders"): a
    folder holding another command's run or a file no evaluation wrote is refused, and one holding an
    evaluation with another config (beyond `RERUN_KEYS`) unless ``overwrite=true``, which removes that
    evaluation's files only. Then the previous outputs (`OUTPUTS`, plots) are removed, so none is appended
    to or left stale: the same config rerun replaces its own outputs (evaluation is deterministic). The
    claim holds the folder until this process ends, claims it again or finishes the run; returns it."""
    folder = runfolder.claim(
        out,
        "evaluate",
        cfg,
        outputs=FOLDER_OUTPUTS,
        rerun_keys=RERUN_KEYS,
        path_keys=PATH_KEYS,
        overwrite=cfg.overwrite,
    )
    folder.remove(*OUTPUTS, "*.png")
    return folder


def _load_value_model(path: str, device: str | None, options: Any = None) -> Any:
    from ..value import is_value_checkpoint, load_value_model

    folder = Path(path).expanduser()
    if folder.is_dir() and not is_value_checkpoint(folder):
        raise ConfigError(
            f"evaluate: checkpoint {path} is not a value checkpoint (no value_config.json; "
            "train writes one to output_dir/final; prefixvalue ensemble writes ensemble.json)"
        )

    return load_value_model(path, device=device, options=options)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue evaluate``; returns the exit status (`run` returns the metrics, also written to
    ``OUT/metrics.json``)."""
    run(parse_config(EvaluateConfig, list(argv) if argv is not None else None, prog="prefixvalue evaluate"))
    return 0
