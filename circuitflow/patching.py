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

A Mamba model (``Graph.mamba``, REFERENCE.md 9) is patched the same way at the level of layers: each
layer's input is the masked sum above over the input and the earlier layers' output projections,
the layer runs its RMSNorm and mixer (in_proj, causal conv1d, selective scan, gated by the skip
branch, out_proj) on it, and the logits read the masked sum over every source.  The masks, deltas
and mixing are the same code for both architectures (``_SourceDeltas``); only the per-layer
computation differs (``_attention`` and the MLP, or ``_mamba_mixer``, written from mamba-lens's
``HookedMambaBlock`` weights; ``check_model`` dispatches on ``graph.architecture``).

A pass can also resume part-way (``run_circuits_from``, ``resumed_forward``): given the outputs of
the sources written before some destination reads the residual stream (``sources_before``), only
the stages from there on run -- exact for circuits that keep every edge into the earlier
destinations, whose sources then deliver those outputs.  It can also stop at some positions: after
the last layer's attention everything is per position.  ACDC evaluates its candidate edges this way.

Dimension names used throughout: source, dest, circuit, batch, pos, d_model, head, d_head, vocab;
for Mamba also d_inner (the mixer's width) and d_state (the scan's state per channel).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.graph import Graph, check_supported
from circuitflow.numerics import flush_denormal

def check_model(model: HookedTransformer, graph: Graph) -> None:
    """Raise one clear error if ``graph`` is not the graph of ``model`` (a HookedTransformer, or a
    mamba-lens HookedMamba with a Mamba graph)."""
    cfg = model.cfg
    if graph.is_mamba or not isinstance(cfg, HookedTransformerConfig):
        _check_mamba_model(model, graph)
        return
    if (cfg.n_layers, cfg.n_heads, cfg.attn_only) != (graph.n_layers, graph.n_heads, graph.attn_only):
        raise ValueError(
            f"The graph ({graph.n_layers} layers, {graph.n_heads} heads, attn_only={graph.attn_only}) "
            f"does not belong to this model ({cfg.n_layers} layers, {cfg.n_heads} heads, attn_only={cfg.attn_only}); "
            "build it with Graph.from_config(model.cfg)."
        )
    check_supported(cfg, split_input=graph.split_input)


