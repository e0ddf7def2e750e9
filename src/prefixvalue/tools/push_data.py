"""``prefixvalue push-data``: upload traces and their prefix labels to a Hugging Face Hub dataset repo.

    prefixvalue push-data traces=runs/quickstart/traces labels=runs/quickstart/labels repo_id=you/arith-tiny-values

One commit (`prefixvalue.value.hub.upload_files`) with the traces as config ``traces`` and the labels as
config ``labels`` of a `datasets` dataset (parquet files, one per split), the labels' split record
(``split.json``) and a dataset card (``README.md``: the configs in its YAML header, the task, the policy, how
the labels were made, the split, how to load it). With a split record, the traces are split by it into
train / validation / test (the prompt-hash split every stage uses, docs/design.md "Held-out discipline"); the
labels are one split named after the side they were drawn from. Loading it back:
``datasets.load_dataset("you/arith-tiny-values", "labels")``. Needs the network and a token, as push-model;
contract in docs/design.md, "Checkpoints that travel".
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, field, parse_config, read_yaml
from ..jsonlines import read_json_object
from ..loading import hub_errors

#: the dataset card's file name in the repo
CARD_FILE = "README.md"


@dataclass
class PushDataConfig:
    """Upload traces (and their prefix labels) to a Hub dataset repo."""

    traces: str = field("", help="traces folder (prefixvalue collect or import)")
    labels: str | None = field(None, help="prefix labels of those traces (prefixvalue label); None: traces only")
    repo_id: str = field("", help="Hub dataset repo, owner/name (created when missing)")
    private: bool | None = field(None, help="create the repo private (None: the Hub's default)")
    license: str | None = field(None, help="license of the data for the card (e.g. mit, cc-by-4.0); None: not stated")
    revision: str | None = field(None, help="branch to commit to (None: main)")
    commit_message: str = field("Upload prefixvalue traces and labels", help="commit message")


def build_dataset(traces: str | Path, labels: str | Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({config: DatasetDict}, facts)``: the traces (split by the labels' split record when there is one)
    and the labels, read by the one readers of each (`prefixvalue.data.load_traces`, `load_labels`, which
    refuse a broken folder in one line); `facts` holds what the card says about them."""
    import datasets

    from ..data import load_labels, load_split, load_traces, split_three
    from ..data.split import SPLIT_FILE, labels_side

    ds = load_traces(traces)
    configs: dict[str, Any] = {}
    facts: dict[str, Any] = {"traces": _traces_facts(ds), "split": None, "labels": None}
    record = load_split(labels) if labels is not None else None  # a malformed split.json: one line
    if record is not None:
        sides = split_three(ds, record.heldout_fraction, record.validation_fraction, record.split_seed)
        configs["traces"] = datasets.DatasetDict({k: v for k, v in sides.items() if len(v)})
        facts["split"] = {**record.to_dict(), "file": str(Path(labels) / SPLIT_FILE)}  # type: ignore[arg-type]
    else:
        configs["traces"] = datasets.DatasetDict({"train": ds})
    if labels is not None:
        side = labels_side(labels)
        split = side if side in ("test", "validation") else "train"  # "all" is a split name datasets reserves
        configs["labels"] = datasets.DatasetDict({split: load_labels(labels, ds)})
        facts["labels"] = _labels_facts(Path(labels), side)
    return configs, facts


def _traces_facts(ds: Any) -> dict[str, Any]:
    """Task, policy and sampling of the traces (their first row's columns) and how many there are."""
    first = ds[0]
    return {
        "rows": len(ds),
        "prompts": len(set(ds["prompt"])),
        "task": first.get("task"),
        "model": first.get("model"),
        "sampling": first.get("sampling"),
        "accuracy": sum(ds["outcome"]) / len(ds),
    }


def _labels_facts(folder: Path, side: str | None) -> dict[str, Any]:
    """How the labels were made: the label command's config (samples, positions, policy, temperature)."""
    cfg_file = folder / "config.yaml"
    cfg = read_yaml(cfg_file.read_text(), str(cfg_file)) if cfg_file.is_file() else None
    cfg = cfg if isinstance(cfg, dict) else {}
    keep = ("model", "samples", "positions", "method", "temperature", "top_p", "top_k", "prompts")
    cost = read_json_object(folder / "cost.json") if (folder / "cost.json").is_file() else {}
    return {"side": side, **{k: cfg[k] for k in keep if cfg.get(k) is not None}, "cost": cost}


