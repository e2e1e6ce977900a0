"""Masked additive patching: run any circuit (or many) in one forward pass (the masked patching in the README).

In a pre-LayerNorm residual transformer each destination reads the sum of its sources' outputs.
A circuit keeps some edges; an ablated edge delivers the source's *ablated* value instead of its
own output.  With a mask ``M[s, d]`` in [0, 1] per edge the input of destination ``d`` is

    input_d = sum_s  M[s, d] * out_s + (1 - M[s, d]) * ablated_s   (+ the b_O constants)

which is one forward pass for any circuit and differentiable in ``M`` (EAP, EAP-IG and subnetwork
probing use its gradient).  ``M = 1`` everywhere gives the model's own output; ``M = 0`` with
``ablated`` = the sources' outputs on the corrupted input gives the model's output on that input.

The forward pass is written here from the model's weights (this package and ``models/`` are the only
places that touch TransformerLens internals) because TransformerLens 3.9's own per-head q/k/v
inputs (``use_split_qkv_input`` with ``use_attn_result``) cost 15-25x a plain forward pass on CPU.
Its LayerNorm, MLP, embedding and unembedding modules are reused, so the numerics are the model's.

A Mamba model (``Graph.mamba``, Ensign & Garriga-Alonso 2024) is patched the same way at the level of layers: each
layer's input is the masked sum above over the input and the earlier layers' output projections,
the layer runs its RMSNorm and mixer (in_proj, causal conv1d, selective scan, gated by the skip
branch, out_proj) on it, and the logits read the masked sum over every source.  The masks, deltas
and mixing are the same code for both architectures (``deltas.SourceDeltas``); only the per-layer
computation differs (``transformer.attention`` and the MLP, or ``mamba.mamba_mixer``, written from
mamba-lens's ``HookedMambaBlock`` weights; ``check_model`` dispatches on ``graph.architecture``).

A pass can also resume part-way (``run_circuits_from``, ``resumed_forward``): given the outputs of
the sources written before some destination reads the residual stream (``sources_before``), only
the stages from there on run -- exact for circuits that keep every edge into the earlier
destinations, whose sources then deliver those outputs.  It can also stop at some positions: after
the last layer's attention everything is per position.  ACDC evaluates its candidate edges this way.

Dimension names used throughout: source, dest, circuit, batch, pos, d_model, head, d_head, vocab;
for Mamba also d_inner (the mixer's width) and d_state (the scan's state per channel).

Modules: ``deltas.py`` (the source deltas and their masked sums), ``transformer.py`` and ``mamba.py``
(each architecture's pass); this one holds the interface and what every pass shares.
"""

from __future__ import annotations

import functools

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.graph import Graph, check_supported
from circuitflow.numerics import flush_denormal
from circuitflow.patching.mamba import check_mamba_model, mamba_forward
from circuitflow.patching.transformer import transformer_forward


def check_model(model: HookedTransformer, graph: Graph) -> None:
    """Raise one clear error if ``graph`` is not the graph of ``model`` (a HookedTransformer, or a
    mamba-lens HookedMamba with a Mamba graph)."""
    cfg = model.cfg
    if graph.is_mamba or not isinstance(cfg, HookedTransformerConfig):
        check_mamba_model(model, graph)
        return
    if (cfg.n_layers, cfg.n_heads, cfg.attn_only) != (graph.n_layers, graph.n_heads, graph.attn_only):
        raise ValueError(
            f"The graph ({graph.n_layers} layers, {graph.n_heads} heads, attn_only={graph.attn_only}) "
            f"does not belong to this model ({cfg.n_layers} layers, {cfg.n_heads} heads, attn_only={cfg.attn_only}); "
            "build it with Graph.from_config(model.cfg)."
        )
    check_supported(cfg, split_input=graph.split_input)


