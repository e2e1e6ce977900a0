"""Speed of the patching engine and of EAP / positional EAP-IG on a Mamba model, against plain
HookedMamba forward passes of the same model (Ensign & Garriga-Alonso 2024).

Model: a random 4-layer Mamba, d_model 64 (d_inner 128, d_state 16), vocab 1,000 (torch seed 0);
batch 32 x 12 tokens; resample ablation; a logit-difference metric at the last position.
Reports (median of repeats):
  masked forward (all edges kept, one circuit) / plain forward
  EAP / plain forward
  positional EAP-IG over the inputs, 5 steps, one score per (edge, position) / plain forward
The plain forward is mamba-lens's own (its unfused scan, with hook points); set MALLOC_MMAP_THRESHOLD_
and MALLOC_TRIM_THRESHOLD_ as the Makefile does before comparing runs with more than ~32 tokens.
Run: python benchmarks/bench_mamba.py [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse

import torch
from reference_setting import median_seconds

from circuitflow.discovery.eap import eap_scores
from circuitflow.discovery.eap_ig import eap_ig_inputs_scores
from circuitflow.graph import Graph
from circuitflow.io import write_json_atomic
from circuitflow.models.mamba import MambaCfg, hooked_mamba
from circuitflow.ablation import ablation_values
from circuitflow.patching import run_circuits, source_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="torch threads (default: as set by the environment)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = hooked_mamba(MambaCfg(d_model=64, n_layers=4, vocab_size=1000, n_ctx=64, device="cpu"))
    clean, corrupted = torch.randint(0, 1000, (32, 12)), torch.randint(0, 1000, (32, 12))
    graph, positional = Graph.from_config(model.cfg), Graph.from_config(model.cfg, n_positions=clean.shape[1])
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    metric = lambda logits, index: (logits[:, -1, 3] - logits[:, -1, 7]).sum()
    everything = torch.ones(graph.n_edges)

    with torch.no_grad():
        forward = median_seconds(lambda: model(clean), repeats=15)
        masked = median_seconds(lambda: run_circuits(model, graph, clean, ablated, everything), repeats=15)
    eap = median_seconds(lambda: eap_scores(model, graph, clean, ablated, metric, batch_size=32), repeats=5)
    ig = median_seconds(lambda: eap_ig_inputs_scores(model, positional, clean, ablated, metric, steps=5, batch_size=32), repeats=3)

    figures = {
        "edges": graph.n_edges,
        "positional_edges": positional.n_edges,
        "torch_threads": torch.get_num_threads(),
        "plain_forward_s": forward,
        "masked_forward_s": masked,
        "masked_over_forward": masked / forward,
        "eap_s": eap,
        "eap_over_forward": eap / forward,
        "positional_eap_ig_inputs_5_steps_s": ig,
        "positional_eap_ig_inputs_5_steps_over_forward": ig / forward,
    }
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        write_json_atomic(args.json, figures)


if __name__ == "__main__":
    main()
