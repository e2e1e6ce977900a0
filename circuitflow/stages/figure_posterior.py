"""The figure-posterior stage: is a circuit a property of one weight vector or of the posterior?
Per posterior organism and method, the circuits of its posterior samples against those of its SGD
seeds (the posterior stage's scores.parquet and members.parquet):

    stability.csv    model, method, group, temperature, n (the common top-n size: the median saved
                     circuit size over both groups), the mean Jaccard index between the members'
                     top-n circuits and between their saved circuits, edges in every / in some
                     top-n circuit, the mean inclusion frequency, and the members' faithfulness
                     (mean, std, min, max) and held-out accuracy (mean); no AUC: organisms have no
                     ground truth
    inclusion.csv    model, method, group, edge, inclusion (the fraction of top-n circuits holding it)
    accuracy.csv     per posterior model: T, prior, sampler, held-out accuracy of the warm start,
                     of the samples (mean) and their average (BMA), of the SGD seeds and their
                     ensemble, and the held-out loss of the samples and of the seeds (means)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from circuitflow.evaluation.stability import (
    group_stability,
    inclusion_frequency,
    top_n_members,
)
from circuitflow.models.posterior import members
from circuitflow.report.posterior_figures import (
    plot_accuracy_vs_temperature,
    plot_inclusion,
)
from circuitflow.settings import Settings
from circuitflow.settings.models import PosteriorModel
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import DATA, model_dir, read_parquet, write_csv


def _group(scores: pl.DataFrame, members: pl.DataFrame, group: str, n: int) -> tuple[dict, pl.DataFrame]:
    """One group's stability row and its inclusion table (scores and members of one method)."""
    names = members.filter(pl.col("group") == group)["member"].to_list()
    edges = scores.filter(pl.col("member") == names[0])["edge"].to_list()
    matrix = np.stack([scores.filter(pl.col("member") == name)["score"].to_numpy() for name in names])
    part = members.filter(pl.col("group") == group)
    row = {"group": group, "n_members": len(names), "n": n, **group_stability(matrix, part["n_saved"].to_numpy(), n),
           "faithfulness_mean": part["faithfulness"].mean(), "faithfulness_std": part["faithfulness"].std(ddof=0),
           "faithfulness_min": part["faithfulness"].min(), "faithfulness_max": part["faithfulness"].max(),
           "accuracy_mean": part["accuracy"].mean()}
    inclusion = pl.DataFrame({"group": group, "edge": edges, "inclusion": inclusion_frequency(top_n_members(matrix, n)).tolist()})
    return row, inclusion


def _model(name: str, spec: PosteriorModel, out: Path) -> tuple[list[dict], list[pl.DataFrame]]:
    scores = read_parquet(DATA / "posterior" / name / "scores.parquet", f"posterior@{name}")
    members = read_parquet(DATA / "posterior" / name / "members.parquet", f"posterior@{name}")
    rows, inclusions = [], []
    for method in spec.methods:
        method_members = members.filter(pl.col("method") == method)
        n = int(np.median(method_members["n_saved"].to_numpy()))
        method_inclusion = []
        for group in ("posterior", "sgd"):
            row, inclusion = _group(scores.filter(pl.col("method") == method), method_members, group, n)
            rows.append({"model": name, "method": method, "temperature": spec.temperature, **row})
            method_inclusion.append(inclusion)
        inclusion = pl.concat(method_inclusion)
        plot_inclusion(inclusion, out / f"inclusion_{name}_{method}.png", f"{name}, {method}: top-{n} inclusion frequency")
        inclusions.append(inclusion.select(pl.lit(name).alias("model"), pl.lit(method).alias("method"), pl.all()))
    return rows, inclusions


def _losses(name: str) -> dict[str, float]:
    """The mean held-out loss (lower is better) of the posterior samples and of the SGD seeds."""
    losses: dict[str, list[float]] = {"posterior": [], "sgd": []}
    for member, group in members(model_dir(name)):
        losses[group].append(json.loads((model_dir(name) / member / "config.json").read_text())["metrics"]["loss"])
    return {f"loss_{group}_mean": sum(values) / len(values) for group, values in losses.items()}


def run(settings: Settings, out: Path) -> StepResult:
    rows, inclusions, accuracy = [], [], []
    for name, spec in settings.models.items():
        if not isinstance(spec, PosteriorModel):
            continue
        model_rows, model_inclusions = _model(name, spec, out)
        rows += model_rows
        inclusions += model_inclusions
        metrics = json.loads((model_dir(name) / "config.json").read_text())["metrics"]
        accuracy.append({"model": name, "temperature": spec.temperature, "prior": spec.prior, "sampler": spec.sampler, **metrics, **_losses(name)})
    write_csv(out / "stability.csv", pl.DataFrame(rows))
    write_csv(out / "inclusion.csv", pl.concat(inclusions) if inclusions else pl.DataFrame())
    write_csv(out / "accuracy.csv", pl.DataFrame(accuracy))
    if accuracy:
        plot_accuracy_vs_temperature(pl.DataFrame(accuracy), out / "accuracy_vs_temperature.png")
    return StepResult()
