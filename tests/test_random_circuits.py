"""Random source -> sink paths and the random circuits built from them, checked against the edge names."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from circuitflow.graph import Graph
from circuitflow.evaluation.random_circuits import inflate, random_circuit_masks, random_paths, reference_knockouts

GRAPHS = {
    "tracr-reverse": Graph(4, 1, False, split_input=True),
    "organism": Graph(2, 4, False),
    "attn-only": Graph(3, 2, True),
    "direct-edges": Graph(2, 2, False, qkv_direct_edges=True),
    "per-position": Graph(2, 2, False, n_positions=3),
}


def _parse(name: str) -> tuple[str, str, str | None]:
    """(source, destination, position) of an edge name."""
    body, _, position = name.partition(" @ ")
    source, destination = body.split(" -> ")
    return source, destination, position or None


def _feeds(destination: str) -> str | None:
    """The node a destination continues from: a0.1.q -> a0.1, m2 -> m2, logits -> None (naive twin
    of the walk's table, written from the names alone)."""
    if destination == "logits":
        return None
    return destination[:-2] if destination[-2:] in (".q", ".k", ".v") else destination


def _check_path(graph: Graph, edges: list[int]) -> None:
    """A path starts at an input, each edge leaves the node the previous one fed, it ends at the
    logits, keeps one position, and a q/k/v direct edge comes right after its input."""
    names = [graph.edge_names[e] for e in edges]
    assert len(set(edges)) == len(edges), names
    at, last_destination, positions = None, None, set()
    for name in names:
        source, destination, position = _parse(name)
        if source.endswith((".q", ".k", ".v")):
            assert graph.qkv_direct_edges and source == last_destination and destination == source[:-2], names
            continue
        assert source in graph.sources[: graph.n_inputs] if at is None else source == at, names
        positions.add(position)
        at, last_destination = _feeds(destination), destination
    assert at is None and last_destination == "logits", names
    assert len(positions) == 1, names


@pytest.mark.parametrize("kind", GRAPHS)
def test_paths_walk_from_an_input_to_the_logits(kind):
    graph = GRAPHS[kind]
    paths = random_paths(graph, 300, 0)
    assert paths.dtype == np.int64 and paths.ndim == 2
    for row in paths:
        edges = row[row >= 0].tolist()
        assert (row[len(edges):] == -1).all()  # padding only at the end
        _check_path(graph, edges)


@pytest.mark.parametrize("kind", ["tracr-reverse", "organism", "direct-edges"])
def test_every_edge_lies_on_some_random_path(kind):
    graph = GRAPHS[kind]
    paths = random_paths(graph, 20_000, 1)
    assert set(paths[paths >= 0].tolist()) == set(range(graph.n_edges))


def test_direct_edges_are_taken_with_their_input():
    graph = GRAPHS["direct-edges"]
    for row in random_paths(graph, 200, 2):
        names = [graph.edge_names[e] for e in row if e >= 0]
        for i, name in enumerate(names):
            destination = _parse(name)[1]
            if destination.endswith((".q", ".k", ".v")) and not _parse(name)[0].endswith((".q", ".k", ".v")):
                assert names[i + 1] == f"{destination} -> {destination[:-2]}"


def test_paths_are_deterministic_and_depend_on_the_seed():
    graph = GRAPHS["organism"]
    assert np.array_equal(random_paths(graph, 50, 3), random_paths(graph, 50, 3))
    assert not np.array_equal(random_paths(graph, 50, 3), random_paths(graph, 50, 4))


def _reachable_from_inputs(graph: Graph, members: torch.Tensor) -> bool:
    """Every residual edge leaves an input or a node that another member edge feeds (naive fixed point)."""
    names = [graph.edge_names[i] for i in members.nonzero().flatten().tolist()]
    residual = [_parse(n)[:2] for n in names if not _parse(n)[0].endswith((".q", ".k", ".v"))]
    reached = set(graph.sources[: graph.n_inputs])
    changed = True
    while changed:
        changed = False
        for source, destination in residual:
            node = _feeds(destination)
            if source in reached and node is not None and node not in reached:
                reached.add(node)
                changed = True
    return all(source in reached for source, _ in residual)


@pytest.mark.parametrize("kind", GRAPHS)
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.9, 1.0])
def test_random_circuits_have_the_exact_size_and_are_made_of_paths(kind, fraction):
    graph = GRAPHS[kind]
    size = max(1, round(fraction * graph.n_edges))
    circuits = random_circuit_masks(graph, size, 20, 5)
    assert circuits.dtype == torch.bool and circuits.shape == (20, graph.n_edges)
    assert (circuits.sum(1) == size).all()
    for members in circuits:
        assert _reachable_from_inputs(graph, members)
    if size < graph.n_edges:
        assert len({tuple(c.tolist()) for c in circuits}) > 1


