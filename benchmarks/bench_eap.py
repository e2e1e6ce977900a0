"""Speed of the gradient-based discovery methods against plain forward passes of the same model.

Model: 4 layers, d_model 128, 4 heads (d_head 32, d_mlp 512); batch 32 x 12 tokens; resample
ablation; a logit-difference metric at the last position.  Reports (median of repeats):
  EAP / one plain forward pass                          (target at most 5)
  EAP-IG over the inputs, 5 steps / one forward pass
  EAP-IG over the activations (edge-mask IG), 5 steps / one forward pass
  one subnetwork-probing training step / one forward pass (edge SP, KL loss)
For comparison, the README's peer measurements measured auto-circuit on one core: EAP 0.16 s, edge-mask IG 0.72 s.
Run: python benchmarks/bench_eap.py [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse

import torch
from reference_setting import median_seconds, reference_setting

from circuitflow.discovery.eap import eap_scores
from circuitflow.discovery.eap_ig import eap_ig_activations_scores, eap_ig_inputs_scores
from circuitflow.discovery.subnetwork_probing import kl_loss, subnetwork_probing
from circuitflow.io import write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="torch threads (default: as set by the environment)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, graph, clean, ablated = reference_setting()
    metric = lambda logits, index: (logits[:, -1, 3] - logits[:, -1, 7]).sum()
    common = (model, graph, clean, ablated, metric)

    def sp(steps: int):
        return lambda: subnetwork_probing(model, graph, clean, ablated, kl_loss([-1]), lam=1.0, steps=steps, batch_size=32)

    with torch.no_grad():
        forward = median_seconds(lambda: model(clean), repeats=15)
    eap = median_seconds(lambda: eap_scores(*common, batch_size=32), repeats=5)
    ig_inputs = median_seconds(lambda: eap_ig_inputs_scores(*common, steps=5, batch_size=32), repeats=5)
    ig_activations = median_seconds(lambda: eap_ig_activations_scores(*common, steps=5, batch_size=32), repeats=5)
    # per step: the difference between 11 steps and 1 step (setup, the full model's logits) over 10
    sp_step = (median_seconds(sp(11), repeats=3) - median_seconds(sp(1), repeats=3)) / 10

    figures = {
        "edges": graph.n_edges,
        "torch_threads": torch.get_num_threads(),
        "plain_forward_s": forward,
        "eap_s": eap,
        "eap_over_forward": eap / forward,
        "eap_ig_inputs_5_steps_s": ig_inputs,
        "eap_ig_inputs_5_steps_over_forward": ig_inputs / forward,
        "eap_ig_activations_5_steps_s": ig_activations,
        "eap_ig_activations_5_steps_over_forward": ig_activations / forward,
        "sp_step_s": sp_step,
        "sp_step_over_forward": sp_step / forward,
    }
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        write_json_atomic(args.json, figures)


if __name__ == "__main__":
    main()
