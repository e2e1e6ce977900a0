"""The figure-resamples stage: per resample pair, faithfulness and KL(model || circuit) of each
saved circuit against K (1, 2, 4, ..., ``evaluate.resamples.k``) for both aggregates (the mean of
the logits, the log of the mean of the probabilities), and the per-example variance of the score
across the K resamples (``evaluation/resamples.py``; the evaluate stage's resamples.parquet and
resample_variance.parquet).  ``summary.csv``: per pair, circuit and aggregate, the values at K = 1
and at the largest K, and the mean and largest per-example variance."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from circuitflow.report.resample_figures import (
    plot_resample_curves,
    plot_resample_variance,
)
from circuitflow.settings import Ablation, Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import evaluate_dir, read_parquet, write_csv


def summary(name: str, table: pl.DataFrame, variance: pl.DataFrame) -> pl.DataFrame:
    """One row per circuit and aggregate: faithfulness and KL at K = 1 and at the largest K."""
    k_max = table["k"].max()
    first, last = (table.filter(pl.col("k") == k).select("circuit", "aggregate", "faithfulness", "kl") for k in (1, k_max))
    spread = variance.group_by("circuit", maintain_order=True).agg(
        pl.col("variance").mean().alias("variance_mean"), pl.col("variance").max().alias("variance_max"))
    joined = first.join(last, on=["circuit", "aggregate"], suffix="_at_k").join(spread, on="circuit", how="left")
    return joined.select(pl.lit(name).alias("pair"), pl.lit(k_max).alias("k"), pl.all())


def run(settings: Settings, out: Path) -> StepResult:
    rows = []
    for name, pair in settings.pairs.items():
        if pair.ablation is not Ablation.RESAMPLE:
            continue
        table = read_parquet(evaluate_dir(name) / "resamples.parquet", f"evaluate@{name}")
        variance = read_parquet(evaluate_dir(name) / "resample_variance.parquet", f"evaluate@{name}")
        write_csv(out / "curves" / f"{name}.csv", table)
        plot_resample_curves(table, out / f"resamples_{name}.png", f"{name}: faithfulness and KL against K")
        plot_resample_variance(variance, out / f"variance_{name}.png", f"{name}: score variance across the K resamples")
        rows.append(summary(name, table, variance))
    write_csv(out / "summary.csv", pl.concat(rows) if rows else pl.DataFrame())
    return StepResult()
