"""Figures of the resample evaluation (``evaluation/resamples.py``): faithfulness and KL against K
per aggregate, and the per-example variance across the K resamples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from circuitflow.report.figures import _render, _require_columns

_STYLES = {"logits": "-", "probabilities": "--"}


def plot_resample_curves(table: pl.DataFrame, path: str | Path, title: str, *, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Faithfulness (left) and KL(model || circuit) (right) against K, one colour per circuit, solid
    for the mean of the logits, dashed for the log of the mean of the probabilities.
    table: resamples.parquet's circuit, aggregate, k, faithfulness, kl."""
    _require_columns(table, ["circuit", "aggregate", "k", "faithfulness", "kl"], "the resample table")

    def draw(figure: Figure) -> None:
        axes = figure.subplots(1, 2)
        for index, circuit in enumerate(table["circuit"].unique(maintain_order=True).to_list()):
            for how, style in _STYLES.items():
                part = table.filter((pl.col("circuit") == circuit) & (pl.col("aggregate") == how)).sort("k")
                if part.is_empty():
                    continue
                for ax, column in zip(axes, ("faithfulness", "kl")):
                    if part[column].null_count() < part.height:
                        ax.plot(part["k"], part[column], style, marker="o", color=f"C{index % 10}", label=f"{circuit} ({how})")
        for ax, label in zip(axes, ("faithfulness loss (lower is better)", "KL(model || circuit)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("K (corrupted inputs per clean input)")
            ax.set_ylabel(label)
        axes[0].legend(fontsize=6)
        figure.suptitle(title)

    return _render(path, formats, draw, (10, 4))


def plot_resample_variance(variance: pl.DataFrame, path: str | Path, title: str, *, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Each example's variance (over the K resamples) of its score, sorted, one line per circuit.
    variance: resample_variance.parquet's circuit, example, variance."""
    _require_columns(variance, ["circuit", "example", "variance"], "the resample variance table")

    def draw(figure: Figure) -> None:
        ax = figure.subplots()
        for index, circuit in enumerate(variance["circuit"].unique(maintain_order=True).to_list()):
            values = np.sort(variance.filter(pl.col("circuit") == circuit)["variance"].to_numpy())[::-1]
            ax.plot(np.arange(len(values)), values, color=f"C{index % 10}", label=circuit)
        ax.set_yscale("symlog", linthresh=1e-6)
        ax.set_xlabel("example (sorted by variance)")
        ax.set_ylabel("variance of the score across resamples")
        ax.legend(fontsize=6)
        ax.set_title(title)

    return _render(path, formats, draw, (6, 4))
