"""Ablation values: what each source delivers along an ablated edge (the README).

One implementation per kind of ``settings.Ablation``, each giving a tensor of shape
(source, n_examples | 1, pos | 1, d_model) for the patching engine (``patching.run_circuits``):

    zero      zeros, one row per source;
    mean      the sources' mean output over a reference set (the corrupted inputs), over examples and
              positions, or over examples only (``per_position``): ``store.mean_activations``, summed
              in float64, the one mean the activation cache holds too;
    resample  the sources' outputs on the corrupted inputs themselves, paired: example i takes
              corrupted example i's activations.

``ablation_values`` computes them from source outputs, ``ablation_values_from_cache`` reads them
from the cache stage's files (``CACHE_FILES``), and ``select_examples`` cuts a batch's rows out of
either.  An unknown ablation is a ValueError naming the known ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from circuitflow.settings import Ablation
from circuitflow.store import mean_activations, read_activations

# The cache file each kind reads: zero reads the means only for their shape and dtype.
CACHE_FILES: dict[Ablation, str] = {
    Ablation.ZERO: "mean.parquet",
    Ablation.MEAN: "mean.parquet",
    Ablation.RESAMPLE: "corrupted.parquet",
}


def as_ablation(ablation: Ablation | str) -> Ablation:
    """``ablation`` as an ``Ablation``; an unknown name is one ValueError sentence naming the known ones."""
    try:
        return Ablation(ablation)
    except ValueError:
        known = ", ".join(kind.value for kind in Ablation)
        raise ValueError(f"Unknown ablation {ablation!r}; choose one of {known}.") from None


def zero_values(like: torch.Tensor) -> torch.Tensor:
    """Zeros (source, 1, 1, d_model) in the dtype and device of ``like`` (any (source, ..., d_model) tensor)."""
    return torch.zeros(like.shape[0], 1, 1, like.shape[-1], dtype=like.dtype, device=like.device)


def ablation_values(
    ablation: Ablation | str,
    *,
    corrupted: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    per_position: bool = False,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """What each source delivers along an ablated edge, (source, batch|1, pos|1, d_model).

    zero:     zeros shaped like ``like`` (any (source, ..., d_model) tensor).
    mean:     ``store.mean_activations(reference, per_position)`` of ``reference``, the source
              outputs (source, batch, pos, d_model) on a reference dataset, float32 or float64.
    resample: ``corrupted`` itself, the source outputs (source, batch, pos, d_model) on the
              corrupted inputs.
    Nothing given is modified; resample returns ``corrupted`` itself, not a copy.
    """
    kind = as_ablation(ablation)
    if kind is Ablation.ZERO:
        if like is None:
            raise ValueError("Zero ablation needs `like`, a tensor of source outputs to take the shape from.")
        return zero_values(like)
    if kind is Ablation.MEAN:
        if reference is None:
            raise ValueError("Mean ablation needs `reference`, the source outputs on a reference dataset.")
        return mean_activations(reference, per_position)
    if corrupted is None:
        raise ValueError("Resample ablation needs `corrupted`, the source outputs on the corrupted inputs.")
    return corrupted


def ablation_values_from_cache(ablation: Ablation | str, cache_dir: str | os.PathLike[str]) -> torch.Tensor:
    """The ablation values of a pair read from its activation cache directory (the cache stage's
    ``mean.parquet`` and ``corrupted.parquet``, see ``CACHE_FILES``): (source, batch|1, pos|1, d_model)."""
    kind = as_ablation(ablation)
    stored = read_activations(Path(cache_dir) / CACHE_FILES[kind]).activations
    return zero_values(stored) if kind is Ablation.ZERO else stored


def select_examples(ablated: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
    """The ablation values of the examples ``index`` (a long tensor or a slice) of a batch:
    ``ablated`` (source, n_examples | 1, pos | 1, d_model) itself when it has one row for every
    example, else its rows ``index`` along dimension 1."""
    return ablated if ablated.shape[1] == 1 else ablated[:, index]
