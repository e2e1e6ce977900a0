"""ACDC: automatic circuit discovery by pruning edges one at a time (Conmy et al. 2023, the discovery papers).

The search, up to 500 lines (the speculative, resumed evaluation is one idea, not split); the metric
batches are in ``acdc_metrics.py``, the visit order in ``acdc_order.py``.

The algorithm
-------------
Start from the full graph.  Visit the destinations from the output backwards and, for each of a
destination's incoming edges in turn, ablate it on top of the edges already removed; when the metric
rises by less than the threshold tau,

    metric(current circuit without e) - metric(current circuit) < tau,

remove the edge for good (the current circuit becomes the one without it), else keep it.  The metric
is a loss, **lower is better**: by default KL(full model || circuit) at the behavior's positions
(``kl_metric``), or a task metric such as the tracr MSE against the full model.

Visit order: Conmy et al.'s implementation's, checked against their code (``acdc_order.py``):
``logits``, then per layer from the last its MLP's input, (with ``qkv_direct_edges``) its heads'
direct edges ``a.v -> a``, then ``a.k -> a``, then ``a.q -> a``, then the value inputs of all its
heads, then all key inputs, then all query inputs, heads from the last to the first.  The edges into
one destination go from the latest source back, the input last (``embed`` before ``pos_embed``).
Fixed by graph indices (the same in every process), it matters: other valid orders give other circuits.

Dead ends: a destination that no longer reaches the logits (the node it feeds has no kept outgoing
edge to a destination that does) cannot change the output, so its incoming edges are removed without
being evaluated.  In this order every destination downstream of the one visited is already decided,
so the test is exact when it is made.  The opposite case -- a destination with no path from an input
-- cannot arise: everything upstream of the destination being visited is still whole.  Sources left
without a path from an input are *not* pruned at the end: such a node still delivers its output
computed from ablated inputs, which differs from its ablated value, so removing its edges would
change the circuit's function.

Batched evaluation, exactly
---------------------------
One engine call (``patching.run_circuits``) evaluates many circuits, so the candidate edges of a
destination are evaluated several at a time, as a *speculative chain*: candidate k is evaluated
against the circuit that the decisions predicted for candidates before it would leave (predicted
removed: the chain's circuit loses the edge; predicted kept: it does not).  Decisions are then made
in order; every one is exact as long as the predictions before it were right, and at the first wrong
prediction the rest of the chain is dropped and the walk restarts from the next candidate against the
true circuit.  The result is therefore the one-edge-at-a-time algorithm's (``tests/test_acdc.py``
keeps that naive version and checks that the circuits are identical).  One caveat of floating
point: the engine's logits for a circuit can differ in the last bits with the number of circuits in
the call, the circuit's place in it (BLAS kernels treat leftover rows differently) and the point the
pass resumes from (see below; ~1e-16 relative in float64), so a decision could differ from the
one-at-a-time run's only where a delta lies that close to tau.  For the same reason prefer a small positive tau to tau = 0, where edges without any
effect (delta 0 up to rounding) would be decided by rounding.  Given the same inputs and settings
the result is the same in every process.

Predictions (they set the speed, never the result): an edge's delta seen in a dropped part of a
chain, else the last decision on an edge from the same source into the same kind of destination
(q, k, v, MLP, logits: an important source tends to matter to every head's value input, say), else
the last decision.  The chain length adapts to how often chains break (at most ``speculation``).

Partial forward passes
----------------------
Every decision needs one circuit evaluated, but not a whole forward pass.  When the edges into a
destination are decided, every destination of an earlier stage (the q/k/v inputs of the same or an
earlier layer, earlier MLPs) is still whole -- it is visited later -- so the sources written before
the destination reads the residual stream deliver their clean outputs, in every candidate circuit of
every threshold.  Those are computed once per batch (``source_outputs``) and each engine call resumes
there (``patching.run_circuits_from``): candidates into the logits cost the unembedding only, into
the last layer about a quarter of a pass.  The resume point is read off the evaluated masks (the
earliest destination any of them ablates an edge into), so it is exact whatever the circuits.
Where the metric reads only some positions (``MetricBatch.read_positions``, set by ``kl_batches``:
the KL at the last position, say) the last layer's attention runs for those queries only and its
MLP, the final LayerNorm and the unembedding at those positions only.  Speculation still saves the
per-call overhead; wrongly predicted candidates (~5-15% extra on the benchmark) are its price.

Threshold sweeps
----------------
``acdc_sweep`` runs every tau at once.  All taus share the same circuit until the first decision on
which they disagree (delta between two taus); there the group splits, and each part continues with
its own circuit.  Each distinct circuit is evaluated once for all the taus that share it, and the
chains of all groups go into the same engine calls.  The result equals independent runs per tau.
Also shared: the full circuit's metric and, through ``MetricBatch``, the ablated values and the full
model's logits the metric compares against.

Scores for the common interface (higher = more important): the largest tau of the sweep keeping
the edge (``-inf``: none).  Only a nested sweep (``AcdcSweep.nested``, usual but not guaranteed)
gives back its circuits as ``scores >= tau``; ``AcdcSweep.kept`` and ``roc.roc_points_from_circuits``
give the per-threshold ROC points whatever the sweep.

Dimension names: source, circuit, batch, pos, d_model, vocab, n_edges.
"""


