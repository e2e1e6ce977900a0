"""HISP: head importance scores for pruning (Michel et al. 2019), the node-level baseline of the ACDC
paper (the discovery papers).

A node is a head's output ``a{l}.{h}``, an MLP's output ``m{l}`` or a Mamba layer's ``l{l}``; ablating it ablates all its
outgoing edges at once.  With a node mask ``z_s`` multiplying every outgoing edge of node ``s`` in the
patching engine, the attribution-patching estimate of how much the metric changes on example i when
the node is ablated is

    AP_i(s) = -d metric_i / d z_s  at z = 1  = (ablated_s[i] - out_s[i]) . d metric_i / d out_s[i]

(the sum of the node's outgoing edges' EAP scores on that example), and the importance is its
absolute value averaged over examples, as in Michel et al. (eq. for I_h) and the ACDC code:

    importance(s) = mean_i |AP_i(s)|.

The absolute value is taken per example, before averaging, so examples on which the node pushes the
metric in opposite directions do not cancel; this needs one backward pass per example (a batched
backward sums the examples), so the examples are run one at a time.  Like Michel et al. (and ACDC's
implementation) the importances are then divided, layer by layer, by the L2 norm of that layer's
importances (``normalize=True``; a layer of one node, as in Mamba, is left as it is);
``normalize=False`` returns the raw mean |AP|.

Scores are importances: **higher = more important** (not losses).  The input nodes (``input``,
``embed``, ``pos_embed``) are never pruned and score ``+inf``.  Edge scores for the common interface
follow the ACDC paper, which turns HISP's node ranking into edge circuits by keeping an edge when both
of its nodes are kept: score(edge) = min(score(its source node), score(its destination's node)), the
destination's node being the head of a q/k/v input, the MLP of an MLP input, and ``+inf`` for the
logits.  So ``scores >= t`` is exactly the edge set of the node circuit {nodes with score >= t}.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitflow.ablation import select_examples
from circuitflow.graph import Graph
from circuitflow.numerics import flush_denormal
from circuitflow.patching import check_model, run_circuits

# metric(logits (batch, pos, vocab), example indices (batch,)) -> scalar, summed over the batch
# (the EAP interface); here it is called on one example at a time.
Metric = Callable[[Tensor, Tensor], Tensor]


def _edge_nodes(graph: Graph) -> tuple[Tensor, Tensor]:
    """Long (n_edges,) twice: the source node (index into ``graph.sources``) at each end of every edge;
    ``n_sources`` stands for the logits.  A q/k/v input or a direct edge's head counts as its head."""
    n = graph.n_sources
    ends = torch.full((2, graph.n_edges), n, dtype=torch.long)
    for e, name in enumerate(graph.edge_names):
        src, dst = name.split(" @ ")[0].split(" -> ")
        for side, end in enumerate((src, dst)):
            node = end[:-2] if end[-2:] in (".q", ".k", ".v") else end
            ends[side, e] = graph.source_index.get(node, n)
    return ends[0], ends[1]


def _masked_source(graph: Graph) -> Tensor:
    """Long (n_edges,): the source whose node mask multiplies each edge; ``n_sources`` (a constant 1)
    for the q/k/v direct edges, which ablate a head's input, not a node's output."""
    masked = torch.full((graph.n_edges,), graph.n_sources, dtype=torch.long)
    for e, name in enumerate(graph.edge_names):
        src, dst = name.split(" @ ")[0].split(" -> ")
        if dst in graph.destination_index:
            masked[e] = graph.source_index[src]
    return masked


def _layer_normalized(graph: Graph, importance: Tensor) -> Tensor:
    """Each layer's importances (its heads and MLP) divided by their L2 norm; an all-zero layer stays 0.
    A layer of one node (a Mamba layer) has nothing to be compared with inside it, and normalising
    would set every such node to 1: its importance is left as it is."""
    out = importance.clone()
    for layer in range(graph.n_layers):
        span = graph.layer_sources(layer)
        if span.stop - span.start < 2:
            continue
        norm = torch.linalg.vector_norm(out[span])
        if norm > 0:
            out[span] = out[span] / norm
    return out


