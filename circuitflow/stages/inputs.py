"""What the discover and evaluate stages read for one pair: the model, the behavior, its encoded
examples and the ablation values from the activation cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from circuitflow.ablation import ablation_values_from_cache
from circuitflow.behaviors import Behavior, get_behavior
from circuitflow.circuit import Circuit
from circuitflow.discovery import DiscoveryTask
from circuitflow.models import LoadedModel, load_model
from circuitflow.numerics import resolve_device
from circuitflow.settings import PairSettings, Settings
from circuitflow.stages.artefacts import cache_dir, load_dataset, model_dir


@dataclass(frozen=True)
class PairInputs:
    pair: PairSettings
    loaded: LoadedModel
    behavior: Behavior
    examples: dict[str, torch.Tensor]  # Behavior.encode's tensors, batch first
    ablated: torch.Tensor  # (source, n_examples | 1, pos | 1, d_model)

    @property
    def clean(self) -> torch.Tensor:
        return self.examples["clean"]

    @property
    def task(self) -> DiscoveryTask:
        return DiscoveryTask(self.loaded.model, self.loaded.graph, self.clean, self.ablated, self.behavior, self.examples, self.pair.batch_size)

    @property
    def ground_truth(self) -> list[str] | None:
        """The model's known circuit under this pair's ablation (tracr's differ by ablation), or None."""
        truth = self.loaded.ground_truth
        if truth is None:
            return None
        return truth.get(self.pair.ablation.value, truth["zero"])

    def ground_truth_circuit(self) -> Circuit | None:
        truth = self.ground_truth
        return None if truth is None else Circuit.from_edges(self.loaded.graph, truth)

    def example_score(self) -> Any:
        """The behavior's per-example score in the faithfulness interface:
        (circuit logits, model logits, example index) -> (batch,), lower is better."""
        behavior, examples = self.behavior, self.examples

        def score(circuit_logits: torch.Tensor, model_logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return behavior.score(circuit_logits, model_logits, {k: v[index] for k, v in examples.items()})

        return score

    def example_metric(self) -> Any:
        """The behavior's attribution metric per example (MIB's m): (circuit logits, example index)
        -> (batch,), HIGHER = more of the behavior (the logit difference for the logit-margin
        behaviors)."""
        behavior, examples = self.behavior, self.examples

        def metric(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return torch.stack([behavior.attribution_metric(logits[i : i + 1], {k: v[index[i : i + 1]] for k, v in examples.items()})
                                for i in range(logits.shape[0])])

        return metric

    def model_scores(self) -> torch.Tensor:
        """The full model's per-example score (n_examples,), float64."""
        with torch.no_grad():
            logits = self.loaded.model(self.clean)
            return self.behavior.score(logits, logits, self.examples).double()


def load_pair(settings: Settings, name: str) -> PairInputs:
    """The pair's model, behavior, examples and ablation values, on ``compute.device``."""
    pair = settings.pair(name)
    device = resolve_device(settings.compute.device)
    loaded = load_model(model_dir(pair.model))
    loaded.model.to(device)
    behavior = get_behavior(pair.behavior)
    examples = {key: value.to(device) for key, value in behavior.encode(load_dataset(name), loaded.tokenizer).items()}
    return PairInputs(pair, loaded, behavior, examples, ablation_values_from_cache(pair.ablation, cache_dir(name)).to(device))
