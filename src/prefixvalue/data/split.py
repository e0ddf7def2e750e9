"""Splits by a hash: which prompts are held out, and any other split that must not depend on order.

The held-out split goes by the *normalised prompt text* (`normalise_prompt`), never by prompt id or
trace: two prompts with the same text land on the same side, whatever their ids (docs/design.md,
"Held-out discipline"). `SplitRecord` is the record of a split that travels with every value checkpoint
and every labels folder (``split.json``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import datasets

#: file name of a `SplitRecord` inside a checkpoint or labels folder
SPLIT_FILE = "split.json"

_WS = re.compile(r"\s+")


def unit_hash(key: str) -> float:
    """A number in [0, 1) fixed by `key` alone: the first 8 bytes of SHA-256(key), little-endian, / 2**64."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2**64


def normalise_prompt(text: str) -> str:
    """The prompt text the split keys on: leading and trailing whitespace stripped, and every run of
    whitespace (spaces, tabs, newlines) inside collapsed to one space. Case and punctuation are kept."""
    return _WS.sub(" ", text.strip())


def is_heldout(prompt_text: str, heldout_fraction: float, seed: int = 0) -> bool:
    """Whether the prompt with text `prompt_text` belongs to the held-out split.

    The split is by prompt text (never by trace or id): the hash of ``f"{seed}|{normalise_prompt(text)}"``
    (`unit_hash`) below `heldout_fraction`. It depends on nothing else, so training, labelling and
    evaluation agree on it without sharing any state, adding prompts never moves old ones, and duplicated
    texts under different ids always land on the same side.
    """
    if heldout_fraction <= 0:
        return False
    if heldout_fraction >= 1:
        return True
    return unit_hash(f"{seed}|{normalise_prompt(prompt_text)}") < heldout_fraction


def heldout_flags(ds: datasets.Dataset, heldout_fraction: float, seed: int = 0) -> list[bool]:
    """`is_heldout` of every row's ``prompt`` column (the text), each distinct text hashed once."""
    cache: dict[str, bool] = {}
    flags = []
    for text in ds["prompt"]:
        if text not in cache:
            cache[text] = is_heldout(text, heldout_fraction, seed)
        flags.append(cache[text])
    return flags


def split_by_prompt(
    ds: datasets.Dataset, heldout_fraction: float, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split rows into (train, held-out) by prompt text (the ``prompt`` column) with `is_heldout`; traces
    of a prompt, and of any prompt with the same normalised text, stay together."""
    flags = heldout_flags(ds, heldout_fraction, seed)
    train_idx = [i for i, f in enumerate(flags) if not f]
    held_idx = [i for i, f in enumerate(flags) if f]
    return ds.select(train_idx), ds.select(held_idx)


def heldout_selection(
    traces: datasets.Dataset, heldout_fraction: float, seed: int, traces_per_prompt: int, max_traces: int
) -> tuple[list[int], list[int], int, int]:
    """Which held-out traces to label: indices of up to `traces_per_prompt` traces per held-out prompt (at
    most `max_traces` in all, in dataset order), indices of the first trace of every held-out prompt, and
    the numbers of training and held-out prompts (distinct normalised texts). The split is
    `split_by_prompt`'s (by prompt text); traces of one text count as one prompt."""
    flags = heldout_flags(traces, heldout_fraction, seed)
    per_prompt: dict[str, int] = {}
    train_texts: set[str] = set()
    chosen, first = [], []
    for i, (text, held) in enumerate(zip(traces["prompt"], flags)):
        key = normalise_prompt(text)
        if not held:
            train_texts.add(key)
            continue
        seen = per_prompt.get(key, 0)
        if seen == 0:
            first.append(i)
        if seen < traces_per_prompt and len(chosen) < max_traces:
            chosen.append(i)
        per_prompt[key] = seen + 1
    return chosen, first, len(train_texts), len(per_prompt)


def prompts_digest(texts: Iterable[str]) -> tuple[int, str]:
    """(number, SHA-256 hex) of the distinct normalised texts in `texts`: the digest is of the sorted
    normalised texts joined by newlines."""
    distinct = sorted({normalise_prompt(t) for t in texts})
    return len(distinct), hashlib.sha256("\n".join(distinct).encode()).hexdigest()


@dataclass
class SplitRecord:
    """The train/held-out split a value checkpoint was trained with, or a labels folder was drawn from,
    saved as ``split.json`` beside it (contracts in docs/design.md).

    `n_train_prompts` and `train_prompts_sha256` describe the training side: the number of distinct
    normalised training prompt texts and the SHA-256 of those texts, sorted and newline-joined
    (`prompts_digest`). `is_heldout` answers for any prompt text with the recorded fraction and seed.
    """

    heldout_fraction: float
    split_seed: int
    n_train_prompts: int
    train_prompts_sha256: str
    key: str = "normalised prompt text"

    @classmethod
    def from_prompts(cls, train_texts: Iterable[str], heldout_fraction: float, split_seed: int) -> SplitRecord:
        """The record of a split whose training side holds the prompts `train_texts`."""
        n, digest = prompts_digest(train_texts)
        return cls(
            heldout_fraction=float(heldout_fraction),
            split_seed=int(split_seed),
            n_train_prompts=n,
            train_prompts_sha256=digest,
        )

    def is_heldout(self, prompt_text: str) -> bool:
        """Whether `prompt_text` is on the held-out side of this split (`prefixvalue.data.split.is_heldout`)."""
        return is_heldout(prompt_text, self.heldout_fraction, self.split_seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, folder: str | Path, **extra: object) -> Path:
        """Write ``folder/split.json`` (the record, plus any `extra` keys such as labels' ``prompts``);
        returns its path."""
        path = Path(folder) / SPLIT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**self.to_dict(), **extra}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> SplitRecord | None:
        """The record in ``folder/split.json``, or None when the folder has none (keys beyond the record's
        fields, e.g. labels' ``prompts``, are ignored)."""
        path = Path(folder) / SPLIT_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
