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
import statistics
import time

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.graph import Graph
from circuitflow.patching import ablation_values, run_circuits, source_outputs


def median_seconds(fn, repeats: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=1000,
                                  n_ctx=64, act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg).eval()
    graph = Graph.from_config(cfg)
    clean = torch.randint(0, cfg.d_vocab, (32, 12))
    corrupted = torch.randint(0, cfg.d_vocab, (32, 12))
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    one = (torch.rand(graph.n_edges) < 0.5).float()
    many = (torch.rand(64, graph.n_edges) < 0.5).float()

    with torch.no_grad():
        forward = median_seconds(lambda: model(clean))
        one_circuit = median_seconds(lambda: run_circuits(model, graph, clean, ablated, one))
        forwards_64 = median_seconds(lambda: [model(clean) for _ in range(64)], repeats=3)
        circuits_64 = median_seconds(lambda: run_circuits(model, graph, clean, ablated, many), repeats=3)
        model.set_use_split_qkv_input(True)
        model.set_use_attn_result(True)
        split_hooks = median_seconds(lambda: model(clean))
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
