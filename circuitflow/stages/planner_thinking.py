"""The planner-thinking stage: success, steps to solve and early cycles against thinking steps,
per weight snapshot, for one ``planner`` model (other kinds are skipped)."""

from __future__ import annotations

import math
from pathlib import Path

from circuitflow.io import write_json_atomic
from circuitflow.planner.experiments import thinking_table
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import model_dir, write_parquet


def run(settings: Settings, name: str, out: Path) -> StepResult:
    """``thinking.parquet``: one row per (env_steps, level_set, thinking_steps) with success,
    steps_to_solve, cycle_fraction; the final snapshot's numbers at the extreme thinking-step
    counts are the metrics."""
    spec = settings.model(name)
    if spec.kind != "planner":
        write_json_atomic(out / "skipped.json", {"skipped": f"{name} is a {spec.kind} model, not a planner"})
        return StepResult()
    table = thinking_table(model_dir(name))
    write_parquet(out / "thinking.parquet", table, {"model": name, "stage": "planner-thinking"})
    final = table.filter(table["env_steps"] == table["env_steps"].max())
    metrics = {}
    for row in final.iter_rows(named=True):
        if row["thinking_steps"] in (min(spec.thinking_steps), max(spec.thinking_steps)):
            prefix = f"{row['level_set']}_n{row['thinking_steps']}"
            metrics |= {f"{prefix}_{k}": row[k] for k in ("success", "cycle_fraction", "steps_to_solve") if not math.isnan(row[k])}
    write_json_atomic(out / "metrics.json", metrics)
    return StepResult(metrics=metrics, params={"model": name})
