"""The discover stage: every method's per-edge scores (scores.parquet, one column per method,
higher = more important, and ``<method>_signed`` for the attribution methods' signed estimates), the circuit each gives (``<method>_circuit.json``, cut by
``discover.circuit``), each threshold sweep's circuits (sweeps.parquet: method, threshold, kept),
and for ``positional: true`` pairs the positional EAP-IG scores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import torch

from circuitflow.discovery import discover, positional_eap_ig_scores
from circuitflow.discovery.circuits import cut_circuit
from circuitflow.evaluation.faithfulness import per_example_scores
from circuitflow.io import write_json_atomic
from circuitflow.settings import Settings, as_data
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import write_parquet
from circuitflow.stages.inputs import PairInputs, load_pair


def measure(inputs: PairInputs, graph=None):
    """masks (circuit, n_edges), the first empty and the last full -> (the fraction of the model's
    score each recovers, (S(empty) - S(C)) / (S(empty) - S(model)) with S the mean score; each one's
    accuracy, the fraction of examples whose score is below zero: the answer beats the
    counterfactual answer).  ``graph``: another graph of the model (the positional one)."""

    def measured(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = per_example_scores(inputs.loaded.model, graph or inputs.loaded.graph, inputs.clean, inputs.ablated, masks,
                                    inputs.example_score(), batch_size=inputs.pair.batch_size)
        means = scores.mean(-1)
        gap = means[0] - means[-1]
        recovered = (means[0] - means) / gap if abs(float(gap)) > 1e-12 else torch.ones_like(means)
        return recovered, (scores < 0).double().mean(-1)

    return measured


def provenance(settings: Settings, inputs: PairInputs, method: str | None = None) -> dict:
    """What made an artefact: the graph, the pair and the discovery settings (no commit, no time:
    the bytes depend on the params and the code only)."""
    discover = settings.discover
    methods = settings.methods if method is None else (method,)
    return {"graph": inputs.loaded.graph.describe(), "pair": as_data(inputs.pair),
            "discover": {m: as_data(discover.method(m)) for m in methods}, "circuit": as_data(inputs.pair.circuit or discover.circuit)}


def run(settings: Settings, name: str, out: Path) -> StepResult:
    inputs = load_pair(settings, name)
    task, graph = inputs.task, inputs.loaded.graph
    truth = inputs.ground_truth
    made = provenance(settings, inputs)
    result = StepResult(params={"methods": list(settings.methods), "pair": made["pair"], "discover": made["discover"], "circuit": made["circuit"]})
    columns, sweeps = {"edge": list(graph.edge_names)}, []
    rule = inputs.pair.circuit or settings.discover.circuit
    for method in settings.methods:
        found = discover(method, task, settings.discover.method(method), progress=True)
        scores = found.scores
        columns[method] = scores.tolist()
        if found.signed is not None:  # an attribution method: its signed estimate too (MIB's CPR ranks by it)
            columns[f"{method}_signed"] = found.signed.tolist()
        if found.kept is not None:  # a threshold sweep: each threshold's own circuit, for its ROC points
            sweeps.append(pl.DataFrame({"method": method, "threshold": list(found.thresholds), "kept": found.kept.tolist()}))
        circuit, recovered, accuracy = cut_circuit(graph, scores, rule, measure(inputs), None if truth is None else len(truth))
        circuit.save(out / f"{method}_circuit.json", provenance=provenance(settings, inputs, method))
        result.metrics[f"{method}_circuit_edges"] = len(circuit)
        result.metrics[f"{method}_circuit_recovered"] = recovered
        result.metrics[f"{method}_circuit_accuracy"] = accuracy
    write_parquet(out / "scores.parquet", pl.DataFrame(columns), provenance(settings, inputs))
    write_parquet(out / "sweeps.parquet", pl.concat(sweeps) if sweeps else pl.DataFrame(schema={"method": pl.String, "threshold": pl.Float64, "kept": pl.List(pl.Boolean)}))
    write_json_atomic(out / "circuits.json", result.metrics)  # each saved circuit's size and recovered fraction
    if inputs.pair.positional:
        positional, scores = positional_eap_ig_scores(task, settings.discover.eap_ig, progress=True)
        edges, positions = zip(*(edge.rsplit(" @ ", 1) for edge in positional.edge_names))
        write_parquet(out / "positional_scores.parquet", pl.DataFrame(
            {"edge": list(edges), "position": [int(p) for p in positions], "score": scores.tolist()}))
        # The positional circuit: (edge, position) pairs by |score|, cut by the same rule.
        circuit, recovered, accuracy = cut_circuit(positional, scores.abs(), dataclasses.replace(rule, size="ground_truth"), measure(inputs, positional))
        circuit.save(out / "positional_circuit.json", provenance=provenance(settings, inputs, "eap-ig"))
        result.metrics.update(positional_circuit_edges=len(circuit), positional_circuit_recovered=recovered, positional_circuit_accuracy=accuracy)
        write_json_atomic(out / "circuits.json", result.metrics)
    return result
