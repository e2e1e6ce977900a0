"""EAP-IG's graph JSON (``Graph.to_json`` of hannamw/EAP-IG, the file form of MIB's circuit track;
MIB, Mueller et al. 2025), written and read for this project's graphs.

The file is one object with
    ``cfg``    {"n_layers", "n_heads", "parallel_attn_mlp": false, "d_model"},
    ``nodes``  {node name: {"in_graph": bool}},
    ``edges``  {edge name: {"score": float, "in_graph": bool}}.
EAP-IG's names against this project's (``circuitflow.graph``):
    nodes   ``input``, ``a{l}.h{h}``, ``m{l}``, ``logits``      <->  ``input``, ``a{l}.{h}``, ``m{l}``, ``logits``
    edges   ``a0.h1->a2.h3<q>``, ``m0->logits``, ``input->a0.h0<v>``
                                                        <->  ``a0.1 -> a2.3.q``, ``m0 -> logits``, ``input -> a0.0.v``
Edges are written in EAP-IG's order (layer by layer: every earlier source into each head's q, k,
v, then every source into the MLP; the logits last).  Scores are signed floats, HIGHER = MORE
IMPORTANT, written exactly (a float64 round-trips).  EAP-IG's graph always has one MLP per layer,
a single ``input`` and no per-position or q/k/v direct edges: graphs without that shape (tracr's
split input, attention-only, Mamba) have no EAP-IG equivalent and are refused.

Reading: an edge the file leaves out gets score 0 and is not in the circuit (EAP-IG's own defaults
for a graph it has not scored); an edge the graph lacks, or a ``cfg`` that disagrees with the graph,
is refused in one sentence naming the file and the first unknown edge.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitflow.circuit import Circuit
from circuitflow.graph import Graph
from circuitflow.io import write_text_atomic

_HEAD = re.compile(r"^a(\d+)\.(\d+)$")
_EAP_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
_EAP_EDGE = re.compile(r"^(?P<src>[^-<>]+)->(?P<dst>[^-<>]+?)(<(?P<qkv>[qkv])>)?$")


def check_eap_shape(graph: Graph) -> None:
    """Refuse, in one sentence, a graph that EAP-IG's graph cannot express."""
    if graph.split_input:
        raise ValueError("EAP-IG's graph has one `input` node, so a split-input graph (embed, pos_embed) has no EAP-IG equivalent.")
    if graph.is_mamba or graph.attn_only:
        raise ValueError("EAP-IG's graph has attention heads and one MLP per layer, so this graph (Mamba or attention-only) has no EAP-IG equivalent.")
    if graph.n_positions is not None or graph.qkv_direct_edges:
        raise ValueError("EAP-IG's graph has neither per-position nor q/k/v direct edges; export the plain residual graph.")


def eap_node(node: str) -> str:
    """This project's node name in EAP-IG's form: ``a0.1`` -> ``a0.h1``; ``input``, ``m0``, ``logits`` unchanged."""
    match = _HEAD.match(node)
    return f"a{match[1]}.h{match[2]}" if match else node


def project_node(node: str) -> str:
    """EAP-IG's node name in this project's form: ``a0.h1`` -> ``a0.1``; the others unchanged."""
    match = _EAP_HEAD.match(node)
    return f"a{match[1]}.{match[2]}" if match else node


def eap_edge(edge: str) -> str:
    """``a0.1 -> a2.3.q`` -> ``a0.h1->a2.h3<q>``; ``m0 -> logits`` -> ``m0->logits``."""
    src, dst = edge.split(" -> ")
    if dst[-2:] in (".q", ".k", ".v"):
        return f"{eap_node(src)}->{eap_node(dst[:-2])}<{dst[-1]}>"
    return f"{eap_node(src)}->{eap_node(dst)}"


def project_edge(name: str) -> str | None:
    """``a0.h1->a2.h3<q>`` -> ``a0.1 -> a2.3.q``; None when ``name`` is not an EAP-IG edge name."""
    match = _EAP_EDGE.match(name)
    if match is None:
        return None
    dst = project_node(match["dst"]) + (f".{match['qkv']}" if match["qkv"] else "")
    return f"{project_node(match['src'])} -> {dst}"


def eap_edge_order(graph: Graph) -> list[int]:
    """Edge indices of ``graph`` in the order EAP-IG's ``Graph.from_model`` creates its edges."""
    check_eap_shape(graph)
    index, order = graph.edge_index, []
    stream = ["input"]
    for layer in range(graph.n_layers):
        heads = [f"a{layer}.{h}" for h in range(graph.n_heads)]
        order += [index[f"{src} -> {head}.{qkv}"] for src in stream for head in heads for qkv in "qkv"]
        stream += heads
        order += [index[f"{src} -> m{layer}"] for src in stream]
        stream.append(f"m{layer}")
    order += [index[f"{src} -> logits"] for src in stream]
    return order


def eap_edge_names(graph: Graph) -> tuple[str, ...]:
    """Every edge's EAP-IG name, in this graph's edge-index order."""
    check_eap_shape(graph)
    return tuple(eap_edge(name) for name in graph.edge_names)


