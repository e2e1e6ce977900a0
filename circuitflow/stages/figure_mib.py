"""The figure-mib stage: MIB's circuit-localization scores (Mueller et al. 2025) for every method
and pair: the CPR / CMD table, and per pair the f_k curves (faithfulness at k% of the edges)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from circuitflow.report.dvc_curves import overlay
from circuitflow.report.figures import plot_mib_curves
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import (
    evaluate_dir,
    read_json,
    read_parquet,
    write_csv,
)


def run(settings: Settings, out: Path) -> StepResult:
    rows = []
    for name, pair in settings.pairs.items():
        metrics = read_json(evaluate_dir(name) / "evaluation.json", f"evaluate@{name}")
        curves = read_parquet(evaluate_dir(name) / "mib.parquet", f"evaluate@{name}")
        for method in (*settings.methods, "random"):
            rows.append({"pair": name, "model": pair.model, "behavior": pair.behavior, "ablation": str(pair.ablation), "method": method,
                         "cpr": metrics[f"{method}_cpr"], "cmd": metrics[f"{method}_cmd"]})
        ranked = {f"{m} ({r})": curves.filter((pl.col("method") == m) & (pl.col("ranking") == r))
                  for m in (*settings.methods, "random") for r in ("signed", "absolute")}
        write_csv(out / "curves" / f"{name}.csv", overlay(name, ranked, "k", "f"))  # `dvc plots`: every method and ranking overlaid
        plot_mib_curves({m: curves.filter(pl.col("method") == m) for m in (*settings.methods, "random")}, out / f"mib_{name}.png",
                        f"{name}: faithfulness at a fraction of the edges (MIB)", formats=("png",))
    table = pl.DataFrame(rows)
    write_csv(out / "cpr_cmd.csv", table)
    means = table.group_by("method", maintain_order=True).agg(pl.col("cpr").mean(), pl.col("cmd").mean())
    return StepResult(metrics={f"{m}_mean_{k}": v for m, cpr, cmd in means.iter_rows() for k, v in (("cpr", cpr), ("cmd", cmd))},
                      params={"pairs": list(settings.pairs), "methods": list(settings.methods), "rankings": ["signed", "absolute"]})
