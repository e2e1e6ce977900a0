"""The figure-adversarial stage."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from circuitflow.evaluation.adversarial import pair_kl_circuits, read_pair_kl
from circuitflow.io import write_json_atomic
from circuitflow.report.adversarial_figures import (
    plot_grouped_heatmap,
    plot_hill,
    plot_kl_distributions,
    plot_qq,
)
from circuitflow.report.dvc_curves import overlay
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import (
    evaluate_dir,
    write_csv,
)


def run(settings: Settings, out: Path) -> StepResult:
    """The adversarial evaluation: percentile table, KL distributions, worst inputs, Hill and Q-Q
    plots with the tail verdicts, and IOI's name x template heatmap (pairs where it applies)."""

    summaries, tails, worst = [], [], []
    for name in settings.pairs:
        adversarial_dir = evaluate_dir(name) / "adversarial"
        if (adversarial_dir / "skipped.json").exists():
            continue
        summary = pl.read_parquet(adversarial_dir / "summary.parquet")
        summaries.append(summary.with_columns(pl.lit(name).alias("pair")))
        tail = pl.read_parquet(adversarial_dir / "tails.parquet")
        tails.append(tail.with_columns(pl.lit(name).alias("pair")))
        worst.append(pl.read_parquet(adversarial_dir / "worst.parquet").with_columns(pl.lit(name).alias("pair")))
        path = adversarial_dir / "pair_kl.parquet"
        plot_kl_distributions({c: read_pair_kl(path, c) for c in pair_kl_circuits(path)}, out / f"kl_{name}.png",
                              f"{name}: KL(model || circuit) over all pairs", formats=("png",))
        hill, qq = pl.read_parquet(adversarial_dir / "hill.parquet"), pl.read_parquet(adversarial_dir / "qq.parquet")
        tested = qq.filter(pl.col("circuit") == "circuit")
        verdict = tail.filter(pl.col("circuit") == "circuit")["verdict"][0]
        if not tested.is_empty():  # empty where the circuit's KL has no tail (constant, e.g. the whole model)
            plot_hill(hill.filter(pl.col("circuit") == "circuit"), out / f"hill_{name}.png", f"{name}: Hill plot of the circuit's KL ({verdict} tail)", formats=("png",))
            plot_qq(tested.filter(pl.col("distribution") == "normal"), tested.filter(pl.col("distribution") == "exponential"),
                    out / f"qq_{name}.png", f"{name}: Q-Q plots of the circuit's KL", formats=("png",))
        write_csv(out / "curves" / f"{name}.csv", overlay(name, {"circuit": hill.filter(pl.col("circuit") == "circuit")}, "k", "alpha"))
        if (adversarial_dir / "ioi_groups.parquet").exists():
            plot_grouped_heatmap(pl.read_parquet(adversarial_dir / "ioi_groups.parquet"), out / f"ioi_groups_{name}.png",
                                 f"{name}: mean KL by IO name and template", row_name="IO name", column_name="template", formats=("png",))
    if summaries:
        table = pl.concat(summaries, how="diagonal")
        write_csv(out / "percentiles.csv", table.select("pair", *[c for c in table.columns if c != "pair"]))
        write_csv(out / "tails.csv", pl.concat(tails).select("pair", "circuit", "verdict", "alpha", "exponential_alpha", "z", "explanation"))
        write_csv(out / "worst.csv", pl.concat(worst).select("pair", "rank", "kl", "clean_text", "corrupted_text"))
    else:
        write_json_atomic(out / "skipped.json", {"skipped": "no pair has an adversarial evaluation"})
    return StepResult(metrics={f"{r['pair']}_{r['circuit'].replace(' ', '_')}_p99": r["p99"] for s in summaries for r in s.iter_rows(named=True)},
                      params={"pairs": list(settings.pairs)})
