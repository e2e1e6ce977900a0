"""A Mamba model (``Graph.mamba``, Ensign & Garriga-Alonso 2024) through the patching engine: each layer's input is
the masked sum over the input and the earlier layers' output projections (``deltas.py``), the layer
runs its RMSNorm and mixer (in_proj, causal conv1d, selective scan, gated by the skip branch,
out_proj) on it, and the logits read the masked sum over every source.  Written from mamba-lens's
``HookedMambaBlock`` weights, the same computation as its unfused path.

Dimension names: source, dest, circuit, batch, pos, d_model; d_inner (the mixer's width) and
d_state (the scan's state per channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from circuitflow.graph import Graph
from circuitflow.patching.deltas import SourceDeltas, at_positions


def check_mamba_model(model, graph: Graph) -> None:
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


def mamba_forward(
    model,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    mask: torch.Tensor,
    upstream: torch.Tensor | None,
    return_deltas: bool,
    positions: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``_forward`` on a HookedMamba: every layer reads its masked input (``SourceDeltas.mix``),
    runs RMSNorm and its mixer, and writes one source; the logits read the masked sum of all.
    Layers whose outputs ``upstream`` gives are skipped.  With ``positions`` only the final mix,
    RMSNorm and unembedding narrow to them: each layer's scan needs every earlier position."""
    n_circuits = mask.shape[0]
    batch, n_pos = tokens.shape
    inputs = model.embedding(tokens).unsqueeze(0)  # (1, batch, pos, d_model): the input source
    ablated = ablated.to(inputs.dtype)
    known = inputs if upstream is None else upstream.to(inputs.dtype)
    deltas = SourceDeltas.start(known, ablated, upstream is not None, n_circuits, graph.n_sources, torch.is_grad_enabled())
    base = ablated[: graph.n_inputs].sum(0, keepdim=True)  # what every mix gets from ablated sources
    for layer in range(graph.n_layers):
        written = graph.layer_sources(layer)
        if written.start >= known.shape[0]:  # the layer's output is not given: compute it
            dest = graph.layer_destination(layer)
            layer_in = deltas.mix(mask[:, :, dest : dest + 1], base).view(n_circuits * batch, n_pos, -1)
            out = mamba_mixer(model.blocks[layer], layer_in)
            deltas.append(out.view(n_circuits, 1, batch, n_pos, -1), ablated[written])
        base = base + ablated[written].sum(0, keepdim=True)
    if positions is not None:
        deltas, base = deltas.at_positions(positions), at_positions(base, positions)
        mask = mask.index_select(3, positions) if mask.dim() == 4 else mask
        n_pos = len(positions)
    final = deltas.mix(mask[:, :, -1:], base).view(n_circuits * batch, n_pos, -1)
    logits = model.lm_head(model.norm(final)).view(n_circuits, batch, n_pos, -1)
    if return_deltas:
        return logits, deltas.stacked()
    return logits


def mamba_mixer(block: torch.nn.Module, resid: torch.Tensor) -> torch.Tensor:
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
