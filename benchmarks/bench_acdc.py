"""Speed of ACDC against plain forward passes of the same model.

Model: 4 layers, d_model 128, 4 heads (d_head 32, d_mlp 512), 479 edges; batch 32 x 12 tokens;
resample ablation; KL(full || circuit) at the last position.  Random weights (seed 0), so the
thresholds come from the model's own scale: 1e-2, 1e-3 and 3e-5 keep 21, 94 and 236 of the 479 edges.

Reported per run (best of ``--repeats``; torch threads as set by the environment or ``--threads``):
  decisions            edges decided by evaluating the metric (dead ends are free)
  evaluations          circuits the engine ran (speculation that turned out wrong included)
  s / decision / fwd   ACDC seconds per edge considered / one plain forward pass  (target below 1)
for ACDC at each tau, the same with speculation off (one circuit per engine call, the naive cost),
and the sweep over all taus at once (its decisions summed over taus).
Run: python benchmarks/bench_acdc.py [--json out.json] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.discovery.acdc import acdc_sweep, kl_batches
from circuitflow.graph import Graph
from circuitflow.io import write_json_atomic
from circuitflow.patching import ablation_values, source_outputs

THRESHOLDS = (1e-2, 1e-3, 3e-5)


def best_seconds(fn, repeats: int) -> tuple[float, object]:
    """The fastest of ``repeats`` timed calls (after one warm-up) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=1000,
                                  n_ctx=64, act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg).eval()
    graph = Graph.from_config(cfg)
    clean = torch.randint(0, cfg.d_vocab, (32, 12))
    corrupted = torch.randint(0, cfg.d_vocab, (32, 12))
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    batches = kl_batches(model, graph, clean, ablated, positions=-1, batch_size=32)

    with torch.no_grad():
        forward = statistics.median(best_seconds(lambda: model(clean), 1)[0] for _ in range(15))
    taus = list(THRESHOLDS)

    rows = []

    def measure(label: str, thresholds: list[float], speculation: int) -> None:
        seconds, sweep = best_seconds(lambda: acdc_sweep(model, graph, batches, thresholds, speculation=speculation), args.repeats)
        decisions = sum(sweep.decisions)
        rows.append({
            "run": label,
            "taus": thresholds,
            "edges_kept": [len(c) for c in sweep.circuits],
            "decisions": decisions,
            "evaluations": sweep.n_evaluations,
            "seconds": seconds,
            "seconds_per_decision_over_forward": seconds / decisions / forward,
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
    header = f"{'run':<22} {'kept':>14} {'decisions':>9} {'evals':>6} {'seconds':>8} {'s/decision/fwd':>14}"
    print(header)
    print("-" * len(header))
    for row in rows:
        kept = "/".join(map(str, row["edges_kept"]))
        print(f"{row['run']:<22} {kept:>14} {row['decisions']:>9} {row['evaluations']:>6} {row['seconds']:>8.3f} "
              f"{row['seconds_per_decision_over_forward']:>14.3f}")
    if args.json:
        write_json_atomic(args.json, figures)


if __name__ == "__main__":
    main()
