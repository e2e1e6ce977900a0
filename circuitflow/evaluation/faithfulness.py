"""Faithfulness of circuits: how far a circuit's behavior score is from the full model's.

m(C) = mean over examples of (s_C - s_M)^2, lower is better (Shi et al. 2024), where s is the
behavior's per-example score.  Many circuits are evaluated at once, stacked along the batch.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformer_lens import HookedTransformer

from circuitflow.ablation import select_examples
from circuitflow.graph import Graph
from circuitflow.patching import full_model_logits, run_circuits

# score(circuit logits (batch, pos, vocab), model logits (batch, pos, vocab), example indices) -> (batch,)
Score = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def per_example_scores(
    model: HookedTransformer,
    graph: Graph,
    clean: torch.Tensor,
    ablated: torch.Tensor,
    masks: torch.Tensor,
    score: Score,
    *,
    batch_size: int = 64,
    circuits_per_call: int = 16,
) -> torch.Tensor:
    """Behavior scores s_C of every circuit on every example, (circuit, n_examples); lower is better.

    clean: (n_examples, pos) tokens; ablated: (source, n_examples | 1, pos | 1, d_model);
    masks: (circuit, n_edges).
    """
    n_examples = clean.shape[0]
    out = torch.empty(masks.shape[0], n_examples, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, n_examples, batch_size):
            index = torch.arange(start, min(start + batch_size, n_examples))
            batch_ablated = select_examples(ablated, index)
            model_logits = full_model_logits(model, graph, clean[index])
            for first in range(0, masks.shape[0], circuits_per_call):
                chunk = masks[first : first + circuits_per_call]
                logits = run_circuits(model, graph, clean[index], batch_ablated, chunk)
                for c in range(chunk.shape[0]):
                    out[first + c, index] = score(logits[c], model_logits, index).double()
    return out


def faithfulness_loss(circuit_scores: torch.Tensor, model_scores: torch.Tensor) -> torch.Tensor:
    """m(C) per circuit: (circuit, n_examples), (n_examples,) -> (circuit,); lower is better."""
    return ((circuit_scores - model_scores) ** 2).mean(-1)
