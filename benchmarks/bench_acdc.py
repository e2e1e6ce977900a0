"""Speed of ACDC against plain forward passes of the same model.

Model: 4 layers, d_model 128, 4 heads (d_head 32, d_mlp 512), 479 edges; batch 32 x 12 tokens;
resample ablation; KL(full || circuit) at the last position.  Random weights (seed 0), so the
thresholds come from the model's own scale: 1e-2, 1e-3 and 3e-5 keep 21, 94 and 236 of the 479 edges.

Reported per run (torch threads as set by the environment or ``--threads``):
  decisions            edges decided by evaluating the metric (dead ends are free)
  evaluations          circuits the engine ran (speculation that turned out wrong included)
  seconds              ACDC's wall-clock seconds (median of ``--repeats``, after a warm-up)
  s / decision / fwd   ACDC seconds per edge considered / one plain forward pass  (target below 1)
  cpu ratio            the same ratio in this process's CPU time
for ACDC at each tau, the same with speculation off (one circuit per engine call, the naive cost),
and the sweep over all taus at once (its decisions summed over taus).  The plain forward pass
(``model(clean)``, median of 15) is timed again just before every timed ACDC run, each repeat's
ratio uses its own, and the median ratio over repeats is reported: on shared cores whose load
changes during the benchmark the ratio stays comparable where the seconds do not.  The CPU-time
ratio is the steadier of the two there (time spent waiting for a core does not count).
Run: python benchmarks/bench_acdc.py [--json out.json] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from reference_setting import reference_setting

from circuitflow.discovery.acdc import acdc_sweep, kl_batches
from circuitflow.io import write_json_atomic

THRESHOLDS = (1e-2, 1e-3, 3e-5)


def timed(fn) -> tuple[float, float, object]:
    """(wall-clock seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def plain_forward_seconds(model, tokens) -> tuple[float, float]:
    """One plain forward pass of ``model`` on ``tokens``: the median (wall, CPU) seconds of 15 calls."""
    with torch.no_grad():
        model(tokens)
        calls = [timed(lambda: model(tokens))[:2] for _ in range(15)]
    return statistics.median(w for w, _ in calls), statistics.median(c for _, c in calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, graph, clean, ablated = reference_setting()
    batches = kl_batches(model, graph, clean, ablated, positions=-1, batch_size=32)

    forward, _ = plain_forward_seconds(model, clean)
    taus = list(THRESHOLDS)

    rows = []

    def measure(label: str, thresholds: list[float], speculation: int) -> None:
        def run():
            return acdc_sweep(model, graph, batches, thresholds, speculation=speculation)

        sweep = run()  # warm-up
        decisions = sum(sweep.decisions)
        walls, ratios, cpu_ratios = [], [], []
        for _ in range(args.repeats):
            forward_wall, forward_cpu = plain_forward_seconds(model, clean)
            wall, cpu, sweep = timed(run)
            walls.append(wall)
            ratios.append(wall / decisions / forward_wall)
            cpu_ratios.append(cpu / decisions / forward_cpu)
        rows.append({
            "run": label,
            "taus": thresholds,
            "edges_kept": [len(c) for c in sweep.circuits],
            "decisions": decisions,
            "evaluations": sweep.n_evaluations,
            "seconds": statistics.median(walls),
            "seconds_per_decision_over_forward": statistics.median(ratios),
            "cpu_seconds_per_decision_over_forward": statistics.median(cpu_ratios),
            "ratio_per_repeat": ratios,
        })

    for tau in taus:
        measure(f"acdc tau={tau:.3g}", [tau], speculation=8)
        measure("  no speculation", [tau], speculation=1)
    measure("sweep, all taus", taus, speculation=8)

    figures = {
        "edges": graph.n_edges,
        "torch_threads": torch.get_num_threads(),
        "plain_forward_s": forward,
        "runs": rows,
    }
    print(f"edges {graph.n_edges}, torch threads {torch.get_num_threads()}, plain forward {forward * 1e3:.2f} ms")
    header = f"{'run':<22} {'kept':>14} {'decisions':>9} {'evals':>6} {'seconds':>8} {'s/decision/fwd':>14} {'cpu ratio':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        kept = "/".join(map(str, row["edges_kept"]))
        print(f"{row['run']:<22} {kept:>14} {row['decisions']:>9} {row['evaluations']:>6} {row['seconds']:>8.3f} "
              f"{row['seconds_per_decision_over_forward']:>14.3f} {row['cpu_seconds_per_decision_over_forward']:>9.3f}")
    if args.json:
        write_json_atomic(args.json, figures)


if __name__ == "__main__":
    main()
