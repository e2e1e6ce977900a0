"""Figures of the hypothesis tests (Shi et al. 2024): the sufficiency / partial-necessity curve over
random-circuit size, and the per-edge effects of the minimality test against its references.

Drawn like every report figure (``circuitflow.report.figures``): a ``matplotlib.figure.Figure`` of
its own, matplotlib's default style, atomic writes, PNG without a "Software" entry, so the same data
gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from circuitflow.evaluation.hypothesis_tests import Q_STAR, MinimalityResult
from circuitflow.report.figures import _render, _require_columns

_SWEEP_COLUMNS = ("test", "fraction", "fraction_beaten", "passes", "circuit_size", "circuit_fraction")
_TEST_STYLE = {"sufficiency": ("#1f77b4", "o", "sufficiency: m(C) < m(C_r)"),
               "partial_necessity": ("#d62728", "s", "partial necessity: m(M\\C) > m(M\\C_r)")}


def plot_random_circuit_curve(
    sweep: pl.DataFrame,
    path: str | Path,
    title: str,
    *,
    q_star: float = Q_STAR,
    formats: Sequence[str] = ("png",),
) -> list[Path]:
    """The paper's sufficiency curve: per random-circuit size (fraction of the model's edges), the
    fraction of random circuits the circuit beats, one line per test in ``sweep`` (the frames of
    ``sufficiency_sweep`` and/or ``partial_necessity_sweep``, concatenated).  Filled markers: the
    binomial test passes at that size; dashed: q*; dotted: the circuit's own size."""
    _require_columns(sweep, _SWEEP_COLUMNS, "The sweep")
    if sweep.height == 0:
        raise ValueError("The sweep has no rows; run sufficiency_sweep or partial_necessity_sweep first.")
    unknown = sorted(set(sweep["test"]) - set(_TEST_STYLE))
    if unknown:
        raise ValueError(f"Unknown test(s) {unknown} in the sweep; expected {', '.join(_TEST_STYLE)}.")

    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        for test, (colour, marker, label) in _TEST_STYLE.items():
            rows = sweep.filter(pl.col("test") == test).sort("fraction")
            if rows.height == 0:
                continue
            x, y, passes = rows["fraction"].to_numpy(), rows["fraction_beaten"].to_numpy(), rows["passes"].to_numpy()
            axes.plot(x, y, color=colour, label=label, linewidth=1.2)
            axes.scatter(x[passes], y[passes], color=colour, marker=marker, zorder=3)
            axes.scatter(x[~passes], y[~passes], facecolors="white", edgecolors=colour, marker=marker, zorder=3)
        axes.axhline(q_star, color="#555555", linestyle="--", linewidth=1, label=f"q* = {q_star:g}")
        axes.axvline(sweep["circuit_fraction"][0], color="#555555", linestyle=":", linewidth=1, label=f"circuit ({sweep['circuit_size'][0]} edges)")
        axes.set_xlim(0, 1.02)
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel("random circuit size (fraction of the model's edges)")
        axes.set_ylabel("fraction of random circuits beaten")
        axes.set_title(title)
        axes.legend(loc="lower left", fontsize="small")

    return _render(path, formats, draw, (6.0, 4.0))


def plot_minimality_effects(
    minimality: MinimalityResult,
    path: str | Path,
    title: str,
    *,
    q_star: float = Q_STAR,
    formats: Sequence[str] = ("png",),
) -> list[Path]:
    """Per edge of the circuit, the change delta(e) of the mean score when it is knocked out (blue:
    necessary, red: found unnecessary; a dot marks each value, so zeros show), against the reference
    deltas of random added edges (grey: their range, dashed: their q* quantile).  Symmetric-log x axis,
    since deltas of zero and of order one appear together."""
    edges = minimality.edges
    _require_columns(edges, ("edge", "delta", "necessary"), "The minimality edges")
    references = np.asarray(minimality.references, dtype=float)
    if references.size == 0:
        raise ValueError("The minimality result has no reference deltas; run minimality_test with n_references >= 1.")
    deltas = edges["delta"].to_numpy()
    necessary = edges["necessary"].to_numpy()
    quantile = float(np.quantile(references, q_star))
    values = np.concatenate([deltas, references])
    positive = values[values > 0]
    linear_below = float(positive.min()) / 10 if positive.size else 1.0

    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        rows = np.arange(1, edges.height + 1)
        for mask, colour, label in ((necessary, "#1f77b4", "necessary"), (~necessary, "#d62728", "unnecessary")):
            if mask.any():
                axes.barh(rows[mask], deltas[mask], color=colour, alpha=0.35, height=0.6)
                axes.scatter(deltas[mask], rows[mask], color=colour, zorder=3, label=f"{label} ({int(mask.sum())})")
        axes.plot([references.min(), references.max()], [0, 0], color="#777777", linewidth=6, alpha=0.5,
                  solid_capstyle="butt", label=f"references (N={references.size}): range")
        axes.axvline(quantile, color="#555555", linestyle="--", linewidth=1, label=f"references' {q_star:g} quantile = {quantile:.3g}")
        axes.set_xscale("symlog", linthresh=linear_below)
        top = float(values.max()) * 2 if positive.size else 1.0
        axes.set_xlim(-linear_below / 2, top)
        decades = np.arange(np.ceil(np.log10(linear_below)), np.ceil(np.log10(top)))
        step = max(1, int(np.ceil(len(decades) / 6)))  # at most ~6 labelled decades
        axes.set_xticks([0.0, *(10.0 ** decades[::step]).tolist()])
        axes.set_yticks([0, *rows.tolist()], ["references", *edges["edge"].to_list()], fontsize="small")
        for tick, keep in zip(axes.get_yticklabels()[1:], necessary.tolist()):
            tick.set_color("#000000" if keep else "#d62728")
        axes.invert_yaxis()
        axes.set_xlabel("|change of mean score| when knocked out")
        axes.set_title(title)
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")

    return _render(path, formats, draw, (8.0, 1.4 + 0.3 * (edges.height + 1)))
