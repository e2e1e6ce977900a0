"""The papers' circuits for the pretrained models, as data in this project's edge naming.

    name           model          behavior       edges   source
    ioi            gpt2           ioi            1,041   Wang et al. 2022, as encoded for ACDC
    greater-than   gpt2           greater-than     262   Hanna et al. 2023, as encoded for ACDC
    docstring      attn-only-4l   docstring         37   Heimersheim & Janiak 2023, as encoded for ACDC

The edge lists live in ``canonical/<name>.json`` (data, read by ``canonical_edges``).  The functions
below, one per circuit, generate them from the circuits' definitions (the head groups and the rules
of the ACDC repository's ``get_ioi_true_edges``, ``get_greaterthan_true_edges`` and
``get_docstring_subgraph_true_edges``, re-expressed in our names); ``write_canonical`` rewrites the
JSON and the tests check the data equals the generator and the published counts.

Mapping of ACDC's TransformerLens hook names to ours (the graph conventions in the README):
    blocks.0.hook_resid_pre                 -> input       (shortformer models: the token embedding
                                                            only; positions enter q and k inside)
    blocks.L.attn.hook_result[:, :, h]      -> aL.h        (source)
    blocks.L.hook_mlp_out                   -> mL          (source)
    blocks.L.hook_{q,k,v}_input[:, :, h]    -> aL.h.q|k|v  (destination)
    blocks.L.hook_mlp_in                    -> mL          (destination)
    blocks.{n_layers-1}.hook_resid_post     -> logits      (destination)
ACDC's edges come in three types.  ADDITION edges are our residual edges ``src -> dst``.
DIRECT_COMPUTATION edges ``hook_q_input[h] -> attn.hook_q[h]`` (and k, v) are our q/k/v direct
edges ``aL.h.q -> aL.h`` (``Graph(qkv_direct_edges=True)``): removing one ablates that whole input
of the head.  PLACEHOLDER edges (``hook_q -> hook_result`` inside a head, ``hook_mlp_in ->
hook_mlp_out`` inside an MLP) are bookkeeping: ACDC never counts or scores them (``get_edge_stats``
skips them), so they have no counterpart here.  The published counts (1,041 / 262 / 37) are
ADDITION plus DIRECT_COMPUTATION edges, which is what these lists hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from circuitflow.circuit import Circuit
from circuitflow.graph import Graph
from circuitflow.io import write_json_atomic
from circuitflow.models.hub import official_name

DATA_DIR = Path(__file__).with_name("canonical")


@dataclass(frozen=True)
class CanonicalSpec:
    model: str  # the TransformerLens model name
    behavior: str
    n_layers: int
    n_heads: int
    attn_only: bool
    n_edges: int  # the published count (the discovery papers)
    source: str

    def graph(self) -> Graph:
        """The graph the circuit lives in: the model's shape, with ACDC's q/k/v direct edges."""
        return Graph(n_layers=self.n_layers, n_heads=self.n_heads, attn_only=self.attn_only, qkv_direct_edges=True)


CANONICAL: dict[str, CanonicalSpec] = {
    "ioi": CanonicalSpec(
        "gpt2", "ioi", 12, 12, False, 1041,
        "Wang et al. 2022 (IOI circuit), encoded as ACDC's get_ioi_true_edges (acdc/ioi/utils.py)",
    ),
    "greater-than": CanonicalSpec(
        "gpt2", "greater-than", 12, 12, False, 262,
        "Hanna et al. 2023 (greater-than circuit), encoded as ACDC's get_greaterthan_true_edges (acdc/greaterthan/utils.py)",
    ),
    "docstring": CanonicalSpec(
        "attn-only-4l", "docstring", 4, 8, True, 37,
        "Heimersheim & Janiak 2023 (docstring circuit), encoded as ACDC's get_docstring_subgraph_true_edges (acdc/docstring/utils.py)",
    ),
}


# ---- IOI (Wang et al. 2022) ------------------------------------------------------------------
IOI_GROUPS: dict[str, tuple[tuple[int, int], ...]] = {
    "name mover": ((9, 9), (10, 0), (9, 6)),
    "backup name mover": ((10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)),
    "negative": ((10, 7), (11, 10)),
    "s2 inhibition": ((7, 3), (7, 9), (8, 6), (8, 10)),
    "induction": ((5, 5), (5, 8), (5, 9), (6, 9)),
    "duplicate token": ((0, 1), (0, 10), (3, 0)),
    "previous token": ((2, 2), (4, 11)),
}
# (sender group, receiver group, receiver inputs): "INPUT" is the embedding and every MLP before the
# receiver; "OUTPUT" the logits and every MLP after the sender.
IOI_CONNECTIONS: tuple[tuple[str, str, str], ...] = (
    ("INPUT", "previous token", "qkv"),
    ("INPUT", "duplicate token", "qkv"),
    ("INPUT", "s2 inhibition", "q"),
    ("INPUT", "negative", "kv"),
    ("INPUT", "name mover", "kv"),
    ("INPUT", "backup name mover", "kv"),
    ("previous token", "induction", "kv"),
    ("induction", "s2 inhibition", "kv"),
    ("duplicate token", "s2 inhibition", "kv"),
    ("s2 inhibition", "negative", "q"),
    ("s2 inhibition", "name mover", "q"),
    ("s2 inhibition", "backup name mover", "q"),
    ("negative", "OUTPUT", ""),
    ("name mover", "OUTPUT", ""),
    ("backup name mover", "OUTPUT", ""),
)


def _head(layer: int, head: int) -> str:
    return f"a{layer}.{head}"


def _layer(node: str) -> int:
    """The layer of a source or destination node; ``input`` is -1 and ``logits`` n_layers."""
    if node == "input":
        return -1
    if node == "logits":
        return 10**6
    return int(node[1:].split(".")[0])


def ioi_edges() -> list[str]:
    """The IOI circuit in GPT-2 small: the 26 heads of ``IOI_GROUPS``, wired as ACDC encodes it.

    1. Every residual edge among the embedding, the MLPs, the logits and the circuit's heads, and the
       circuit heads' q/k/v direct edges (the MLPs are all in: the paper studies heads only);
    2. minus the edges from the embedding or any head into a circuit head's q/k/v, and from a circuit
       head to the logits (those are kept only where step 3 names them);
    3. plus ``IOI_CONNECTIONS``.
    """
    graph = CANONICAL["ioi"].graph()
    heads = {_head(*lh) for group in IOI_GROUPS.values() for lh in group}
    mlps = {f"m{layer}" for layer in range(graph.n_layers)}
    head_inputs = {f"{h}.{x}" for h in heads for x in "qkv"}
    nodes = heads | mlps | {"input"}
    kept: set[str] = set()
    for edge in graph.edge_names:
        source, destination = edge.split(" -> ")
        if source in head_inputs:  # a q/k/v direct edge (destination is its head)
            kept.add(edge)
            continue
        if source not in nodes or destination not in head_inputs | mlps | {"logits"}:
            continue  # step 1: an edge of a head outside the circuit
        if destination in head_inputs and source in heads | {"input"}:
            continue  # step 2
        if source in heads and destination == "logits":
            continue  # step 2
        kept.add(edge)
    for sender, receiver, inputs in IOI_CONNECTIONS:
        if sender == "INPUT":
            senders = ["input"] + sorted(mlps, key=_layer)
        else:
            senders = [_head(*lh) for lh in IOI_GROUPS[sender]]
        if receiver == "OUTPUT":
            receivers = ["logits"] + sorted(mlps, key=_layer)
        else:
            receivers = [f"{_head(*lh)}.{x}" for lh in IOI_GROUPS[receiver] for x in inputs]
        for source in senders:
            for destination in receivers:
                if _layer(destination) > _layer(source):
                    kept.add(f"{source} -> {destination}")
    return _in_graph_order(graph, kept)


# ---- greater-than (Hanna et al. 2023) --------------------------------------------------------
# (layer, head), or (layer, None) for an MLP
GREATERTHAN_GROUPS: dict[str, tuple[tuple[int, int | None], ...]] = {
    "0305": ((0, 3), (0, 5)),
    "01": ((0, 1),),
    "MEARLY": ((0, None), (1, None), (2, None), (3, None)),
    "AMID": ((5, 5), (6, 1), (6, 9), (7, 10), (8, 11), (9, 1)),
    "MLATE": ((8, None), (9, None), (10, None), (11, None)),
}
GREATERTHAN_CONNECTIONS: tuple[tuple[str, str], ...] = (
    ("01", "MEARLY"), ("01", "AMID"), ("0305", "AMID"), ("MEARLY", "AMID"), ("AMID", "MLATE"),
)


def _outputs(layer: int, head: int | None) -> str:
    return f"m{layer}" if head is None else _head(layer, head)


def _inputs(layer: int, head: int | None) -> list[str]:
    return [f"m{layer}"] if head is None else [f"{_head(layer, head)}.{x}" for x in "qkv"]


def greaterthan_edges() -> list[str]:
    """The greater-than circuit in GPT-2 small, wired as ACDC encodes it:

    the embedding feeds the early heads (0305, 01) and early MLPs (MEARLY); the mid heads (AMID)
    and late MLPs (MLATE) feed the logits; MLPs of one group feed each other; each pair of
    ``GREATERTHAN_CONNECTIONS`` connects every earlier node of the first group to every later node
    of the second (a head also feeds the MLP of its own layer); the circuit heads keep their q/k/v
    direct edges; every MLP before the last AMID layer feeds every later one before it, and every
    earlier MLP feeds each AMID head's query (Hanna et al. keep the AMID queries clean).
    """
    graph = CANONICAL["greater-than"].graph()
    groups = GREATERTHAN_GROUPS
    kept: set[str] = set()
    for group in ("0305", "01", "MEARLY"):
        for node in groups[group]:
            kept.update(f"input -> {destination}" for destination in _inputs(*node))
    for group in ("AMID", "MLATE"):
        for node in groups[group]:
            kept.add(f"{_outputs(*node)} -> logits")
    for members in groups.values():
        mlps = sorted(layer for layer, head in members if head is None)
        kept.update(f"m{a} -> m{b}" for a in mlps for b in mlps if a < b)
    for first, second in GREATERTHAN_CONNECTIONS:
        for layer1, head1 in groups[first]:
            for layer2, head2 in groups[second]:
                head_into_own_mlp = layer1 == layer2 and head1 is not None and head2 is None
                if layer1 < layer2 or head_into_own_mlp:
                    kept.update(f"{_outputs(layer1, head1)} -> {d}" for d in _inputs(layer2, head2))
    for members in groups.values():
        for layer, head in members:
            if head is not None:
                kept.update(f"{_head(layer, head)}.{x} -> {_head(layer, head)}" for x in "qkv")
    last_amid = max(layer for layer, _ in groups["AMID"])
    kept.update(f"m{a} -> m{b}" for a in range(last_amid) for b in range(a + 1, last_amid))
    for layer, head in groups["AMID"]:
        kept.update(f"m{a} -> {_head(layer, head)}.q" for a in range(layer))
    return _in_graph_order(graph, kept)


# ---- docstring (Heimersheim & Janiak 2023) ---------------------------------------------------
def docstring_edges() -> list[str]:
    """The docstring circuit in attn-only-4l: Stefan Heimersheim's manual graph of 37 edges, as
    ACDC lists it (0.5 and 1.4 move the argument names, 2.0 and 1.2 build the query and key of the
    docstring heads 3.0 and 3.6, which write the answer)."""
    graph = CANONICAL["docstring"].graph()
    kept = {
        "a0.5 -> a1.4.v", "a0.5.v -> a0.5", "input -> a0.5.v",
        "a2.0.q -> a2.0", "input -> a2.0.q", "a0.5 -> a2.0.q",
        "a2.0.k -> a2.0", "input -> a2.0.k", "a0.5 -> a2.0.k",
        "a2.0.v -> a2.0", "a1.4 -> a2.0.v",
        "a1.4.v -> a1.4", "input -> a1.4.v",
        "a1.2.q -> a1.2", "a1.2.k -> a1.2", "input -> a1.2.q", "input -> a1.2.k",
        "a0.5 -> a1.2.q", "a0.5 -> a1.2.k",
    }
    for head in ("a3.0", "a3.6"):
        kept |= {
            f"{head} -> logits",
            f"{head}.q -> {head}", f"a1.4 -> {head}.q",
            f"{head}.v -> {head}", f"input -> {head}.v", f"a0.5 -> {head}.v",
            f"{head}.k -> {head}", f"a2.0 -> {head}.k", f"a1.2 -> {head}.k",
        }
    return _in_graph_order(graph, kept)


GENERATORS = {"ioi": ioi_edges, "greater-than": greaterthan_edges, "docstring": docstring_edges}


def _in_graph_order(graph: Graph, edges: set[str]) -> list[str]:
    missing = sorted(edge for edge in edges if edge not in graph.edge_index)
    if missing:
        raise ValueError(f"The generated circuit names edges the graph lacks, e.g. {missing[0]!r}; fix the generator.")
    return sorted(edges, key=graph.edge_index.__getitem__)


def _check_name(name: str) -> CanonicalSpec:
    if name not in CANONICAL:
        raise ValueError(f"Unknown canonical circuit {name!r}; known: {', '.join(CANONICAL)}.")
    return CANONICAL[name]


def write_canonical(directory: str | Path = DATA_DIR) -> list[Path]:
    """Regenerate ``<directory>/<name>.json`` for every canonical circuit (atomic, sorted keys:
    byte-identical on every run).  Returns the paths written."""
    paths = []
    for name, spec in CANONICAL.items():
        edges = GENERATORS[name]()
        if len(edges) != spec.n_edges:
            raise ValueError(f"The {name} generator made {len(edges)} edges, not the published {spec.n_edges}; fix the generator.")
        path = Path(directory) / f"{name}.json"
        write_json_atomic(path, {
            "name": name, "model": spec.model, "behavior": spec.behavior, "source": spec.source,
            "graph": spec.graph().describe(), "n_edges": len(edges), "edges": edges,
        })
        paths.append(path)
    return paths


def canonical_edges(name: str) -> list[str]:
    """The edge names of canonical circuit ``name`` (in graph order), read from the shipped JSON."""
    spec = _check_name(name)
    path = DATA_DIR / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{path} is missing or not JSON; regenerate it with circuitflow.models.canonical.write_canonical().") from None
    if data.get("n_edges") != spec.n_edges or len(data.get("edges", ())) != spec.n_edges:
        raise ValueError(f"{path} does not hold the {spec.n_edges} edges of the {name} circuit; regenerate it with write_canonical().")
    return list(data["edges"])


def check_circuit_for_model(name: str, model: str) -> None:
    """Refuse a canonical circuit paired with a model it was not found in."""
    spec = _check_name(name)
    if official_name(model) != official_name(spec.model):
        raise ValueError(f"The {name} circuit belongs to {spec.model}, not {model}; pair it with {spec.model}.")


def check_against(name: str, graph: Graph) -> None:
    """Raise one sentence unless ``graph`` has the shape of the circuit's model and q/k/v direct edges."""
    spec = _check_name(name)
    shape = (graph.n_layers, graph.n_heads, graph.attn_only)
    if shape != (spec.n_layers, spec.n_heads, spec.attn_only):
        raise ValueError(
            f"The {name} circuit needs {spec.model}'s graph ({spec.n_layers} layers, {spec.n_heads} heads, "
            f"attn_only={spec.attn_only}), got {shape[0]} layers, {shape[1]} heads, attn_only={shape[2]}."
        )
    if not graph.qkv_direct_edges or graph.n_positions is not None:
        raise ValueError(f"The {name} circuit has q/k/v direct edges; build the graph with Graph.from_config(cfg, qkv_direct_edges=True).")


def canonical_circuit(name: str, graph: Graph) -> Circuit:
    """Canonical circuit ``name`` as a ``Circuit`` of ``graph`` (which must have q/k/v direct edges)."""
    check_against(name, graph)
    return Circuit.from_edges(graph, canonical_edges(name))