def _check_mamba_model(model, graph: Graph) -> None:
    """``check_model`` where the graph or the model is Mamba's: both must be, with the same layers."""
    from mamba_lens import HookedMamba

    if not isinstance(model, HookedMamba) or not graph.is_mamba:
        model_kind = "a Mamba model" if isinstance(model, HookedMamba) else "a transformer"
        raise ValueError(f"The graph ({graph.architecture}) does not belong to this model ({model_kind}); build it with Graph.from_config(model.cfg).")
    if model.cfg.n_layers != graph.n_layers:
        raise ValueError(
            f"The graph ({graph.n_layers} Mamba layers) does not belong to this model ({model.cfg.n_layers} layers); "
            "build it with Graph.from_config(model.cfg)."
        )
    if not isinstance(getattr(model.cfg, "dtype", None), torch.dtype):
        raise ValueError("This HookedMamba's cfg has no dtype (MambaCfg lacks one); build it with circuitflow.models.mamba.hooked_mamba.")


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
    A resumed forward pass (``resumed_forward``) starts from ``shared``, (n_shared, batch, pos,
    d_model) deltas of the given upstream sources, the same in every circuit: they are kept once,
    not per circuit, and mixed into the destinations by one matrix product for all circuits.
    """

    def __init__(self, first: torch.Tensor, n_sources: int, track_grad: bool, shared: torch.Tensor | None = None):
        self.n_sources, self.track_grad, self.shared = n_sources, track_grad, shared
        self.n_shared = 0 if shared is None else shared.shape[0]
        self.blocks = [first]
        self.size = self.n_shared + first.shape[1]  # sources so far, shared ones included
        if not track_grad:
            self.buffer = first.new_empty(first.shape[0], n_sources - self.n_shared, *first.shape[2:])
            self.buffer[:, : first.shape[1]] = first

    @classmethod
    def start(cls, known: torch.Tensor, ablated: torch.Tensor, resumed: bool, n_circuits: int, n_sources: int, track_grad: bool) -> _SourceDeltas:
        """The stack holding the deltas of the ``known`` sources' outputs, (n_known, batch, pos,
        d_model): the inputs' (the same in every circuit, expanded), or with ``resumed`` the given
        upstream sources' (kept once, shared)."""
        n_known = known.shape[0]
        if not resumed:
            first = (known - ablated[:n_known]).unsqueeze(0).expand(n_circuits, -1, -1, -1, -1)
            return cls(first, n_sources, track_grad)
        shared = known - ablated[:n_known]
        return cls(shared.new_empty(n_circuits, 0, *shared.shape[1:]), n_sources, track_grad, shared)

    def append(self, outputs: torch.Tensor, ablated: torch.Tensor) -> None:
        """Add a block of sources: outputs (circuit, n, batch, pos, d_model), ablated (n, batch|1, pos|1, d_model)."""
        n = outputs.shape[1]
        if self.track_grad:
            self.blocks.append(outputs - ablated)
        else:
            start = self.size - self.n_shared
            torch.sub(outputs, ablated, out=self.buffer[:, start : start + n])
        self.size += n

    def at_positions(self, positions: torch.Tensor) -> _SourceDeltas:
        """A new stack holding the deltas so far at ``positions`` (long (n,)) only, with room for the rest."""
        shared = None if self.shared is None else self.shared.index_select(2, positions)
        return _SourceDeltas(self.stacked().index_select(3, positions), self.n_sources, self.track_grad, shared)

    def stacked(self) -> torch.Tensor:
        """The per-circuit deltas (circuit, source - n_shared, batch, pos, d_model)."""
        if not self.track_grad:
            return self.buffer[:, : self.size - self.n_shared]
        if len(self.blocks) > 1:
            self.blocks = [torch.cat(self.blocks, dim=1)]
        return self.blocks[0]

    def mix(self, mask: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Destination inputs: base + sum over the sources so far of mask * delta.

        mask: (circuit, source, dest) or (circuit, source, dest, pos) over at least the sources so
        far; base: (1, batch|1, pos|1, d_model).  Returns (circuit, dest, batch, pos, d_model).
        """
        own = mask[:, self.n_shared : self.size]
        if self.shared is None:
            return _mix(own, self.stacked(), base)
        mixed = _mix_shared(mask[:, : self.n_shared], self.shared, base)
        return mixed if self.size == self.n_shared else _mix(own, self.stacked(), mixed)


def _at_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (..., pos or 1, d_model) at ``positions`` only; a broadcast position axis of 1 stays as it is."""
    return x if x.shape[-2] == 1 else x.index_select(-2, positions)


def _mix(mask: torch.Tensor, deltas: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Destination inputs: base + sum over sources of mask * delta.

    mask: (circuit, source, dest) or (circuit, source, dest, pos);
    deltas: (circuit, source, batch, pos, d_model);
    base: (1, batch|1, pos|1, d_model), or per circuit and destination (circuit, dest, batch, pos, d_model).
    Returns (circuit, dest, batch, pos, d_model).
    """
    n_circuits, n_sources, batch, n_pos, d_model = deltas.shape
    if base.dim() == 4:
        base = base.unsqueeze(1)
    if mask.dim() == 4:  # per-position edges; contiguous, as the attention layer views its input
        return (base + torch.einsum("csdp,csbpm->cdbpm", mask, deltas)).contiguous()
    flat = deltas.reshape(n_circuits, n_sources, -1)
    base = base.expand(-1, -1, batch, n_pos, d_model).reshape(base.shape[0], base.shape[1], -1)
    mixed = torch.baddbmm(base, mask.transpose(1, 2), flat)
    return mixed.view(n_circuits, -1, batch, n_pos, d_model)


def _mix_shared(mask: torch.Tensor, shared: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``_mix`` for deltas shared by every circuit, shared: (source, batch, pos, d_model): one matrix
    product (circuit x dest, source) @ (source, batch x pos x d_model) for all circuits."""
    n_sources, batch, n_pos, d_model = shared.shape
    if mask.dim() == 4:
        return (base.unsqueeze(1) + torch.einsum("csdp,sbpm->cdbpm", mask, shared)).contiguous()
    n_circuits, _, n_dest = mask.shape
    base = base.expand(1, batch, n_pos, d_model).reshape(1, -1)
    rows = mask.transpose(1, 2).reshape(n_circuits * n_dest, n_sources)
    return torch.addmm(base, rows, shared.reshape(n_sources, -1)).view(n_circuits, n_dest, batch, n_pos, d_model)


def _attention(
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
        projected = torch.matmul(_normalize(model, block.ln1, rows), weights).add_(biases)
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
            return _mamba_forward(model, graph, tokens, ablated, mask, upstream, return_deltas, positions)
    cfg = model.cfg
    n_circuits = mask.shape[0]
    # q/k/v-major destination order inside each layer, so the mixed inputs come out as (3, head)
    order = _qkv_major_order(graph, mask.device)
    mask = mask.index_select(2, order)
    inputs, shortformer_pos = _input_outputs(model, graph, tokens)
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
        known, ablated = _at_positions(known, positions), _at_positions(ablated, positions)
        mask = mask.index_select(3, positions) if mask.dim() == 4 else mask
        n_pos, narrowed = len(positions), True

    # LayerNorm ignores the mean of its input, so with LN every delta and the base can be stored
    # centred: the mixed inputs then arrive centred and attention folds LN into its projection.
    center = cfg.normalization_type in ("LN", "LNPre") and not return_deltas
    if center:
        known, ablated = _centered(known), _centered(ablated)
    deltas = _SourceDeltas.start(known, ablated, upstream is not None, n_circuits, graph.n_sources, track_grad)
    # the part of every destination's input that no mask touches: ablated values upstream + b_O
    base = ablated[: graph.n_inputs].sum(0, keepdim=True)

    for layer in range(cfg.n_layers):
        written = graph.layer_sources(layer)
        last = layer == cfg.n_layers - 1
        if written.start >= n_known:  # the layer's heads are not given: compute them
            qkv_in = deltas.mix(mask[:, :, graph.attention_destinations(layer)], base)
            qkv_in = qkv_in.view(n_circuits, 3, cfg.n_heads, batch, n_pos, cfg.d_model)
            heads = _attention(model, layer, qkv_in, shortformer_pos, center, positions if last else None)
        if last and not narrowed:  # from here on only the wanted positions matter
            deltas = deltas.at_positions(positions)
            ablated, base = _at_positions(ablated, positions), _at_positions(base, positions)
            mask = mask.index_select(3, positions) if mask.dim() == 4 else mask
            n_pos, narrowed = len(positions), True
        if written.start >= n_known:
            deltas.append(heads, ablated[written][: cfg.n_heads])
        layer_ablated = ablated[written]
        b_O = model.blocks[layer].attn.b_O
        base = base + layer_ablated[: cfg.n_heads].sum(0, keepdim=True) + (b_O - b_O.mean() if center else b_O)
        if not cfg.attn_only:
            if written.start + cfg.n_heads >= n_known:  # the MLP's output is not given
                dest = graph.mlp_destination(layer)
                mlp_in = deltas.mix(mask[:, :, dest : dest + 1], base)
                block = model.blocks[layer]
                mlp_out = block.mlp(_normalize(model, block.ln2, mlp_in.view(n_circuits * batch, n_pos, -1)))
                mlp_out = mlp_out.view(n_circuits, 1, batch, n_pos, -1)
                deltas.append(_centered(mlp_out) if center else mlp_out, layer_ablated[cfg.n_heads :])
            base = base + layer_ablated[cfg.n_heads :].sum(0, keepdim=True)

    final = deltas.mix(mask[:, :, -1:], base).view(n_circuits * batch, n_pos, -1)
    final = _normalize(model, getattr(model, "ln_final", None), final)
    logits = model.unembed(final).view(n_circuits, batch, n_pos, -1)
    if return_deltas:
        return logits, deltas.stacked()
    return logits


def _mamba_forward(
    model,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    mask: torch.Tensor,
    upstream: torch.Tensor | None,
    return_deltas: bool,
    positions: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``_forward`` on a HookedMamba: every layer reads its masked input (``_SourceDeltas.mix``),
    runs RMSNorm and its mixer, and writes one source; the logits read the masked sum of all.
    Layers whose outputs ``upstream`` gives are skipped.  With ``positions`` only the final mix,
    RMSNorm and unembedding narrow to them: each layer's scan needs every earlier position."""
    n_circuits = mask.shape[0]
    batch, n_pos = tokens.shape
    inputs = model.embedding(tokens).unsqueeze(0)  # (1, batch, pos, d_model): the input source
    ablated = ablated.to(inputs.dtype)
    known = inputs if upstream is None else upstream.to(inputs.dtype)
    deltas = _SourceDeltas.start(known, ablated, upstream is not None, n_circuits, graph.n_sources, torch.is_grad_enabled())
    base = ablated[: graph.n_inputs].sum(0, keepdim=True)  # what every mix gets from ablated sources
    for layer in range(graph.n_layers):
        written = graph.layer_sources(layer)
        if written.start >= known.shape[0]:  # the layer's output is not given: compute it
            dest = graph.layer_destination(layer)
            layer_in = deltas.mix(mask[:, :, dest : dest + 1], base).view(n_circuits * batch, n_pos, -1)
            out = _mamba_mixer(model.blocks[layer], layer_in)
            deltas.append(out.view(n_circuits, 1, batch, n_pos, -1), ablated[written])
        base = base + ablated[written].sum(0, keepdim=True)
    if positions is not None:
        deltas, base = deltas.at_positions(positions), _at_positions(base, positions)
        mask = mask.index_select(3, positions) if mask.dim() == 4 else mask
        n_pos = len(positions)
    final = deltas.mix(mask[:, :, -1:], base).view(n_circuits * batch, n_pos, -1)
    logits = model.lm_head(model.norm(final)).view(n_circuits, batch, n_pos, -1)
    if return_deltas:
        return logits, deltas.stacked()
    return logits


def _mamba_mixer(block: torch.nn.Module, resid: torch.Tensor) -> torch.Tensor:
    """One HookedMambaBlock without its residual connection: RMSNorm, then the mixer.

    resid: (rows, pos, d_model) the layer's input.  Returns out_proj's output (rows, pos, d_model),
    what the layer adds to the residual stream.  The same computation as mamba-lens's unfused
    path (``fast_conv=False, fast_ssm=False``), from the block's modules and weights:
        x = silu(causal_conv1d(in_proj(norm(resid)))),  delta = softplus(W_delta_2(W_delta_1(x))),
        h_t = exp(delta_t A) * h_{t-1} + delta_t B_t x_t,   y_t = h_t C_t + D x_t,
        out = out_proj(y * silu(skip_proj(norm(resid)))),   A = -exp(A_log).
    """
    n_pos = resid.shape[1]
    normed = block.norm(resid)
    skip = block.skip_proj(normed)  # (rows, pos, d_inner)
    conv = block.conv1d(block.in_proj(normed).transpose(1, 2))[..., :n_pos]  # causal: drop the right padding
    x = F.silu(conv.transpose(1, 2))  # (rows, pos, d_inner)
    delta = F.softplus(block.W_delta_2(block.W_delta_1(x)))  # (rows, pos, d_inner)
    A = -torch.exp(block.A_log)  # (d_inner, d_state)
    decay = torch.exp(delta.unsqueeze(-1) * A)  # (rows, pos, d_inner, d_state)
    drive = (delta * x).unsqueeze(-1) * block.W_B(x).unsqueeze(-2)  # delta_t B_t x_t, same shape
    C = block.W_C(x).unsqueeze(-1)  # (rows, pos, d_state, 1)
    h = torch.zeros_like(decay[:, 0])
    ys = []
    for t in range(n_pos):  # the selective scan: sequential in position
        h = h * decay[:, t] + drive[:, t]
        ys.append((h @ C[:, t]).squeeze(-1))
    y = torch.stack(ys, dim=1) + x * block.W_D
    return block.out_proj(y * F.silu(skip))


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
