"""High-level causal models for SIIT (InterpBench, Gupta et al. 2024): the "H" that a trained transformer must implement.

A ``Case`` is a task on fixed-length token sequences plus a high-level causal model of it whose nodes
can be intervened on: ``case.evaluate(inputs, overrides)`` runs the model on one input (a tuple of
vocabulary values, BOS excluded) with the values of the nodes named in ``overrides`` replaced, and
returns every node's value (one value per position, a tuple).  An interchange intervention on node
``h`` is ``case.evaluate(base, {h: case.evaluate(source)[h]})[case.output_node]``.

Each high-level node also carries where it lives in the low-level transformer (``HighLevelNode``:
``block``, ``layer``) and which nodes it reads in which slot (``reads``: the query, key and value of
a head, the input of an MLP); ``models/siit.py`` turns that into the correspondence to heads and MLPs and
the ground-truth circuit.

Token ids: BOS is 0 and vocabulary value ``case.vocab[i]`` is id ``i + 1``.  Every input is exactly
``case.seq_len`` tokens after BOS (fixed length, as the datasets need; see "Caveat" below).

The cases themselves: ``siit_cases.py`` (the registry, the IOI-like case, datasets and scores) and
``rasp_cases.py`` (the cases made from tracr's RASP programs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal

Block = Literal["head", "mlp", "head+mlp"]
Slot = Literal["q", "k", "v", "mlp"]
INPUT = "input"  # the token and position embeddings, as a parent in ``HighLevelNode.reads``
BOS_ID = 0
MAX_HEADS_PER_LAYER = 4  # the smallest low-level width SIIT allows (InterpBench, Gupta et al. 2024)
Inputs = tuple  # one input: vocabulary values, BOS excluded
Values = dict[str, tuple]  # node name -> one value per position


@dataclasses.dataclass(frozen=True)
class HighLevelNode:
    """A node of the high-level model and where its low-level image goes.

    block: "head" (one attention head), "mlp" (the layer's MLP) or "head+mlp" (a head and the MLP of
    the same layer, for tracr's SelectorWidth).  reads: (slot, parents) pairs; a slot is "q", "k",
    "v" (of the head) or "mlp"; a parent is another node's name or ``INPUT``.
    """

    name: str
    block: Block
    layer: int
    reads: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def parents(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for _, parents in self.reads for p in parents))


@dataclasses.dataclass(frozen=True)
class Case:
    """A task and its high-level causal model (see the module docstring).

    vocab: the input values in id order (id = index + 1; BOS is 0).  output_values: the categorical
    outputs in output-id order, or None for one numerical output.  output_positions: the positions
    of the BOS-prefixed sequence whose outputs are trained and scored; the target at position p is
    the output node's value at p - 1.  nodes: topologically ordered.  evaluate(inputs, overrides):
    every node's value.  inputs: every input of the task, in a fixed order.
    """

    name: str
    vocab: tuple
    seq_len: int
    output_values: tuple | None
    output_positions: tuple[int, ...]
    nodes: tuple[HighLevelNode, ...]
    output_node: str
    causal: bool
    evaluate: Callable[[Inputs, Mapping[str, tuple]], Values]
    inputs: tuple[Inputs, ...]

    @property
    def categorical(self) -> bool:
        return self.output_values is not None

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.nodes)

    @property
    def n_layers(self) -> int:
        return 1 + max(node.layer for node in self.nodes)

    def node(self, name: str) -> HighLevelNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ValueError(f"Case {self.name} has no high-level node {name!r}; its nodes: {', '.join(self.node_names)}.")

    def encode(self, inputs: Inputs) -> list[int]:
        """Token ids of one input, BOS first."""
        ids = {value: i + 1 for i, value in enumerate(self.vocab)}
        return [BOS_ID] + [ids[value] for value in inputs]

    def decode(self, token_ids: list[int]) -> Inputs:
        return tuple(self.vocab[i - 1] for i in token_ids[1:])

    def output(self, inputs: Inputs, overrides: Mapping[str, tuple] | None = None) -> tuple:
        return self.evaluate(inputs, overrides or {})[self.output_node]

    def intervene(self, base: Inputs, source: Inputs, node: str) -> tuple:
        """H's output on ``base`` with ``node`` taking its value on ``source``."""
        self.node(node)
        return self.output(base, {node: self.evaluate(source, {})[node]})

    def labels(self, output: tuple) -> list:
        """The training targets of one output: output ids (categorical) or floats at ``output_positions``."""
        values = [output[p - 1] for p in self.output_positions]
        if not self.categorical:
            return [float(v) for v in values]
        unknown = [v for v in values if v not in self.output_values]
        if unknown:
            raise ValueError(f"Case {self.name} produced outputs {unknown} outside its output values {list(self.output_values)}.")
        return [self.output_values.index(v) for v in values]
