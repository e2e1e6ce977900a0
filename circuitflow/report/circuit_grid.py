"""One pair's circuits side by side: a grid of diagrams, one panel per method (and the ground truth
first where it is known), every panel on the same node positions so the circuits can be compared.

Layout: the hand-made residual-stream layout of ``figures.circuit_layout`` (inputs at the bottom,
per layer the heads then the MLP, the logits at the top).  Graphviz's ``dot`` is not used: the
layered layout is already the model's own order, and the figure's bytes must not depend on whether a
``dot`` binary happens to be installed.

Edge width: the edge's |score| over the largest |score| in that circuit (the method's own ranking
score from ``scores.parquet``; an edge drawn for several q/k/v inputs takes the largest).  Colour:
with a ground truth, green = the edge is in it, red = it is not, and the ground truth's edges the
circuit misses are dotted grey; without one, by the destination's input (q, k, v, other).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from circuitflow.report.figures import (
    _KIND_COLOURS,
    _KIND_CURVE,
    _render,
    circuit_edges,
    circuit_layout,
)

FOUND, EXTRA, MISSED = "#2ca02c", "#d62728", "#9a9a9a"
Key = tuple[str, str, str]  # (source node, destination node, q/k/v/other)


def edge_weights(edges: Sequence[str], scores: Mapping[str, float] | None) -> dict[Key, float]:
    """The drawn edges of a circuit -> line weight in [0, 1]: |score| over the circuit's largest
    (1 for every edge without scores, or when every score is 0)."""
    raw: dict[Key, float] = {}
    for edge in edges:
        for key in circuit_edges([edge]):
            value = abs(float(scores.get(edge, 0.0))) if scores else 1.0
            raw[key] = max(raw.get(key, 0.0), 0.0 if math.isnan(value) else value)
    top = max(raw.values(), default=0.0)
    return {key: (value / top if top > 0 else 1.0) for key, value in sorted(raw.items())}


def _arrow(ax, layout, key: Key, colour: str, width: float, style: str = "solid") -> None:
    src, dst, kind = key
    ax.annotate("", xy=layout[dst], xytext=layout[src], zorder=1,
                arrowprops=dict(arrowstyle="-|>", color=colour, linewidth=width, linestyle=style, alpha=0.85, shrinkA=11, shrinkB=11,
                                connectionstyle=f"arc3,rad={_KIND_CURVE[kind]}"))


def _panel(ax, title: str, weights: dict[Key, float], truth: set[Key] | None, layout: dict[str, tuple[float, float]]) -> None:
    ax.set_title(title, fontsize="medium")
    ax.set_axis_off()
    used = {end for src, dst, _ in weights for end in (src, dst)}
    for key, weight in weights.items():
        colour = _KIND_COLOURS[key[2]] if truth is None else (FOUND if key in truth else EXTRA)
        _arrow(ax, layout, key, colour, 0.6 + 3.4 * weight)
    for key in sorted((truth or set()) - set(weights)):
        _arrow(ax, layout, key, MISSED, 1.0, "dotted")
    for node, (x, y) in layout.items():
        ax.text(x, y, node, ha="center", va="center", fontsize=7, zorder=3, alpha=1.0 if node in used else 0.35,
                bbox=dict(boxstyle="round,pad=0.25", facecolor="#fff8dc" if node.startswith("a") else "#e8f0fe", edgecolor="#333333"))
    xs, ys = [x for x, _ in layout.values()] or [0.0], [y for _, y in layout.values()] or [0.0]
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    if not weights:
        ax.text(0.5, 0.5, "empty circuit", ha="center", va="center", transform=ax.transAxes)


def _legend(truth: bool) -> list[Line2D]:
    if truth:
        return [Line2D([], [], color=FOUND, label="edge in the ground truth"), Line2D([], [], color=EXTRA, label="edge not in the ground truth"),
                Line2D([], [], color=MISSED, linestyle="dotted", label="ground-truth edge the circuit misses")]
    return [Line2D([], [], color=colour, label=kind if kind != "other" else "to MLP / logits") for kind, colour in _KIND_COLOURS.items()]


def plot_circuit_grid(
    circuits: Mapping[str, tuple[Sequence[str], Mapping[str, float] | None]],
    path: str | Path,
    title: str,
    *,
    truth: Sequence[str] | None = None,
    columns: int = 3,
) -> list[Path]:
    """Every circuit of one pair side by side (PNG at ``path``); returns the files written.

    circuits: panel title (the method) -> (edge names, edge name -> score or None); drawn in order.
    truth: the ground-truth circuit's edges, drawn as the first panel and used to colour the others.
    columns: panels per row (twice as many when the panels are narrow, as for tracr's one head per layer).
    """
    panels = {name: edge_weights(edges, scores) for name, (edges, scores) in circuits.items()}
    truth_keys = set(circuit_edges(truth)) if truth is not None else None
    if truth_keys is not None:
        panels = {"ground truth": dict.fromkeys(sorted(truth_keys), 1.0), **panels}
    nodes = sorted({end for weights in panels.values() for src, dst, _ in weights for end in (src, dst)})
    layout = circuit_layout(nodes)
    xs, ys = [x for x, _ in layout.values()] or [0.0], [y for _, y in layout.values()] or [0.0]
    panel_size = (min(2.6 + 0.75 * (max(xs) - min(xs)), 9.0), min(2.4 + 0.35 * (max(ys) - min(ys)), 9.0))
    columns = max(1, min(2 * columns if panel_size[0] < 4.5 else columns, len(panels)))  # narrow panels: twice as many per row
    rows = math.ceil(len(panels) / columns)

    def draw(figure: Figure) -> None:
        grid = figure.subplots(rows, columns, squeeze=False)
        for ax, (name, weights) in zip(grid.flat, panels.items()):
            _panel(ax, f"{name} ({len(weights)} edges)", weights, truth_keys, layout)
        for ax in list(grid.flat)[len(panels):]:
            ax.set_axis_off()
        figure.suptitle(title)
        figure.legend(handles=_legend(truth_keys is not None), loc="outside lower center", ncol=4, fontsize="small", frameon=False)

    return _render(path, ("png",), draw, (panel_size[0] * columns, panel_size[1] * rows + 0.6))


__all__ = ["edge_weights", "plot_circuit_grid"]
