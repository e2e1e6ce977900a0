"""The DAG's steps as plain functions: read artefacts, call the science, write artefacts.

models -> generate -> cache -> discover -> evaluate -> report (DESIGN.md).  Each step takes the
checked ``Params`` and a model or pair name, writes only under its own directory of ``data/``
(atomically), and returns a ``StepResult`` (metrics, artefacts, the params it used) for the
orchestration to log.  Nothing here knows about Prefect, DVC or MLflow.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from circuitflow import config
from circuitflow.behaviors import get_behavior
from circuitflow.circuit import Circuit
from circuitflow.config import Params
from circuitflow.discovery.circuits import top_n, top_n_masks
from circuitflow.discovery.eap import eap_scores
from circuitflow.evaluation.faithfulness import faithfulness_loss, per_example_scores
from circuitflow.evaluation.roc import auc_pessimistic, auc_trapezoid, node_truth_and_scores, roc_points
from circuitflow.io import write_atomic, write_json_atomic
from circuitflow.models import MODEL_KINDS, LoadedModel, load_model
from circuitflow.patching import ablation_values, source_outputs
from circuitflow.store import mean_activations, read_activations, write_activations


@dataclass
class StepResult:
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def _fresh_dir(directory: Path) -> Path:
    """An empty output directory: a step rewrites its outputs whole, so no stale file survives."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def _write_parquet(path: Path, frame: pl.DataFrame) -> None:
    write_atomic(path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=False))


def _examples(pair_name: str, behavior, loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """The pair's dataset as tensors, tokenized for this model (``Behavior.encode``)."""
    return behavior.encode(load_dataset(pair_name), loaded.tokenizer)


# ---- models -------------------------------------------------------------------------------------
def build_model(params: Params, name: str) -> StepResult:
    spec = params.model(name)
    directory = _fresh_dir(config.model_dir(name))
    metrics = MODEL_KINDS[spec["kind"]].build(name, spec, directory)
    return StepResult(metrics=metrics, artifacts=sorted(directory.iterdir()), params={"model": name, **spec})


# ---- generate -----------------------------------------------------------------------------------
def generate(params: Params, pair_name: str) -> StepResult:
    pair = params.pair(pair_name)
    behavior = get_behavior(pair.behavior)
    frame = behavior.make_dataset(pair.n_examples, pair.seed)
    directory = _fresh_dir(config.dataset_dir(pair_name))
    _write_parquet(directory / "dataset.parquet", frame)
    return StepResult(
        metrics={"n_examples": frame.height},
        artifacts=[directory / "dataset.parquet"],
        params={"behavior": pair.behavior, "n_examples": pair.n_examples, "seed": pair.seed},
    )


def load_dataset(pair_name: str) -> pl.DataFrame:
    path = config.dataset_dir(pair_name) / "dataset.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `dvc repro generate@{pair_name}` first.")
    return pl.read_parquet(path)


# ---- cache --------------------------------------------------------------------------------------
def cache(params: Params, pair_name: str) -> StepResult:
    """Every source's activations on the clean and corrupted inputs, and their means (Parquet)."""
    pair = params.pair(pair_name)
    loaded = load_model(config.model_dir(pair.model))
    examples = _examples(pair_name, get_behavior(pair.behavior), loaded)
    directory = _fresh_dir(config.cache_dir(pair_name))
    artifacts = []
    for split in ("clean", "corrupted"):
        tokens = examples[split]
        outputs = torch.cat([
            source_outputs(loaded.model, loaded.graph, tokens[i : i + pair.batch_size])
            for i in range(0, tokens.shape[0], pair.batch_size)
        ], dim=1)
        path = directory / f"{split}.parquet"
        write_activations(path, outputs, list(loaded.graph.sources), {"pair": pair_name, "split": split})
        artifacts.append(path)
        if split == "corrupted":  # the reference set of mean ablation
            for per_position in (False, True):
                name = "mean_per_position" if per_position else "mean"
                path = directory / f"{name}.parquet"
                write_activations(path, mean_activations(outputs, per_position), list(loaded.graph.sources), {"pair": pair_name, "split": name})
                artifacts.append(path)
    return StepResult(metrics={"n_sources": loaded.graph.n_sources}, artifacts=artifacts, params={"model": pair.model})


