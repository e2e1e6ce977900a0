"""Masked additive patching: run any circuit (or many) in one forward pass (REFERENCE.md 2).

In a pre-LayerNorm residual transformer each destination reads the sum of its sources' outputs.
A circuit keeps some edges; an ablated edge delivers the source's *ablated* value instead of its
own output.  With a mask ``M[s, d]`` in [0, 1] per edge the input of destination ``d`` is

    input_d = sum_s  M[s, d] * out_s + (1 - M[s, d]) * ablated_s   (+ the b_O constants)

which is one forward pass for any circuit and differentiable in ``M`` (EAP, EAP-IG and subnetwork
probing use its gradient).  ``M = 1`` everywhere gives the model's own output; ``M = 0`` with
``ablated`` = the sources' outputs on the corrupted input gives the model's output on that input.

The forward pass is written here from the model's weights (this module and ``models/`` are the only
places that touch TransformerLens internals) because TransformerLens 3.9's own per-head q/k/v
inputs (``use_split_qkv_input`` with ``use_attn_result``) cost 15-25x a plain forward pass on CPU.
Its LayerNorm, MLP, embedding and unembedding modules are reused, so the numerics are the model's.

Dimension names used throughout: source, dest, circuit, batch, pos, d_model, head, d_head, vocab.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from circuitflow.graph import Graph

Ablation = Literal["zero", "mean", "resample"]
ABLATIONS: tuple[str, ...] = ("zero", "mean", "resample")


def check_model(model: HookedTransformer, graph: Graph) -> None:
    """Raise one clear error if ``graph`` is not the graph of ``model``."""
    cfg = model.cfg
    if (cfg.n_layers, cfg.n_heads, cfg.attn_only) != (graph.n_layers, graph.n_heads, graph.attn_only):
        raise ValueError(
            f"The graph ({graph.n_layers} layers, {graph.n_heads} heads, attn_only={graph.attn_only}) "
            f"does not belong to this model ({cfg.n_layers} layers, {cfg.n_heads} heads, attn_only={cfg.attn_only}); "
            "build it with Graph.from_config(model.cfg)."
        )
    Graph.from_config(cfg, split_input=graph.split_input)  # refuses unsupported architectures


def _input_outputs(model: HookedTransformer, graph: Graph, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
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


def _mix(mask: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """sum over sources of mask * delta.

    mask: (circuit, source, dest) or (circuit, source, dest, pos); delta: (source, circuit, batch, pos, d_model).
    Returns (dest, circuit, batch, pos, d_model).
    """
    if mask.dim() == 3:
        return torch.einsum("csd,scbpm->dcbpm", mask, delta)
    return torch.einsum("csdp,scbpm->dcbpm", mask, delta)


def _attention(
    model: HookedTransformer, layer: int, qkv_in: torch.Tensor, shortformer_pos: torch.Tensor | None
) -> torch.Tensor:
    """One attention layer with separate inputs per head and per q/k/v.

    qkv_in: (head, 3, batch, pos, d_model) residual inputs (before LayerNorm).
    Returns the per-head outputs z @ W_O, (head, batch, pos, d_model), without b_O.
    """
    block = model.blocks[layer]
    attn = block.attn
    normed = block.ln1(qkv_in)
    q_in, k_in, v_in = normed.unbind(1)  # each (head, batch, pos, d_model)
    if shortformer_pos is not None:
        q_in = q_in + shortformer_pos
        k_in = k_in + shortformer_pos
    q = torch.einsum("hbpm,hme->bphe", q_in, attn.W_Q) + attn.b_Q
    k = torch.einsum("hbpm,hme->bphe", k_in, attn.W_K) + attn.b_K
    v = torch.einsum("hbpm,hme->bphe", v_in, attn.W_V) + attn.b_V
    if model.cfg.positional_embedding_type == "rotary":
        q = attn.apply_rotary(q, 0, None)
        k = attn.apply_rotary(k, 0, None)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / attn.attn_scale
    if model.cfg.attention_dir == "causal":
        n_pos = scores.shape[-1]
        future = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    pattern = torch.softmax(scores, dim=-1)
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
    return torch.einsum("bqhe,hem->hbqm", z, attn.W_O)


def patched_forward(
    model: HookedTransformer,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    mask: torch.Tensor,
    *,
    return_sources: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The low-level engine: run ``n_circuit`` masked circuits over one batch.

    tokens:  (batch, pos) token ids.
    ablated: (source, batch or 1, pos or 1, d_model) what each source delivers along an ablated edge.
    mask:    (circuit, source, dest) or (circuit, source, dest, pos), see ``Graph.edges_to_mask``.
    Returns logits (circuit, batch, pos, vocab); with ``return_sources`` also every source's output
    (source, circuit, batch, pos, d_model).  Differentiable in ``mask`` (and ``ablated``).
    """
    cfg = model.cfg
    n_circuits = mask.shape[0]
    inputs, shortformer_pos = _input_outputs(model, graph, tokens)
    inputs = inputs.unsqueeze(1).expand(-1, n_circuits, -1, -1, -1)  # (source, circuit, batch, pos, d_model)
    ablated = ablated.to(inputs.dtype).unsqueeze(1)  # (source, 1, batch|1, pos|1, d_model)

    outputs = [inputs]  # per-layer blocks of source outputs, in source order
    deltas = [inputs - ablated[: graph.n_inputs]]
    # constant part of every destination's input: ablated values of upstream sources + b_O so far
    base = ablated[: graph.n_inputs].sum(0)
    n_up = graph.n_inputs

    def destination_inputs(dest: slice | int) -> torch.Tensor:
        dest = dest if isinstance(dest, slice) else slice(dest, dest + 1)
        delta = torch.cat(deltas) if len(deltas) > 1 else deltas[0]
        return base + _mix(mask[:, :n_up, dest], delta)

    for layer in range(cfg.n_layers):
        qkv_in = destination_inputs(graph.attention_destinations(layer))  # (3*head, circuit, batch, pos, d_model)
        qkv_in = qkv_in.flatten(1, 2).unflatten(0, (cfg.n_heads, 3))  # (head, 3, circuit*batch, pos, d_model)
        pos_for_qk = None if shortformer_pos is None else shortformer_pos.repeat(n_circuits, 1, 1)
        heads = _attention(model, layer, qkv_in, pos_for_qk).unflatten(1, (n_circuits, -1))
        layer_abl = ablated[graph.layer_sources(layer)]
        head_abl = layer_abl[: cfg.n_heads]
        outputs.append(heads)
        deltas.append(heads - head_abl)
        base = base + head_abl.sum(0) + model.blocks[layer].attn.b_O
        n_up += cfg.n_heads
        if not cfg.attn_only:
            mlp_in = destination_inputs(graph.mlp_destination(layer))[0].flatten(0, 1)  # (circuit*batch, pos, d_model)
            block = model.blocks[layer]
            mlp_out = block.mlp(block.ln2(mlp_in)).unflatten(0, (n_circuits, -1)).unsqueeze(0)
            outputs.append(mlp_out)
            deltas.append(mlp_out - layer_abl[cfg.n_heads :])
            base = base + layer_abl[cfg.n_heads :].sum(0)
            n_up += 1

    final = destination_inputs(graph.n_destinations - 1)[0]
    logits = model.unembed(model.ln_final(final.flatten(0, 1)) if cfg.normalization_type else final.flatten(0, 1))
    logits = logits.unflatten(0, (n_circuits, -1))
    if return_sources:
        return logits, torch.cat(outputs)
    return logits


