"""The evaluate stage: faithfulness against circuit size, ROC/AUC against the ground truth where it
is known, MIB's CPR / CMD, Shi et al.'s hypothesis tests and the adversarial evaluation; every
number in ``evaluation.json``, a few stable ones in ``metrics.json`` (the DVC metric)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from circuitflow.ablation import ablation_values_from_cache
from circuitflow.circuit import Circuit
from circuitflow.discovery.circuits import ranking, top_n_masks
from circuitflow.evaluation.faithfulness import faithfulness_loss, per_example_scores
from circuitflow.evaluation.hypothesis_suite import (
    empty_outputs,
    run_suite,
    tests_ablation,
)
from circuitflow.evaluation.hypothesis_tests import circuit_evaluator
from circuitflow.evaluation.mib import mib_scores
from circuitflow.evaluation.roc import (
    auc_pessimistic,
    auc_trapezoid,
    is_nested,
    node_truth_and_scores,
    roc_points,
    roc_points_from_circuits,
)
from circuitflow.evaluation.worst_case import evaluate_adversarially
from circuitflow.io import write_json_atomic
from circuitflow.settings import Settings, as_data
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import (
    cache_dir,
    discover_dir,
    load_dataset,
    read_parquet,
    write_parquet,
)
from circuitflow.stages.evaluate_resamples import write_resample_outputs
from circuitflow.stages.inputs import PairInputs, load_pair


def curve_sizes(n_edges: int, n_points: int) -> list[int]:
    """Circuit sizes for the faithfulness curve: 0, then log-spaced up to every edge."""
    return [0, *np.unique(np.round(np.geomspace(1, n_edges, n_points)).astype(int)).tolist()]


def saved_circuits(settings: Settings, inputs: PairInputs) -> dict[str, Circuit]:
    """The ground truth (where known) and each method's saved circuit, by name."""
    graph = inputs.loaded.graph
    circuits = {m: Circuit.load(discover_dir(inputs.pair.name) / f"{m}_circuit.json", graph) for m in settings.methods}
    truth = inputs.ground_truth_circuit()
    return circuits if truth is None else {"ground_truth": truth, **circuits}


def circuit_under_test(settings: Settings, inputs: PairInputs) -> str:
    """The circuit the sweeps and the adversarial evaluation judge: the ground truth where the model
    has one, else the method named by ``evaluate.circuit`` (default: the first method)."""
    if inputs.ground_truth is not None:
        return "ground_truth"
    return settings.evaluate.circuit or settings.methods[0]


