"""Figures of the posterior organisms (``models/posterior.py``): each edge's inclusion frequency
across posterior samples and across SGD seeds, and held-out accuracy against the temperature."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from circuitflow.report.figures import _render, _require_columns


def plot_inclusion(inclusion: pl.DataFrame, path: str | Path, title: str, *, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Inclusion frequency of every edge some circuit holds, sorted, one line per group.
    inclusion: group, edge, inclusion."""
    _require_columns(inclusion, ["group", "edge", "inclusion"], "the inclusion table")

    def draw(figure: Figure) -> None:
        ax = figure.subplots()
        for index, group in enumerate(inclusion["group"].unique(maintain_order=True).to_list()):
            values = np.sort(inclusion.filter((pl.col("group") == group) & (pl.col("inclusion") > 0))["inclusion"].to_numpy())[::-1]
            ax.step(np.arange(1, len(values) + 1), values, where="post", color=f"C{index}", label=group)
        ax.set_xlabel("edge (sorted by inclusion frequency)")
        ax.set_ylabel("fraction of circuits holding the edge")
        ax.set_ylim(0, 1.05)
        ax.legend()
        ax.set_title(title)

    return _render(path, formats, draw, (6, 4))


def plot_accuracy_vs_temperature(table: pl.DataFrame, path: str | Path, *, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Held-out accuracy of the samples (mean) and of their average (BMA) against T, with the SGD
    seeds' for comparison.  table: temperature, accuracy_posterior_mean, accuracy_posterior_bma,
    accuracy_sgd_mean, accuracy_sgd_ensemble (one row per posterior model)."""
    columns = ["accuracy_posterior_mean", "accuracy_posterior_bma", "accuracy_sgd_mean", "accuracy_sgd_ensemble"]
    _require_columns(table, ["temperature", *columns], "the accuracy table")

    def draw(figure: Figure) -> None:
        ax = figure.subplots()
        ordered = table.sort("temperature")
        for index, column in enumerate(columns):
            ax.plot(ordered["temperature"], ordered[column], "o-" if "posterior" in column else "x:", color=f"C{index}",
                    label=column.removeprefix("accuracy_"))
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlabel("temperature T")
        ax.set_ylabel("held-out accuracy")
        ax.legend(fontsize=7)
        ax.set_title("Held-out accuracy against the posterior's temperature")

    return _render(path, formats, draw, (6, 4))
