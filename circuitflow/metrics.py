"""Metrics on logits that the behaviors and the discovery methods share.

Lower is better for every function here (they are losses and divergences, as in the papers).
Dimension names as everywhere in circuitflow: batch, pos, vocab.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def kl_divergence(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) per row, over the last (vocab) dimension; shapes (..., vocab) -> (...).
    Lower is better (0 when the two distributions agree)."""
    ref = F.log_softmax(reference_logits, dim=-1)
    other = F.log_softmax(logits, dim=-1)
    return (ref.exp() * (ref - other)).sum(-1)


def positions_kl(
    model_logits: torch.Tensor, circuit_logits: torch.Tensor, positions: Sequence[int] | slice
) -> torch.Tensor:
    """KL(model || circuit) per example, averaged over ``positions``; lower is better.

    model_logits, circuit_logits: (batch, pos, vocab); positions: a slice or a list of positions.
    Returns (batch,).  For a numerical output (vocab 1) it is always 0.
    """
    return kl_divergence(model_logits[:, positions], circuit_logits[:, positions]).mean(-1)
