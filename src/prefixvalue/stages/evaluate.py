"""``prefixvalue evaluate``: learned prefix values vs raw soft values vs Monte Carlo labels.

    prefixvalue evaluate checkpoint=runs/train/final traces=runs/traces labels=runs/labels out=runs/eval
    prefixvalue evaluate checkpoint=runs/train/final step_data=processbench_gsm8k.jsonl out=runs/pb

Only labelled traces of prompts held out of the checkpoint's training are evaluated: the checkpoint's
split record (``split.json``) names them, and metrics.json's ``split`` section counts what was kept and
dropped; ``include_training_prompts=true`` scores every prompt and the report says so in words. The
estimators (`prefixvalue.evaluation.estimators`: the checkpoint's ``learned`` P̂, the policy's
``logsumexp`` and ``mellowmax`` soft values, the ``constant`` base rate, and any estimator in
``ESTIMATORS``) are scored against the MC labels and by first-error prediction with the ProcessBench
protocol (`prefixvalue.evaluation.scoring`); metrics.json, report.md, plots, heatmap.html and
predictions.parquet are written by `prefixvalue.evaluation.report`, and logged to wandb.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, config_to_dict, field, parse_config, save_resolved_config
from ..loading import ModelLoadConfig
from ..tracking import WandbConfig


# ------------------------------------------------------------------------------------- config
@dataclass
class EvaluateConfig(ModelLoadConfig):
    """Evaluate a value checkpoint and the policy's soft values against Monte Carlo prefix labels."""

    out: str | None = field(None, help="output folder (metrics.json, report.md, plots, heatmap.html)")
    checkpoint: str | None = field(None, help="value-model checkpoint folder; None evaluates soft values only")
    traces: str | None = field(None, help="traces dataset folder (prefixvalue collect)")
    labels: str | None = field(None, help="prefix-labels dataset folder (prefixvalue label)")
    policy: str | None = field(
        None,
        help="policy for soft values; default: the traces' model (which must be the checkpoint's reference model), "
        "else the checkpoint's",
    )
    allow_other_policy: bool = field(
        False, help="let the policy or the checkpoint's reference model differ from the model that wrote the traces"
    )
    dtype: str = field("auto", help="policy dtype: auto | float32 | bfloat16 | float16 (soft values are float64)")
    device: str | None = field(None, help="torch device; default cuda if present else cpu")
    batch_size: int = field(8, help="traces per forward pass (value model and policy)")
    soft_values: bool = field(True, help="compute logsumexp / mellowmax soft values of the policy")
    omegas: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0], help="MellowMax ω grid")
    mellowmax_omega: float = field(1.0, help="ω of the headline 'mellowmax' estimator (full vocabulary)")
    top_k: list[int] = field(default_factory=lambda: [10], help="top-k sizes for top-k MellowMax ([] for none)")
    base_rate: float | None = field(None, help="constant estimator's rate; default: the checkpoint's base rate")
    n_bootstrap: int = field(1000, help="bootstrap replicates for 95% CIs; 0 disables")
    bootstrap_unit: str = field(
        "prompt", help="what the cluster bootstrap resamples: prompt (traces of a prompt are not independent) | trace"
    )
    include_training_prompts: bool = field(
        False,
        help="score prompts the checkpoint trained on too (the report then "
        "says the figures are not held out); default: only held-out prompts",
    )
    split_record: str | None = field(
        None, help="folder whose split.json names the training prompts; default: the checkpoint"
    )
    noise_ceiling_repeats: int = field(50, help="random split-halves averaged for the MC noise ceiling")
    seed: int = field(0, help="seed of bootstraps, split-halves and the calibration split")
    first_k: int = field(8, help="position group 'first_k': prefixes with at most this many completion tokens")
    ece_bins: int = field(15, help="equal-width bins of the expected calibration error")
    calibration_fraction: float = field(0.5, help="fraction of prompts used to choose the step threshold")
    step_data: str | None = field(
        None,
        help="ProcessBench or TRL stepwise data to score as well: a .json/.jsonl/.parquet file, a saved or data "
        "folder, or a Hub dataset id (Qwen/ProcessBench), read with datasets.load_dataset",
    )
    step_data_format: str = field("auto", help="auto | processbench | trl")
    step_data_split: str | None = field(
        None,
        help="split(s) of step_data: NAME, A,B,... or all, each scored and reported apart (ProcessBench: gsm8k, "
        "math, olympiadbench, omnimath); required when the data has several, which are never merged",
    )
    step_protocol: str = field(
        "calibration",
        help="step threshold: calibration (tuned on a calibration split of problems, reported on the rest) | fixed "
        "(step_threshold for every example: ProcessBench's protocol, comparable with its leaderboard) | tuned "
        "(chosen on step_threshold_data, then every example scored)",
    )
    step_threshold: float = field(0.5, help="step_protocol=fixed: a step whose score is below this is an error")
    step_threshold_data: str | None = field(None, help="step_protocol=tuned: step data the threshold is chosen on")
    step_threshold_split: str | None = field(None, help="split of step_threshold_data (when it has several)")
    step_prompt_template: str = field(
        "{prompt}\n", help="how a step-data problem is written before its steps", escapes=True
    )
    step_separator: str = field("\n", help="text joining the steps of step data", escapes=True)
    step_oracle: bool = field(
        True,
        help="score the step-label oracle (wrong step written × steps left, fit on training prompts) when the "
        "traces carry exact step labels",
    )
    oracle_traces: str | None = field(
        None, help="traces whose training prompts (under the split record) fit the step-label oracle; default: traces"
    )
    max_traces: int | None = field(None, help="evaluate at most this many labelled traces (first in order)")
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

    def __post_init__(self) -> None:
        if self.mellowmax_omega <= 0 or any(w <= 0 for w in self.omegas):
            raise ConfigError("evaluate: MellowMax ω must be > 0")
        if any(k < 1 for k in self.top_k):
            raise ConfigError("evaluate: top_k sizes must be >= 1")
        if not 0 < self.calibration_fraction < 1:
            raise ConfigError("evaluate: calibration_fraction must be in (0, 1)")
        if self.n_bootstrap < 0 or self.batch_size < 1 or self.first_k < 0 or self.ece_bins < 1:
            raise ConfigError("evaluate: n_bootstrap >= 0, batch_size >= 1, first_k >= 0, ece_bins >= 1")
        if self.step_data_format not in ("auto", "processbench", "trl"):
            raise ConfigError("evaluate: step_data_format must be auto, processbench or trl")
        if self.step_protocol not in ("calibration", "fixed", "tuned"):
            raise ConfigError(
                f"evaluate: step_protocol must be calibration, fixed or tuned, got {self.step_protocol!r}"
            )
        if (self.step_protocol == "tuned") != (self.step_threshold_data is not None):
            raise ConfigError("evaluate: step_protocol=tuned goes with step_threshold_data=FILE (and only it)")
        if self.base_rate is not None and not 0 <= self.base_rate <= 1:
            raise ConfigError("evaluate: base_rate must be in [0, 1]")
        if self.bootstrap_unit not in ("prompt", "trace"):
            raise ConfigError(f"evaluate: bootstrap_unit must be prompt or trace, got {self.bootstrap_unit!r}")

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
    # imported here, not at the top: parsing the config (``--help``) needs no torch, and the
    # components take this module's EvaluateConfig
    import torch

    from ..data import load_labels, load_traces, traces_finish_summary
    from ..evaluation.estimators import ESTIMATORS
    from ..evaluation.report import write_report, write_step_benchmark_report
    from ..evaluation.scoring import evaluate_prefixes, evaluate_step_data, read_mc_cost
    from ..loading import check_vocabulary, traces_policy
    from ..policies import default_device, load_policy, load_tokenizer
    from ..prompting import checkpoint_prompt_format
    from ..tracking import build_logger

    cfg.check_inputs()
    if cfg.traces is not None and cfg.checkpoint is not None and not cfg.include_training_prompts:
        from ..data.split import SplitRecord
        from ..evaluation.scoring import missing_split_error

        if SplitRecord.load(cfg.split_record or cfg.checkpoint) is None:  # refuse before loading any model
            raise missing_split_error(cfg.split_record or cfg.checkpoint)
    out = Path(cfg.out)  # type: ignore[arg-type]
    prepare_out(cfg, out)
    save_resolved_config(cfg, out)
    device = cfg.device or str(default_device())
    traces = load_traces(cfg.traces) if cfg.traces is not None else None
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
    logger = build_logger(cfg.report_to, out, config_to_dict(cfg), cfg.run_name, cfg.wandb, job_type="evaluate")
    try:
        if traces is not None:
            with torch.no_grad():
                result = evaluate_prefixes(
                    traces,
                    load_labels(cfg.labels),
                    value_model=vm,
                    policy=policy,
                    tokenizer=tokenizer,
                    config=cfg,
                    estimators={**ESTIMATORS, **oracle_estimators(cfg, traces)},
                    mc_cost=read_mc_cost(cfg.labels),
                )
            result.metrics["policy"] = policy_path
            result.metrics["traces_finish"] = traces_finish_summary(traces)
            result.metrics["checkpoint"] = cfg.checkpoint
            if cfg.step_data is not None:
                result.metrics["step_benchmark"] = evaluate_step_data(vm, tokenizer, cfg.step_data, cfg, fmt)
            write_report(result, out, tokenizer=tokenizer, logger=logger, config=cfg)
            metrics = result.metrics
        else:
            metrics = {
                "checkpoint": cfg.checkpoint,
                "policy": policy_path,
                "step_benchmark": evaluate_step_data(vm, tokenizer, cfg.step_data, cfg, fmt),
            }
            write_step_benchmark_report(metrics, out, logger=logger)
    finally:
        logger.finish()
    if traces is not None and cfg.checkpoint is not None and Path(cfg.checkpoint).is_dir():
        from ..value.card import write_evaluation_record  # the checkpoint's model card shows these figures

        write_evaluation_record(cfg.checkpoint, metrics, str(out))
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
#: keys that may differ when an evaluation is rerun into its own folder (they change no figure)
RERUN_KEYS = frozenset({"report_to", "run_name", "wandb", "progress", "overwrite", "out"})


