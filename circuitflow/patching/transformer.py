"""A TransformerLens ``HookedTransformer`` through the patching engine, written from the model's
weights: per-head q/k/v inputs, attention with LayerNorm folded into the projections where the
inputs arrive centred, and the MLP, embedding and unembedding modules of the model itself (so the
numerics are the model's).  TransformerLens 3.9's own per-head inputs (``use_split_qkv_input`` with
``use_attn_result``) cost 15-25x a plain forward pass on CPU.

Dimension names: source, dest, circuit, batch, pos, d_model, head, d_head, vocab.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from circuitflow.graph import Graph
from circuitflow.patching.deltas import SourceDeltas, at_positions, centered


def input_outputs(model: HookedTransformer, graph: Graph, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Outputs of the input source(s), (n_inputs, batch, pos, d_model), and the shortformer
    positional embedding added to q/k inputs (or None)."""
    embed = model.embed(tokens)
    kind = model.cfg.positional_embedding_type
    if kind == "standard":
        pos = model.pos_embed(tokens)
        if graph.split_input:
            return torch.stack([embed, pos.expand_as(embed)]), None
        return (embed + pos).unsqueeze(0), None
    if kind == "shortformer":
        return embed.unsqueeze(0), model.pos_embed(tokens)
    return embed.unsqueeze(0), None  # rotary: positions enter inside attention


