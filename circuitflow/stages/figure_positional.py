"""The figure-positional stage."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from circuitflow.io import write_json_atomic
from circuitflow.report.positional_figures import (
    layer_importance,
    node_layer,
    plot_layer_importance,
    plot_positional_heatmap,
)
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import (
    discover_dir,
    write_csv,
)


def run(settings: Settings, out: Path) -> StepResult:
    """The Mamba IOI paper's positional picture for every pair with ``positional: true``: the edge x
    position heatmap of signed positional EAP-IG scores and each layer's importance (the summed
    |score| of the edges into and out of it), with the most important layer in the metrics."""

    tables, metrics = [], {}
    for name, pair in settings.pairs.items():
        if not pair.positional:
            continue
        scores = pl.read_parquet(discover_dir(name) / "positional_scores.parquet")
        nodes = {node for edge in scores["edge"].unique().to_list() for node in edge.split(" -> ")} - {"logits"}
        n_layers = 1 + max(node_layer(node, 0) for node in nodes)
        plot_positional_heatmap(scores, out / f"heatmap_{name}.png", f"{name}: positional EAP-IG", formats=("png",))
        importance = layer_importance(scores, n_layers)
        plot_layer_importance(importance, out / f"layers_{name}.png", f"{name}: layer importance", formats=("png",))
        tables.append(importance.with_columns(pl.lit(name).alias("pair")).select("pair", "layer", "into", "out_of"))
        total = importance["into"] + importance["out_of"]
        metrics[f"{name}_most_important_layer"] = float(importance["layer"][int(total.arg_max())])
    if not tables:
        write_json_atomic(out / "skipped.json", {"skipped": "no pair has positional: true"})
        return StepResult()
    write_csv(out / "layer_importance.csv", pl.concat(tables))
    return StepResult(metrics=metrics)
