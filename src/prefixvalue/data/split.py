"""Splits by a hash: which prompts are held out, and any other split that must not depend on order."""

from __future__ import annotations

import hashlib

import datasets


def unit_hash(key: str) -> float:
    """A number in [0, 1) fixed by `key` alone: the first 8 bytes of SHA-256(key), little-endian, / 2**64."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2**64


def is_heldout(prompt_id: str, heldout_fraction: float, seed: int = 0) -> bool:
    """Whether `prompt_id` belongs to the held-out split.

    The split is by prompt (never by trace) and depends only on (prompt_id, seed), so training and
    evaluation agree on it without sharing any state, and adding prompts never moves old ones.
    """
    if heldout_fraction <= 0:
        return False
    if heldout_fraction >= 1:
        return True
    return unit_hash(f"{seed}|{prompt_id}") < heldout_fraction


def split_by_prompt(ds: datasets.Dataset, heldout_fraction: float, seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split rows into (train, held-out) by prompt with `is_heldout`; traces of a prompt stay together."""
    flags = [is_heldout(pid, heldout_fraction, seed) for pid in ds["prompt_id"]]
    train_idx = [i for i, f in enumerate(flags) if not f]
    held_idx = [i for i, f in enumerate(flags) if f]
    return ds.select(train_idx), ds.select(held_idx)


def heldout_selection(traces: datasets.Dataset, heldout_fraction: float, seed: int, traces_per_prompt: int,
                      max_traces: int) -> tuple[list[int], list[int], int, int]:
    """Which held-out traces to label: indices of up to `traces_per_prompt` traces per held-out prompt (at
    most `max_traces` in all, in dataset order), indices of the first trace of every held-out prompt, and
    the numbers of training and held-out prompts. The split is `split_by_prompt`'s."""
    train_ds, held = split_by_prompt(traces, heldout_fraction, seed)
    held_ids = set(held["trace_id"])
    per_prompt: dict[str, int] = {}
    chosen, first = [], []
    for i, (tid, pid) in enumerate(zip(traces["trace_id"], traces["prompt_id"])):
        if tid not in held_ids:
            continue
        seen = per_prompt.get(pid, 0)
        if seen == 0:
            first.append(i)
        if seen < traces_per_prompt and len(chosen) < max_traces:
            chosen.append(i)
        per_prompt[pid] = seen + 1
    return chosen, first, len(set(train_ds["prompt_id"])), len(per_prompt)
