"""The ground-truth circuits of the tracr models (tracr, Lindner et al. 2023), derived from their weights.

Ground-truth circuits
---------------------
Edges use the project's names (``circuitflow.graph`` with ``split_input=True``): sources ``embed``,
``pos_embed``, ``a{l}.0``, ``m{l}``; destinations ``a{l}.0.q|k|v``, ``m{l}``, ``logits``.

Zero ablation, derived by ``ground_truth_circuits`` in three steps:

1. Structural: ``src -> dst`` is a candidate when the product of the matrix ``src`` writes with
   (``W_E``, ``W_pos``, the head's ``W_O``, the MLP's ``W_out`` and ``b_out``) and the one ``dst``
   reads with (``W_Q``/``W_K``/``W_V`` of the head, ``W_in``, ``W_U``) is non-zero.  Tracr gives each
   RASP variable its own residual directions, so the product is exactly zero unless ``dst`` reads a
   variable ``src`` writes; the empty components (reverse: attention of layers 1 and 2, the MLP of
   layer 3; frac_prevs: attention of layer 0, the MLP of layer 1) have all-zero weights and drop out.
   This gives 15 candidates for reverse and 7 for frac_prevs.
2. Functional: visiting destinations from ``logits`` backwards (ACDC's order), zero-ablate each
   candidate edge on top of those already removed, and remove it for good when no output at
   positions 1.. moves by more than ``tol`` (1e-4) on any of the 363 / 1,364 inputs of length 1..5.
   It removes ``embed -> a0.0.q`` and ``embed -> a0.0.k`` (the ``length`` head attends uniformly to
   every position whatever its query and key, so ablating them changes nothing at all) and, in both
   programs, the edges from ``embed`` to the query and key of the aggregating head (``a3.0`` /
   ``a1.0``): they read the ``one`` and ``tokens:BOS`` directions with which every tracr aggregate
   attends a little to BOS, a default for queries that select no key.  Here every query selects a
   key, so they move outputs by at most 5.4e-7 (reverse) and 6.2e-9 (frac_prevs), while every kept
   edge moves some output by at least 0.5: any ``tol`` between 1e-6 and 0.5 gives the same circuits.
3. Prune to the edges on a path from ``embed``/``pos_embed`` to ``logits``.

reverse, 11 edges::

    embed -> a0.0.v, a0.0 -> m0, embed -> m0                  length (selector width, BOS and `one`)
    m0 -> m1, pos_embed -> m1, embed -> m1                     opp_idx = length - indices (`one` = bias)
    m1 -> m2                                                   opp_idx - 1
    m2 -> a3.0.q, pos_embed -> a3.0.k, embed -> a3.0.v         reverse: query opp_idx-1, key index, value token
    a3.0 -> logits

frac_prevs, 5 edges::

    embed -> m0                                                tokens == "x" (numerical)
    pos_embed -> a1.0.q, pos_embed -> a1.0.k, m0 -> a1.0.v    mean over positions <= the query's
    a1.0 -> logits

Against ACDC (``acdc/tracr_task/utils.py``, ``get_tracr_reverse_edges`` and
``get_tracr_proportion_edges``): ACDC's published counts, 15 and 10, also count one "direct" edge
from each used q/k/v input to its head (``hook_q_input -> hook_q``; ``qkv_direct_edges`` in
``circuitflow.graph``).  Its reverse circuit has exactly our 11 residual edges plus 4 direct ones
(a3.0 q, k, v and a0.0 v): 15.  Its proportion circuit has 7 residual edges, our 5 plus
``embed -> a1.0.q`` and ``embed -> a1.0.k``, plus 3 direct ones: 10.  Those two edges carry the BOS
default above, which only matters when BOS appears after position 0: ACDC's proportion data wrote
w, x, y, z as token ids 0..3, which in tracr's encoding are BOS, PAD, w, x, without a leading BOS.
On those inputs the two edges move outputs by 0.67; on well-formed inputs by 6e-9.  We keep the
circuit of well-formed inputs (5 edges; 8 counted ACDC's way), the same rule that gives ACDC's own
reverse circuit.

Caveat: on full-length inputs alone (the datasets of ``circuitflow.behaviors.tracr``) zero-ablating
``a0.0 -> m0`` or ``embed -> a0.0.v`` changes nothing either, since the ``length`` MLP reads a zero
input as the maximum length, 5.  They stay in the circuit because the program needs them for
shorter inputs; a minimality test on full-length data will find them unnecessary.

Resample ablation (the corrupted input is another full-length example of the dataset): an edge whose
carried value ``src_out @ W_read(dst)`` is the same on every full-length input delivers the same
value clean or corrupted, so it carries nothing.  From the structural candidates keep the edges whose
carried value varies over all full-length inputs (243 / 1,024), then prune to paths.  Length,
``opp_idx``, positions and the BOS default are the same on every full-length input, so:

    reverse, 2 edges:     embed -> a3.0.v, a3.0 -> logits
    frac_prevs, 3 edges:  embed -> m0, m0 -> a1.0.v, a1.0 -> logits
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitflow.behaviors.tracr_programs import TracrInfo, TracrName, check_program, enumerate_inputs
from circuitflow.graph import Graph
from circuitflow.patching import run_circuits, source_outputs

# Outputs and carried values that move by no more than this are "unchanged" (see the module docstring
# for the gap it sits in: 6e-9 and 5.4e-7 below it, 0.5 above).
GROUND_TRUTH_TOL = 1e-4


def tracr_graph(model: HookedTransformer) -> Graph:
    """The project's graph of a tracr model: token and position embeddings are separate sources."""
    return Graph.from_config(model.cfg, split_input=True)