def normalize(model: HookedTransformer, norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's pre-LayerNorm ``norm`` over the last dimension, as one fused kernel where possible."""
    kind, eps = model.cfg.normalization_type, model.cfg.eps
    if kind is None:
        return x
    if kind in ("LN", "LNPre"):
        weight, bias = (norm.w, norm.b) if kind == "LN" else (None, None)
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    if kind in ("RMS", "RMSPre"):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return x * norm.w if kind == "RMS" else x
    raise ValueError(f"Normalization {kind!r} is not supported by the patching engine.")


def attention(
    model: HookedTransformer,
    layer: int,
    qkv_in: torch.Tensor,
    shortformer_pos: torch.Tensor | None,
    centered: bool,
    queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """One attention layer with a separate input per head and per q/k/v.

    qkv_in: (circuit, 3, head, batch, pos, d_model) residual inputs (before LayerNorm), q/k/v-major;
    ``centered``: they are already centred over d_model (the LayerNorm models' fast path);
    ``queries``: long (n_query,) the positions whose outputs are wanted (default every position).
    Returns the per-head outputs z @ W_O, (circuit, head, batch, pos or n_query, d_model), without b_O.
    """
    block = model.blocks[layer]
    attn = block.attn
    n_circuits, _, n_heads, batch, n_pos, d_model = qkv_in.shape
    weights = torch.stack([attn.W_Q, attn.W_K, attn.W_V])  # (3, head, d_model, d_head)
    biases = torch.stack([attn.b_Q, attn.b_K, attn.b_V])[:, :, None]  # (3, head, 1, d_head)
    rows = qkv_in.view(n_circuits, 3, n_heads, batch * n_pos, d_model)
    if shortformer_pos is not None:  # added after LayerNorm to the query and key inputs only
        pos = shortformer_pos.reshape(n_circuits, 1, 1, batch * n_pos, d_model) @ weights[:2]
        biases = biases + torch.cat([pos, torch.zeros_like(pos[:, :1])], dim=1)
    if centered:
        # LayerNorm folded into the projection: the inputs arrive centred, so
        # LN(x) W = (x / sigma) (w * W) + b W, and 1/sigma scales the d_head-wide output instead of
        # the d_model-wide input.  Saves a full pass over the (3 * head)-fold expanded inputs.
        scale = torch.rsqrt(torch.linalg.vector_norm(rows, dim=-1, keepdim=True) ** 2 / d_model + model.cfg.eps)
        if model.cfg.normalization_type == "LN":
            biases = biases + torch.einsum("m,shme->she", block.ln1.b, weights)[:, :, None]
            weights = block.ln1.w[:, None] * weights
        projected = torch.matmul(rows, weights) * scale + biases
    else:
        projected = torch.matmul(normalize(model, block.ln1, rows), weights).add_(biases)
    q, k, v = projected.view(n_circuits, 3, n_heads, batch, n_pos, -1).unbind(1)
    if model.cfg.positional_embedding_type == "rotary":
        def rotate(x: torch.Tensor) -> torch.Tensor:  # TransformerLens wants (batch, pos, head, d_head)
            x = attn.apply_rotary(x.permute(0, 2, 3, 1, 4).flatten(0, 1), 0, None)
            return x.unflatten(0, (n_circuits, batch)).permute(0, 3, 1, 2, 4)
        q, k = rotate(q), rotate(k)
    future = torch.ones(n_pos, n_pos, dtype=torch.bool, device=q.device).triu(1)
    if queries is not None:  # keys and values at every position, queries only where wanted
        q, future = q.index_select(-2, queries), future[queries]
    scores = (q @ k.transpose(-1, -2)) / attn.attn_scale  # (circuit, head, batch, query, key)
    if model.cfg.attention_dir == "causal":
        scores = scores.masked_fill(future, float("-inf"))
    z = torch.softmax(scores, dim=-1) @ v  # (circuit, head, batch, pos, d_head)
    # Centred inputs downstream need centred outputs: fold the centring into W_O (a mean over d_model
    # commutes with the projection), instead of a pass over the head-fold expanded outputs.
    W_O = attn.W_O - attn.W_O.mean(-1, keepdim=True) if centered else attn.W_O
    return (z.flatten(2, 3) @ W_O).view(n_circuits, n_heads, batch, z.shape[-2], d_model)


@functools.lru_cache(maxsize=32)
def qkv_major_order(graph: Graph, device: torch.device) -> torch.Tensor:
    """A permutation of destinations that lists each layer's q inputs, then k, then v."""
    order = list(range(graph.n_destinations))
    for layer in range(graph.n_layers):
        span = graph.attention_destinations(layer)
        head_major = order[span]
        order[span] = head_major[0::3] + head_major[1::3] + head_major[2::3]
    return torch.tensor(order, device=device)


def transformer_forward(
    model: HookedTransformer,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    mask: torch.Tensor,
    upstream: torch.Tensor | None,
    return_deltas: bool,
    positions: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The engine's pass on a HookedTransformer (see ``patching._forward`` for the arguments): from
    the inputs or from given outputs of the first sources, with the logits at every position or only
    at ``positions``."""
    cfg = model.cfg
    n_circuits = mask.shape[0]
    # q/k/v-major destination order inside each layer, so the mixed inputs come out as (3, head)
    mask = mask.index_select(2, qkv_major_order(graph, mask.device))
    inputs, shortformer_pos = input_outputs(model, graph, tokens)
    batch, n_pos = tokens.shape
    ablated = ablated.to(inputs.dtype)
    known = inputs if upstream is None else upstream.to(inputs.dtype)  # sources not computed here
    n_known = known.shape[0]
    track_grad = torch.is_grad_enabled()  # in-place writes into one buffer only without autograd
    if shortformer_pos is not None:
        shortformer_pos = shortformer_pos.repeat(n_circuits, 1, 1).view(n_circuits, batch, n_pos, -1)

    # Everything after the last layer's attention works position by position: with wanted
    # ``positions`` the pass narrows to them there, or at once if it resumes after that attention.
    narrowed = positions is None
    if not narrowed and n_known > graph.layer_sources(cfg.n_layers - 1).start:
        known, ablated = at_positions(known, positions), at_positions(ablated, positions)
        mask = _mask_at(mask, positions)
        n_pos, narrowed = len(positions), True

    # LayerNorm ignores the mean of its input, so with LN every delta and the base can be stored
    # centred: the mixed inputs then arrive centred and attention folds LN into its projection.
    center = cfg.normalization_type in ("LN", "LNPre") and not return_deltas
    if center:
        known, ablated = centered(known), centered(ablated)
    deltas = SourceDeltas.start(known, ablated, upstream is not None, n_circuits, graph.n_sources, track_grad)
    # the part of every destination's input that no mask touches: ablated values upstream + b_O
    base = ablated[: graph.n_inputs].sum(0, keepdim=True)
    state = _Pass(mask, ablated, deltas, base, n_pos, narrowed, n_known, center, shortformer_pos, positions, n_circuits, batch)
    for layer in range(cfg.n_layers):
        _layer(model, graph, state, layer)

    final = state.deltas.mix(state.mask[:, :, -1:], state.base).view(n_circuits * batch, state.n_pos, -1)
    final = normalize(model, getattr(model, "ln_final", None), final)
    logits = model.unembed(final).view(n_circuits, batch, state.n_pos, -1)
    if return_deltas:
        return logits, state.deltas.stacked()
    return logits


@dataclass
class _Pass:
    """One transformer pass as it moves through the layers: what changes (the first six fields)
    and what each layer reads (the rest)."""

    mask: torch.Tensor  # (circuit, source, dest[, pos]) in q/k/v-major destination order
    ablated: torch.Tensor  # (source, batch|1, pos|1, d_model)
    deltas: SourceDeltas
    base: torch.Tensor  # (1, batch|1, pos|1, d_model): what no mask touches
    n_pos: int
    narrowed: bool  # the pass runs at the wanted positions only (or every position is wanted)
    n_known: int  # sources given, not computed
    center: bool  # deltas and base are stored centred (LayerNorm models)
    shortformer_pos: torch.Tensor | None
    positions: torch.Tensor | None
    n_circuits: int
    batch: int


def _layer(model: HookedTransformer, graph: Graph, p: _Pass, layer: int) -> None:
    """One layer of the pass ``p``: its heads (unless given), the narrowing to the wanted positions
    after the last layer's attention, then its MLP (unless given)."""
    cfg = model.cfg
    written = graph.layer_sources(layer)
    last = layer == cfg.n_layers - 1
    if written.start >= p.n_known:  # the layer's heads are not given: compute them
        qkv_in = p.deltas.mix(p.mask[:, :, graph.attention_destinations(layer)], p.base)
        qkv_in = qkv_in.view(p.n_circuits, 3, cfg.n_heads, p.batch, p.n_pos, cfg.d_model)
        heads = attention(model, layer, qkv_in, p.shortformer_pos, p.center, p.positions if last else None)
    if last and not p.narrowed:  # from here on only the wanted positions matter
        p.deltas = p.deltas.at_positions(p.positions)
        p.ablated, p.base = at_positions(p.ablated, p.positions), at_positions(p.base, p.positions)
        p.mask = _mask_at(p.mask, p.positions)
        p.n_pos, p.narrowed = len(p.positions), True
    if written.start >= p.n_known:
        p.deltas.append(heads, p.ablated[written][: cfg.n_heads])
    layer_ablated = p.ablated[written]
    b_O = model.blocks[layer].attn.b_O
    p.base = p.base + layer_ablated[: cfg.n_heads].sum(0, keepdim=True) + (b_O - b_O.mean() if p.center else b_O)
    if not cfg.attn_only:
        if written.start + cfg.n_heads >= p.n_known:  # the MLP's output is not given
            dest = graph.mlp_destination(layer)
            mlp_in = p.deltas.mix(p.mask[:, :, dest : dest + 1], p.base)
            block = model.blocks[layer]
            mlp_out = block.mlp(normalize(model, block.ln2, mlp_in.view(p.n_circuits * p.batch, p.n_pos, -1)))
            mlp_out = mlp_out.view(p.n_circuits, 1, p.batch, p.n_pos, -1)
            p.deltas.append(centered(mlp_out) if p.center else mlp_out, layer_ablated[cfg.n_heads :])
        p.base = p.base + layer_ablated[cfg.n_heads :].sum(0, keepdim=True)


def _mask_at(mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """A per-position mask (circuit, source, dest, pos) at ``positions`` only; a plain mask as it is."""
    return mask.index_select(3, positions) if mask.dim() == 4 else mask
