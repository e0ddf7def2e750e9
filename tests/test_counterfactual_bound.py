"""benchmarks/counterfactual_bound.py: the continuation oracle completes an arith chain correctly from what is
written, so every prefix of a correct solution continues to the expected answer, and a wrong digit carries through
the rest of the chain."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the script imports its `common`

import counterfactual_bound  # noqa: E402

from prefixvalue.tasks.arith import ArithTask  # noqa: E402


def test_every_prefix_of_a_correct_solution_continues_to_the_answer():
    task = ArithTask()
    for prompt in task.prompts(20, split="test"):
        nums, ops = task.parse_prompt(prompt.text)
        solution = task.solve(nums, ops)
        expected = int(solution.rsplit("A:", 1)[1])
        for k in range(len(solution) + 1):
            assert counterfactual_bound.continued_answer(prompt.text, solution[:k]) == expected, solution[:k]


def test_written_mistakes_carry_through_and_malformed_text_is_unreadable():
    answer = counterfactual_bound.continued_answer
    p = "Q:3+5*2-7="  # 3+5=8;8*2=6;6-7=9;A:9
    assert answer(p, "4") == 1  # 4+5=9, 9*2=8, 8-7=1
    assert answer(p, "3*") == 3  # 3*5=5, 5*2=0, 0-7=3
    assert answer(p, "3+5=7") == 7  # 7*2=4, 4-7=7 (mod 10)
    assert answer(p, "3+5=8;8*2=1") == 4
    assert answer(p, "3+5=8;8*2=6;6-7=9;A:2") == 2
    assert answer("Q:3*0+1=", "3*0=7") == 8  # no multiplier left: the wrong digit decides
    assert answer("Q:3+4*0=", "3+4=2") == 0  # a later *0 maps every digit to the same answer
    for bad in ("x", "3+5=8;;", "=", "3+5=8;A", "3+5=8;8*2=6;6-7=9;A:9;", "3+5=8;8*2=6;6-7=9;:"):
        assert answer(p, bad) is None, bad
