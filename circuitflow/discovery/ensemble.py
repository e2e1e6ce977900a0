"""A rank-averaged ensemble of discovery methods, and connected circuit selection.

``rank_average``: each method's scores (n_edges,), HIGHER = MORE IMPORTANT, become ranks 0..n-1 in
ascending order (0 the least important); edges with equal scores share the mean of the ranks they
span (so -inf scores of ACDC or SP, "never kept", tie among themselves whatever their order), and
the ensemble score is the mean rank over the methods divided by n - 1: a number in [0, 1], HIGHER =
MORE IMPORTANT.  No Python hash or set order enters: the same inputs give the same scores.
The ``ensemble`` method (``discovery.METHODS``) runs the listed methods with their default settings
and averages their ranks.

``connected_top_n``: the MIB shared task found that how a circuit is cut from scores matters as much
as the scores.  Greedy from the logits backwards (as EAP-IG's ``apply_greedy``): the candidates are
the edges into nodes already in the circuit (at first the logits); take the best candidate, add its
source node, make that node's incoming edges candidates; repeat for ``n`` edges.  Then drop the
edges that lie on no input -> logits path (``evaluation.mib.connected_edges``): the circuit keeps no
dangling edge.  Ties go to the lower edge index.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

import torch

from circuitflow.circuit import Circuit
from circuitflow.evaluation.mib import connected_edges, edge_nodes
from circuitflow.graph import Graph


def scores_to_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Ascending ranks of ``scores`` (n,), float64 (n,) in [0, n-1]; ties get their mean rank."""
    if scores.dim() != 1 or scores.shape[0] == 0:
        raise ValueError(f"Scores must be a non-empty vector, got shape {tuple(scores.shape)}.")
    if torch.isnan(scores).any():
        raise ValueError("The scores contain NaN; a score must be a number (HIGHER = more important).")
    values, order = torch.sort(scores.double(), stable=True)
    _, counts = torch.unique_consecutive(values, return_counts=True)
    ends = counts.cumsum(0).double()  # one past each tie group's last position
    mean_rank = ends - (counts.double() + 1) / 2  # the mean of positions end-count .. end-1
    ranks = torch.empty(scores.shape[0], dtype=torch.float64)
    ranks[order] = torch.repeat_interleave(mean_rank, counts)
    return ranks


def rank_average(scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The ensemble of methods' scores {name: (n_edges,)}: the mean of their ranks over n_edges - 1,
    float64 (n_edges,) in [0, 1], HIGHER = MORE IMPORTANT.  The methods' order does not matter."""
    if not scores:
        raise ValueError("The ensemble needs the scores of at least one method.")
    shapes = {name: tuple(value.shape) for name, value in scores.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"Every method must score the same edges; got shapes {shapes}.")
    ranks = torch.stack([scores_to_ranks(scores[name]) for name in sorted(scores)])
    n = ranks.shape[1]
    return ranks.mean(0) / max(n - 1, 1)


def connected_top_n(graph: Graph, scores: torch.Tensor, n: int) -> Circuit:
    """A circuit of at most ``n`` edges of ``graph`` chosen greedily from the logits backwards by
    ``scores`` (n_edges,), HIGHER = MORE IMPORTANT, pruned to input -> logits paths (see the module
    docstring).  Every edge of the result lies on a path from an input to the logits."""
    if scores.shape != (graph.n_edges,):
        raise ValueError(f"Expected one score per edge ({graph.n_edges}), got shape {tuple(scores.shape)}.")
    if torch.isnan(scores).any():
        raise ValueError("The scores contain NaN; a score must be a number (HIGHER = more important).")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a whole number of edges >= 0, got {n!r}.")
    src, node = edge_nodes(graph)
    into: list[list[int]] = [[] for _ in range(graph.n_sources + 1)]  # edge indices entering each node
    for edge, target in enumerate(node.tolist()):
        into[target].append(edge)
    values, sources = scores.double().tolist(), src.tolist()
    members = torch.zeros(graph.n_edges, dtype=torch.bool)
    frontier = [(-values[e], e) for e in into[graph.n_sources]]  # the logits' incoming edges
    heapq.heapify(frontier)
    in_circuit = {graph.n_sources}
    taken = 0
    while frontier and taken < n:
        _, edge = heapq.heappop(frontier)
        members[edge] = True
        taken += 1
        if sources[edge] not in in_circuit:
            in_circuit.add(sources[edge])
            for incoming in into[sources[edge]]:
                heapq.heappush(frontier, (-values[incoming], incoming))
    return Circuit(graph, connected_edges(graph, members))


__all__ = ["connected_top_n", "rank_average", "scores_to_ranks"]