from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitflow.circuit import Circuit
from circuitflow.discovery.acdc_metrics import (
    ExampleLoss,
    Metric,
    MetricBatch,
    Positions,
    check_batches,
    kl_batches,
    kl_metric,
    loss_batches,
)
from circuitflow.discovery.acdc_order import VisitStep, Wiring, check_order, visit_order
from circuitflow.discovery.acdc_order import wiring as build_wiring
from circuitflow.graph import Graph
from circuitflow.patching import run_circuits_from, source_outputs

# ---- one group of thresholds sharing a circuit -------------------------------------------------


@dataclass(frozen=True)
class _Predictor:
    """What a run expects of its next candidates; predictions set the speed, never the result.

    An edge is predicted kept when the last edge from the same source into the same kind of
    destination (q, k, v, MLP, logits) was kept -- important sources tend to matter to every
    destination of a kind -- else like the last decision.  ``miss_rate`` tracks how often chains
    broke on a wrong prediction and sets the chain length.
    """

    seen: Tensor  # int8 (n_keys,): -1 not seen, 0 removed, 1 kept
    last_kept: bool = False
    miss_rate: float = 0.25

    def removes(self, key: int, hint: float | None, tau: float) -> bool:
        if hint is not None:  # a delta from a dropped part of a chain: the best estimate there is
            return hint < tau
        seen = int(self.seen[key])
        return seen == 0 if seen >= 0 else not self.last_kept

    def learn(self, key: int, kept: bool) -> _Predictor:
        seen = self.seen.clone()
        seen[key] = int(kept)
        return _Predictor(seen, kept, self.miss_rate)

    def missed(self, missed: bool) -> _Predictor:
        return _Predictor(self.seen, self.last_kept, 0.8 * self.miss_rate + 0.2 * missed)


@dataclass
class _Run:
    """Thresholds (indices, ascending in value) that share one circuit so far."""

    taus: list[int]
    members: Tensor  # bool (n_edges,)
    current: float  # the circuit's metric
    reaches: Tensor  # bool (n_destinations,): visited destinations that reach the logits
    predictor: _Predictor


@dataclass
class _Cursor:
    """A run part-way through one step's candidates: the next is ``position``; ``hints`` holds deltas
    seen in dropped parts of chains (candidate position -> delta), used only as predictions."""

    run: _Run
    position: int = 0
    hints: dict[int, float] = field(default_factory=dict)


def _reaches_logits(wiring: Wiring, step: VisitStep, run: _Run) -> bool:
    """Whether the receiver of ``step`` still reaches the logits in ``run``'s circuit (exact: every
    destination downstream has been visited)."""
    if step.feeds < 0:
        return True
    if step.direct >= 0 and not run.members[step.direct]:
        return False
    out = wiring.outgoing[step.feeds]
    return bool((run.members[out] & run.reaches[wiring.edge_dest[out]]).any())


