"""A circuit for your model on your prompts, from a notebook: ``find_circuit``.

    from circuitflow.api import find_circuit
    result = find_circuit(model, clean, corrupted, answers, wrong_answers)  # EAP-IG, resample ablation
    result.edges, result.scores, result.circuit, result.recovered
    result.save("circuit.json"); result.plot("circuit")

``model``: a TransformerLens ``HookedTransformer`` (or mamba-lens ``HookedMamba``), a model
directory the pipeline wrote (``data/models/<name>``), or a ``LoadedModel``.  The examples come
either as prompt pairs (lists of strings tokenised by the model's tokenizer, or (n_examples, pos)
token tensors) with one-token answers, or from a behavior: ``behavior="pairs:my.csv"`` for a CSV or
Parquet file of counterfactual pairs (``circuitflow.behaviors.counterfactual``), or any built-in
name (``"ioi"``, ``"bigbench:<path>"``, ...) with ``n_examples`` and ``seed``.

Prompts of different token lengths are refused (one sentence naming the first one that differs and
the fix: equal token lengths); nothing is padded or aligned.

The prompt pairs' metric is the logit difference logit[answer] - logit[wrong answer] at the last
position; the per-example score is its negative (lower is better); ACDC and subnetwork probing
compare the circuit with the model by KL(model || circuit) at the last position.  An ablated edge
carries its source's output on the paired corrupted prompt (``ablation="resample"``, default), its
mean over the corrupted prompts (``"mean"``), or zero (``"zero"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from circuitflow.behaviors import Behavior, counterfactual, get_behavior
from circuitflow.circuit import Circuit
from circuitflow.discovery import (
    METHODS,
    DiscoveryTask,
    discover_scores,
    method_settings,
)
from circuitflow.discovery.circuits import top_n, top_n_masks
from circuitflow.discovery.eap import eap_scores
from circuitflow.discovery.eap_ig import eap_ig_activations_scores, eap_ig_inputs_scores
from circuitflow.evaluation.faithfulness import per_example_scores
from circuitflow.graph import Graph
from circuitflow.io import write_atomic
from circuitflow.models import LoadedModel, load_model
from circuitflow.ablation import ablation_values, as_ablation
from circuitflow.patching import source_outputs

SIGNED_METHODS = ("eap", "eap-ig")  # signed scores, ranked by their absolute value
_PROMPTS = "the prompts given to find_circuit"


@dataclass(frozen=True)
class CircuitResult:
    """What ``find_circuit`` found.

    scores: float64 (n_edges,) in the graph's edge order, as the method computed them: for eap and
    eap-ig SIGNED (the estimated change of the logit difference when the edge alone is ablated;
    edges are ranked by |score|), for the others the method's own ranking score (higher = more
    important).  circuit: the top-ranked edges kept; recovered: the fraction of the model's
    logit difference (its behavior score, lower is better, over the empty circuit's) it keeps.
    """

    method: str
    scores: torch.Tensor
    circuit: Circuit
    recovered: float
    ablation: str

    @property
    def graph(self) -> Graph:
        return self.circuit.graph

    @property
    def edges(self) -> list[str]:
        """The circuit's edge names, in graph order."""
        return self.circuit.edges

    def scores_frame(self) -> pl.DataFrame:
        """One row per edge of the graph: ``edge``, ``score`` (as in ``scores``), ``in_circuit``."""
        return pl.DataFrame({"edge": list(self.graph.edge_names), "score": self.scores.tolist(),
                             "in_circuit": self.circuit.members.tolist()},
                            schema={"edge": pl.String, "score": pl.Float64, "in_circuit": pl.Boolean})

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write the circuit JSON at ``path`` (``Circuit.save``) and the scores as Parquet beside it
        (``<stem>.scores.parquet``); returns both paths."""
        path = Path(path)
        scores_path = path.with_suffix(".scores.parquet")
        self.circuit.save(path)
        frame = self.scores_frame()
        write_atomic(scores_path, lambda tmp: frame.write_parquet(tmp, statistics=False))
        return path, scores_path

    def plot(self, path: str | Path, title: str | None = None) -> list[Path]:
        """Draw the circuit (``report.figures.plot_circuit``) at ``path`` as PNG and SVG; returns the files."""
        # imported here: matplotlib loads only when a figure is drawn
        from circuitflow.report.figures import plot_circuit

        title = title or f"{self.method}: {len(self.circuit)} edges, {self.recovered:.0%} recovered"
        return plot_circuit(self.edges, path, title)


# ---- inputs -------------------------------------------------------------------------------------
def as_loaded(model: Any) -> LoadedModel:
    """A ``LoadedModel`` from a model, a model directory the pipeline wrote, or a ``LoadedModel``."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return load_model(model)
    if isinstance(model, torch.nn.Module) and hasattr(model, "cfg"):
        return LoadedModel(model=model, graph=Graph.from_config(model.cfg), tokenizer=getattr(model, "tokenizer", None))
    raise ValueError(f"find_circuit takes a HookedTransformer, a model directory or a LoadedModel, not {type(model).__name__}.")


def _token_ids(values: Any, n: int, column: str, tokenizer: Any) -> torch.Tensor:
    """Answers for ``n`` examples as (n,) int64 ids: one string or id for all, or one per example."""
    if isinstance(values, torch.Tensor):
        values = values.tolist() if values.dim() else values.item()
    if isinstance(values, (str, int)):
        values = [values] * n
    if not isinstance(values, Sequence) or len(values) != n:
        raise ValueError(f"{column} must be one answer or a list of {n} (one per prompt), got {values!r:.80}.")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.long)
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{column} must be strings (or token ids, all of them), got {values!r:.80}.")
    if tokenizer is None:
        raise ValueError(f"This model has no tokenizer to encode the {column}; set one (model.set_tokenizer) or give token ids.")
    return counterfactual.encode_answers(tokenizer, values, column, _PROMPTS, range(n))


