"""The patching engine's bookkeeping: per source, its output minus its ablated value (a "delta"),
and the masked sums that turn them into destination inputs (the package docstring gives the
formula).  Shared by every architecture's pass (``transformer.py``, ``mamba.py``).

Dimension names: source, dest, circuit, batch, pos, d_model.
"""

from __future__ import annotations

import torch


def centered(x: torch.Tensor) -> torch.Tensor:
    """x minus its mean over the last (d_model) dimension."""
    return x - x.mean(-1, keepdim=True)


class SourceDeltas:
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
    def start(cls, known: torch.Tensor, ablated: torch.Tensor, resumed: bool, n_circuits: int, n_sources: int, track_grad: bool) -> SourceDeltas:
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

    def at_positions(self, positions: torch.Tensor) -> SourceDeltas:
        """A new stack holding the deltas so far at ``positions`` (long (n,)) only, with room for the rest."""
        shared = None if self.shared is None else self.shared.index_select(2, positions)
        return SourceDeltas(self.stacked().index_select(3, positions), self.n_sources, self.track_grad, shared)

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


def at_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
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
