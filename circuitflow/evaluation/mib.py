"""MIB's circuit-localization scores (Mueller et al. 2025; MIB, Mueller et al. 2025): faithfulness at a size,
CPR and CMD.

For each size k in ``MIB_SIZES`` (fractions of all edges), the circuit C_k is the top
``floor(k |E|)`` edges by score, then pruned of the edges that lie on no path from the input to the
logits (``connected_edges``).  With m the behavior's metric averaged over the examples (HIGHER = more
of the behavior; for logit-difference behaviors logit[answer] - logit[wrong] at the last token),

    f_k = (m(C_k) - m(empty)) / (m(full) - m(empty)),     empty = every edge ablated,

and over the linear k axis (so the interval 0.5..1 carries half the weight), with trapezoids,

    CPR = area under f_k,        circuits ranked by SIGNED scores (higher is better),
    CMD = area under |1 - f_k|,  circuits ranked by ABSOLUTE scores (0 is best).

Scores are per edge, HIGHER = MORE IMPORTANT; equal scores are taken in edge-index order, so the
circuits are the same in every process.  Every circuit runs through the patching engine
(``run_circuits``), all of them batched together; identical circuits run once.

Dimension names: source, dest, circuit, batch, pos, vocab, n_edges.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import polars as pl
import torch
from transformer_lens import HookedTransformer

from circuitflow.graph import Graph
from circuitflow.patching import run_circuits

MIB_SIZES: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
RANKINGS: tuple[str, ...] = ("signed", "absolute")
FRAME_COLUMNS = ("ranking", "k", "n_edges_requested", "n_edges_kept", "m", "f")

# metric(logits (batch, pos, vocab), example indices (batch,)) -> (batch,), HIGHER = more of the behavior
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---- circuit structure ---------------------------------------------------------------------------
def edge_nodes(graph: Graph) -> tuple[torch.Tensor, torch.Tensor]:
    """(source index (n_edges,), destination node (n_edges,)) of every edge, long: the destination's
    node is the source index of the head or MLP it feeds (q/k/v inputs belong to their head), or
    ``graph.n_sources`` for the logits.  Per-position and q/k/v direct edges are refused."""
    if graph.n_positions is not None or graph.qkv_direct_edges:
        raise ValueError("MIB scoring works on plain residual graphs; build the graph without n_positions and qkv_direct_edges.")
    dst, src = graph.parents.T.nonzero(as_tuple=True)  # the graph's edge order (destination-major)
    node_of = []
    for name in graph.destinations:
        head = name[:-2] if name[-2:] in (".q", ".k", ".v") else name
        node_of.append(graph.source_index.get(head, graph.n_sources))
    return src, torch.tensor(node_of)[dst]


def connected_edges(graph: Graph, members: torch.Tensor) -> torch.Tensor:
    """The edges of ``members`` (bool (n_edges,)) that lie on some path of member edges from an input
    to the logits; bool (n_edges,).  A source is reached when a member edge from a reached source
    enters it (any of a head's q/k/v inputs); a node is useful when a member edge leads from it to a
    useful node (the logits are).  An edge is kept when its source is reached and its destination's
    node useful.  One pass each way: edges only run from earlier sources to later ones."""
    src, node = edge_nodes(graph)
    if members.shape != (graph.n_edges,) or members.dtype != torch.bool:
        raise ValueError(f"members must be a bool vector of {graph.n_edges} edges, got {tuple(members.shape)} {members.dtype}.")
    n = graph.n_sources
    reached = torch.zeros(n + 1, dtype=torch.bool)
    reached[: graph.n_inputs] = True
    for s in range(graph.n_inputs, n):
        reached[s] = reached[src[members & (node == s)]].any()
    useful = torch.zeros(n + 1, dtype=torch.bool)
    useful[n] = True
    for s in reversed(range(n)):
        useful[s] = useful[node[members & (src == s)]].any()
    return members & reached[src] & useful[node]


def top_edges(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Bool (n_edges,): the ``n`` highest of ``scores`` (n_edges,); ties in edge-index order."""
    if torch.isnan(scores).any():
        raise ValueError("The scores contain NaN; a score must be a number (HIGHER = more important).")
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    members = torch.zeros(scores.shape[0], dtype=torch.bool)
    members[order[:n]] = True
    return members


def size_circuits(graph: Graph, scores: torch.Tensor, sizes: Sequence[float] = MIB_SIZES) -> tuple[list[int], torch.Tensor]:
    """Per size k, the number of edges requested, floor(k |E|), and C_k: the top ones by ``scores``
    (n_edges,), pruned by ``connected_edges``.  Returns (requested, bool (len(sizes), n_edges))."""
    if scores.shape != (graph.n_edges,):
        raise ValueError(f"Expected one score per edge ({graph.n_edges}), got shape {tuple(scores.shape)}.")
    _check_sizes(sizes)
    # k as the decimal it is written as: floor(0.29 * 100) is 29, where float arithmetic gives 28
    requested = [math.floor(Fraction(repr(float(k))) * graph.n_edges) for k in sizes]
    circuits = torch.stack([connected_edges(graph, top_edges(scores, n)) for n in requested])
    return requested, circuits


def _check_sizes(sizes: Sequence[float]) -> None:
    if len(sizes) < 2 or any(not 0 <= k <= 1 for k in sizes) or any(b <= a for a, b in itertools.pairwise(sizes)):
        raise ValueError(f"The sizes must be at least two increasing fractions of the edges in [0, 1], got {list(sizes)}.")


# ---- the areas -----------------------------------------------------------------------------------
def trapezoid_area(ks: Sequence[float], values: Sequence[float]) -> float:
    """sum_i (k_{i+1} - k_i) (v_i + v_{i+1}) / 2 over the linear k axis."""
    if len(ks) != len(values):
        raise ValueError(f"Need one value per size, got {len(values)} values for {len(ks)} sizes.")
    return float(sum((b - a) * (u + v) / 2 for (a, b), (u, v) in zip(itertools.pairwise(ks), itertools.pairwise(values))))


def cpr(ks: Sequence[float], f: Sequence[float]) -> float:
    """Circuit performance ratio: the area under f over k (higher is better)."""
    return trapezoid_area(ks, f)


def cmd(ks: Sequence[float], f: Sequence[float]) -> float:
    """Circuit-model distance: the area under |1 - f| over k (0 is best)."""
    return trapezoid_area(ks, [abs(1 - v) for v in f])


# ---- evaluation ----------------------------------------------------------------------------------
def mean_metric(
    model: HookedTransformer,
    graph: Graph,
    clean: torch.Tensor,
    ablated: torch.Tensor,
    masks: torch.Tensor,
    metric: Metric,
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """m(C) of each circuit: the metric averaged over the examples, float64 (circuit,).

    clean: (n_examples, pos); ablated: (source, n_examples | 1, pos | 1, d_model); masks: bool or
    float (circuit, n_edges), 1 = kept.  Runs without gradients, ``batch_size`` examples at a time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    n_examples = clean.shape[0]
    total = torch.zeros(masks.shape[0], dtype=torch.float64)
    dense = masks.to(model.cfg.dtype)
    with torch.no_grad():
        for start in range(0, n_examples, batch_size):
            index = torch.arange(start, min(start + batch_size, n_examples))
            batch_ablated = ablated if ablated.shape[1] == 1 else ablated[:, index]
            logits = run_circuits(model, graph, clean[index], batch_ablated, dense)  # (circuit, batch, pos, vocab)
            for c in range(masks.shape[0]):
                total[c] += metric(logits[c], index).double().sum()
    return total / n_examples


def mib_scores(
    model: HookedTransformer,
    graph: Graph,
    clean: torch.Tensor,
    ablated: torch.Tensor,
    metric: Metric,
    scores: torch.Tensor,
    *,
    batch_size: int = 64,
    sizes: Sequence[float] = MIB_SIZES,
) -> tuple[pl.DataFrame, float, float]:
    """MIB's faithfulness curves, CPR and CMD of one method's ``scores`` (n_edges,), HIGHER = MORE
    IMPORTANT (signed where the method has a sign).

    clean: (n_examples, pos) tokens; ablated: (source, n_examples | 1, pos | 1, d_model), what an
    ablated edge carries (MIB: the counterfactual inputs' outputs, ``ablation_values("resample")``);
    metric: (logits, index) -> (batch,), higher = more of the behavior.
    Returns (frame, CPR, CMD); the frame has one row per ranking ("signed" for CPR, "absolute" for
    CMD) and size: ranking, k, n_edges_requested, n_edges_kept, m (= m(C_k)), f (= f_k).
    A metric that does not move between the full and the empty circuit is refused.
    """
    requested, signed = size_circuits(graph, scores, sizes)
    _, absolute = size_circuits(graph, scores.abs(), sizes)
    ends = torch.stack([torch.ones(graph.n_edges, dtype=torch.bool), torch.zeros(graph.n_edges, dtype=torch.bool)])
    unique, inverse = torch.unique(torch.cat([ends, signed, absolute]), dim=0, return_inverse=True)
    m = mean_metric(model, graph, clean, ablated, unique, metric, batch_size=batch_size)[inverse]
    m_full, m_empty = float(m[0]), float(m[1])
    if not math.isfinite(m_full - m_empty) or m_full == m_empty:
        raise ValueError(f"The metric is the same for the full and the empty circuit ({m_full!r}); f_k = (m(C) - m(empty)) / (m(full) - m(empty)) is undefined.")
    f = ((m[2:] - m_empty) / (m_full - m_empty)).tolist()
    n = len(sizes)
    frame = pl.DataFrame({
        "ranking": [RANKINGS[0]] * n + [RANKINGS[1]] * n,
        "k": [float(k) for k in sizes] * 2,
        "n_edges_requested": requested * 2,
        "n_edges_kept": signed.sum(1).tolist() + absolute.sum(1).tolist(),
        "m": m[2:].tolist(),
        "f": f,
    }, schema={"ranking": pl.String, "k": pl.Float64, "n_edges_requested": pl.Int64,
               "n_edges_kept": pl.Int64, "m": pl.Float64, "f": pl.Float64})
    return frame, cpr(sizes, f[:n]), cmd(sizes, f[n:])


def logit_difference(answer: torch.Tensor, wrong: torch.Tensor, position: int = -1) -> Metric:
    """MIB's metric for a logit-difference behavior: logit[answer] - logit[wrong] at ``position``,
    per example.  answer, wrong: long (n_examples,) token ids, indexed by the examples' indices."""

    def metric(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        at = logits[:, position]  # (batch, vocab)
        rows = torch.arange(at.shape[0])
        return at[rows, answer[index]] - at[rows, wrong[index]]

    return metric


__all__ = ["MIB_SIZES", "Metric", "cmd", "connected_edges", "cpr", "edge_nodes", "logit_difference",
           "mean_metric", "mib_scores", "size_circuits", "top_edges", "trapezoid_area"]