class _Evaluator:
    """The metric of many circuits at once: sum over batches of the batch metric, float64.

    Every circuit ACDC evaluates keeps all edges into the destinations of stages before the one
    being visited (those are visited later), so the sources written before it deliver their clean
    outputs, the same in every circuit of a call: the engine resumes from those outputs, computed
    once per batch, at the earliest destination that some circuit of the call ablates an edge into
    (``run_circuits_from``).  That point is read off the masks themselves, so the values are the
    full forward's (up to rounding) whatever the circuits.  With ``read_positions`` the engine
    computes the logits there only and the metric gets them in a buffer that is 0 elsewhere.
    """

    def __init__(
        self, model: HookedTransformer, graph: Graph, wiring: Wiring, batches: Sequence[MetricBatch], circuits_per_call: int
    ):
        self.model, self.graph, self.wiring, self.batches = model, graph, wiring, batches
        self.circuits_per_call = circuits_per_call
        self.clean_outputs = [source_outputs(model, graph, batch.tokens) for batch in batches]  # (source, batch, pos, d_model)
        self.logits: list[Tensor | None] = [None] * len(batches)  # per batch, reused: 0 where the metric does not read
        self.n_evaluations = 0

    def _full_logits(self, i: int, read: Tensor) -> Tensor:
        """Batch ``i``'s logits (circuit, batch, pos, vocab) from those at its read positions only,
        written into a buffer that stays 0 elsewhere (every call writes the same positions)."""
        batch = self.batches[i]
        n = read.shape[0]
        buffer = self.logits[i]
        if buffer is None or buffer.shape[0] < n:
            buffer = read.new_zeros(max(n, self.circuits_per_call), batch.tokens.shape[0], batch.tokens.shape[1], read.shape[-1])
            self.logits[i] = buffer
        buffer[:n, :, batch.read_positions] = read
        return buffer[:n]

    def _upstream(self, masks: Tensor) -> int:
        """Sources whose outputs are clean in every circuit of ``masks`` (bool (circuit, n_edges)):
        everything before the earliest destination any of them ablates an edge into."""
        ablated_edges = ~masks.all(0)
        if not ablated_edges.any():
            return self.graph.n_sources  # the full circuit: only the logits' input is mixed
        return int(self.wiring.edge_upstream[ablated_edges].min())

    def __call__(self, members: list[Tensor]) -> list[float]:
        values = [0.0] * len(members)
        dtype = self.model.cfg.dtype
        for start in range(0, len(members), self.circuits_per_call):
            chunk = members[start : start + self.circuits_per_call]
            stacked = torch.stack(chunk)
            n_upstream = self._upstream(stacked)
            masks = stacked.to(dtype)
            for i, (batch, outputs) in enumerate(zip(self.batches, self.clean_outputs)):
                with torch.no_grad():
                    logits = run_circuits_from(
                        self.model, self.graph, batch.tokens, batch.ablated, masks.to(batch.tokens.device),
                        outputs[:n_upstream], positions=batch.read_positions, circuits_per_pass=len(masks),
                    )
                    if batch.read_positions is not None:
                        logits = self._full_logits(i, logits)
                    for c in range(len(chunk)):
                        value = batch.metric(logits[c])
                        if not isinstance(value, Tensor) or value.numel() != 1:
                            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                            raise ValueError(f"The ACDC metric must return a scalar tensor (a loss over the batch), got {shape}.")
                        values[start + c] += float(value)
        self.n_evaluations += len(members)
        return values


