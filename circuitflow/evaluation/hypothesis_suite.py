"""Shi et al.'s five tests as the pipeline runs them: on a set of named circuits (the ground truth
where known, each method's saved circuit), plus the sufficiency / partial-necessity curves over
random-circuit size for the circuit under test.  Returns tables; the evaluate stage writes them."""

from __future__ import annotations

import dataclasses

import polars as pl
import torch

from circuitflow.circuit import Circuit
from circuitflow.evaluation.hypothesis_tests import (
    Evaluate, HypothesisSettings, partial_necessity_sweep, results_frame, run_hypothesis_tests, sufficiency_sweep,
)
from circuitflow.settings import Ablation, HypothesisTestSettings

# Shi et al. (section 5): zero ablation for induction and the tracr tasks, resample (paired) for the others.
PAPER_ABLATION = {"induction": Ablation.ZERO, "tracr-reverse": Ablation.ZERO, "tracr-proportion": Ablation.ZERO,
                  "ioi": Ablation.RESAMPLE, "greater-than": Ablation.RESAMPLE, "docstring": Ablation.RESAMPLE}
OUTPUTS = ("hypothesis_tests", "minimality_effects", "minimality_references", "random_circuit_sweep")


def tests_ablation(settings: HypothesisTestSettings, behavior: str, pair_ablation: Ablation) -> Ablation:
    """The ablation the tests run under: the paper's for its behaviors (``settings.ablation`` paper),
    else the pair's."""
    if settings.ablation == "paper":
        return PAPER_ABLATION.get(behavior, pair_ablation)
    return pair_ablation


def test_settings(settings: HypothesisTestSettings) -> HypothesisSettings:
    """The tests' own settings (everything but which circuits and sweep sizes)."""
    names = {f.name for f in dataclasses.fields(HypothesisSettings)}
    return HypothesisSettings(**{k: v for k, v in dataclasses.asdict(settings).items() if k in names})


def empty_outputs() -> dict[str, pl.DataFrame]:
    return {name: pl.DataFrame() for name in OUTPUTS}


def run_suite(
    evaluate: Evaluate, circuits: dict[str, Circuit], under_test: str, model_scores: torch.Tensor,
    settings: HypothesisTestSettings, batch_size: int, **identity: str,
) -> tuple[dict[str, pl.DataFrame], dict[str, float]]:
    """Every test on every circuit of ``circuits`` (name -> circuit) that leaves an edge out, and the
    random-circuit sweep of ``circuits[under_test]``.  model_scores: (n_examples,).  Returns the
    tables of ``OUTPUTS`` and per-circuit pass / skip metrics."""
    tests = test_settings(settings)
    n_edges = next(iter(circuits.values())).graph.n_edges if circuits else 0
    rows, effects, references, metrics = [], [], [], {}
    for name, circuit in circuits.items():
        if len(circuit) == n_edges:  # nothing left out: no random path can be added (minimality)
            metrics[f"{name}_hypothesis_tests_skipped"] = 1.0
            continue
        outcomes, minimality = run_hypothesis_tests(evaluate, circuit, model_scores, tests, batch_size=batch_size)
        rows.append(results_frame(outcomes, **identity, circuit=name))
        effects.append(minimality.edges.with_columns(pl.lit(name).alias("circuit")))
        references.append(pl.DataFrame({"circuit": name, "knocked": list(minimality.knocked), "delta": minimality.references}))
        for outcome in outcomes:
            metrics[f"{name}_{outcome.test}_passes"] = float(outcome.passes)
    outputs = {"hypothesis_tests": pl.concat(rows, how="diagonal") if rows else pl.DataFrame(),
               "minimality_effects": pl.concat(effects, how="diagonal") if effects else pl.DataFrame(),
               "minimality_references": pl.concat(references) if references else pl.DataFrame()}
    tested = any(row["circuit"][0] == under_test for row in rows)
    outputs["random_circuit_sweep"] = _sweep(evaluate, circuits[under_test], model_scores, settings, batch_size, under_test) if tested else pl.DataFrame()
    return outputs, metrics


def _sweep(evaluate: Evaluate, circuit: Circuit, model_scores: torch.Tensor, settings: HypothesisTestSettings,
           batch_size: int, name: str) -> pl.DataFrame:
    """The paper's sufficiency and partial-necessity curves over random-circuit size."""
    sweep = dict(n_random=settings.n_random, q_star=settings.q_star, alpha=settings.alpha, seed=settings.seed, batch_size=batch_size)
    if settings.sweep is not None:  # random-circuit sizes, fractions of the model's edges
        sweep["fractions"] = [float(f) for f in settings.sweep]
    return pl.concat([
        sufficiency_sweep(evaluate, circuit, model_scores, **sweep),
        partial_necessity_sweep(evaluate, circuit, model_scores, **sweep),
    ], how="diagonal").with_columns(pl.lit(name).alias("circuit"))
