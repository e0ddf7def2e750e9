"""Write the project's small set of easy word problems (one and two steps) as JSON lines.

    python data/word_problems/make.py            # rewrites data/word_problems/word_problems.jsonl

Each line: {"id", "question", "answer", "steps"}; the answer is an integer. The set is written for
prefixvalue (no public benchmark text), fixed by the seed below, so the committed file and this script
agree. Numbers below 10 keep the problems within reach of a 135M-parameter instruct model at temperature 1
(SmolLM2-135M-Instruct solves roughly one in ten), so outcomes have variance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kira", "Leo", "Mia", "Noah"]
THINGS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "balloons"]


def one_step(rng: random.Random) -> tuple[str, int]:
    """A single addition or subtraction of small numbers."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    if rng.random() < 0.6:
        a, b = rng.randint(1, 6), rng.randint(1, 6)
        return f"{name} has {a} {thing}. {name} gets {b} more {thing}. How many {thing} does {name} have now?", a + b
    a = rng.randint(4, 9)
    b = rng.randint(1, a - 1)
    return f"{name} has {a} {thing} and gives {b} of them away. How many {thing} does {name} have left?", a - b


def two_step(rng: random.Random) -> tuple[str, int]:
    """Two small operations in a row: add then add, or add then subtract."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(1, 5), rng.randint(1, 5)
    if rng.random() < 0.5:
        c = rng.randint(1, 5)
        q = f"{name} has {a} {thing}, gets {b} more, and then gets {c} more. How many {thing} does {name} have now?"
        return q, a + b + c
    c = rng.randint(1, a + b - 1)
    q = f"{name} has {a} {thing}, gets {b} more, and then gives {c} away. How many {thing} does {name} have now?"
    return q, a + b - c


def problems(n: int = 200, seed: int = 0) -> list[dict[str, object]]:
    """`n` problems, half one-step and half two-step, interleaved, with stable ids wp-0000.."""
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    for i in range(n):
        steps = 1 if i % 2 == 0 else 2
        q, a = one_step(rng) if steps == 1 else two_step(rng)
        out.append({"id": f"wp-{i:04d}", "question": q, "answer": a, "steps": steps})
    return out


if __name__ == "__main__":
    path = Path(__file__).with_name("word_problems.jsonl")
    path.write_text("".join(json.dumps(p) + "\n" for p in problems()), encoding="utf-8")
    print(f"wrote {path}")
