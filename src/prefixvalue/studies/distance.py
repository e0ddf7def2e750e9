"""Soft prompts as a measuring instrument: the conditional distance of the value behaviour.

    prefixvalue distance traces=runs/quickstart/traces labels=runs/quickstart/labels out=runs/distance
    prefixvalue distance --config recipes/distance.yaml traces=runs/quickstart/traces labels=runs/quickstart/labels   # GPU scale

How many trainable virtual tokens, in front of the frozen policy, does it take to make it predict its own
success? For each value-model kind (implicit, head) and each n of `tokens`, `seeds` trainings of a soft
prompt of n tokens on the frozen policy, all with the same data and the same fixed step budget, each an
in-process call of the training loop (`prefixvalue.training.run`). The head alone at n = 0 is the
linear probe; the implicit model at n = 0 has nothing to train (π_φ = π_ref, V_φ ≡ 0) and is evaluated as
it starts. n* is a choice, so it is made on the validation side of each checkpoint's split (the loss on
traces whose prompts `SplitRecord.side` puts there, `prefixvalue.evaluation.distance.choose_n_star`, recorded
in distance.json's ``selection``); the figures reported at n* are the test side's: the loss on the prompts the
checkpoint holds out and Spearman with MC on held-out labelled prefixes. Without validation traces n* is not
chosen. Then, per kind, a LoRA run at the soft prompt's trainable-parameter count at n*, compared with the soft
prompt by the paired difference over seeds and an equivalence test (the rule and the outputs: docs/design.md,
"Conditional distance").

Every cell lives in ``OUT/cells/<kind>_n<n>_s<seed>`` (``OUT/cells/<kind>_lora_r<r>_s<seed>``); a finished
cell (its cell.json) is skipped when the same command runs again. Results: ``OUT/distance.json``,
``OUT/distance.png``, ``OUT/report.md`` (and wandb with report_to=wandb).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import runfolder
from .. import training as train_mod
from ..config import ConfigError, config_to_dict, field, parse_config, save_resolved_config
from ..evaluation.distance import (
    RULE,
    choose_n_star,
    flattening,
    n_star_without_validation,
    paired_seed_difference,
    plot_distance,
    render_distance_section,
    t_interval,
)
from ..evaluation.evaluator import evaluate
from ..evaluation.options import ScoringOptions
from ..evaluation.selection import Choice, selection_section
from ..formatting import with_ci
from ..processes import run_jobs
from ..value import VALUE_MODELS, ValueModelConfig

#: the soft-prompt grid of the paper: 0 and doubling from 1
DEFAULT_TOKENS = [0, 1, 2, 4, 8, 16, 32, 64]
CELL_FILE = "cell.json"  # a cell's measured figures, written last: marks the cell finished
CURVE_FILE = "curve.json"  # the training run's held-out curve and wall time, written after training
#: what the sweep writes into a cell's training folder beside the training (`train_mod.check_run_folder`)
CELL_OUTPUTS = (CURVE_FILE, CELL_FILE, CELL_FILE + ".tmp")
#: the top-level names the sweep writes into OUT (the run-folder contract, `prefixvalue.runfolder`)
OUTPUTS = (
    runfolder.CONFIG_FILE,
    *runfolder.LOGGER_OUTPUTS,
    "cells",
    "distance.json",
    "distance.png",
    "report.md",
    "distance_*.parquet",
)
#: keys that may differ when the same sweep runs again into OUT (how it runs, where it reports)
RERUN_KEYS = runfolder.RERUN_KEYS | {"workers", "threads", "log_checkpoints"}
#: keys naming files or folders, compared as resolved paths
PATH_KEYS = (
    "traces",
    "labels",
    "validation_traces",
    "validation_labels",
    "train.traces",
    "train.labels",
    "train.policy",
)
#: what a cell.json written by this version holds beyond the training curve (older ones are recomputed)
CELL_KEYS = ("test_loss", "validation_loss", "validation_spearman")


def _default_train() -> train_mod.TrainConfig:
    # small defaults: the whole sweep runs in minutes on a CPU with the embedded policy
    return train_mod.TrainConfig(
        max_steps=200,
        per_device_batch_size=8,
        lr=1e-3,  # soft prompt and LoRA: embeddings are ~0.02 in scale; 1e-2 diverged the implicit model at n = 2
        head_lr=1e-2,  # the value head's own weights (the linear probe)
        warmup_steps=10,
        max_eval_traces=256,  # the same 256 held-out traces for every cell: paired across n, and cheap
        checkpoint_every=0,  # a cell is short; set it (e.g. 500) for long cells on a GPU
        report_to="disk",
        value_model=ValueModelConfig(margin=0.0),  # plain BCE: the held-out loss is a log-loss
    )


@dataclass
class DistanceConfig:
    """Sweep soft-prompt length n on the frozen policy and measure where the value behaviour saturates."""

    traces: str = field("", help="traces dataset folder (written by `prefixvalue collect`); the split is train's")
    labels: str | None = field(
        None, help="MC labels of held-out (test) prefixes (`prefixvalue label`) for Spearman(n); None: loss only"
    )
    validation_traces: str | None = field(
        None,
        help="traces of the checkpoints' validation prompts: n* is chosen on the loss of those on each cell's "
        "validation side (None: traces; the cells must train with a validation side)",
    )
    validation_labels: str | None = field(
        None,
        help="MC labels of validation prefixes (`prefixvalue label prompts=validation`) of validation_traces: "
        "Spearman(n) on the validation side, beside the loss n* is chosen on; None: not measured",
    )
    out: str = field("runs/distance", help="sweep folder: cells/, distance.json, distance.png, report.md")
    kinds: list[str] = field(
        default_factory=lambda: ["implicit", "head"], help="value-model kinds swept (keys of VALUE_MODELS)"
    )
    tokens: list[int] = field(
        default_factory=lambda: list(DEFAULT_TOKENS),
        help="soft-prompt lengths n, increasing; the rule compares each n with the next (2n on a doubling grid)",
    )
    seeds: int = field(3, help="trainings per (kind, n), with train.seed, +1, ... (initialisation and data order)")
    epsilon: float = field(
        0.005,
        help="saturation tolerance ε: n* is the first n whose validation loss is within ε of the best at any n' ≥ n "
        "(nats); undetermined while the last two n differ by more than ε",
    )
    equivalence_margin: float | None = field(
        None,
        help="margin ±m (nats) within which the paired LoRA − soft-prompt test-loss difference is called equivalent "
        "(TOST: its 90% interval inside ±m); None: ε",
    )
    flat_tolerance: float | None = field(
        None,
        help="a cell's loss has flattened when it fell by at most this over the last quarter of its steps (None: ε)",
    )
    curve_points: int = field(
        4, help="held-out evaluations per cell (train.eval_every = max_steps / curve_points): the flattening check"
    )
    lora: bool = field(True, help="also train a LoRA at the soft prompt's trainable-parameter count (per kind)")
    lora_match_tokens: int = field(
        0,
        help="match LoRA to the soft prompt of this many tokens (0: the kind's n* chosen on validation, else the "
        "largest n)",
    )
    lora_target_modules: list[str] | None = field(
        None, help="LoRA target modules of the matched run (None: peft's default for the model)"
    )
    n_bootstrap: int = field(1000, help="seed bootstrap replicates for the uncertainty of n* (0: off)")
    workers: int = field(1, help="cells trained at once, in separate processes of one CPU thread each")
    threads: int = field(0, help="torch CPU threads (0: torch's default)")
    report_to: str = field("disk", help="loggers of the sweep's summary: disk, stdout, wandb, none")
    run_name: str | None = field(None, help="wandb run name")
    train: train_mod.TrainConfig = field(
        default_factory=_default_train,
        help="training options of every cell (traces, out, seed, eval_every and value_model.kind / "
        "backbone / soft_prompt_tokens are set per cell); policy and loading options go here",
    )

    def __post_init__(self) -> None:
        if not self.kinds:
            raise ConfigError("distance: kinds needs at least one value-model kind")
        for k in self.kinds:
            if k not in VALUE_MODELS:
                raise ConfigError(f"distance: unknown kind {k!r}; choose from {sorted(VALUE_MODELS)}")
        if len(self.tokens) < 2 or any(n < 0 for n in self.tokens) or list(self.tokens) != sorted(set(self.tokens)):
            raise ConfigError(f"distance: tokens must be >= 2 distinct increasing lengths >= 0, got {self.tokens}")
        if self.seeds < 1 or self.curve_points < 2 or self.workers < 1:
            raise ConfigError("distance: seeds >= 1, curve_points >= 2 and workers >= 1")
        if self.epsilon < 0 or any(v is not None and v < 0 for v in (self.flat_tolerance, self.equivalence_margin)):
            raise ConfigError("distance: epsilon, flat_tolerance and equivalence_margin must be >= 0")
        if self.lora_match_tokens < 0:
            raise ConfigError("distance: lora_match_tokens must be >= 0")
        if self.train.max_steps < self.curve_points:
            raise ConfigError(f"distance: train.max_steps must be >= curve_points ({self.curve_points})")

    # ---------------------------------------------------------------------------- cells
    def cell_name(self, kind: str, n: int, seed: int, lora_r: int | None = None) -> str:
        return f"{kind}_lora_r{lora_r}_s{seed}" if lora_r is not None else f"{kind}_n{n:03d}_s{seed}"

    def cell_config(self, kind: str, n: int, seed: int, lora_r: int | None = None) -> train_mod.TrainConfig:
        """The training config of one cell: a soft prompt of `n` tokens on the frozen policy (or, with
        `lora_r`, a LoRA of that rank), seed ``train.seed + seed``. The implicit model at n = 0 has no
        parameter to train: it is a fresh LoRA (B = 0, so π_φ = π_ref exactly) run for one step at lr 0,
        which evaluates it as it starts through the same loop, split and held-out set."""
        base = self.train
        vm = dataclasses.replace(base.value_model, kind=kind, backbone="frozen", soft_prompt_tokens=n)
        kw: dict[str, Any] = {}
        if lora_r is not None:
            vm = dataclasses.replace(
                vm,
                backbone="lora",
                soft_prompt_tokens=0,
                lora_r=lora_r,
                lora_alpha=2.0 * lora_r,  # scale alpha / r = 2, the LoRA default of this project (16 / 8)
                lora_target_modules=self.lora_target_modules,
            )
        elif VALUE_MODELS[kind].needs_adapter and n == 0:  # nothing to train: the fresh model itself
            vm = dataclasses.replace(vm, backbone="lora", lora_r=1, lora_alpha=2.0)
            kw = {"max_steps": 1, "lr": 0.0, "head_lr": None, "warmup_steps": 0, "eval_every": 1}
        try:
            return dataclasses.replace(
                base,
                **{
                    "traces": self.traces or base.traces,
                    "value_model": vm,
                    "out": str(Path(self.out) / "cells" / self.cell_name(kind, n, seed, lora_r)),
                    "seed": base.seed + seed,
                    "eval_every": max(1, base.max_steps // self.curve_points),
                    "threads": self.threads or base.threads,
                    **kw,
                },
            )
        except ValueError as exc:  # a value-model rule of this kind (ConfigError is a ValueError)
            raise ConfigError(f"distance: {kind} at n={n}: {str(exc).removeprefix('value_model: ')}") from None


# -------------------------------------------------------------------------------- training
def _train_cell(tcfg: train_mod.TrainConfig) -> dict[str, Any]:
    """Train one cell in this process (or a worker's) and write its curve.json; returns it."""
    t = time.perf_counter()
    result = train_mod.run(tcfg)
    curve = {
        "eval_curve": [[h["step"], h.get("loss"), h.get("brier_all")] for h in result["eval_history"]],
        "train_loss": result.get("train_loss"),
        "train_traces": result.get("train_traces"),
        "heldout_traces": result.get("heldout_traces"),
        # the training monitor: its validation traces (held-out ones when the split has no validation side)
        "monitor_loss": result.get("loss"),
        "monitor_split": result.get("monitor_split"),
        "monitor_traces": result.get("monitor_traces"),
        "brier_all": result.get("brier_all"),
        "auroc_last": result.get("auroc_last"),
        "seconds": round(time.perf_counter() - t, 2),
    }
    runfolder.write_text(Path(tcfg.out) / CURVE_FILE, json.dumps(curve, indent=2) + "\n")  # atomic
    return curve


def _trained(tcfg: train_mod.TrainConfig) -> bool:
    out = Path(tcfg.out)
    if not (out / CURVE_FILE).exists() or not (out / "final").exists():
        return False
    # a finished cell of another config is refused, not reused
    train_mod.check_run_folder(tcfg, out, extra_outputs=CELL_OUTPUTS)
    read_curve(out)  # one an older version left empty or half written is refused here, before any cell trains
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when it cannot be read or is not one (empty, half written)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_curve(cell: Path) -> dict[str, Any]:
    """A trained cell's curve.json; ConfigError naming it when it is empty or not a JSON object (a run of
    an older version killed while writing it): its training's wall time is gone with it, so the cell must
    be trained again."""
    curve = _read_json(cell / CURVE_FILE)
    if curve is None:
        raise ConfigError(
            f"distance: {cell / CURVE_FILE} is empty or not JSON (a killed run of an older version wrote it); "
            f"remove the cell's folder {cell} to train that cell again"
        )
    return curve


def train_cells(cfg: DistanceConfig, jobs: Sequence[train_mod.TrainConfig]) -> None:
    """Train every cell of `jobs` not yet trained: one after another, or `workers` at a time in spawned
    processes of one thread each."""
    todo = [t for t in jobs if not _trained(t)]
    if not todo:
        return
    print(f"distance: training {len(todo)} cell(s) ({len(jobs) - len(todo)} already trained)", flush=True)
    if cfg.workers == 1 or len(todo) == 1:
        for i, tcfg in enumerate(todo):
            print(f"distance: cell {i + 1}/{len(todo)}: {Path(tcfg.out).name}", flush=True)
            _train_cell(tcfg)
        return
    run_jobs(_train_cell, dict(enumerate(todo)), cfg.workers, lambda t: dataclasses.replace(t, threads=1))


# ------------------------------------------------------------------------------ evaluation
@dataclass
class LabelledSet:
    """The MC-labelled traces every cell is scored on (those that fit ``train.max_length``) and their labels."""

    traces: Any  # a traces dataset: the labelled traces, in the order of the traces folder
    labels: Any  # the prefix-labels dataset

    @classmethod
    def load(cls, traces_dir: str, labels_dir: str, max_length: int = 0) -> LabelledSet:
        from ..data import load_labels, load_traces

        traces = load_traces(traces_dir)
        labels = load_labels(labels_dir, traces)
        wanted, ids = set(labels["trace_id"]), traces["trace_id"]
        keep = [i for i, tid in enumerate(ids) if tid in wanted]
        missing = wanted - {ids[i] for i in keep}
        if missing:
            raise ConfigError(
                f"distance: {len(missing)} labelled trace(s) of {labels_dir} are not in {traces_dir} "
                f"(e.g. {sorted(missing)[0]}); label the traces the sweep trains on"
            )
        if max_length:  # as training drops them (train.max_length)
            lengths = [len(p) + len(c) for p, c in zip(traces["prompt_ids"], traces["completion_ids"])]
            keep = [i for i in keep if lengths[i] <= max_length]
        return cls(traces.select(keep), labels)


def cell_spearman(
    checkpoint: Path,
    labelled: LabelledSet | None,
    dtype: str = "float32",
    batch_size: int = 32,
    split: str = "test",
    model: Any = None,
) -> dict[str, Any]:
    """Spearman of the checkpoint's P̂ with the MC labels, over labelled prefixes whose prompt is on the side
    `split` of the checkpoint's split record (final/split.json: ``test``, the prompts it holds out, or
    ``validation``), scored by the one evaluator (`prefixvalue.evaluation.evaluator.evaluate` with that
    ``ScoringOptions.split``; no soft values, no bootstrap); prefixes of training prompts are dropped and
    counted. `model` is the checkpoint already loaded (None: loaded from `checkpoint`). ConfigError when the
    checkpoint records no split or no labelled prompt is on that side."""
    from ..data import load_split
    from ..policies import default_device

    if labelled is None:
        return {"spearman": None, "spearman_note": "no labels given"}
    record = load_split(checkpoint, labelled.traces["prompt"], "the labelled traces")
    if record is None:
        raise ConfigError(f"distance: {checkpoint} records no split (split.json); its held-out prompts are unknown")
    if not any(record.side(p) == split for p in labelled.traces["prompt"]):  # refused before loading the model
        what = "held out" if split == "test" else "on the validation side"
        extra = "" if split == "test" else f" (its validation_fraction is {record.validation_fraction:g})"
        raise ConfigError(
            f"distance: none of the {len(labelled.traces)} labelled traces is {what} under {checkpoint}/split.json"
            + extra
        )
    options = ScoringOptions(
        batch_size=batch_size,
        soft_values=False,
        n_bootstrap=0,
        step_oracle=False,
        split=split,
        split_record=str(checkpoint),
    )
    result = evaluate(
        {"learned": model if model is not None else str(checkpoint)},
        labelled.traces,
        labelled.labels,
        options,
        device=default_device(),
        dtype=dtype,
    )
    if result.metrics["split"].get("side") != split:  # the evaluator says which side it scored
        raise RuntimeError(f"distance: asked for the {split} side, the evaluator scored {result.metrics['split']}")
    sp = result.metrics["estimators"]["learned"]["spearman"]
    return {
        "spearman": sp["value"],
        "spearman_note": sp.get("note") if sp["value"] is None else None,
        "spearman_prefixes": result.metrics["n_prefixes"],
        "spearman_traces": result.metrics["n_traces"],
        "dropped_traces": len(labelled.traces) - result.metrics["n_traces"],  # of the other sides of the split
    }


def loss_rows(traces_dir: str, labels_dir: str | None = None, max_length: int = 0) -> list[dict[str, Any]]:
    """The trace rows a cell's loss is computed on, as training reads them (`prefixvalue.training`): the
    traces of `traces_dir` with the MC targets of `labels_dir` attached (training's ``train.labels``), those
    longer than `max_length` tokens dropped; each row the model's columns plus ``prompt`` (the text the split
    keys on), in dataset order."""
    from ..data import load_labels, load_traces
    from ..data.collate import attach_prefix_labels

    traces = load_traces(traces_dir)
    if labels_dir:
        traces = attach_prefix_labels(traces, load_labels(labels_dir, traces))
    if max_length:
        traces = traces.filter(lambda r: len(r["prompt_ids"]) + len(r["completion_ids"]) <= max_length)
    cols = ("prompt", "prompt_ids", "completion_ids", "outcome", "prefix_targets")
    return traces.select_columns([c for c in cols if c in traces.column_names]).to_list()


def side_loss(
    model: Any, record: Any, rows: Sequence[dict[str, Any]], side: str, max_traces: int = 0, batch_size: int = 32
) -> dict[str, Any]:
    """The kind's training loss (`prefixvalue.value.heldout.evaluate_heldout`, mean per term) of `model` on
    the first `max_traces` (0: all) of `rows` whose prompt is on `side` of the split `record`
    (`SplitRecord.side`): ``{"loss": float | None, "traces": int}`` (None when no row is on that side). On
    the validation side this is the training run's own monitor loss (on the test side, when its split has no
    validation side)."""
    from ..value.heldout import evaluate_heldout

    sides: dict[str, str] = {}
    chosen = []
    for r in rows:
        if r["prompt"] not in sides:
            sides[r["prompt"]] = record.side(r["prompt"])
        if sides[r["prompt"]] == side:
            chosen.append({k: v for k, v in r.items() if k != "prompt"})
            if max_traces and len(chosen) >= max_traces:
                break
    if not chosen:
        return {"loss": None, "traces": 0}
    return {"loss": evaluate_heldout(model, chosen, batch_size)["loss"], "traces": len(chosen)}


@dataclass
class SweepData:
    """What every cell is scored on: loss rows for the test and the validation side, and MC-labelled sets."""

    test_rows: list[dict[str, Any]]  #: `loss_rows` of ``traces``: the test loss
    #: `loss_rows` of ``validation_traces`` (default: traces): the loss n* is chosen on
    validation_rows: list[dict[str, Any]]
    labelled: LabelledSet | None = None  #: ``traces`` + ``labels``: Spearman on the test side
    validation_labelled: LabelledSet | None = None  #: ``validation_traces`` + ``validation_labels``: on validation

    @classmethod
    def load(cls, cfg: DistanceConfig) -> SweepData:
        """The sweep's data under `cfg` (``train.max_length`` already fitted). ConfigError when a labels
        folder records the other side of the split than the one it is given for (`labels_side`)."""
        from ..data import labels_side

        for key, want in (("labels", "test"), ("validation_labels", "validation")):
            folder = getattr(cfg, key)
            got = labels_side(folder) if folder else None
            if got is not None and got not in (want, "all"):
                raise ConfigError(
                    f"distance: {key}={folder} holds {got}-side labels (its split.json); {key} must be {want}"
                )
        mlen = cfg.train.max_length
        val_traces = cfg.validation_traces or cfg.traces
        test_rows = loss_rows(cfg.traces, cfg.train.labels, mlen)
        # training's MC targets belong to its own traces: attached to validation traces only when they are those
        same = Path(val_traces).resolve() == Path(cfg.traces).resolve()
        return cls(
            test_rows=test_rows,
            validation_rows=test_rows if same else loss_rows(val_traces, None, mlen),
            labelled=LabelledSet.load(cfg.traces, cfg.labels, mlen) if cfg.labels else None,
            validation_labelled=LabelledSet.load(val_traces, cfg.validation_labels, mlen)
            if cfg.validation_labels
            else None,
        )


def adapter_parameters(checkpoint: Path) -> dict[str, int]:
    """Trainable numbers in a value checkpoint, by part: ``prompt`` (soft-prompt embeddings), ``lora``
    (LoRA A and B) and ``head`` (the value head's weights; the implicit model's frozen ``ref_prompt``
    is not trainable and not counted), read from its safetensors files."""
    from safetensors import safe_open

    from ..value.base import ADAPTER_DIR, HEAD_WEIGHTS

    counts = {"prompt": 0, "lora": 0, "head": 0}
    for path, part in (
        (checkpoint / ADAPTER_DIR / "adapter_model.safetensors", None),
        (checkpoint / HEAD_WEIGHTS, "head"),
    ):
        if not path.exists():
            continue
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key == "ref_prompt":
                    continue
                numel = int(np.prod(f.get_slice(key).get_shape()))
                counts[part or ("lora" if "lora_" in key else "prompt")] += numel
    return counts


def _lora_is_noop(checkpoint: Path) -> bool:
    """Whether every LoRA B matrix in the checkpoint is exactly zero (the adapter changes nothing)."""
    from safetensors.torch import load_file

    from ..value.base import ADAPTER_DIR

    tensors = load_file(str(checkpoint / ADAPTER_DIR / "adapter_model.safetensors"))
    bs = [t for k, t in tensors.items() if "lora_B" in k]
    return bool(bs) and all(bool((t == 0).all()) for t in bs)


def evaluate_cell(
    tcfg: train_mod.TrainConfig, kind: str, n: int, seed: int, data: SweepData, lora_r: int | None
) -> dict[str, Any]:
    """cell.json of a trained cell (computed once, then read back; one written before `CELL_KEYS` existed is
    computed again): its parameters, training curve, test and validation loss (`side_loss`, at most
    ``train.max_eval_traces`` traces each) and Spearman with MC on each side (`cell_spearman`)."""
    from ..data import load_split
    from ..policies import default_device
    from ..value import load_value_model

    out = Path(tcfg.out)
    path = out / CELL_FILE
    cell = _read_json(path)  # one empty or half written (by an older version) is computed again
    if cell is not None and all(k in cell for k in CELL_KEYS):
        return cell
    curve = read_curve(out)
    final = out / "final"
    params = adapter_parameters(final)
    zero_point = VALUE_MODELS[kind].needs_adapter and n == 0 and lora_r is None
    if zero_point:
        if not _lora_is_noop(final):  # lr 0 must leave B = 0: otherwise it is not the n = 0 model
            raise RuntimeError(f"distance: {final}: the n = 0 implicit model's adapter moved (LoRA B != 0)")
        params = {"prompt": 0, "lora": 0, "head": 0}
    record = load_split(final)
    if record is None:
        raise ConfigError(f"distance: {final} records no split (split.json); its held-out prompts are unknown")
    model = load_value_model(final, device=default_device(), dtype=tcfg.model_dtype)
    test = side_loss(model, record, data.test_rows, "test", tcfg.max_eval_traces, tcfg.eval_batch_size)
    val = side_loss(model, record, data.validation_rows, "validation", tcfg.max_eval_traces, tcfg.eval_batch_size)
    spear = cell_spearman(final, data.labelled, tcfg.model_dtype, tcfg.eval_batch_size, model=model)
    vspear = (
        cell_spearman(final, data.validation_labelled, tcfg.model_dtype, tcfg.eval_batch_size, "validation", model)
        if data.validation_labelled is not None
        else {"spearman": None, "spearman_note": "no validation labels given"}
    )
    del model
    cell = {
        "kind": kind,
        "tokens": n,
        "seed": seed,
        "variant": "lora" if lora_r is not None else "soft_prompt",
        "lora_r": lora_r,
        "params": params,
        "trainable_params": sum(params.values()),
        "max_steps": tcfg.max_steps,
        **curve,
        "split_validation_fraction": record.validation_fraction,
        "test_loss": test["loss"],
        "test_traces": test["traces"],
        "validation_loss": val["loss"],
        "validation_traces": val["traces"],
        **spear,
        **{f"validation_{k}": v for k, v in vspear.items()},
    }
    runfolder.write_text(path, json.dumps(cell, indent=2) + "\n")  # atomic
    return cell


# ------------------------------------------------------------------------------------- LoRA
def lora_rank_for(cfg: DistanceConfig, target_params: int) -> tuple[int, int, int]:
    """(rank, parameters per rank, hidden size) of the LoRA closest to `target_params` trainable numbers
    on the policy (`lora_target_modules`), counted on a weightless copy of the model (meta device)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    mcfg, load = policy_config(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(mcfg, trust_remote_code=load.trust_remote_code)
    hidden = model.get_input_embeddings().embedding_dim
    targets: Any = cfg.lora_target_modules
    if targets is not None and list(targets) == ["all-linear"]:
        targets = "all-linear"
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=1, target_modules=targets))
    per_rank = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return max(1, round(target_params / per_rank)), per_rank, hidden


def policy_config(cfg: DistanceConfig) -> tuple[Any, Any]:
    """(transformers config, LoadOptions) of the policy the cells train on (the traces' model unless
    ``train.policy``)."""
    from transformers import AutoConfig

    from ..data import load_traces
    from ..loading import hub_errors, traces_policy

    policy, load = traces_policy(
        load_traces(cfg.traces), cfg.train.policy, cfg.train.load_options(), cfg.train.allow_other_policy, "distance"
    )
    kw = {k: v for k, v in load.model_kwargs().items() if k in ("revision", "trust_remote_code", "gguf_file")}
    with hub_errors(policy, "model"):
        return AutoConfig.from_pretrained(policy, **kw), load


def fit_context(cfg: DistanceConfig) -> DistanceConfig:
    """`cfg` with ``train.max_length`` lowered so that the longest prompt + completion plus the largest soft
    prompt fits the policy's positions (every cell drops the same long traces: same data at every n).
    ConfigError when even an empty trace would not fit."""
    mcfg, _ = policy_config(cfg)
    limit = getattr(mcfg, "max_position_embeddings", None) or getattr(mcfg, "n_positions", None)
    if not limit:
        return cfg
    cap = int(limit) - max(cfg.tokens)
    if cap <= 1:
        raise ConfigError(
            f"distance: {max(cfg.tokens)} soft-prompt tokens leave no room in the policy's {limit} positions"
        )
    if cfg.train.max_length and cfg.train.max_length <= cap:
        return cfg
    print(
        f"distance: train.max_length={cap}: traces longer than that are dropped in every cell "
        f"({max(cfg.tokens)} virtual tokens + the trace must fit the policy's {limit} positions)"
    )
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_length=cap))


# --------------------------------------------------------------------------------- summary
def summarise_kind(
    cfg: DistanceConfig, kind: str, cells: list[dict[str, Any]], lora_cells: list[dict[str, Any]]
) -> tuple[dict[str, Any], Choice | None]:
    """distance.json's section of one kind and the choice of n* (None when undetermined or not chosen).

    The section: the curve (per n: test loss, validation loss, Spearman on each side, their spread and the
    flattening count), n* chosen on the validation losses (`choose_n_star`; without any, `n_star_without_validation`),
    the test figures at n*, and the matched LoRA beside it."""
    tol = cfg.epsilon if cfg.flat_tolerance is None else cfg.flat_tolerance
    ns = list(cfg.tokens)
    by_n = {n: sorted((c for c in cells if c["tokens"] == n), key=lambda c: c["seed"]) for n in ns}

    def flat_count(cs: list[dict[str, Any]]) -> dict[str, Any]:
        fl = [flattening([p[:2] for p in c["eval_curve"]], c["max_steps"], tol) for c in cs]
        drops = [f["drop"] for f in fl if f["drop"] is not None]
        return {
            "yes": sum(bool(f["flattened"]) for f in fl),
            "of": len(fl),
            "mean_drop": float(np.mean(drops)) if drops else None,
            "per_seed": fl,
        }

    curve: dict[str, Any] = {}
    for n in ns:
        cs = by_n[n]
        row: dict[str, Any] = {"params": cs[0]["trainable_params"] if cs else None}
        for key in ("loss", "validation_loss", "spearman", "validation_spearman"):
            vals = [c.get("test_loss" if key == "loss" else key) for c in cs]
            row[key], row[f"{key}_per_seed"] = t_interval(vals), vals
        row["brier_all"] = t_interval([c["brier_all"] for c in cs])
        row["flattened"] = (
            flat_count(cs)
            if not (VALUE_MODELS[kind].needs_adapter and n == 0)
            else {"yes": 0, "of": 0, "mean_drop": None, "per_seed": []}
        )
        row["seconds"] = sum(c["seconds"] for c in cs)
        curve[str(n)] = row
    # n whose cells' mean held-out curve still fell by more than the tolerance over its last quarter
    unsettled = [n for n in ns if (curve[str(n)]["flattened"]["mean_drop"] or 0.0) > tol]
    val_per_seed = [
        [by_n[n][s].get("validation_loss") if s < len(by_n[n]) else None for n in ns] for s in range(cfg.seeds)
    ]
    choice: Choice | None = None
    if any(v is not None for row in val_per_seed for v in row):
        n_star, choice = choose_n_star(
            ns, val_per_seed, cfg.epsilon, split="validation", n_boot=cfg.n_bootstrap, seed=0, unsettled=unsettled
        )
    else:
        vfs = sorted({c.get("split_validation_fraction") or 0.0 for c in cells})
        source = cfg.validation_traces or cfg.traces
        why = f"no trace of {source} is on the validation side of the cells' split: their split.json records " + (
            "validation_fraction 0, so train the cells with a validation side"
            if vfs == [0.0]
            else f"validation_fraction {', '.join(f'{v:g}' for v in vfs)}"
        )
        n_star = n_star_without_validation(ns, cfg.epsilon, why)
    notes = []
    unflat = [
        n
        for n in ns
        if curve[str(n)]["flattened"]["of"] and curve[str(n)]["flattened"]["yes"] < curve[str(n)]["flattened"]["of"]
    ]
    if unflat:
        notes.append(
            f"early stopping: at n = {', '.join(map(str, unflat))} the training monitor's loss was still falling by "
            f"more than {tol:g} over the last quarter of the {cfg.train.max_steps} steps in some seeds; a longer budget could "
            "lower L(n) there and move n*"
            + (f" (on average over seeds at n = {', '.join(map(str, unsettled))})" if unsettled else "")
        )
    else:
        notes.append(f"every trained cell's monitor loss had flattened (≤ {tol:g} over the last quarter of its steps)")
    unstable = [n for n in ns if (curve[str(n)]["loss"]["sd"] or 0.0) > cfg.epsilon]
    if unstable:
        notes.append(
            f"instability across initialisations: the seeds' test losses spread by more than ε (sd > {cfg.epsilon:g}) "
            f"at n = {', '.join(map(str, unstable))}"
        )
    out: dict[str, Any] = {"tokens": ns, "curve": curve, "n_star": n_star, "notes": notes, "at_n_star": None}
    if n_star["n_star"] is not None:
        row = curve[str(n_star["n_star"])]
        out["at_n_star"] = {"n": n_star["n_star"], "side": "test", "loss": row["loss"], "spearman": row["spearman"]}
    if lora_cells:
        lc = sorted(lora_cells, key=lambda c: c["seed"])
        m = lc[0]["matched_tokens"]
        soft = {c["seed"]: c.get("test_loss") for c in by_n.get(m, [])}
        margin = cfg.epsilon if cfg.equivalence_margin is None else cfg.equivalence_margin
        out["lora"] = {
            "lora_r": lc[0]["lora_r"],
            "params": lc[0]["params"]["lora"],
            "matched_tokens": m,
            "matched_by": lc[0].get("matched_by"),
            "loss": t_interval([c.get("test_loss") for c in lc]),
            "loss_per_seed": [c.get("test_loss") for c in lc],
            "validation_loss": t_interval([c.get("validation_loss") for c in lc]),
            "spearman": t_interval([c["spearman"] for c in lc]),
            "spearman_per_seed": [c["spearman"] for c in lc],
            "flattened": flat_count(lc),
            # paired by seed: the same train.seed + s (initialisation, data order) and the same test prompts
            "comparison": {
                "what": f"test loss, LoRA − soft prompt at n = {m}, paired by seed",
                "seeds": [c["seed"] for c in lc if c["seed"] in soft],
                **paired_seed_difference(
                    [c.get("test_loss") for c in lc if c["seed"] in soft],
                    [soft[c["seed"]] for c in lc if c["seed"] in soft],
                    margin,
                ),
            },
        }
    return out, choice


def lora_verdict(ks: dict[str, Any], hidden: int) -> str:
    """Sentences on the matched LoRA against the soft prompt it is matched to: both test losses, their paired
    difference over seeds with its interval, and what it shows (`paired_seed_difference`'s verdict)."""
    lora = ks["lora"]
    m = lora["matched_tokens"]
    sp = ks["curve"][str(m)]["loss"]
    lo = lora["loss"]
    if lo["mean"] is None or sp["mean"] is None:
        return "The matched LoRA run (or its soft prompt) has no test loss: no comparison."
    cmp_ = lora["comparison"]
    mu = cmp_["margin"]
    ns = ks["n_star"]
    why_largest = (
        "n* = 0 leaves no soft prompt to match"
        if ns["n_star"] == 0
        else "n* is undetermined"
        if ns.get("status") == "undetermined"
        else "n* was not chosen"
    )
    by = {"n_star": "n* chosen on validation", "given": "lora_match_tokens", "largest": f"the largest n: {why_largest}"}
    head = (
        f"LoRA r={lora['lora_r']} ({lora['params']:,} trainable numbers, vs {m * hidden:,} for the soft prompt of "
        f"n = {m}"
        + (f", {by[lora['matched_by']]}" if lora.get("matched_by") in by else "")
        + f") reaches test loss {_mean_ci(lo)} against the soft prompt's {_mean_ci(sp)}. "
    )
    if cmp_["ci"] is None:
        return head + (
            f"Paired over {cmp_['n']} seed(s), LoRA − soft prompt = "
            + (f"{cmp_['mean']:+.4f}" if cmp_["mean"] is not None else "—")
            + ": too few paired seeds for an interval, so equivalence is not shown and no difference is shown."
        )
    lo95, hi95 = cmp_["ci"]
    t0, t1 = cmp_["tost_ci"]
    head += (
        f"Paired over {cmp_['n']} seeds (same seeds, same test prompts), LoRA − soft prompt = {cmp_['mean']:+.4f} "
        f"[{lo95:+.4f}, {hi95:+.4f}] (95%); equivalence margin ±{mu:g}, TOST {1 - 2 * cmp_['tost_alpha']:.0%} "
        f"interval [{t0:+.4f}, {t1:+.4f}]. "
    )
    verdict = cmp_["verdict"]
    if verdict == "equivalent":
        return head + (
            f"Equivalent within ±{mu:g} nats: at equal parameters the soft prompt is not the bottleneck, to within the "
            "margin"
            + (" (the 95% interval excludes 0: a difference smaller than the margin)." if cmp_["differs"] else ".")
        )
    if verdict == "lower":
        return head + (
            "The LoRA is lower and not shown equivalent: at equal parameters the soft prompt is the bottleneck "
            "(the same budget spent inside the network does better)."
        )
    if verdict == "higher":
        return head + "The LoRA is higher and not shown equivalent: at equal parameters the soft prompt does better."
    return head + (
        f"Not shown equivalent: the interval reaches beyond ±{mu:g} and includes 0, so this comparison cannot say "
        "whether the soft prompt is the bottleneck."
    )


def _mean_ci(s: dict[str, Any]) -> str:
    """A seeds summary (`t_interval`) as ``mean [lo, hi]`` to 4 decimals (the mean alone without an interval)."""
    return with_ci(s["mean"], s["ci"], 4, none="—")


# ------------------------------------------------------------------------------------- run
def run(cfg: DistanceConfig) -> dict[str, Any]:
    """Run the sweep (resuming finished cells); returns distance.json's dict."""
    import torch

    from ..tracking import build_logger, jsonable

    if not cfg.traces:
        raise ConfigError("distance: traces=DIR is required (a dataset written by `prefixvalue collect`)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    runfolder.claim(out, "distance", cfg, outputs=OUTPUTS, rerun_keys=RERUN_KEYS, path_keys=PATH_KEYS)
    save_resolved_config(cfg, out)
    t0 = time.perf_counter()
    cfg = fit_context(cfg)
    soft = {
        (kind, n, s): cfg.cell_config(kind, n, s) for kind in cfg.kinds for n in cfg.tokens for s in range(cfg.seeds)
    }
    train_cells(cfg, list(soft.values()))
    data = SweepData.load(cfg)
    cells = {key: evaluate_cell(t, *key, data, None) for key, t in soft.items()}

    kinds: dict[str, Any] = {}
    choices: list[Choice] = []
    hidden = 0
    for kind in cfg.kinds:
        kcells = [c for (k, _, _), c in cells.items() if k == kind]
        ks, choice = summarise_kind(cfg, kind, kcells, [])
        if choice is not None:
            choice.extra["kind"] = kind
            choices.append(choice)
        if cfg.lora:
            n_star = ks["n_star"]["n_star"]
            positive = [n for n in cfg.tokens if n > 0]
            if cfg.lora_match_tokens:
                match, matched_by = cfg.lora_match_tokens, "given"
            elif n_star:
                match, matched_by = n_star, "n_star"
            else:
                match, matched_by = positive[-1], "largest"
            if match not in cfg.tokens:
                raise ConfigError(f"distance: lora_match_tokens={match} is not one of tokens {cfg.tokens}")
            r, per_rank, hidden = lora_rank_for(cfg, match * _hidden_of(kcells))
            jobs = {s: cfg.cell_config(kind, 0, s, lora_r=r) for s in range(cfg.seeds)}
            train_cells(cfg, list(jobs.values()))
            lora_cells = [
                {**evaluate_cell(t, kind, 0, s, data, r), "matched_tokens": match, "matched_by": matched_by}
                for s, t in jobs.items()
            ]
            ks, _ = summarise_kind(cfg, kind, kcells, lora_cells)
            ks["lora"]["verdict"] = lora_verdict(ks, hidden)
            ks["lora"]["params_per_rank"] = per_rank
        ks["hidden"] = hidden or _hidden_of(kcells)
        kinds[kind] = ks

    any_cell = next(iter(cells.values()))
    spear_cells = [c for c in cells.values() if c.get("spearman_prefixes")]
    dropped = max((c.get("dropped_traces", 0) for c in spear_cells), default=0)
    summary: dict[str, Any] = {
        "policy": cfg.train.policy or _policy_of(cfg),
        "epsilon": cfg.epsilon,
        "flat_tolerance": cfg.epsilon if cfg.flat_tolerance is None else cfg.flat_tolerance,
        "rule": RULE,
        "equivalence_margin": cfg.epsilon if cfg.equivalence_margin is None else cfg.equivalence_margin,
        "seeds": cfg.seeds,
        "max_steps": cfg.train.max_steps,
        "batch_size": cfg.train.per_device_batch_size * cfg.train.gradient_accumulation_steps,
        "max_length": cfg.train.max_length,
        "train_traces": any_cell.get("train_traces"),
        "heldout_traces": any_cell.get("test_traces"),
        "validation_traces": any_cell.get("validation_traces"),
        "spearman_traces": spear_cells[0]["spearman_traces"] if spear_cells else 0,
        "spearman_prefixes": spear_cells[0]["spearman_prefixes"] if spear_cells else 0,
        "split_note": (
            f"held out (test) under each checkpoint's split.json; {dropped} labelled trace(s) of training or "
            "validation prompts dropped"
            if spear_cells
            else "no MC labels: Spearman not measured"
        ),
        "kinds": kinds,
        "selection": selection_section(choices),
        "cells_seconds": round(sum(c["seconds"] for c in cells.values()), 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "config": config_to_dict(cfg),
    }
    summary["plot"] = plot_distance(summary, out / "distance.png").name
    runfolder.write_text(out / "distance.json", json.dumps(jsonable(summary), indent=2) + "\n")
    runfolder.write_text(out / "report.md", "# prefixvalue distance\n\n" + render_distance_section(summary) + "\n")
    logger = build_logger(
        cfg.report_to,
        out,
        config=config_to_dict(cfg),
        run_name=cfg.run_name,
        wandb=cfg.train.wandb,
        job_type="distance",
    )
    try:
        for n in cfg.tokens:  # one call per n (wandb steps only go forward), every kind in it
            metrics: dict[str, Any] = {}
            for kind, ks in kinds.items():
                row = ks["curve"][str(n)]
                metrics[f"distance/{kind}/loss"] = row["loss"]["mean"]
                metrics[f"distance/{kind}/validation_loss"] = row["validation_loss"]["mean"]
                metrics[f"distance/{kind}/loss_sd"] = row["loss"]["sd"]
                metrics[f"distance/{kind}/spearman"] = row["spearman"]["mean"]
            logger.log(metrics, step=int(n))
        logger.log_image("distance/curve", out / "distance.png", step=max(cfg.tokens))
        rows = [
            [k, int(n), ks["curve"][str(n)]["loss"]["mean"], ks["curve"][str(n)]["spearman"]["mean"]]
            for k, ks in kinds.items()
            for n in ks["tokens"]
        ]
        logger.log_table("distance/table", ["kind", "tokens", "loss", "spearman"], rows, step=max(cfg.tokens))
    finally:
        logger.finish()
    for kind, ks in kinds.items():
        ns = ks["n_star"]
        what = (
            ns["n_star"] if ns["n_star"] is not None else f"{ns['status']} ({ns.get('undetermined') or ns.get('note')})"
        )
        print(f"distance: {kind}: n* = {what} (ε = {cfg.epsilon:g}, chosen on validation)")
    print(f"distance: results in {out}/distance.json, {out}/report.md, {out}/distance.png ({summary['seconds']:.0f} s)")
    runfolder.finish(out)  # the sweep's record: complete; the folder is released
    return summary


def _hidden_of(cells: list[dict[str, Any]]) -> int:
    """Numbers per soft-prompt token, read from a trained cell with n > 0 tokens."""
    for c in cells:
        if c["tokens"] > 0 and c["params"]["prompt"]:
            return c["params"]["prompt"] // c["tokens"]
    raise ConfigError("distance: no trained soft-prompt cell with n > 0 to read the embedding size from")


def _policy_of(cfg: DistanceConfig) -> str:
    from ..data import load_traces

    traces = load_traces(cfg.traces)
    return str(traces[0]["model"]) if "model" in traces.column_names and len(traces) else "?"


def main(argv: list[str] | None = None) -> int:
    """Run ``prefixvalue distance``; returns the exit status."""
    run(parse_config(DistanceConfig, argv, prog="prefixvalue distance"))
    return 0
