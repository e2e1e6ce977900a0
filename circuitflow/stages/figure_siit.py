"""The figure-siit stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from circuitflow.io import write_json_atomic
from circuitflow.report.figures import plot_auc_boxes
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import (
    evaluate_dir,
    model_dir,
    write_csv,
)

SIIT_TRAINING_COLUMNS = ("steps", "reached_target", "accuracy", "iia", "iia_min", "strict_accuracy", "strict_accuracy_min")


def run(settings: Settings, out: Path) -> StepResult:
    """The InterpBench benchmark inside the pipeline: every discovery method on every SIIT-trained
    model (pairs whose model has kind ``siit``), edge AUROC against the known circuit as a table
    (case x method) and as box plots per method across the cases; and each model's training figures
    (accuracy, interchange-intervention accuracy, strict accuracy: mean and worst node)."""

    rows, training = [], []
    for name, pair in settings.pairs.items():
        spec = settings.model(pair.model)
        if spec.kind != "siit":
            continue
        trained = json.loads((model_dir(pair.model) / "config.json").read_text())["metrics"]
        training.append({"pair": name, "case": spec.case, **{key: trained[key] for key in SIIT_TRAINING_COLUMNS}})
        metrics = json.loads((evaluate_dir(name) / "evaluation.json").read_text())
        for method in settings.methods:
            rows.append({"pair": name, "case": spec.case, "method": method,
                         "edge_auc": metrics[f"{method}_edge_auc_pessimistic"], "edge_auc_trapezoid": metrics[f"{method}_edge_auc_trapezoid"],
                         "node_auc": metrics[f"{method}_node_auc_pessimistic"]})
    if not rows:
        write_json_atomic(out / "skipped.json", {"skipped": "no pair uses a model of kind siit"})
        return StepResult()
    table = pl.DataFrame(rows)
    write_csv(out / "auroc_table.csv", table)
    write_csv(out / "training.csv", pl.DataFrame(training))
    by_method = {m: table.filter(pl.col("method") == m)["edge_auc"].to_list() for m in settings.methods}
    plot_auc_boxes(by_method, out / "auroc_boxes.png", f"Edge AUROC over {table['case'].n_unique()} SIIT cases", formats=("png",))
    return StepResult(metrics={f"{m}_mean_edge_auc": float(np.mean(v)) for m, v in by_method.items()})
