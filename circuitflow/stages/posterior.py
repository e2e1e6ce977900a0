"""The posterior stage (one run per model): discovery on every member of a posterior organism
(``models/posterior.py``: its posterior samples and its SGD-seed baseline), on ``n_examples`` of the
organism's behavior (its generator at the model's seed), under the model's ``ablation`` computed on
each member's own activations.  For a model of another kind it writes ``skipped.json`` only.

    scores.parquet   member, group (posterior | sgd), method, edge, score (higher = more important)
    members.parquet  member, group, method, temperature, accuracy (held-out, from the models stage),
                     n_saved (the circuit ``discover.circuit`` cuts from the member's scores),
                     recovered (its fraction of the model's score), circuit_accuracy (the fraction of
                     examples its answer wins), faithfulness (its mean squared score difference to
                     the member, lower is better)
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import torch

from circuitflow.ablation import ablation_values
from circuitflow.behaviors import get_behavior
from circuitflow.discovery import DiscoveryTask, discover
from circuitflow.discovery.circuits import cut_circuit
from circuitflow.evaluation.faithfulness import faithfulness_loss, per_example_scores
from circuitflow.io import write_json_atomic
from circuitflow.models import organisms
from circuitflow.models.posterior import members
from circuitflow.patching import source_outputs
from circuitflow.settings import Settings, as_data
from circuitflow.settings.models import PosteriorModel
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import model_dir, write_parquet


def member_task(directory: Path, spec: PosteriorModel, frame: pl.DataFrame, batch_size: int = 100) -> DiscoveryTask:
    """One member organism with the behavior's examples and its own ablation values
    (source, n_examples | 1, pos | 1, d_model) from its outputs on the corrupted inputs."""
    loaded = organisms.load(directory)
    behavior = get_behavior(spec.behavior)
    examples = behavior.encode(frame, loaded.tokenizer)
    corrupted = source_outputs(loaded.model, loaded.graph, examples["corrupted"])
    ablated = ablation_values(spec.ablation, corrupted=corrupted, reference=corrupted, like=corrupted)
    return DiscoveryTask(loaded.model, loaded.graph, examples["clean"], ablated, behavior, examples, batch_size)


def circuit_figures(task: DiscoveryTask, scores: torch.Tensor, settings: Settings) -> dict[str, float]:
    """The saved circuit's size, recovered fraction and faithfulness on ``task`` (scores: (n_edges,))."""
    def score(circuit_logits, model_logits, index):
        return task.behavior.score(circuit_logits, model_logits, {k: v[index] for k, v in task.examples.items()})

    def evaluate(masks: torch.Tensor) -> torch.Tensor:  # (circuit, n_edges) -> (circuit, n_examples)
        return per_example_scores(task.model, task.graph, task.clean, task.ablated, masks, score, batch_size=task.batch_size)

    def measure(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # the discover stage's recovered fraction and accuracy
        per_example = evaluate(masks)
        means = per_example.mean(-1)
        gap = means[0] - means[-1]
        recovered = (means[0] - means) / gap if abs(float(gap)) > 1e-12 else torch.ones_like(means)
        return recovered, (per_example < 0).double().mean(-1)

    circuit, recovered, accuracy = cut_circuit(task.graph, scores, settings.discover.circuit, measure)
    full = evaluate(torch.ones(1, task.graph.n_edges))[0]
    faithfulness = float(faithfulness_loss(evaluate(circuit.members.float()[None]), full)[0])
    return {"n_saved": len(circuit), "recovered": recovered, "circuit_accuracy": accuracy, "faithfulness": faithfulness}


def run(settings: Settings, name: str, out: Path) -> StepResult:
    spec = settings.model(name)
    if not isinstance(spec, PosteriorModel):
        write_json_atomic(out / "skipped.json", {"skipped": f"{name} is a {spec.kind} model, not a posterior organism"})
        return StepResult()
    frame = get_behavior(spec.behavior).make_dataset(spec.n_examples, spec.seed)
    scores, rows = [], []
    for member, group in members(model_dir(name)):
        directory = model_dir(name) / member
        task = member_task(directory, spec, frame)
        accuracy = json.loads((directory / "config.json").read_text())["metrics"]["accuracy"]
        for method in spec.methods:
            found = discover(method, task, settings.discover.method(method))
            scores.append(pl.DataFrame({"member": member, "group": group, "method": method, "edge": list(task.graph.edge_names),
                                        "score": found.scores.tolist()}))
            rows.append({"member": member, "group": group, "method": method, "temperature": spec.temperature, "accuracy": accuracy,
                         **circuit_figures(task, found.scores, settings)})
    table = pl.DataFrame(rows)
    write_parquet(out / "scores.parquet", pl.concat(scores))
    write_parquet(out / "members.parquet", table)
    metrics = {f"{method}_{group}_faithfulness_mean": float(part["faithfulness"].mean())
               for (method, group), part in table.group_by("method", "group", maintain_order=True)}
    return StepResult(metrics=metrics, params={"model": name, **as_data(spec)})
