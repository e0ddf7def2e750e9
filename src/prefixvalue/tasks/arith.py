"""`arith`, the embedded default task: multi-step arithmetic chains written out step by step.

Prompt ``Q:3+5*2-7=``, answer ``3+5=8;8*2=6;6-7=9;A:9`` (modulus 10, evaluated left to right).
Each step reads ``a<op>b=c``; the last step ``A:x`` gives the final answer. The verifier checks the
final answer exactly; `step_labels` says which steps are right *given the previous steps as
written*, so the first False is the ProcessBench first-error index.

Splits are independent streams of prompts (``policy-train``, ``policy-val``, ``train``, ``test``, any
name). Every split but ``policy-train`` skips each prompt whose text occurs among the first
`ArithConfig.policy_train_prompts` prompts of ``policy-train`` (the pool the shipped policy
``data/policies/arith-tiny`` was trained on), so ``test`` and the others hold no prompt the policy was
trained on, by construction. Prompt ids ``arith-{split}-{index:06d}`` count the kept prompts, so they stay
dense and stable.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..config import ConfigError, field
from .base import Prompt, Task, VerifierResult

_STEP = re.compile(r"^(-?\d+)([+\-*])(-?\d+)=(-?\d+)$")
_FINAL = re.compile(r"^A:(-?\d+)$")
_PROMPT = re.compile(r"^Q:(.*)=$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass
class ArithConfig:
    """Knobs of the arithmetic-chain task; difficulty grows with steps, operand range and modulus."""

    min_steps: int = field(3, help="fewest operations in a chain")
    max_steps: int = field(5, help="most operations in a chain")
    operand_min: int = field(0, help="smallest operand")
    operand_max: int = field(9, help="largest operand")
    operators: str = field("+-*", help="operators to draw from, any of '+-*'")
    modulus: int | None = field(10, help="results are taken modulo this (None: plain integers)")
    seed: int = field(0, help="seed of the prompt generator; prompt ids are stable for a seed")
    policy_train_prompts: int = field(
        35200,
        help="size of the pool of split 'policy-train' that the policy trains on: the shipped "
        "data/policies/arith-tiny was trained on its first 550 x 64 = 35200 prompts "
        "(recipes/train_policy.py draws no further); every other split skips these texts",
    )

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ConfigError("arith: need 1 <= min_steps <= max_steps")
        if self.operand_min > self.operand_max or self.operand_min < 0:
            raise ConfigError("arith: need 0 <= operand_min <= operand_max")
        if not self.operators or any(op not in _OPS for op in self.operators):
            raise ConfigError(f"arith: operators must be drawn from '+-*', got {self.operators!r}")
        if self.modulus is not None and self.modulus < 2:
            raise ConfigError("arith: modulus must be >= 2 or None")
        if self.policy_train_prompts < 0:
            raise ConfigError("arith: policy_train_prompts must be >= 0")


#: the policy-training pool's texts, per generator config (computed once per process, on first use)
_POLICY_POOLS: dict[tuple, frozenset[str]] = {}

#: the split whose first `policy_train_prompts` prompts the policy trains on
POLICY_TRAIN_SPLIT = "policy-train"


class ArithTask(Task):
    """Multi-step arithmetic chains with an exact verifier and exact step labels."""

    name = "arith"
    config_class = ArithConfig

    def __init__(self, config: ArithConfig | None = None, **kwargs: object) -> None:
        self.config = config if config is not None else ArithConfig(**kwargs)  # type: ignore[arg-type]
        self._kept: dict[str, list[int]] = {}  # per split: raw generator index of each kept prompt

    # -- generation -------------------------------------------------------------------------
    def _reduce(self, v: int) -> int:
        m = self.config.modulus
        return v % m if m is not None else v

    def _rng(self, split: str, index: int) -> random.Random:
        key = f"arith|{self.config.seed}|{split}|{index}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))

    def _draw(self, split: str, raw_index: int) -> tuple[str, list[int], list[str]]:
        """Expression, operands and operators of the generator's `raw_index`-th draw for `split`."""
        c = self.config
        rng = self._rng(split, raw_index)
        k = rng.randint(c.min_steps, c.max_steps)
        nums = [rng.randint(c.operand_min, c.operand_max) for _ in range(k + 1)]
        ops = [rng.choice(c.operators) for _ in range(k)]
        expr = str(nums[0]) + "".join(op + str(n) for op, n in zip(ops, nums[1:]))
        return expr, nums, ops

    def policy_pool(self) -> frozenset[str]:
        """Texts of the first `policy_train_prompts` prompts of ``policy-train`` (the policy's training
        pool), computed on first use and cached per generator config."""
        c = self.config
        key = (
            c.min_steps,
            c.max_steps,
            c.operand_min,
            c.operand_max,
            c.operators,
            c.modulus,
            c.seed,
            c.policy_train_prompts,
        )
        pool = _POLICY_POOLS.get(key)
        if pool is None:
            pool = frozenset(f"Q:{self._draw(POLICY_TRAIN_SPLIT, i)[0]}=" for i in range(c.policy_train_prompts))
            _POLICY_POOLS[key] = pool
        return pool

    def _raw_index(self, split: str, index: int) -> int:
        """Generator index of the `index`-th kept prompt of `split` (``policy-train`` keeps every draw;
        the other splits skip texts of the policy's training pool)."""
        if split == POLICY_TRAIN_SPLIT or not self.config.policy_train_prompts:
            return index
        kept = self._kept.setdefault(split, [])
        if len(kept) <= index:
            pool = self.policy_pool()
            raw = kept[-1] + 1 if kept else 0
            while len(kept) <= index:
                if f"Q:{self._draw(split, raw)[0]}=" not in pool:
                    kept.append(raw)
                raw += 1
        return kept[index]

    def make_prompt(self, split: str, index: int) -> Prompt:
        """The `index`-th prompt of `split`: deterministic in (config, split, index). Outside
        ``policy-train``, `index` counts the prompts kept after skipping the policy's training pool."""
        expr, nums, ops = self._draw(split, self._raw_index(split, index))
        solution = self.solve(nums, ops)
        answer = solution.rsplit("A:", 1)[1]
        return Prompt(
            prompt_id=f"arith-{split}-{index:06d}",
            text=f"Q:{expr}=",
            answer=answer,
            meta={"operands": nums, "operators": ops, "solution": solution},
        )

    def prompts(self, num: int | None = None, split: str = "train") -> Iterator[Prompt]:
        i = 0
        while num is None or i < num:
            yield self.make_prompt(split, i)
            i += 1

    def solve(self, nums: list[int], ops: list[str]) -> str:
        """The correct step-by-step completion for operands `nums` and operators `ops`."""
        acc = self._reduce(nums[0])
        steps = []
        for op, b in zip(ops, nums[1:]):
            r = self._reduce(_OPS[op](acc, b))
            steps.append(f"{acc}{op}{b}={r}")
            acc = r
        steps.append(f"A:{acc}")
        return ";".join(steps)

    # -- verification -----------------------------------------------------------------------
    @staticmethod
    def parse_prompt(text: str) -> tuple[list[int], list[str]]:
        """Operands and operators of a prompt ``Q:<expr>=``."""
        m = _PROMPT.match(text.strip())
        if not m:
            raise ValueError(f"not an arith prompt: {text!r}")
        tokens = re.findall(r"\d+|[+\-*]", m.group(1))
        nums = [int(t) for t in tokens[0::2]]
        ops = tokens[1::2]
        return nums, ops

    def _expected(self, prompt: Prompt) -> str:
        if prompt.answer is not None:
            return prompt.answer
        nums, ops = self.parse_prompt(prompt.text)
        return self.solve(nums, ops).rsplit("A:", 1)[1]

    def verify(self, prompt: Prompt, completion: str) -> VerifierResult:
        final = completion.strip().split(";")[-1].strip()
        m = _FINAL.match(final)
        if not m:
            return VerifierResult(0.0, details={"reason": "no final 'A:<number>' step", "predicted": None})
        predicted = m.group(1)
        expected = self._expected(prompt)
        ok = int(predicted) == int(expected)
        return VerifierResult(1.0 if ok else 0.0, details={"predicted": predicted, "expected": expected})

    def split_steps(self, completion: str) -> list[tuple[int, int]]:
        """Steps are separated by ';' (the separator belongs to the step it ends)."""
        spans, start = [], 0
        for i, ch in enumerate(completion):
            if ch == ";":
                spans.append((start, i + 1))
                start = i + 1
        if start < len(completion):
            spans.append((start, len(completion)))
        return spans

    def step_stops(self) -> tuple[str, ...]:
        return (";",)

    def step_labels(self, prompt: Prompt, completion: str) -> list[bool]:
        nums, ops = self.parse_prompt(prompt.text)
        labels: list[bool] = []
        prev = self._reduce(nums[0])  # what the next step's left operand should be, as written
        for i, (s, e) in enumerate(self.split_steps(completion)):
            text = completion[s:e].rstrip(";").strip()
            if i < len(ops):
                m = _STEP.match(text)
                if not m:
                    labels.append(False)
                    prev = None  # nothing usable was written; later steps cannot be right
                    continue
                a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
                ok = (
                    prev is not None
                    and a == prev
                    and op == ops[i]
                    and b == nums[i + 1]
                    and c == self._reduce(_OPS[op](a, b))
                )
                labels.append(ok)
                prev = c
            elif i == len(ops):
                m = _FINAL.match(text)
                labels.append(bool(m) and prev is not None and int(m.group(1)) == prev)
            else:  # anything after the final answer is an error
                labels.append(False)
        return labels
