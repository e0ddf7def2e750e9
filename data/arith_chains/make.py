"""Write the project's arithmetic chains in words ("Compute 4 + 7 + 2.") as JSON lines.

    python data/arith_chains/make.py            # rewrites data/arith_chains/arith_chains.jsonl

Each line: {"id", "question", "answer", "ops"}; the answer is an integer. The set is written for prefixvalue
(no public benchmark text), fixed by the seed below, so the committed file and this script agree (a test
checks it). The committed file is `sums()`: three one-digit numbers added, 727 distinct questions in a
shuffled order. `make smollm2` shows SmolLM2-135M-Instruct two worked examples as chat turns
(`EXAMPLES`), so an answer takes several sentences ("8 + 6 = 14. 14 + 5 = 19. The answer is 19."): one
step per operation, then the answer. The other generators are the candidates measured against it
(benchmarks/smollm2_tasks.py; the table: README, "A real model on this CPU").
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

#: the two worked examples `make smollm2` puts before each question, as (question, answer text) chat turns
EXAMPLES = (
    ("Compute 8 + 6 + 5.", "8 + 6 = 14. 14 + 5 = 19. The answer is 19."),
    ("Compute 4 + 7 + 9.", "4 + 7 = 11. 11 + 9 = 20. The answer is 20."),
)


SYSTEM = "You are a calculator. Add one number at a time."


def chat_template(examples: tuple[tuple[str, str], ...] = EXAMPLES, system: str = SYSTEM) -> str:
    """SmolLM2's chat format written out: `system`, the `examples` as user/assistant turns, then the question as
    `{prompt}` and the assistant's turn (a jsonl task template, used with chat_template=false)."""
    turns = [f"<|im_start|>system\n{system}<|im_end|>\n"]
    for question, answer in examples:
        turns.append(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n")
    turns.append("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
    return "".join(turns)


def _rows(chains: list[tuple[object, ...]], prefix: str) -> list[dict[str, object]]:
    """JSON records of `chains`, each (n0, op1, n1, op2, n2, ...), with ids prefix-0000.."""
    out: list[dict[str, object]] = []
    for i, chain in enumerate(chains):
        text = " ".join(str(t) for t in chain)
        value = int(chain[0])
        for op, n in zip(chain[1::2], chain[2::2]):
            value = value + int(n) if op == "+" else value - int(n)
        out.append({"id": f"{prefix}-{i:04d}", "question": f"Compute {text}.", "answer": value, "ops": len(chain) // 2})
    return out


def _without_examples(chains: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """`chains` less the questions of `EXAMPLES` (the model sees those answered)."""
    shown = {q for q, _ in EXAMPLES}
    return [c for c in chains if f"Compute {' '.join(str(t) for t in c)}." not in shown]


def sums(seed: int = 0) -> list[dict[str, object]]:
    """Every a + b + c with a, b, c in 1..9 (727 questions: 729 less the two `EXAMPLES`), shuffled by `seed`: the committed file."""
    chains = [(a, "+", b, "+", c) for a, b, c in itertools.product(range(1, 10), repeat=3)]
    random.Random(seed).shuffle(chains)
    return _rows(_without_examples(chains), "sum")


def small_sums(seed: int = 0) -> list[dict[str, object]]:
    """a + b + c with a + b <= 9 and c <= 4 (118 questions, too few for the benchmark), shuffled."""
    chains = [(a, "+", b, "+", c) for a in range(1, 6) for b in range(1, 10 - a) for c in range(1, 5)]
    random.Random(seed).shuffle(chains)
    return _rows(_without_examples(chains), "small")


def four_sums(seed: int = 0) -> list[dict[str, object]]:
    """a + b + c + d with a, b in 1..4 and c, d in 1..3 (144 questions): three operations, shuffled."""
    chains = [
        (a, "+", b, "+", c, "+", d)
        for a, b in itertools.product(range(1, 5), repeat=2)
        for c, d in itertools.product(range(1, 4), repeat=2)
    ]
    random.Random(seed).shuffle(chains)
    return _rows(chains, "four")


def plus_minus(n: int = 800, seed: int = 0) -> list[dict[str, object]]:
    """`n` chains a ± b ± c of one-digit numbers whose running result stays in 0..18, drawn by `seed`."""
    rng = random.Random(seed)
    chains: list[tuple[object, ...]] = []
    while len(chains) < n:
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        op1, op2 = rng.choice("+-"), rng.choice("+-")
        first = a + b if op1 == "+" else a - b
        last = first + c if op2 == "+" else first - c
        if 0 <= first <= 18 and 0 <= last <= 18:
            chains.append((a, op1, b, op2, c))
    return _rows(chains, "pm")


def write(path: Path, rows: list[dict[str, object]]) -> None:
    """Write `rows` to `path` as JSON lines."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    target = Path(__file__).with_name("arith_chains.jsonl")
    write(target, sums())
    print(f"wrote {target}")
