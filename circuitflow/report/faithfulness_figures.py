"""Faithfulness as the fraction of the metric a circuit recovers, on one scale for every pair.

f = (m(C) - m(empty)) / (m(full) - m(empty)), m the behavior's metric averaged over the examples
(HIGHER = more of the behavior): 0 is the empty circuit (every edge ablated), 1 the whole model.
The evaluate stage stores this normalised fraction only for MIB's circuits (``mib.parquet``: the top
k of the edges, k a fraction of every edge); its faithfulness loss curve (``faithfulness.parquet``)
keeps one loss per size and not the per-example scores the fraction needs.  So these MIB curves are
the faithfulness figure, and the loss curve is the secondary one.

Drawn like every report figure (``circuitflow.report.figures``): own ``Figure``, default style,
atomic writes, the same data gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import polars as pl
from matplotlib.figure import Figure

from circuitflow.report.figures import _render, _require_columns

RANKING = "absolute"  # circuits cut by |score|, as the pipeline cuts its saved circuits (MIB's CMD)


def shared_limits(curves: Mapping[str, pl.DataFrame]) -> tuple[float, float]:
    """One y range for every pair: at least [-0.05, 1.1], widened to every value of ``f``."""
    values = [v for frame in curves.values() for v in frame["f"].to_list() if v is not None and math.isfinite(v)]
    low, high = min([-0.05, *values]), max([1.1, *values])
    pad = 0.03 * (high - low)
    return low - pad, high + pad


def _lines(ax, frame: pl.DataFrame, ylim: tuple[float, float], legend: bool) -> None:
    """One line per method of ``frame`` (columns method, ranking, k, f); ``random`` grey and dashed."""
    methods = list(dict.fromkeys(frame["method"].to_list()))
    for index, method in enumerate(m for m in methods if m != "random"):
        line = frame.filter((pl.col("method") == method) & (pl.col("ranking") == RANKING)).sort("k")
        ax.plot(line["k"].to_numpy(), line["f"].to_numpy(), color=f"C{index}", marker="o", markersize=3, linewidth=1.4, label=method)
    if "random" in methods:
        line = frame.filter((pl.col("method") == "random") & (pl.col("ranking") == RANKING)).sort("k")
        ax.plot(line["k"].to_numpy(), line["f"].to_numpy(), color="#777777", linestyle="--", linewidth=1.2, label="random scores")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(0.0, color="black", linewidth=0.5, linestyle=":")
    ax.set_xscale("log")
    ax.set_ylim(*ylim)
    ax.set_xlabel("fraction of edges kept (log scale)")
    ax.set_ylabel("fraction of the metric recovered")
    if legend:
        ax.legend(fontsize="small", loc="upper left")


def plot_fraction_recovered(frame: pl.DataFrame, path: str | Path, title: str, *, ylim: tuple[float, float]) -> list[Path]:
    """One pair: the fraction of the metric recovered against the fraction of edges kept, one line
    per method (``frame``: mib.parquet's rows, columns method, ranking, k, f), on ``ylim``."""
    _require_columns(frame, ("method", "ranking", "k", "f"), "The MIB curves")

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        _lines(ax, frame, ylim, legend=True)
        ax.set_title(title)

    return _render(path, ("png",), draw, (6.0, 4.2))


def plot_fraction_grid(by_pair: Mapping[str, pl.DataFrame], path: str | Path, title: str, *, columns: int = 3) -> list[Path]:
    """Every pair side by side on the same y scale (``shared_limits``), one panel per pair."""
    if not by_pair:
        raise ValueError("plot_fraction_grid needs at least one pair's curves.")
    ylim = shared_limits(by_pair)
    columns = min(columns, len(by_pair))
    rows = math.ceil(len(by_pair) / columns)

    def draw(figure: Figure) -> None:
        grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
        for index, (ax, (pair, frame)) in enumerate(zip(grid.flat, by_pair.items())):
            _lines(ax, frame, ylim, legend=index == 0)
            ax.set_title(pair)
            if index % columns:
                ax.set_ylabel("")
        for ax in list(grid.flat)[len(by_pair):]:
            ax.set_axis_off()
        figure.suptitle(title)

    return _render(path, ("png",), draw, (4.2 * columns, 3.4 * rows + 0.4))


__all__ = ["RANKING", "plot_fraction_grid", "plot_fraction_recovered", "shared_limits"]
