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

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from circuitflow.graph import Graph, check_supported

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
    check_supported(cfg, split_input=graph.split_input)


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


def _normalize(model: HookedTransformer, norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
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


def _centered(x: torch.Tensor) -> torch.Tensor:
    """x minus its mean over the last (d_model) dimension."""
    return x - x.mean(-1, keepdim=True)


class _SourceDeltas:
    """The growing (circuit, source, batch, pos, d_model) stack of source output minus ablated value.

    Without autograd the blocks are written into one preallocated buffer (no copies per layer);
    with autograd they are concatenated, since in-place writes would break the backward pass.
    """

    def __init__(self, first: torch.Tensor, n_sources: int, track_grad: bool):
        self.track_grad = track_grad
        self.blocks = [first]
        self.size = first.shape[1]
        if not track_grad:
            self.buffer = first.new_empty(first.shape[0], n_sources, *first.shape[2:])
            self.buffer[:, : self.size] = first

    def append(self, outputs: torch.Tensor, ablated: torch.Tensor) -> None:
        """Add a block of sources: outputs (circuit, n, batch, pos, d_model), ablated (n, batch|1, pos|1, d_model)."""
        n = outputs.shape[1]
        if self.track_grad:
            self.blocks.append(outputs - ablated)
        else:
            torch.sub(outputs, ablated, out=self.buffer[:, self.size : self.size + n])
        self.size += n

    def stacked(self) -> torch.Tensor:
        if not self.track_grad:
            return self.buffer[:, : self.size]
        if len(self.blocks) > 1:
            self.blocks = [torch.cat(self.blocks, dim=1)]
        return self.blocks[0]


def _mix(mask: torch.Tensor, deltas: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Destination inputs: base + sum over sources of mask * delta.

    mask: (circuit, source, dest) or (circuit, source, dest, pos);
    deltas: (circuit, source, batch, pos, d_model); base: (1, batch|1, pos|1, d_model).
    Returns (circuit, dest, batch, pos, d_model).
    """
    n_circuits, n_sources, batch, n_pos, d_model = deltas.shape
    if mask.dim() == 4:  # per-position edges; contiguous, as the attention layer views its input
        return (base.unsqueeze(1) + torch.einsum("csdp,csbpm->cdbpm", mask, deltas)).contiguous()
    flat = deltas.reshape(n_circuits, n_sources, -1)
    base = base.expand(1, batch, n_pos, d_model).reshape(1, 1, -1)
    mixed = torch.baddbmm(base, mask.transpose(1, 2), flat)
    return mixed.view(n_circuits, -1, batch, n_pos, d_model)


def _attention(
    model: HookedTransformer, layer: int, qkv_in: torch.Tensor, shortformer_pos: torch.Tensor | None, centered: bool
) -> torch.Tensor:
    """One attention layer with a separate input per head and per q/k/v.

    qkv_in: (circuit, 3, head, batch, pos, d_model) residual inputs (before LayerNorm), q/k/v-major;
    ``centered``: they are already centred over d_model (the LayerNorm models' fast path).
    Returns the per-head outputs z @ W_O, (circuit, head, batch, pos, d_model), without b_O.
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
        projected = torch.matmul(_normalize(model, block.ln1, rows), weights).add_(biases)
    q, k, v = projected.view(n_circuits, 3, n_heads, batch, n_pos, -1).unbind(1)
    if model.cfg.positional_embedding_type == "rotary":
        def rotate(x: torch.Tensor) -> torch.Tensor:  # TransformerLens wants (batch, pos, head, d_head)
            x = attn.apply_rotary(x.permute(0, 2, 3, 1, 4).flatten(0, 1), 0, None)
            return x.unflatten(0, (n_circuits, batch)).permute(0, 3, 1, 2, 4)
        q, k = rotate(q), rotate(k)
    scores = (q @ k.transpose(-1, -2)) / attn.attn_scale  # (circuit, head, batch, query, key)
    if model.cfg.attention_dir == "causal":
        future = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    z = torch.softmax(scores, dim=-1) @ v  # (circuit, head, batch, pos, d_head)
    # Centred inputs downstream need centred outputs: fold the centring into W_O (a mean over d_model
    # commutes with the projection), instead of a pass over the head-fold expanded outputs.
    W_O = attn.W_O - attn.W_O.mean(-1, keepdim=True) if centered else attn.W_O
    return (z.flatten(2, 3) @ W_O).view(n_circuits, n_heads, batch, n_pos, d_model)


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
    cfg = model.cfg
    n_circuits = mask.shape[0]
    # q/k/v-major destination order inside each layer, so the mixed inputs come out as (3, head)
    order = _qkv_major_order(graph, mask.device)
    mask = mask.index_select(2, order)
    inputs, shortformer_pos = _input_outputs(model, graph, tokens)
    batch, n_pos = tokens.shape
    ablated = ablated.to(inputs.dtype)
    track_grad = torch.is_grad_enabled()  # in-place writes into one buffer only without autograd

    # LayerNorm ignores the mean of its input, so with LN every delta and the base can be stored
    # centred: the mixed inputs then arrive centred and attention folds LN into its projection.
    center = cfg.normalization_type in ("LN", "LNPre") and not return_deltas
    if center:
        inputs, ablated = _centered(inputs), _centered(ablated)
    first = (inputs - ablated[: graph.n_inputs]).unsqueeze(0).expand(n_circuits, -1, -1, -1, -1)
    deltas = _SourceDeltas(first, graph.n_sources, track_grad)
    # the part of every destination's input that no mask touches: ablated values upstream + b_O
    base = ablated[: graph.n_inputs].sum(0, keepdim=True)
    if shortformer_pos is not None:
        shortformer_pos = shortformer_pos.repeat(n_circuits, 1, 1).view(n_circuits, batch, n_pos, -1)

    for layer in range(cfg.n_layers):
        n_up = deltas.size
        qkv = graph.attention_destinations(layer)
        qkv_in = _mix(mask[:, :n_up, qkv], deltas.stacked(), base)
        qkv_in = qkv_in.view(n_circuits, 3, cfg.n_heads, batch, n_pos, cfg.d_model)
        heads = _attention(model, layer, qkv_in, shortformer_pos, center)
        layer_ablated = ablated[graph.layer_sources(layer)]
        deltas.append(heads, layer_ablated[: cfg.n_heads])
        b_O = model.blocks[layer].attn.b_O
        base = base + layer_ablated[: cfg.n_heads].sum(0, keepdim=True) + (b_O - b_O.mean() if center else b_O)
        if not cfg.attn_only:
            n_up = deltas.size
            dest = graph.mlp_destination(layer)
            mlp_in = _mix(mask[:, :n_up, dest : dest + 1], deltas.stacked(), base)
            block = model.blocks[layer]
            mlp_out = block.mlp(_normalize(model, block.ln2, mlp_in.view(n_circuits * batch, n_pos, -1)))
            mlp_out = mlp_out.view(n_circuits, 1, batch, n_pos, -1)
            deltas.append(_centered(mlp_out) if center else mlp_out, layer_ablated[cfg.n_heads :])
            base = base + layer_ablated[cfg.n_heads :].sum(0, keepdim=True)

    final = _mix(mask[:, :, -1:], deltas.stacked(), base).view(n_circuits * batch, n_pos, -1)
    final = _normalize(model, getattr(model, "ln_final", None), final)
    logits = model.unembed(final).view(n_circuits, batch, n_pos, -1)
    if return_deltas:
        return logits, deltas.stacked()
    return logits


@functools.lru_cache(maxsize=32)
def _qkv_major_order(graph: Graph, device: torch.device) -> torch.Tensor:
    """A permutation of destinations that lists each layer's q inputs, then k, then v."""
    order = list(range(graph.n_destinations))
    for layer in range(graph.n_layers):
        span = graph.attention_destinations(layer)
        head_major = order[span]
        order[span] = head_major[0::3] + head_major[1::3] + head_major[2::3]
    return torch.tensor(order, device=device)


# ---- the interface the rest of the project uses ----------------------------------------------


def source_outputs(model: HookedTransformer, graph: Graph, tokens: torch.Tensor) -> torch.Tensor:
    """Every source's output on a clean run of ``tokens`` (batch, pos): (source, batch, pos, d_model)."""
    check_model(model, graph)
    zero = torch.zeros(graph.n_sources, 1, 1, model.cfg.d_model, dtype=model.cfg.dtype, device=tokens.device)
    mask = torch.ones(1, graph.n_sources, graph.n_destinations, dtype=model.cfg.dtype, device=tokens.device)
    with torch.no_grad():  # zero ablation: source output minus ablated value is the output itself
        _, outputs = patched_forward(model, graph, tokens, zero, mask, return_deltas=True)
    return outputs[0].clone()


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
    *,
    circuits_per_pass: int = 8,
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
    # A few circuits per pass keep the (circuit x 3 x head)-fold q/k/v inputs in cache: measured
    # faster per circuit than one pass over all of them (benchmarks/bench_patching.py).
    logits = torch.cat([
        patched_forward(model, graph, tokens, ablated, dense[start : start + circuits_per_pass])
        for start in range(0, dense.shape[0], circuits_per_pass)
    ])
    return logits[0] if single else logits


def kl_divergence(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) per row, over the last (vocab) dimension; shapes (..., vocab) -> (...)."""
    ref = F.log_softmax(reference_logits, dim=-1)
    other = F.log_softmax(logits, dim=-1)
    return (ref.exp() * (ref - other)).sum(-1)
