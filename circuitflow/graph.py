"""The computational graph of a transformer or a Mamba model: its nodes and edges (the graph conventions in the README, 9).

Sources (upstream nodes) write into the residual stream:
    ``input``                the token + positional embedding (or ``embed`` and ``pos_embed`` apart,
                             with ``split_input=True``, as the tracr circuits need),
    ``a{layer}.{head}``      one attention head's output, ``z @ W_O`` for that head (``b_O`` is a
                             constant of the residual stream and belongs to no edge),
    ``m{layer}``             one MLP's output.
Destinations (downstream nodes) read the residual stream:
    ``a{layer}.{head}.q|k|v`` one head's query, key or value input,
    ``m{layer}``             one MLP's input,
    ``logits``               the final residual stream.
An edge ``"{source} -> {destination}"`` exists when the source is strictly earlier in the residual
stream: heads of layer l feed ``m{l}`` and everything of later layers; ``m{l}`` feeds layer l+1 on.

With ``qkv_direct_edges=True`` the graph also has ACDC's edges ``a{l}.{h}.q -> a{l}.{h}`` (and k, v):
removing one ablates the whole query (key, value) input of that head.  With ``n_positions=P`` every
residual edge is split into P edges, one per token position: ``"{source} -> {destination} @ {p}"``.

A Mamba graph (``architecture="mamba"``, ``Graph.mamba`` or ``Graph.from_config(MambaCfg)``) is
layer-level (Ensign & Garriga-Alonso 2024): there are no heads, and each layer is one node,
    sources       ``input`` (the embedding) and ``l{layer}``, the layer's output projection;
    destinations  ``l{layer}``, the layer's input (before its RMSNorm), and ``logits``;
with an edge from every source to every strictly later destination (``input -> l0``,
``l0 -> l1``, ..., every source -> ``logits``) and optional per-position edges as above.  It is
the transformer graph with no heads and the MLP renamed: a layer's one node is read and written
like an MLP (``layer_destination``, ``layer_sources``), so every consumer of the graph works on
both.

The graph is tensors first (STYLE.md 2): ``parents`` is a (n_sources, n_destinations) boolean
matrix, edges are its True entries in a fixed order (destinations in forward order, then sources in
forward order, then positions), and names are views of those indices.  Nothing depends on Python's
hash order, so edge order and names are the same in every process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
from transformer_lens import HookedTransformerConfig

SUPPORTED_POSITIONAL_EMBEDDINGS = ("standard", "shortformer", "rotary")
ARCHITECTURES = ("transformer", "mamba")
Architecture = Literal["transformer", "mamba"]


@dataclass(frozen=True)
class Graph:
    """Nodes and edges of a pre-LayerNorm residual transformer (or a Mamba model) with the given shape."""

    n_layers: int
    n_heads: int
    attn_only: bool
    split_input: bool = False
    qkv_direct_edges: bool = False
    n_positions: int | None = None
    architecture: Architecture = "transformer"
    sources: tuple[str, ...] = field(init=False)
    destinations: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.qkv_direct_edges and self.n_positions is not None:
            raise ValueError(
                "A graph cannot have both q/k/v direct edges and per-position edges; "
                "choose one of qkv_direct_edges=True or n_positions."
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"Unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}.")
        if self.is_mamba and (self.n_heads, self.attn_only, self.split_input, self.qkv_direct_edges) != (0, False, False, False):
            raise ValueError(
                "A Mamba graph has one node per layer: no heads, no split input, no q/k/v direct edges; "
                "build it with Graph.mamba(n_layers, n_positions=...)."
            )
        inputs = ("embed", "pos_embed") if self.split_input else ("input",)
        sources, destinations = list(inputs), []
        layer_node = "l" if self.is_mamba else "m"  # a Mamba layer is wired like an MLP
        for layer in range(self.n_layers):
            heads = [f"a{layer}.{h}" for h in range(self.n_heads)]
            destinations += [f"{head}.{qkv}" for head in heads for qkv in "qkv"]
            sources += heads
            if not self.attn_only:
                destinations.append(f"{layer_node}{layer}")
                sources.append(f"{layer_node}{layer}")
        destinations.append("logits")
        object.__setattr__(self, "sources", tuple(sources))
        object.__setattr__(self, "destinations", tuple(destinations))

    @classmethod
    def mamba(cls, n_layers: int, *, n_positions: int | None = None) -> "Graph":
        """The layer-level graph of an ``n_layers`` Mamba model (see the module docstring)."""
        return cls(n_layers=n_layers, n_heads=0, attn_only=False, n_positions=n_positions, architecture="mamba")

    @classmethod
    def from_config(
        cls,
        cfg: HookedTransformerConfig | Any,
        *,
        split_input: bool = False,
        qkv_direct_edges: bool = False,
        n_positions: int | None = None,
    ) -> "Graph":
        """The graph of a TransformerLens model configuration, or of a mamba-lens ``MambaCfg``;
        architectures the patching engine cannot run (parallel attention+MLP, grouped-query
        attention, post-norm) are refused here."""
        if not isinstance(cfg, HookedTransformerConfig):
            from mamba_lens import MambaCfg

            if not isinstance(cfg, MambaCfg):
                raise ValueError(f"Graph.from_config takes a HookedTransformerConfig or a MambaCfg, got {type(cfg).__name__}.")
            if split_input or qkv_direct_edges:
                raise ValueError("A Mamba graph has no split input and no q/k/v direct edges; leave both False.")
            return cls.mamba(cfg.n_layers, n_positions=n_positions)
        check_supported(cfg, split_input=split_input)
        return cls(
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            attn_only=cfg.attn_only,
            split_input=split_input,
            qkv_direct_edges=qkv_direct_edges,
            n_positions=n_positions,
        )

    # ---- node bookkeeping -------------------------------------------------------------------
    @property
    def is_mamba(self) -> bool:
        return self.architecture == "mamba"

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    @property
    def n_destinations(self) -> int:
        return len(self.destinations)

    @cached_property
    def source_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.sources)}

    @cached_property
    def destination_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.destinations)}

    @property
    def n_inputs(self) -> int:
        """Number of input sources (1, or 2 with split_input)."""
        return 2 if self.split_input else 1

    def layer_sources(self, layer: int) -> slice:
        """Source indices written by ``layer`` (its heads, then its MLP; a Mamba layer's one node)."""
        per_layer = self.n_heads + (0 if self.attn_only else 1)
        start = self.n_inputs + layer * per_layer
        return slice(start, start + per_layer)

    def attention_destinations(self, layer: int) -> slice:
        """Destination indices of layer ``layer``'s q/k/v inputs, ordered head-major (h0.q h0.k h0.v h1.q ...);
        empty in a Mamba graph."""
        per_layer = 3 * self.n_heads + (0 if self.attn_only else 1)
        start = layer * per_layer
        return slice(start, start + 3 * self.n_heads)

    def mlp_destination(self, layer: int) -> int:
        if self.attn_only:
            raise ValueError("An attention-only model has no MLP destinations.")
        if self.is_mamba:
            raise ValueError("A Mamba graph has no MLP destinations; a layer's input is layer_destination(layer).")
        return self.attention_destinations(layer).stop

    def layer_destination(self, layer: int) -> int:
        """Destination index of a Mamba layer's input (before its RMSNorm)."""
        if not self.is_mamba:
            raise ValueError("Only a Mamba graph has one input per layer; a transformer layer has attention_destinations and mlp_destination.")
        return layer

    @cached_property
    def parents(self) -> torch.Tensor:
        """Bool (n_sources, n_destinations): True where the residual edge source -> destination exists."""
        parents = torch.zeros(self.n_sources, self.n_destinations, dtype=torch.bool)
        for layer in range(self.n_layers):
            upstream = self.layer_sources(layer).start  # inputs and all earlier layers
            parents[:upstream, self.attention_destinations(layer)] = True
            if not self.attn_only:  # the MLP's input (a Mamba layer's input, with no heads before it)
                parents[: upstream + self.n_heads, self.attention_destinations(layer).stop] = True
        parents[:, -1] = True  # logits read everything
        return parents

    # ---- edges ------------------------------------------------------------------------------
    @cached_property
    def _residual_edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(source index, destination index) of every residual edge, destination-major."""
        dst, src = self.parents.T.nonzero(as_tuple=True)
        return src, dst

    @property
    def n_residual_edges(self) -> int:
        return int(self.parents.sum())

    @property
    def n_direct_edges(self) -> int:
        return 3 * self.n_layers * self.n_heads if self.qkv_direct_edges else 0

    @property
    def n_edges(self) -> int:
        per_position = self.n_positions or 1
        return self.n_residual_edges * per_position + self.n_direct_edges

    @cached_property
    def edge_names(self) -> tuple[str, ...]:
        """Every edge's name, in edge-index order."""
        src, dst = self._residual_edges
        names = [f"{self.sources[s]} -> {self.destinations[d]}" for s, d in zip(src.tolist(), dst.tolist())]
        if self.n_positions is not None:
            names = [f"{name} @ {p}" for name in names for p in range(self.n_positions)]
        if self.qkv_direct_edges:
            names += [f"{d} -> {d[:-2]}" for d in self.destinations if d[-2:] in (".q", ".k", ".v")]
        return tuple(names)

    @cached_property
    def edge_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.edge_names)}

    def edges_to_mask(self, edge_mask: torch.Tensor) -> torch.Tensor:
        """Scatter per-edge values into the mask tensor the patching engine uses.

        edge_mask: (..., n_edges), any float dtype, may require grad.
        Returns (..., n_sources, n_destinations) or, with per-position edges,
        (..., n_sources, n_destinations, n_positions); absent edges are 0.  q/k/v direct edges are
        folded in by multiplying the columns of their destination.  Differentiable.
        """
        if edge_mask.shape[-1] != self.n_edges:
            raise ValueError(f"Edge mask has {edge_mask.shape[-1]} entries but the graph has {self.n_edges} edges.")
        lead = edge_mask.shape[:-1]
        src, dst = self._residual_edges
        per_position = self.n_positions or 1
        residual = edge_mask[..., : self.n_residual_edges * per_position]
        flat_cell = (src * self.n_destinations + dst).to(edge_mask.device)
        cells = self.n_sources * self.n_destinations
        if self.n_positions is None:
            dense = edge_mask.new_zeros(*lead, cells).index_copy(-1, flat_cell, residual)
            dense = dense.view(*lead, self.n_sources, self.n_destinations)
        else:
            residual = residual.reshape(*lead, self.n_residual_edges, per_position)
            dense = edge_mask.new_zeros(*lead, cells, per_position).index_copy(-2, flat_cell, residual)
            dense = dense.view(*lead, self.n_sources, self.n_destinations, per_position)
        if self.qkv_direct_edges:
            direct = edge_mask[..., self.n_residual_edges :]
            n_qkv = 3 * self.n_heads
            columns = [
                direct[..., layer * n_qkv : (layer + 1) * n_qkv] for layer in range(self.n_layers)
            ]
            ones = edge_mask.new_ones(*lead, self.n_destinations)
            scale = ones.clone()
            index = torch.cat(
                [torch.arange(self.attention_destinations(layer).start, self.attention_destinations(layer).stop)
                 for layer in range(self.n_layers)]
            ).to(edge_mask.device)
            scale = scale.index_copy(-1, index, torch.cat(columns, dim=-1))
            dense = dense * scale.unsqueeze(-2)
        return dense

    def describe(self) -> dict:
        """A JSON-able identity of the graph, stored with circuits so they can be checked against it
        (``Graph(**describe())`` is the same graph).  Transformer graphs leave ``architecture`` out,
        so the circuits written before Mamba support keep their bytes."""
        identity = {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "attn_only": self.attn_only,
            "split_input": self.split_input,
            "qkv_direct_edges": self.qkv_direct_edges,
            "n_positions": self.n_positions,
        }
        return {**identity, "architecture": self.architecture} if self.is_mamba else identity


def check_supported(cfg: HookedTransformerConfig, *, split_input: bool = False) -> None:
    """Refuse architectures the patching engine cannot run (parallel attention+MLP, grouped-query
    attention, other positional embeddings), with one sentence saying why."""
    if cfg.parallel_attn_mlp:
        raise ValueError("Parallel attention+MLP blocks (GPT-J, NeoX) are not supported: edges there are not additive.")
    if cfg.n_key_value_heads is not None and cfg.n_key_value_heads != cfg.n_heads:
        raise ValueError("Grouped-query attention is not supported; set ungroup_grouped_query_attention or use another model.")
    if cfg.positional_embedding_type not in SUPPORTED_POSITIONAL_EMBEDDINGS:
        raise ValueError(
            f"Positional embedding {cfg.positional_embedding_type!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_POSITIONAL_EMBEDDINGS)}."
        )
    if split_input and cfg.positional_embedding_type != "standard":
        raise ValueError("split_input=True needs standard positional embeddings (a separate pos_embed source).")
