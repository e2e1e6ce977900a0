"""ACDC's metric: examples in batches with a loss per batch (Conmy et al. 2023; the discovery papers).

``MetricBatch`` holds one batch's tokens, ablation values and metric (a loss, lower is better);
ACDC sums the batches' metrics.  ``kl_batches`` builds the default metric, KL(full model || circuit)
at the positions the behavior reads; ``loss_batches`` a per-example loss such as the tracr MSE
against the full model (the ACDC paper's task metric for tracr).

Dimension names: source, batch, pos, d_model, vocab.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitflow.ablation import select_examples
from circuitflow.graph import Graph
from circuitflow.metrics import kl_divergence
from circuitflow.patching import check_model, run_circuits

# metric(logits (batch, pos, vocab)) -> scalar tensor; a loss, lower is better
Metric = Callable[[Tensor], Tensor]
Positions = int | Sequence[int] | Tensor | None
# loss(circuit_logits (batch, pos, vocab), model_logits (batch, pos, vocab), example indices (batch,))
# -> (batch,) per-example loss, lower is better: a behavior's ``score`` or ``kl_divergence``
ExampleLoss = Callable[[Tensor, Tensor, Tensor], Tensor]


# ---- metrics and batches -----------------------------------------------------------------------


@dataclass(frozen=True)
class MetricBatch:
    """One batch of examples with its metric; ACDC's metric is the sum of the batches' metrics.

    tokens:  (batch, pos) token ids.
    ablated: (source, batch | 1, pos | 1, d_model) what ablated edges carry (``ablation_values``).
    metric:  logits (batch, pos, vocab) -> scalar, a loss (lower is better).  To average over all
             examples of several batches, each batch's metric sums over its examples and divides by
             the total number of examples (``kl_metric(..., n_total=...)`` does).
    read_positions: long (n,) the positions the metric reads, or None (default) for every position:
             ACDC then computes the logits only there (the last layer's attention for those queries,
             its MLP and the unembedding at those positions) and hands the metric logits that are 0
             at every other position.  ``kl_batches`` sets it from its ``positions``.
    Batches may differ in length (tracr inputs of length 1..5 are five batches).
    """

    tokens: Tensor
    ablated: Tensor
    metric: Metric
    read_positions: Tensor | None = None


def _selected_positions(positions: Positions, batch: int, n_pos: int) -> tuple[Tensor, Tensor]:
    """(example, position) index pairs selected by ``positions``, each a long (n_selected,) tensor."""
    examples = torch.arange(batch)
    if positions is None:
        return examples.repeat_interleave(n_pos), torch.arange(n_pos).repeat(batch)
    if isinstance(positions, int):
        if not -n_pos <= positions < n_pos:
            raise ValueError(f"Position {positions} is outside inputs of {n_pos} positions; give a position in [-{n_pos}, {n_pos}).")
        return examples, torch.full((batch,), positions % n_pos)
    positions = torch.as_tensor(positions)
    if positions.dtype == torch.bool:
        if positions.shape != (batch, n_pos):
            raise ValueError(f"A boolean position mask must have shape (batch, pos) = {(batch, n_pos)}, got {tuple(positions.shape)}.")
        if not positions.any(1).all():
            raise ValueError("The position mask selects no position for some example; select at least one per example.")
        return positions.nonzero(as_tuple=True)
    if positions.dim() != 1 or positions.shape[0] != batch or positions.is_floating_point():
        raise ValueError(
            f"positions must be None, an int, a long tensor of one position per example ({batch},) or a bool "
            f"mask (batch, pos); got {positions.dtype} of shape {tuple(positions.shape)}."
        )
    if ((positions < -n_pos) | (positions >= n_pos)).any():
        raise ValueError(f"Some positions fall outside inputs of {n_pos} positions; give positions in [-{n_pos}, {n_pos}).")
    return examples, positions.long() % n_pos


def kl_metric(model_logits: Tensor, positions: Positions = None, *, n_total: int | None = None) -> Metric:
    """ACDC's default metric: KL(full model || circuit), a loss (lower is better, 0 for the full model).

    model_logits: (batch, pos, vocab) the full model's logits on the batch.
    positions:    where the behavior is read: None (every position), an int (the same position for
                  every example, e.g. -1), a long (batch,) tensor (one position per example) or a bool
                  (batch, pos) mask.
    n_total:      the number of examples over all batches (default: this batch's size).
    Returns metric(logits (batch, pos, vocab)) -> scalar: the sum over examples of the mean KL over
    the example's selected positions, divided by ``n_total``.
    """
    if model_logits.dim() != 3:
        raise ValueError(f"model_logits must be (batch, pos, vocab), got shape {tuple(model_logits.shape)}.")
    batch, n_pos, _ = model_logits.shape
    examples, where = _selected_positions(positions, batch, n_pos)
    counts = torch.bincount(examples, minlength=batch).to(model_logits.dtype)
    weights = 1.0 / (counts[examples] * (n_total or batch))
    reference = model_logits.detach()[examples, where]  # (n_selected, vocab)

    def metric(logits: Tensor) -> Tensor:
        if logits.shape != model_logits.shape:
            raise ValueError(f"The KL metric was built for logits of shape {tuple(model_logits.shape)}, got {tuple(logits.shape)}.")
        return (kl_divergence(reference, logits[examples, where]) * weights).sum()

    return metric


def _split(
    model: HookedTransformer, graph: Graph, tokens: Tensor, ablated: Tensor, batch_size: int
) -> list[tuple[slice, Tensor, Tensor, Tensor]]:
    """(rows, tokens, ablated, full model logits) per batch; the full model is the engine's full
    circuit run alone, as ACDC evaluates it, so the full circuit's KL is exactly 0."""
    check_model(model, graph)
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (n_examples, pos), got shape {tuple(tokens.shape)}.")
    if ablated.dim() != 4 or ablated.shape[1] not in (1, tokens.shape[0]):
        raise ValueError(f"ablated must be (source, n_examples={tokens.shape[0]} or 1, pos or 1, d_model), got {tuple(ablated.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    n_examples = tokens.shape[0]
    full = torch.ones(graph.n_edges, dtype=model.cfg.dtype, device=tokens.device)
    out = []
    for start in range(0, n_examples, batch_size):
        rows = slice(start, min(start + batch_size, n_examples))
        batch_ablated = select_examples(ablated, rows)
        with torch.no_grad():
            model_logits = run_circuits(model, graph, tokens[rows], batch_ablated, full)
        out.append((rows, tokens[rows], batch_ablated, model_logits))
    return out


def kl_batches(
    model: HookedTransformer,
    graph: Graph,
    tokens: Tensor,
    ablated: Tensor,
    *,
    positions: Positions = None,
    batch_size: int = 64,
    n_total: int | None = None,
) -> list[MetricBatch]:
    """Split a dataset into ``MetricBatch`` es with the KL metric averaged over all its examples.

    tokens: (n_examples, pos); ablated: (source, n_examples | 1, pos | 1, d_model); positions as in
    ``kl_metric`` for the whole dataset (a per-example tensor or mask is split with the batches);
    n_total: the examples over all lists of batches to be concatenated (default: n_examples).
    The full circuit's metric is exactly 0.  Each batch's ``read_positions`` are the positions
    ``positions`` selects in it (None for every position).
    """
    n_total = n_total or tokens.shape[0]
    batches = []
    for rows, batch_tokens, batch_ablated, model_logits in _split(model, graph, tokens, ablated, batch_size):
        batch_positions = positions[rows] if isinstance(positions, Tensor) else positions
        metric = kl_metric(model_logits, batch_positions, n_total=n_total)
        read = None
        if batch_positions is not None:  # the positions the metric reads, for ACDC's engine calls
            read = _selected_positions(batch_positions, *batch_tokens.shape)[1].unique()
        batches.append(MetricBatch(batch_tokens, batch_ablated, metric, read))
    return batches


def loss_batches(
    model: HookedTransformer,
    graph: Graph,
    tokens: Tensor,
    ablated: Tensor,
    loss: ExampleLoss,
    *,
    batch_size: int = 64,
    n_total: int | None = None,
) -> list[MetricBatch]:
    """Split a dataset into ``MetricBatch`` es whose metric is a per-example loss averaged over all
    examples: a behavior's ``score`` (the tracr MSE against the full model, the ACDC paper's task
    metric for tracr) or its ``kl_divergence``.

    tokens: (n_examples, pos); ablated: (source, n_examples | 1, pos | 1, d_model);
    loss(circuit_logits, model_logits, example indices (batch,)) -> (batch,), lower is better, the
    indices into ``tokens``' rows (offset by nothing: index the behavior's examples with them);
    n_total: the examples over all lists of batches to be concatenated (default: n_examples).
    """
    n_total = n_total or tokens.shape[0]
    batches = []
    for rows, batch_tokens, batch_ablated, model_logits in _split(model, graph, tokens, ablated, batch_size):
        index = torch.arange(rows.start, rows.stop)

        def metric(logits: Tensor, model_logits: Tensor = model_logits, index: Tensor = index) -> Tensor:
            return loss(logits, model_logits, index).sum() / n_total

        batches.append(MetricBatch(batch_tokens, batch_ablated, metric))
    return batches


def check_batches(model: HookedTransformer, graph: Graph, batches: Sequence[MetricBatch]) -> list[MetricBatch]:
    """The batches as a list, each checked against the model and graph (one clear error per problem)."""
    check_model(model, graph)
    batches = list(batches)
    if not batches or not all(isinstance(b, MetricBatch) for b in batches):
        raise ValueError("ACDC needs a non-empty list of MetricBatch(tokens, ablated, metric); build one with kl_batches.")
    for i, b in enumerate(batches):
        if b.tokens.dim() != 2:
            raise ValueError(f"Batch {i}: tokens must be (batch, pos), got shape {tuple(b.tokens.shape)}.")
        batch, n_pos = b.tokens.shape
        shape = tuple(b.ablated.shape)
        if (
            b.ablated.dim() != 4 or shape[0] != graph.n_sources or shape[1] not in (1, batch)
            or shape[2] not in (1, n_pos) or shape[3] != model.cfg.d_model
        ):
            raise ValueError(
                f"Batch {i}: ablated must be (source={graph.n_sources}, batch {batch} or 1, pos {n_pos} or 1, "
                f"d_model={model.cfg.d_model}), got {shape}; build it with patching.ablation_values."
            )
        if not callable(b.metric):
            raise ValueError(f"Batch {i}: metric must be a callable logits -> scalar loss.")
        read = b.read_positions
        if read is not None and (
            not isinstance(read, Tensor) or read.dim() != 1 or read.is_floating_point() or len(read) == 0
            or ((read < -n_pos) | (read >= n_pos)).any() or len((read % n_pos).unique()) != len(read)
        ):
            raise ValueError(
                f"Batch {i}: read_positions must be None or a long (n,) tensor of distinct positions in "
                f"[-{n_pos}, {n_pos}), got {read!r}."
            )
    return batches
