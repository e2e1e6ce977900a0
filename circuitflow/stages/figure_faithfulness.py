"""The figure-faithfulness stage."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from circuitflow.report.figures import plot_faithfulness
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import (
    evaluate_dir,
    write_csv,
)


def run(settings: Settings, out: Path) -> StepResult:
    """Faithfulness loss (lower is better) against the number of edges kept, per pair and method."""

    for name in settings.pairs:
        curves = pl.read_parquet(evaluate_dir(name) / "faithfulness.parquet")
        for method in settings.methods:
            write_csv(out / "curves" / f"{name}_{method}.csv", curves.filter(pl.col("method") == method).select("n_edges", "faithfulness"))
        plot_faithfulness({m: curves.filter(pl.col("method") == m) for m in settings.methods}, out / f"faithfulness_{name}.png",
                          f"{name}: faithfulness against edges kept", formats=("png",))
    return StepResult()
