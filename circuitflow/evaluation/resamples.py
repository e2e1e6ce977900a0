"""Resample ablation over K corrupted inputs per clean input, the circuit's outputs aggregated.

With resample ablation an ablated edge carries its source's output on ONE corrupted input, so a
circuit's score mixes what the circuit does with which corrupted input it was paired with.  Test-
time augmentation's remedy: pair each clean input with K corrupted inputs and average the outputs,

    logits         mean_j logits_j                                  (the mean of the logits)
    probabilities  log mean_j softmax(logits_j) = logsumexp_j log_softmax(logits_j) - log K

(the second is a log-probability, which every behavior with an output distribution scores as it
scores logits: its scores and KL depend on the logits through softmax or logit differences only).
Copy j = 0 is the pair's own pairing (clean i with corrupted i); copy j >= 1 pairs clean i with
corrupted ``perm_j[i]``, ``perm_j`` a permutation seeded by (seed, j), so K = 4 uses K = 2's copies
and more (``resample_indices``).  K = 1 returns the copy's logits themselves, so its scores are
``faithfulness.per_example_scores``'s to the byte (tests/test_resamples.py).

The K copies of a batch run in ONE pass of the engine: the clean tokens repeated K times and the K
ablation value sets stacked along the batch, copy-major ((K * batch, ...), copy j's rows
``j * batch .. (j + 1) * batch``).  ``resample_evaluation`` returns the aggregated scores and KL for
every prefix K' in ``ks`` (one pass at the largest K gives them all) and each copy's own score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from transformer_lens import HookedTransformer

from circuitflow.graph import Graph
from circuitflow.patching import full_model_logits, run_circuits

Aggregate = Literal["logits", "probabilities"]
AGGREGATES: tuple[Aggregate, ...] = ("logits", "probabilities")
# (circuit logits (batch, pos, vocab), model logits (batch, pos, vocab), example indices) -> (batch,)
Score = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def resample_indices(n_examples: int, k: int, seed: int) -> torch.Tensor:
    """Which corrupted input each copy pairs with each clean input: long (k, n_examples); row 0 is
    0 .. n - 1 (the pair's own pairing), row j >= 1 a permutation drawn from numpy's generator
    seeded by [seed, j] (so a larger k only adds rows)."""
    if k < 1 or n_examples < 1:
        raise ValueError(f"Resampling needs k >= 1 copies of n_examples >= 1 inputs, got k={k}, n_examples={n_examples}.")
    rows = [np.arange(n_examples)] + [np.random.default_rng([seed, j]).permutation(n_examples) for j in range(1, k)]
    return torch.tensor(np.stack(rows), dtype=torch.long)


def ladder(k: int) -> list[int]:
    """The K values a figure plots up to ``k``: 1, 2, 4, ... below k, then k."""
    return sorted({*(2**i for i in range(k.bit_length()) if 2**i < k), k})


def aggregate(logits: torch.Tensor, how: Aggregate) -> torch.Tensor:
    """The K copies' outputs as one: (k, batch, pos, vocab) -> (batch, pos, vocab).

    logits: the mean of the logits; probabilities: the log of the mean of the probabilities (a
    log-probability).  For k = 1 both return the copy's logits themselves (no arithmetic)."""
    if how not in AGGREGATES:
        raise ValueError(f"Unknown aggregate {how!r}; choose one of {', '.join(AGGREGATES)}.")
    if logits.shape[0] == 1:
        return logits[0]
    if how == "logits":
        return logits.mean(0)
    return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


def stacked_batch(clean: torch.Tensor, corrupted: torch.Tensor, indices: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's K copies stacked along the batch, copy-major.

    clean (n_examples, pos); corrupted: the sources' outputs on the corrupted inputs
    (source, n_examples, pos, d_model); indices (k, n_examples) from ``resample_indices``;
    index: long (batch,) the clean examples.  Returns tokens (k * batch, pos) and ablation values
    (source, k * batch, pos, d_model)."""
    k = indices.shape[0]
    tokens = clean[index].repeat(k, 1)
    values = corrupted[:, indices[:, index].reshape(-1)]
    return tokens, values


@dataclass(frozen=True)
class ResampleResult:
    """scores[(aggregate, k)] and kl[(aggregate, k)]: (circuit, n_examples) float64 per prefix k of
    the copies (kl empty without a KL function); per_copy: (circuit, k_max, n_examples) float64,
    each copy's own score."""

    scores: dict[tuple[str, int], torch.Tensor]
    kl: dict[tuple[str, int], torch.Tensor]
    per_copy: torch.Tensor


def resample_evaluation(
    model: HookedTransformer,
    graph: Graph,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    masks: torch.Tensor,
    score: Score,
    indices: torch.Tensor,
    *,
    ks: list[int] | None = None,
    aggregates: tuple[Aggregate, ...] = ("logits",),
    kl: Score | None = None,
    batch_size: int = 64,
    circuits_per_call: int = 16,
) -> ResampleResult:
    """Scores (lower is better) and KL(model || circuit) of every circuit under resample ablation
    over the copies ``indices`` (k_max, n_examples), aggregated over each prefix k in ``ks``
    (default: k_max alone) by each of ``aggregates``.

    clean (n_examples, pos); corrupted (source, n_examples, pos, d_model): the sources' outputs on
    the corrupted inputs (the resample ablation values); masks (circuit, n_edges).  The engine runs
    once per batch and chunk of circuits on the stacked copies (``stacked_batch``).
    """
    n_examples, k_max = clean.shape[0], indices.shape[0]
    if corrupted.shape[1] != n_examples or indices.shape[1] != n_examples:
        raise ValueError(f"Resampling needs one row of ablation values and of indices per example ({n_examples}); give the corrupted inputs' source outputs.")
    ks = [k_max] if ks is None else ks
    if not ks or min(ks) < 1 or max(ks) > k_max:
        raise ValueError(f"Every k must lie in 1 .. {k_max} (the copies given), got {ks}.")
    keys = [(how, k) for how in aggregates for k in ks]
    scores = {key: torch.empty(masks.shape[0], n_examples, dtype=torch.float64) for key in keys}
    kls = {key: torch.empty(masks.shape[0], n_examples, dtype=torch.float64) for key in keys} if kl is not None else {}
    per_copy = torch.empty(masks.shape[0], k_max, n_examples, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, n_examples, batch_size):
            index = torch.arange(start, min(start + batch_size, n_examples))
            tokens, values = stacked_batch(clean, corrupted, indices, index)
            model_logits = full_model_logits(model, graph, clean[index])  # as faithfulness.per_example_scores
            for first in range(0, masks.shape[0], circuits_per_call):
                chunk = masks[first : first + circuits_per_call]
                logits = run_circuits(model, graph, tokens, values, chunk).unflatten(1, (k_max, len(index)))  # (circuit, k, batch, pos, vocab)
                for c in range(chunk.shape[0]):
                    for j in range(k_max):
                        per_copy[first + c, j, index] = score(logits[c, j], model_logits, index).double()
                    for how, k in keys:
                        combined = aggregate(logits[c, :k], how)
                        scores[how, k][first + c, index] = score(combined, model_logits, index).double()
                        if kl is not None:
                            kls[how, k][first + c, index] = kl(combined, model_logits, index).double()
    return ResampleResult(scores, kls, per_copy)
