"""The curves `dvc plots` draws: one CSV per pair with every method's curve in it (long format), so
that DVC's page shows one plot per pair, titled by the pair, with the methods overlaid.

dvc.yaml's ``plots:`` section points each folder of these files at the template
``circuitflow/report/dvc_templates/overlay.json`` (a line per ``method``, drawn in ``order``, one
column headed by ``pair``).  Columns: ``pair``, ``method``, ``curve`` (the curve's name,
``<pair>_<method>``, shown in the tooltip), ``order`` (the drawing order), then the x and y columns.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl


def staircase(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC points as the pessimistic staircase a line plot draws exactly: sorted by (fpr, tpr),
    and before every point the corner (its fpr, the previous point's tpr): right first, then up."""
    order = np.lexsort((tpr, fpr))
    fpr, tpr = np.asarray(fpr, dtype=float)[order], np.asarray(tpr, dtype=float)[order]
    xs, ys = [], []
    for i, (x, y) in enumerate(zip(fpr, tpr)):
        if i and x != fpr[i - 1] and y != tpr[i - 1]:
            xs.append(x)
            ys.append(tpr[i - 1])
        xs.append(x)
        ys.append(y)
    return np.array(xs), np.array(ys)


def overlay(pair: str, curves: Mapping[str, pl.DataFrame], x: str, y: str, *, roc: bool = False) -> pl.DataFrame:
    """One pair's curves in one frame: ``curves`` is method -> frame with columns ``x`` and ``y``
    (sorted by ``x``; drawn as the ROC staircase when ``roc``)."""
    frames, start = [], 0
    for method, frame in curves.items():
        if roc:
            xs, ys = staircase(frame[x].to_numpy(), frame[y].to_numpy())
        else:
            frame = frame.sort(x)
            xs, ys = frame[x].to_numpy().astype(float), frame[y].to_numpy().astype(float)
        frames.append(pl.DataFrame({"pair": pair, "method": method, "curve": f"{pair}_{method}".replace(" ", "_"),
                                    "order": np.arange(start, start + len(xs)), x: xs, y: ys}))
        start += len(xs)
    schema = {"pair": pl.String, "method": pl.String, "curve": pl.String, "order": pl.Int64, x: pl.Float64, y: pl.Float64}
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


__all__ = ["overlay", "staircase"]
