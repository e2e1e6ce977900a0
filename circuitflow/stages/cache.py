"""The cache stage: every graph source's activations on the clean and corrupted inputs, and the
means of the corrupted ones (mean ablation's reference set), as Parquet (schema: ``store.py``)."""

from __future__ import annotations

from pathlib import Path

import torch

from circuitflow.behaviors import get_behavior
from circuitflow.models import load_model
from circuitflow.patching import source_outputs
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import load_dataset, model_dir
from circuitflow.store import mean_activations, write_activations


def run(settings: Settings, name: str, out: Path) -> StepResult:
    pair = settings.pair(name)
    loaded = load_model(model_dir(pair.model))
    examples = get_behavior(pair.behavior).encode(load_dataset(name), loaded.tokenizer)
    sources = list(loaded.graph.sources)
    for split in ("clean", "corrupted"):
        tokens = examples[split]
        outputs = torch.cat([source_outputs(loaded.model, loaded.graph, tokens[i : i + pair.batch_size])
                             for i in range(0, tokens.shape[0], pair.batch_size)], dim=1)
        write_activations(out / f"{split}.parquet", outputs, sources, {"pair": name, "split": split})
    for per_position, split in ((False, "mean"), (True, "mean_per_position")):
        write_activations(out / f"{split}.parquet", mean_activations(outputs, per_position), sources, {"pair": name, "split": split})
    return StepResult(metrics={"n_sources": loaded.graph.n_sources}, params={"model": pair.model, "batch_size": pair.batch_size})
