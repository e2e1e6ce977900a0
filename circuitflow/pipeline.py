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
from circuitflow.discovery import DiscoveryTask, discover_scores, positional_eap_ig_scores
from circuitflow.discovery.circuits import top_n, top_n_masks
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
    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)  # name -> (steps, values), e.g. training loss


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
    curves = {}
    if (directory / "training_curves.json").exists():  # trained models: every curve, step by step
        recorded = json.loads((directory / "training_curves.json").read_text())
        for key, values in recorded.items():
            steps = recorded["eval_step"] if key.startswith("eval_") else recorded["step"]
            if key not in ("step", "eval_step") and len(values) == len(steps):
                curves[key] = (steps, values)
    artifacts = sorted(path for path in directory.rglob("*") if path.is_file())
    return StepResult(metrics=metrics, artifacts=artifacts, params={"model": name, **spec}, curves=curves)


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
    """Per-edge scores of every discovery method (scores.parquet, one column per method, higher =
    more important) and the circuit each gives (``<method>_circuit.json``, see ``_cut_circuit``)."""
    pair = params.pair(pair_name)
    loaded = load_model(config.model_dir(pair.model))
    behavior = get_behavior(pair.behavior)
    examples = _examples(pair_name, behavior, loaded)
    task = DiscoveryTask(loaded.model, loaded.graph, examples["clean"], load_ablation(pair_name, pair.ablation, loaded),
                         behavior, examples, pair.batch_size)
    settings = params.section("discover")
    directory = _fresh_dir(config.discover_dir(pair_name))
    result = StepResult(params={"ablation": pair.ablation, "methods": list(params.methods)})
    columns = {"edge": list(loaded.graph.edge_names)}
    for method in params.methods:
        scores = discover_scores(method, task, settings.get(method), progress=True)
        columns[method] = scores.tolist()
        circuit, recovered = _cut_circuit(task, _ground_truth(loaded, pair.ablation), scores, settings.get("circuit") or {})
        circuit.save(directory / f"{method}_circuit.json")
        result.artifacts.append(directory / f"{method}_circuit.json")
        result.metrics[f"{method}_circuit_edges"] = len(circuit)
        result.metrics[f"{method}_circuit_recovered"] = recovered
    _write_parquet(directory / "scores.parquet", pl.DataFrame(columns))
    write_json_atomic(directory / "circuits.json", result.metrics)  # each saved circuit's size and recovered fraction
    result.artifacts += [directory / "scores.parquet", directory / "circuits.json"]
    if pair.positional:
        graph, scores = positional_eap_ig_scores(task, settings.get("eap-ig"), progress=True)
        edges, positions = zip(*(name.rsplit(" @ ", 1) for name in graph.edge_names))
        _write_parquet(directory / "positional_scores.parquet", pl.DataFrame(
            {"edge": list(edges), "position": [int(p) for p in positions], "score": scores.tolist()}))
        result.artifacts.append(directory / "positional_scores.parquet")
    return result


def _ground_truth(loaded: LoadedModel, ablation: str) -> list[str] | None:
    """The model's known circuit under this ablation (tracr's differ by ablation), or None."""
    if loaded.ground_truth is None:
        return None
    return loaded.ground_truth.get(ablation, loaded.ground_truth["zero"])