def _curves_and_roc(settings: Settings, inputs: PairInputs, scores: pl.DataFrame, result: StepResult) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Faithfulness of each method's top-n circuits, and its edge / node ROC against the ground truth."""
    graph, truth = inputs.loaded.graph, inputs.ground_truth
    sweeps = read_parquet(discover_dir(inputs.pair.name) / "sweeps.parquet", f"discover@{inputs.pair.name}")
    sizes = curve_sizes(graph.n_edges, settings.evaluate.faithfulness_points)
    model_scores = inputs.model_scores()
    curves, rocs = [], []
    for method in settings.methods:
        edge_scores = torch.tensor(scores[method].to_numpy())
        circuit_scores = per_example_scores(inputs.loaded.model, graph, inputs.clean, inputs.ablated, top_n_masks(graph, edge_scores, sizes),
                                            inputs.example_score(), batch_size=inputs.pair.batch_size)
        curves.append(pl.DataFrame({"method": method, "n_edges": sizes, "faithfulness": faithfulness_loss(circuit_scores, model_scores).tolist()}))
        if truth is not None:
            rocs += _roc(method, edge_scores.numpy(), graph, truth, sweeps.filter(pl.col("method") == method), result)
        result.metrics[f"{method}_faithfulness_at_{sizes[len(sizes) // 2]}_edges"] = float(curves[-1]["faithfulness"][len(sizes) // 2])
    return pl.concat(curves), pl.concat(rocs, how="diagonal") if rocs else pl.DataFrame()


def _roc(method: str, scores: np.ndarray, graph, truth: list[str], sweep: pl.DataFrame, result: StepResult) -> list[pl.DataFrame]:
    """Edge and node ROC points of one method against the ground truth, with both AUCs in the
    metrics.  A threshold sweep's edge points are its circuits' own (one per threshold), since
    "the largest threshold keeping the edge" gives them back only for a nested sweep; whether it
    was nested is recorded.  Node points come from the scores."""
    members = Circuit.from_edges(graph, truth).members.numpy()
    levels = {"edge": (scores, members), "node": node_truth_and_scores(graph, scores, truth)}
    frames = []
    for level, (level_scores, level_truth) in levels.items():
        if level == "edge" and not sweep.is_empty():
            kept = np.array(sweep["kept"].to_list(), dtype=bool)
            points, _ = roc_points_from_circuits(kept, level_truth)
            result.metrics[f"{method}_sweep_nested"] = float(is_nested(kept, sweep["threshold"].to_numpy()))
        else:
            points = roc_points(np.asarray(level_scores), np.asarray(level_truth))
        frames.append(points.with_columns(pl.lit(method).alias("method"), pl.lit(level).alias("level")))
        fpr, tpr = points["fpr"].to_numpy(), points["tpr"].to_numpy()
        result.metrics[f"{method}_{level}_auc_pessimistic"] = float(auc_pessimistic(fpr, tpr))
        result.metrics[f"{method}_{level}_auc_trapezoid"] = float(auc_trapezoid(fpr, tpr))
    return frames


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Scores as their rank (n_edges down to 1 in the order ``top_n`` takes them), so a ranking
    with ``-inf`` sentinels (ACDC, SP) survives MIB's absolute-value ranking unchanged."""
    order = ranking(scores)
    values = torch.empty(scores.shape[0], dtype=torch.float64)
    values[order] = torch.arange(scores.shape[0], 0, -1, dtype=torch.float64)
    return values


def _mib(settings: Settings, inputs: PairInputs, scores: pl.DataFrame, result: StepResult) -> pl.DataFrame:
    """MIB's faithfulness at fractions of the edges, CPR (ranked by signed scores) and CMD (by
    absolute scores), per method and for random scores (MIB's baseline), under the pair's ablation:
    ``mib.parquet`` and the metrics.  A method without a sign is ranked by its rank (``ranks``)."""
    frames = []
    random = torch.randn(inputs.loaded.graph.n_edges, generator=torch.Generator().manual_seed(inputs.pair.seed), dtype=torch.float64)
    columns = {**{m: scores[f"{m}_signed" if f"{m}_signed" in scores.columns else m] for m in settings.methods},
               "random": pl.Series(random.numpy())}  # MIB's baseline: random signed scores, seeded by the pair
    for method, column in columns.items():
        signed = method == "random" or f"{method}_signed" in scores.columns
        values = torch.tensor(column.to_numpy())
        frame, cpr, cmd = mib_scores(inputs.loaded.model, inputs.loaded.graph, inputs.clean, inputs.ablated, inputs.example_metric(),
                                     values if signed else ranks(values), batch_size=inputs.pair.batch_size)
        frames.append(frame.with_columns(pl.lit(method).alias("method")))
        result.metrics[f"{method}_cpr"], result.metrics[f"{method}_cmd"] = float(cpr), float(cmd)
    return pl.concat(frames)


def _hypothesis_tests(settings: Settings, inputs: PairInputs, out: Path, result: StepResult) -> None:
    tests = settings.evaluate.hypothesis_tests
    outputs = empty_outputs()  # the same files (DVC outs), empty, when the tests are off
    if tests is not None:
        ablation = tests_ablation(tests, inputs.pair.behavior, inputs.pair.ablation)
        ablated = inputs.ablated if ablation == inputs.pair.ablation else ablation_values_from_cache(ablation, cache_dir(inputs.pair.name))
        evaluate = circuit_evaluator(inputs.loaded.model, inputs.loaded.graph, inputs.clean, ablated, inputs.example_score(),
                                     batch_size=inputs.pair.batch_size)
        circuits = saved_circuits(settings, inputs)
        if tests.circuits is not None:
            circuits = {name: circuit for name, circuit in circuits.items() if name in tests.circuits}
        under_test = circuit_under_test(settings, inputs)
        outputs, metrics = run_suite(evaluate, circuits, under_test, inputs.model_scores(), tests, inputs.pair.batch_size,
                                     model=inputs.pair.model, behavior=inputs.pair.behavior, ablation=str(ablation))
        result.metrics.update(metrics)
    for name, frame in outputs.items():
        write_parquet(out / f"{name}.parquet", frame)


def _adversarial(settings: Settings, inputs: PairInputs, out: Path, result: StepResult) -> None:
    """Always a directory (a DVC out), with a note where the evaluation does not apply."""
    adversarial, directory = settings.evaluate.adversarial, out / "adversarial"
    directory.mkdir()
    if adversarial is None or inputs.behavior.kl_divergence is None:
        why = "evaluate.adversarial is null" if adversarial is None else f"{inputs.pair.behavior} has no output distribution to compare (KL)"
        write_json_atomic(directory / "skipped.json", {"skipped": why})
        return
    tested = circuit_under_test(settings, inputs)
    circuit = saved_circuits(settings, inputs)[tested]
    tokenizer = inputs.loaded.tokenizer
    decode = tokenizer.decode if tokenizer is not None else (lambda ids: " ".join(map(str, ids)))
    groups = None
    if inputs.behavior.name == "ioi":  # the paper's heatmap: mean KL by IO name and template
        frame = load_dataset(inputs.pair.name)
        groups = (frame["io"].to_numpy(), frame["template"].to_numpy())
    tables, metrics = evaluate_adversarially(inputs.loaded.model, inputs.loaded.graph, circuit, tested, inputs.examples,
                                             adversarial, directory, decode, groups)
    result.metrics.update(metrics)
    for name, frame in tables.items():
        write_parquet(directory / f"{name}.parquet", frame)


def headline(settings: Settings, metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """The DVC metric of a pair: per method its edge AUC against the ground truth (pessimistic,
    where there is one) and MIB's CMD, keys the same for every pair so `dvc metrics show` lines up."""
    names = {"edge_auc": "edge_auc_pessimistic", "cmd": "cmd"}
    return {method: {short: metrics[f"{method}_{long}"] for short, long in names.items() if f"{method}_{long}" in metrics}
            for method in settings.methods}


def run(settings: Settings, name: str, out: Path) -> StepResult:
    inputs = load_pair(settings, name)
    result = StepResult(params={"pair": as_data(inputs.pair), "evaluate": as_data(settings.evaluate)})
    scores = read_parquet(discover_dir(name) / "scores.parquet", f"discover@{name}")
    curves, roc = _curves_and_roc(settings, inputs, scores, result)
    write_parquet(out / "mib.parquet", _mib(settings, inputs, scores, result))
    _hypothesis_tests(settings, inputs, out, result)
    _adversarial(settings, inputs, out, result)
    write_parquet(out / "faithfulness.parquet", curves)
    write_resample_outputs(settings, inputs, saved_circuits(settings, inputs), curves, out)  # evaluate.resamples: K corrupted inputs per clean one
    write_parquet(out / "roc.parquet", roc)  # empty without a ground truth, so every pair has the same outputs
    write_json_atomic(out / "evaluation.json", result.metrics)  # every number, for the figures and MLflow
    write_json_atomic(out / "metrics.json", headline(settings, result.metrics))  # DVC's metric: a few stable columns

    return result
