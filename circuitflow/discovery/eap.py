"""Edge attribution patching (Syed et al. 2023).

    score(edge s -> d) = (ablated_s - clean_s) . dMetric / d(input_d)

summed over positions and averaged over examples: a first-order estimate of how much the metric
changes when that edge alone is ablated.  With the engine's edge mask ``M`` (input_d receives
M * clean_s + (1 - M) * ablated_s) this is exactly minus the gradient of the metric with respect
to ``M`` at ``M = 1``, so EAP costs one forward and one backward pass per batch.
Per-position EAP uses a graph with ``n_positions`` and gives one score per (edge, position).
"""

from __future__ import annotations

from typing import Callable

import torch
from transformer_lens import HookedTransformer
from tqdm.auto import tqdm

from circuitflow.ablation import select_examples
from circuitflow.graph import Graph
from circuitflow.numerics import flush_denormal
from circuitflow.patching import run_circuits

# metric(logits (batch, pos, vocab), example indices (batch,)) -> scalar, summed over the batch
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def eap_scores(
    model: HookedTransformer,
    graph: Graph,
    clean: torch.Tensor,
    ablated: torch.Tensor,
    metric: Metric,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """EAP score of every edge, (n_edges,) float64: the estimated change of the metric when the
    edge is ablated, averaged over examples.

    clean: (n_examples, pos) tokens; ablated: (source, n_examples | 1, pos | 1, d_model) from
    ``ablation_values``; metric: summed over the examples of a batch (it is divided by n_examples
    here).  Rank edges by the absolute score.
    """
    n_examples = clean.shape[0]
    mask = torch.ones(graph.n_edges, dtype=model.cfg.dtype, requires_grad=True)
    gradient = torch.zeros(graph.n_edges, dtype=torch.float64)
    starts = range(0, n_examples, batch_size)
    for start in tqdm(starts, desc="EAP", disable=not progress):
        index = torch.arange(start, min(start + batch_size, n_examples))
        batch_ablated = select_examples(ablated, index)
        logits = run_circuits(model, graph, clean[index], batch_ablated, mask)
        # autograd.grad: only the mask's gradient, nothing accumulated on the model's weights
        with flush_denormal(graph.is_mamba):  # a Mamba scan's gradients decay into subnormals too
            gradient += torch.autograd.grad(metric(logits, index), mask)[0].double()
    return -gradient / n_examples