def render_dataset_card(repo_id: str, configs: dict[str, Any], facts: dict[str, Any], license: str | None) -> str:
    """The dataset card: YAML metadata (configs and their data files, license, task, tags) and a page
    saying what the data is and how to load it with ``datasets.load_dataset``."""
    meta: dict[str, Any] = {
        "configs": [
            {
                "config_name": name,
                "data_files": [{"split": split, "path": f"{name}/{split}-*.parquet"} for split in dd],
                **({"default": True} if name == "traces" else {}),
            }
            for name, dd in configs.items()
        ],
        **({"license": license} if license else {}),
        "task_categories": ["text-generation"],
        "tags": ["prefixvalue", "process-reward", "value-estimation", "monte-carlo"],
    }
    t, labels, split = facts["traces"], facts["labels"], facts["split"]
    rows = [("task", f"`{t['task']}`"), ("policy", f"`{t['model']}`"), ("sampling", f"`{t['sampling']}`")]
    rows.append(("traces", f"{t['rows']} on {t['prompts']} prompts; {t['accuracy']:.3f} verified correct"))
    for name, dd in configs.items():
        rows.append((f"config `{name}`", ", ".join(f"{s}: {len(d)} rows" for s, d in dd.items())))
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {repo_id}",
        "",
        "Completions of a policy (traces, each with its verified outcome) and Monte Carlo values of their "
        "prefixes, written by prefixvalue (`prefixvalue push-data`).",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
    ]
    if labels is not None:
        how = [f"{k}: `{v}`" for k, v in labels.items() if k not in ("cost", "side")]
        lines += [
            "## How the labels were made",
            "",
            "Each label is a Monte Carlo estimate of a prefix's value: from the prompt and the first `position` "
            "completion tokens, the policy sampled `n` continuations and `successes` of them were verified "
            "correct; `mean` = successes / n with a Wilson 95% interval `[ci_low, ci_high]`.",
            "",
            "Label options (`prefixvalue label`): " + ", ".join(how) + ".",
            "",
        ]
    if split is not None:
        lines += [
            "## The split",
            "",
            f"Prompts are split by a hash of their normalised text: held-out (test) fraction "
            f"{split['heldout_fraction']}, validation fraction {split['validation_fraction']} of the rest, seed "
            f"{split['split_seed']}; the traces config has one split per side, and `split.json` is the record "
            "(a value model trained with this split never saw the test prompts).",
            "",
        ]
    first = next(iter(configs["labels"])) if "labels" in configs else None
    lines += [
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'traces = load_dataset("{repo_id}", "traces")',
        *([f'labels = load_dataset("{repo_id}", "labels")["{first}"]'] if first else []),
        "```",
        "",
        "Back into prefixvalue: `save_to_disk` a split and pass the folder as `traces=` (or `labels=`).",
        "",
    ]
    return "\n".join(lines)


def run(cfg: PushDataConfig, api: Any = None) -> dict:
    """Push as `cfg` says; returns ``{"repo_id", "url", "files"}``. `api`: an ``huggingface_hub.HfApi``
    stand-in (tests)."""
    if not cfg.traces or not cfg.repo_id:
        raise ConfigError("push-data: give traces=DIR and repo_id=owner/name (labels=DIR too, to push labels)")
    for key in ("traces", "labels"):
        value = getattr(cfg, key)
        if value is not None and not Path(value).expanduser().is_dir():
            raise ConfigError(f"push-data: {key} {value} is not a folder")
    from huggingface_hub.utils import validate_repo_id

    from ..value.hub import upload_files

    with hub_errors(cfg.repo_id, "Hub repo", push=True):
        validate_repo_id(cfg.repo_id)  # a malformed id: one line before any data is read
    configs, facts = build_dataset(cfg.traces, cfg.labels)
    card = render_dataset_card(cfg.repo_id, configs, facts, cfg.license)
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, str | Path | bytes] = {CARD_FILE: card.encode()}
        with _no_progress_bars():  # a second's bar per file says nothing here
            for name, dd in configs.items():
                for split, ds in dd.items():
                    path = Path(tmp) / name / f"{split}-00000-of-00001.parquet"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    ds.to_parquet(str(path))
                    files[f"{name}/{path.name}"] = path
        if facts["split"] is not None:
            files["split.json"] = Path(facts["split"]["file"])
        with hub_errors(cfg.repo_id, "Hub repo", push=True):  # offline, unreachable, refused: one line
            res = upload_files(
                files,
                cfg.repo_id,
                repo_type="dataset",
                private=cfg.private,
                revision=cfg.revision,
                commit_message=cfg.commit_message,
                api=api,
            )
    print(f"push-data: uploaded {len(res.files)} files to {res.url}")
    return {"repo_id": res.repo_id, "url": res.url, "files": res.files}


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """datasets' progress bars off for the block, as they were after it."""
    from datasets.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue push-data``; returns the exit status."""
    run(parse_config(PushDataConfig, list(argv) if argv is not None else None, prog="prefixvalue push-data"))
    return 0
