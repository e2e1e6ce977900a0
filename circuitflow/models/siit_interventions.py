"""The correspondence between a SIIT case's high-level model H and a low-level TransformerLens
model L (``siit.py`` trains L through it), and interchange interventions on L.

``correspondence``: each high-level node maps to one or two low-level nodes (an attention head
``a{layer}.{head}``, the MLP ``m{layer}``) at the node's layer; ``ground_truth_edges`` is the image of
H's graph under it.  ``HighLevelTargets`` holds H's outputs (and its intervened outputs) as training
targets.  A head is patched through its ``hook_z`` (at every position; the same as patching its
result, since ``W_O`` is linear), an MLP through ``hook_post`` (``capture``, ``patched``).
Categorical outputs use cross-entropy, numerical ones mean squared error, and a numerical output is
correct within ``NUMERICAL_TOLERANCE`` (``output_loss``, ``correct``, ``same_output``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.behaviors.high_level import INPUT, Case
from circuitflow.graph import Graph

# Distinct numerical outputs of one position differ by >= 0.2 in every numerical case (fractions k/i,
# i <= 5), so within half of that an output rounds to the right value.
NUMERICAL_TOLERANCE = 0.1


# ---- the correspondence and the ground truth -----------------------------------------------------


def correspondence(case: Case) -> dict[str, tuple[str, ...]]:
    """High-level node -> its low-level nodes: heads numbered in node order within each layer."""
    next_head: dict[int, int] = {}
    image = {}
    for node in case.nodes:
        parts = []
        if node.block in ("head", "head+mlp"):
            head = next_head.get(node.layer, 0)
            next_head[node.layer] = head + 1
            parts.append(f"a{node.layer}.{head}")
        if node.block in ("mlp", "head+mlp"):
            parts.append(f"m{node.layer}")
        image[node.name] = tuple(parts)
    return image


def low_level_nodes(cfg: HookedTransformerConfig) -> tuple[str, ...]:
    """Every head and MLP of the model, in forward order."""
    nodes = []
    for layer in range(cfg.n_layers):
        nodes += [f"a{layer}.{h}" for h in range(cfg.n_heads)] + [f"m{layer}"]
    return tuple(nodes)


def non_circuit_nodes(case: Case, cfg: HookedTransformerConfig) -> tuple[str, ...]:
    """The low-level nodes outside the image of the correspondence: the strict loss's nodes."""
    image = {part for parts in correspondence(case).values() for part in parts}
    return tuple(n for n in low_level_nodes(cfg) if n not in image)


def ground_truth_edges(case: Case, cfg: HookedTransformerConfig) -> list[str]:
    """The circuit: for every high-level edge parent -> node, an edge from the parent's writer (its
    head, or its MLP for a head+mlp node; ``input`` for the input) to where the node reads it (its
    head's q/k/v, its MLP); a head+mlp node's head -> its MLP; the output node's writer -> logits.
    Names and order of ``Graph.from_config(cfg)``."""
    image = correspondence(case)
    graph = Graph.from_config(cfg)

    def writer(name: str) -> str:
        return "input" if name == INPUT else image[name][-1]

    edges = set()
    for node in case.nodes:
        head = image[node.name][0]
        for slot, parents in node.reads:
            destination = f"m{node.layer}" if slot == "mlp" else f"{head}.{slot}"
            edges.update(f"{writer(p)} -> {destination}" for p in parents)
        if node.block == "head+mlp":
            edges.add(f"{head} -> m{node.layer}")
    edges.add(f"{writer(case.output_node)} -> logits")
    unknown = sorted(edges - set(graph.edge_names))
    if unknown:  # pragma: no cover - the placement keeps parents before children
        raise ValueError(f"The ground truth of {case.name} has edges the graph lacks: {unknown}.")
    return [e for e in graph.edge_names if e in edges]


# ---- high-level targets --------------------------------------------------------------------------


