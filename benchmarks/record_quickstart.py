"""Record a quickstart run's wall clock as ``quickstart_seconds`` in benchmarks/results.json.

    python benchmarks/record_quickstart.py runs/quickstart      # after `prefixvalue quickstart` (make quickstart)

Reads RUN_DIR/metrics.json. Only a fresh run (started from an empty folder) is recorded: a run that
resumed finished stages would understate the time.
"""

from __future__ import annotations

import sys

from common import record, run_metrics


def main(argv: list[str]) -> int:
    metrics = run_metrics(argv, __doc__)
    if metrics is None:
        return 2
    q = metrics["quickstart"]
    if not q.get("fresh_run"):
        print("quickstart_seconds not recorded: this run resumed an existing folder (time it from an empty one)")
        return 0
    record(
        "quickstart_seconds",
        q["seconds"]["total"],
        unit="s",
        target="<= 900",
        stages=q["seconds"],
        num_prompts=q["config"]["collect"]["num_prompts"],
        samples=q["config"]["collect"]["traces_per_prompt"],  # traces per prompt (results.json key as before)
        labelled_prefixes=metrics["n_prefixes"],
        config=str(q["config"]["out"]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
