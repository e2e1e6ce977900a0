"""Shi et al.'s flexible tests: sufficiency and partial necessity against random circuits (REFERENCE.md 5).

N random circuits C_r of a given size are built from random source -> sink paths
(``random_circuits``); faithfulness losses m (mean over examples of (s - s_M)^2) are compared:

  sufficiency       k = #{m(C) <= m(C_r) + atol}: C is at least as faithful as C_r;
  partial necessity k = #{m(M \\ C) > m(M \\ C_r) + atol}: removing C hurts more than removing C_r.

H0: P <= q*, binomial test "greater"; rejecting means the circuit passes (k >= 96 of 100 at the
defaults).  The tie rules are those of Shi et al.'s public code (``<=`` for sufficiency, ``>`` for
partial necessity), so a tie counts for the circuit in the first and against it in the second;
``ties`` = #{|difference| <= atol} is reported next to every k.  Under zero ablation ties are
common: on the tracr models a random circuit that holds one critical edge of the chain computes
the same broken output as one that holds all of them (see the module docstring of
``hypothesis_tests``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import torch

from circuitflow.circuit import Circuit
from circuitflow.evaluation.faithfulness import faithfulness_loss
from circuitflow.evaluation.hypothesis_base import (
    ALPHA,
    ATOL,
    N_RANDOM,
    Q_STAR,
    SEED,
    SWEEP_FRACTIONS,
    TIE_RULES,
    Evaluate,
    HypothesisResult,
    as_scores,
    binomial_p_greater,
    circuit_members,
    count_k_and_ties,
    evaluate_masks,
)
from circuitflow.evaluation.random_circuits import random_circuit_masks
from circuitflow.graph import Graph


def _random_comparison(
    test: str,
    evaluate: Evaluate,
    circuit: Circuit,
    model_scores: torch.Tensor | np.ndarray,
    sizes: Sequence[int],
    *,
    n_random: int,
    q_star: float,
    alpha: float,
    seed: int,
    atol: float,
    batch_size: int,
    progress: bool,
) -> pl.DataFrame:
    """One row per random-circuit size: how often C (sufficiency) or M \\ C (partial necessity)
    compares favourably with n_random random circuits (or their complements) of that size.
    Random circuits of size s come from the seed sequence [seed, s], so every caller draws the same ones."""
    graph = circuit.graph
    members = circuit_members(circuit)
    model = as_scores("model_scores", model_scores)
    randoms = [random_circuit_masks(graph, size, n_random, np.random.default_rng([seed, size])) for size in sizes]
    masks = torch.cat([members[None], *randoms])
    if test == "partial_necessity":
        masks = ~masks
    scores = evaluate_masks(evaluate, masks, batch_size=batch_size, desc=test, progress=progress)
    if scores.shape[1] != model.size:
        raise ValueError(f"evaluate scores {scores.shape[1]} examples but model_scores has {model.size}.")
    loss = faithfulness_loss(scores, torch.from_numpy(model)).numpy()  # m per circuit, lower is better
    own, random_loss = loss[0], loss[1:].reshape(len(sizes), n_random)
    k, ties = count_k_and_ties(TIE_RULES[test], np.full(len(sizes), own), random_loss, atol)
    p = binomial_p_greater(k, n_random, q_star)
    return pl.DataFrame(
        {
            "test": [test] * len(sizes),
            "size": list(sizes),
            "fraction": [s / graph.n_edges for s in sizes],
            "k": k.astype(np.int64),
            "ties": ties.astype(np.int64),
            "n_random": [n_random] * len(sizes),
            "fraction_beaten": k / n_random,
            "p_value": p,
            "passes": p < alpha,
            "circuit_size": [len(circuit)] * len(sizes),
            "circuit_fraction": [len(circuit) / graph.n_edges] * len(sizes),
            "circuit_loss": [float(own)] * len(sizes),
            "random_loss_median": np.median(random_loss, axis=1),
            "random_loss_q10": np.quantile(random_loss, 0.1, axis=1),
            "random_loss_q90": np.quantile(random_loss, 0.9, axis=1),
        }
    )


def _single(test: str, row: pl.DataFrame, q_star: float, alpha: float, seed: int, atol: float, n_examples: int) -> HypothesisResult:
    record = row.row(0, named=True)
    return HypothesisResult(
        test, "fraction_beaten", record["fraction_beaten"], record["p_value"], alpha, record["passes"], record["passes"],
        n_examples,
        {"n_random": record["n_random"], "q_star": q_star, "alpha": alpha, "seed": seed, "atol": atol,
         "size": record["size"], "k": record["k"], "ties": record["ties"], "tie_rule": TIE_RULES[test]},
        k=record["k"], ties=record["ties"],
    )


def _sweep_sizes(graph: Graph, fractions: Sequence[float]) -> list[int]:
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"Sweep fractions {list(fractions)} must be in (0, 1], e.g. 0.05 to 1.0.")
    return sorted({max(1, round(f * graph.n_edges)) for f in fractions})


def _one(test: str, evaluate: Evaluate, circuit: Circuit, model_scores, *, n_random: int, q_star: float, alpha: float,
         seed: int, atol: float, batch_size: int, progress: bool) -> HypothesisResult:
    row = _random_comparison(test, evaluate, circuit, model_scores, [len(circuit)], n_random=n_random, q_star=q_star,
                             alpha=alpha, seed=seed, atol=atol, batch_size=batch_size, progress=progress)
    return _single(test, row, q_star, alpha, seed, atol, as_scores("model_scores", model_scores).size)


def sufficiency_test(
    evaluate: Evaluate,
    circuit: Circuit,
    model_scores: torch.Tensor | np.ndarray,
    *,
    n_random: int = N_RANDOM,
    q_star: float = Q_STAR,
    alpha: float = ALPHA,
    seed: int = SEED,
    atol: float = ATOL,
    batch_size: int = 64,
    progress: bool = True,
) -> HypothesisResult:
    """Is C at least as faithful as q* of random circuits of its size?  k = #{m(C) <= m(C_r) + atol};
    p = P(Binom(N, q*) >= k).  Passes when rejected (k >= 96 of 100 at the defaults).
    model_scores: (n_examples,), lower is better."""
    return _one("sufficiency", evaluate, circuit, model_scores, n_random=n_random, q_star=q_star, alpha=alpha, seed=seed,
                atol=atol, batch_size=batch_size, progress=progress)


def partial_necessity_test(
    evaluate: Evaluate,
    circuit: Circuit,
    model_scores: torch.Tensor | np.ndarray,
    *,
    n_random: int = N_RANDOM,
    q_star: float = Q_STAR,
    alpha: float = ALPHA,
    seed: int = SEED,
    atol: float = ATOL,
    batch_size: int = 64,
    progress: bool = True,
) -> HypothesisResult:
    """Does removing C hurt more than removing q* of random circuits of its size?
    k = #{m(M \\ C) > m(M \\ C_r) + atol}; p = P(Binom(N, q*) >= k).  Passes when rejected."""
    return _one("partial_necessity", evaluate, circuit, model_scores, n_random=n_random, q_star=q_star, alpha=alpha,
                seed=seed, atol=atol, batch_size=batch_size, progress=progress)


