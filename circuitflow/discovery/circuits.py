"""Cutting circuits from per-edge scores: by threshold, by count, or by a faithfulness target.

Scores rank edges (higher = more important); ties are broken by edge index so the same scores
always give the same circuit, in every process.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from circuitflow.circuit import Circuit
from circuitflow.graph import Graph
from circuitflow.settings import CircuitRule


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


def search_sizes(n_edges: int) -> list[int]:
    """The circuit sizes searched for the smallest one reaching a target: every size up to 256
    edges, else 0 and 128 log-spaced sizes up to every edge (both start empty and end full)."""
    if n_edges <= 256:
        return list(range(n_edges + 1))
    return [0, *np.unique(np.round(np.geomspace(1, n_edges, 128)).astype(int)).tolist()]


def cut_circuit(
    graph: Graph, scores: torch.Tensor, rule: CircuitRule, measure: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    truth_size: int | None = None,
) -> tuple[Circuit, float, float]:
    """The circuit a method's scores give under ``rule``, with the fraction of the model's score it
    recovers and its accuracy.

    ``rule.size``: an integer (the top-n edges), or ``ground_truth``: the known circuit's size
    (``truth_size``) where there is one, so methods are compared at equal size; otherwise the
    smallest top-n circuit whose accuracy reaches ``rule.accuracy`` when that is set, else whose
    recovered fraction reaches ``rule.recovered``.
    measure: (circuit, n_edges) masks, the first empty and the last full -> ((circuit,) fractions
    of the model's score recovered, 0 for the empty circuit and 1 for the model; (circuit,)
    accuracies in [0, 1]).
    """
    size = truth_size if rule.size == "ground_truth" else rule.size
    sizes = search_sizes(graph.n_edges) if size is None else [0, size, graph.n_edges]
    recovered, accuracy = (values.tolist() for values in measure(top_n_masks(graph, scores, sizes)))
    if size is not None:
        return top_n(graph, scores, size), float(recovered[1]), float(accuracy[1])
    reached = accuracy if rule.accuracy is not None else recovered
    target = rule.accuracy if rule.accuracy is not None else rule.recovered
    reaching = [n for n, value in zip(sizes, reached) if value >= target]
    n_keep = reaching[0] if reaching else graph.n_edges
    at = sizes.index(n_keep)
    return top_n(graph, scores, n_keep), float(recovered[at]), float(accuracy[at])
