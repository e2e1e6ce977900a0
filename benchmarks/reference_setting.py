"""The setting the speed benchmarks share (the README's peer measurements, where the peers were measured): a random
model of 4 layers, d_model 128, 4 heads (d_head 32), d_mlp 512, vocab 1,000, LayerNorm, GELU
(torch seed 0), 32 clean and 32 corrupted inputs of 12 tokens, and resample ablation values."""

from __future__ import annotations

import statistics
import time

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.graph import Graph
from circuitflow.ablation import ablation_values
from circuitflow.patching import source_outputs


def reference_setting() -> tuple[HookedTransformer, Graph, torch.Tensor, torch.Tensor]:
    """(model, graph, clean tokens (32, 12), resample ablation values); seeds torch's global RNG
    with 0, so what a benchmark draws afterwards is the same on every run."""
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=1000,
                                  n_ctx=64, act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg).eval()
    graph = Graph.from_config(cfg)
    clean = torch.randint(0, cfg.d_vocab, (32, 12))
    corrupted = torch.randint(0, cfg.d_vocab, (32, 12))
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    return model, graph, clean, ablated


def median_seconds(fn, repeats: int) -> float:
    """The median wall-clock seconds of ``repeats`` calls of ``fn``, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
