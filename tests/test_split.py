"""The held-out split (issue 14, items 1 and 3): by normalised prompt text, and its record (split.json)."""

from __future__ import annotations

import hashlib

import datasets

from prefixvalue.data import SplitRecord, heldout_selection, is_heldout, normalise_prompt, split_by_prompt, unit_hash


def _traces(rows: list[tuple[str, str]], per_prompt: int = 2) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [{"trace_id": f"{pid}/s{j}", "prompt_id": pid, "prompt": text} for pid, text in rows for j in range(per_prompt)]
    )


def test_normalise_prompt():
    assert normalise_prompt("  Q:7-9*0-4=\n") == "Q:7-9*0-4="
    assert normalise_prompt("What is\t 2 +\n\n2?") == "What is 2 + 2?"
    assert normalise_prompt("Case Kept") != normalise_prompt("case kept")


def test_is_heldout_hashes_seed_and_normalised_text():
    for seed in range(5):
        for text in ("Q:7-9*0-4=", "  a  b ", "x"):
            assert is_heldout(text, 0.3, seed) == (unit_hash(f"{seed}|{normalise_prompt(text)}") < 0.3)


def test_duplicated_text_never_straddles_the_split():
    """Two prompts with different ids and the same text (`Q:7-9*0-4=`) always land on the same side."""
    rows = [
        ("arith-test-000001", "Q:7-9*0-4="),
        ("arith-test-000777", "Q:7-9*0-4= "),
        *[(f"other-{i}", f"Q:{i}+1=") for i in range(30)],
    ]
    traces = _traces(rows)  # the same rows under every seed: built once
    for seed in range(40):
        train, held = split_by_prompt(traces, 0.5, seed)
        dup_train = [p for p in train["prompt_id"] if p in ("arith-test-000001", "arith-test-000777")]
        dup_held = [p for p in held["prompt_id"] if p in ("arith-test-000001", "arith-test-000777")]
        assert (len(dup_train), len(dup_held)) in ((4, 0), (0, 4)), seed
        chosen, first, n_train, n_held = heldout_selection(traces, 0.5, seed, traces_per_prompt=8, max_traces=100)
        assert n_train + n_held == 31  # the duplicated text counts once
        if dup_held:  # both ids' traces are selected, under one prompt
            assert sum(traces[i]["prompt"].strip() == "Q:7-9*0-4=" for i in chosen) == 4


def test_split_record_round_trip(tmp_path):
    assert SplitRecord.load(tmp_path) is None
    texts = ["Q:2+2=", " Q:1+1=", "Q:1+1=", "Q:3*3="]
    rec = SplitRecord.from_prompts(texts, 0.25, 7)
    assert rec.n_train_prompts == 3 and rec.key == "normalised prompt text"
    assert rec.train_prompts_sha256 == hashlib.sha256(b"Q:1+1=\nQ:2+2=\nQ:3*3=").hexdigest()
    rec.save(tmp_path, prompts="heldout")
    back = SplitRecord.load(tmp_path)
    assert back == rec
    assert all(back.is_heldout(t) == is_heldout(t, 0.25, 7) for t in (f"Q:{i}=" for i in range(50)))