def load_ablation(pair_name: str, ablation: str, loaded: LoadedModel) -> torch.Tensor:
    """Ablation values for a pair, taken from the activation cache: (source, batch|1, pos|1, d_model)."""
    directory = config.cache_dir(pair_name)
    if ablation == "zero":
        return ablation_values("zero", like=read_activations(directory / "mean.parquet").activations)
    if ablation == "mean":
        return read_activations(directory / "mean.parquet").activations
    return read_activations(directory / "corrupted.parquet").activations


# ---- discover -----------------------------------------------------------------------------------
def discover(params: Params, pair_name: str) -> StepResult:
    """Per-edge scores of every discovery method (Parquet) and the circuit each gives (JSON)."""
    pair = params.pair(pair_name)
    loaded = load_model(config.model_dir(pair.model))
    behavior = get_behavior(pair.behavior)
    examples = _examples(pair_name, behavior, loaded)
    clean = examples["clean"]
    ablated = load_ablation(pair_name, pair.ablation, loaded)
    settings = params.section("discover")
    directory = _fresh_dir(config.discover_dir(pair_name))
    result = StepResult(params={"ablation": pair.ablation, "methods": list(params.methods)})

    def metric(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return behavior.attribution_metric(logits, {k: v[index] for k, v in examples.items()})

    columns = {"edge": list(loaded.graph.edge_names)}
    for method in params.methods:
        if method == "eap":
            scores = eap_scores(loaded.model, loaded.graph, clean, ablated, metric, batch_size=pair.batch_size, progress=True)
            columns[f"{method}_signed"] = scores.tolist()
            scores = scores.abs()
        columns[method] = scores.tolist()
        n_keep = _circuit_size(settings, loaded)
        circuit = top_n(loaded.graph, scores, n_keep)
        circuit.save(directory / f"{method}_circuit.json")
        result.artifacts.append(directory / f"{method}_circuit.json")
        result.metrics[f"{method}_circuit_edges"] = len(circuit)
    _write_parquet(directory / "scores.parquet", pl.DataFrame(columns))
    result.artifacts.append(directory / "scores.parquet")
    return result


def _circuit_size(settings: dict, loaded: LoadedModel) -> int:
    """Edges kept in the saved circuit: the ground truth's size where known, else ``circuit_edges``."""
    if loaded.ground_truth is not None and settings.get("circuit_edges") in (None, "ground_truth"):
        return len(loaded.ground_truth["zero"])
    return int(settings.get("circuit_edges") or 50)


def load_scores(pair_name: str) -> pl.DataFrame:
    return pl.read_parquet(config.discover_dir(pair_name) / "scores.parquet")


# ---- evaluate -----------------------------------------------------------------------------------
def _sizes(n_edges: int, n_points: int) -> list[int]:
    """Circuit sizes for the faithfulness curve: 0, then log-spaced up to every edge."""
    grid = np.unique(np.round(np.geomspace(1, n_edges, n_points)).astype(int))
    return [0, *grid.tolist()]


def evaluate(params: Params, pair_name: str) -> StepResult:
    """Faithfulness against circuit size, and ROC/AUC against the ground truth where it is known."""
    pair = params.pair(pair_name)
    settings = params.section("evaluate")
    loaded = load_model(config.model_dir(pair.model))
    behavior = get_behavior(pair.behavior)
    examples = _examples(pair_name, behavior, loaded)
    clean = examples["clean"]
    ablated = load_ablation(pair_name, pair.ablation, loaded)
    scores = load_scores(pair_name)
    directory = _fresh_dir(config.evaluate_dir(pair_name))
    result = StepResult(params={"ablation": pair.ablation, **settings})

    def score(circuit_logits, model_logits, index):
        return behavior.score(circuit_logits, model_logits, {k: v[index] for k, v in examples.items()})

    with torch.no_grad():
        model_logits = loaded.model(clean)
        model_scores = behavior.score(model_logits, model_logits, examples).double()
    sizes = _sizes(loaded.graph.n_edges, int(settings.get("faithfulness_points", 20)))
    curves, rocs = [], []
    for method in params.methods:
        edge_scores = torch.tensor(scores[method].to_numpy())
        masks = top_n_masks(loaded.graph, edge_scores, sizes)
        circuit_scores = per_example_scores(loaded.model, loaded.graph, clean, ablated, masks, score, batch_size=pair.batch_size)
        curves.append(pl.DataFrame({"method": method, "n_edges": sizes, "faithfulness": faithfulness_loss(circuit_scores, model_scores).tolist()}))
        if loaded.ground_truth is not None:
            truth_edges = loaded.ground_truth[pair.ablation if pair.ablation in loaded.ground_truth else "zero"]
            truth = Circuit.from_edges(loaded.graph, truth_edges).members.numpy()
            levels = {"edge": (edge_scores.numpy(), truth)}
            levels["node"] = node_truth_and_scores(loaded.graph, edge_scores.numpy(), truth_edges)
            for level, (level_scores, level_truth) in levels.items():
                points = roc_points(np.asarray(level_scores), np.asarray(level_truth))
                rocs.append(points.with_columns(pl.lit(method).alias("method"), pl.lit(level).alias("level")))
                fpr, tpr = points["fpr"].to_numpy(), points["tpr"].to_numpy()
                result.metrics[f"{method}_{level}_auc_pessimistic"] = float(auc_pessimistic(fpr, tpr))
                result.metrics[f"{method}_{level}_auc_trapezoid"] = float(auc_trapezoid(fpr, tpr))
        result.metrics[f"{method}_faithfulness_at_{sizes[len(sizes) // 2]}_edges"] = float(curves[-1]["faithfulness"][len(sizes) // 2])

    hypothesis = settings.get("hypothesis_tests")
    if hypothesis is not None:
        result.artifacts += _hypothesis_tests(loaded, pair, clean, ablated, score, model_scores, hypothesis, params, directory, result)

    _write_parquet(directory / "faithfulness.parquet", pl.concat(curves))
    result.artifacts.append(directory / "faithfulness.parquet")
    # Written even without a ground truth (empty), so every pair has the same outputs.
    _write_parquet(directory / "roc.parquet", pl.concat(rocs, how="diagonal") if rocs else pl.DataFrame())
    result.artifacts.append(directory / "roc.parquet")
    write_json_atomic(directory / "metrics.json", result.metrics)
    result.artifacts.append(directory / "metrics.json")
    return result


def _hypothesis_tests(loaded, pair, clean, ablated, score, model_scores, settings, params, directory, result) -> list[Path]:
    """Shi et al.'s five tests on the ground truth (where known) and each method's circuit:
    one row per (circuit, test) in hypothesis_tests.parquet, per-edge minimality effects, and
    pass/fail in the metrics."""
    from circuitflow.evaluation.hypothesis_tests import HypothesisSettings, circuit_evaluator, results_frame, run_hypothesis_tests

    test_settings = HypothesisSettings.from_params(settings)
    evaluate_circuits = circuit_evaluator(loaded.model, loaded.graph, clean, ablated, score, batch_size=pair.batch_size)
    circuits = {method: Circuit.load(config.discover_dir(pair.name) / f"{method}_circuit.json", loaded.graph) for method in params.methods}
    if loaded.ground_truth is not None:
        truth = loaded.ground_truth.get(pair.ablation, loaded.ground_truth["zero"])
        circuits = {"ground_truth": Circuit.from_edges(loaded.graph, truth), **circuits}
    rows, effects = [], []
    for name, circuit in circuits.items():
        outcomes, minimality = run_hypothesis_tests(evaluate_circuits, circuit, model_scores, test_settings, batch_size=pair.batch_size)
        rows.append(results_frame(outcomes, model=pair.model, behavior=pair.behavior, circuit=name))
        effects.append(minimality.edges.with_columns(pl.lit(name).alias("circuit")))
        for outcome in outcomes:
            result.metrics[f"{name}_{outcome.test}_passes"] = float(outcome.passes)
    _write_parquet(directory / "hypothesis_tests.parquet", pl.concat(rows, how="diagonal"))
    _write_parquet(directory / "minimality_effects.parquet", pl.concat(effects, how="diagonal"))
    return [directory / "hypothesis_tests.parquet", directory / "minimality_effects.parquet"]


# ---- figures: one DVC stage each, writing CSV for `dvc plots` and PNG for the report ----------
def _write_csv(path: Path, frame: pl.DataFrame) -> None:
    write_atomic(path, lambda tmp: frame.write_csv(tmp, float_precision=6))


def _figure_roc(params: Params, directory: Path) -> StepResult:
    """The ACDC paper's ROC curves and AUC table: every pair with a ground truth, every method."""
    from circuitflow.report.figures import plot_roc

    rows, curves = [], []
    for name, pair in params.pairs.items():
        evaluate_dir = config.evaluate_dir(name)
        roc = pl.read_parquet(evaluate_dir / "roc.parquet")
        if roc.is_empty():
            continue
        metrics = json.loads((evaluate_dir / "metrics.json").read_text())
        for method in params.methods:
            row = {"pair": name, "model": pair.model, "behavior": pair.behavior, "ablation": pair.ablation, "method": method}
            for level in ("edge", "node"):
                for kind in ("pessimistic", "trapezoid"):
                    row[f"{level}_auc_{kind}"] = metrics[f"{method}_{level}_auc_{kind}"]
            rows.append(row)
            edge = roc.filter((pl.col("method") == method) & (pl.col("level") == "edge"))
            _write_csv(directory / "curves" / f"{name}_{method}.csv", edge.select("fpr", "tpr", "n_kept"))
            curves.append(edge)
        edges = roc.filter(pl.col("level") == "edge")
        plot_roc({m: edges.filter(pl.col("method") == m) for m in params.methods}, directory / f"roc_{name}.png",
                 f"{name}: edge ROC against the ground truth ({pair.ablation} ablation)", formats=("png",))
    table = pl.DataFrame(rows)
    _write_csv(directory / "auc_table.csv", table)
    return StepResult(metrics={f"{r['pair']}_{r['method']}_edge_auc": r["edge_auc_pessimistic"] for r in rows})


def _figure_faithfulness(params: Params, directory: Path) -> StepResult:
    """Faithfulness loss (lower is better) against the number of edges kept, per pair and method."""
    from circuitflow.report.figures import plot_faithfulness

    for name in params.pairs:
        curves = pl.read_parquet(config.evaluate_dir(name) / "faithfulness.parquet")
        for method in params.methods:
            _write_csv(directory / "curves" / f"{name}_{method}.csv", curves.filter(pl.col("method") == method).select("n_edges", "faithfulness"))
        plot_faithfulness({m: curves.filter(pl.col("method") == m) for m in params.methods}, directory / f"faithfulness_{name}.png",
                          f"{name}: faithfulness against edges kept", formats=("png",))
    return StepResult()


FIGURES = {"roc": _figure_roc, "faithfulness": _figure_faithfulness}


def figure(params: Params, name: str) -> StepResult:
    """Recompute one paper figure (or table) from the evaluate stage's artefacts into data/figures/<name>/."""
    if name not in FIGURES:
        raise ValueError(f"Unknown figure {name!r}; known figures: {', '.join(FIGURES)}.")
    directory = _fresh_dir(config.figure_dir(name))
    result = FIGURES[name](params, directory)
    result.artifacts = sorted(path for path in directory.rglob("*") if path.is_file())
    return result


# ---- report -------------------------------------------------------------------------------------
def report(params: Params) -> StepResult:
    """One self-contained HTML page: the AUC table, then per pair its figures and circuit diagrams."""
    from circuitflow.report.figures import plot_circuit
    from circuitflow.report.html import ReportSection, write_report

    directory = _fresh_dir(config.report_dir())
    roc_dir, faithfulness_dir = config.figure_dir("roc"), config.figure_dir("faithfulness")
    sections = [ReportSection(
        title="Discovery against the ground truth",
        text="Edge and node AUC of each method where the model's circuit is known (higher is better; "
             "pessimistic = the ACDC paper's staircase AUC).",
        tables=[("AUC", pl.read_csv(roc_dir / "auc_table.csv"))],
    )]
    for name, pair in params.pairs.items():
        figures = [path for path in (roc_dir / f"roc_{name}.png", faithfulness_dir / f"faithfulness_{name}.png") if path.exists()]
        for method in params.methods:
            circuit = Circuit.load(config.discover_dir(name) / f"{method}_circuit.json")
            figures += plot_circuit(circuit.edges, directory / f"{name}_{method}_circuit.png",
                                    f"{name}: {method} circuit ({len(circuit)} edges)", formats=("png",))
        text = f"Model {pair.model}, behavior {pair.behavior}, {pair.ablation} ablation, methods {', '.join(params.methods)}."
        sections.append(ReportSection(title=name, text=text, figures=figures))
    # The science settings only: how the run was orchestrated (task runner, schedules) changes no result.
    science = {k: v for k, v in params.raw.items() if k not in ("prefect", "deployments", "mlflow")}
    write_report(directory / "index.html", sections, settings=science, title="circuitflow report")
    return StepResult(metrics={"n_pairs": len(params.pairs)}, artifacts=sorted(directory.iterdir()))