def _write_read_matrices(model: HookedTransformer, graph: Graph) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per source, the rows it can write into the residual stream; per destination, the matrix it reads with."""
    write: dict[str, Tensor] = {"embed": model.W_E, "pos_embed": model.W_pos}
    read: dict[str, Tensor] = {"logits": model.W_U}
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            write[f"a{layer}.{head}"] = model.W_O[layer, head]
            for kind, weight in (("q", model.W_Q), ("k", model.W_K), ("v", model.W_V)):
                read[f"a{layer}.{head}.{kind}"] = weight[layer, head]
        write[f"m{layer}"] = torch.cat([model.W_out[layer], model.b_out[layer][None]])
        read[f"m{layer}"] = model.W_in[layer]
    missing = (set(graph.sources) - set(write)) | (set(graph.destinations) - set(read))
    if missing:  # pragma: no cover - graph and model come from one config
        raise ValueError(f"No weights for the graph nodes {sorted(missing)}.")
    return write, read


def _split(edge: str) -> tuple[str, str]:
    src, dst = edge.split(" -> ")
    return src, dst


def _prune_to_paths(edges: set[str]) -> set[str]:
    """The edges on some path from embed/pos_embed to logits (a destination q/k/v/MLP input leads
    to the source of its head/MLP)."""

    def node_of(dst: str) -> str:  # the source a destination feeds: a1.0.q -> a1.0, m2 -> m2
        return dst.rsplit(".", 1)[0] if dst[-2:] in (".q", ".k", ".v") else dst

    reached = {"embed", "pos_embed"}
    changed = True
    while changed:  # forward reachability; tiny graphs, so a fixed point is cheap
        changed = False
        for src, dst in map(_split, edges):
            if src in reached and node_of(dst) not in reached:
                reached.add(node_of(dst))
                changed = True
    useful = {"logits"}
    changed = True
    while changed:  # backward from logits
        changed = False
        for src, dst in map(_split, edges):
            if node_of(dst) in useful and src not in useful:
                useful.add(src)
                changed = True
    return {e for e in edges if _split(e)[0] in reached and node_of(_split(e)[1]) in useful}


def structural_edges(model: HookedTransformer) -> list[str]:
    """Edges whose source writes residual directions their destination reads (non-zero product of
    the writing and reading matrices), pruned to paths from the inputs to the logits; graph order."""
    graph = tracr_graph(model)
    write, read = _write_read_matrices(model, graph)
    kept = set()
    for edge in graph.edge_names:
        src, dst = _split(edge)
        if bool((write[src] @ read[dst]).abs().max() > 0):
            kept.add(edge)
    kept = _prune_to_paths(kept)
    return [e for e in graph.edge_names if e in kept]


def _acdc_order(graph: Graph, edges: Sequence[str]) -> list[str]:
    """Destinations from the output backwards, and each destination's sources from the latest back."""
    dst_rank = {d: i for i, d in enumerate(graph.destinations)}
    src_rank = {s: i for i, s in enumerate(graph.sources)}
    return sorted(edges, key=lambda e: (-dst_rank[_split(e)[1]], -src_rank[_split(e)[0]]))


