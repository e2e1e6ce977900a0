"""Figures of the adversarial evaluation and the tail analysis (uit de Bos & Garriga-Alonso 2024; Kwa et al. 2024).

Each function draws one ``matplotlib.figure.Figure``, writes it to ``path`` with each suffix of
``formats`` (PNG without a "Software" entry, SVG without a date) through the report package's shared
renderer, and returns it: the same data gives the same bytes, and figures drawn from several threads
do not trample matplotlib's global style.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from circuitflow.evaluation.tails import TailVerdict
from circuitflow.report.figures import FORMATS, _render, _require_columns

_FLOOR = 1e-12  # the log axis's floor when no KL is positive


def _figure(draw: Callable[[Figure], None], size: tuple[float, float], path: str | Path, formats: Sequence[str]) -> Figure:
    """Draw with ``draw`` once, write ``path`` with each suffix of ``formats``, return the figure."""
    drawn: list[Figure] = []

    def draw_and_keep(figure: Figure) -> None:
        draw(figure)
        drawn.append(figure)

    _render(path, formats, draw_and_keep, size)
    return drawn[0]


# ---- KL distributions --------------------------------------------------------------------------
def plot_kl_distributions(
    kl_by_circuit: Mapping[str, np.ndarray], path: str | Path, title: str, *, formats: Sequence[str] = FORMATS
) -> Figure:
    """Histograms of per-pair KL(full || circuit) (lower is better), one per circuit, on a log axis.

    kl_by_circuit: name -> (n_pairs,) KLs, drawn in the dict's order.  Zeros (the full model's) are
    drawn in the leftmost bin, a decade below the smallest positive KL; the legend gives each
    circuit's median and max.
    """
    if not kl_by_circuit:
        raise ValueError("plot_kl_distributions needs at least one circuit's KLs.")
    raw = {name: np.asarray(kl, dtype=np.float64).ravel() for name, kl in kl_by_circuit.items()}
    positive = np.concatenate([v[v > 0] for v in raw.values()])
    floor = 10.0 ** (np.floor(np.log10(positive.min())) - 1) if positive.size else _FLOOR
    high = float(positive.max()) if positive.size else 10 * floor
    edges = np.geomspace(floor, max(high, 10 * floor) * 1.01, 61)
    has_zeros = any((v <= 0).any() for v in raw.values())

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        for name, values in raw.items():
            label = f"{name} (median {np.median(values):.3g}, max {values.max():.3g})"
            ax.hist(np.maximum(values, floor), bins=edges, histtype="step", linewidth=1.5, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        zeros = f"; 0 drawn at {floor:.0e}" if has_zeros else ""
        ax.set(xlabel=f"KL(full || circuit) per pair (lower is better{zeros})", ylabel="pairs", title=title)
        ax.legend(fontsize="small")

    return _figure(draw, (7.0, 4.5), path, formats)


# ---- grouped heatmap ---------------------------------------------------------------------------
def plot_grouped_heatmap(
    table: pl.DataFrame,
    path: str | Path,
    title: str,
    *,
    row_name: str = "row",
    column_name: str = "column",
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Mean loss per (row label, column label) as a heatmap (``grouped_mean`` output: row, col, mean).

    E.g. IOI's KL by name (rows) and template (columns); lower is better; empty cells are blank.
    Cells carry their value when the grid is at most 20 x 20.
    """
    _require_columns(table, ("row", "col", "mean"), "The grouped losses")
    if table.height == 0:
        raise ValueError("The grouped losses are empty; nothing to draw.")
    rows = sorted(set(table["row"].to_list()))
    cols = sorted(set(table["col"].to_list()))
    grid = np.full((len(rows), len(cols)), np.nan)
    row_at, col_at = {r: i for i, r in enumerate(rows)}, {c: j for j, c in enumerate(cols)}
    for r, c, m in table.select("row", "col", "mean").iter_rows():
        grid[row_at[r], col_at[c]] = m
    annotate = len(rows) <= 20 and len(cols) <= 20
    size = (min(3.0 + 0.55 * len(cols), 20.0), min(2.5 + 0.4 * len(rows), 20.0))

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        figure.colorbar(image, ax=ax, label="mean loss (lower is better)")
        ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=45, ha="right", fontsize="small")
        ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize="small")
        ax.set(xlabel=column_name, ylabel=row_name, title=title)
        ax.grid(False)
        if annotate:
            finite = grid[np.isfinite(grid)]
            middle = (finite.min() + finite.max()) / 2
            for (i, j), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=7,
                            color="black" if value > middle else "white")

    return _figure(draw, size, path, formats)


