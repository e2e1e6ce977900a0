"""Evaluation against a ground-truth circuit: ROC points, AUCs, and the node-level view (the discovery papers).

Conventions of this module (they differ from the project's "lower is better" losses on purpose):
an *edge score* ranks edges by importance, **higher = more important**, and the circuit at
threshold ``t`` is every edge with ``score >= t``.  A method whose scores are losses (lower = more
important) must negate them first; a method whose sign carries no meaning (EAP) usually passes
``abs(score)``.  Deciding that is the caller's job: nothing here takes an absolute value.

Everything is pure: numpy (or torch) in, numpy / polars out, no files.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import polars as pl
import torch

from circuitflow.circuit import Circuit
from circuitflow.graph import Graph

ROC_COLUMNS = ("threshold", "n_kept", "tp", "fp", "tpr", "fpr")

_NODE = re.compile(r"^(?P<node>a\d+\.\d+|m\d+|input|embed|pos_embed|logits)(\.[qkv])?$")
_ALWAYS_PRESENT = frozenset({"input", "embed", "pos_embed", "logits"})


# ---- input checks ------------------------------------------------------------------------------
def _as_numpy(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _scores(scores, name: str = "scores") -> np.ndarray:
    array = _as_numpy(scores, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one score per edge, shape (n_edges,); got shape {array.shape}.")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {array.dtype}.")
    array = array.astype(np.float64)
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN at edges {np.flatnonzero(np.isnan(array))[:5].tolist()}; fix the method's output (a NaN has no rank).")
    return array


def _truth(truth, n: int, name: str = "truth") -> np.ndarray:
    array = _as_numpy(truth, name)
    if array.dtype != bool:
        raise ValueError(f"{name} must be a boolean vector (True = edge in the ground truth); got dtype {array.dtype}.")
    if array.shape != (n,):
        raise ValueError(f"{name} has shape {array.shape} but there are {n} scores; give one flag per edge.")
    return array


def _counts(truth: np.ndarray) -> tuple[int, int]:
    n_pos = int(truth.sum())
    n_neg = int(truth.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"An ROC curve needs both ground-truth and non-ground-truth edges; got {n_pos} positives and "
            f"{n_neg} negatives. Check that the ground-truth circuit belongs to this graph."
        )
    return n_pos, n_neg


# ---- ROC points --------------------------------------------------------------------------------
def roc_points(scores, truth) -> pl.DataFrame:
    """The ROC curve of a score ranking against a ground-truth circuit.

    scores: float (n_edges,), **higher = more important** (see the module docstring); numpy or torch.
    truth:  bool (n_edges,), True where the edge is in the ground-truth circuit.

    Sweeps the threshold over every distinct score: the circuit at threshold ``t`` keeps the edges
    with ``score >= t``, so edges with tied scores enter together (one point per distinct score).
    Returns a DataFrame with one row per point and columns

        threshold  f64  the threshold; the first row, the empty circuit, has ``+inf``
        n_kept     i64  edges kept (``score >= threshold``)
        tp, fp     i64  kept edges inside / outside the ground truth
        tpr, fpr   f64  tp / #truth edges, fp / #other edges

    ordered by decreasing threshold, hence non-decreasing fpr and tpr: from (fpr, tpr) = (0, 0) to
    (1, 1).  If some score is itself ``+inf`` the first row (``+inf``, empty) is still the empty
    circuit and the second (also ``+inf``) keeps the infinite-score edges.  The order depends only on
    the values, never on the edge order.
    """
    s = _scores(scores)
    t = _truth(truth, s.size)
    n_pos, n_neg = _counts(t)
    order = np.argsort(s, kind="stable")
    ascending, truth_sorted = s[order], t[order]
    positives_below = np.concatenate([[0], np.cumsum(truth_sorted)])  # positives among the i lowest
    thresholds = np.unique(ascending)[::-1]
    first = np.searchsorted(ascending, thresholds, side="left")  # edges below the threshold
    n_kept = s.size - first
    tp = n_pos - positives_below[first]
    fp = n_kept - tp
    return pl.DataFrame(
        {
            "threshold": np.concatenate([[np.inf], thresholds]),
            "n_kept": np.concatenate([[0], n_kept]).astype(np.int64),
            "tp": np.concatenate([[0], tp]).astype(np.int64),
            "fp": np.concatenate([[0], fp]).astype(np.int64),
            "tpr": np.concatenate([[0], tp]) / n_pos,
            "fpr": np.concatenate([[0], fp]) / n_neg,
        }
    )


def roc_from_circuits(circuits, truth, *, pareto: bool = True) -> pl.DataFrame:
    """ROC points of separately found circuits, e.g. ACDC run once per threshold tau.

    circuits: bool (n_circuits, n_edges), one row per circuit; numpy or torch.
    truth:    bool (n_edges,).
    Adds the empty and the full circuit as end points and sorts by (fpr, tpr).  Unlike a score
    sweep, such circuits need not be nested, so tpr may fall while fpr rises; with ``pareto=True``
    (as the ACDC paper's plots do) only the points that no other point beats on both fpr and tpr
    are kept (of equal points, the one of the highest row), so tpr increases with fpr; the two end
    points always stay, to close the curve from fpr 0 to fpr 1 for the AUC functions.
    Columns: ``circuit`` (the row of ``circuits``, null for the two added end points), n_kept, tp,
    fp, tpr, fpr.
    """
    members = _as_numpy(circuits, "circuits")
    if members.dtype != bool or members.ndim != 2:
        raise ValueError(f"circuits must be a bool array (n_circuits, n_edges); got {members.dtype} {members.shape}.")
    t = _truth(truth, members.shape[1])
    n_pos, n_neg = _counts(t)
    tp = np.concatenate([[0, n_pos], (members & t).sum(axis=1)]).astype(np.int64)
    n_kept = np.concatenate([[0, t.size], members.sum(axis=1)]).astype(np.int64)
    fp = n_kept - tp
    index = np.concatenate([[-1, -1], np.arange(members.shape[0])])
    # sort by fpr, then tpr, then circuit row: a total order, so the result is deterministic
    order = np.lexsort((index, tp, fp))
    tp, fp, n_kept, index = tp[order], fp[order], n_kept[order], index[order]
    if pareto:
        # scanning by increasing fpr (and tpr), a point survives when it beats every earlier tpr
        # and no later point has the same fpr with a higher tpr
        keep = np.zeros(tp.size, dtype=bool)
        best = -1
        for i in range(tp.size):
            last_of_fpr = i + 1 == tp.size or fp[i + 1] != fp[i]
            if last_of_fpr and tp[i] > best:
                keep[i] = True
                best = tp[i]
        keep[0] = keep[-1] = True  # the empty and the full circuit: they sort first and last
        tp, fp, n_kept, index = tp[keep], fp[keep], n_kept[keep], index[keep]
    return pl.DataFrame(
        {
            "circuit": pl.Series([None if i < 0 else int(i) for i in index], dtype=pl.Int64),
            "n_kept": n_kept,
            "tp": tp,
            "fp": fp,
            "tpr": tp / n_pos,
            "fpr": fp / n_neg,
        }
    )


def is_nested(kept, thresholds) -> bool:
    """Whether a threshold sweep's circuits are nested: the circuit at every larger threshold a
    subset of the one at every smaller threshold.

    kept: bool (n_thresholds, n_edges), one circuit per threshold (numpy or torch); thresholds:
    (n_thresholds,) distinct numbers, in any order.  Only then does "the largest threshold keeping
    the edge" as a score (ACDC's taus, SP's lambdas) give back every circuit as ``score >= t``, so
    that ``roc_points`` over those scores are the sweep's own ROC points.
    """
    members = _as_numpy(kept, "kept")
    values = _as_numpy(thresholds, "thresholds").astype(np.float64)
    if members.dtype != bool or members.ndim != 2 or values.shape != (members.shape[0],):
        raise ValueError(f"kept must be bool (n_thresholds, n_edges) with one threshold per row; got {members.dtype} {members.shape} and {values.shape} thresholds.")
    if np.unique(values).size != values.size:
        raise ValueError(f"Thresholds must be distinct, got {values.tolist()}.")
    ordered = members[np.argsort(values)]  # ascending threshold: each row must contain the next
    return bool(not (ordered[1:] & ~ordered[:-1]).any())


def roc_points_from_circuits(kept, truth) -> tuple[pl.DataFrame, dict[str, float]]:
    """One ROC point per circuit of a sweep, whether or not the sweep is nested, and the AUCs.

    kept: bool (n_thresholds, n_edges), one circuit per threshold; truth: bool (n_edges,).
    Returns (points, aucs): the points of every circuit plus the empty (0, 0) and the full (1, 1)
    circuit as end points, sorted by (fpr, tpr), no point dropped (columns as ``roc_from_circuits``
    with ``pareto=False``); aucs = {"trapezoid": ..., "pessimistic": ...} over those points.
    """
    points = roc_from_circuits(kept, truth, pareto=False)
    aucs = {"trapezoid": auc_trapezoid(points["fpr"], points["tpr"]),
            "pessimistic": auc_pessimistic(points["fpr"], points["tpr"])}
    return points, aucs


# ---- AUC ---------------------------------------------------------------------------------------
def _curve(fpr, tpr) -> tuple[np.ndarray, np.ndarray]:
    x = _as_numpy(fpr, "fpr").astype(np.float64)
    y = _as_numpy(tpr, "tpr").astype(np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"fpr and tpr must be two vectors of the same length >= 2; got shapes {x.shape} and {y.shape}.")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("fpr or tpr contains NaN.")
    if (np.diff(x) < 0).any():
        raise ValueError("fpr must be sorted in increasing order (roc_points returns it so).")
    if x[0] != 0 or x[-1] != 1:
        raise ValueError(
            f"The curve must run from fpr 0 to fpr 1 (it runs from {x[0]} to {x[-1]}); add the empty "
            "circuit (0, 0) and the full one (1, 1) as end points."
        )
    return x, y


def auc_trapezoid(fpr, tpr) -> float:
    """Area under the ROC curve with straight lines between consecutive points (higher is better).

    fpr, tpr: float (n_points,), sorted by increasing fpr, from fpr 0 to fpr 1 (as ``roc_points``
    returns them).  For a score sweep this equals the Mann-Whitney statistic: the probability that
    a random ground-truth edge outscores a random other edge, ties counting one half.
    """
    x, y = _curve(fpr, tpr)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def auc_pessimistic(fpr, tpr) -> float:
    """The ACDC paper's "pessimistic" ROC AUC: the area under a staircase (higher is better).

    fpr, tpr: float (n_points,), sorted by increasing fpr, from fpr 0 to fpr 1.

    Between consecutive points (x0, y0) and (x1, y1) the curve is taken to go right first, at the
    earlier, lower height y0, and then up to y1: the area is ``sum((x1 - x0) * y0)``.  The
    trapezoid rule would draw the diagonal instead and credit half the rectangle
    ``(x1 - x0) * (y1 - y0)``.  The two differ only where a point moves right and up at once,
    which in a score sweep is a tie between ground-truth and other edges: the pessimistic AUC
    gives such ties no credit.  For a score sweep it is therefore the probability that a random
    ground-truth edge scores *strictly* higher than a random other edge; for separately found
    circuits (``roc_from_circuits``) it assumes nothing between the circuits that were found.
    Always ``auc_pessimistic <= auc_trapezoid`` when tpr does not decrease.
    """
    x, y = _curve(fpr, tpr)
    return float(np.sum(np.diff(x) * y[:-1]))


# ---- nodes -------------------------------------------------------------------------------------
def scored_nodes(graph: Graph) -> tuple[str, ...]:
    """The nodes a node-level ROC ranks, in graph order: every head ``a{l}.{h}`` and MLP ``m{l}``.

    The input and logits nodes are left out: every circuit contains them.
    """
    return tuple(name for name in graph.sources if name not in _ALWAYS_PRESENT)


def _edge_node_indices(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """int (n_edges,) twice: the scored node (index into ``scored_nodes``) at each end of every
    edge, -1 where that end is the input or the logits.  q/k/v inputs fold into their head."""
    index = {name: i for i, name in enumerate(scored_nodes(graph))}
    ends = np.full((2, graph.n_edges), -1, dtype=np.int64)
    for e, edge in enumerate(graph.edge_names):
        for side, end in enumerate(edge.split(" @ ")[0].split(" -> ")):
            match = _NODE.match(end)
            if match is None:  # pragma: no cover - names come from the graph
                raise ValueError(f"Unrecognised node {end!r} in edge {edge!r}.")
            ends[side, e] = index.get(match["node"], -1)
    return ends[0], ends[1]


def _truth_members(graph: Graph, truth_edges) -> np.ndarray:
    if isinstance(truth_edges, Circuit):
        if truth_edges.graph != graph:
            raise ValueError("The ground-truth circuit belongs to another graph; load it with this model's graph.")
        return truth_edges.members.numpy().copy()
    if isinstance(truth_edges, (np.ndarray, torch.Tensor)):
        return _truth(truth_edges, graph.n_edges, "truth_edges")
    if isinstance(truth_edges, str):
        raise ValueError("truth_edges must be a collection of edge names, not one string.")
    return Circuit.from_edges(graph, truth_edges).members.numpy().copy()


def node_truth_and_scores(
    graph: Graph, edge_scores, truth_edges: Circuit | Iterable[str] | np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Node-level scores and ground truth from edge-level ones, for node ROC curves.

    graph:       the model's graph.
    edge_scores: float (n_edges,) in ``graph.edge_names`` order, higher = more important.
    truth_edges: the ground truth: a Circuit of ``graph``, edge names, or bool (n_edges,).
    Returns ``(node_scores, node_truth)``: float (n_nodes,) and bool (n_nodes,) over
    ``scored_nodes(graph)`` (heads and MLPs in graph order).  A node's score is the largest score
    of the edges touching it, as source or destination (so a node enters the circuit at the
    threshold where its first edge does); a node is in the truth when a ground-truth edge touches
    it.  q/k/v inputs count as their head ("a3.0.v" is node "a3.0"); per-position edges count for
    their node at every position; input and logits nodes are not scored (always present).
    """
    scores = _scores(edge_scores, "edge_scores")
    if scores.size != graph.n_edges:
        raise ValueError(f"edge_scores has {scores.size} entries but the graph has {graph.n_edges} edges.")
    members = _truth_members(graph, truth_edges)
    n_nodes = len(scored_nodes(graph))
    node_scores = np.full(n_nodes, -np.inf)
    node_truth = np.zeros(n_nodes, dtype=bool)
    for ends in _edge_node_indices(graph):
        touches = ends >= 0
        np.maximum.at(node_scores, ends[touches], scores[touches])
        node_truth[ends[touches & members]] = True
    return node_scores, node_truth
