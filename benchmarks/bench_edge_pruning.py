"""Cost of edge pruning and of MIB scoring against plain forward passes of the same model.

Model: the benchmarks' shared reference setting (reference_setting.py: 4 layers, d_model 128,
4 heads, 479 edges; 32 clean inputs of 12 tokens; resample ablation).  Reports (median of repeats):
  one edge-pruning training step / one forward pass (KL at the last position, batch 32)
  one edge-pruning run with the default settings (settings.EdgePruningSettings) / one forward pass
  MIB scoring of one method's scores (10 sizes x 2 rankings, pruning, every circuit through the
  engine; a logit difference at the last position) / one forward pass
Run: python benchmarks/bench_edge_pruning.py [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from reference_setting import median_seconds, reference_setting

from circuitflow.discovery.edge_pruning import edge_pruning
from circuitflow.discovery.subnetwork_probing import kl_loss
from circuitflow.evaluation.mib import logit_difference, mib_scores
from circuitflow.io import write_json_atomic
from circuitflow.settings import EdgePruningSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="torch threads (default: as set by the environment)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, graph, clean, ablated = reference_setting()
    defaults = dataclasses.asdict(EdgePruningSettings())

    def pruning(steps: int):
        return lambda: edge_pruning(model, graph, clean, ablated, kl_loss([-1]), batch_size=32, **{**defaults, "steps": steps})

    answer, wrong = torch.full((clean.shape[0],), 3), torch.full((clean.shape[0],), 7)
    scores = torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    with torch.no_grad():
        forward = median_seconds(lambda: model(clean), repeats=15)
    # per step: the difference between 11 steps and 1 step (setup, the full model's logits) over 10
    step = (median_seconds(pruning(11), repeats=3) - median_seconds(pruning(1), repeats=3)) / 10
    run = median_seconds(pruning(defaults["steps"]), repeats=1)
    mib = median_seconds(lambda: mib_scores(model, graph, clean, ablated, logit_difference(answer, wrong), scores, batch_size=32), repeats=3)

    figures = {
        "edges": graph.n_edges,
        "torch_threads": torch.get_num_threads(),
        "plain_forward_s": forward,
        "edge_pruning_step_s": step,
        "edge_pruning_step_over_forward": step / forward,
        "edge_pruning_default_steps": defaults["steps"],
        "edge_pruning_run_s": run,
        "edge_pruning_run_over_forward": run / forward,
        "mib_scoring_s": mib,
        "mib_scoring_over_forward": mib / forward,
    }
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        write_json_atomic(args.json, figures)


if __name__ == "__main__":
    main()
