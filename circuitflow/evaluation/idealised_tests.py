"""Shi et al.'s idealised tests: equivalence, independence and minimality (REFERENCE.md 5).

Scores s are per example, lower is better; ``hypothesis_base`` holds the shared pieces.

Minimality's effect size.  Knocking edge e out of C changes each example's score by
s_i(C \\ e) - s_i(C).  The default effect (``effect="squared"``), as in Shi et al.'s public code, is
the mean over examples of the squared change,

    delta(e) = mean_i (s_i(C) - s_i(C \\ e))^2,

and the same for each reference knockout.  The alternative ``effect="mean_difference"`` is
|mean_i s_i(C \\ e) - mean_i s_i(C)|: there, an edge that makes half the examples better and half
worse by the same amount has delta 0 and is flagged unnecessary although it changes every output.

Ties.  Equivalence counts a tie (|s_C - s_M| <= atol) as one half: the null hypothesis is
symmetric in "the circuit is worse" and "the model is worse", and a tie is neither, so a circuit
identical to the model has p_hat = 1/2 and p = 1 (the public code passes a mean difference instead
and has no tie rule).  Minimality counts k = #{delta(e) > delta_ref + atol}, the public code's strict
``>``: a tie counts against the edge being necessary.  The number of ties is reported next to k.

Not applicable.  Where s(M) is constant (up to atol: the tracr and categorical SIIT scores compare
the model with itself, so s(M) is 0 on every example), equivalence and independence say nothing:
the circuit can only tie with or lose to the model, so P(s_C > s_M) has no reason to be 1/2, and a
constant is independent of everything (HSIC 0, p = 1).  Independence is likewise not applicable
when s(M \\ C) is constant.  Such results have status "not applicable" and never pass.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from scipy import stats

from circuitflow.circuit import Circuit
from circuitflow.evaluation.hypothesis_base import (
    ALPHA,
    ATOL,
    EPS,
    N_PERMUTATIONS,
    N_REFERENCES,
    Q_STAR,
    SEED,
    TIE_RULES,
    Effect,
    Evaluate,
    HypothesisResult,
    MinimalityResult,
    as_scores,
    binomial_p_less,
    check_effect,
    circuit_members,
    count_k_and_ties,
    evaluate_masks,
    is_constant,
    not_applicable,
)
from circuitflow.evaluation.random_circuits import reference_knockouts

CONSTANT_MODEL = "s(M) is constant over the examples (the score compares the model with itself)"


# ---- equivalence ---------------------------------------------------------------------------------


def equivalence_p_value(p_hat: float, n: int, eps: float = EPS) -> float:
    """Exact binomial p-value of H0: |P(delta > 0) - 1/2| <= eps, at the boundary 1/2 + eps.

    p = sum over k in 0..n with |k/n - 1/2| >= |p_hat - 1/2| of Binom(n, 1/2 + eps)(k).
    (n=100, eps=0.1: p_hat 0.5 -> 1.0, 0.65 -> 0.18, 0.75 -> 0.0012.)
    """
    if n < 1 or not 0 <= p_hat <= 1:
        raise ValueError(f"p_hat={p_hat} must lie in [0, 1] and n={n} be positive.")
    k = np.arange(n + 1)
    # |k/n - 1/2| >= |p_hat - 1/2| in units of 1/(2n), with slack for p_hat's rounding
    extreme = np.abs(2 * k - n) >= abs(2 * n * p_hat - n) - 1e-9
    return float(min(1.0, stats.binom.pmf(k[extreme], n, 0.5 + eps).sum()))


def equivalence_test(
    circuit_scores: torch.Tensor | np.ndarray,
    model_scores: torch.Tensor | np.ndarray,
    *,
    eps: float = EPS,
    alpha: float = ALPHA,
    atol: float = ATOL,
) -> HypothesisResult:
    """Is the circuit as good as the model on each example, half the time?  circuit_scores and
    model_scores: (n_examples,), lower is better.  Statistic p_hat = fraction of examples with
    s_C - s_M > atol, ties (|s_C - s_M| <= atol) counted as one half.  Passes when not rejected;
    not applicable when s(M) is constant."""
    circuit = as_scores("circuit_scores", circuit_scores)
    model = as_scores("model_scores", model_scores)
    if circuit.shape != model.shape:
        raise ValueError(f"circuit_scores {circuit.shape} and model_scores {model.shape} must score the same examples.")
    delta = circuit - model
    worse, ties = int((delta > atol).sum()), int((np.abs(delta) <= atol).sum())
    n = delta.size
    p_hat = (worse + 0.5 * ties) / n
    settings = {"eps": eps, "alpha": alpha, "atol": atol, "n_worse": worse, "n_ties": ties}
    if is_constant(model, atol):
        reason = f"{CONSTANT_MODEL}: the circuit can only tie with it or be worse, so P(s_C > s_M) has no reason to be 1/2"
        return not_applicable("equivalence", "p_hat", p_hat, alpha, n, reason, settings, worse, ties)
    p = equivalence_p_value(p_hat, n, eps)
    reject = p < alpha
    return HypothesisResult("equivalence", "p_hat", p_hat, p, alpha, reject, not reject, n, settings, k=worse, ties=ties)


# ---- independence --------------------------------------------------------------------------------


def median_bandwidth(x: np.ndarray) -> float:
    """Median pairwise Euclidean distance of the rows of x (n,) or (n, d); where more than half the
    pairs coincide, the median of the non-zero distances; 1.0 when every row is the same."""
    x = x.reshape(len(x), -1)
    distances = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))[np.triu_indices(len(x), 1)]
    median = float(np.median(distances))
    if median > 0:
        return median
    positive = distances[distances > 0]
    return float(np.median(positive)) if positive.size else 1.0


def gaussian_gram(x: np.ndarray, bandwidth: float) -> np.ndarray:
    """K[i, j] = exp(-|x_i - x_j|^2 / (2 bandwidth^2)); x (n,) or (n, d) -> (n, n)."""
    x = x.reshape(len(x), -1)
    return np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / (2 * bandwidth**2))


def _centred(gram: np.ndarray) -> np.ndarray:
    """H K H with H = I - 11^T / n, written out: K minus row and column means plus the grand mean."""
    return gram - gram.mean(0, keepdims=True) - gram.mean(1, keepdims=True) + gram.mean()


def hsic(x: np.ndarray, y: np.ndarray) -> float:
    """The biased HSIC estimate trace(K H L H) / n^2 with Gaussian kernels at the median bandwidth;
    x, y: (n,) or (n, d).  0 for independent samples in the limit; larger = more dependent."""
    n = len(x)
    k = _centred(gaussian_gram(x, median_bandwidth(x)))
    return float((k * gaussian_gram(y, median_bandwidth(y))).sum() / n**2)


def _permuted_hsic(k: np.ndarray, gram_y: np.ndarray, n_permutations: int, seed: int) -> np.ndarray:
    """HSIC of ``n_permutations`` random re-pairings (permutations from default_rng(seed))."""
    n = len(k)
    permutations = np.random.default_rng(seed).permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    permuted = np.empty(n_permutations)
    chunk = max(1, 2**22 // n**2)  # permuted Gram matrices per step: about 32 MB
    for start in range(0, n_permutations, chunk):
        p = permutations[start : start + chunk]
        permuted[start : start + chunk] = np.einsum("ij,cij->c", k, gram_y[p[:, :, None], p[:, None, :]]) / n**2
    return permuted


def independence_test(
    model_scores: torch.Tensor | np.ndarray,
    complement_scores: torch.Tensor | np.ndarray,
    *,
    n_permutations: int = N_PERMUTATIONS,
    alpha: float = ALPHA,
    seed: int = SEED,
    atol: float = ATOL,
) -> HypothesisResult:
    """HSIC permutation test of H0: s_M independent of s_{M \\ C}; both (n_examples,), lower is better.

    p = (1 + #{HSIC of a permuted pairing >= HSIC observed}) / (1 + n_permutations), permutations
    from ``numpy.random.default_rng(seed)``.  Passes when not rejected; not applicable when either
    score is constant (up to ``atol``).
    """
    x = as_scores("model_scores", model_scores)
    y = as_scores("complement_scores", complement_scores)
    if x.shape != y.shape:
        raise ValueError(f"model_scores {x.shape} and complement_scores {y.shape} must score the same examples.")
    n = x.size
    bandwidths = median_bandwidth(x), median_bandwidth(y)
    settings = {"n_permutations": n_permutations, "alpha": alpha, "seed": seed,
                "bandwidth_model": bandwidths[0], "bandwidth_complement": bandwidths[1]}
    if is_constant(x, atol) or is_constant(y, atol):
        which = CONSTANT_MODEL if is_constant(x, atol) else "s(M \\ C) is constant over the examples"
        reason = f"{which}: a constant is independent of everything, so HSIC is 0 whatever the circuit"
        return not_applicable("independence", "hsic", hsic(x, y), alpha, n, reason, settings)
    k = _centred(gaussian_gram(x, bandwidths[0]))
    gram_y = gaussian_gram(y, bandwidths[1])
    observed = float((k * gram_y).sum() / n**2)
    permuted = _permuted_hsic(k, gram_y, n_permutations, seed)
    p_value = (1 + int((permuted >= observed - 1e-12 * abs(observed)).sum())) / (1 + n_permutations)
    reject = p_value < alpha
    return HypothesisResult("independence", "hsic", observed, p_value, alpha, reject, not reject, n, settings)


# ---- minimality ----------------------------------------------------------------------------------


def knockout_effect(before: np.ndarray, after: np.ndarray, effect: Effect = "squared") -> np.ndarray:
    """Effect of knock-outs, per row: before, after (m, n_examples) scores -> (m,).

    squared: mean_i (before_i - after_i)^2; mean_difference: |mean_i after_i - mean_i before_i|.
    """
    check_effect(effect)
    if effect == "squared":
        return ((before - after) ** 2).mean(1)
    return np.abs(after.mean(1) - before.mean(1))


def minimality_test(
    evaluate: Evaluate,
    circuit: Circuit,
    *,
    n_references: int = N_REFERENCES,
    q_star: float = Q_STAR,
    alpha: float = ALPHA,
    seed: int = SEED,
    atol: float = ATOL,
    effect: Effect = "squared",
    batch_size: int = 64,
    progress: bool = True,
) -> MinimalityResult:
    """Is every edge of ``circuit`` necessary?  Evaluates 1 + |C| + 2 N circuits.

    delta(e) = ``knockout_effect`` of C -> C \\ e per edge; N references delta_ref = that of
    C_r -> C_r \\ e_r with C_r = C plus a random path and e_r one of its new edges.  Per edge
    k = #{delta(e) > delta_ref + atol}, p = P(Binom(N, q*) <= k) (binomial test, alternative
    "less"); an edge is unnecessary when p < alpha / |C| (Bonferroni).  Passes when none is.
    """
    check_effect(effect)
    graph = circuit.graph
    members = circuit_members(circuit)
    edges = members.nonzero().flatten()
    n_edges = len(edges)
    knockouts = members.repeat(n_edges, 1)
    knockouts[torch.arange(n_edges), edges] = False
    references, knocked = reference_knockouts(graph, members, n_references, seed)
    reference_knockout = references.clone()
    reference_knockout[torch.arange(n_references), knocked] = False
    masks = torch.cat([members[None], knockouts, references, reference_knockout])
    scores = evaluate_masks(evaluate, masks, batch_size=batch_size, desc="minimality", progress=progress).numpy()
    split = 1 + n_edges + n_references
    delta = knockout_effect(np.repeat(scores[:1], n_edges, 0), scores[1 : 1 + n_edges], effect)
    delta_ref = knockout_effect(scores[1 + n_edges : split], scores[split:], effect)
    k, ties = count_k_and_ties(TIE_RULES["minimality"], delta, delta_ref, atol)
    p = binomial_p_less(k, n_references, q_star)
    unnecessary = p < alpha / n_edges
    names = circuit.edges
    table = pl.DataFrame({
        "edge": names, "delta": delta, "k": k.astype(np.int64), "ties": ties.astype(np.int64), "p_value": p,
        "p_adjusted": np.minimum(1.0, p * n_edges), "necessary": ~unnecessary,
    })
    weakest = int(np.argmin(k))
    result = HypothesisResult(
        "minimality", "n_unnecessary_edges", float(unnecessary.sum()), float(min(1.0, p.min() * n_edges)), alpha,
        bool(unnecessary.any()), not bool(unnecessary.any()), scores.shape[1],
        {"n_references": n_references, "q_star": q_star, "alpha": alpha, "alpha_per_edge": alpha / n_edges,
         "seed": seed, "atol": atol, "effect": effect, "circuit_edges": n_edges,
         "unnecessary_edges": [n for n, u in zip(names, unnecessary.tolist()) if u]},
        k=int(k[weakest]), ties=int(ties[weakest]),
    )
    return MinimalityResult(result, table, delta_ref, tuple(graph.edge_names[i] for i in knocked.tolist()))
