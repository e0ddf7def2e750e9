"""The prompt bootstrap of Spearman and AUROC: multiplicities against copies (`cluster_bootstrap`'s two forms).

    python benchmarks/bench_bootstrap.py

bootstrap_speedup_spearman, bootstrap_speedup_auroc: seconds of `cluster_bootstrap` (each replicate
concatenates the drawn prompts' prefixes and ranks them with scipy) divided by seconds of it with
``multiset=True`` (each prefix carries how many copies of its prompt the replicate drew) for the same
statistic on the same draws, at the quickstart's size: 5,637 held-out prefixes of 400 prompts, MC means
k/32, 1000 replicates. Both are timed interleaved in rounds and the medians compared; the CIs must agree
to 1e-12 or the script fails. Evaluation bootstraps these two for every estimator and position group.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prefixvalue.stats import (  # noqa: E402
    CORRELATION_FUNCS,
    auroc,
    cluster_bootstrap,
    weighted_auroc,
    weighted_spearman,
)

from common import record  # noqa: E402

N_PREFIXES, N_PROMPTS, SAMPLES, N_BOOT, ROUNDS = 5637, 400, 32, 1000, 3


def data() -> tuple[np.ndarray, ...]:
    """Quickstart-like prefixes: a value per prefix, its MC mean over 32 samples, its trace's outcome."""
    rng = np.random.default_rng(0)
    prompts = np.sort(rng.integers(0, N_PROMPTS, size=N_PREFIXES))
    truth = np.clip(rng.beta(0.7, 0.6, size=N_PROMPTS)[prompts] + rng.normal(0, 0.15, N_PREFIXES), 0, 1)
    mc = rng.binomial(SAMPLES, truth) / SAMPLES
    value = 1 / (1 + np.exp(-(np.log(truth + 1e-3) - np.log(1 - truth + 1e-3) + rng.normal(0, 0.8, N_PREFIXES))))
    outcome = (rng.random(N_PREFIXES) < truth).astype(float)
    return prompts, value, mc, outcome


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compare(copies, multiset, prompts) -> tuple[float, float, float]:
    """Median seconds of each form over ROUNDS interleaved rounds; ValueError when the CIs differ."""
    slow, fast = [], []
    for _ in range(ROUNDS):
        s, ci_slow = timed(lambda: cluster_bootstrap(copies, prompts, N_BOOT, seed=0, unit="prompt"))
        f, ci_fast = timed(lambda: cluster_bootstrap(multiset, prompts, N_BOOT, 0, unit="prompt", multiset=True))
        if not np.allclose(ci_slow[0], ci_fast[0], rtol=0, atol=1e-12):
            raise ValueError(f"the two bootstraps disagree: {ci_slow} vs {ci_fast}")
        slow.append(s)
        fast.append(f)
    return statistics.median(slow), statistics.median(fast), statistics.median(slow) / statistics.median(fast)


def main() -> None:
    prompts, value, mc, outcome = data()
    spearman = CORRELATION_FUNCS["spearman"]

    def area(i: np.ndarray) -> float:
        v, _ = auroc(value[i], outcome[i])
        return float("nan") if v is None else v

    ctx = {"prefixes": N_PREFIXES, "prompts": N_PROMPTS, "replicates": N_BOOT, "rounds": ROUNDS}
    for name, copies, multiset in (
        ("spearman", lambda i: spearman(value[i], mc[i]), weighted_spearman(value, mc)),
        ("auroc", area, weighted_auroc(value, outcome)),
    ):
        slow, fast, ratio = compare(copies, multiset, prompts)
        record(
            f"bootstrap_speedup_{name}",
            round(ratio, 2),
            target=">= 3",
            definition="cluster_bootstrap seconds / its multiset=True seconds, same draws, CIs equal to 1e-12",
            copies_seconds=round(slow, 3),
            multiset_seconds=round(fast, 3),
            **ctx,
        )


if __name__ == "__main__":
    main()
