"""Figures for the report: ROC curves, faithfulness curves and circuit diagrams (the README).

Every function draws on a ``matplotlib.figure.Figure`` of its own (no pyplot, so no global figure
manager and no backend switch) and writes each requested format atomically.  The same data gives
byte-identical files: matplotlib's default style is used whatever the user's matplotlibrc says,
the PNG carries no "Software" entry, the SVG no date and a fixed id salt.  Those style settings
live in matplotlib's global rcParams while a figure is drawn, so drawing is serialised by a lock
(Prefect's thread-pool task runner may draw two figures at once).
"""

from __future__ import annotations

import re
import textwrap
import threading
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.style
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from circuitflow.evaluation.roc import auc_pessimistic, auc_trapezoid
from circuitflow.io import write_atomic

FORMATS = ("png", "svg")
DPI = 120

_STYLE = {
    "svg.hashsalt": "circuitflow",  # clip-path and glyph ids from a fixed salt, not a random one
    "svg.fonttype": "path",  # text as paths: renders the same without the font installed
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
_METADATA = {"png": {"Software": None}, "svg": {"Date": None}}
_LOCK = threading.Lock()

# edge colours in circuit diagrams: by the input of the destination head, or "other"
_KIND_COLOURS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#d62728", "other": "#555555"}
_KIND_CURVE = {"q": 0.25, "k": 0.1, "v": -0.1, "other": 0.15}  # arc3 rad: separate parallel arrows


# ---- writing -----------------------------------------------------------------------------------
def _targets(path: str | Path, formats: Sequence[str]) -> list[Path]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"Unknown figure format(s) {unknown or list(formats)}; choose from {', '.join(FORMATS)}.")
    path = Path(path)
    return [path.with_suffix(f".{fmt}") for fmt in formats]


def _render(path: str | Path, formats: Sequence[str], draw: Callable[[Figure], None], size: tuple[float, float]) -> list[Path]:
    """Draw a new figure with ``draw`` and save it once per format; returns the files written."""
    targets = _targets(path, formats)
    with _LOCK, matplotlib.style.context(["default", _STYLE]):
        figure = Figure(figsize=size, layout="constrained")
        draw(figure)
        fit_titles(figure)
        for target in targets:
            fmt = target.suffix[1:]
            write_atomic(target, lambda tmp, fmt=fmt: figure.savefig(tmp, format=fmt, metadata=_METADATA[fmt]))
    return targets


def fit_titles(figure: Figure) -> None:
    """Wrap every axes title onto as many lines as its column of the figure needs, so no title is
    clipped at the figure's edge (a character is taken as 0.62 em wide: generous for DejaVu Sans)."""
    for ax in figure.axes:
        title = ax.title.get_text()
        if not title:
            continue
        spec = ax.get_subplotspec()
        columns = spec.get_gridspec().ncols / (spec.colspan.stop - spec.colspan.start) if spec else 1
        width_px = figure.get_figwidth() * figure.dpi / columns * 0.94
        char_px = ax.title.get_fontsize() * figure.dpi / 72 * 0.62
        lines = textwrap.wrap(" ".join(title.split()), width=max(12, int(width_px / char_px)), break_on_hyphens=False)
        ax.title.set_text("\n".join(lines))


def _require_columns(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"{what} must be a polars DataFrame, got {type(frame).__name__}.")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}; it has {', '.join(frame.columns) or 'none'}.")


# ---- ROC ---------------------------------------------------------------------------------------
def plot_roc(
    roc_by_method: dict[str, pl.DataFrame], path: str | Path, title: str, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """ROC curves against a ground truth, one per method, in the dict's order.

    roc_by_method: method name -> DataFrame with columns ``fpr`` and ``tpr`` (``roc_points`` or
    ``roc_from_circuits`` output), running from fpr 0 to fpr 1.  Each curve is drawn as the
    pessimistic staircase (right first, then up) with its points marked; the legend gives the
    pessimistic and the trapezoid AUC (higher is better).  Writes ``path`` with each suffix of
    ``formats`` and returns those paths.
    """
    if not roc_by_method:
        raise ValueError("plot_roc needs at least one method's ROC points.")
    curves = []
    for method, frame in roc_by_method.items():
        _require_columns(frame, ("fpr", "tpr"), f"The ROC points of {method!r}")
        frame = frame.sort(["fpr", "tpr"])
        fpr, tpr = frame["fpr"].to_numpy(), frame["tpr"].to_numpy()
        label = f"{method} (AUC {auc_pessimistic(fpr, tpr):.3f}, trapezoid {auc_trapezoid(fpr, tpr):.3f})"
        curves.append((fpr, tpr, label))

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="chance")
        for fpr, tpr, label in curves:
            ax.plot(fpr, tpr, drawstyle="steps-post", marker="o", markersize=3, linewidth=1.5, label=label)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="false positive rate", ylabel="true positive rate", title=title)
        ax.set_aspect("equal")
        ax.legend(loc="lower right", fontsize="small")

    return _render(path, formats, draw, (5.5, 5.5))


