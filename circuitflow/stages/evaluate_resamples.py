"""The evaluate stage's resample evaluation (``evaluation/resamples.py``, ``evaluate.resamples``):
each clean input against K corrupted inputs, the circuit's outputs aggregated.  Three files, empty
(with their columns) for a pair whose ablation is not resample:

    resamples.parquet               per saved circuit (the ground truth where known, each method's),
                                    aggregate and K' in 1, 2, 4, ..., K: faithfulness (the mean squared
                                    score difference to the model, lower is better) and the mean
                                    KL(model || circuit) at the answer positions (null without one)
    resample_variance.parquet       per saved circuit and example: the mean and the variance (over the
                                    K copies, population) of each copy's own score
    faithfulness_resamples.parquet  the faithfulness curve (method, n_edges) at K with
                                    ``evaluate.resamples.aggregate``; at K = 1 it is
                                    faithfulness.parquet's, taken from it (the engine gives the same
                                    bytes: tests/test_resamples.py)

Hypothesis tests and the adversarial evaluation stay at the pair's own pairing (K = 1).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

from circuitflow.circuit import Circuit
from circuitflow.discovery.circuits import top_n_masks
from circuitflow.evaluation.faithfulness import faithfulness_loss
from circuitflow.evaluation.resamples import (
    AGGREGATES,
    ladder,
    resample_evaluation,
    resample_indices,
)
from circuitflow.settings import Ablation, Settings
from circuitflow.stages.artefacts import discover_dir, read_parquet, write_parquet
from circuitflow.stages.inputs import PairInputs

SCHEMAS = {
    "resamples": {"circuit": pl.String, "aggregate": pl.String, "k": pl.Int64, "faithfulness": pl.Float64, "kl": pl.Float64},
    "resample_variance": {"circuit": pl.String, "example": pl.Int64, "mean_score": pl.Float64, "variance": pl.Float64},
    "faithfulness_resamples": {"method": pl.String, "n_edges": pl.Int64, "k": pl.Int64, "aggregate": pl.String, "faithfulness": pl.Float64},
}


def _kl(inputs: PairInputs):
    """(circuit logits, model logits, example index) -> (batch,) KL(model || circuit), or None."""
    behavior, examples = inputs.behavior, inputs.examples
    if behavior.kl_divergence is None:
        return None
    return lambda circuit, model, index: behavior.kl_divergence(circuit, model, {k: v[index] for k, v in examples.items()})


def _aggregates(settings: Settings, inputs: PairInputs) -> tuple[str, ...]:
    """Both aggregates where the behavior scores an output distribution; logits alone otherwise (a
    log-probability is scored like logits only where the score reads the logits through softmax)."""
    if inputs.behavior.kl_divergence is not None:
        return AGGREGATES
    return ("logits",)


def _run(settings: Settings, inputs: PairInputs, masks: torch.Tensor, ks: list[int], aggregates: tuple[str, ...]):
    resamples = settings.evaluate.resamples
    indices = resample_indices(inputs.clean.shape[0], resamples.k, resamples.seed)
    return resample_evaluation(inputs.loaded.model, inputs.loaded.graph, inputs.clean, inputs.ablated, masks, inputs.example_score(),
                               indices, ks=ks, aggregates=aggregates, kl=_kl(inputs), batch_size=inputs.pair.batch_size)


def _saved_circuit_tables(settings: Settings, inputs: PairInputs, circuits: dict[str, Circuit]) -> dict[str, pl.DataFrame]:
    names, aggregates, ks = list(circuits), _aggregates(settings, inputs), ladder(settings.evaluate.resamples.k)
    masks = torch.stack([circuits[name].members.float() for name in names])
    found, model_scores = _run(settings, inputs, masks, ks, aggregates), inputs.model_scores()
    rows = []
    for how in aggregates:
        for k in ks:
            loss = faithfulness_loss(found.scores[how, k], model_scores)
            kl = found.kl[how, k].mean(-1) if found.kl else None
            rows += [{"circuit": name, "aggregate": how, "k": k, "faithfulness": float(loss[i]),
                      "kl": None if kl is None else float(kl[i])} for i, name in enumerate(names)]
    n = inputs.clean.shape[0]
    variance = pl.DataFrame({
        "circuit": [name for name in names for _ in range(n)], "example": list(range(n)) * len(names),
        "mean_score": found.per_copy.mean(1).flatten().tolist(), "variance": found.per_copy.var(1, correction=0).flatten().tolist(),
    }, schema=SCHEMAS["resample_variance"])
    return {"resamples": pl.DataFrame(rows, schema=SCHEMAS["resamples"]), "resample_variance": variance}


def _curve(settings: Settings, inputs: PairInputs, curves: pl.DataFrame) -> pl.DataFrame:
    """The faithfulness curve at K (``curves``: faithfulness.parquet's method, n_edges, faithfulness)."""
    resamples = settings.evaluate.resamples
    # Probabilities need an output distribution; a behavior without one (tracr) averages logits.
    aggregate = resamples.aggregate if resamples.aggregate in _aggregates(settings, inputs) else "logits"
    if resamples.k == 1:
        return curves.select("method", "n_edges", pl.lit(1).alias("k"), pl.lit(aggregate).alias("aggregate"), "faithfulness").cast(SCHEMAS["faithfulness_resamples"])
    scores = read_parquet(discover_dir(inputs.pair.name) / "scores.parquet", f"discover@{inputs.pair.name}")
    frames = []
    for method in settings.methods:
        sizes = curves.filter(pl.col("method") == method)["n_edges"].to_list()
        masks = top_n_masks(inputs.loaded.graph, torch.tensor(scores[method].to_numpy()), sizes)
        found = _run(settings, inputs, masks, [resamples.k], (aggregate,))
        loss = faithfulness_loss(found.scores[aggregate, resamples.k], inputs.model_scores())
        frames.append(pl.DataFrame({"method": method, "n_edges": sizes, "k": resamples.k, "aggregate": aggregate,
                                    "faithfulness": loss.tolist()}, schema=SCHEMAS["faithfulness_resamples"]))
    return pl.concat(frames)


def write_resample_outputs(settings: Settings, inputs: PairInputs, circuits: dict[str, Circuit], curves: pl.DataFrame, out: Path) -> None:
    """Write the three files above into ``out`` (the evaluate stage's folder); ``circuits``: the
    saved circuits by name, ``curves``: the pair's faithfulness curves (faithfulness.parquet)."""
    if inputs.pair.ablation is not Ablation.RESAMPLE:
        tables = {name: pl.DataFrame(schema=schema) for name, schema in SCHEMAS.items()}
    else:
        tables = {**_saved_circuit_tables(settings, inputs, circuits), "faithfulness_resamples": _curve(settings, inputs, curves)}
    for name, frame in tables.items():
        write_parquet(out / f"{name}.parquet", frame)
