"""Hypothesis tests for circuits (Shi et al. 2024, "Hypothesis testing the circuit hypothesis"; REFERENCE.md 5).

Every test works on per-example behavior scores s, LOWER IS BETTER (``Behavior.score``: for the
tracr behaviors the MSE of the circuit's output against the full model's).  Circuits are evaluated
through a callable ``evaluate(masks) -> scores``: masks (circuit, n_edges) float, 1 keep / 0 ablate;
scores (circuit, n_examples); ``circuit_evaluator`` builds one on the patching engine, so any model,
behavior and ablation plugs in.  The faithfulness loss of a circuit is m(C) = mean over examples of
(s_C - s_M)^2, lower is better.

Idealised criteria:
  equivalence       H0: |P(s_C > s_M) - 1/2| <= eps.  Statistic p_hat, the fraction of examples where
                    the circuit scores worse than the model; exact binomial p-value at the boundary
                    1/2 + eps.  Rejecting means the circuit is NOT equivalent (it fails).
  independence      H0: s_M is independent of s_{M \\ C}.  HSIC with Gaussian kernels (bandwidth = median
                    pairwise distance) and a permutation test.  Rejecting means the behavior is not
                    localised in the circuit (it fails).
  minimality        per edge e of C, H0: P(delta(e) > delta_ref) >= q*, where delta(e) = |mean s(C \\ e) -
                    mean s(C)| and delta_ref is the same for one random new edge of C plus a random path
                    (N references).  k ~ Binom(N, q*), alternative "less", Bonferroni over the edges.
                    Rejecting for an edge means it is not necessary: the circuit is not minimal.
Flexible criteria (N random circuits built from random paths, ``random_circuits``):
  sufficiency       k = #{m(C) < m(C_r)} over random circuits C_r of C's size; H0: P <= q*, alternative
                    "greater".  Rejecting means C is better than q* of random circuits (it passes).
  partial necessity k = #{m(M \\ C) > m(M \\ C_r)}: removing C hurts more than removing a random circuit.

Ties.  Differences no larger than ``atol`` are ties (the default 1e-9 sits above float64 noise and
tracr's BOS-default edges, which move scores by ~1e-13).  Equivalence counts a tie as one half (an
identical circuit has p_hat = 1/2, p = 1).  The ranking tests (minimality, sufficiency, partial
necessity) never count a tie in the circuit's favour: under zero ablation most random circuits of
a tracr model output exactly the same thing, and REFERENCE.md's ``m(C) <= m(C_r)`` would let such a
random circuit "beat" every other one and pass sufficiency.  For continuous scores it changes nothing.

Defaults are the paper's: eps 0.1, q* 0.9, alpha 0.05, 100 random circuits, 1,000 permutations,
1,000 references (10,000 for IOI and greater-than in the paper), seed 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

import numpy as np
import polars as pl
import torch
from scipy import stats
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitflow.circuit import Circuit
from circuitflow.evaluation.faithfulness import Score, faithfulness_loss, per_example_scores
from circuitflow.evaluation.random_circuits import random_circuit_masks, reference_knockouts
from circuitflow.graph import Graph

# masks (circuit, n_edges) float, 1 keep / 0 ablate -> per-example scores (circuit, n_examples), lower is better
Evaluate = Callable[[torch.Tensor], torch.Tensor]

EPS = 0.1
Q_STAR = 0.9
ALPHA = 0.05
N_RANDOM = 100
N_PERMUTATIONS = 1000
N_REFERENCES = 1000
SEED = 1
ATOL = 1e-9
SWEEP_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 5% .. 100% of the model's edges
TESTS = ("equivalence", "independence", "minimality", "sufficiency", "partial_necessity")


@dataclass(frozen=True)
class HypothesisSettings:
    """Every knob of the tests, validated; ``from_params`` reads params.yaml's mapping."""

    eps: float = EPS
    q_star: float = Q_STAR
    alpha: float = ALPHA
    n_random: int = N_RANDOM
    n_permutations: int = N_PERMUTATIONS
    n_references: int = N_REFERENCES
    seed: int = SEED
    atol: float = ATOL

    def __post_init__(self) -> None:
        if not 0 < self.eps < 0.5:
            raise ValueError(f"Equivalence margin eps={self.eps} must lie in (0, 0.5); the paper uses 0.1.")
        for name in ("q_star", "alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in (0, 1); the paper uses {Q_STAR if name == 'q_star' else ALPHA}.")
        for name in ("n_random", "n_permutations", "n_references"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be a non-negative integer.")
        if not self.atol >= 0:
            raise ValueError(f"atol={self.atol} must be a non-negative number (the tie tolerance).")

    @classmethod
    def from_params(cls, params: dict | None) -> "HypothesisSettings":
        """Settings from a params.yaml mapping; an unknown key is an error naming the known ones."""
        params = dict(params or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"Unknown hypothesis-test setting(s) {unknown}; known settings: {', '.join(known)}.")
        return cls(**params)


@dataclass(frozen=True)
class HypothesisResult:
    """One test of one circuit.

    statistic: p_hat (equivalence), HSIC (independence), number of unnecessary edges (minimality),
    fraction of random circuits beaten (sufficiency, partial necessity); ``statistic_name`` says which.
    reject: H0 rejected at ``alpha`` (Bonferroni per edge for minimality).  passes: the circuit meets
    the criterion (equivalence, independence, minimality: not rejected; the flexible tests: rejected).
    """

    test: str
    statistic_name: str
    statistic: float
    p_value: float
    alpha: float
    reject: bool
    passes: bool
    n_examples: int
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MinimalityResult:
    """The minimality test: its summary, one row per edge of the circuit, and the reference deltas.

    edges columns: edge, delta, k, p_value (per edge), p_adjusted (Bonferroni), necessary.
    references: (n_references,) float64 reference deltas; knocked: their knocked-out edge names.
    """

    result: HypothesisResult
    edges: pl.DataFrame
    references: np.ndarray
    knocked: tuple[str, ...]


# ---- evaluating circuits -------------------------------------------------------------------------


def circuit_evaluator(
    model: HookedTransformer,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    score: Score,
    *,
    batch_size: int = 64,
) -> Evaluate:
    """``evaluate(masks)`` on the patching engine: masks (circuit, n_edges) -> scores (circuit, n_examples).

    tokens: (n_examples, pos); ablated: (source, n_examples | 1, pos | 1, d_model) from
    ``patching.ablation_values``; score(circuit_logits, model_logits, example_index) -> (batch,),
    lower is better.
    """

    def evaluate(masks: torch.Tensor) -> torch.Tensor:
        return per_example_scores(model, graph, tokens, ablated, masks, score, batch_size=batch_size)

    return evaluate


def concatenate_evaluators(evaluators: Sequence[Evaluate]) -> Evaluate:
    """One evaluator over several example sets (e.g. one per input length): their scores side by side,
    (circuit, n_1 + n_2 + ...)."""
    if not evaluators:
        raise ValueError("Give at least one evaluator to concatenate.")
    return lambda masks: torch.cat([evaluate(masks) for evaluate in evaluators], dim=1)


def evaluate_masks(
    evaluate: Evaluate, masks: torch.Tensor, *, batch_size: int = 64, desc: str = "circuits", progress: bool = True
) -> torch.Tensor:
    """Scores of many circuits, ``batch_size`` circuits per call, with a progress bar.

    masks: (circuit, n_edges) bool or float.  Returns float64 (circuit, n_examples), lower is better.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    chunks = []
    with tqdm(total=masks.shape[0], desc=desc, unit="circuit", disable=not progress, leave=False) as bar:
        for start in range(0, masks.shape[0], batch_size):
            chunk = masks[start : start + batch_size].float()
            scores = evaluate(chunk)
            if scores.dim() != 2 or scores.shape[0] != chunk.shape[0]:
                raise ValueError(
                    f"evaluate returned shape {tuple(scores.shape)} for {chunk.shape[0]} circuits; it must return "
                    "(circuit, n_examples) per-example scores."
                )
            chunks.append(scores.detach().double().cpu())
            bar.update(chunk.shape[0])
    out = torch.cat(chunks)
    if torch.isnan(out).any():
        raise ValueError("Some circuit scores are NaN; check the behavior's score function and the ablation values.")
    return out


def _scores(name: str, values: torch.Tensor | np.ndarray) -> np.ndarray:
    array = np.asarray(torch.as_tensor(values).detach().double().cpu())
    if array.ndim != 1 or array.size < 2:
        raise ValueError(f"{name} must be per-example scores of shape (n_examples,) with n_examples >= 2, got shape {array.shape}.")
    if np.isnan(array).any():
        raise ValueError(f"{name} contain NaN; check the behavior's score function.")
    return array


def _members(circuit: Circuit) -> torch.Tensor:
    if not isinstance(circuit, Circuit):
        raise ValueError(f"Expected a Circuit, got {type(circuit).__name__}; build one with Circuit.from_edges(graph, edges).")
    if len(circuit) == 0:
        raise ValueError("The circuit has no edges; test a non-empty circuit.")
    return circuit.members


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
    s_C - s_M > atol, ties (|s_C - s_M| <= atol) counted as one half.  Passes when not rejected."""
    circuit = _scores("circuit_scores", circuit_scores)
    model = _scores("model_scores", model_scores)
    if circuit.shape != model.shape:
        raise ValueError(f"circuit_scores {circuit.shape} and model_scores {model.shape} must score the same examples.")
    delta = circuit - model
    worse, ties = int((delta > atol).sum()), int((np.abs(delta) <= atol).sum())
    n = delta.size
    p_hat = (worse + 0.5 * ties) / n
    p = equivalence_p_value(p_hat, n, eps)
    reject = p < alpha
    return HypothesisResult(
        "equivalence", "p_hat", p_hat, p, alpha, reject, not reject, n,
        {"eps": eps, "alpha": alpha, "atol": atol, "n_worse": worse, "n_ties": ties},
    )


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


def independence_test(
    model_scores: torch.Tensor | np.ndarray,
    complement_scores: torch.Tensor | np.ndarray,
    *,
    n_permutations: int = N_PERMUTATIONS,
    alpha: float = ALPHA,
    seed: int = SEED,
) -> HypothesisResult:
    """HSIC permutation test of H0: s_M independent of s_{M \\ C}; both (n_examples,), lower is better.

    p = (1 + #{HSIC of a permuted pairing >= HSIC observed}) / (1 + n_permutations), permutations
    from ``numpy.random.default_rng(seed)``.  Passes when not rejected.
    """
    x = _scores("model_scores", model_scores)
    y = _scores("complement_scores", complement_scores)
    if x.shape != y.shape:
        raise ValueError(f"model_scores {x.shape} and complement_scores {y.shape} must score the same examples.")
    n = x.size
    bandwidths = median_bandwidth(x), median_bandwidth(y)
    k = _centred(gaussian_gram(x, bandwidths[0]))
    gram_y = gaussian_gram(y, bandwidths[1])
    observed = float((k * gram_y).sum() / n**2)
    permutations = np.random.default_rng(seed).permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    permuted = np.empty(n_permutations)
    chunk = max(1, 2**22 // n**2)  # permuted Gram matrices per step: about 32 MB
    for start in range(0, n_permutations, chunk):
        p = permutations[start : start + chunk]
        permuted[start : start + chunk] = np.einsum("ij,cij->c", k, gram_y[p[:, :, None], p[:, None, :]]) / n**2
    p_value = (1 + int((permuted >= observed - 1e-12 * abs(observed)).sum())) / (1 + n_permutations)
    reject = p_value < alpha
    return HypothesisResult(
        "independence", "hsic", observed, p_value, alpha, reject, not reject, n,
        {"n_permutations": n_permutations, "alpha": alpha, "seed": seed,
         "bandwidth_model": bandwidths[0], "bandwidth_complement": bandwidths[1]},
    )


# ---- binomial tests of k successes in N comparisons with random circuits --------------------------


def binomial_p_less(k: np.ndarray | int, n: int, q_star: float = Q_STAR) -> np.ndarray:
    """P(Binom(n, q*) <= k): the binomial test of H0 P >= q* against "less" (minimality)."""
    return stats.binom.cdf(k, n, q_star)


def binomial_p_greater(k: np.ndarray | int, n: int, q_star: float = Q_STAR) -> np.ndarray:
    """P(Binom(n, q*) >= k): the binomial test of H0 P <= q* against "greater" (sufficiency,
    partial necessity; at n=100, q*=0.9, alpha=0.05 it rejects from k=96)."""
    return stats.binom.sf(np.asarray(k) - 1, n, q_star)


# ---- minimality ----------------------------------------------------------------------------------


def minimality_test(
    evaluate: Evaluate,
    circuit: Circuit,
    *,
    n_references: int = N_REFERENCES,
    q_star: float = Q_STAR,
    alpha: float = ALPHA,
    seed: int = SEED,
    atol: float = ATOL,
    batch_size: int = 64,
    progress: bool = True,
) -> MinimalityResult:
    """Is every edge of ``circuit`` necessary?  Evaluates 1 + |C| + 2 N circuits.

    delta(e) = |mean s(C \\ e) - mean s(C)| per edge; N references delta_ref = |mean s(C_r \\ e_r) -
    mean s(C_r)| with C_r = C plus a random path and e_r one of its new edges.  Per edge
    k = #{delta(e) > delta_ref + atol}, p = P(Binom(N, q*) <= k) (binomial test, alternative
    "less"); an edge is unnecessary when p < alpha / |C| (Bonferroni).  Passes when none is.
    """
    graph = circuit.graph
    members = _members(circuit)
    edges = members.nonzero().flatten()
    n_edges = len(edges)
    knockouts = members.repeat(n_edges, 1)
    knockouts[torch.arange(n_edges), edges] = False
    references, knocked = reference_knockouts(graph, members, n_references, seed)
    reference_knockout = references.clone()
    reference_knockout[torch.arange(n_references), knocked] = False
    masks = torch.cat([members[None], knockouts, references, reference_knockout])
    scores = evaluate_masks(evaluate, masks, batch_size=batch_size, desc="minimality", progress=progress)
    mean = scores.mean(1).numpy()
    delta = np.abs(mean[1 : 1 + n_edges] - mean[0])
    split = 1 + n_edges + n_references
    delta_ref = np.abs(mean[split:] - mean[1 + n_edges : split])
    k = (delta[:, None] > delta_ref[None, :] + atol).sum(1)
    p = binomial_p_less(k, n_references, q_star)
    unnecessary = p < alpha / n_edges
    names = circuit.edges
    table = pl.DataFrame(
        {
            "edge": names,
            "delta": delta,
            "k": k.astype(np.int64),
            "p_value": p,
            "p_adjusted": np.minimum(1.0, p * n_edges),
            "necessary": ~unnecessary,
        }
    )
    result = HypothesisResult(
        "minimality", "n_unnecessary_edges", float(unnecessary.sum()), float(min(1.0, p.min() * n_edges)), alpha,
        bool(unnecessary.any()), not bool(unnecessary.any()), scores.shape[1],
        {"n_references": n_references, "q_star": q_star, "alpha": alpha, "alpha_per_edge": alpha / n_edges,
         "seed": seed, "atol": atol, "circuit_edges": n_edges,
         "unnecessary_edges": [n for n, u in zip(names, unnecessary.tolist()) if u]},
    )
    return MinimalityResult(result, table, delta_ref, tuple(graph.edge_names[i] for i in knocked.tolist()))


# ---- sufficiency and partial necessity -----------------------------------------------------------


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
    members = _members(circuit)
    model = _scores("model_scores", model_scores)
    randoms = [random_circuit_masks(graph, size, n_random, np.random.default_rng([seed, size])) for size in sizes]
    masks = torch.cat([members[None], *randoms])
    if test == "partial_necessity":
        masks = ~masks
    scores = evaluate_masks(evaluate, masks, batch_size=batch_size, desc=test, progress=progress)
    if scores.shape[1] != model.size:
        raise ValueError(f"evaluate scores {scores.shape[1]} examples but model_scores has {model.size}.")
    loss = faithfulness_loss(scores, torch.from_numpy(model)).numpy()  # m per circuit, lower is better
    own, random_loss = loss[0], loss[1:].reshape(len(sizes), n_random)
    if test == "sufficiency":
        beaten = own < random_loss - atol  # C is more faithful than C_r
    else:
        beaten = own > random_loss + atol  # removing C hurts more than removing C_r
    k = beaten.sum(1)
    p = binomial_p_greater(k, n_random, q_star)
    return pl.DataFrame(
        {
            "test": [test] * len(sizes),
            "size": list(sizes),
            "fraction": [s / graph.n_edges for s in sizes],
            "k": k.astype(np.int64),
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
         "size": record["size"], "k": record["k"]},
    )


def _sweep_sizes(graph: Graph, fractions: Sequence[float]) -> list[int]:
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"Sweep fractions {list(fractions)} must be in (0, 1], e.g. 0.05 to 1.0.")
    return sorted({max(1, round(f * graph.n_edges)) for f in fractions})


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
    """Is C more faithful than q* of random circuits of its size?  k = #{m(C) < m(C_r) - atol};
    p = P(Binom(N, q*) >= k).  Passes when rejected (k >= 96 of 100 at the defaults).
    model_scores: (n_examples,), lower is better."""
    row = _random_comparison("sufficiency", evaluate, circuit, model_scores, [len(circuit)],
                             n_random=n_random, q_star=q_star, alpha=alpha, seed=seed, atol=atol,
                             batch_size=batch_size, progress=progress)
    return _single("sufficiency", row, q_star, alpha, seed, atol, _scores("model_scores", model_scores).size)


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
    row = _random_comparison("partial_necessity", evaluate, circuit, model_scores, [len(circuit)],
                             n_random=n_random, q_star=q_star, alpha=alpha, seed=seed, atol=atol,
                             batch_size=batch_size, progress=progress)
    return _single("partial_necessity", row, q_star, alpha, seed, atol, _scores("model_scores", model_scores).size)


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
    fraction, k, n_random, fraction_beaten, p_value, passes, circuit_size, circuit_fraction, circuit_loss and the
    random circuits' loss median / 10% / 90% quantiles (losses m, lower is better)."""
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


# ---- all tests, and the results table ------------------------------------------------------------


def run_hypothesis_tests(
    evaluate: Evaluate,
    circuit: Circuit,
    model_scores: torch.Tensor | np.ndarray,
    settings: HypothesisSettings = HypothesisSettings(),
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[list[HypothesisResult], MinimalityResult]:
    """The five tests of one circuit, in ``TESTS`` order, and the minimality details.
    model_scores: (n_examples,) s_M, lower is better."""
    s = settings
    own = evaluate_masks(evaluate, torch.stack([circuit.members, ~circuit.members]), desc="circuit", progress=False)
    common = dict(q_star=s.q_star, alpha=s.alpha, seed=s.seed, atol=s.atol, batch_size=batch_size, progress=progress)
    minimality = minimality_test(evaluate, circuit, n_references=s.n_references, **common)
    results = [
        equivalence_test(own[0], model_scores, eps=s.eps, alpha=s.alpha, atol=s.atol),
        independence_test(model_scores, own[1], n_permutations=s.n_permutations, alpha=s.alpha, seed=s.seed),
        minimality.result,
        sufficiency_test(evaluate, circuit, model_scores, n_random=s.n_random, **common),
        partial_necessity_test(evaluate, circuit, model_scores, n_random=s.n_random, **common),
    ]
    return results, minimality


def results_frame(results: Sequence[HypothesisResult], **identity: str) -> pl.DataFrame:
    """One row per result: the ``identity`` columns (e.g. model, behavior, circuit) first, then test,
    statistic_name, statistic, p_value, alpha, reject, passes, n_examples and settings (JSON text,
    sorted keys, so equal results give equal bytes)."""
    rows = [
        {**identity, **{k: v for k, v in asdict(r).items() if k != "settings"},
         "settings": json.dumps(r.settings, sort_keys=True)}
        for r in results
    ]
    schema = {**{k: pl.String for k in identity}, "test": pl.String, "statistic_name": pl.String, "statistic": pl.Float64,
              "p_value": pl.Float64, "alpha": pl.Float64, "reject": pl.Boolean, "passes": pl.Boolean,
              "n_examples": pl.Int64, "settings": pl.String}
    return pl.DataFrame(rows, schema=schema)


def summary(results: Sequence[HypothesisResult]) -> dict:
    """A JSON-able summary for DVC metrics: {test: {statistic, p_value, passes}}."""
    return {r.test: {"statistic": r.statistic, "p_value": r.p_value, "passes": r.passes} for r in results}
