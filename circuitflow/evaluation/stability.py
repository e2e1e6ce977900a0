"""How stable a circuit is across models: the same method run on several weight vectors (posterior
samples, or organisms trained from other seeds), its top-n circuits compared.

    inclusion_frequency  per edge, the fraction of the models whose circuit holds it
    jaccard_matrix       |A & B| / |A | B| for every pair of circuits (1 on the diagonal; two empty
                         circuits count as equal)
    mean_jaccard         the mean over the distinct pairs (1 for a single circuit)
"""

from __future__ import annotations

import numpy as np


def top_n_members(scores: np.ndarray, n: int) -> np.ndarray:
    """bool (model, n_edges): each row's n highest-scoring edges (ties broken by the lower index).
    scores: (model, n_edges), higher = more important."""
    if not 0 <= n <= scores.shape[1]:
        raise ValueError(f"A top-n circuit needs 0 <= n <= {scores.shape[1]} edges, got n={n}.")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    members = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(members, order, True, axis=1)
    return members


def inclusion_frequency(members: np.ndarray) -> np.ndarray:
    """(model, n_edges) bool -> (n_edges,) float: the fraction of models whose circuit holds the edge."""
    return members.mean(axis=0)


def jaccard_matrix(members: np.ndarray) -> np.ndarray:
    """(model, n_edges) bool -> (model, model) float: |A & B| / |A | B| (1 where both are empty)."""
    m = members.astype(np.int64)
    both = m @ m.T
    sizes = m.sum(1)
    either = sizes[:, None] + sizes[None, :] - both
    return np.where(either == 0, 1.0, both / np.maximum(either, 1))


def mean_jaccard(members: np.ndarray) -> float:
    """The mean Jaccard index over the distinct pairs of circuits (1.0 for fewer than two)."""
    k = members.shape[0]
    if k < 2:
        return 1.0
    matrix = jaccard_matrix(members)
    return float(matrix[np.triu_indices(k, 1)].mean())


def group_stability(scores: np.ndarray, n_saved: np.ndarray, n: int) -> dict[str, float]:
    """A group of models' circuit stability.  scores (model, n_edges), higher = more important;
    n_saved (model,): each model's saved circuit size; n: the common size of the top-n circuits.
    Returns the mean Jaccard of the top-n circuits and of the saved ones (each its own size), how
    many edges every top-n circuit holds and how many some one holds, and the mean inclusion
    frequency of the edges some one holds."""
    top = top_n_members(scores, n)
    saved = np.stack([top_n_members(row[None], int(size))[0] for row, size in zip(scores, n_saved)])
    frequency = inclusion_frequency(top)
    held = frequency > 0
    return {"jaccard_top_n": mean_jaccard(top), "jaccard_saved": mean_jaccard(saved), "edges_in_all": int((frequency == 1).sum()),
            "edges_in_any": int(held.sum()), "inclusion_mean": float(frequency[held].mean()) if held.any() else 0.0}