def prompt_examples(clean: Any, corrupted: Any, answers: Any, wrong_answers: Any, tokenizer: Any) -> dict[str, torch.Tensor]:
    """The prompt pairs as examples: ``clean``, ``corrupted`` (n_examples, pos) and ``answer``,
    ``wrong_answer`` (n_examples,) int64 ids."""
    if any(value is None for value in (clean, corrupted, answers, wrong_answers)):
        raise ValueError("find_circuit needs clean, corrupted, answers and wrong_answers (or behavior=... alone); give all four.")
    if isinstance(clean, torch.Tensor) or isinstance(corrupted, torch.Tensor):
        if not (isinstance(clean, torch.Tensor) and isinstance(corrupted, torch.Tensor)) or clean.dim() != 2 or clean.shape != corrupted.shape:
            raise ValueError("Token prompts must be two (n_examples, pos) tensors of one shape; give clean and corrupted alike.")
        n, tokens = clean.shape[0], {"clean": clean.long(), "corrupted": corrupted.long()}
    else:
        clean = [clean] if isinstance(clean, str) else list(clean)
        corrupted = [corrupted] if isinstance(corrupted, str) else list(corrupted)
        if len(clean) != len(corrupted) or not clean:
            raise ValueError(f"find_circuit got {len(clean)} clean and {len(corrupted)} corrupted prompts; give one corrupted prompt per clean one.")
        if tokenizer is None:
            raise ValueError("This model has no tokenizer to encode the prompts; set one (model.set_tokenizer) or give token tensors.")
        n = len(clean)
        first = counterfactual.encode_prompts(tokenizer, clean, "clean", _PROMPTS, range(n))
        tokens = {"clean": first, "corrupted": counterfactual.encode_prompts(tokenizer, corrupted, "corrupted", _PROMPTS, range(n), first.shape[1])}
    return {**tokens, "answer": _token_ids(answers, n, "answers", tokenizer), "wrong_answer": _token_ids(wrong_answers, n, "wrong_answers", tokenizer)}


