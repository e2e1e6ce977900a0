"""What every hypothesis test shares (Shi et al. 2024; Shi et al. 2024): settings, the result record,
the tie rules, evaluating circuits, and the binomial tests.  The tests themselves are in
``idealised_tests.py`` and ``flexible_tests.py``; ``hypothesis_tests.py`` runs them all.

Scores are per-example behavior scores s, LOWER IS BETTER.  Circuits are evaluated through a callable
``evaluate(masks) -> scores``: masks (circuit, n_edges) float, 1 keep / 0 ablate; scores
(circuit, n_examples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import polars as pl
import torch
from scipy import stats
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitflow.circuit import Circuit
from circuitflow.evaluation.faithfulness import Score, per_example_scores
from circuitflow.graph import Graph
from circuitflow.settings import HypothesisTestSettings

# masks (circuit, n_edges) float, 1 keep / 0 ablate -> per-example scores (circuit, n_examples), lower is better
Evaluate = Callable[[torch.Tensor], torch.Tensor]

# The paper's defaults, which live in circuitflow.settings (HypothesisTestSettings).
_DEFAULTS = HypothesisTestSettings()
EPS = _DEFAULTS.eps
Q_STAR = _DEFAULTS.q_star
ALPHA = _DEFAULTS.alpha
N_RANDOM = _DEFAULTS.n_random
N_PERMUTATIONS = _DEFAULTS.n_permutations
N_REFERENCES = _DEFAULTS.n_references
SEED = _DEFAULTS.seed
ATOL = _DEFAULTS.atol
EFFECTS = ("squared", "mean_difference")  # minimality's knock-out effect size (see idealised_tests.py)
Effect = Literal["squared", "mean_difference"]
STATUSES = ("passes", "fails", "not applicable")
SWEEP_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 5% .. 100% of the model's edges
TESTS = ("equivalence", "independence", "minimality", "sufficiency", "partial_necessity")

# The tie rule of each ranking test, as in Shi et al.'s public code (``circuitry``): the comparison
# that counts towards k.  "le": own <= other + atol (a tie counts for the circuit); "gt":
# own > other + atol (a tie counts against it).
TIE_RULES = {"minimality": "gt", "sufficiency": "le", "partial_necessity": "gt"}


@dataclass(frozen=True)
class HypothesisSettings:
    """Every knob of the tests, validated; ``from_params`` reads params.yaml's mapping.

    effect: minimality's knock-out effect size, "squared" (default, the public code's mean over
    examples of the squared per-example change) or "mean_difference" (|change of the mean score|,
    which lets opposite per-example changes cancel)."""

    eps: float = EPS
    q_star: float = Q_STAR
    alpha: float = ALPHA
    n_random: int = N_RANDOM
    n_permutations: int = N_PERMUTATIONS
    n_references: int = N_REFERENCES
    seed: int = SEED
    atol: float = ATOL
    effect: Effect = _DEFAULTS.effect

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
        check_effect(self.effect)

    @classmethod
    def from_params(cls, params: dict | None) -> HypothesisSettings:
        """Settings from a params.yaml mapping; an unknown key is an error naming the known ones."""
        params = dict(params or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"Unknown hypothesis-test setting(s) {unknown}; known settings: {', '.join(known)}.")
        return cls(**params)


def check_effect(effect: str) -> None:
    if effect not in EFFECTS:
        raise ValueError(f"Unknown minimality effect {effect!r}; choose one of {', '.join(EFFECTS)}.")


@dataclass(frozen=True)
class HypothesisResult:
    """One test of one circuit.

    statistic: p_hat (equivalence), HSIC (independence), number of unnecessary edges (minimality),
    fraction of random circuits beaten (sufficiency, partial necessity); ``statistic_name`` says which.
    reject: H0 rejected at ``alpha`` (Bonferroni per edge for minimality).  status: "passes",
    "fails" or "not applicable" (the test cannot say anything here; ``reason`` says why).  passes:
    status == "passes" (False when not applicable).  k, ties: the count the test is built on and
    the comparisons that were ties (|difference| <= atol), None where the test has none.
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
    status: str | None = None  # None: "passes" or "fails" from ``passes``
    reason: str = ""
    k: int | None = None
    ties: int | None = None

    def __post_init__(self) -> None:
        status = self.status or ("passes" if self.passes else "fails")
        if status not in STATUSES:
            raise ValueError(f"Unknown test status {status!r}; choose one of {', '.join(STATUSES)}.")
        if self.passes != (status == "passes"):
            raise ValueError(f"passes={self.passes} contradicts status {status!r}.")
        if status == "not applicable" and not self.reason:
            raise ValueError("A test that does not apply must say why (reason).")
        object.__setattr__(self, "status", status)


