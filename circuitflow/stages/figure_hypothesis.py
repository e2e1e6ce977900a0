"""The figure-hypothesis stage."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from circuitflow.evaluation.hypothesis_tests import MinimalityResult
from circuitflow.report.dvc_curves import overlay
from circuitflow.report.hypothesis_figures import (
    plot_minimality_effects,
    plot_random_circuit_curve,
)
from circuitflow.settings import HypothesisTestSettings, Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import (
    evaluate_dir,
    write_csv,
)

COLUMNS = ("pair", "model", "behavior", "ablation", "circuit", "test", "statistic", "p_value", "k", "ties", "status", "reason", "passes")
TESTS = ("equivalence", "independence", "minimality", "sufficiency", "partial_necessity")


def _cell(row: dict) -> str:
    """One test of one circuit as Table 1 shows it: the outcome, its p-value, and for a counting
    test k and the ties."""
    text = f"{row['status']} (p={row['p_value']:.3g}" if row["p_value"] is not None else f"{row['status']} ("
    if row.get("k") is not None:
        text += f", k={row['k']}, ties={row['ties']}"
    return text.replace("(, ", "(") + ")"


def table1_grid(table: pl.DataFrame) -> pl.DataFrame:
    """Shi et al.'s Table 1 as the paper lays it out: one row per (pair, circuit), one column per
    test, each cell "passes | fails | not applicable (p=..., k=..., ties=...)"."""
    if table.is_empty():
        return pl.DataFrame(schema=dict.fromkeys(("pair", "circuit", *TESTS), pl.String))
    rows = {}
    for row in table.iter_rows(named=True):
        rows.setdefault((row["pair"], row["circuit"]), {"pair": row["pair"], "circuit": row["circuit"]})[row["test"]] = _cell(row)
    return pl.DataFrame([{**dict.fromkeys(("pair", "circuit", *TESTS), ""), **entry} for entry in rows.values()])


def run(settings: Settings, out: Path) -> StepResult:
    """Shi et al.'s Table 1 (every pair, circuit and test), the sufficiency / partial-necessity
    curves over random-circuit size, and the per-edge minimality effects of the circuit under test."""

    tables, metrics = [], {}
    q_star = (settings.evaluate.hypothesis_tests or HypothesisTestSettings()).q_star
    for name in settings.pairs:
        pair_dir = evaluate_dir(name)
        tests = pl.read_parquet(pair_dir / "hypothesis_tests.parquet")
        sweep = pl.read_parquet(pair_dir / "random_circuit_sweep.parquet")
        if tests.is_empty() or sweep.is_empty():  # every circuit was the whole model (see evaluate)
            continue
        tables.append(tests.with_columns(pl.lit(name).alias("pair")).select(*COLUMNS))
        circuit = sweep["circuit"][0]
        plot_random_circuit_curve(sweep, out / f"sufficiency_{name}.png", f"{name}: {circuit} against random circuits", q_star=q_star)
        by_test = {test: sweep.filter(pl.col("test") == test) for test in ("sufficiency", "partial_necessity")}
        write_csv(out / "curves" / f"{name}.csv", overlay(name, by_test, "fraction", "fraction_beaten"))  # `dvc plots`: the tests overlaid
        effects = pl.read_parquet(pair_dir / "minimality_effects.parquet").filter(pl.col("circuit") == circuit)
        references = pl.read_parquet(pair_dir / "minimality_references.parquet").filter(pl.col("circuit") == circuit)
        minimality = MinimalityResult(None, effects, references["delta"].to_numpy(), tuple(references["knocked"].to_list()))
        plot_minimality_effects(minimality, out / f"minimality_{name}.png", f"{name}: {circuit}, per-edge minimality", q_star=q_star)
    table = pl.concat(tables, how="diagonal") if tables else pl.DataFrame(schema=dict.fromkeys(COLUMNS, pl.String))
    write_csv(out / "table.csv", table.with_columns(pl.col("passes").cast(pl.Int8)))
    write_csv(out / "table1.csv", table1_grid(table))
    for row in table.iter_rows(named=True):
        metrics[f"{row['pair']}_{row['circuit']}_{row['test']}_passes"] = float(row["passes"])
    return StepResult(metrics=metrics, params={"pairs": list(settings.pairs), "q_star": q_star})
