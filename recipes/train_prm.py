"""Train a token-classification process reward model (PRM) on TRL stepwise data, with plain transformers.

    python recipes/train_prm.py data=runs/export/trl.jsonl model=data/policies/arith-tiny out=runs/prm
    python recipes/train_prm.py data=trl-lib/math_shepherd model=Qwen/Qwen2.5-0.5B out=runs/prm max_steps=1000

TRL 1.12 had a PRMTrainer; TRL 1.14 and later (1.16, which pyproject's ``rl`` extra pins and this recipe was
tested with) ship none, and no experimental PRM module either. What it did is a token-classification fine-tune,
so this recipe does it with ``AutoModelForTokenClassification`` (two classes: bad, good) and transformers'
``Trainer``: each row (``prompt``, ``completions``, ``labels``) is tokenised as PRMTrainer tokenised it
(`prefixvalue.data.bridges.stepwise_token_classification_features`: the prompt, then each step followed by
the step separator, the label on the separator's last token, -100 elsewhere). The separator is what the
``export.json`` beside a ``prefixvalue export`` file records (arith: the empty string, ``;`` ends a step),
else a newline (PRMTrainer's default), or ``step_separator=``. The model and its tokenizer are saved to
``out/final``; ``out/train_prm.json`` records the options, the data and the losses. The step score of a
trained PRM is the softmax probability of class 1 at each step's last token. Options:
``python recipes/train_prm.py --help``. Conventions in docs/design.md, "Data bridges".
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefixvalue import runfolder
from prefixvalue.config import ConfigError, config_to_dict, field, parse_config
from prefixvalue.data.bridges import stepwise_token_classification_features
from prefixvalue.data.steps import open_step_data, resolve_step_options


@dataclass
class PRMConfig:
    """Fine-tune a token-classification PRM on TRL stepwise data (prompt, completions, labels)."""

    data: str | None = field(None, help="TRL stepwise data: prefixvalue export's trl.jsonl, a file, folder or Hub id")
    data_split: str | None = field(None, help="split of data, when it has several")
    model: str | None = field(None, help="base model, loaded with AutoModelForTokenClassification (2 labels)")
    out: str | None = field(None, help="output folder: final/ (model and tokenizer), train_prm.json")
    step_separator: str | None = field(
        None,
        help="text after each step (None: what export.json beside data records, else a newline, TRL's default)",
        escapes=True,
    )
    max_length: int | None = field(None, help="truncate each tokenised row to this many tokens (None: no limit)")
    max_steps: int = field(50, help="optimizer steps")
    batch_size: int = field(8, help="rows per step")
    learning_rate: float = field(5e-4, help="AdamW learning rate")
    seed: int = field(0, help="seed of the head's initialisation and the data order")

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ConfigError("train_prm: max_steps >= 1, batch_size >= 1, learning_rate > 0")


def train_prm(cfg: PRMConfig) -> dict[str, Any]:
    """Train as `cfg` says; returns the record (also ``out/train_prm.json``)."""
    import torch
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    if not cfg.data or not cfg.model or not cfg.out:
        raise ConfigError("train_prm: data=FILE, model=BASE and out=DIR are required")
    splits = open_step_data(cfg.data, cfg.data_split)
    if len(splits) != 1:
        raise ConfigError(f"train_prm: {cfg.data} has splits {list(splits)}; choose one with data_split=")
    ds = next(iter(splits.values()))
    missing = [k for k in ("prompt", "completions", "labels") if k not in ds.column_names]
    if missing:
        raise ConfigError(f"train_prm: {cfg.data} lacks TRL stepwise field(s) {missing} (fields: {ds.column_names})")
    separator = resolve_step_options(cfg.data, None, cfg.step_separator).step_separator
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = []
    for i, row in enumerate(ds):
        try:
            rows.append(stepwise_token_classification_features(row, tokenizer, separator, cfg.max_length))
        except ValueError as exc:
            raise ConfigError(f"train_prm: {cfg.data}, row {i}: {exc}") from None
    torch.manual_seed(cfg.seed)
    model = AutoModelForTokenClassification.from_pretrained(
        cfg.model, num_labels=2, id2label={0: "bad", 1: "good"}, label2id={"bad": 0, "good": 1}
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    losses: list[float] = []
    with tempfile.TemporaryDirectory(prefix="train_prm-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            seed=cfg.seed,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=DataCollatorForTokenClassification(tokenizer),
        )
        trainer.train()
        losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h and math.isfinite(h["loss"])]
    out = Path(cfg.out)

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    runfolder.replace_dir(out / "final", save)
    record = {
        "config": config_to_dict(cfg),
        "step_separator": separator,
        "rows": len(rows),
        "labelled_steps": sum(sum(t != -100 for t in r["labels"]) for r in rows),
        "losses": losses,
        "final": str(out / "final"),
    }
    runfolder.write_text(out / "train_prm.json", json.dumps(record, indent=1) + "\n")
    print(f"train_prm: {len(rows)} rows, loss {losses[0]:.4f} -> {losses[-1]:.4f} -> {out / 'final'}")
    return record


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; a mistake is one line on stderr and exit status 2."""
    try:
        train_prm(parse_config(PRMConfig, argv, prog="recipes/train_prm.py"))
    except ConfigError as exc:
        print(f"train_prm: {str(exc).removeprefix('train_prm: ')}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