def plot_auc_boxes(
    auc_by_method: dict[str, list[float]], path: str | Path, title: str, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """InterpBench's figure: per method, a box plot of its edge AUROC over the benchmark's cases
    (higher is better), each case's value drawn as a dot on top."""
    if not auc_by_method:
        raise ValueError("plot_auc_boxes needs at least one method's AUCs.")
    methods = list(auc_by_method)

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        ax.boxplot([auc_by_method[m] for m in methods], tick_labels=methods, showfliers=False)
        for i, method in enumerate(methods, start=1):
            values = auc_by_method[method]
            ax.scatter([i] * len(values), values, s=14, zorder=3)
        ax.axhline(0.5, linestyle=":", color="grey", linewidth=1)
        ax.set(ylim=(-0.02, 1.02), ylabel="edge AUROC (pessimistic)", title=title)

    return _render(path, formats, draw, (6.0, 4.0))


# ---- faithfulness ------------------------------------------------------------------------------
def plot_faithfulness(
    curves: dict[str, pl.DataFrame], path: str | Path, title: str, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Faithfulness loss against circuit size, one line per method, in the dict's order.

    curves: method name -> DataFrame with columns ``n_edges`` (edges kept) and ``faithfulness``
    (the loss of the circuit against the full model: lower is better).  The x axis is logarithmic
    when the sizes span more than two decades (symmetric-log when a size is 0).  Writes ``path``
    with each suffix of ``formats`` and returns those paths.
    """
    if not curves:
        raise ValueError("plot_faithfulness needs at least one method's curve.")
    lines = []
    for method, frame in curves.items():
        _require_columns(frame, ("n_edges", "faithfulness"), f"The faithfulness curve of {method!r}")
        frame = frame.sort("n_edges")
        lines.append((frame["n_edges"].to_numpy().astype(float), frame["faithfulness"].to_numpy().astype(float), method))
    sizes = np.concatenate([x for x, _, _ in lines])
    positive = sizes[sizes > 0]
    wide = positive.size > 0 and positive.max() / positive.min() > 100

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        for x, y, method in lines:
            ax.plot(x, y, marker="o", markersize=3, linewidth=1.5, label=method)
        if wide:
            if (sizes <= 0).any():
                ax.set_xscale("symlog", linthresh=1)
            else:
                ax.set_xscale("log")
        ax.set(xlabel="edges kept", ylabel="faithfulness loss (lower is better)", title=title)
        ax.legend(fontsize="small")

    return _render(path, formats, draw, (6.5, 4.5))


# ---- circuit diagrams --------------------------------------------------------------------------
_END = re.compile(r"^(?:(?P<input>input|embed|pos_embed)|a(?P<al>\d+)\.(?P<h>\d+)(?:\.(?P<qkv>[qkv]))?|[ml](?P<ml>\d+)|(?P<logits>logits))$")


def plot_mib_curves(
    curves: dict[str, pl.DataFrame], path: str | Path, title: str, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """MIB's faithfulness f_k against k, the fraction of edges kept, one colour per method: solid
    for circuits ranked by signed scores (CPR is the area under it, higher is better), dashed for
    absolute scores (CMD is the area between it and 1, lower is better).

    curves: method -> DataFrame with ``ranking`` ("signed" | "absolute"), ``k`` and ``f``.
    """
    if not curves:
        raise ValueError("plot_mib_curves needs at least one method's curve.")
    for method, frame in curves.items():
        _require_columns(frame, ("ranking", "k", "f"), f"The MIB curve of {method!r}")

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        for index, (method, frame) in enumerate(curves.items()):
            colour = f"C{index}"
            for ranking, style in (("signed", "-"), ("absolute", "--")):
                line = frame.filter(pl.col("ranking") == ranking).sort("k")
                ax.plot(line["k"].to_numpy(), line["f"].to_numpy(), style, color=colour, marker="o", markersize=2.5, linewidth=1.3,
                        label=f"{method} ({ranking})")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set(xlabel="fraction of edges kept, k", ylabel="faithfulness f_k (1 = the model, 0 = empty)", title=title)
        ax.legend(fontsize=7, ncol=2)

    return _render(path, formats, draw, (6.4, 4.2))


def _parse_end(name: str, edge: str) -> tuple[str, str | None]:
    """(node, q/k/v or None) of one end of an edge; q/k/v inputs fold into their head."""
    match = _END.match(name.strip())
    if match is None:
        raise ValueError(
            f"Cannot draw edge {edge!r}: {name!r} is not a node name (input, embed, pos_embed, "
            "a{layer}.{head}[.q|.k|.v], m{layer}, a Mamba layer l{layer} or logits)."
        )
    if match["al"] is not None:
        return f"a{match['al']}.{match['h']}", match["qkv"]
    return name.strip(), None


def circuit_edges(edges: Sequence[str]) -> list[tuple[str, str, str]]:
    """The drawable edges of a circuit: sorted, distinct ``(source node, destination node, kind)``.

    ``kind`` is q, k or v when the destination is that input of a head, else "other".  Positions
    (``" @ {pos}"``) are dropped, so an edge kept at several positions is drawn once; ACDC's q/k/v
    direct edges (``a1.0.q -> a1.0``) join a head to itself and are not drawn.
    """
    drawn = set()
    for edge in edges:
        parts = edge.split(" @ ")[0].split(" -> ")
        if len(parts) != 2:
            raise ValueError(f"Cannot draw edge {edge!r}: edges look like 'a0.1 -> a1.0.q' (optionally ' @ 3').")
        (src, _), (dst, qkv) = _parse_end(parts[0], edge), _parse_end(parts[1], edge)
        if src != dst:
            drawn.add((src, dst, qkv or "other"))
    return sorted(drawn)


def circuit_layout(nodes: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(x, y) of every node of a circuit diagram: rows by position in the residual stream.

    The input(s) at the bottom (y 0), then per layer l the heads ``a{l}.*`` (y 2l+1) and the MLP
    ``m{l}`` or Mamba layer ``l{l}`` (y 2l+2), the logits at the top.  Heads spread by head index over the width needed
    for the largest head index present; MLP, input and logits sit in the middle (``embed`` and
    ``pos_embed`` either side of it).
    """
    layers = [int(m) for n in nodes for m in re.findall(r"^(?:a|m|l)(\d+)", n)]
    heads = [int(n.split(".")[1]) for n in nodes if n.startswith("a")]
    n_layers = max(layers, default=-1) + 1
    width = max(heads, default=0) + 1
    middle = (width - 1) / 2
    inputs = {"input": middle, "embed": middle - 0.5, "pos_embed": middle + 0.5}
    layout = {}
    for node in nodes:
        if node in inputs:
            layout[node] = (inputs[node], 0.0)
        elif node == "logits":
            layout[node] = (middle, 2.0 * n_layers + 1)
        elif node[0] in "ml":
            layout[node] = (middle, 2.0 * int(node[1:]) + 2)
        else:
            layer, head = (int(part) for part in node[1:].split("."))
            layout[node] = (float(head), 2.0 * layer + 1)
    return layout


def plot_circuit(edges: Sequence[str], path: str | Path, title: str, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """A diagram of a circuit: its nodes by layer, its edges as arrows from source to destination.

    edges: edge names ``"src -> dst"`` (optionally ``" @ {pos}"``, ignored), e.g. ``Circuit.edges``.
    Arrows into a head's query, key or value input point at the head and are coloured by q/k/v
    (see the legend); other arrows are grey.  The size of the figure grows with the number of
    layers and heads.  Writes ``path`` with each suffix of ``formats`` and returns those paths.
    """
    drawn = circuit_edges(edges)
    nodes = sorted({end for src, dst, _ in drawn for end in (src, dst)})
    layout = circuit_layout(nodes)
    xs = [x for x, _ in layout.values()] or [0.0]
    ys = [y for _, y in layout.values()] or [0.0]
    # grows with the model, capped so a GPT-2-sized diagram stays a few megapixels
    size = (min(4.0 + 0.9 * (max(xs) - min(xs)), 24.0), min(3.0 + 0.6 * (max(ys) - min(ys)), 24.0))

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        ax.set_title(title)
        ax.set_axis_off()
        if not drawn:
            ax.text(0.5, 0.5, "empty circuit", ha="center", va="center", transform=ax.transAxes)
            return
        for src, dst, kind in drawn:
            ax.annotate(
                "",
                xy=layout[dst],
                xytext=layout[src],
                arrowprops=dict(
                    arrowstyle="-|>",
                    color=_KIND_COLOURS[kind],
                    linewidth=1.0,
                    alpha=0.8,
                    shrinkA=11,
                    shrinkB=11,
                    connectionstyle=f"arc3,rad={_KIND_CURVE[kind]}",
                ),
                zorder=1,
            )
        for node in nodes:
            x, y = layout[node]
            ax.text(
                x, y, node, ha="center", va="center", fontsize=8, zorder=3,
                bbox=dict(boxstyle="round,pad=0.3", facecolor="#fff8dc" if node.startswith("a") else "#e8f0fe", edgecolor="#333333"),
            )
        ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
        ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
        kinds = sorted({kind for _, _, kind in drawn}, key=list(_KIND_COLOURS).index)
        handles = [Line2D([], [], color=_KIND_COLOURS[k], label=k if k != "other" else "to MLP / logits") for k in kinds]
        ax.legend(handles=handles, loc="upper left", fontsize="small", frameon=False)

    return _render(path, formats, draw, size)


__all__ = ["FORMATS", "circuit_edges", "circuit_layout", "plot_auc_boxes", "plot_circuit", "plot_faithfulness", "plot_roc"]
