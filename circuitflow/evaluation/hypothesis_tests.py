"""Hypothesis tests for circuits (Shi et al. 2024, "Hypothesis testing the circuit hypothesis"; Shi et al. 2024).

Every test works on per-example behavior scores s, LOWER IS BETTER (``Behavior.score``: for the
tracr behaviors the MSE of the circuit's output against the full model's).  Circuits are evaluated
through a callable ``evaluate(masks) -> scores``: masks (circuit, n_edges) float, 1 keep / 0 ablate;
scores (circuit, n_examples); ``circuit_evaluator`` builds one on the patching engine, so any model,
behavior and ablation plugs in.  The faithfulness loss of a circuit is m(C) = mean over examples of
(s_C - s_M)^2, lower is better.

This module runs the five tests and tabulates them; the tests live in
  ``idealised_tests``  equivalence (H0: |P(s_C > s_M) - 1/2| <= eps, exact binomial p-value),
                       independence (HSIC permutation test of s_M against s_{M \\ C}),
                       minimality (per edge: is knocking it out larger than knocking out a random
                       added edge in at least q* of N references?  Bonferroni over the edges);
  ``flexible_tests``   sufficiency and partial necessity against N random circuits of C's size;
  ``hypothesis_base``  the settings, the result record, the tie rules and the binomial tests.

Outcomes.  Each result has a status: "passes", "fails", or "not applicable" with a ``reason`` (a
test that cannot say anything: equivalence and independence where s(M) is constant, as for tracr
and categorical SIIT, whose score compares the model with itself).  The boolean ``passes`` stays,
False when not applicable.

Ties (one rule per test, those of Shi et al.'s public code; differences <= ``atol`` are ties, the
default 1e-9 sitting above float64 noise and tracr's BOS-default edges, ~1e-13): equivalence counts a
tie as one half; minimality k = #{delta(e) > delta_ref}; sufficiency k = #{m(C) <= m(C_r)}; partial
necessity k = #{m(M \\ C) > m(M \\ C_r)}.  The number of ties is reported next to every k.

Partial necessity on the tracr models (zero ablation).  The ground-truth circuits fail it with
p = 1 here.  Measured on tracr-reverse (81 inputs of length 4, the 11-edge circuit, 100 random
circuits of its size, seed 1): m(M \ C) = 0.111, and 77 of the 100 m(M \ C_r) are bit-identical to
it (removing any one edge of the tracr chain breaks the output as removing all of it does, and most
random circuits hold such an edge), k(>) = 22.  Shi et al.'s code scores tracr through an identity
unembedding (logits = the first residual dimensions, ``indices:0..2`` for reverse: position, not
output); that does not explain their pass: with it m(M \ C) = 0, 76 ties, k = 0, p = 1 again.
Their sampler (circuits of *at least* C's size) and 6-example dataset were not tried.
(``tests/test_hypothesis_tests.py`` keeps the failure as the expected outcome.)

Defaults are the paper's: eps 0.1, q* 0.9, alpha 0.05, 100 random circuits, 1,000 permutations,
1,000 references (10,000 for IOI and greater-than in the paper), seed 1, effect "squared".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import polars as pl
import torch

from circuitflow.circuit import Circuit
from circuitflow.evaluation.flexible_tests import (
    partial_necessity_sweep,
    partial_necessity_test,
    sufficiency_sweep,
    sufficiency_test,
)
from circuitflow.evaluation.hypothesis_base import (
    ALPHA,
    ATOL,
    EFFECTS,
    EPS,
    N_PERMUTATIONS,
    N_RANDOM,
    N_REFERENCES,
    Q_STAR,
    SEED,
    STATUSES,
    SWEEP_FRACTIONS,
    TESTS,
    TIE_RULES,
    Evaluate,
    HypothesisResult,
    HypothesisSettings,
    MinimalityResult,
    binomial_p_greater,
    binomial_p_less,
    circuit_evaluator,
    concatenate_evaluators,
    count_k_and_ties,
    evaluate_masks,
)
from circuitflow.evaluation.idealised_tests import (
    equivalence_p_value,
    equivalence_test,
    gaussian_gram,
    hsic,
    independence_test,
    knockout_effect,
    median_bandwidth,
    minimality_test,
)


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
    minimality = minimality_test(evaluate, circuit, n_references=s.n_references, effect=s.effect, **common)
    results = [
        equivalence_test(own[0], model_scores, eps=s.eps, alpha=s.alpha, atol=s.atol),
        independence_test(model_scores, own[1], n_permutations=s.n_permutations, alpha=s.alpha, seed=s.seed, atol=s.atol),
        minimality.result,
        sufficiency_test(evaluate, circuit, model_scores, n_random=s.n_random, **common),
        partial_necessity_test(evaluate, circuit, model_scores, n_random=s.n_random, **common),
    ]
    return results, minimality


RESULT_COLUMNS = {
    "test": pl.String, "statistic_name": pl.String, "statistic": pl.Float64, "p_value": pl.Float64, "alpha": pl.Float64,
    "reject": pl.Boolean, "passes": pl.Boolean, "status": pl.String, "reason": pl.String, "k": pl.Int64, "ties": pl.Int64,
    "n_examples": pl.Int64, "settings": pl.String,
}


def results_frame(results: Sequence[HypothesisResult], **identity: str) -> pl.DataFrame:
    """One row per result: the ``identity`` columns (e.g. model, behavior, circuit) first, then test,
    statistic_name, statistic, p_value, alpha, reject, passes, status, reason, k, ties (null where
    the test has no count), n_examples and settings (JSON text, sorted keys, so equal results give
    equal bytes)."""
    rows = []
    for r in results:
        record = asdict(r)
        record["settings"] = json.dumps(r.settings, sort_keys=True)
        rows.append({**identity, **{name: record[name] for name in RESULT_COLUMNS}})
    return pl.DataFrame(rows, schema={**{k: pl.String for k in identity}, **RESULT_COLUMNS})


def summary(results: Sequence[HypothesisResult]) -> dict:
    """A JSON-able summary for DVC metrics: {test: {statistic, p_value, passes, status}}."""
    return {r.test: {"statistic": r.statistic, "p_value": r.p_value, "passes": r.passes, "status": r.status} for r in results}


__all__ = [
    "ALPHA", "ATOL", "EFFECTS", "EPS", "N_PERMUTATIONS", "N_RANDOM", "N_REFERENCES", "Q_STAR", "SEED", "STATUSES",
    "SWEEP_FRACTIONS", "TESTS", "TIE_RULES", "Evaluate", "HypothesisResult", "HypothesisSettings", "MinimalityResult",
    "binomial_p_greater", "binomial_p_less", "circuit_evaluator", "concatenate_evaluators", "count_k_and_ties",
    "equivalence_p_value", "equivalence_test", "evaluate_masks", "gaussian_gram", "hsic", "independence_test",
    "knockout_effect", "median_bandwidth", "minimality_test", "partial_necessity_sweep", "partial_necessity_test",
    "results_frame", "run_hypothesis_tests", "sufficiency_sweep", "sufficiency_test", "summary",
]