def _cut_circuit(task: DiscoveryTask, truth: list[str] | None, scores: torch.Tensor, settings: dict) -> tuple[Circuit, float]:
    """The circuit saved for a method, and the fraction of the model's score it recovers.

    ``discover.circuit.size``: an integer (the top-n edges), or ``ground_truth`` (the known
    circuit's size, so ROC-style comparisons are at equal size) where the model has one; otherwise
    the smallest top-n circuit recovering ``discover.circuit.recovered`` of the model's score:
    recovered(C) = (S(empty) - S(C)) / (S(empty) - S(model)), S the mean behavior score (lower is
    better), 1 for the model and 0 for the empty circuit.
    """
    size = settings.get("size", "ground_truth")
    graph = task.graph
    if size == "ground_truth" and truth is not None:
        size = len(truth)
    n_edges = graph.n_edges
    sizes = list(range(n_edges + 1)) if n_edges <= 256 else [0, *np.unique(np.round(np.geomspace(1, n_edges, 128)).astype(int)).tolist()]
    if isinstance(size, int):
        sizes = [0, size, n_edges]
    masks = top_n_masks(graph, scores, sizes)
    means = per_example_scores(task.model, graph, task.clean, task.ablated, masks, _example_score(task.behavior, task.examples), batch_size=task.batch_size).mean(-1)
    gap = means[0] - means[-1]  # sizes start at the empty circuit and end at the full one
    recovered = (means[0] - means) / gap if abs(float(gap)) > 1e-12 else torch.ones_like(means)
    if isinstance(size, int):
        return top_n(graph, scores, size), float(recovered[1])
    target = float(settings.get("recovered", 0.8))
    reaching = [n for n, r in zip(sizes, recovered.tolist()) if r >= target]
    n_keep = reaching[0] if reaching else n_edges
    return top_n(graph, scores, n_keep), float(recovered[sizes.index(n_keep)])


def _example_score(behavior, examples: dict[str, torch.Tensor]):
    """The behavior's per-example score in the faithfulness interface (circuit logits, model logits, index)."""
    def score(circuit_logits, model_logits, index):
        return behavior.score(circuit_logits, model_logits, {k: v[index] for k, v in examples.items()})
    return score


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

    score = _example_score(behavior, examples)
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
            truth_edges = _ground_truth(loaded, pair.ablation)
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
    else:  # the same outputs (DVC outs), empty
        for output in HYPOTHESIS_OUTPUTS:
            _write_parquet(directory / f"{output}.parquet", pl.DataFrame())
            result.artifacts.append(directory / f"{output}.parquet")
    # Always a directory (a DVC out), with a note where the evaluation does not apply.
    adversarial, adversarial_dir = settings.get("adversarial"), directory / "adversarial"
    adversarial_dir.mkdir()
    if adversarial is None or behavior.kl_divergence is None:
        why = "evaluate.adversarial is null" if adversarial is None else f"{pair.behavior} has no output distribution to compare (KL)"
        write_json_atomic(adversarial_dir / "skipped.json", {"skipped": why})
        result.artifacts.append(adversarial_dir / "skipped.json")
    else:
        result.artifacts += _adversarial(loaded, pair, behavior, examples, adversarial, params, adversarial_dir, result)

    _write_parquet(directory / "faithfulness.parquet", pl.concat(curves))
    result.artifacts.append(directory / "faithfulness.parquet")
    # Written even without a ground truth (empty), so every pair has the same outputs.
    _write_parquet(directory / "roc.parquet", pl.concat(rocs, how="diagonal") if rocs else pl.DataFrame())
    result.artifacts.append(directory / "roc.parquet")
    write_json_atomic(directory / "metrics.json", result.metrics)
    result.artifacts.append(directory / "metrics.json")
    return result


HYPOTHESIS_OUTPUTS = ("hypothesis_tests", "minimality_effects", "minimality_references", "random_circuit_sweep")


