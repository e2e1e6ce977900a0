"""The figure-roc stage."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from circuitflow.report.dvc_curves import overlay
from circuitflow.report.figures import plot_roc
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import (
    discover_dir,
    evaluate_dir,
    write_csv,
)


def run(settings: Settings, out: Path) -> StepResult:
    """The ACDC paper's ROC curves and AUC table: every pair with a ground truth, every method."""

    rows = []
    for name, pair in settings.pairs.items():
        pair_dir = evaluate_dir(name)
        roc = pl.read_parquet(pair_dir / "roc.parquet")
        if roc.is_empty():
            continue
        metrics = json.loads((pair_dir / "evaluation.json").read_text())
        for method in settings.methods:
            row = {"pair": name, "model": pair.model, "behavior": pair.behavior, "ablation": pair.ablation, "method": method}
            for level in ("edge", "node"):
                for kind in ("pessimistic", "trapezoid"):
                    row[f"{level}_auc_{kind}"] = metrics[f"{method}_{level}_auc_{kind}"]
            rows.append(row)
        edges = roc.filter(pl.col("level") == "edge")
        by_method = {m: edges.filter(pl.col("method") == m) for m in settings.methods}
        write_csv(out / "curves" / f"{name}.csv", overlay(name, by_method, "fpr", "tpr", roc=True))  # `dvc plots`: staircases
        plot_roc(by_method, out / f"roc_{name}.png", f"{name}: edge ROC against the ground truth ({pair.ablation} ablation)", formats=("png",))
    table = pl.DataFrame(rows)
    write_csv(out / "auc_table.csv", table)
    # Every pair, with or without a ground truth: the size of each method's saved circuit and the
    # fraction of the model's score it recovers (discover.circuit).
    sizes = []
    for name, pair in settings.pairs.items():
        recorded = json.loads((discover_dir(name) / "circuits.json").read_text())
        sizes += [{"pair": name, "model": pair.model, "behavior": pair.behavior, "method": method,
                   "edges": int(recorded[f"{method}_circuit_edges"]), "recovered": recorded[f"{method}_circuit_recovered"]}
                  for method in settings.methods]
    write_csv(out / "circuit_table.csv", pl.DataFrame(sizes))
    return StepResult(metrics={f"{r['pair']}_{r['method']}_edge_auc": r["edge_auc_pessimistic"] for r in rows},
                      params={"pairs": list(settings.pairs), "methods": list(settings.methods), "level": "edge", "auc": "pessimistic and trapezoid"})
