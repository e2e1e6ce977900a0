"""Cutting circuits from per-edge scores: by threshold, by count, or by a faithfulness target.

Scores rank edges (higher = more important); ties are broken by edge index so the same scores
always give the same circuit, in every process.
"""

from __future__ import annotations

from typing import Callable

import torch

from circuitflow.circuit import Circuit
from circuitflow.graph import Graph


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Edge indices from most to least important; (n_edges,) -> (n_edges,). Stable on ties."""
    return torch.sort(scores, descending=True, stable=True).indices


def top_n(graph: Graph, scores: torch.Tensor, n: int) -> Circuit:
    """The ``n`` highest-scoring edges."""
    if not 0 <= n <= graph.n_edges:
        raise ValueError(f"Cannot keep {n} edges of a graph with {graph.n_edges}.")
    members = torch.zeros(graph.n_edges, dtype=torch.bool)
    members[ranking(scores)[:n]] = True
    return Circuit(graph, members)


def above_threshold(graph: Graph, scores: torch.Tensor, threshold: float) -> Circuit:
    """Every edge whose score is at least ``threshold``."""
    return Circuit(graph, scores >= threshold)


def top_n_masks(graph: Graph, scores: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """(len(sizes), n_edges) float masks of the top-n circuits, for evaluating many at once."""
    order = ranking(scores)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(graph.n_edges)
    return (rank[None, :] < torch.tensor(sizes)[:, None]).float()


def smallest_reaching(
    graph: Graph, scores: torch.Tensor, faithfulness: Callable[[torch.Tensor], torch.Tensor], target: float, sizes: list[int]
) -> Circuit:
    """The smallest top-n circuit (n from ``sizes``) whose faithfulness loss is at most ``target``.

    faithfulness: (circuit, n_edges) masks -> (circuit,) losses, lower is better.
    """
    sizes = sorted(sizes)
    losses = faithfulness(top_n_masks(graph, scores, sizes))
    for size, loss in zip(sizes, losses.tolist()):
        if loss <= target:
            return top_n(graph, scores, size)
    raise ValueError(f"No circuit of up to {sizes[-1]} edges reaches faithfulness {target}; raise the target or the sizes.")
