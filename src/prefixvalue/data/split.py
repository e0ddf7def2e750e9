"""Splits by a hash: which prompts are train, validation and test, and any other split that must not depend
on order.

Three sides, by the *normalised prompt text* (`normalise_prompt`), never by prompt id or trace: two prompts
with the same text land on the same side, whatever their ids (docs/design.md, "Held-out discipline"):

- **test** (held out): ``unit_hash(f"{seed}|{text}") < heldout_fraction``, the figures a report prints;
- **validation**: of the other prompts, ``unit_hash(f"{seed}|validation|{text}") < validation_fraction``,
  where every choice (a recipe, a checkpoint, a threshold, a step count) is made;
- **train**: the rest.

`SplitRecord` is the record of a split that travels with every value checkpoint and every labels folder
(``split.json``), with a digest of its training and of its validation prompts, and of every prompt it was drawn
over; `SplitRecord.verify` checks the recorded split against those digests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..atomic import write_atomic
from ..config import ConfigError, record_from_mapping
from ..jsonlines import read_json_object

#: file name of a `SplitRecord` inside a checkpoint or labels folder
SPLIT_FILE = "split.json"
#: the sides of a split, in order: trained on, chosen on, reported on
SIDES = ("train", "validation", "test")

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


def split_side(prompt_text: str, heldout_fraction: float, validation_fraction: float = 0.0, seed: int = 0) -> str:
    """The side of `prompt_text`: ``"test"`` when `is_heldout`, else ``"validation"`` when the hash of
    ``f"{seed}|validation|{normalise_prompt(text)}"`` is below `validation_fraction` (a fraction of the
    non-held-out prompts), else ``"train"``. With `validation_fraction` 0 the train side is today's
    non-held-out side, so splits recorded before validation existed read the same."""
    if is_heldout(prompt_text, heldout_fraction, seed):
        return "test"
    if (
        validation_fraction > 0
        and unit_hash(f"{seed}|validation|{normalise_prompt(prompt_text)}") < validation_fraction
    ):
        return "validation"
    return "train"


def split_sides(
    ds: datasets.Dataset, heldout_fraction: float, validation_fraction: float = 0.0, seed: int = 0
) -> list[str]:
    """`split_side` of every row's ``prompt`` column, each distinct text hashed once."""
    cache: dict[str, str] = {}
    sides = []
    for text in ds["prompt"]:
        if text not in cache:
            cache[text] = split_side(text, heldout_fraction, validation_fraction, seed)
        sides.append(cache[text])
    return sides


def split_three(
    ds: datasets.Dataset, heldout_fraction: float, validation_fraction: float = 0.0, seed: int = 0
) -> dict[str, datasets.Dataset]:
    """Rows by side (``{"train", "validation", "test"}``, `split_side` of the ``prompt`` column), in dataset
    order; traces of one normalised text stay on one side."""
    sides = split_sides(ds, heldout_fraction, validation_fraction, seed)
    return {side: ds.select([i for i, s in enumerate(sides) if s == side]) for side in SIDES}