def _hypothesis_tests(loaded, pair, clean, ablated, score, model_scores, settings, params, directory, result) -> list[Path]:
    """Shi et al.'s five tests on the ground truth (where known) and each method's circuit:
    one row per (circuit, test) in hypothesis_tests.parquet, per-edge minimality effects, and
    pass/fail in the metrics."""
    from circuitflow.evaluation.hypothesis_tests import (
        HypothesisSettings, circuit_evaluator, partial_necessity_sweep, results_frame, run_hypothesis_tests, sufficiency_sweep,
    )

    test_settings = HypothesisSettings.from_params({k: v for k, v in settings.items() if k not in ("circuits", "sweep")})
    evaluate_circuits = circuit_evaluator(loaded.model, loaded.graph, clean, ablated, score, batch_size=pair.batch_size)
    circuits = {method: Circuit.load(config.discover_dir(pair.name) / f"{method}_circuit.json", loaded.graph) for method in params.methods}
    if loaded.ground_truth is not None:
        circuits = {"ground_truth": Circuit.from_edges(loaded.graph, _ground_truth(loaded, pair.ablation)), **circuits}
    chosen = settings.get("circuits")
    if chosen is not None:
        circuits = {name: circuit for name, circuit in circuits.items() if name in chosen}
    rows, effects, references = [], [], []
    for name, circuit in circuits.items():
        if len(circuit) == loaded.graph.n_edges:  # nothing left out: no random path can be added (minimality)
            result.metrics[f"{name}_hypothesis_tests_skipped"] = 1.0
            continue
        outcomes, minimality = run_hypothesis_tests(evaluate_circuits, circuit, model_scores, test_settings, batch_size=pair.batch_size)
        rows.append(results_frame(outcomes, model=pair.model, behavior=pair.behavior, circuit=name))
        effects.append(minimality.edges.with_columns(pl.lit(name).alias("circuit")))
        references.append(pl.DataFrame({"circuit": name, "knocked": list(minimality.knocked), "delta": minimality.references}))
        for outcome in outcomes:
            result.metrics[f"{name}_{outcome.test}_passes"] = float(outcome.passes)
    outputs = {"hypothesis_tests": pl.concat(rows, how="diagonal") if rows else pl.DataFrame(),
               "minimality_effects": pl.concat(effects, how="diagonal") if effects else pl.DataFrame(),
               "minimality_references": pl.concat(references) if references else pl.DataFrame()}
    # The paper's sufficiency / partial-necessity curves over random-circuit size, for the circuit under test.
    name, circuit = _circuit_under_test(loaded, pair, params)
    sweep = dict(n_random=test_settings.n_random, q_star=test_settings.q_star, alpha=test_settings.alpha, seed=test_settings.seed,
                 batch_size=pair.batch_size)
    if settings.get("sweep") is not None:  # random-circuit sizes, fractions of the model's edges
        sweep["fractions"] = [float(f) for f in settings["sweep"]]
    outputs["random_circuit_sweep"] = pl.DataFrame() if name not in {row["circuit"][0] for row in rows} else pl.concat([
        sufficiency_sweep(evaluate_circuits, circuit, model_scores, **sweep),
        partial_necessity_sweep(evaluate_circuits, circuit, model_scores, **sweep),
    ], how="diagonal").with_columns(pl.lit(name).alias("circuit"))
    for output, frame in outputs.items():
        _write_parquet(directory / f"{output}.parquet", frame)
    return [directory / f"{output}.parquet" for output in outputs]


def _circuit_under_test(loaded: LoadedModel, pair, params: Params) -> tuple[str, Circuit]:
    """The circuit the sweeps and the adversarial evaluation judge: the ground truth where the model
    has one, else the circuit of the method named by ``evaluate.circuit``."""
    truth = _ground_truth(loaded, pair.ablation)
    if truth is not None:
        return "ground_truth", Circuit.from_edges(loaded.graph, truth)
    method = params.section("evaluate").get("circuit") or params.methods[0]
    if method not in params.methods:
        raise ValueError(f"evaluate.circuit names {method!r}, which is not in discover.methods ({', '.join(params.methods)}); pick one of those.")
    return method, Circuit.load(config.discover_dir(pair.name) / f"{method}_circuit.json", loaded.graph)