def to_eap_dict(graph: Graph, scores: torch.Tensor | None = None, circuit: Circuit | None = None, *, d_model: int) -> dict[str, Any]:
    """The EAP-IG ``Graph.to_json`` object of ``graph`` with per-edge ``scores`` (n_edges,), signed,
    HIGHER = MORE IMPORTANT (None: all 0) and ``circuit``'s edges in the graph (None: none).  A
    node is in the graph when a circuit edge leaves or enters it; the logits always are (EAP-IG)."""
    check_eap_shape(graph)
    if scores is not None and scores.shape != (graph.n_edges,):
        raise ValueError(f"Expected one score per edge ({graph.n_edges}), got shape {tuple(scores.shape)}.")
    if circuit is not None and circuit.graph != graph:
        raise ValueError("The circuit belongs to another graph; export a circuit of the same graph.")
    values = [0.0] * graph.n_edges if scores is None else scores.double().tolist()
    members = [False] * graph.n_edges if circuit is None else circuit.members.tolist()
    touched = set(circuit.nodes()) if circuit is not None else set()
    nodes = ["input"]
    for layer in range(graph.n_layers):
        nodes += [f"a{layer}.{h}" for h in range(graph.n_heads)] + [f"m{layer}"]
    nodes.append("logits")
    names = graph.edge_names
    return {
        "cfg": {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": False, "d_model": int(d_model)},
        "nodes": {eap_node(node): {"in_graph": node == "logits" or node in touched} for node in nodes},
        "edges": {eap_edge(names[i]): {"score": float(values[i]), "in_graph": bool(members[i])} for i in eap_edge_order(graph)},
    }


def write_eap_json(path: str | Path, graph: Graph, scores: torch.Tensor | None = None, circuit: Circuit | None = None, *, d_model: int) -> None:
    """Write ``to_eap_dict`` to ``path`` (atomically; the same inputs give the same bytes)."""
    write_text_atomic(path, json.dumps(to_eap_dict(graph, scores, circuit, d_model=d_model)) + "\n")


@dataclass(frozen=True)
class EapGraphFile:
    """What an EAP-IG graph file holds for a graph: scores float64 (n_edges,), HIGHER = MORE
    IMPORTANT (0 for an edge the file leaves out), and the circuit of its in_graph edges."""

    scores: torch.Tensor
    circuit: Circuit


def _check_cfg(cfg: Any, graph: Graph, d_model: int | None, where: str) -> None:
    if not isinstance(cfg, dict):
        raise ValueError(f"{where} has no `cfg` mapping; an EAP-IG graph file has cfg, nodes and edges.")  # noqa: TRY004 (bad input is a ValueError here)
    if cfg.get("parallel_attn_mlp", False):
        raise ValueError(f"{where} describes parallel attention+MLP blocks, which this project's graphs do not support.")
    wanted = {"n_layers": graph.n_layers, "n_heads": graph.n_heads} | ({"d_model": d_model} if d_model is not None else {})
    for key, value in wanted.items():
        if cfg.get(key) != value:
            raise ValueError(f"{where} has cfg {key}={cfg.get(key)!r} but the graph has {key}={value}; it belongs to another model.")


def _edge_entry(entry: Any, name: str, where: str) -> tuple[float, bool]:
    """(score, in_graph) of one edge's entry; a missing score is 0, a missing in_graph false."""
    score = entry.get("score", 0.0) if isinstance(entry, dict) else None
    in_graph = entry.get("in_graph", False) if isinstance(entry, dict) else None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not isinstance(in_graph, bool):
        raise ValueError(f"{where}: edge {name!r} must map to {{\"score\": number, \"in_graph\": true or false}}.")  # noqa: TRY004 (bad input is a ValueError here)
    return float(score), in_graph


def read_eap_json(path: str | Path, graph: Graph, *, d_model: int | None = None) -> EapGraphFile:
    """Read an EAP-IG graph file for ``graph`` (see the module docstring); ``d_model``, where given,
    must match the file's cfg too."""
    check_eap_shape(graph)
    where = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{where} is not a readable JSON file ({error}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("edges"), dict):
        raise ValueError(f"{where} is not an EAP-IG graph file: it needs cfg, nodes and edges mappings.")  # noqa: TRY004 (bad input is a ValueError here)
    _check_cfg(data.get("cfg"), graph, d_model, where)
    scores = torch.zeros(graph.n_edges, dtype=torch.float64)
    members = torch.zeros(graph.n_edges, dtype=torch.bool)
    index = graph.edge_index
    for name, entry in data["edges"].items():
        edge = project_edge(name)
        if edge not in index:
            raise ValueError(f"{where} has edge {name!r}, which is not in the graph ({graph.n_layers} layers, {graph.n_heads} heads).")
        scores[index[edge]], members[index[edge]] = _edge_entry(entry, name, where)
    return EapGraphFile(scores=scores, circuit=Circuit(graph, members))


def load_eap_circuit(path: str | Path, graph: Graph, *, d_model: int | None = None) -> Circuit:
    """The circuit of an EAP-IG graph file: its edges with in_graph true."""
    return read_eap_json(path, graph, d_model=d_model).circuit


def load_eap_scores(path: str | Path, graph: Graph, *, d_model: int | None = None) -> torch.Tensor:
    """The per-edge scores of an EAP-IG graph file, float64 (n_edges,), HIGHER = MORE IMPORTANT."""
    return read_eap_json(path, graph, d_model=d_model).scores


__all__ = ["EapGraphFile", "check_eap_shape", "eap_edge", "eap_edge_names", "eap_edge_order", "eap_node",
           "load_eap_circuit", "load_eap_scores", "project_edge", "project_node", "read_eap_json",
           "to_eap_dict", "write_eap_json"]
