"""A circuit: a set of edges of one graph.

Stored as a boolean vector over the graph's edges (edge-index order), so set operations are tensor
operations and a circuit converts to the patching engine's mask with ``mask()``.  JSON holds the
graph's identity and the edge names in graph order: the same circuit always writes the same bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from circuitflow.graph import Graph
from circuitflow.io import write_text_atomic

_NODE = re.compile(r"^(?P<node>a\d+\.\d+|m\d+|l\d+|input|embed|pos_embed|logits)(\.[qkv])?$")


@dataclass(frozen=True, eq=False)
class Circuit:
    graph: Graph
    members: torch.Tensor  # bool (n_edges,)

    def __post_init__(self) -> None:
        if self.members.shape != (self.graph.n_edges,) or self.members.dtype != torch.bool:
            raise ValueError(f"A circuit needs a bool vector of {self.graph.n_edges} edges, got {tuple(self.members.shape)} {self.members.dtype}.")

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_edges(cls, graph: Graph, edges: Iterable[str]) -> "Circuit":
        """The circuit of the named edges; an edge the graph lacks is an error naming it."""
        members = torch.zeros(graph.n_edges, dtype=torch.bool)
        index = graph.edge_index
        for edge in edges:
            if edge not in index:
                raise ValueError(
                    f"Edge {edge!r} is not in this model's graph ({graph.n_layers} layers, {graph.n_heads} heads"
                    f"{', attention only' if graph.attn_only else ''}); edges look like "
                    f"{graph.edge_names[0]!r}."
                )
            members[index[edge]] = True
        return cls(graph, members)

    @classmethod
    def full(cls, graph: Graph) -> "Circuit":
        return cls(graph, torch.ones(graph.n_edges, dtype=torch.bool))

    @classmethod
    def empty(cls, graph: Graph) -> "Circuit":
        return cls(graph, torch.zeros(graph.n_edges, dtype=torch.bool))

    # ---- views -----------------------------------------------------------------------------
    @property
    def edges(self) -> list[str]:
        """Edge names in graph order."""
        names = self.graph.edge_names
        return [names[i] for i in self.members.nonzero().flatten().tolist()]

    def __len__(self) -> int:
        return int(self.members.sum())

    def __contains__(self, edge: str) -> bool:
        i = self.graph.edge_index.get(edge)
        return i is not None and bool(self.members[i])

    def nodes(self) -> list[str]:
        """Nodes touched by the circuit's edges, q/k/v inputs folded into their head, sorted by graph order."""
        order = {name: i for i, name in enumerate(self.graph.sources + ("logits",))}
        found: set[str] = set()
        for edge in self.edges:
            for end in edge.split(" @ ")[0].split(" -> "):
                match = _NODE.match(end)
                if match is None:  # pragma: no cover - names come from the graph
                    raise ValueError(f"Unrecognised node {end!r}.")
                found.add(match["node"])
        return sorted(found, key=order.__getitem__)

    def mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(n_edges,) float mask for the patching engine: 1 kept, 0 ablated."""
        return self.members.to(dtype)

    # ---- set operations --------------------------------------------------------------------
    def _same_graph(self, other: "Circuit") -> None:
        if self.graph != other.graph:
            raise ValueError("These circuits belong to different graphs; combine circuits of one model only.")

    def __or__(self, other: "Circuit") -> "Circuit":
        self._same_graph(other)
        return Circuit(self.graph, self.members | other.members)

    def __and__(self, other: "Circuit") -> "Circuit":
        self._same_graph(other)
        return Circuit(self.graph, self.members & other.members)

    def __sub__(self, other: "Circuit") -> "Circuit":
        self._same_graph(other)
        return Circuit(self.graph, self.members & ~other.members)

    def complement(self) -> "Circuit":
        """Every edge of the graph not in this circuit (the model minus the circuit)."""
        return Circuit(self.graph, ~self.members)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Circuit) and self.graph == other.graph and torch.equal(self.members, other.members)

    def __hash__(self) -> int:
        return hash((self.graph, tuple(self.members.tolist())))

    # ---- JSON ------------------------------------------------------------------------------
    def to_json(self, provenance: dict | None = None) -> str:
        """The graph's description and the edges; ``provenance`` (the settings that made the
        circuit, JSON-able) is stored beside them where given."""
        data = {"graph": self.graph.describe(), "edges": self.edges}
        if provenance is not None:
            data["provenance"] = provenance
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, graph: Graph | None = None) -> "Circuit":
        """Parse a circuit; with ``graph``, it must be the graph the circuit was saved with."""
        data = json.loads(text)
        saved = Graph(**data["graph"])
        if graph is not None and graph != saved:
            raise ValueError(f"This circuit was saved for a graph {saved.describe()}, not {graph.describe()}.")
        return cls.from_edges(graph or saved, data["edges"])

    def save(self, path: str | Path, provenance: dict | None = None) -> None:
        write_text_atomic(path, self.to_json(provenance))

    @classmethod
    def load(cls, path: str | Path, graph: Graph | None = None) -> "Circuit":
        try:
            return cls.from_json(Path(path).read_text(), graph)
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a circuit JSON file ({error}); regenerate it with the discover stage.") from None