def heldout_flags(ds: datasets.Dataset, heldout_fraction: float, seed: int = 0) -> list[bool]:
    """`is_heldout` of every row's ``prompt`` column (the test side of `split_sides`)."""
    return [side == "test" for side in split_sides(ds, heldout_fraction, 0.0, seed)]


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
    traces: datasets.Dataset,
    heldout_fraction: float,
    seed: int,
    traces_per_prompt: int,
    max_traces: int,
    validation_fraction: float = 0.0,
    side: str = "test",
) -> tuple[list[int], list[int], int, int]:
    """Which traces of one side to label (`side`: ``test``, the held-out prompts, or ``validation``): indices
    of up to `traces_per_prompt` traces per prompt of that side (at most `max_traces` in all, in dataset
    order), indices of the first trace of every prompt of that side, and the numbers of training prompts
    and of prompts on that side (distinct normalised texts). The split is `split_side`'s (by prompt text);
    traces of one text count as one prompt."""
    if side not in ("test", "validation"):
        raise ValueError(f"heldout_selection: side must be test or validation, got {side!r}")
    sides = split_sides(traces, heldout_fraction, validation_fraction, seed)
    per_prompt: dict[str, int] = {}
    train_texts: set[str] = set()
    chosen, first = [], []
    for i, (text, got) in enumerate(zip(traces["prompt"], sides)):
        key = normalise_prompt(text)
        if got == "train":
            train_texts.add(key)
        if got != side:
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
    """The train/validation/test split a value checkpoint was trained with, or a labels folder was drawn from,
    saved as ``split.json`` beside it (contracts in docs/design.md).

    `n_train_prompts` and `train_prompts_sha256` describe the training side: the number of distinct
    normalised training prompt texts and the SHA-256 of those texts, sorted and newline-joined
    (`prompts_digest`); `n_validation_prompts` and `validation_prompts_sha256` the validation side the same
    way; `n_prompts` and `prompts_sha256` every prompt the split was drawn over (None in records written before
    they were kept). `side` answers for any prompt text with the recorded fractions and seed. A record written
    before validation existed reads with `validation_fraction` 0 (no validation side).
    """

    heldout_fraction: float
    split_seed: int
    n_train_prompts: int
    train_prompts_sha256: str
    key: str = "normalised prompt text"
    validation_fraction: float = 0.0
    n_validation_prompts: int = 0
    validation_prompts_sha256: str | None = None
    n_prompts: int | None = None
    prompts_sha256: str | None = None

    def __post_init__(self) -> None:
        for name in ("heldout_fraction", "validation_fraction"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        for name in ("n_train_prompts", "n_validation_prompts", "n_prompts"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        for name in ("train_prompts_sha256", "validation_prompts_sha256", "prompts_sha256"):
            value = getattr(self, name)
            if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
                raise ValueError(f"{name} must be a SHA-256 (64 hex digits), got {value!r}")

    @classmethod
    def from_prompts(
        cls,
        train_texts: Iterable[str],
        heldout_fraction: float,
        split_seed: int,
        validation_texts: Iterable[str] = (),
        validation_fraction: float = 0.0,
        all_texts: Iterable[str] | None = None,
    ) -> SplitRecord:
        """The record of a split whose training side holds the prompts `train_texts` and whose validation
        side holds `validation_texts`, drawn over the prompts `all_texts` (None: not recorded)."""
        n, digest = prompts_digest(train_texts)
        n_val, val_digest = prompts_digest(validation_texts)
        n_all, all_digest = prompts_digest(all_texts) if all_texts is not None else (None, None)
        return cls(
            heldout_fraction=float(heldout_fraction),
            split_seed=int(split_seed),
            n_train_prompts=n,
            train_prompts_sha256=digest,
            validation_fraction=float(validation_fraction),
            n_validation_prompts=n_val,
            validation_prompts_sha256=val_digest if validation_fraction > 0 else None,
            n_prompts=n_all,
            prompts_sha256=all_digest,
        )

    @classmethod
    def of(
        cls, ds: datasets.Dataset, heldout_fraction: float, validation_fraction: float, split_seed: int
    ) -> SplitRecord:
        """The record of splitting the rows `ds` (their ``prompt`` column) with these fractions and seed."""
        parts = split_three(ds, heldout_fraction, validation_fraction, split_seed)
        return cls.from_prompts(
            parts["train"]["prompt"],
            heldout_fraction,
            split_seed,
            parts["validation"]["prompt"],
            validation_fraction,
            ds["prompt"],
        )

    def side(self, prompt_text: str) -> str:
        """``train``, ``validation`` or ``test``: the side of `prompt_text` under this split (`split_side`)."""
        return split_side(prompt_text, self.heldout_fraction, self.validation_fraction, self.split_seed)

    def is_heldout(self, prompt_text: str) -> bool:
        """Whether `prompt_text` is on the held-out (test) side of this split (`prefixvalue.data.split.is_heldout`)."""
        return is_heldout(prompt_text, self.heldout_fraction, self.split_seed)

    def same_split(self, other: SplitRecord) -> bool:
        """Whether `other` assigns every prompt text the same side (the same fractions and seed)."""
        return (self.heldout_fraction, self.validation_fraction, self.split_seed) == (
            other.heldout_fraction,
            other.validation_fraction,
            other.split_seed,
        )

    def verify(self, texts: Iterable[str], where: str | Path, source: str, drawn_over: bool = False) -> bool:
        """Whether the prompts `texts` (of `source`, for the message) reproduce this record's training and
        validation digests under its fractions and seed. When they are the prompts the split was drawn over
        (their digest is ``prompts_sha256``; for a record without it, when the caller says so with `drawn_over`)
        a mismatch means the record's split is not the one its digests were drawn with (an edited
        ``split.json``): ConfigError in one line naming `where`. Otherwise False: these prompts cannot tell."""
        distinct = {normalise_prompt(t) for t in texts}
        if self.prompts_sha256 is not None:
            if prompts_digest(distinct) != (self.n_prompts, self.prompts_sha256):
                return False
            drawn_over = True
        sides = {t: self.side(t) for t in distinct}
        checks = [("training", "train", self.n_train_prompts, self.train_prompts_sha256)]
        if self.validation_prompts_sha256 is not None:
            checks.append(("validation", "validation", self.n_validation_prompts, self.validation_prompts_sha256))
        for what, side, n, digest in checks:
            got = prompts_digest(t for t, s in sides.items() if s == side)
            if got == (n, digest):
                continue
            if not drawn_over:
                return False
            raise ConfigError(
                f"{where}: its split (heldout_fraction={self.heldout_fraction}, validation_fraction="
                f"{self.validation_fraction}, split_seed={self.split_seed}) does not give the {n} {what} prompts it "
                f"records ({side}_prompts_sha256) over {source} (it gives "
                f"{got[0]}): the file was edited or belongs to another run, so its held-out side cannot be trusted; "
                "restore the split it was written with"
            )
        return True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, folder: str | Path, **extra: object) -> Path:
        """Write ``folder/split.json`` (the record, plus any `extra` keys such as labels' ``prompts``)
        atomically; returns its path."""
        path = Path(folder) / SPLIT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**self.to_dict(), **extra}, indent=2) + "\n"
        write_atomic(path, lambda tmp: tmp.write_text(text))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> SplitRecord | None:
        """The record in ``folder/split.json``, or None when the folder has none (keys beyond the record's
        fields, e.g. labels' ``prompts``, are ignored). A file that is not JSON, or lacks a field, or holds one
        of the wrong type or range: ConfigError in one line naming the file and the field. Its digests are
        checked by `verify` (`prefixvalue.data.load_split` runs both)."""
        path = Path(folder) / SPLIT_FILE
        if not path.exists():
            return None
        return record_from_mapping(cls, read_json_object(path), path, ignore_unknown=True)


#: the sides a labels folder's ``prompts`` may name
LABEL_PROMPTS = ("heldout", "validation", "train", "all")


def labels_side(folder: str | Path) -> str | None:
    """The side of the split a labels folder was drawn from (``prompts`` in its ``split.json``: ``test`` for
    ``heldout``, ``validation``, ``train``, ``all``), or None when it records none; ConfigError naming the
    file when it is not a JSON object or ``prompts`` is none of those."""
    path = Path(folder) / SPLIT_FILE
    if not path.exists():
        return None
    prompts = read_json_object(path).get("prompts")
    if prompts is not None and prompts not in LABEL_PROMPTS:
        raise ConfigError(f"{path}: field prompts must be one of {list(LABEL_PROMPTS)}, got {prompts!r}")
    return {"heldout": "test"}.get(prompts, prompts)