class HighLevelTargets:
    """H's targets for every input of a case, and for interchange interventions between them
    (memoised: an intervened output depends only on the base and the source's value of the node)."""

    def __init__(self, case: Case):
        self.case = case
        self.tokens = torch.tensor([case.encode(x) for x in case.inputs], dtype=torch.long)
        self.values = [case.evaluate(x, {}) for x in case.inputs]
        dtype = torch.long if case.categorical else torch.float32
        self.labels = torch.tensor([case.labels(v[case.output_node]) for v in self.values], dtype=dtype)
        self._memo: dict[tuple, list] = {}

    def intervened(self, base: Tensor, source: Tensor, node: str) -> Tensor:
        """(batch, n_output_positions) targets of H(base) with ``node`` from H(source)."""
        case, rows = self.case, []
        for b, s in zip(base.tolist(), source.tolist()):
            value = self.values[s][node]
            key = (b, node, value)
            if key not in self._memo:
                self._memo[key] = case.labels(case.output(case.inputs[b], {node: value}))
            rows.append(self._memo[key])
        return torch.tensor(rows, dtype=self.labels.dtype)


# ---- patching the low-level model ----------------------------------------------------------------


def _hook_point(node: str) -> tuple[str, int | None]:
    """The hook carrying a low-level node's activation, and the head index for a head."""
    if node.startswith("a"):
        layer, head = node[1:].split(".")
        return f"blocks.{layer}.attn.hook_z", int(head)
    return f"blocks.{node[1:]}.mlp.hook_post", None


def capture(model: HookedTransformer, tokens: Tensor, nodes: Sequence[str]) -> dict[str, Tensor]:
    """The activations of ``nodes`` on ``tokens`` (no gradient): a head's z (batch, pos, d_head), an
    MLP's post-activation (batch, pos, d_mlp)."""
    stored: dict[str, Tensor] = {}

    def keep(node: str):
        def hook(activation: Tensor, hook) -> None:
            _, head = _hook_point(node)
            stored[node] = (activation[:, :, head] if head is not None else activation).detach().clone()

        return hook

    with torch.no_grad(), model.hooks(fwd_hooks=[(_hook_point(n)[0], keep(n)) for n in dict.fromkeys(nodes)]):
        model(tokens)
    return stored


@contextlib.contextmanager
def patched(model: HookedTransformer, patches: Sequence[tuple[str, slice, Tensor]]) -> Iterator[None]:
    """Within the block, each (node, rows, values) replaces the node's activation at batch rows
    ``rows`` (all positions) with ``values``; the hooks are removed on exit, exception or not."""

    def replace(node: str, rows: slice, values: Tensor):
        _, head = _hook_point(node)

        def hook(activation: Tensor, hook) -> Tensor:
            activation = activation.clone()
            if head is None:
                activation[rows] = values
            else:
                activation[rows, :, head] = values
            return activation

        return hook

    with model.hooks(fwd_hooks=[(_hook_point(n)[0], replace(n, rows, v)) for n, rows, v in patches]):
        yield


def output_loss(case: Case, logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy (categorical) or mean squared error (numerical) at the output positions."""
    outputs = logits[:, list(case.output_positions)]
    if case.categorical:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), labels.reshape(-1))
    return F.mse_loss(outputs[..., 0], labels)


def correct(case: Case, logits: Tensor, labels: Tensor) -> Tensor:
    """(batch, n_output_positions) booleans: the output matches the label."""
    outputs = logits[:, list(case.output_positions)]
    if case.categorical:
        return outputs.argmax(-1) == labels
    return (outputs[..., 0] - labels).abs() <= NUMERICAL_TOLERANCE


def same_output(case: Case, logits: Tensor, other: Tensor) -> Tensor:
    """(batch,) booleans: two runs give the same output (argmax, or within the tolerance) at every
    output position."""
    a, b = logits[:, list(case.output_positions)], other[:, list(case.output_positions)]
    if case.categorical:
        return (a.argmax(-1) == b.argmax(-1)).all(-1)
    return ((a[..., 0] - b[..., 0]).abs() <= NUMERICAL_TOLERANCE).all(-1)