def sufficiency_sweep(
    evaluate: Evaluate,
    circuit: Circuit,
    model_scores: torch.Tensor | np.ndarray,
    *,
    fractions: Sequence[float] = SWEEP_FRACTIONS,
    n_random: int = N_RANDOM,
    q_star: float = Q_STAR,
    alpha: float = ALPHA,
    seed: int = SEED,
    atol: float = ATOL,
    batch_size: int = 64,
    progress: bool = True,
) -> pl.DataFrame:
    """The sufficiency test against random circuits of each size round(fraction * n_edges) (5% to
    100% of the model by default; sizes deduplicated, ascending).  One row per size: test, size,
    fraction, k, ties, n_random, fraction_beaten, p_value, passes, circuit_size, circuit_fraction,
    circuit_loss and the random circuits' loss median / 10% / 90% quantiles (losses m, lower is better)."""
    return _random_comparison("sufficiency", evaluate, circuit, model_scores, _sweep_sizes(circuit.graph, fractions),
                              n_random=n_random, q_star=q_star, alpha=alpha, seed=seed, atol=atol,
                              batch_size=batch_size, progress=progress)


def partial_necessity_sweep(
    evaluate: Evaluate,
    circuit: Circuit,
    model_scores: torch.Tensor | np.ndarray,
    *,
    fractions: Sequence[float] = SWEEP_FRACTIONS,
    n_random: int = N_RANDOM,
    q_star: float = Q_STAR,
    alpha: float = ALPHA,
    seed: int = SEED,
    atol: float = ATOL,
    batch_size: int = 64,
    progress: bool = True,
) -> pl.DataFrame:
    """The partial-necessity test against complements of random circuits of each size; columns as
    ``sufficiency_sweep`` (``circuit_loss`` is m(M \\ C), the random losses m(M \\ C_r))."""
    return _random_comparison("partial_necessity", evaluate, circuit, model_scores, _sweep_sizes(circuit.graph, fractions),
                              n_random=n_random, q_star=q_star, alpha=alpha, seed=seed, atol=atol,
                              batch_size=batch_size, progress=progress)
