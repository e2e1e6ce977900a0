"""The generate stage: one behavior's dataset (clean, corrupted, answers), deterministic from its seed."""

from __future__ import annotations

from pathlib import Path

from circuitflow.behaviors import get_behavior
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import write_parquet


def run(settings: Settings, name: str, out: Path) -> StepResult:
    pair = settings.pair(name)
    frame = get_behavior(pair.behavior).make_dataset(pair.n_examples, pair.seed)
    write_parquet(out / "dataset.parquet", frame)
    return StepResult(metrics={"n_examples": frame.height},
                      params={"behavior": pair.behavior, "n_examples": pair.n_examples, "seed": pair.seed})