class LogitDifference:
    """The prompt pairs' metrics (those of ``behaviors.counterfactual``): what a ``DiscoveryTask``
    uses of a behavior."""

    score = staticmethod(counterfactual.score)
    attribution_metric = staticmethod(counterfactual.attribution_metric)
    kl_divergence = staticmethod(counterfactual.kl_divergence)


def behavior_examples(loaded: LoadedModel, behavior: str | Behavior, n_examples: int | None, seed: int | None) -> tuple[Behavior, dict[str, torch.Tensor]]:
    """The behavior and its dataset (``make_dataset(n_examples, seed)``, seed default 0) encoded for the model."""
    behavior = get_behavior(behavior) if isinstance(behavior, str) else behavior
    tokenizer = loaded.tokenizer if loaded.tokenizer is not None else getattr(loaded.model, "tokenizer", None)
    if behavior.word_level and tokenizer is None:
        raise ValueError(f"Behavior {behavior.name!r} is text, but this model has no tokenizer; set one (model.set_tokenizer).")
    return behavior, behavior.encode(behavior.make_dataset(n_examples, 0 if seed is None else seed), tokenizer)


# ---- discovery ----------------------------------------------------------------------------------
def ablated_values(loaded: LoadedModel, examples: dict[str, torch.Tensor], ablation: str, batch_size: int) -> torch.Tensor:
    """What ablated edges carry, (source, n_examples | 1, pos | 1, d_model): the sources' outputs on
    the corrupted prompts (resample), their mean over examples and positions (mean), or zeros."""
    as_ablation(ablation)  # an unknown one stops here, in one sentence naming the known ones
    corrupted = examples["corrupted"]
    outputs = torch.cat([source_outputs(loaded.model, loaded.graph, corrupted[i : i + batch_size])
                         for i in range(0, corrupted.shape[0], batch_size)], dim=1)
    return ablation_values(ablation, corrupted=outputs, reference=outputs, like=outputs)


