"""Random circuits built from random source -> sink paths (Shi et al. 2024; Shi et al. 2024).

A path starts at an input source (``input``, or ``embed``/``pos_embed`` with equal probability) and
walks forward: at each source it follows one of the source's outgoing edges, uniformly at random;
a destination continues from the node it feeds (``a{l}.{h}.q|k|v`` from the head ``a{l}.{h}``,
``m{l}`` from the MLP ``m{l}``) until the walk reaches ``logits``.  Every edge of the graph lies on
some path.  Graph variants:
  * with q/k/v direct edges, a path through ``a{l}.{h}.q`` also takes ``a{l}.{h}.q -> a{l}.{h}``;
  * with per-position edges, a path keeps one position, drawn uniformly, for all of its edges.

Three uses, shared by the hypothesis tests:
  ``random_circuit_masks``  random circuits of an exact size (sufficiency, partial necessity);
  ``inflate``               a circuit plus random paths (a circuit that is not minimal);
  ``reference_knockouts``   a circuit plus one path and one of that path's new edges (the
                            minimality test's reference distribution).
All randomness comes from a ``numpy.random.Generator`` (or an int seed for one); edge order comes
from the graph, so equal seeds give equal circuits in every process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from circuitflow.graph import Graph

Seed = int | np.random.Generator
# Consecutive paths that would overshoot the target size before the next one is truncated to fit.
DEFAULT_PATIENCE = 1000


@dataclass(frozen=True)
class _PathTable:
    """The graph as arrays for walking it; built once per graph."""

    out_destinations: np.ndarray  # (source, max_out) destination indices, -1 padded
    out_degree: np.ndarray  # (source,)
    next_source: np.ndarray  # (dest,) the source a destination feeds; -1 for logits
    residual_edge: np.ndarray  # (source, dest) residual edge ordinal, -1 where no edge
    direct_edge: np.ndarray  # (dest,) index of the q/k/v direct edge into this destination, or -1
    n_inputs: int
    n_positions: int  # 1 without per-position edges
    max_length: int  # the most edges one path can hold


@functools.lru_cache(maxsize=32)
def _path_table(graph: Graph) -> _PathTable:
    parents = graph.parents.numpy()
    residual_edge = np.full(parents.shape, -1, dtype=np.int64)
    # Graph's documented edge order: destinations in forward order, then sources (then positions).
    dst, src = np.nonzero(parents.T)
    residual_edge[src, dst] = np.arange(len(src))
    out_degree = parents.sum(1)
    out_destinations = np.full((graph.n_sources, int(out_degree.max())), -1, dtype=np.int64)
    for s in range(graph.n_sources):
        targets = np.flatnonzero(parents[s])
        out_destinations[s, : len(targets)] = targets
    next_source = np.full(graph.n_destinations, -1, dtype=np.int64)
    direct_edge = np.full(graph.n_destinations, -1, dtype=np.int64)
    for d, name in enumerate(graph.destinations):
        if name == "logits":
            continue
        node = name[:-2] if name[-2:] in (".q", ".k", ".v") else name
        next_source[d] = graph.source_index[node]
        if graph.qkv_direct_edges and node != name:
            direct_edge[d] = graph.edge_index[f"{name} -> {node}"]
    steps = 2 * graph.n_layers + 1 - (graph.n_layers if graph.attn_only else 0)
    return _PathTable(
        out_destinations=out_destinations,
        out_degree=out_degree,
        next_source=next_source,
        residual_edge=residual_edge,
        direct_edge=direct_edge,
        n_inputs=graph.n_inputs,
        n_positions=graph.n_positions or 1,
        max_length=steps + (graph.n_layers if graph.qkv_direct_edges else 0),
    )


def random_paths(graph: Graph, n_paths: int, seed: Seed) -> np.ndarray:
    """``n_paths`` random source -> sink paths (see the module docstring).

    Returns (n_paths, max_path_length) int64 edge indices in path order (source end first), padded
    with -1; no path repeats an edge.  Draws from ``seed`` (an int or a Generator, which advances).
    """
    table = _path_table(graph)
    rng = np.random.default_rng(seed)
    width = table.max_length + (table.max_length if graph.qkv_direct_edges else 0)  # before compaction
    paths = np.full((n_paths, width), -1, dtype=np.int64)
    current = rng.integers(0, table.n_inputs, n_paths)
    position = rng.integers(0, table.n_positions, n_paths)
    alive = np.ones(n_paths, dtype=bool)
    column = 0
    while alive.any():
        choice = np.floor(rng.random(n_paths) * table.out_degree[current]).astype(np.int64)
        dest = table.out_destinations[current, choice]
        edge = table.residual_edge[current, dest] * table.n_positions + position
        paths[alive, column] = edge[alive]
        column += 1
        if graph.qkv_direct_edges:
            direct = table.direct_edge[dest]
            with_direct = alive & (direct >= 0)
            paths[with_direct, column] = direct[with_direct]
            column += 1
        current = np.where(alive, table.next_source[dest], 0)
        alive &= table.next_source[dest] >= 0
    # With direct edges, paths that skipped one leave a -1 gap; move the edges to the front.
    order = np.argsort(paths < 0, axis=1, kind="stable")
    return np.take_along_axis(paths, order, axis=1)[:, : table.max_length]


def _members(graph: Graph, members: torch.Tensor | None) -> np.ndarray:
    if members is None:
        return np.zeros(graph.n_edges, dtype=bool)
    if members.shape != (graph.n_edges,):
        raise ValueError(f"A circuit of this graph has {graph.n_edges} edge flags, got shape {tuple(members.shape)}.")
    return members.detach().cpu().numpy().astype(bool).copy()


def _grow(graph: Graph, members: np.ndarray, size: int, rng: np.random.Generator, patience: int) -> None:
    """Add whole random paths to ``members`` (in place) until it has exactly ``size`` edges.

    A path that would overshoot is skipped; after ``patience`` skips in a row the next path's new
    edges are added from its source end up to the size, so at most one path is partial.
    """
    count, misses = int(members.sum()), 0
    while count < size:
        for path in random_paths(graph, 64, rng):
            new = [e for e in path.tolist() if e >= 0 and not members[e]]
            if not new:
                continue
            if count + len(new) > size:
                misses += 1
                if misses < patience:
                    continue
                new = new[: size - count]
            members[new] = True
            count, misses = count + len(new), 0
            if count == size:
                break


def random_circuit_masks(
    graph: Graph,
    size: int,
    n_circuits: int,
    seed: Seed,
    *,
    base: torch.Tensor | None = None,
    patience: int = DEFAULT_PATIENCE,
) -> torch.Tensor:
    """``n_circuits`` random circuits of exactly ``size`` edges, each a union of random paths.

    base: optional bool (n_edges,) circuit every random circuit contains (not changed).
    Returns bool (n_circuits, n_edges).  Paths are added whole while they fit; when ``patience``
    paths in a row would overshoot, the next one is cut to fit (so all but at most one are whole).
    """
    start = _members(graph, base)
    if not int(start.sum()) <= size <= graph.n_edges:
        raise ValueError(
            f"A random circuit of {size} edges cannot be built here: choose a size from {int(start.sum())} "
            f"(the base circuit) to {graph.n_edges} (the whole graph)."
        )
    rng = np.random.default_rng(seed)
    out = np.zeros((n_circuits, graph.n_edges), dtype=bool)
    for row in range(n_circuits):
        members = start.copy()
        _grow(graph, members, size, rng, patience)
        out[row] = members
    return torch.from_numpy(out)


def _check_not_full(graph: Graph, members: np.ndarray) -> None:
    if members.all():
        raise ValueError("The circuit already holds every edge of the graph, so no random path can add to it; test a smaller circuit.")


def inflate(graph: Graph, members: torch.Tensor, n_paths: int, seed: Seed) -> torch.Tensor:
    """A circuit plus ``n_paths`` random paths, each adding at least one new edge.

    members: bool (n_edges,), not changed.  Returns bool (n_edges,).
    """
    inflated = _members(graph, members)
    _check_not_full(graph, inflated)
    rng = np.random.default_rng(seed)
    added = 0
    while added < n_paths and not inflated.all():
        for path in random_paths(graph, 64, rng):
            edges = path[path >= 0]
            if inflated[edges].all():
                continue
            inflated[edges] = True
            added += 1
            if added == n_paths or inflated.all():
                break
    return torch.from_numpy(inflated)


def reference_knockouts(graph: Graph, members: torch.Tensor, n_references: int, seed: Seed) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimality test's references: ``n_references`` times, the circuit plus one random path
    with at least one new edge, and one of the path's new edges drawn uniformly.

    members: bool (n_edges,), not changed.
    Returns (inflated circuits, bool (n_references, n_edges); knocked-out edge indices, (n_references,)).
    """
    base = _members(graph, members)
    _check_not_full(graph, base)
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    knocked: list[np.ndarray] = []
    found = 0
    while found < n_references:
        paths = random_paths(graph, max(64, n_references), rng)
        is_new = (paths >= 0) & ~base[paths.clip(min=0)]
        n_new = is_new.sum(1)
        pick = np.floor(rng.random(len(paths)) * n_new).astype(np.int64)  # which new edge to knock out
        keep = np.flatnonzero(n_new > 0)[: n_references - found]
        # the pick-th new edge of each kept path: first column where the running count of new edges passes pick
        rank = np.cumsum(is_new[keep], axis=1) - 1
        column = np.argmax(is_new[keep] & (rank == pick[keep, None]), axis=1)
        chosen.append(paths[keep])
        knocked.append(paths[keep, column])
        found += len(keep)
    paths = np.concatenate(chosen)
    circuits = np.repeat(base[None], n_references, axis=0)
    rows = np.repeat(np.arange(n_references), paths.shape[1])
    flat = paths.reshape(-1)
    circuits[rows[flat >= 0], flat[flat >= 0]] = True
    return torch.from_numpy(circuits), torch.from_numpy(np.concatenate(knocked))