def _answer_positions(examples: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each example's answer position, (n_examples,): the last position, or for induction the last
    predicted position of the repeated half (its ``loss_mask``)."""
    clean = examples["clean"]
    if "loss_mask" in examples:
        positions = torch.arange(clean.shape[1]).expand_as(clean)
        return torch.where(examples["loss_mask"], positions, -1).max(-1).values
    return torch.full((clean.shape[0],), clean.shape[1] - 1)


def _adversarial(loaded, pair, behavior, examples, settings, params, directory, result) -> list[Path]:
    """uit de Bos & Garriga-Alonso's adversarial evaluation of one circuit (REFERENCE.md 6) and the
    tail analysis of each distribution (REFERENCE.md 7).

    KL(model || circuit) at the answer position over every (clean, corrupted) pair of the first
    ``n_clean`` clean and ``n_corrupted`` corrupted inputs, for the circuit under test
    (``_circuit_under_test``), a random circuit (p = 0.4), the circuit minus
    2 random edges, and the full model; streamed to adversarial_kl.parquet.  Then per circuit: the
    percentile table with the order-statistic bound, the ``k_worst`` pairs decoded, the Hill plot, Q-Q
    points and the tail verdict; for IOI the mean KL by IO name and template; and the gradient search
    for bad inputs against the brute-force worst.
    """
    from circuitflow.evaluation import adversarial as adv
    from circuitflow.evaluation.tails import hill_estimates, qq_points, tail_verdict

    n_clean = min(int(settings.get("n_clean", 100)), examples["clean"].shape[0])
    n_corrupted = min(int(settings.get("n_corrupted", 100)), examples["corrupted"].shape[0])
    seed = int(settings.get("seed", 0))
    tested, circuit = _circuit_under_test(loaded, pair, params)
    circuits = adv.comparison_circuits(circuit, seed=seed, n_removed=min(2, len(circuit)))
    clean, corrupted = examples["clean"][:n_clean], examples["corrupted"][:n_corrupted]
    positions = _answer_positions(examples)[:n_clean]
    path = directory / "pair_kl.parquet"
    adv.stream_pair_kl(loaded.model, loaded.graph, clean, corrupted, circuits, path, positions=positions,
                       batch_size=int(settings.get("batch_size", 256)), progress=True)

    summary, tails, hills, qqs = [], [], [], []
    confidence = float(settings.get("confidence", 0.95))
    for name in circuits:
        values = adv.read_pair_kl(path, name)
        row = {"circuit": name, "tested": tested, **adv.summarize(values)}
        if name != "full model":
            try:
                bound = adv.order_statistic_bound_for_confidence(values, 0.99, confidence)
                row.update(p99_bound=bound.value, p99_bound_confidence=bound.confidence)
            except ValueError:  # too few pairs for any order statistic to bound the 99th percentile
                row.update(p99_bound=None, p99_bound_confidence=None)
            verdict = tail_verdict(values)
            tails.append({"circuit": name, "verdict": verdict.verdict, "alpha": verdict.alpha, "exponential_alpha": verdict.exponential_alpha,
                          "z": verdict.z, "explanation": verdict.explain()})
            hills.append(hill_estimates(values).with_columns(pl.lit(name).alias("circuit")))
            for distribution in ("normal", "exponential"):
                qqs.append(qq_points(values, distribution).with_columns(pl.lit(name).alias("circuit"), pl.lit(distribution).alias("distribution")))
            result.metrics[f"adversarial_{name.replace(' ', '_')}_heavy_tail"] = float(verdict.heavy)
        summary.append(row)
        result.metrics[f"adversarial_{name.replace(' ', '_')}_p99"] = row["p99"]
        result.metrics[f"adversarial_{name.replace(' ', '_')}_max"] = row["max"]
    outputs = {"summary": pl.DataFrame(summary), "tails": pl.DataFrame(tails), "hill": pl.concat(hills), "qq": pl.concat(qqs)}

    decode = (lambda ids: loaded.tokenizer.decode(ids)) if loaded.tokenizer is not None else (lambda ids: " ".join(map(str, ids)))
    outputs["worst"] = adv.worst_pairs(path, "circuit", int(settings.get("k_worst", 10)), clean, corrupted, decode)
    if behavior.name == "ioi":
        frame = load_dataset(pair.name)[:n_clean]
        values = adv.read_pair_kl(path, "circuit")
        clean_index = np.repeat(np.arange(n_clean), n_corrupted)
        outputs["ioi_groups"] = adv.grouped_mean(values, frame["io"].to_numpy()[clean_index], frame["template"].to_numpy()[clean_index])

    search = settings.get("search")
    if search:
        found = adv.search_bad_inputs(loaded.model, loaded.graph, circuit, clean, corrupted, position=int(positions[0]),
                                      n_restarts=int(search.get("restarts", 8)), steps=int(search.get("steps", 100)), seed=seed)
        brute_force = float(outputs["worst"]["kl"][0])
        outputs["search"] = pl.DataFrame({"restart": list(range(len(found.kl))), "soft_kl": found.kl.tolist(),
                                                      "hard_kl": found.hard_kl.tolist(), "brute_force_worst": brute_force})
        result.metrics["adversarial_search_best"] = found.best
        result.metrics["adversarial_brute_force_worst"] = brute_force
    artifacts = [path]
    for name, frame in outputs.items():
        _write_parquet(directory / f"{name}.parquet", frame)
        artifacts.append(directory / f"{name}.parquet")
    return artifacts


# ---- figures: one DVC stage each, writing CSV for `dvc plots` and PNG for the report ----------
def _read_csv(path: Path) -> pl.DataFrame:
    """A table ``_write_csv`` wrote; one with no columns (nothing applied, e.g. no ground truth) is empty."""
    return pl.read_csv(path) if path.read_text().strip() else pl.DataFrame()


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
    # Every pair, with or without a ground truth: the size of each method's saved circuit and the
    # fraction of the model's score it recovers (discover.circuit).
    sizes = []
    for name, pair in params.pairs.items():
        recorded = json.loads((config.discover_dir(name) / "circuits.json").read_text())
        sizes += [{"pair": name, "model": pair.model, "behavior": pair.behavior, "method": method,
                   "edges": int(recorded[f"{method}_circuit_edges"]), "recovered": recorded[f"{method}_circuit_recovered"]}
                  for method in params.methods]
    _write_csv(directory / "circuit_table.csv", pl.DataFrame(sizes))
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


def _figure_hypothesis(params: Params, directory: Path) -> StepResult:
    """Shi et al.'s Table 1 (every pair, circuit and test), the sufficiency / partial-necessity
    curves over random-circuit size, and the per-edge minimality effects of the circuit under test."""
    from circuitflow.evaluation.hypothesis_tests import MinimalityResult
    from circuitflow.report.hypothesis_figures import plot_minimality_effects, plot_random_circuit_curve

    tables, metrics = [], {}
    q_star = float((params.section("evaluate").get("hypothesis_tests") or {}).get("q_star", 0.9))
    for name in params.pairs:
        evaluate_dir = config.evaluate_dir(name)
        tests = pl.read_parquet(evaluate_dir / "hypothesis_tests.parquet")
        sweep = pl.read_parquet(evaluate_dir / "random_circuit_sweep.parquet")
        if tests.is_empty() or sweep.is_empty():  # every circuit was the whole model (see evaluate)
            continue
        tables.append(tests.with_columns(pl.lit(name).alias("pair")).select("pair", "model", "behavior", "circuit", "test", "statistic", "p_value", "passes"))
        circuit = sweep["circuit"][0]
        plot_random_circuit_curve(sweep, directory / f"sufficiency_{name}.png", f"{name}: {circuit} against random circuits", q_star=q_star)
        for test in ("sufficiency", "partial_necessity"):
            _write_csv(directory / "curves" / f"{name}_{test}.csv", sweep.filter(pl.col("test") == test).select("fraction", "fraction_beaten"))
        effects = pl.read_parquet(evaluate_dir / "minimality_effects.parquet").filter(pl.col("circuit") == circuit)
        references = pl.read_parquet(evaluate_dir / "minimality_references.parquet").filter(pl.col("circuit") == circuit)
        minimality = MinimalityResult(None, effects, references["delta"].to_numpy(), tuple(references["knocked"].to_list()))
        plot_minimality_effects(minimality, directory / f"minimality_{name}.png", f"{name}: {circuit}, per-edge minimality", q_star=q_star)
    columns = ("pair", "model", "behavior", "circuit", "test", "statistic", "p_value", "passes")
    table = pl.concat(tables) if tables else pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
    _write_csv(directory / "table.csv", table.with_columns(pl.col("passes").cast(pl.Int8)))
    for row in table.iter_rows(named=True):
        metrics[f"{row['pair']}_{row['circuit']}_{row['test']}_passes"] = float(row["passes"])
    return StepResult(metrics=metrics)


def _figure_adversarial(params: Params, directory: Path) -> StepResult:
    """The adversarial evaluation: percentile table, KL distributions, worst inputs, Hill and Q-Q
    plots with the tail verdicts, and IOI's name x template heatmap (pairs where it applies)."""
    from circuitflow.evaluation.adversarial import pair_kl_circuits, read_pair_kl
    from circuitflow.report.adversarial_figures import plot_grouped_heatmap, plot_hill, plot_kl_distributions, plot_qq

    summaries, tails, worst = [], [], []
    for name in params.pairs:
        adversarial_dir = config.evaluate_dir(name) / "adversarial"
        if (adversarial_dir / "skipped.json").exists():
            continue
        summary = pl.read_parquet(adversarial_dir / "summary.parquet")
        summaries.append(summary.with_columns(pl.lit(name).alias("pair")))
        tail = pl.read_parquet(adversarial_dir / "tails.parquet")
        tails.append(tail.with_columns(pl.lit(name).alias("pair")))
        worst.append(pl.read_parquet(adversarial_dir / "worst.parquet").with_columns(pl.lit(name).alias("pair")))
        path = adversarial_dir / "pair_kl.parquet"
        plot_kl_distributions({c: read_pair_kl(path, c) for c in pair_kl_circuits(path)}, directory / f"kl_{name}.png",
                              f"{name}: KL(model || circuit) over all pairs", formats=("png",))
        hill, qq = pl.read_parquet(adversarial_dir / "hill.parquet"), pl.read_parquet(adversarial_dir / "qq.parquet")
        tested = qq.filter(pl.col("circuit") == "circuit")
        verdict = tail.filter(pl.col("circuit") == "circuit")["verdict"][0]
        plot_hill(hill.filter(pl.col("circuit") == "circuit"), directory / f"hill_{name}.png", f"{name}: Hill plot of the circuit's KL ({verdict} tail)", formats=("png",))
        plot_qq(tested.filter(pl.col("distribution") == "normal"), tested.filter(pl.col("distribution") == "exponential"),
                directory / f"qq_{name}.png", f"{name}: Q-Q plots of the circuit's KL", formats=("png",))
        _write_csv(directory / "curves" / f"{name}_hill.csv", hill.filter(pl.col("circuit") == "circuit").select("k", "alpha"))
        if (adversarial_dir / "ioi_groups.parquet").exists():
            plot_grouped_heatmap(pl.read_parquet(adversarial_dir / "ioi_groups.parquet"), directory / f"ioi_groups_{name}.png",
                                 f"{name}: mean KL by IO name and template", row_name="IO name", column_name="template", formats=("png",))
    if summaries:
        table = pl.concat(summaries, how="diagonal")
        _write_csv(directory / "percentiles.csv", table.select("pair", *[c for c in table.columns if c != "pair"]))
        _write_csv(directory / "tails.csv", pl.concat(tails).select("pair", "circuit", "verdict", "alpha", "exponential_alpha", "z", "explanation"))
        _write_csv(directory / "worst.csv", pl.concat(worst).select("pair", "rank", "kl", "clean_text", "corrupted_text"))
    else:
        write_json_atomic(directory / "skipped.json", {"skipped": "no pair has an adversarial evaluation"})
    return StepResult(metrics={f"{r['pair']}_{r['circuit'].replace(' ', '_')}_p99": r["p99"] for s in summaries for r in s.iter_rows(named=True)})


SIIT_TRAINING_COLUMNS = ("steps", "reached_target", "accuracy", "iia", "iia_min", "strict_accuracy", "strict_accuracy_min")


def _figure_siit(params: Params, directory: Path) -> StepResult:
    """The InterpBench benchmark inside the pipeline: every discovery method on every SIIT-trained
    model (pairs whose model has kind ``siit``), edge AUROC against the known circuit as a table
    (case x method) and as box plots per method across the cases; and each model's training figures
    (accuracy, interchange-intervention accuracy, strict accuracy: mean and worst node)."""
    from circuitflow.report.figures import plot_auc_boxes

    rows, training = [], []
    for name, pair in params.pairs.items():
        spec = params.model(pair.model)
        if spec["kind"] != "siit":
            continue
        trained = json.loads((config.model_dir(pair.model) / "config.json").read_text())["metrics"]
        training.append({"pair": name, "case": spec["case"], **{key: trained[key] for key in SIIT_TRAINING_COLUMNS}})
        metrics = json.loads((config.evaluate_dir(name) / "metrics.json").read_text())
        for method in params.methods:
            rows.append({"pair": name, "case": spec["case"], "method": method,
                         "edge_auc": metrics[f"{method}_edge_auc_pessimistic"], "edge_auc_trapezoid": metrics[f"{method}_edge_auc_trapezoid"],
                         "node_auc": metrics[f"{method}_node_auc_pessimistic"]})
    if not rows:
        write_json_atomic(directory / "skipped.json", {"skipped": "no pair uses a model of kind siit"})
        return StepResult()
    table = pl.DataFrame(rows)
    _write_csv(directory / "auroc_table.csv", table)
    _write_csv(directory / "training.csv", pl.DataFrame(training))
    by_method = {m: table.filter(pl.col("method") == m)["edge_auc"].to_list() for m in params.methods}
    plot_auc_boxes(by_method, directory / "auroc_boxes.png", f"Edge AUROC over {table['case'].n_unique()} SIIT cases", formats=("png",))
    return StepResult(metrics={f"{m}_mean_edge_auc": float(np.mean(v)) for m, v in by_method.items()})


def _figure_positional(params: Params, directory: Path) -> StepResult:
    """The Mamba IOI paper's positional picture for every pair with ``positional: true``: the edge x
    position heatmap of signed positional EAP-IG scores and each layer's importance (the summed
    |score| of the edges into and out of it), with the most important layer in the metrics."""
    from circuitflow.report.positional_figures import layer_importance, node_layer, plot_layer_importance, plot_positional_heatmap

    tables, metrics = [], {}
    for name, pair in params.pairs.items():
        if not pair.positional:
            continue
        scores = pl.read_parquet(config.discover_dir(name) / "positional_scores.parquet")
        nodes = {node for edge in scores["edge"].unique().to_list() for node in edge.split(" -> ")} - {"logits"}
        n_layers = 1 + max(node_layer(node, 0) for node in nodes)
        plot_positional_heatmap(scores, directory / f"heatmap_{name}.png", f"{name}: positional EAP-IG", formats=("png",))
        importance = layer_importance(scores, n_layers)
        plot_layer_importance(importance, directory / f"layers_{name}.png", f"{name}: layer importance", formats=("png",))
        tables.append(importance.with_columns(pl.lit(name).alias("pair")).select("pair", "layer", "into", "out_of"))
        total = importance["into"] + importance["out_of"]
        metrics[f"{name}_most_important_layer"] = float(importance["layer"][int(total.arg_max())])
    if not tables:
        write_json_atomic(directory / "skipped.json", {"skipped": "no pair has positional: true"})
        return StepResult()
    _write_csv(directory / "layer_importance.csv", pl.concat(tables))
    return StepResult(metrics=metrics)


FIGURES = {"roc": _figure_roc, "faithfulness": _figure_faithfulness, "hypothesis": _figure_hypothesis, "adversarial": _figure_adversarial, "siit": _figure_siit,
           "positional": _figure_positional}


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
    hypothesis_dir, adversarial_dir = config.figure_dir("hypothesis"), config.figure_dir("adversarial")
    sections = [ReportSection(
        title="Discovery against the ground truth",
        text="Edge and node AUC of each method where the model's circuit is known (higher is better; "
             "pessimistic = the ACDC paper's staircase AUC).",
        tables=[("AUC", _read_csv(roc_dir / "auc_table.csv")),
                ("Saved circuits: edges and fraction of the model's score recovered", _read_csv(roc_dir / "circuit_table.csv"))],
    ), ReportSection(
        title="Hypothesis tests (Shi et al.)",
        text="Equivalence, independence, minimality, sufficiency and partial necessity of each circuit "
             "(passes = 1). Per pair below: the random-circuit sweeps and per-edge minimality effects.",
        tables=[("Table 1", _read_csv(hypothesis_dir / "table.csv"))],
    )]
    siit_dir = config.figure_dir("siit")
    if (siit_dir / "auroc_table.csv").exists():
        sections.append(ReportSection(
            title="SIIT benchmark (InterpBench)",
            text="Every discovery method on every SIIT-trained model: edge AUROC against the circuit the "
                 "model was trained to implement (higher is better).",
            figures=[siit_dir / "auroc_boxes.png"],
            tables=[("Edge AUROC (pessimistic), case x method",
                     pl.read_csv(siit_dir / "auroc_table.csv").pivot("method", index="case", values="edge_auc")),
                    ("SIIT training (accuracy, IIA and strict accuracy: mean and worst node)", pl.read_csv(siit_dir / "training.csv"))],
        ))
    positional_dir = config.figure_dir("positional")
    if (positional_dir / "layer_importance.csv").exists():
        importance = pl.read_csv(positional_dir / "layer_importance.csv")
        sections.append(ReportSection(
            title="Positional attribution (Mamba IOI, Ensign & Garriga-Alonso)",
            text="Positional EAP-IG: one signed score per edge and token position (red: the edge pushes "
                 "towards the answer); per layer, the summed |score| of the edges into and out of it.",
            figures=sorted(positional_dir.glob("heatmap_*.png")) + sorted(positional_dir.glob("layers_*.png")),
            tables=[("Layer importance", importance)],
        ))
    if (adversarial_dir / "percentiles.csv").exists():
        sections.append(ReportSection(
            title="Adversarial evaluation and tails",
            text="KL(model || circuit) at the answer over every (clean, corrupted) pair (lower is better); "
                 "p99_bound: the order-statistic upper bound on the 99th percentile. The tail verdicts say "
                 "whether the circuit's failures are heavier-tailed than exponential.",
            tables=[("Percentiles", pl.read_csv(adversarial_dir / "percentiles.csv")),
                    ("Tail verdicts", pl.read_csv(adversarial_dir / "tails.csv")),
                    ("Worst pairs", pl.read_csv(adversarial_dir / "worst.csv"))],
        ))
    for name, pair in params.pairs.items():
        candidates = [roc_dir / f"roc_{name}.png", faithfulness_dir / f"faithfulness_{name}.png",
                      hypothesis_dir / f"sufficiency_{name}.png", hypothesis_dir / f"minimality_{name}.png",
                      *(adversarial_dir / f"{kind}_{name}.png" for kind in ("kl", "hill", "qq", "ioi_groups"))]
        figures = [path for path in candidates if path.exists()]
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