def method_scores(method: str, task: DiscoveryTask, settings: dict, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, ranking), float64 (n_edges,) each: for eap and eap-ig the signed scores of
    ``eap_scores`` / the EAP-IG functions and their absolute values; for the other methods
    ``discover_scores`` twice (higher = more important)."""
    if method not in METHODS:
        raise ValueError(f"Unknown discovery method {method!r}; known methods: {', '.join(METHODS)}.")
    resolved = method_settings(method, settings)
    if method not in SIGNED_METHODS:
        scores = discover_scores(method, task, resolved, progress)
        return scores, scores
    if method == "eap":
        signed = eap_scores(task.model, task.graph, task.clean, task.ablated, task.metric, batch_size=task.batch_size, progress=progress)
    else:
        run = eap_ig_inputs_scores if resolved.over == "inputs" else eap_ig_activations_scores
        signed = run(task.model, task.graph, task.clean, task.ablated, task.metric, steps=resolved.steps,
                     batch_size=task.batch_size, progress=progress)
    signed = signed.to(torch.float64)
    return signed, signed.abs()


def recovered_fractions(task: DiscoveryTask, ranking: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Fraction of the model's behavior recovered by the top-n circuit of each size, (len(sizes),):
    (S(empty) - S(C)) / (S(empty) - S(model)), S the mean per-example score (lower is better) from
    ``per_example_scores``; 1 for every size when the model and the empty circuit score alike."""
    masks = top_n_masks(task.graph, ranking, [0, *sizes, task.graph.n_edges])
    examples = task.examples

    def score(circuit_logits: torch.Tensor, model_logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return task.behavior.score(circuit_logits, model_logits, {key: value[index] for key, value in examples.items()})

    means = per_example_scores(task.model, task.graph, task.clean, task.ablated, masks, score, batch_size=task.batch_size).mean(-1)
    gap = means[0] - means[-1]
    if abs(float(gap)) <= 1e-12:
        return torch.ones(len(sizes), dtype=torch.float64)
    return ((means[0] - means) / gap)[1:-1]


def cut_circuit(task: DiscoveryTask, ranking: torch.Tensor, n_edges: int | None, recovered: float) -> tuple[Circuit, float]:
    """The top-``n_edges`` circuit, or (None) the smallest top-n circuit recovering ``recovered`` of
    the model's behavior (every n up to 256 edges, else 128 sizes spaced geometrically); with the
    fraction it recovers."""
    total = task.graph.n_edges
    if n_edges is not None:
        if isinstance(n_edges, bool) or not isinstance(n_edges, int) or not 0 <= n_edges <= total:
            raise ValueError(f"n_edges must be a whole number from 0 to {total} (this model's edges), got {n_edges!r}.")
        return top_n(task.graph, ranking, n_edges), float(recovered_fractions(task, ranking, [n_edges])[0])
    if isinstance(recovered, bool) or not isinstance(recovered, (int, float)) or not 0 < recovered <= 1:
        raise ValueError(f"recovered must be a fraction in (0, 1], got {recovered!r}.")
    sizes = list(range(total + 1)) if total <= 256 else [0, *np.unique(np.round(np.geomspace(1, total, 128)).astype(int)).tolist()]
    fractions = recovered_fractions(task, ranking, sizes).tolist()
    size, fraction = next(((n, f) for n, f in zip(sizes, fractions) if f >= recovered), (total, fractions[-1]))
    return top_n(task.graph, ranking, size), float(fraction)


def find_circuit(
    model: Any,
    clean: Sequence[str] | torch.Tensor | None = None,
    corrupted: Sequence[str] | torch.Tensor | None = None,
    answers: str | Sequence[str] | Sequence[int] | torch.Tensor | None = None,
    wrong_answers: str | Sequence[str] | Sequence[int] | torch.Tensor | None = None,
    *,
    behavior: str | Behavior | None = None,
    method: str = "eap-ig",
    ablation: str = "resample",
    n_edges: int | None = None,
    recovered: float = 0.8,
    n_examples: int | None = None,
    seed: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
    **settings: Any,
) -> CircuitResult:
    """Find the circuit of ``model`` for the prompt pairs or ``behavior`` (module docstring).

    clean, corrupted: lists of prompts (strings, each the same number of tokens) or (n_examples,
    pos) token tensors; answers, wrong_answers: one string (one token) or id for every prompt, or
    one per prompt.  behavior: instead of the prompts, a behavior name (``"pairs:<csv or parquet>"``,
    ``"ioi"``, ...) with ``n_examples`` and ``seed``.  method: ``acdc``, ``eap``, ``eap-ig``,
    ``hisp`` or ``sp``, with its settings as keywords (``steps=10``, ``thresholds=[...]``).
    n_edges: the circuit's size; default the smallest top-n circuit recovering ``recovered`` of
    the model's logit difference.  The model is not changed.
    """
    loaded = as_loaded(model)
    if behavior is not None:
        if any(value is not None for value in (clean, corrupted, answers, wrong_answers)):
            raise ValueError("find_circuit takes prompts or behavior=..., not both; drop one.")
        metrics, examples = behavior_examples(loaded, behavior, n_examples, seed)
    else:
        if n_examples is not None or seed is not None:
            raise ValueError("n_examples and seed choose a behavior's examples; with prompts, pass the prompts you want instead.")
        tokenizer = loaded.tokenizer if loaded.tokenizer is not None else getattr(loaded.model, "tokenizer", None)
        examples, metrics = prompt_examples(clean, corrupted, answers, wrong_answers, tokenizer), LogitDifference()
    device = next(loaded.model.parameters()).device
    examples = {key: value.to(device) for key, value in examples.items()}
    task = DiscoveryTask(loaded.model, loaded.graph, examples["clean"], ablated_values(loaded, examples, ablation, batch_size),
                         metrics, examples, batch_size)
    scores, ranking = method_scores(method, task, settings, progress)
    circuit, fraction = cut_circuit(task, ranking, n_edges, recovered)
    return CircuitResult(method=method, scores=scores, circuit=circuit, recovered=fraction, ablation=ablation)