class _ZeroAblationProbe:
    """Every input of length 1..max_seq_len with the full model's outputs, to measure how far
    zero-ablating edges moves the outputs at positions 1.. (one batched run per length)."""

    def __init__(self, model: HookedTransformer, info: TracrInfo):
        self.model, self.graph = model, tracr_graph(model)
        self.batches = []
        with torch.no_grad():
            for length in range(1, info.max_seq_len + 1):
                tokens = enumerate_inputs(info, length).to(model.cfg.device)
                self.batches.append((tokens, model(tokens)[:, 1:]))

    def largest_change(self, circuits: Sequence[Sequence[str]]) -> list[float]:
        """Per circuit (a list of kept edges), the largest change of any output over every input."""
        graph, cfg = self.graph, self.model.cfg
        masks = torch.zeros(len(circuits), graph.n_edges, dtype=cfg.dtype, device=cfg.device)
        for row, kept in enumerate(circuits):
            masks[row, [graph.edge_index[e] for e in kept]] = 1
        zero = torch.zeros(graph.n_sources, 1, 1, cfg.d_model, dtype=cfg.dtype, device=cfg.device)
        worst = torch.zeros(len(circuits), dtype=cfg.dtype, device=cfg.device)
        with torch.no_grad():
            for tokens, full in self.batches:
                logits = run_circuits(self.model, graph, tokens, zero, masks)[:, :, 1:]
                worst = torch.maximum(worst, (logits - full).abs().amax(dim=(1, 2, 3)))
        return worst.tolist()


def zero_ablation_effects(
    model: HookedTransformer, info: TracrInfo, kept: Sequence[str], candidates: Sequence[str]
) -> dict[str, float]:
    """For each candidate edge of the circuit ``kept``: the largest change of any output at positions
    1.. over every input of length 1..max_seq_len, against the full model, when that edge is
    zero-ablated too."""
    probe = _ZeroAblationProbe(model, info)
    changes = probe.largest_change([[e for e in kept if e != edge] for edge in candidates])
    return dict(zip(candidates, changes))


def _zero_circuit(model: HookedTransformer, info: TracrInfo, candidates: list[str], tol: float) -> set[str]:
    probe = _ZeroAblationProbe(model, info)
    kept = list(candidates)
    for edge in _acdc_order(probe.graph, candidates):
        without = [e for e in kept if e != edge]
        if probe.largest_change([without])[0] <= tol:
            kept = without
    return _prune_to_paths(set(kept))


def _resample_circuit(model: HookedTransformer, info: TracrInfo, candidates: list[str], tol: float) -> set[str]:
    graph = tracr_graph(model)
    write, read = _write_read_matrices(model, graph)
    tokens = enumerate_inputs(info, info.max_seq_len).to(model.cfg.device)
    varying = set()
    with torch.no_grad():
        outputs = source_outputs(model, graph, tokens)  # (source, batch, pos, d_model)
        for edge in candidates:
            src, dst = _split(edge)
            carried = outputs[graph.source_index[src]] @ read[dst]  # (batch, pos, d_read)
            if float((carried - carried[:1]).abs().max()) > tol:
                varying.add(edge)
    return _prune_to_paths(varying)


def ground_truth_circuits(
    name: TracrName, model: HookedTransformer, info: TracrInfo, *, tol: float = GROUND_TRUTH_TOL
) -> dict[str, list[str]]:
    """The ground-truth circuit of ``model`` per ablation, {"zero": [...], "resample": [...]}, each a
    sorted list of edge names, derived as the module docstring describes (0.5-2 s).  ``tol``: an
    output change (zero) or a carried-value spread (resample) no larger than this counts as none."""
    check_program(name)
    if info.name != name:
        raise ValueError(f"The tracr info describes {info.name!r}, not {name!r}; pass the info of the same model.")
    candidates = structural_edges(model)
    return {
        "zero": sorted(_zero_circuit(model, info, candidates, tol)),
        "resample": sorted(_resample_circuit(model, info, candidates, tol)),
    }
