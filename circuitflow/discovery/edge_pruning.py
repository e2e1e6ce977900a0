"""Edge pruning (Bhaskar et al. 2024): hard-concrete edge masks trained to a target sparsity.

Every edge gets a hard-concrete gate with a learned logit ``log_alpha`` (the gate machinery of
``subnetwork_probing``: ``sample_gates``, ``expected_l0``).  The sampled gates are the patching
engine's edge mask (1 keep, 0 ablate); the model stays frozen.  With the expected sparsity

    s = 1 - mean over edges of P(gate != 0)

and a target t (raised linearly from 0 over the first ``warmup`` fraction of the steps, then held),
the objective is

    L = mean over the batch of loss(masked model, full model)  +  lambda1 (s - t) + lambda2 (s - t)^2,

minimised in ``log_alpha`` (Adam, ``lr``) and MAXIMISED in (lambda1, lambda2) (Adam ascent,
``lambda_lr``, both starting at 0): the Lagrangian of "fit the model subject to sparsity t", as in
CoFi pruning, which edge pruning builds on.  ``loss`` is KL(model || circuit) at the task's positions
(``DiscoveryTask.loss``; the behavior's score where it has no distribution), lower is better.

Scores are the final ``log_alpha``, HIGHER = KEPT; the run's own circuit is ``log_alpha > 0`` (the
deterministic gate above 1/2).  Everything random (gate noise, batch order) comes from one
``torch.Generator`` seeded by ``seed``: the same inputs and seed give identical scores.

Dimension names: source, batch, pos, vocab, d_model, n_edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitflow.discovery.subnetwork_probing import Loss, expected_l0, sample_gates
from circuitflow.graph import Graph
from circuitflow.numerics import flush_denormal
from circuitflow.patching import run_circuits
from circuitflow.settings import EdgePruningSettings

_DEFAULTS = EdgePruningSettings()


@dataclass(frozen=True)
class PruningResult:
    """One edge-pruning run.

    scores:   float64 (n_edges,) the final log_alpha, HIGHER = KEPT.
    kept:     bool (n_edges,) the run's circuit, log_alpha > 0.
    losses:   float64 (steps,) the fit term (the loss against the model) at each step, lower is better.
    sparsity: float64 (steps,) the expected sparsity s at each step.
    lambdas:  float64 (2,) the final (lambda1, lambda2).
    """

    scores: torch.Tensor
    kept: torch.Tensor
    losses: torch.Tensor
    sparsity: torch.Tensor
    lambdas: torch.Tensor


def check_pruning_settings(target_sparsity: float, steps: int, lr: float, lambda_lr: float, warmup: float, batch_size: int) -> None:
    """Raise one sentence for a setting edge pruning cannot run with."""
    if not (isinstance(target_sparsity, (int, float)) and 0 <= target_sparsity < 1):
        raise ValueError(f"The target sparsity is the fraction of edges to remove, in [0, 1); got {target_sparsity!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Edge pruning needs a whole number of training steps >= 1, got {steps!r}.")
    for name, value in (("lr", lr), ("lambda_lr", lambda_lr)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"The learning rate {name} must be a positive number, got {value!r}.")
    if not (isinstance(warmup, (int, float)) and 0 <= warmup <= 1):
        raise ValueError(f"warmup is the fraction of the steps over which the target rises, in [0, 1]; got {warmup!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")


def target_at(step: int, steps: int, target_sparsity: float, warmup: float) -> float:
    """The sparsity target at 0-based ``step``: linear from 0 to ``target_sparsity`` over the first
    ``warmup * steps`` steps, then constant."""
    ramp = warmup * steps
    return target_sparsity if ramp <= 0 else target_sparsity * min(1.0, (step + 1) / ramp)


def _full_model_logits(model: HookedTransformer, clean: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's own logits on every example, (n_examples, pos, vocab), without gradients."""
    with torch.no_grad():
        return torch.cat([model(clean[start : start + batch_size]) for start in range(0, clean.shape[0], batch_size)])


def edge_pruning(
    model: HookedTransformer,
    graph: Graph,
    clean: torch.Tensor,
    ablated: torch.Tensor,
    loss: Loss,
    *,
    target_sparsity: float = _DEFAULTS.target_sparsity,
    steps: int = _DEFAULTS.steps,
    lr: float = _DEFAULTS.lr,
    lambda_lr: float = _DEFAULTS.lambda_lr,
    warmup: float = _DEFAULTS.warmup,
    init: float = _DEFAULTS.init,
    batch_size: int = 64,
    seed: int = _DEFAULTS.seed,
    progress: bool = False,
) -> PruningResult:
    """Train edge masks to the target sparsity (see the module docstring); the model is not changed.

    clean: (n_examples, pos) tokens; ablated: (source, n_examples | 1, pos | 1, d_model) from
    ``ablation_values``; loss: (circuit logits, model logits, example indices) -> (batch,), lower
    is better.  ``init`` is every gate's starting log_alpha.  Each step
    draws one gate sample for one batch of examples (in a fresh seeded order every pass over the
    data).  The full model's logits are held in memory as (n_examples, pos, vocab).
    """
    check_pruning_settings(target_sparsity, steps, lr, lambda_lr, warmup, batch_size)
    generator = torch.Generator().manual_seed(seed)
    log_alpha = torch.full((graph.n_edges,), float(init), dtype=model.cfg.dtype, requires_grad=True)
    lambdas = torch.zeros(2, dtype=model.cfg.dtype, requires_grad=True)
    mask_optimizer = torch.optim.Adam([log_alpha], lr=lr)
    lambda_optimizer = torch.optim.Adam([lambdas], lr=lambda_lr, maximize=True)  # gradient ascent
    targets = _full_model_logits(model, clean, batch_size)
    losses, sparsity = torch.empty(steps, dtype=torch.float64), torch.empty(steps, dtype=torch.float64)
    order: list[torch.Tensor] = []
    for step in tqdm(range(steps), desc=f"edge pruning (target {target_sparsity:g})", disable=not progress):
        if not order:
            order = list(torch.randperm(clean.shape[0], generator=generator).split(batch_size))
        index = order.pop(0)
        batch_ablated = ablated if ablated.shape[1] == 1 else ablated[:, index]
        logits = run_circuits(model, graph, clean[index], batch_ablated, sample_gates(log_alpha, generator))
        fit = loss(logits, targets[index], index).mean()
        gap = 1 - expected_l0(log_alpha).mean() - target_at(step, steps, target_sparsity, warmup)
        objective = fit + lambdas[0] * gap + lambdas[1] * gap**2
        with flush_denormal(graph.is_mamba):  # a Mamba scan's gradients decay into subnormals
            log_alpha.grad, lambdas.grad = torch.autograd.grad(objective, (log_alpha, lambdas))  # no weight gradients
        mask_optimizer.step()
        lambda_optimizer.step()
        losses[step], sparsity[step] = float(fit.detach()), float(1 - expected_l0(log_alpha.detach()).mean())
    final = log_alpha.detach().double()
    return PruningResult(scores=final, kept=final > 0, losses=losses, sparsity=sparsity, lambdas=lambdas.detach().double())


def edge_pruning_scores(model: HookedTransformer, graph: Graph, clean: torch.Tensor, ablated: torch.Tensor, loss: Loss, **settings) -> torch.Tensor:
    """(n_edges,) float64 edge scores of one run (its final log_alpha), HIGHER = KEPT."""
    return edge_pruning(model, graph, clean, ablated, loss, **settings).scores


__all__ = ["PruningResult", "check_pruning_settings", "edge_pruning", "edge_pruning_scores", "target_at"]
