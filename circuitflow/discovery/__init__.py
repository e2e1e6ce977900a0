"""Circuit discovery methods behind one interface: a method takes a ``DiscoveryTask`` and its settings
and returns one score per edge, float64 (n_edges,), HIGHER = MORE IMPORTANT; circuits are then cut
from the scores by ``circuits.py`` (top-n, threshold, or the smallest reaching a faithfulness target).

Registered methods (params.yaml ``discover.methods``; their settings under ``discover.<method>``):
  acdc     ACDC's threshold sweep (acdc.py); score = the largest tau keeping the edge (-inf: none),
           so thresholding the scores at a tau gives ACDC's circuit at that tau.  The metric is
           KL(model || circuit) at the behavior's answer positions, or the behavior's own score
           (MSE against the model) where it has no distribution to compare (tracr), as in the paper.
  eap      edge attribution patching (eap.py); score = |estimated change of the metric|.
  eap-ig   EAP with integrated gradients (eap_ig.py), over the inputs (the paper's) or activations.
  hisp     head importance scores for pruning (hisp.py), node scores turned into edge scores.
  sp       subnetwork probing (subnetwork_probing.py), a sweep over lambda; score = the largest
           lambda whose run keeps the edge (-inf: none), like ACDC's taus.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens import HookedTransformer

from circuitflow.discovery.acdc import acdc_scores
from circuitflow.discovery.eap import eap_scores
from circuitflow.discovery.eap_ig import eap_ig_activations_scores, eap_ig_inputs_scores
from circuitflow.discovery.hisp import hisp_scores
from circuitflow.discovery.subnetwork_probing import subnetwork_probing_sweep
from circuitflow.graph import Graph


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


def _acdc(task: DiscoveryTask, settings: dict, progress: bool) -> torch.Tensor:
    return acdc_scores(task.model, task.graph, task.clean, task.ablated, thresholds=settings["thresholds"],
                       loss=task.loss, batch_size=task.batch_size, progress=progress)


def _eap(task: DiscoveryTask, settings: dict, progress: bool) -> torch.Tensor:
    return eap_scores(task.model, task.graph, task.clean, task.ablated, task.metric, batch_size=task.batch_size, progress=progress).abs()


def _signed_eap_ig(task: DiscoveryTask, settings: dict, progress: bool) -> torch.Tensor:
    scores = eap_ig_inputs_scores if settings["over"] == "inputs" else eap_ig_activations_scores
    return scores(task.model, task.graph, task.clean, task.ablated, task.metric, steps=settings["steps"],
                  batch_size=task.batch_size, progress=progress)


def _eap_ig(task: DiscoveryTask, settings: dict, progress: bool) -> torch.Tensor:
    return _signed_eap_ig(task, settings, progress).abs()


def positional_eap_ig_scores(task: DiscoveryTask, settings: dict | None = None, progress: bool = False) -> tuple[Graph, torch.Tensor]:
    """Positional EAP-IG (Ensign & Garriga-Alonso 2024): the task's graph with every residual edge
    split by token position, and one signed EAP-IG score per (edge, position), float64 in that
    graph's edge order.  Summed over positions they are the signed non-positional scores."""
    graph = dataclasses.replace(task.graph, n_positions=task.clean.shape[1])
    scores = _signed_eap_ig(dataclasses.replace(task, graph=graph), method_settings("eap-ig", settings), progress)
    return graph, scores.to(torch.float64)


def _hisp(task: DiscoveryTask, settings: dict, progress: bool) -> torch.Tensor:
    return hisp_scores(task.model, task.graph, task.clean, task.ablated, task.metric, normalize=settings["normalize"], progress=progress)


def _sp(task: DiscoveryTask, settings: dict, progress: bool) -> torch.Tensor:
    runs = subnetwork_probing_sweep(
        task.model, task.graph, task.clean, task.ablated, task.loss, lams=settings["lambdas"], level=settings["level"],
        steps=settings["steps"], lr=settings["lr"], batch_size=task.batch_size, seed=settings["seed"], progress=progress,
    )
    scores = torch.full((task.graph.n_edges,), -math.inf, dtype=torch.float64)
    for run in sorted(runs, key=lambda run: run.lam):  # ascending: the largest lambda keeping an edge is written last
        scores[run.kept] = run.lam
    return scores


@dataclass(frozen=True)
class Method:
    run: Callable[[DiscoveryTask, dict, bool], torch.Tensor]
    defaults: dict[str, Any]
    choices: dict[str, tuple] | None = None  # settings restricted to a few values


METHODS: dict[str, Method] = {
    "acdc": Method(_acdc, {"thresholds": [1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]}),
    "eap": Method(_eap, {}),
    "eap-ig": Method(_eap_ig, {"steps": 5, "over": "inputs"}, {"over": ("inputs", "activations")}),
    "hisp": Method(_hisp, {"normalize": True}, {"normalize": (True, False)}),
    "sp": Method(_sp, {"lambdas": [0.01, 0.1, 1.0], "level": "edge", "steps": 150, "lr": 0.1, "seed": 0},
                 {"level": ("edge", "node")}),
}


def method_settings(name: str, given: dict | None) -> dict[str, Any]:
    """A method's settings: its defaults overridden by ``given`` (params.yaml ``discover.<name>``);
    an unknown key or a value outside the allowed choices is a ValueError naming it."""
    method = METHODS[name]
    given = dict(given or {})
    unknown = sorted(set(given) - set(method.defaults))
    if unknown:
        allowed = ", ".join(method.defaults) or "none"
        raise ValueError(f"discover.{name} has unknown setting {unknown[0]!r}; allowed settings: {allowed}.")
    settings = {**method.defaults, **given}
    for key, allowed in (method.choices or {}).items():
        if settings[key] not in allowed:
            raise ValueError(f"discover.{name}.{key} must be one of {', '.join(map(str, allowed))}, got {settings[key]!r}.")
    return settings


def discover_scores(name: str, task: DiscoveryTask, settings: dict | None = None, progress: bool = False) -> torch.Tensor:
    """Per-edge scores of method ``name`` (see the module docstring), float64 (n_edges,)."""
    if name not in METHODS:
        raise ValueError(f"Unknown discovery method {name!r}; known methods: {', '.join(METHODS)}.")
    scores = METHODS[name].run(task, method_settings(name, settings), progress)
    return scores.to(torch.float64)


__all__ = ["METHODS", "DiscoveryTask", "Method", "discover_scores", "eap_scores", "method_settings", "positional_eap_ig_scores"]
