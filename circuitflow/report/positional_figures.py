"""The Mamba IOI paper's positional picture (Ensign & Garriga-Alonso 2024; Ensign & Garriga-Alonso 2024): positional
EAP-IG scores as an edge x position heatmap, and each layer's importance.

Both read the ``positional_scores.parquet`` that the discover stage writes for a pair with
``positional: true`` (columns ``edge``, ``position``, ``score``: one signed EAP-IG score per edge and
token position).  A layer's importance is the summed |score| of the edges that read it (``into``) and
of those that leave it (``out_of``); a bottleneck layer stands out in both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from circuitflow.report.figures import FORMATS, _render, _require_columns

MAX_HEATMAP_EDGES = 40  # the edges with the largest summed |score| (all of them on a small graph)


def node_layer(node: str, n_layers: int) -> int:
    """The layer of a graph node: -1 for the input, ``n_layers`` for the logits, else the number
    after its letter (``a3.1.q``, ``m2``, ``l5``)."""
    if node in ("input", "embed", "pos_embed"):
        return -1
    if node == "logits":
        return n_layers
    match = re.match(r"[aml](\d+)", node)
    if match is None:
        raise ValueError(f"Cannot tell the layer of graph node {node!r}.")
    return int(match.group(1))


def layer_importance(scores: pl.DataFrame, n_layers: int) -> pl.DataFrame:
    """Per layer 0..n_layers-1: summed |score| of the edges into it and out of it."""
    _require_columns(scores, ("edge", "position", "score"), "positional scores")
    ends = scores.with_columns(
        pl.col("edge").str.split(" -> ").list.get(0).alias("source"),
        pl.col("edge").str.split(" -> ").list.get(1).alias("destination"),
        pl.col("score").abs().alias("magnitude"),
    )
    into = np.zeros(n_layers)
    out_of = np.zeros(n_layers)
    for source, destination, magnitude in ends.select("source", "destination", "magnitude").iter_rows():
        read, written = node_layer(destination, n_layers), node_layer(source, n_layers)
        if 0 <= read < n_layers:
            into[read] += magnitude
        if 0 <= written < n_layers:
            out_of[written] += magnitude
    return pl.DataFrame({"layer": list(range(n_layers)), "into": into.tolist(), "out_of": out_of.tolist()})


def plot_positional_heatmap(
    scores: pl.DataFrame, path: str | Path, title: str, *, position_labels: Sequence[str] | None = None,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Signed positional EAP-IG scores, edges (rows, the ``MAX_HEATMAP_EDGES`` with the largest summed
    |score|, in graph order) by token position (columns); a diverging map centred on zero."""
    _require_columns(scores, ("edge", "position", "score"), "positional scores")
    if scores.is_empty():
        raise ValueError("There are no positional scores to plot.")
    edges = list(dict.fromkeys(scores["edge"].to_list()))  # graph order
    positions = sorted(set(scores["position"].to_list()))
    grid = np.zeros((len(edges), len(positions)))
    row, column = {e: i for i, e in enumerate(edges)}, {p: j for j, p in enumerate(positions)}
    for edge, position, score in scores.select("edge", "position", "score").iter_rows():
        grid[row[edge], column[position]] = score
    keep = np.sort(np.argsort(-np.abs(grid).sum(1), kind="stable")[:MAX_HEATMAP_EDGES])
    grid, edges = grid[keep], [edges[i] for i in keep]
    limit = float(np.abs(grid).max()) or 1.0

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(edges)), edges, fontsize=7)
        labels = list(position_labels) if position_labels is not None else [str(p) for p in positions]
        ax.set_xticks(range(len(positions)), labels, rotation=90, fontsize=7)
        ax.set(xlabel="token position", title=title)
        ax.grid(False)
        figure.colorbar(image, ax=ax, label="EAP-IG score (signed)")

    return _render(path, formats, draw, (max(6.0, 0.35 * len(positions) + 3), max(3.5, 0.22 * len(edges) + 1.5)))


def plot_layer_importance(importance: pl.DataFrame, path: str | Path, title: str, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Per layer, the summed |positional EAP-IG score| of the edges into it and out of it (bars)."""
    _require_columns(importance, ("layer", "into", "out_of"), "layer importance")
    layers = importance["layer"].to_numpy()

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        ax.bar(layers - 0.2, importance["into"].to_numpy(), width=0.4, label="edges into the layer")
        ax.bar(layers + 0.2, importance["out_of"].to_numpy(), width=0.4, label="edges out of the layer")
        ax.set_xticks(layers)
        ax.set(xlabel="layer", ylabel="summed |EAP-IG score|", title=title)
        ax.legend()

    return _render(path, formats, draw, (6.0, 3.5))
