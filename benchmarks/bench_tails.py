"""Calibration of the tail verdict (``evaluation/tails.py``): how often it calls light tails heavy,
and how often it calls Pareto tails heavy, at the pipeline's sample sizes.

For each sample size n (300 and 10^3, small runs; 10^4 = 100 x 100 clean x corrupted pairs, the default run; 10^6 =
1,000 x 1,000, the full setting) and each distribution, ``--replicates`` seeded samples (fewer at
10^6, ``--replicates-large``) are drawn and ``tail_verdict`` applied.  Distributions:
  light  exponential(1), half-normal |N(0, 1)|, normal N(0, 1)
  heavy  Pareto with tail index alpha 1.5, 2, 3 (P(X > x) = x^-alpha, x >= 1)
Reported per (distribution, n): the rate of each verdict (heavy / light / undetermined) and the
5%, 50%, 95% quantiles of the statistic z (the 1/k-weighted median of the Hill plot's standard
errors above the exponential's), from which the thresholds in ``tails.py`` were chosen.
Run: python benchmarks/bench_tails.py [--replicates 200] [--replicates-large 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from circuitflow.evaluation.tails import tail_verdict

SIZES = (300, 1_000, 10_000, 1_000_000)
DISTRIBUTIONS = {
    "exponential": lambda rng, n: rng.exponential(size=n),
    "half-normal": lambda rng, n: np.abs(rng.normal(size=n)),
    "normal": lambda rng, n: rng.normal(size=n),
    "pareto-1.5": lambda rng, n: rng.pareto(1.5, size=n) + 1,
    "pareto-2": lambda rng, n: rng.pareto(2.0, size=n) + 1,
    "pareto-3": lambda rng, n: rng.pareto(3.0, size=n) + 1,
}


def measure(name: str, n: int, replicates: int) -> dict:
    """Verdict rates and z quantiles of ``replicates`` samples (seeds 0..replicates-1 per case)."""
    draw = DISTRIBUTIONS[name]
    zs, verdicts = [], []
    for seed in range(replicates):
        verdict = tail_verdict(draw(np.random.default_rng([seed, n, list(DISTRIBUTIONS).index(name)]), n))
        zs.append(verdict.z)
        verdicts.append(verdict.verdict)
    z = np.array(zs)
    rates = {v: verdicts.count(v) / replicates for v in ("heavy", "light", "undetermined")}
    return {"distribution": name, "n": n, "replicates": replicates, **rates,
            "z_q05": float(np.quantile(z, 0.05)), "z_q50": float(np.median(z)), "z_q95": float(np.quantile(z, 0.95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--replicates-large", type=int, default=50, help="replicates at n = 10^6")
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args()
    rows = []
    print(f"{'distribution':<12} {'n':>9} {'reps':>5} {'heavy':>6} {'light':>6} {'undet.':>6} {'z q05':>7} {'z q50':>7} {'z q95':>7} {'s':>6}")
    for n in SIZES:
        for name in DISTRIBUTIONS:
            start = time.perf_counter()
            row = measure(name, n, args.replicates_large if n >= 10**6 else args.replicates)
            rows.append(row)
            print(f"{name:<12} {n:>9} {row['replicates']:>5} {row['heavy']:>6.3f} {row['light']:>6.3f} {row['undetermined']:>6.3f} "
                  f"{row['z_q05']:>7.2f} {row['z_q50']:>7.2f} {row['z_q95']:>7.2f} {time.perf_counter() - start:>6.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