def test_random_circuits_keep_the_base_and_do_not_change_it():
    graph = GRAPHS["tracr-reverse"]
    base = random_circuit_masks(graph, 11, 1, 0)[0]
    before = base.clone()
    circuits = random_circuit_masks(graph, 30, 10, 1, base=base)
    assert torch.equal(base, before)
    assert (circuits[:, base]).all() and (circuits.sum(1) == 30).all()


@pytest.mark.slow  # a fresh interpreter imports torch and transformer_lens: ~10 s
def test_random_circuits_are_deterministic_across_processes():
    graph = GRAPHS["organism"]
    here = random_circuit_masks(graph, 40, 5, 7)
    code = (
        "import sys; from circuitflow.graph import Graph; "
        "from circuitflow.evaluation.random_circuits import random_circuit_masks; "
        "m = random_circuit_masks(Graph(2, 4, False), 40, 5, 7); "
        "sys.stdout.write(''.join('1' if b else '0' for b in m.flatten().tolist()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # another string-hash order than this process's
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out == "".join("1" if b else "0" for b in here.flatten().tolist())


def test_impossible_sizes_are_refused():
    graph = GRAPHS["organism"]
    with pytest.raises(ValueError, match="choose a size from 0"):
        random_circuit_masks(graph, graph.n_edges + 1, 1, 0)
    base = random_circuit_masks(graph, 20, 1, 0)[0]
    with pytest.raises(ValueError, match="choose a size from 20"):
        random_circuit_masks(graph, 10, 1, 0, base=base)
    with pytest.raises(ValueError, match="edge flags"):
        random_circuit_masks(graph, 10, 1, 0, base=torch.zeros(3, dtype=torch.bool))


def test_inflate_adds_whole_paths_with_new_edges():
    graph = GRAPHS["tracr-reverse"]
    base = random_circuit_masks(graph, 11, 1, 0)[0]
    before = base.clone()
    inflated = inflate(graph, base, 3, 2)
    assert torch.equal(base, before)
    assert inflated[base].all()
    assert int(inflated.sum()) >= 11 + 3
    assert _reachable_from_inputs(graph, inflated)
    assert torch.equal(inflated, inflate(graph, base, 3, 2))
    with pytest.raises(ValueError, match="already holds every edge"):
        inflate(graph, torch.ones(graph.n_edges, dtype=torch.bool), 1, 0)


def test_reference_knockouts_add_one_path_and_knock_out_one_of_its_new_edges():
    graph = GRAPHS["tracr-reverse"]
    base = random_circuit_masks(graph, 11, 1, 0)[0]
    circuits, knocked = reference_knockouts(graph, base, 500, 3)
    assert circuits.shape == (500, graph.n_edges) and knocked.shape == (500,)
    assert circuits[:, base].all()
    rows = torch.arange(500)
    assert circuits[rows, knocked].all() and not base[knocked].any()  # a new edge of the added path
    added = (circuits & ~base).sum(1)
    assert (added >= 1).all() and (added <= 2 * graph.n_layers + 1).all()  # at most one path's edges
    for members in circuits[:50]:
        assert _reachable_from_inputs(graph, members)
    assert len(set(knocked.tolist())) > 10  # many different edges are knocked out
    again = reference_knockouts(graph, base, 500, 3)
    assert torch.equal(again[0], circuits) and torch.equal(again[1], knocked)
