"""Subnetwork probing, edge and node level (Cao et al. 2021, as used in the ACDC paper).

Every edge (edge SP) or every source node (node SP: one gate per source, shared by all the edges
leaving it) gets a hard-concrete gate (Louizos et al. 2018) with a learned logit ``log_alpha``:

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log_alpha) / beta),
    z = clamp(s * (zeta - gamma) + gamma, 0, 1),        beta = 2/3, (gamma, zeta) = (-0.1, 1.1).

The sampled gates are the patching engine's edge mask (1 keep, 0 ablate), and Adam trains
``log_alpha`` (the model stays frozen) to minimise

    mean over the batch of loss(masked model, full model)  +  lambda * expected L0 / n_gates,

where the expected L0 of a gate is P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)).
The penalty is the expected *fraction* of gates open (ACDC sums over gates instead), so one lambda
means the same on graphs of any size.  Lower losses are better.  Sweeping lambda trades the
circuit's size against its faithfulness.

Scores for the common interface are the final ``log_alpha`` of each edge's gate, higher = kept;
the circuit of one run keeps the edges whose deterministic gate
``clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)`` exceeds 1/2, i.e. ``log_alpha > 0``.
Everything random (gate noise, batch order) comes from one ``torch.Generator`` seeded by ``seed``:
the same inputs and seed give identical scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitflow.ablation import select_examples
from circuitflow.graph import Graph
from circuitflow.metrics import positions_kl
from circuitflow.numerics import flush_denormal
from circuitflow.patching import full_model_logits, run_circuits
from circuitflow.settings import SpSettings

Level = Literal["edge", "node"]
LEVELS: tuple[str, ...] = get_args(Level)

BETA = 2 / 3
GAMMA, ZETA = -0.1, 1.1  # the stretch interval of the hard-concrete distribution
_L0_SHIFT = BETA * math.log(-GAMMA / ZETA)

# loss(circuit logits (batch, pos, vocab), model logits (batch, pos, vocab), example indices (batch,))
#   -> (batch,) per-example loss, lower is better (the masked model is closer to the full model)
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ---- the hard-concrete gate ----------------------------------------------------------------------
def sample_gates(log_alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw of the stretched, clamped hard-concrete gates; (n_gates,) -> (n_gates,) in [0, 1].
    Differentiable in ``log_alpha``; the noise comes from ``generator`` only."""
    u = torch.rand(log_alpha.shape, generator=generator, dtype=log_alpha.dtype).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def deterministic_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    """The gates without noise (the test-time mask); (n_gates,) -> (n_gates,) in [0, 1]."""
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def expected_l0(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(gate != 0) per gate, the expected L0 norm's terms; (n_gates,) -> (n_gates,)."""
    return torch.sigmoid(log_alpha - _L0_SHIFT)


# ---- losses --------------------------------------------------------------------------------------
def kl_loss(positions: Sequence[int] | slice | None = None) -> Loss:
    """KL(full model || masked model) per example, averaged over ``positions`` (all if None).

    The returned loss maps circuit logits (batch, pos, vocab), model logits (batch, pos, vocab)
    and example indices (batch,) to (batch,), lower is better.  For numerical outputs (vocab 1,
    tracr-proportion) KL is always 0: use the behavior's score instead.
    """
    where = slice(None) if positions is None else positions
    if not isinstance(where, slice):
        where = list(where)

    def loss(circuit_logits: torch.Tensor, model_logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return positions_kl(model_logits, circuit_logits, where)

    return loss


# ---- training ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeResult:
    """One subnetwork-probing run.

    lam:       the L0 weight lambda.
    log_alpha: (n_gates,) final gate logits (n_edges for edge SP, n_sources for node SP).
    scores:    (n_edges,) float64 the final log_alpha of each edge's gate, higher = kept.
    kept:      (n_edges,) bool, the circuit: deterministic gate > 1/2 (log_alpha > 0).
    losses:    (steps,) float64 the objective at each step, lower is better.
    """

    lam: float
    log_alpha: torch.Tensor
    scores: torch.Tensor
    kept: torch.Tensor
    losses: torch.Tensor


def gate_of_edge(graph: Graph, level: Level) -> torch.Tensor:
    """Long (n_edges,): which gate each edge reads; edge SP has one gate per edge, node SP one per
    source node (index into ``graph.sources``)."""
    if level not in LEVELS:
        raise ValueError(f"Unknown subnetwork-probing level {level!r}; choose one of {', '.join(LEVELS)}.")
    if level == "edge":
        return torch.arange(graph.n_edges)
    if graph.qkv_direct_edges:
        raise ValueError("Node subnetwork probing gates source nodes, and q/k/v direct edges have none; build the graph without qkv_direct_edges.")
    return torch.tensor([graph.source_index[name.split(" -> ")[0]] for name in graph.edge_names])


def _check(lam: float, steps: int, lr: float, batch_size: int) -> None:
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lambda must be a finite number >= 0, got {lam!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Subnetwork probing needs a whole number of training steps >= 1, got {steps!r}.")
    if not lr > 0:
        raise ValueError(f"The learning rate must be positive, got {lr!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")


def subnetwork_probing(
    model: HookedTransformer,
    graph: Graph,
    clean: torch.Tensor,
    ablated: torch.Tensor,
    loss: Loss,
    *,
    lam: float,
    level: Level = SpSettings.level,
    steps: int = SpSettings.steps,
    lr: float = SpSettings.lr,
    batch_size: int = 64,
    init: float = 3.0,
    seed: int = SpSettings.seed,
    progress: bool = False,
) -> ProbeResult:
    """Train hard-concrete gates so that the masked model matches the full model.

    clean: (n_examples, pos) tokens; ablated: (source, n_examples | 1, pos | 1, d_model) from
    ``ablation_values``; loss: (circuit logits, model logits, example indices) -> (batch,), lower
    is better (``kl_loss(...)``, or a behavior's score).  ``lam`` weighs the expected fraction of
    gates open; ``level`` "edge" or "node"; ``init`` is every gate's starting log_alpha (3: almost
    surely open).  Each step draws one gate sample for one batch of examples (batches in a fresh
    seeded order every pass over the data).  The full model's logits are computed once, held in
    memory as (n_examples, pos, vocab).  Returns a ``ProbeResult``; the model is not changed.
    """
    _check(lam, steps, lr, batch_size)
    gate = gate_of_edge(graph, level)
    n_gates = graph.n_edges if level == "edge" else graph.n_sources
    dtype = model.cfg.dtype
    generator = torch.Generator().manual_seed(seed)
    log_alpha = torch.full((n_gates,), float(init), dtype=dtype, requires_grad=True)
    optimizer = torch.optim.Adam([log_alpha], lr=lr)
    n_examples = clean.shape[0]
    targets = full_model_logits(model, graph, clean, batch_size=batch_size)
    order: list[torch.Tensor] = []
    losses = torch.empty(steps, dtype=torch.float64)
    for step in tqdm(range(steps), desc=f"SP ({level}, lambda={lam:g})", disable=not progress):
        if not order:
            order = list(torch.randperm(n_examples, generator=generator).split(batch_size))
        index = order.pop(0)
        batch_ablated = select_examples(ablated, index)
        mask = sample_gates(log_alpha, generator)[gate]
        logits = run_circuits(model, graph, clean[index], batch_ablated, mask)
        objective = loss(logits, targets[index], index).mean() + lam * expected_l0(log_alpha).mean()
        with flush_denormal(graph.is_mamba):  # a Mamba scan's gradients decay into subnormals too
            (gradient,) = torch.autograd.grad(objective, log_alpha)  # no weight gradients: the model stays as it was
        log_alpha.grad = gradient
        optimizer.step()
        losses[step] = float(objective.detach())
    final = log_alpha.detach().clone()
    scores = final[gate].double()
    return ProbeResult(lam=float(lam), log_alpha=final, scores=scores, kept=scores > 0, losses=losses)


def subnetwork_probing_sweep(
    model: HookedTransformer,
    graph: Graph,
    clean: torch.Tensor,
    ablated: torch.Tensor,
    loss: Loss,
    *,
    lams: Sequence[float],
    **settings,
) -> list[ProbeResult]:
    """One ``subnetwork_probing`` run per lambda (same seed and settings), in the order given.
    Their circuits (``kept``, stacked: (n_lambdas, n_edges)) give an ROC curve through
    ``evaluation.roc.roc_from_circuits``, as in the ACDC paper."""
    if len(lams) == 0:
        raise ValueError("The lambda sweep is empty; give at least one lambda, e.g. lams=[0.01, 0.1, 1, 10].")
    return [subnetwork_probing(model, graph, clean, ablated, loss, lam=lam, **settings) for lam in lams]


def subnetwork_probing_scores(
    model: HookedTransformer,
    graph: Graph,
    clean: torch.Tensor,
    ablated: torch.Tensor,
    loss: Loss,
    **settings,
) -> torch.Tensor:
    """(n_edges,) float64 edge scores of one run (its final log_alpha), higher = kept."""
    return subnetwork_probing(model, graph, clean, ablated, loss, **settings).scores
