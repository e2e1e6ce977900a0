"""The discover stage: every method's per-edge scores (scores.parquet, one column per method,
higher = more important, and ``<method>_signed`` for the attribution methods' signed estimates), the circuit each gives (``<method>_circuit.json``, cut by
``discover.circuit``), each threshold sweep's circuits (sweeps.parquet: method, threshold, kept),
and for ``positional: true`` pairs the positional EAP-IG scores."""

from __future__ import annotations

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


def recovered_fraction(inputs: PairInputs):
    """masks (circuit, n_edges), the first empty and the last full -> (circuit,) fraction of the
    model's score each recovers: (S(empty) - S(C)) / (S(empty) - S(model)), S the mean score."""

    def recovered(masks: torch.Tensor) -> torch.Tensor:
        means = per_example_scores(inputs.loaded.model, inputs.loaded.graph, inputs.clean, inputs.ablated, masks,
                                   inputs.example_score(), batch_size=inputs.pair.batch_size).mean(-1)
        gap = means[0] - means[-1]
        return (means[0] - means) / gap if abs(float(gap)) > 1e-12 else torch.ones_like(means)

    return recovered


def provenance(settings: Settings, inputs: PairInputs, method: str | None = None) -> dict:
    """What made an artefact: the graph, the pair and the discovery settings (no commit, no time:
    the bytes depend on the params and the code only)."""
    discover = settings.discover
    methods = settings.methods if method is None else (method,)
    return {"graph": inputs.loaded.graph.describe(), "pair": as_data(inputs.pair),
            "discover": {m: as_data(discover.method(m)) for m in methods}, "circuit": as_data(discover.circuit)}


def run(settings: Settings, name: str, out: Path) -> StepResult:
    inputs = load_pair(settings, name)
    task, graph = inputs.task, inputs.loaded.graph
    truth = inputs.ground_truth
    made = provenance(settings, inputs)
    result = StepResult(params={"methods": list(settings.methods), "pair": made["pair"], "discover": made["discover"], "circuit": made["circuit"]})
    columns, sweeps = {"edge": list(graph.edge_names)}, []
    for method in settings.methods:
        found = discover(method, task, settings.discover.method(method), progress=True)
        scores = found.scores
        columns[method] = scores.tolist()
        if found.signed is not None:  # an attribution method: its signed estimate too (MIB's CPR ranks by it)
            columns[f"{method}_signed"] = found.signed.tolist()
        if found.kept is not None:  # a threshold sweep: each threshold's own circuit, for its ROC points
            sweeps.append(pl.DataFrame({"method": method, "threshold": list(found.thresholds), "kept": found.kept.tolist()}))
        circuit, recovered = cut_circuit(graph, scores, settings.discover.circuit, recovered_fraction(inputs),
                                         None if truth is None else len(truth))
        circuit.save(out / f"{method}_circuit.json", provenance=provenance(settings, inputs, method))
        result.metrics[f"{method}_circuit_edges"] = len(circuit)
        result.metrics[f"{method}_circuit_recovered"] = recovered
    write_parquet(out / "scores.parquet", pl.DataFrame(columns), provenance(settings, inputs))
    write_parquet(out / "sweeps.parquet", pl.concat(sweeps) if sweeps else pl.DataFrame(schema={"method": pl.String, "threshold": pl.Float64, "kept": pl.List(pl.Boolean)}))
    write_json_atomic(out / "circuits.json", result.metrics)  # each saved circuit's size and recovered fraction
    if inputs.pair.positional:
        positional, scores = positional_eap_ig_scores(task, settings.discover.eap_ig, progress=True)
        edges, positions = zip(*(edge.rsplit(" @ ", 1) for edge in positional.edge_names))
        write_parquet(out / "positional_scores.parquet", pl.DataFrame(
            {"edge": list(edges), "position": [int(p) for p in positions], "score": scores.tolist()}))
    return result