# ---- the interface the rest of the project uses ----------------------------------------------


def source_outputs(model: HookedTransformer, graph: Graph, tokens: torch.Tensor) -> torch.Tensor:
    """Every source's output on a clean run of ``tokens`` (batch, pos): (source, batch, pos, d_model)."""
    check_model(model, graph)
    zero = torch.zeros(graph.n_sources, 1, 1, model.cfg.d_model, dtype=model.cfg.dtype, device=tokens.device)
    mask = torch.ones(1, graph.n_sources, graph.n_destinations, dtype=model.cfg.dtype, device=tokens.device)
    with torch.no_grad():
        _, outputs = patched_forward(model, graph, tokens, zero, mask, return_sources=True)
    return outputs[:, 0]


def ablation_values(
    ablation: Ablation,
    *,
    corrupted: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    per_position: bool = False,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """What each source delivers along an ablated edge, (source, batch|1, pos|1, d_model).

    zero:     zeros shaped like ``like`` (any (source, ..., d_model) tensor).
    mean:     the mean of ``reference`` (source, batch, pos, d_model) over examples, and over
              positions too unless ``per_position``.
    resample: ``corrupted`` itself, paired: example i takes corrupted example i's activations.
    """
    if ablation == "zero":
        if like is None:
            raise ValueError("Zero ablation needs `like`, a tensor of source outputs to take the shape from.")
        return torch.zeros(like.shape[0], 1, 1, like.shape[-1], dtype=like.dtype, device=like.device)
    if ablation == "mean":
        if reference is None:
            raise ValueError("Mean ablation needs `reference`, the source outputs on a reference dataset.")
        dims = (1,) if per_position else (1, 2)
        return reference.mean(dim=dims, keepdim=True)
    if ablation == "resample":
        if corrupted is None:
            raise ValueError("Resample ablation needs `corrupted`, the source outputs on the corrupted inputs.")
        return corrupted
    raise ValueError(f"Unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}.")


def run_circuits(
    model: HookedTransformer,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    edge_masks: torch.Tensor,
) -> torch.Tensor:
    """Logits of circuits given as per-edge masks (1 = keep, 0 = ablate; values between interpolate).

    tokens: (batch, pos); ablated: (source, batch|1, pos|1, d_model) from ``ablation_values``;
    edge_masks: (n_edges,) for one circuit or (circuit, n_edges) for many, stacked along the batch.
    Returns (batch, pos, vocab) for one circuit, else (circuit, batch, pos, vocab).
    Differentiable in ``edge_masks``: its gradient is the attribution-patching score of each edge.
    """
    check_model(model, graph)
    single = edge_masks.dim() == 1
    masks = edge_masks.unsqueeze(0) if single else edge_masks
    dense = graph.edges_to_mask(masks.to(model.cfg.dtype))
    if graph.n_positions is not None and graph.n_positions != tokens.shape[1]:
        raise ValueError(
            f"The graph has per-position edges for {graph.n_positions} positions but the inputs have {tokens.shape[1]}."
        )
    logits = patched_forward(model, graph, tokens, ablated, dense)
    return logits[0] if single else logits


def kl_divergence(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) per row, over the last (vocab) dimension; shapes (..., vocab) -> (...)."""
    ref = F.log_softmax(reference_logits, dim=-1)
    other = F.log_softmax(logits, dim=-1)
    return (ref.exp() * (ref - other)).sum(-1)
