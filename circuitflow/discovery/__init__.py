"""Circuit discovery methods behind one interface: a method takes a ``DiscoveryTask`` and its settings
and returns one score per edge, float64 (n_edges,), HIGHER = MORE IMPORTANT; circuits are then cut
from the scores by ``circuits.py`` (top-n, threshold, or the smallest reaching a faithfulness target).

Registered methods (params.yaml ``discover.methods``; their settings under ``discover.<method>``):
  acdc     ACDC's threshold sweep (acdc.py); score = the largest tau keeping the edge (-inf: none),
           so thresholding the scores at a tau gives ACDC's circuit at that tau.  The metric is
           KL(model || circuit) at the behavior's answer positions, or the behavior's own score
           (MSE against the model) where it has no distribution to compare (tracr), as in the paper.
  eap      edge attribution patching (eap.py); score = |estimated change of the metric| (the signed
           estimate is kept too: ``discover(...).signed``, scores.parquet's ``eap_signed``).
  eap-ig   EAP with integrated gradients (eap_ig.py), over the inputs (the paper's) or activations.
  hisp     head importance scores for pruning (hisp.py), node scores turned into edge scores.
  sp       subnetwork probing (subnetwork_probing.py), a sweep over lambda; score = the largest
           lambda whose run keeps the edge (-inf: none), like ACDC's taus.
  edge-pruning  edge pruning (edge_pruning.py): hard-concrete edge masks on the task loss, L0 driven
           to a target sparsity by a Lagrangian; score = the final mask logit.
  ensemble the listed methods run with their default settings, ranks averaged (ensemble.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens import HookedTransformer

from circuitflow.discovery.acdc import acdc_sweep, loss_batches
from circuitflow.discovery.eap import eap_scores
from circuitflow.discovery.eap_ig import eap_ig_activations_scores, eap_ig_inputs_scores
from circuitflow.discovery.edge_pruning import edge_pruning_scores
from circuitflow.discovery.ensemble import rank_average
from circuitflow.discovery.hisp import hisp_scores
from circuitflow.discovery.subnetwork_probing import subnetwork_probing_sweep
from circuitflow.graph import Graph
from circuitflow.settings import AcdcSettings, DiscoverSettings, EapIgSettings, EapSettings, HispSettings, SpSettings, parse


@dataclass(frozen=True)
class DiscoveryTask:
    """What every method needs: the model, its graph, the clean tokens (n_examples, pos), the
    ablation values (source, n_examples | 1, pos | 1, d_model), and the behavior with its encoded
    examples (``Behavior.encode``)."""

    model: HookedTransformer
    graph: Graph
    clean: torch.Tensor
    ablated: torch.Tensor
    behavior: Any
    examples: dict[str, torch.Tensor]
    batch_size: int = 64

    def _batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.examples.items()}

    def metric(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The behavior's attribution metric (higher = more of the behavior), summed over the batch."""
        return self.behavior.attribution_metric(logits, self._batch(index))

    def loss(self, circuit_logits: torch.Tensor, model_logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Per-example loss of a circuit against the model (lower is better): the behavior's KL where
        it has one, else its score (tracr: MSE against the model)."""
        compare = self.behavior.kl_divergence or self.behavior.score
        return compare(circuit_logits, model_logits, self._batch(index))


@dataclass(frozen=True)
class Found:
    """What a method found: per-edge scores, float64 (n_edges,), higher = more important; for a
    threshold sweep also the thresholds, in the order run, and each one's circuit, ``kept`` bool
    (n_thresholds, n_edges).  The scores of a sweep are "the largest threshold keeping the edge",
    which gives back each circuit as ``scores >= t`` only when the sweep is nested
    (``evaluation.roc.is_nested``): ROC points are therefore taken from ``kept``."""

    scores: torch.Tensor
    thresholds: tuple[float, ...] = ()
    kept: torch.Tensor | None = None
    signed: torch.Tensor | None = None  # an attribution method's signed scores; ``scores`` is their |value|


def _acdc(task: DiscoveryTask, settings: AcdcSettings, progress: bool) -> Found:
    batches = loss_batches(task.model, task.graph, task.clean, task.ablated, task.loss, batch_size=task.batch_size)
    sweep = acdc_sweep(task.model, task.graph, batches, settings.thresholds, progress=progress)
    return Found(sweep.scores, tuple(sweep.thresholds), sweep.kept)


def _eap(task: DiscoveryTask, settings: EapSettings, progress: bool) -> Found:
    signed = eap_scores(task.model, task.graph, task.clean, task.ablated, task.metric, batch_size=task.batch_size, progress=progress)
    return Found(signed.abs(), signed=signed)


def _signed_eap_ig(task: DiscoveryTask, settings: EapIgSettings, progress: bool) -> torch.Tensor:
    scores = eap_ig_inputs_scores if settings.over == "inputs" else eap_ig_activations_scores
    return scores(task.model, task.graph, task.clean, task.ablated, task.metric, steps=settings.steps,
                  batch_size=task.batch_size, progress=progress)


def _eap_ig(task: DiscoveryTask, settings: EapIgSettings, progress: bool) -> Found:
    signed = _signed_eap_ig(task, settings, progress)
    return Found(signed.abs(), signed=signed)


def positional_eap_ig_scores(task: DiscoveryTask, settings: Any = None, progress: bool = False) -> tuple[Graph, torch.Tensor]:
    """Positional EAP-IG (Ensign & Garriga-Alonso 2024): the task's graph with every residual edge
    split by token position, and one signed EAP-IG score per (edge, position), float64 in that
    graph's edge order.  Summed over positions they are the signed non-positional scores."""
    graph = dataclasses.replace(task.graph, n_positions=task.clean.shape[1])
    scores = _signed_eap_ig(dataclasses.replace(task, graph=graph), method_settings("eap-ig", settings), progress)
    return graph, scores.to(torch.float64)


def _hisp(task: DiscoveryTask, settings: HispSettings, progress: bool) -> torch.Tensor:
    return hisp_scores(task.model, task.graph, task.clean, task.ablated, task.metric, normalize=settings.normalize, progress=progress)


def _sp(task: DiscoveryTask, settings: SpSettings, progress: bool) -> Found:
    runs = subnetwork_probing_sweep(
        task.model, task.graph, task.clean, task.ablated, task.loss, lams=settings.lambdas, level=settings.level,
        steps=settings.steps, lr=settings.lr, batch_size=task.batch_size, seed=settings.seed, progress=progress,
    )
    scores = torch.full((task.graph.n_edges,), -math.inf, dtype=torch.float64)
    for run in sorted(runs, key=lambda run: run.lam):  # ascending: the largest lambda keeping an edge is written last
        scores[run.kept] = run.lam
    return Found(scores, tuple(run.lam for run in runs), torch.stack([run.kept for run in runs]))


def _edge_pruning(task: DiscoveryTask, settings: Any, progress: bool) -> torch.Tensor:
    return edge_pruning_scores(task.model, task.graph, task.clean, task.ablated, task.loss, batch_size=task.batch_size,
                               progress=progress, **dataclasses.asdict(settings))


def _ensemble(task: DiscoveryTask, settings: Any, progress: bool) -> torch.Tensor:
    return rank_average({name: discover_scores(name, task, None, progress) for name in settings.methods})


# One function per method of settings.METHODS: (task, the method's settings object, progress) -> scores.
METHODS: dict[str, Callable[[DiscoveryTask, Any, bool], "torch.Tensor | Found"]] = {
    "acdc": _acdc, "eap": _eap, "eap-ig": _eap_ig, "hisp": _hisp, "sp": _sp,
    "edge-pruning": _edge_pruning, "ensemble": _ensemble,
}


def method_settings(name: str, given: Any = None) -> Any:
    """Method ``name``'s settings object: ``given`` if it is one, else parsed from a mapping of
    overrides (params.yaml's ``discover.<name>``; None: the defaults).  An unknown key or a bad
    value is a SettingsError naming it."""
    if name not in METHODS:
        raise ValueError(f"Unknown discovery method {name!r}; known methods: {', '.join(METHODS)}.")
    default = DiscoverSettings().method(name)
    if isinstance(given, type(default)):
        return given
    return parse(type(default), given, f"discover.{name}")


def discover(name: str, task: DiscoveryTask, settings: Any = None, progress: bool = False) -> Found:
    """Method ``name``'s scores (see the module docstring) and, for a sweep (ACDC's taus, SP's
    lambdas), each threshold's circuit."""
    found = METHODS[name](task, method_settings(name, settings), progress)
    found = found if isinstance(found, Found) else Found(found)
    signed = None if found.signed is None else found.signed.to(torch.float64)
    return dataclasses.replace(found, scores=found.scores.to(torch.float64), signed=signed)


def discover_scores(name: str, task: DiscoveryTask, settings: Any = None, progress: bool = False) -> torch.Tensor:
    """Per-edge scores of method ``name`` (see the module docstring), float64 (n_edges,)."""
    return discover(name, task, settings, progress).scores


__all__ = ["METHODS", "DiscoveryTask", "Found", "discover", "discover_scores", "eap_scores", "method_settings", "positional_eap_ig_scores"]