def not_applicable(test: str, statistic_name: str, statistic: float, alpha: float, n: int, reason: str,
                   settings: dict, k: int | None = None, ties: int | None = None) -> HypothesisResult:
    """A result for a test that cannot be decided: p = 1, nothing rejected, status "not applicable"."""
    return HypothesisResult(test, statistic_name, statistic, 1.0, alpha, False, False, n, settings,
                            "not applicable", reason, k, ties)


@dataclass(frozen=True)
class MinimalityResult:
    """The minimality test: its summary, one row per edge of the circuit, and the reference deltas.

    edges columns: edge, delta, k, ties, p_value (per edge), p_adjusted (Bonferroni), necessary.
    references: (n_references,) float64 reference deltas; knocked: their knocked-out edge names.
    """

    result: HypothesisResult
    edges: pl.DataFrame
    references: np.ndarray
    knocked: tuple[str, ...]


def count_k_and_ties(rule: str, own: np.ndarray, others: np.ndarray, atol: float) -> tuple[np.ndarray, np.ndarray]:
    """k and ties per row of ``own`` (m,) against each row's ``others`` (m, n) (or (n,), shared).

    rule "le": k = #{own <= other + atol}; "gt": k = #{own > other + atol}; ties = #{|own - other| <= atol}.
    """
    own = np.asarray(own, dtype=np.float64)[:, None]
    others = np.asarray(others, dtype=np.float64)
    others = others[None] if others.ndim == 1 else others
    if rule == "le":
        k = own <= others + atol
    elif rule == "gt":
        k = own > others + atol
    else:
        raise ValueError(f"Unknown tie rule {rule!r}; choose le or gt.")
    return k.sum(1), (np.abs(own - others) <= atol).sum(1)


def is_constant(values: np.ndarray, atol: float) -> bool:
    """Whether every value lies within ``atol`` of every other (zero variance up to the tie tolerance)."""
    return bool(np.ptp(values) <= atol)


# ---- evaluating circuits -------------------------------------------------------------------------


def circuit_evaluator(
    model: HookedTransformer, graph: Graph, tokens: torch.Tensor, ablated: torch.Tensor, score: Score, *, batch_size: int = 64
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


def as_scores(name: str, values: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-example scores as float64 (n_examples,), n_examples >= 2, no NaN."""
    array = np.asarray(torch.as_tensor(values).detach().double().cpu())
    if array.ndim != 1 or array.size < 2:
        raise ValueError(f"{name} must be per-example scores of shape (n_examples,) with n_examples >= 2, got shape {array.shape}.")
    if np.isnan(array).any():
        raise ValueError(f"{name} contain NaN; check the behavior's score function.")
    return array


def circuit_members(circuit: Circuit) -> torch.Tensor:
    """The circuit's bool (n_edges,) membership; refuses a non-Circuit or an empty circuit."""
    if not isinstance(circuit, Circuit):
        raise ValueError(f"Expected a Circuit, got {type(circuit).__name__}; build one with Circuit.from_edges(graph, edges).")
    if len(circuit) == 0:
        raise ValueError("The circuit has no edges; test a non-empty circuit.")
    return circuit.members


# ---- binomial tests of k successes in N comparisons with random circuits --------------------------


def binomial_p_less(k: np.ndarray | int, n: int, q_star: float = Q_STAR) -> np.ndarray:
    """P(Binom(n, q*) <= k): the binomial test of H0 P >= q* against "less" (minimality)."""
    return stats.binom.cdf(k, n, q_star)


def binomial_p_greater(k: np.ndarray | int, n: int, q_star: float = Q_STAR) -> np.ndarray:
    """P(Binom(n, q*) >= k): the binomial test of H0 P <= q* against "greater" (sufficiency,
    partial necessity; at n=100, q*=0.9, alpha=0.05 it rejects from k=96)."""
    return stats.binom.sf(np.asarray(k) - 1, n, q_star)
