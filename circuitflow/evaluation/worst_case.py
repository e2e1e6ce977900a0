"""uit de Bos & Garriga-Alonso's adversarial evaluation of one circuit as the pipeline runs it,
with the tail analysis of each distribution (Kwa et al.).

KL(model || circuit) at the answer position over every (clean, corrupted) pair of the first
``n_clean`` clean and ``n_corrupted`` corrupted inputs, for the circuit under test, a random circuit
(p = 0.4), the circuit minus 2 random edges and the full model, streamed to ``pair_kl.parquet``.
Then per circuit: the percentile table with the order-statistic bound, the ``k_worst`` pairs
decoded, the Hill plot, Q-Q points and the tail verdict; the gradient search for bad inputs against
the brute-force worst.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from circuitflow.circuit import Circuit
from circuitflow.evaluation import adversarial as adv
from circuitflow.evaluation.tails import hill_estimates, qq_points, tail_verdict
from circuitflow.graph import Graph
from circuitflow.settings import AdversarialSettings


def answer_positions(examples: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each example's answer position, (n_examples,): the last position, or for induction the last
    predicted position of the repeated half (its ``loss_mask``)."""
    clean = examples["clean"]
    if "loss_mask" in examples:
        positions = torch.arange(clean.shape[1]).expand_as(clean)
        return torch.where(examples["loss_mask"], positions, -1).max(-1).values
    return torch.full((clean.shape[0],), clean.shape[1] - 1)


def _per_circuit(path: Path, circuits: list[str], tested: str, confidence: float) -> tuple[dict[str, pl.DataFrame], dict[str, float]]:
    """The percentile table, tail verdicts, Hill and Q-Q points of each circuit's KL."""
    summary, tails, hills, qqs, metrics = [], [], [], [], {}
    for name in circuits:
        values = adv.read_pair_kl(path, name)
        row = {"circuit": name, "tested": tested, **adv.summarize(values)}
        label = name.replace(" ", "_")
        if name != "full model":
            try:
                bound = adv.order_statistic_bound_for_confidence(values, 0.99, confidence)
                row.update(p99_bound=bound.value, p99_bound_confidence=bound.confidence)
            except ValueError:  # too few pairs for any order statistic to bound the 99th percentile
                row.update(p99_bound=None, p99_bound_confidence=None)
            try:
                verdict = tail_verdict(values)
            except ValueError as error:  # (near-)constant KL, e.g. a circuit that is the whole model: no tail
                tails.append({"circuit": name, "verdict": "undetermined", "alpha": None, "exponential_alpha": None, "z": None,
                              "explanation": str(error)})
                metrics[f"adversarial_{label}_heavy_tail"] = 0.0
            else:
                tails.append({"circuit": name, "verdict": verdict.verdict, "alpha": verdict.alpha, "exponential_alpha": verdict.exponential_alpha,
                              "z": verdict.z, "explanation": verdict.explain()})
                hills.append(hill_estimates(values).with_columns(pl.lit(name).alias("circuit")))
                for distribution in ("normal", "exponential"):
                    qqs.append(qq_points(values, distribution).with_columns(pl.lit(name).alias("circuit"), pl.lit(distribution).alias("distribution")))
                metrics[f"adversarial_{label}_heavy_tail"] = float(verdict.heavy)
        summary.append(row)
        metrics[f"adversarial_{label}_p99"] = row["p99"]
        metrics[f"adversarial_{label}_max"] = row["max"]
    hill_schema = {"k": pl.Int64, "hill": pl.Float64, "alpha": pl.Float64, "circuit": pl.String}
    tables = {"summary": pl.DataFrame(summary), "tails": pl.DataFrame(tails),
              "hill": pl.concat(hills, how="diagonal") if hills else pl.DataFrame(schema=hill_schema),
              "qq": pl.concat(qqs, how="diagonal") if qqs else pl.DataFrame(schema={"circuit": pl.String, "distribution": pl.String})}
    return tables, metrics


def evaluate_adversarially(
    model: torch.nn.Module, graph: Graph, circuit: Circuit, tested: str, examples: dict[str, torch.Tensor],
    settings: AdversarialSettings, directory: Path, decode: Callable[[list[int]], str],
    groups: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict[str, pl.DataFrame], dict[str, float]]:
    """Run the evaluation of ``circuit`` (named ``tested``) into ``directory``/pair_kl.parquet and
    return the tables to write beside it (summary, tails, hill, qq, worst, and where given the mean
    KL by ``groups`` (row label, column label per clean example; IOI's name x template) and the
    gradient search) with the metrics."""
    n_clean = min(settings.n_clean, examples["clean"].shape[0])
    n_corrupted = min(settings.n_corrupted, examples["corrupted"].shape[0])
    circuits = adv.comparison_circuits(circuit, seed=settings.seed, n_removed=min(2, len(circuit)))
    clean, corrupted = examples["clean"][:n_clean], examples["corrupted"][:n_corrupted]
    positions = answer_positions(examples)[:n_clean]
    path = directory / "pair_kl.parquet"
    adv.stream_pair_kl(model, graph, clean, corrupted, circuits, path, positions=positions, batch_size=settings.batch_size, progress=True)
    tables, metrics = _per_circuit(path, list(circuits), tested, settings.confidence)
    tables["worst"] = adv.worst_pairs(path, "circuit", settings.k_worst, clean, corrupted, decode)
    if groups is not None:
        index = np.repeat(np.arange(n_clean), n_corrupted)
        tables["ioi_groups"] = adv.grouped_mean(adv.read_pair_kl(path, "circuit"), groups[0][:n_clean][index], groups[1][:n_clean][index])
    if settings.search is not None:
        found = adv.search_bad_inputs(model, graph, circuit, clean, corrupted, position=int(positions[0]),
                                      n_restarts=settings.search.restarts, steps=settings.search.steps, seed=settings.seed)
        brute_force = float(tables["worst"]["kl"][0])
        tables["search"] = pl.DataFrame({"restart": list(range(len(found.kl))), "soft_kl": found.kl.tolist(),
                                         "hard_kl": found.hard_kl.tolist(), "brute_force_worst": brute_force})
        metrics["adversarial_search_best"] = found.best
        metrics["adversarial_brute_force_worst"] = brute_force
    return tables, metrics