def patched_forward(
    model: HookedTransformer,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    mask: torch.Tensor,
    *,
    return_deltas: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The low-level engine: run ``n_circuit`` masked circuits over one batch.

    tokens:  (batch, pos) token ids.
    ablated: (source, batch or 1, pos or 1, d_model) what each source delivers along an ablated edge.
    mask:    (circuit, source, dest) or (circuit, source, dest, pos), see ``Graph.edges_to_mask``.
    Returns logits (circuit, batch, pos, vocab); with ``return_deltas`` also every source's output
    minus its ablated value (circuit, source, batch, pos, d_model).  Differentiable in ``mask``.
    """
    return _forward(model, graph, tokens, ablated, mask, None, return_deltas)


def sources_before(graph: Graph, destination: int) -> int:
    """How many sources (in graph order) are written before ``destination`` reads the residual stream.

    A layer's q/k/v inputs read the inputs and every earlier layer, its MLP input also the layer's
    heads, the logits every source; a Mamba layer's input reads the input and every earlier layer
    (the same formula: a Mamba graph is wired like a transformer with no heads).  These counts are the points a forward pass can resume from
    (``resumed_forward``): the outputs of the first ``sources_before(graph, d)`` sources depend only
    on the edges into destinations before ``d``'s stage.
    """
    if not 0 <= destination < graph.n_destinations:
        raise ValueError(f"Destination index {destination} is outside the graph's {graph.n_destinations} destinations.")
    if destination == graph.n_destinations - 1:  # logits
        return graph.n_sources
    per_layer = 3 * graph.n_heads + (0 if graph.attn_only else 1)
    layer, offset = divmod(destination, per_layer)
    start = graph.layer_sources(layer).start
    return start if offset < 3 * graph.n_heads else start + graph.n_heads


@functools.lru_cache(maxsize=32)
def _resume_points(graph: Graph) -> frozenset[int]:
    """Every ``sources_before(graph, d)``: the numbers of given sources a forward pass can resume after."""
    return frozenset(sources_before(graph, d) for d in range(graph.n_destinations))


def resumed_forward(
    model: HookedTransformer,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    mask: torch.Tensor,
    upstream: torch.Tensor,
    *,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """``patched_forward`` resumed part-way: the first sources' outputs are given, not computed.

    upstream:  (n_upstream, batch, pos, d_model) the outputs of sources ``0 .. n_upstream - 1``,
               shared by every circuit, where ``n_upstream = sources_before(graph, d)`` for some
               destination ``d`` (``graph.n_inputs``: nothing is skipped but the embedding).
    positions: long (n,) distinct positions whose logits are wanted (default: every position); the
               last layer's attention then runs for those queries only, and its MLP, the final
               LayerNorm and the unembedding at those positions only.
    Only the stages from ``d``'s on are computed; the mask's entries for edges into destinations of
    earlier stages are ignored.  This equals ``patched_forward`` (up to float rounding; at
    ``positions``) for circuits that keep every edge into those earlier destinations when
    ``upstream`` is ``source_outputs(model, graph, tokens)[:n_upstream]``: those sources then deliver
    exactly their clean outputs.  ACDC uses it to evaluate candidate edges into one destination
    without recomputing the layers below it.  tokens, ablated and mask as in ``patched_forward``.
    Returns logits (circuit, batch, pos or n, vocab).
    """
    n_upstream = upstream.shape[0]
    points = _resume_points(graph)
    if n_upstream not in points:
        raise ValueError(
            f"A forward pass cannot resume after {n_upstream} sources; resume where a destination reads the "
            f"residual stream: after one of {sorted(points)} sources (see sources_before)."
        )
    if upstream.dim() != 4 or upstream.shape[1:3] != tokens.shape or upstream.shape[3] != model.cfg.d_model:
        raise ValueError(
            f"upstream must be (n_upstream, batch, pos, d_model={model.cfg.d_model}) for tokens of shape "
            f"{tuple(tokens.shape)}, got {tuple(upstream.shape)}."
        )
    if positions is not None:
        n_pos = tokens.shape[1]
        if positions.dim() != 1 or positions.is_floating_point() or len(positions) == 0:
            raise ValueError(f"positions must be a non-empty long (n,) tensor of positions, got {positions.dtype} of shape {tuple(positions.shape)}.")
        if ((positions < -n_pos) | (positions >= n_pos)).any():
            raise ValueError(f"Some positions fall outside inputs of {n_pos} positions; give positions in [-{n_pos}, {n_pos}).")
        positions = positions.to(device=tokens.device, dtype=torch.long) % n_pos
        if len(positions.unique()) != len(positions):
            raise ValueError(f"positions must be distinct, got {positions.tolist()}.")
    return _forward(model, graph, tokens, ablated, mask, upstream, False, positions)


def _forward(
    model: HookedTransformer,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    mask: torch.Tensor,
    upstream: torch.Tensor | None,
    return_deltas: bool,
    positions: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``patched_forward`` from the inputs (``upstream`` None) or from given outputs of the first
    sources (``resumed_forward``: stages whose sources are all given are skipped), with the logits at
    every position or only at ``positions`` (then everything after the last layer's attention runs at
    those positions only, and that attention only for those queries)."""
    if graph.is_mamba:  # its scan's state decays into subnormal floats: flushed, 10x faster (numerics.py)
        with flush_denormal():
            return mamba_forward(model, graph, tokens, ablated, mask, upstream, return_deltas, positions)
    return transformer_forward(model, graph, tokens, ablated, mask, upstream, return_deltas, positions)


# ---- the interface the rest of the project uses ----------------------------------------------


def source_outputs(model: HookedTransformer, graph: Graph, tokens: torch.Tensor) -> torch.Tensor:
    """Every source's output on a clean run of ``tokens`` (batch, pos): (source, batch, pos, d_model)."""
    check_model(model, graph)
    zero = torch.zeros(graph.n_sources, 1, 1, model.cfg.d_model, dtype=model.cfg.dtype, device=tokens.device)
    mask = torch.ones(1, graph.n_sources, graph.n_destinations, dtype=model.cfg.dtype, device=tokens.device)
    with torch.no_grad():  # zero ablation: source output minus ablated value is the output itself
        _, outputs = patched_forward(model, graph, tokens, zero, mask, return_deltas=True)
    return outputs[0].clone()


def full_model_logits(model: HookedTransformer, graph: Graph, tokens: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """The model's own forward pass (not the engine's) on ``tokens`` (batch, pos), without gradients,
    in batches of ``batch_size`` (default: one): logits (batch, pos, vocab).  A Mamba model's runs
    with subnormals flushed, as the engine's passes do (``numerics.py``)."""
    step = batch_size or max(tokens.shape[0], 1)
    with torch.no_grad(), flush_denormal(graph.is_mamba):
        return torch.cat([model(tokens[start : start + step]) for start in range(0, tokens.shape[0], step)])


def run_circuits(
    model: HookedTransformer,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    edge_masks: torch.Tensor,
    *,
    circuits_per_pass: int = 8,
) -> torch.Tensor:
    """Logits of circuits given as per-edge masks (1 = keep, 0 = ablate; values between interpolate).

    tokens: (batch, pos); ablated: (source, batch|1, pos|1, d_model) from ``ablation.ablation_values``;
    edge_masks: (n_edges,) for one circuit or (circuit, n_edges) for many, stacked along the batch.
    Returns (batch, pos, vocab) for one circuit, else (circuit, batch, pos, vocab).
    Differentiable in ``edge_masks``: its gradient is the attribution-patching score of each edge.
    """
    dense, single = _dense_masks(model, graph, tokens, edge_masks)
    # A few circuits per pass keep the (circuit x 3 x head)-fold q/k/v inputs in cache: measured
    # faster per circuit than one pass over all of them (benchmarks/bench_patching.py).
    logits = torch.cat([
        patched_forward(model, graph, tokens, ablated, dense[start : start + circuits_per_pass])
        for start in range(0, dense.shape[0], circuits_per_pass)
    ])
    return logits[0] if single else logits


def _dense_masks(model: HookedTransformer, graph: Graph, tokens: torch.Tensor, edge_masks: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The checks shared by ``run_circuits`` and ``run_circuits_from``, and the circuits' masks as
    dense (circuit, source, destination[, pos]) matrices; ``single``: one circuit was given as (n_edges,)."""
    check_model(model, graph)
    single = edge_masks.dim() == 1
    masks = edge_masks.unsqueeze(0) if single else edge_masks
    dense = graph.edges_to_mask(masks.to(model.cfg.dtype))
    if graph.n_positions is not None and graph.n_positions != tokens.shape[1]:
        raise ValueError(
            f"The graph has per-position edges for {graph.n_positions} positions but the inputs have {tokens.shape[1]}."
        )
    return dense, single


def run_circuits_from(
    model: HookedTransformer,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    edge_masks: torch.Tensor,
    upstream: torch.Tensor,
    *,
    positions: torch.Tensor | None = None,
    circuits_per_pass: int = 8,
) -> torch.Tensor:
    """``run_circuits`` resumed from given outputs of the first sources (see ``resumed_forward``).

    upstream:  (n_upstream, batch, pos, d_model) with ``n_upstream = sources_before(graph, d)``,
               typically ``source_outputs(model, graph, tokens)[:n_upstream]``; then the result
               equals ``run_circuits`` (up to float rounding) for circuits that keep every edge into
               the destinations before ``d``'s stage, at the cost of the stages from ``d``'s on only.
    positions: long (n,) distinct positions whose logits are wanted (default: every position).
    tokens, ablated and edge_masks as in ``run_circuits``.  Returns (batch, pos or n, vocab) for one
    circuit, else (circuit, batch, pos or n, vocab).
    """
    dense, single = _dense_masks(model, graph, tokens, edge_masks)
    logits = torch.cat([
        resumed_forward(model, graph, tokens, ablated, dense[start : start + circuits_per_pass], upstream, positions=positions)
        for start in range(0, dense.shape[0], circuits_per_pass)
    ])
    return logits[0] if single else logits
