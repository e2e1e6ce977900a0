"""Speed of the patching engine against plain forward passes of the same model.

Model: 4 layers, d_model 128, 4 heads (d_head 32, d_mlp 512); batch 32 x 12 tokens; resample ablation.
Reports (median of repeats, torch threads as set by the environment):
  one circuit / one plain forward pass             (target at most 1.5)
  64 circuits in one call / 64 plain forward passes (target below 1)
  TransformerLens's own split q/k/v + per-head result hooks / one plain forward, for context.
Run: python benchmarks/bench_patching.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch
from reference_setting import median_seconds, reference_setting

from circuitflow.patching import run_circuits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    model, graph, clean, ablated = reference_setting()
    one = (torch.rand(graph.n_edges) < 0.5).float()
    many = (torch.rand(64, graph.n_edges) < 0.5).float()

    with torch.no_grad():
        forward = median_seconds(lambda: model(clean), repeats=7)
        one_circuit = median_seconds(lambda: run_circuits(model, graph, clean, ablated, one), repeats=7)
        forwards_64 = median_seconds(lambda: [model(clean) for _ in range(64)], repeats=3)
        circuits_64 = median_seconds(lambda: run_circuits(model, graph, clean, ablated, many), repeats=3)
        model.set_use_split_qkv_input(True)
        model.set_use_attn_result(True)
        split_hooks = median_seconds(lambda: model(clean), repeats=7)
        model.set_use_split_qkv_input(False)
        model.set_use_attn_result(False)

    figures = {
        "edges": graph.n_edges,
        "torch_threads": torch.get_num_threads(),
        "plain_forward_s": forward,
        "one_circuit_s": one_circuit,
        "one_circuit_over_forward": one_circuit / forward,
        "64_circuits_one_call_s": circuits_64,
        "64_plain_forwards_s": forwards_64,
        "64_circuits_over_64_forwards": circuits_64 / forwards_64,
        "circuits_per_second": 64 / circuits_64,
        "transformer_lens_split_qkv_over_forward": split_hooks / forward,
    }
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
