"""The models stage: compile a tracr program, train an organism, or record a pretrained model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from circuitflow.models import MODEL_KINDS
from circuitflow.settings import Settings
from circuitflow.stages import StepResult


def run(settings: Settings, name: str, out: Path) -> StepResult:
    """Build model ``name`` into ``out`` (weights, config, ground truth where known); a trained
    model's curves (training_curves.json) come back step by step for MLflow."""
    spec = dataclasses.asdict(settings.model(name))
    metrics = MODEL_KINDS[spec["kind"]].build(name, spec, out)
    curves = {}
    if (out / "training_curves.json").exists():
        recorded = json.loads((out / "training_curves.json").read_text())
        for key, values in recorded.items():
            steps = recorded["eval_step"] if key.startswith("eval_") else recorded["step"]
            if key not in ("step", "eval_step") and len(values) == len(steps):
                curves[key] = (steps, values)
    return StepResult(metrics=metrics, params={"model": name, **spec}, curves=curves)
