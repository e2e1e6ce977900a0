"""The planner-figure stage: every planner model's success, pacing and probe figures and tables."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from circuitflow.io import write_json_atomic
from circuitflow.planner.figures import plot_pacing, plot_probe, plot_success
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import DATA, read_parquet, write_csv


def run(settings: Settings, out: Path) -> StepResult:
    """For each planner model: success_<model>.png, pacing_<model>.png, probe_<model>.png; and
    thinking.csv and probe.csv over all of them."""
    names = [name for name, spec in settings.models.items() if spec.kind == "planner"]
    if not names:
        write_json_atomic(out / "skipped.json", {"skipped": "no model of kind planner"})
        return StepResult()
    thinking, probes = [], []
    for name in names:
        table = read_parquet(DATA / "planner" / "thinking" / name / "thinking.parquet", f"planner-thinking@{name}")
        probe = read_parquet(DATA / "planner" / "probe" / name / "probe.parquet", f"planner-probe@{name}")
        plot_success(table, out / f"success_{name}.png", name)
        plot_pacing(table, out / f"pacing_{name}.png", name)
        plot_probe(probe, out / f"probe_{name}.png", name)
        thinking.append(table.with_columns(pl.lit(name).alias("model")))
        probes.append(probe.with_columns(pl.lit(name).alias("model")))
    write_csv(out / "thinking.csv", pl.concat(thinking))
    write_csv(out / "probe.csv", pl.concat(probes))
    return StepResult()