def prepare_out(cfg: EvaluateConfig, out: Path) -> None:
    """Make `out` ready for this evaluation: a folder holding another evaluation's metrics.json (its
    config.yaml differs beyond `RERUN_KEYS`, or is missing) is refused unless ``overwrite=true``; then
    the previous outputs (`OUTPUTS`, plots) are removed, so none is appended to or left stale. The
    same config rerun replaces its own outputs (evaluation is deterministic)."""
    import yaml

    if not (out / "metrics.json").exists():
        return
    saved_path = out / "config.yaml"
    try:
        saved = yaml.safe_load(saved_path.read_text()) if saved_path.exists() else None
    except yaml.YAMLError:
        saved = None
    if not cfg.overwrite:
        if not isinstance(saved, dict):
            raise ConfigError(
                f"evaluate: out {out} holds another evaluation (no readable config.yaml); set overwrite=true"
            )
        new = config_to_dict(cfg)
        differ = sorted(
            k
            for k in (new.keys() | saved.keys()) - {"prefixvalue_version", "config_class"}
            if k not in RERUN_KEYS and saved.get(k) != new.get(k)
        )
        if differ:
            raise ConfigError(
                f"evaluate: out {out} holds an evaluation with another config ({', '.join(differ[:8])} differ); "
                "set overwrite=true to replace it, or choose another out"
            )
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    for plot in out.glob("*.png"):
        plot.unlink()


