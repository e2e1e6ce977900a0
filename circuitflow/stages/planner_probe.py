"""The planner-probe stage: ConvLSTM cell states cached to Parquet and a linear probe per square
for the direction the box there is next pushed, against thinking steps (``planner`` models only)."""

from __future__ import annotations

from pathlib import Path

from circuitflow.io import write_json_atomic
from circuitflow.planner.experiments import probe_tables
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import model_dir, write_parquet


def run(settings: Settings, name: str, out: Path) -> StepResult:
    """``states.parquet`` (one row per step and box square: labels and every layer's cell state
    there) and ``probe.parquet`` (accuracy per thinking-step count); accuracies are the metrics."""
    spec = settings.model(name)
    if spec.kind != "planner":
        write_json_atomic(out / "skipped.json", {"skipped": f"{name} is a {spec.kind} model, not a planner"})
        return StepResult()
    states, scores = probe_tables(model_dir(name))
    write_parquet(out / "states.parquet", states, {"model": name, "stage": "planner-probe"})
    write_parquet(out / "probe.parquet", scores, {"model": name, "stage": "planner-probe"})
    metrics = {f"n{row['thinking_steps']}_{key}": row[key] for row in scores.iter_rows(named=True)
               for key in ("accuracy", "accuracy_first_step", "majority_accuracy", "majority_accuracy_first_step")}
    write_json_atomic(out / "metrics.json", metrics)
    return StepResult(metrics=metrics, params={"model": name})