def hisp_node_scores(
    model: HookedTransformer,
    graph: Graph,
    clean: Tensor,
    ablated: Tensor,
    metric: Metric,
    *,
    normalize: bool = True,
    progress: bool = False,
) -> Tensor:
    """HISP importance of every node, float64 (n_sources,) in ``graph.sources`` order, higher = more
    important; the input sources are ``+inf``.

    clean:   (n_examples, pos) tokens.
    ablated: (source, n_examples | 1, pos | 1, d_model) from ``ablation_values``.
    metric:  the EAP interface, metric(logits (batch, pos, vocab), example indices (batch,)) -> scalar
             summed over the batch; called here on one example at a time.
    normalize: divide each layer's importances by their L2 norm (Michel et al.).
    One forward and one backward pass per example; the model is not changed.
    """
    check_model(model, graph)
    if clean.dim() != 2:
        raise ValueError(f"clean must be (n_examples, pos) tokens, got shape {tuple(clean.shape)}.")
    n_examples = clean.shape[0]
    if ablated.dim() != 4 or ablated.shape[0] != graph.n_sources or ablated.shape[1] not in (1, n_examples):
        raise ValueError(
            f"ablated must be (source={graph.n_sources}, n_examples={n_examples} or 1, pos or 1, d_model), "
            f"got {tuple(ablated.shape)}; build it with ablation.ablation_values."
        )
    source = _masked_source(graph)
    constant = torch.ones(1, dtype=model.cfg.dtype, device=clean.device)  # q/k/v direct edges: never masked
    total = torch.zeros(graph.n_sources, dtype=torch.float64)
    for i in tqdm(range(n_examples), desc="HISP", disable=not progress):
        node_mask = torch.ones(graph.n_sources, dtype=model.cfg.dtype, device=clean.device, requires_grad=True)
        edge_mask = torch.cat([node_mask, constant])[source.to(clean.device)]
        example_ablated = select_examples(ablated, slice(i, i + 1))
        logits = run_circuits(model, graph, clean[i : i + 1], example_ablated, edge_mask)
        value = metric(logits, torch.tensor([i]))
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError("The HISP metric must return a scalar tensor (the metric summed over the batch).")
        with flush_denormal(graph.is_mamba):  # a Mamba scan's gradients decay into subnormals too
            (gradient,) = torch.autograd.grad(value.reshape(()), node_mask)
        total += gradient.detach().double().abs().cpu()  # |AP_i| = |-gradient|
    importance = total / n_examples
    if normalize:
        importance = _layer_normalized(graph, importance)
    importance[: graph.n_inputs] = math.inf
    return importance


def hisp_edge_scores(graph: Graph, node_scores: Tensor) -> Tensor:
    """Edge scores from node scores: float64 (n_edges,), min(score of the source node, score of the
    destination's node), the logits counting as ``+inf``; higher = more important.

    node_scores: (n_sources,) as ``hisp_node_scores`` returns them.
    """
    if node_scores.shape != (graph.n_sources,):
        raise ValueError(f"node_scores must have one score per source ({graph.n_sources}), got shape {tuple(node_scores.shape)}.")
    with_logits = torch.cat([node_scores.double(), torch.tensor([math.inf], dtype=torch.float64)])
    source, dest = _edge_nodes(graph)
    return torch.minimum(with_logits[source], with_logits[dest])


def hisp_scores(
    model: HookedTransformer,
    graph: Graph,
    clean: Tensor,
    ablated: Tensor,
    metric: Metric,
    *,
    normalize: bool = True,
    progress: bool = False,
) -> Tensor:
    """HISP edge scores for the common interface: float64 (n_edges,), higher = more important
    (see ``hisp_node_scores`` and ``hisp_edge_scores``)."""
    nodes = hisp_node_scores(model, graph, clean, ablated, metric, normalize=normalize, progress=progress)
    return hisp_edge_scores(graph, nodes)