def _chain(
    cursor: _Cursor, step: VisitStep, wiring: Wiring, thresholds: Sequence[float], length: int
) -> tuple[list[Tensor], list[bool]]:
    """The speculative chain of a cursor: masks "predicted circuit minus candidate k" for the next
    candidates, and whether each candidate is predicted removed."""
    run = cursor.run
    tau = thresholds[run.taus[len(run.taus) // 2]]  # predict for the middle threshold of the group
    state, predictor = run.members, run.predictor
    masks, removed = [], []
    # a chain of L candidates breaks early with probability ~ L * miss_rate: keep that near 1/2
    length = max(1, min(length, int(0.5 / predictor.miss_rate)))
    for k in range(cursor.position, min(cursor.position + length, len(step.edges))):
        edge = int(step.edges[k])
        mask = state.clone()
        mask[edge] = False
        key = int(wiring.edge_kind[edge])
        predicted_removed = predictor.removes(key, cursor.hints.get(k), tau)
        masks.append(mask)
        removed.append(predicted_removed)
        if predicted_removed:
            state = mask
        predictor = predictor.learn(key, not predicted_removed)
    return masks, removed


def _walk(
    cursor: _Cursor,
    step: VisitStep,
    wiring: Wiring,
    masks: list[Tensor],
    removed: list[bool],
    values: list[float],
    thresholds: Sequence[float],
    decisions: list[int],
) -> list[_Cursor]:
    """Make the decisions of one evaluated chain, in order.  Returns the cursors that go on: the one
    following the chain (if any agreed with its predictions to its end) and one per group of taus
    that split off; a cursor past the last candidate is finished."""
    run = cursor.run
    # metric of the chain's circuit before each candidate, to turn values into deltas
    before = [run.current]
    for value, was_removed in zip(values, removed):
        before.append(value if was_removed else before[-1])
    deltas = [v - b for v, b in zip(values, before)]

    def hints_after(i: int) -> dict[int, float]:
        later = {k: d for k, d in cursor.hints.items() if k > cursor.position + i}
        later.update({cursor.position + j: deltas[j] for j in range(i + 1, len(deltas))})
        return later

    out: list[_Cursor] = []
    here = run
    for i, delta in enumerate(deltas):
        for t in here.taus:
            decisions[t] += 1
        removers = [t for t in here.taus if thresholds[t] > delta]
        keepers = [t for t in here.taus if thresholds[t] <= delta]
        missed = not (removers if removed[i] else keepers)  # no tau decided as predicted: the chain breaks
        key = int(wiring.edge_kind[step.edges[cursor.position + i]])
        predictor = here.predictor.missed(missed)
        remove_branch = _Run(removers, masks[i], values[i], run.reaches, predictor.learn(key, False))
        keep_branch = _Run(keepers, here.members, here.current, run.reaches, predictor.learn(key, True))
        followed, other = (remove_branch, keep_branch) if removed[i] else (keep_branch, remove_branch)
        if other.taus:  # these taus leave the chain: a new cursor from the next candidate
            out.append(_Cursor(other, cursor.position + i + 1, hints_after(i)))
        if missed:  # the rest of the chain was evaluated against a circuit no tau has
            return out
        here = followed
    out.append(_Cursor(here, cursor.position + len(deltas), hints_after(len(deltas))))
    return out


def _visit(
    step: VisitStep,
    runs: list[_Run],
    wiring: Wiring,
    evaluate: _Evaluator,
    thresholds: Sequence[float],
    speculation: int,
    decisions: list[int],
) -> list[_Run]:
    """Decide every candidate edge of one step for every run; returns the runs after it."""
    done: list[_Run] = []
    pending: list[_Cursor] = []
    for run in runs:
        live = _reaches_logits(wiring, step, run)
        if step.dest >= 0:
            run.reaches = run.reaches.clone()
            run.reaches[step.dest] = live
        if not live:  # a dead end: its edges cannot change the output
            run.members = run.members.clone()
            run.members[step.edges] = False
            done.append(run)
        elif len(step.edges) == 0:
            done.append(run)
        else:
            pending.append(_Cursor(run))
    while pending:
        chains = [_chain(cursor, step, wiring, thresholds, speculation) for cursor in pending]
        values = evaluate([mask for masks, _ in chains for mask in masks])
        next_pending, offset = [], 0
        for cursor, (masks, removed) in zip(pending, chains):
            chunk = values[offset : offset + len(masks)]
            for moved in _walk(cursor, step, wiring, masks, removed, chunk, thresholds, decisions):
                if moved.position >= len(step.edges):
                    done.append(moved.run)
                else:
                    next_pending.append(moved)
            offset += len(masks)
        pending = next_pending
    return sorted(done, key=lambda run: run.taus[0])


# ---- the public interface ----------------------------------------------------------------------


@dataclass(frozen=True)
class AcdcSweep:
    """ACDC's circuits for several thresholds.

    thresholds: the taus, in the order given.
    circuits:   one circuit per tau.
    metrics:    each circuit's metric (a loss, lower is better), float.
    scores:     float64 (n_edges,), higher = more important: the largest tau at which the edge is
                kept, ``-inf`` where it is kept at none.
    decisions:  per tau, the edges decided by evaluating the metric (dead ends are not counted).
    n_evaluations: circuits the engine ran in all (including the full circuit and dropped
                speculation): the sweep's cost in circuit forward passes, per batch, each from the
                visited destination's layer on (see "Partial forward passes").
    """

    thresholds: tuple[float, ...]
    circuits: tuple[Circuit, ...]
    metrics: tuple[float, ...]
    scores: Tensor
    decisions: tuple[int, ...]
    n_evaluations: int

    @property
    def kept(self) -> Tensor:
        """Bool (n_thresholds, n_edges): the circuit of each threshold, in ``thresholds`` order (for
        ``roc.is_nested`` and ``roc.roc_points_from_circuits``)."""
        return torch.stack([circuit.members for circuit in self.circuits])

    @property
    def nested(self) -> bool:
        """Whether the circuit of every larger tau is a subset of that of every smaller one (then
        ``scores >= tau`` gives back each circuit)."""
        order = sorted(range(len(self.thresholds)), key=self.thresholds.__getitem__)
        members = [self.circuits[i].members for i in order]
        return all(bool((big & ~small).sum() == 0) for small, big in itertools.pairwise(members))


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(t) for t in thresholds)
    if not values:
        raise ValueError("ACDC needs at least one threshold tau; pass e.g. thresholds=[0.01].")
    if any(not math.isfinite(t) for t in values):
        raise ValueError(f"ACDC thresholds must be finite numbers, got {list(values)}.")
    if len(set(values)) != len(values):
        raise ValueError(f"ACDC thresholds must be distinct, got {list(values)}; drop the repeated ones.")
    return values


def acdc_sweep(
    model: HookedTransformer,
    graph: Graph,
    batches: Sequence[MetricBatch],
    thresholds: Sequence[float],
    *,
    speculation: int = 8,
    circuits_per_call: int = 8,
    progress: bool = False,
    _order: Sequence[VisitStep] | None = None,
) -> AcdcSweep:
    """ACDC for every tau in ``thresholds`` (see the module docstring); the model is not changed.

    batches:     the examples and their metrics (a loss, lower is better), summed over batches.
    thresholds:  distinct finite taus; an edge is removed when the metric rises by less than tau.
    speculation: candidates of one destination evaluated ahead per group of taus (1 = one at a time;
                 any value gives the same circuits, only the speed changes).
    circuits_per_call: circuits per engine call, one pass each (memory: circuits x batch x pos x
                 vocab logits; 8 is the engine's fastest pass size on CPU).
    progress:    show a tqdm bar over the visit steps.
    _order:      for tests only: another visit order (every edge once, each destination after
                 everything downstream of it), to show that the order matters.
    """
    taus = _check_thresholds(thresholds)
    batches = check_batches(model, graph, batches)
    if speculation < 1 or circuits_per_call < 1:
        raise ValueError(f"speculation and circuits_per_call must be at least 1, got {speculation} and {circuits_per_call}.")
    layout = build_wiring(graph)
    if _order is not None:
        check_order(graph, tuple(_order))
        layout = replace(layout, steps=tuple(_order))
    evaluate = _Evaluator(model, graph, layout, batches, circuits_per_call)
    full = torch.ones(graph.n_edges, dtype=torch.bool)
    by_value = sorted(range(len(taus)), key=taus.__getitem__)
    predictor = _Predictor(torch.full((int(layout.edge_kind.max()) + 1,), -1, dtype=torch.int8))
    reaches = torch.zeros(graph.n_destinations, dtype=torch.bool)
    runs = [_Run(by_value, full, evaluate([full])[0], reaches, predictor)]
    decisions = [0] * len(taus)
    for step in tqdm(layout.steps, desc="ACDC", disable=not progress):
        runs = _visit(step, runs, layout, evaluate, taus, speculation, decisions)

    circuits: list[Circuit | None] = [None] * len(taus)
    metrics = [0.0] * len(taus)
    for run in runs:
        for t in run.taus:
            circuits[t], metrics[t] = Circuit(graph, run.members.clone()), run.current
    scores = torch.full((graph.n_edges,), -math.inf, dtype=torch.float64)
    for t in by_value:  # ascending, so the largest tau keeping an edge is written last
        scores[circuits[t].members] = taus[t]
    return AcdcSweep(taus, tuple(circuits), tuple(metrics), scores, tuple(decisions), evaluate.n_evaluations)


def acdc(
    model: HookedTransformer, graph: Graph, batches: Sequence[MetricBatch], threshold: float, **options
) -> Circuit:
    """ACDC's circuit at one threshold tau; ``options`` as in ``acdc_sweep``."""
    return acdc_sweep(model, graph, batches, [threshold], **options).circuits[0]


def acdc_scores(
    model: HookedTransformer,
    graph: Graph,
    clean: Tensor,
    ablated: Tensor,
    *,
    thresholds: Sequence[float],
    loss: ExampleLoss | None = None,
    positions: Positions = None,
    batch_size: int = 64,
    progress: bool = False,
) -> Tensor:
    """Per-edge ACDC scores for the common interface: float64 (n_edges,), higher = more important
    (the largest tau keeping the edge, ``-inf`` if none).

    clean: (n_examples, pos) tokens; ablated: (source, n_examples | 1, pos | 1, d_model);
    loss: a per-example loss (see ``loss_batches``), e.g. the behavior's ``kl_divergence`` or
    ``score``; without it, KL(full model || circuit) at ``positions`` (see ``kl_metric``).
    """
    if loss is not None and positions is not None:
        raise ValueError("Give either a loss or positions for the default KL metric, not both; a loss picks its own positions.")
    if loss is None:
        batches = kl_batches(model, graph, clean, ablated, positions=positions, batch_size=batch_size)
    else:
        batches = loss_batches(model, graph, clean, ablated, loss, batch_size=batch_size)
    return acdc_sweep(model, graph, batches, thresholds, progress=progress).scores


__all__ = ["AcdcSweep", "ExampleLoss", "Metric", "MetricBatch", "Positions", "VisitStep", "acdc", "acdc_scores",
           "acdc_sweep", "kl_batches", "kl_metric", "loss_batches", "visit_order"]