# ---- tails -------------------------------------------------------------------------------------
def plot_hill(
    hill: pl.DataFrame, path: str | Path, title: str, *, verdict: TailVerdict | None = None, formats: Sequence[str] = FORMATS
) -> Figure:
    """The Hill plot: tail index alpha = 1/Hill(k) against k with a +-1 standard-error band, and the
    same for an exponential tail of the sample's size (``hill_estimates`` output).  With ``verdict``,
    its alpha is drawn and the title names heavy or light."""
    _require_columns(hill, ("k", "hill", "se", "exponential_hill"), "The Hill estimates")
    k = hill["k"].to_numpy()
    h, se, reference = hill["hill"].to_numpy(), hill["se"].to_numpy(), hill["exponential_hill"].to_numpy()
    with np.errstate(divide="ignore"):
        alpha, low, high = 1 / h, 1 / (h + se), 1 / np.maximum(h - se, 1e-12)
    label = title if verdict is None else f"{title}: {verdict.verdict} tail (alpha {verdict.alpha:.3g})"

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        ax.fill_between(k, low, high, alpha=0.25, linewidth=0)
        ax.plot(k, alpha, linewidth=1.5, label="sample")
        ax.plot(k, 1 / reference, linestyle="--", color="grey", linewidth=1.2, label="exponential tail, same size")
        if verdict is not None:
            ax.axhline(verdict.alpha, color="black", linewidth=0.8, linestyle=":", label=f"alpha = {verdict.alpha:.3g}")
        ax.set_xscale("log")
        top = np.nanmax(np.concatenate([alpha[np.isfinite(alpha)], 1 / reference]))
        ax.set_ylim(0, 1.15 * top)
        ax.set(xlabel="k (largest exceedances used)", ylabel="tail index alpha = 1 / Hill(k)", title=label)
        ax.legend(fontsize="small")

    return _figure(draw, (6.0, 4.5), path, formats)


def plot_qq(
    normal: pl.DataFrame, exponential: pl.DataFrame, path: str | Path, title: str, *, formats: Sequence[str] = FORMATS
) -> Figure:
    """Normal and exponential Q-Q plots side by side (``qq_points`` output), each with its reference
    line (y = x; the exponential fitted to the exceedances): a heavy right tail bends up."""
    for name, table in (("normal", normal), ("exponential", exponential)):
        _require_columns(table, ("theoretical", "sample", "line"), f"The {name} Q-Q points")

    def draw(figure: Figure) -> None:
        axes = figure.subplots(1, 2)
        for ax, table, name in zip(axes, (normal, exponential), ("normal", "exponential")):
            ax.plot(table["theoretical"], table["sample"], marker=".", markersize=2, linestyle="none")
            ax.plot(table["theoretical"], table["line"], color="grey", linestyle="--", linewidth=1)
            what = "standardised sample" if name == "normal" else "exceedances of the mean"
            ax.set(xlabel=f"{name} quantiles", ylabel=what, title=f"{name} Q-Q")
        figure.suptitle(title)

    return _figure(draw, (9.0, 4.2), path, formats)


__all__ = ["plot_grouped_heatmap", "plot_hill", "plot_kl_distributions", "plot_qq"]
