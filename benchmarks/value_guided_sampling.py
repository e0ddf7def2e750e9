"""Value-guided sampling on the quickstart's checkpoints: ``value_guided_sampling`` in results.json.

    python benchmarks/value_guided_sampling.py runs/quickstart             # what `make steer` runs (about an hour here)
    python benchmarks/value_guided_sampling.py runs/quickstart max_prompts=50 replicates=1
    python benchmarks/value_guided_sampling.py --record runs/quickstart_steer [note=TEXT]   # a finished steer folder

Runs ``prefixvalue steer`` (docs/design.md, "Values that steer") with the quickstart's chosen value model
(`learned`, RUN/metrics.json's ``checkpoint``) and its IPVRM (RUN/train_implicit/final) as twists, the policy's
MellowMax soft value and the Monte Carlo twist (4 continuations per particle and round) as references, on 150 test
prompts of the checkpoints' split, budgets N = 1, 2, 4, 8, 3 sampling seeds, into RUN_steer beside the run folder
(resumed when interrupted). The recorded value is the share of the Monte Carlo twist's gain over one sample that SMC
with the learned twist captures at N = 8; the context holds every method's accuracy and token multiple, the paired
differences of SMC against best-of-N and majority vote, the goals and the costs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prefixvalue.config import parse_config
from prefixvalue.studies import steer

from common import record

DEFAULTS = {"max_prompts": 150, "chunk_prompts": 50, "budgets": "[1,2,4,8]", "replicates": 3, "mc_samples": 4}


def run_steer(run: Path, overrides: list[str]) -> Path:
    """``prefixvalue steer`` on the quickstart folder `run`'s policy and checkpoints, into ``<run>_steer``."""
    metrics = json.loads((run / "metrics.json").read_text())
    learned = metrics["checkpoint"]
    implicit = run / "train_implicit" / "final"
    checkpoints = [learned] + ([str(implicit)] if implicit.exists() and str(implicit) != learned else [])
    out = run.parent / f"{run.name}_steer"
    args = {**DEFAULTS, "policy": metrics["policy"], "checkpoints": "[" + ",".join(checkpoints) + "]", "out": str(out)}
    argv = [f"{k}={v}" for k, v in args.items()] + overrides
    steer.run(parse_config(steer.SteerConfig, argv, prog="value_guided_sampling"))
    return out


def summary(folder: Path) -> tuple[float | None, dict[str, Any]]:
    """The share of the MC twist's gain of the first checkpoint's SMC at the largest budget, and the context."""
    data = json.loads((folder / "steer.json").read_text())
    learned = next(iter(data["checkpoints"]), None)
    shares = data["mc_gain_share"].get(learned, {}) if learned else {}
    top = max((int(n) for n in shares), default=None)
    acc = {m: {n: [r["accuracy"], r["token_ratio"]] for n, r in rows.items()} for m, rows in data["accuracy"].items()}
    pairs = [p for p in data["paired"] if p["a"] == f"smc/{learned}"]
    context = {
        "what": "share of the Monte Carlo twist's accuracy gain over one sample captured by SMC with the learned "
        f"value as the twist, at N = {top} particles",
        "learned": learned,
        "checkpoints": data["checkpoints"],
        "prompts": data["prompts"],
        "replicates": data["replicates"],
        "budgets": data["budgets"],
        "accuracy_and_token_ratio": acc,
        "paired_smc_learned": pairs,
        "mc_gain_share": data["mc_gain_share"],
        "goals": data["goals"],
        "limits": data["limits"],
        "generated_tokens": data["generated_tokens"],
        "twist_tokens": data["twist_tokens"],
        "seconds": data["seconds"],
        "files": str(folder),
    }
    return (shares.get(str(top)) if top is not None else None), context


def main(argv: list[str]) -> int:
    note = next((a.split("=", 1)[1] for a in argv if a.startswith("note=")), None)
    argv = [a for a in argv if not a.startswith("note=")]
    if argv[:1] == ["--record"] and len(argv) == 2:
        folder = Path(argv[1])
    elif argv and not argv[0].startswith("-"):
        folder = run_steer(Path(argv[0]), argv[1:])
    else:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    value, context = summary(folder)
    record("value_guided_sampling", value, **context, **({"note": note} if note else {}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
