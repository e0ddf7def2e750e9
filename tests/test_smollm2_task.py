"""`make smollm2`'s task, fast: the arithmetic chains of data/arith_chains (generator, verifier, steps, and the
chat turns the Makefile writes out). The real model on it is tests/test_smollm2.py (slow)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

from prefixvalue.config import unescape
from prefixvalue.tasks.jsonl import JsonlTask

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "arith_chains" / "arith_chains.jsonl"


def arith_chains() -> ModuleType:
    """data/arith_chains/make.py, imported from its file (the generator and the chat turns)."""
    spec = importlib.util.spec_from_file_location("arith_chains_make", REPO / "data" / "arith_chains" / "make.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def arith_chains_task_args() -> list[str]:
    """The task options of `make smollm2` (the Makefile's ARITH_CHAINS), as collect and steer take them."""
    return [
        "task=jsonl",
        f"task_args.path={DATA}",
        "task_args.prompt_field=question",
        "task_args.id_field=id",
        "task_args.verifier=marker",
        "task_args.steps=sentence",
        "chat_template=false",
        f"task_args.template={arith_chains().chat_template()}",
    ]


def task() -> JsonlTask:
    return JsonlTask(
        path=str(DATA),
        prompt_field="question",
        id_field="id",
        verifier="marker",
        steps="sentence",
        template=arith_chains().chat_template(),
    )


def test_generator_writes_the_committed_file():
    rows = arith_chains().sums()
    assert DATA.read_text(encoding="utf-8") == "".join(json.dumps(r) + "\n" for r in rows)
    questions = [r["question"] for r in rows]
    assert len(questions) >= 600 and len(set(questions)) == len(questions)  # the benchmark: 400 + a held-out share
    for r in rows:
        a, b, c = (int(n) for n in re.findall(r"\d+", r["question"]))
        assert r["answer"] == a + b + c and r["ops"] == 2
    shown = {q for q, _ in arith_chains().EXAMPLES}
    assert not shown & set(questions)  # the worked examples are not asked


def test_makefile_writes_the_generators_chat_turns():
    """The Makefile's template (command-line escapes) is make.py's `chat_template()`, as the slow test uses it."""
    makefile = (REPO / "Makefile").read_text()
    line = re.search(r"^ARITH_CHAINS_TEMPLATE := (.*)$", makefile, re.M)
    assert line is not None
    assert unescape(line.group(1)) == arith_chains().chat_template()
    assert "$(ARITH_CHAINS)" in makefile.split("\nsmollm2:")[1].split("\n\n")[0]  # collect and steer use it


def test_prompt_is_the_question_after_the_worked_examples():
    t = task()
    p = next(t.prompts(1))
    first = json.loads(DATA.read_text().splitlines()[0])
    assert p.prompt_id == first["id"] and p.answer == str(first["answer"])
    assert p.text.endswith(f"<|im_start|>user\n{first['question']}<|im_end|>\n<|im_start|>assistant\n")
    assert p.text.count("<|im_start|>assistant\n") == 3  # two worked examples, then the model's turn


def test_verifier_scores_a_correct_and_a_wrong_answer():
    t = task()
    p = next(t.prompts(1))  # Compute 9 + 9 + 8.
    assert p.answer == "26"
    assert t.verify(p, "9 + 9 = 18. 18 + 8 = 26. The answer is 26.").score == 1.0
    assert t.verify(p, "9 + 9 = 18. 18 + 8 = 25. The answer is 25.").score == 0.0
    assert t.verify(p, "9 + 9 = 18. 18 + 8 = 26.").score == 0.0  # no "The answer is"


def test_steps_are_the_operations_then_the_answer():
    t = task()
    text = "9 + 9 = 18. 18 + 8 = 26. The answer is 26."
    steps = [text[a:b] for a, b in t.split_steps(text)]
    assert steps == ["9 + 9 = 18.", "18 + 8 = 26.", "The answer is 26."]
    for _, answer in arith_chains().EXAMPLES:  # the worked examples the model copies split the same way
        assert len(t.split_steps(answer)) == 3