def oracle_estimators(cfg: EvaluateConfig, traces: Any) -> dict[str, Any]:
    """``{"step_oracle": ...}`` fit on the training prompts of ``cfg.oracle_traces`` (default: `traces`)
    under the split record, when the traces carry exact step labels and a split record exists; else {}."""
    from ..data import SplitRecord, load_traces
    from ..evaluation.oracle import StepOracle, has_step_labels

    if not cfg.step_oracle or not has_step_labels(traces):
        return {}
    record = SplitRecord.load(cfg.split_record or cfg.checkpoint) if (cfg.split_record or cfg.checkpoint) else None
    if record is None:  # without a split there is no training side to fit on
        return {}
    source = load_traces(cfg.oracle_traces) if cfg.oracle_traces else traces
    if not has_step_labels(source):
        return {}
    keep = [i for i, p in enumerate(source["prompt"]) if not record.is_heldout(p)]
    if not keep:
        return {}
    rows = source.select(keep).select_columns(["completion_ids", "outcome", "step_spans", "step_labels"])
    return {"step_oracle": StepOracle.fit(rows).estimator()}


def _load_value_model(path: str, device: str | None, options: Any = None) -> Any:
    from ..value import load_value_model

    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / "value_config.json").is_file():
        raise ConfigError(
            f"evaluate: checkpoint {path} is not a value checkpoint (no value_config.json; "
            "train writes one to output_dir/final)"
        )

    return load_value_model(path, device=device, options=options)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``prefixvalue evaluate``; returns the metrics dict (also written to ``OUT/metrics.json``)."""
    return run(parse_config(EvaluateConfig, list(argv) if argv is not None else None, prog="prefixvalue evaluate"))
