"""How labelled prefixes are scored: the options every scoring and analysis function reads.

`ScoringOptions` is a plain config dataclass (``field`` help texts, checks in ``__post_init__``), with no
stage in it: the ``prefixvalue evaluate`` command's config extends it with its inputs, loading and logging
options (`prefixvalue.stages.evaluate.EvaluateConfig`), and library calls build one directly::

    from prefixvalue.evaluation import ScoringOptions, evaluate

    result = evaluate({"head": "runs/train/final"}, "runs/traces", "runs/labels", ScoringOptions(n_bootstrap=200))
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError, field


@dataclass
class ScoringOptions:
    """How estimators are scored against Monte Carlo prefix labels (and step data by first-error prediction)."""

    batch_size: int = field(8, help="traces per forward pass (value model and policy)")
    soft_values: bool = field(True, help="compute logsumexp / mellowmax soft values of the policy")
    omegas: list[float] = field(
        default_factory=lambda: [0.1, 1.0, 10.0], help="MellowMax ω grid (inf: the max)", allow_inf=True
    )
    mellowmax_omega: float = field(
        1.0, help="ω of the headline 'mellowmax' estimator (full vocabulary; inf: the max)", allow_inf=True
    )
    mellowmax_top_k: list[int] = field(
        default_factory=lambda: [10], help="top-k sizes for top-k MellowMax ([] for none)", renamed_from="top_k"
    )
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
    split: str = field(
        "test",
        help="which side of the checkpoint's split is scored: test (held out: the figures a report prints) | "
        "validation (where choices are made: prefixvalue.evaluation.selection)",
    )
    validation_traces: str | None = field(
        None,
        help="traces of the checkpoint's validation prompts: the step-verification threshold is chosen on them and "
        "every scored trace reports F1 (None: on a calibration split of the scored prompts)",
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
    step_prompt_template: str | None = field(
        None,
        help="how a step-data problem is written before its steps (None: what the export.json beside a prefixvalue "
        "export records, else '{prompt}\\n')",
        escapes=True,
    )
    step_separator: str | None = field(
        None,
        help="text joining the steps of step data (None: what the export.json beside a prefixvalue export "
        "records, else a newline)",
        escapes=True,
    )
    step_oracle: bool = field(
        True,
        help="score the step-label oracle (wrong step written × steps left, fit on training prompts) when the "
        "traces carry exact step labels",
    )
    oracle_traces: str | None = field(
        None, help="traces whose training prompts (under the split record) fit the step-label oracle; default: traces"
    )
    max_traces: int | None = field(None, help="evaluate at most this many labelled traces (first in order)")

    def __post_init__(self) -> None:
        if self.mellowmax_omega <= 0 or any(w <= 0 for w in self.omegas):
            raise ConfigError("evaluate: MellowMax ω must be > 0")
        if any(k < 1 for k in self.mellowmax_top_k):
            raise ConfigError("evaluate: mellowmax_top_k sizes must be >= 1")
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
        if self.split not in ("test", "validation"):
            raise ConfigError(f"evaluate: split must be test or validation, got {self.split!r}")
        if self.bootstrap_unit not in ("prompt", "trace"):
            raise ConfigError(f"evaluate: bootstrap_unit must be prompt or trace, got {self.bootstrap_unit!r}")
