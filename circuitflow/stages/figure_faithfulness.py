"""The figure-faithfulness stage."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from circuitflow.report.dvc_curves import overlay
from circuitflow.report.faithfulness_figures import (
    RANKING,
    plot_fraction_grid,
    plot_fraction_recovered,
    shared_limits,
)
from circuitflow.report.figures import plot_faithfulness
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import (
    evaluate_dir,
    write_csv,
)


def run(settings: Settings, out: Path) -> StepResult:
    """Faithfulness per pair and method: the fraction of the metric recovered against the fraction of
    edges kept (MIB's f_k from mib.parquet, one y scale for every pair: ``fraction_<pair>.png`` and
    every pair in ``fraction_all.png``), and the faithfulness loss against the number of edges
    kept (lower is better, ``faithfulness_<pair>.png``: the secondary figure)."""

    methods = (*settings.methods, "random")
    fractions = {name: pl.read_parquet(evaluate_dir(name) / "mib.parquet").filter(pl.col("method").is_in(methods)) for name in settings.pairs}
    ylim = shared_limits(fractions)
    for name, fraction in fractions.items():
        curves = pl.read_parquet(evaluate_dir(name) / "faithfulness.parquet")
        losses = {m: curves.filter(pl.col("method") == m) for m in settings.methods}
        write_csv(out / "loss" / f"{name}.csv", overlay(name, losses, "n_edges", "faithfulness"))
        plot_faithfulness(losses, out / f"faithfulness_{name}.png",
                          f"{name}: faithfulness loss against edges kept", formats=("png",))
        plot_fraction_recovered(fraction, out / f"fraction_{name}.png", f"{name}: fraction of the metric recovered", ylim=ylim)
        ranked = fraction.filter(pl.col("ranking") == RANKING)
        write_csv(out / "curves" / f"{name}.csv", overlay(name, {m: ranked.filter(pl.col("method") == m) for m in methods}, "k", "f"))
    if fractions:
        plot_fraction_grid(fractions, out / "fraction_all.png", "Fraction of the metric recovered, every pair on one scale")
    params = {"pairs": list(settings.pairs), "methods": list(settings.methods), "ranking": RANKING}
    return StepResult(params=params)
