"""ACDC's visit order and the graph's wiring as ACDC reads it (Conmy et al. 2023; the discovery papers).

The order is that of Conmy et al.'s implementation as the paper's experiments ran it
(``acdc/TLACDCExperiment.py`` with ``acdc/main.py``'s defaults ``names_mode="normal"``,
``indices_mode="normal"``), checked against their code:

Receivers.  Their correspondence is walked in the reverse of the order TransformerLens (1.6.1) fires
its hooks in a forward pass.  Within a block those fire ``hook_q_input``, ``hook_k_input``,
``hook_v_input`` (every head at once), then ``attn.hook_q``, ``hook_k``, ``hook_v``, then
``hook_mlp_in``; reversed, a layer is visited as

    the MLP's input;
    (with q/k/v direct edges) the direct edges ``a.v -> a`` of every head, then every ``a.k -> a``,
    then every ``a.q -> a``;
    the value inputs of every head, then every key input, then every query input,

heads from the last to the first (the order the correspondence's nodes were created in), layers from
the last to the first, ``logits`` first of all.  (Their own test of a 2-layer induction model
reaches ``blocks.1.hook_v_input`` at step 10 with no query or key input decided: values come
first.  A summary that says "queries, then keys, then values" has it backwards; the paper itself
asks only for a reverse topological order, which both are.)

Edges into one receiver.  Sources in the order their edges were created: the latest layer first,
its MLP before its heads, heads from the last to the first, and the input last -- ``embed`` before
``pos_embed`` on a split-input graph.  With per-position edges (not in their code) each source's
positions go from the last to the first.

Every order here visits a destination only after everything downstream of it, which the dead-end
rule of ``acdc.py`` needs.  Nothing depends on Python's hash order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuitflow.graph import Graph
from circuitflow.patching import sources_before

_KINDS = ("q", "k", "v", "m", "l")  # kinds of destination: query, key, value, MLP, logits
QKV_ORDER = "vkq"  # within a layer: all value inputs, then keys, then queries


@dataclass(frozen=True)
class VisitStep:
    """One receiver ACDC visits: a destination (its incoming residual edges) or, with q/k/v direct
    edges, one direct edge ``a.v -> a`` (receiver named after the edge).

    edges:  long (k,) candidate edge indices in visit order.
    dest:   the destination's index in ``graph.destinations``; -1 for a direct edge.
    feeds:  the source index the receiver's value goes to (the head or MLP); -1 for ``logits``.
    direct: the edge index of the direct edge ``receiver -> head`` (q/k/v inputs with direct edges), else -1.
    """

    receiver: str
    edges: Tensor
    dest: int
    feeds: int
    direct: int


@dataclass(frozen=True)
class Wiring:
    """Per edge: its source and destination indices (-1 for direct edges) and where a forward pass
    evaluating its removal can resume; per source, its outgoing residual edges; the ACDC visit steps."""

    edge_source: Tensor  # long (n_edges,)
    edge_dest: Tensor  # long (n_edges,)
    edge_upstream: Tensor  # long (n_edges,): sources_before(the q/k/v/MLP/logits input the edge enters)
    edge_kind: Tensor  # long (n_edges,): the predictor's key, (source, kind of destination) flattened
    outgoing: tuple[Tensor, ...]  # per source: long edge indices
    steps: tuple[VisitStep, ...]


def _destination_order(graph: Graph) -> list[tuple[str, str]]:
    """(kind, name) of every receiver in visit order: kind "dest" (a destination) or "direct" (the
    direct edges into head ``name`` of the q/k/v letter in ``name``'s last character)."""
    order: list[tuple[str, str]] = [("dest", "logits")]
    for layer in reversed(range(graph.n_layers)):
        if not graph.attn_only:
            order.append(("dest", graph.destinations[graph.attention_destinations(layer).stop]))
        heads = [f"a{layer}.{h}" for h in reversed(range(graph.n_heads))]
        if graph.qkv_direct_edges:
            order += [("direct", f"{head}.{kind}") for kind in QKV_ORDER for head in heads]
        order += [("dest", f"{head}.{kind}") for kind in QKV_ORDER for head in heads]
    return order


def _incoming(graph: Graph, edge_source: Tensor, edge_dest: Tensor, d: int) -> Tensor:
    """Edges into destination ``d`` in visit order: the latest source first, the inputs last in graph
    order (``embed`` before ``pos_embed``), positions from the last."""
    incoming = (edge_dest == d).nonzero().flatten().flip(0)  # sources, then positions, descending
    is_input = edge_source[incoming] < graph.n_inputs
    inputs = incoming[is_input]
    inputs = inputs[torch.argsort(edge_source[inputs], stable=True)]  # ascending source, positions still descending
    return torch.cat([incoming[~is_input], inputs])


def wiring(graph: Graph) -> Wiring:
    """The graph's wiring and ACDC's visit steps (see the module docstring)."""
    n = graph.n_edges
    edge_source = torch.full((n,), -1, dtype=torch.long)
    edge_dest = torch.full((n,), -1, dtype=torch.long)
    direct_of: dict[str, int] = {}  # q/k/v destination name -> its direct edge
    for e, name in enumerate(graph.edge_names):
        src, dst = name.split(" @ ")[0].split(" -> ")
        if dst in graph.destination_index:
            edge_source[e] = graph.source_index[src]
            edge_dest[e] = graph.destination_index[dst]
        else:  # a direct edge "a.q -> a"
            direct_of[src] = e
    outgoing = tuple((edge_source == s).nonzero().flatten() for s in range(graph.n_sources))
    upstream_of = torch.tensor([sources_before(graph, d) for d in range(graph.n_destinations)])
    edge_upstream = upstream_of[edge_dest.clamp(min=0)]
    for name, e in direct_of.items():  # a direct edge acts on its q/k/v input
        edge_upstream[e] = upstream_of[graph.destination_index[name]]
    # destination kinds q, k, v, MLP, logits; direct edges share a row of their own, by q/k/v
    kinds = torch.tensor([_KINDS.index(d[-1] if d[-2:] in (".q", ".k", ".v") else d[0]) for d in graph.destinations])
    edge_kind = torch.where(edge_dest >= 0, edge_source * len(_KINDS) + kinds[edge_dest.clamp(min=0)], 0)
    for name, e in direct_of.items():
        edge_kind[e] = graph.n_sources * len(_KINDS) + _KINDS.index(name[-1])
    steps = []
    for kind, name in _destination_order(graph):
        head = name[:-2] if name[-2:] in (".q", ".k", ".v") else None
        if kind == "direct":
            e = direct_of[name]
            steps.append(VisitStep(graph.edge_names[e], torch.tensor([e]), -1, graph.source_index[head], -1))
            continue
        d = graph.destination_index[name]
        feeds = -1 if name == "logits" else graph.source_index[head or name]
        steps.append(VisitStep(name, _incoming(graph, edge_source, edge_dest, d), d, feeds, direct_of.get(name, -1)))
    return Wiring(edge_source, edge_dest, edge_upstream, edge_kind, outgoing, tuple(steps))


def visit_order(graph: Graph) -> list[VisitStep]:
    """ACDC's visit steps for ``graph``, in order (see the module docstring)."""
    return list(wiring(graph).steps)


def check_order(graph: Graph, steps: tuple[VisitStep, ...]) -> None:
    """Refuse a visit order that does not decide every edge exactly once."""
    covered = sorted(torch.cat([step.edges for step in steps]).tolist()) if steps else []
    if covered != list(range(graph.n_edges)):
        raise ValueError("A visit order must visit every edge of the graph exactly once.")
