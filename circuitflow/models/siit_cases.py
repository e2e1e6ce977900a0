"""High-level causal models for SIIT (REFERENCE.md 8): the "H" that a trained transformer must implement.

A ``Case`` is a task on fixed-length token sequences plus a high-level causal model of it whose nodes
can be intervened on: ``case.evaluate(inputs, overrides)`` runs the model on one input (a tuple of
vocabulary values, BOS excluded) with the values of the nodes named in ``overrides`` replaced, and
returns every node's value (one value per position, a tuple).  An interchange intervention on node
``h`` is ``case.evaluate(base, {h: case.evaluate(source)[h]})[case.output_node]``.

Each high-level node also carries where it lives in the low-level transformer (``HighLevelNode``:
``block``, ``layer``) and which nodes it reads in which slot (``reads``: the query, key and value of
a head, the input of an MLP); ``siit.py`` turns that into the correspondence to heads and MLPs and
the ground-truth circuit.

Token ids: BOS is 0 and vocabulary value ``case.vocab[i]`` is id ``i + 1``.  Every input is exactly
``case.seq_len`` tokens after BOS (fixed length, as the datasets need; see "Caveat" below).

Tracr cases (``TRACR_CASES``), each a RASP program from ``tracr.compiler.lib`` on ``rasp.tokens``:

``reverse``        ``make_reverse``, vocab {1, 2, 3}, 5 tokens (243 inputs).
``frac_prevs``     ``make_frac_prevs(tokens == "x")``, vocab {w, x, y, z}, 5 tokens (1,024), numerical.
``sort_unique``    ``make_sort_unique(tokens, tokens)``, 5 distinct tokens of {1..6} (720).
``sort``           ``make_sort(tokens, tokens, max_seq_len=5, min_key=1)``, vocab {1..4} (1,024).
``hist``           ``make_hist()``, vocab {a, b, c}, 5 tokens (243).
``pair_balance``   ``make_pair_balance(tokens, "(", ")")``, vocab {(, ), x}, 5 tokens (243), numerical.
``count_less_freq`` ``make_count_less_freq(2)``, vocab {a, b, c}, 5 tokens (243).

The high-level nodes are the program's SOps that tracr compiles into a block: ``Map`` and
``SequenceMap`` into an MLP, ``Aggregate`` into a head, ``SelectorWidth`` into a head and the MLP
after it ("head+mlp").  ``Select``s are not nodes: an ``Aggregate``'s selector's queries and keys
are what its head reads in its query and key.  Layers are tracr's own allocation
(``craft_graph_to_model._allocate_modules_to_layers``), except that one low-level node cannot hold
two high-level nodes: a second MLP node in one layer, or a fifth head node, moves to the next layer
where it fits (pair_balance: ``bools_close`` moves from MLP 0 to MLP 1 and what follows it one layer
down).  The program is evaluated by ``evaluate_rasp``, a walk of the RASP graph with tracr's own
semantics (``rasp.DefaultRASPEvaluator``) that takes overrides.  Node names are the SOps' names
without tracr's process-wide counters (``opp_idx-1``, ``sequence_map``), so they are stable.

Constant nodes are folded: with fixed-length inputs (as the datasets need; a variable-length task
would need padding, and an intervention between inputs of different lengths has no positionwise
meaning) some SOps take the same value on every input -- reverse's ``length``, ``opp_idx`` and
``opp_idx-1`` are functions of the position alone.  Intervening on such a node changes nothing in H,
so no experiment on the trained model can tell whether its image computes it; and the position is in
the input embedding, which a reader can use directly.  Such SOps are therefore not nodes: they count
as input, like tracr's constants, and their readers read ``INPUT`` (reverse is then one head reading
its query, key and value from the input).  For the same reason tracr's ``make_length`` is left out.

The IOI-like case (``ioi``), hand-written; 7 tokens after BOS::

    pos   1    2    3          4      5          6      7
          n1   n2   m3         x4     m5         x6     END

``n1 != n2`` are names; exactly one of the markers ``m3``, ``m5`` is ``said`` and the other is a
filler (``and``/``then``); the name after ``said`` is the subject S, one of n1, n2; the other slot
holds any name (a distractor: possibly n1 or n2 again).  The answer, at END, is the indirect object,
the name of n1, n2 that is not S.  8 names, 3,584 inputs.  High-level nodes (per position values):

``previous_token``  (a0.0)  PT[p] = token[p-1];                            reads q, k, v: input
``duplicate_token`` (a0.1)  DT[p] = token[p] occurs at an earlier position; reads q, k, v: input
``s_inhibition``    (a1.0)  SI[END] = token[q] for the first q in (4, 6) with DT[q] and PT[q] == said
                            (None if no such q); reads q: input, k: PT and DT, v: input
``name_mover``      (a2.0)  NM[END] = n1 if SI != n1 else n2: the output;  reads q: SI, k, v: input
S-inhibition needs both: the distractor slot can hold a duplicated name too (DT alone is ambiguous)
and ``said`` alone does not say whether its name is n1 or n2.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from torch import Tensor

Block = Literal["head", "mlp", "head+mlp"]
Slot = Literal["q", "k", "v", "mlp"]
INPUT = "input"  # the token and position embeddings, as a parent in ``HighLevelNode.reads``
BOS_ID = 0
MAX_HEADS_PER_LAYER = 4  # the smallest low-level width SIIT allows (REFERENCE.md 8)
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


# ---- evaluating RASP with overrides --------------------------------------------------------------


def _rasp():
    from tracr.rasp import rasp

    return rasp


def evaluate_rasp(program: Any, xs: Inputs, overrides: Mapping[int, tuple] | None = None) -> dict[int, Any]:
    """Every expression's value on ``xs``, keyed by ``expr.unique_id``, with the expressions whose ids
    are in ``overrides`` taking those values instead (their children are still evaluated, but nothing
    downstream reads them through the overridden node).  Same semantics as tracr's
    ``DefaultRASPEvaluator`` (None propagates through maps; an empty aggregate gives the default; a
    numeric aggregate of several values is their mean)."""
    rasp = _rasp()
    overrides = overrides or {}
    values: dict[int, Any] = {}

    def walk(expr):
        key = expr.unique_id
        if key in values:
            return values[key]
        if key in overrides:
            for child in expr.children:  # upstream values are still reported
                walk(child)
            value = tuple(overrides[key])
        elif isinstance(expr, rasp.TokensType):
            value = tuple(xs)
        elif isinstance(expr, rasp.IndicesType):
            value = tuple(range(len(xs)))
        elif isinstance(expr, rasp.LengthType):
            value = (len(xs),) * len(xs)
        elif isinstance(expr, rasp.Map):
            value = tuple(expr.f(x) if x is not None else None for x in walk(expr.inner))
        elif isinstance(expr, rasp.SequenceMap):  # LinearSequenceMap included
            value = tuple(expr.f(x, y) if x is not None and y is not None else None for x, y in zip(walk(expr.fst), walk(expr.snd)))
        elif isinstance(expr, rasp.Full):
            value = (expr.fill,) * len(xs)
        elif isinstance(expr, rasp.ConstantSOp):
            value = tuple(expr.value)
        elif isinstance(expr, rasp.SelectorWidth):
            value = tuple(sum(row) for row in walk(expr.selector))
        elif isinstance(expr, rasp.Aggregate):
            sop = walk(expr.sop)
            value = tuple(_mean([v for s, v in zip(row, sop) if s], expr.default) for row in walk(expr.selector))
        elif isinstance(expr, rasp.Select):
            keys, queries = walk(expr.keys), walk(expr.queries)
            value = tuple(tuple(bool(expr.predicate(k, q)) for k in keys) for q in queries)
        elif isinstance(expr, rasp.SelectorAnd):
            value = tuple(tuple(a and b for a, b in zip(r, s)) for r, s in zip(walk(expr.fst), walk(expr.snd)))
        elif isinstance(expr, rasp.SelectorOr):
            value = tuple(tuple(a or b for a, b in zip(r, s)) for r, s in zip(walk(expr.fst), walk(expr.snd)))
        elif isinstance(expr, rasp.SelectorNot):
            value = tuple(tuple(not a for a in r) for r in walk(expr.inner))
        else:
            raise NotImplementedError(f"evaluate_rasp does not handle {type(expr).__name__} ({expr.label}).")
        values[key] = value
        return value

    walk(program)
    return values


def _mean(selected: list, default: Any) -> Any:
    if not selected:
        return default
    if len(selected) == 1:
        return selected[0]
    if all(isinstance(x, (int, bool, float)) for x in selected):
        return sum(selected) / len(selected)
    raise ValueError(f"A categorical aggregate selected several values {selected}; RASP leaves that undefined.")


# ---- tracr cases ---------------------------------------------------------------------------------


def _program(name: str) -> Any:
    from tracr.compiler import lib

    rasp = _rasp()
    tokens = rasp.tokens
    if name == "reverse":
        return lib.make_reverse(tokens)
    if name == "frac_prevs":
        return lib.make_frac_prevs((tokens == "x").named("is_x"))
    if name == "sort_unique":
        return lib.make_sort_unique(tokens, tokens)
    if name == "sort":
        return lib.make_sort(tokens, tokens, max_seq_len=5, min_key=1)
    if name == "hist":
        return lib.make_hist()
    if name == "pair_balance":
        return lib.make_pair_balance(tokens, "(", ")")
    if name == "count_less_freq":
        return lib.make_count_less_freq(2)
    raise ValueError(f"No tracr program {name!r}.")  # pragma: no cover - TRACR_CASES lists them


# name -> (vocabulary, tokens per input, inputs must be distinct tokens)
TRACR_CASES: dict[str, tuple[tuple, int, bool]] = {
    "reverse": ((1, 2, 3), 5, False),
    "frac_prevs": (("w", "x", "y", "z"), 5, False),
    "sort_unique": ((1, 2, 3, 4, 5, 6), 5, True),
    "sort": ((1, 2, 3, 4), 5, False),
    "hist": (("a", "b", "c"), 5, False),
    "pair_balance": (("(", ")", "x"), 5, False),
    "count_less_freq": (("a", "b", "c"), 5, False),
}


def tracr_layers(program: Any, vocab: set, max_seq_len: int) -> tuple[dict[int, int], set]:
    """Tracr's sublayer per model-block expression (``unique_id`` -> 0 attn 0, 1 MLP 0, 2 attn 1, ...),
    as ``compile_rasp_to_model`` allocates it, without assembling weights (milliseconds); and the
    set of values tracr's basis inference gives the program's output."""
    from tracr.compiler import basis_inference, craft_graph_to_model, expr_to_craft_graph, nodes, rasp_to_graph
    from tracr.craft import bases

    extracted = rasp_to_graph.extract_rasp_graph(program)
    graph = extracted.graph
    basis_inference.infer_bases(graph, extracted.sink, vocab, max_seq_len)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(graph, bos_dir=bases.BasisDirection(_rasp().tokens.label, "BOS"), mlp_exactness=100)
    allocation = craft_graph_to_model._allocate_modules_to_layers(graph, extracted.sources)
    layers = {graph.nodes[node_id][nodes.EXPR].unique_id: sublayer for node_id, sublayer in allocation.items()}
    return layers, set(graph.nodes[extracted.sink[nodes.ID]].get(nodes.VALUE_SET, set()))


def _block_of(expr: Any) -> Block | None:
    rasp = _rasp()
    if isinstance(expr, rasp.SelectorWidth):
        return "head+mlp"
    if isinstance(expr, rasp.Aggregate):
        return "head"
    if isinstance(expr, (rasp.Map, rasp.SequenceMap)):
        return "mlp"
    return None


def _stable_name(expr: Any, taken: set[str]) -> str:
    base = re.sub(r"_\d+$", "", expr.label)  # drop tracr's process-wide counter
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def _sop_parents(expr: Any, block_exprs: dict[int, str]) -> str:
    """The high-level parent an SOp stands for: a block node's name, or INPUT for tokens/indices.
    Non-block SOps (constants) count as input."""
    return block_exprs.get(expr.unique_id, INPUT)


def _reads(expr: Any, block_exprs: dict[int, str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    rasp = _rasp()
    if isinstance(expr, (rasp.Aggregate, rasp.SelectorWidth)):
        selector = expr.selector
        if not isinstance(selector, rasp.Select):
            raise NotImplementedError(f"Only plain Select selectors are supported, not {type(selector).__name__}.")
        q = (_sop_parents(selector.queries, block_exprs),)
        k = (_sop_parents(selector.keys, block_exprs),)
        # A selector-width head attends to BOS as well, so its value reads the input (BOS-ness).
        v = (_sop_parents(expr.sop, block_exprs),) if isinstance(expr, rasp.Aggregate) else (INPUT,)
        return (("q", q), ("k", k), ("v", v))
    return (("mlp", tuple(dict.fromkeys(_sop_parents(child, block_exprs) for child in expr.children))),)


def _place(kinds: dict[str, Block], sublayers: dict[str, int], parents: dict[str, tuple[str, ...]], order: list[str]) -> dict[str, int]:
    """Each node's sublayer: tracr's where it fits, else the next one of the same kind where it does
    (at most MAX_HEADS_PER_LAYER heads and one MLP node per layer, after all its parents)."""
    placed: dict[str, int] = {}
    heads: dict[int, int] = {}
    mlps: set[int] = set()

    def end(name: str) -> int:  # the last sublayer a node occupies
        return placed[name] + (1 if kinds[name] == "head+mlp" else 0)

    for name in order:
        kind = kinds[name]
        wants_attn = kind != "mlp"
        s = max([sublayers[name]] + [end(p) + 1 for p in parents[name] if p != INPUT])
        while True:
            if (s % 2 == 0) != wants_attn:
                s += 1
                continue
            attn_ok = not wants_attn or heads.get(s, 0) < MAX_HEADS_PER_LAYER
            mlp_s = s + 1 if kind == "head+mlp" else s
            mlp_ok = kind == "head" or mlp_s not in mlps
            if attn_ok and mlp_ok:
                break
            s += 2
        placed[name] = s
        if wants_attn:
            heads[s] = heads.get(s, 0) + 1
        if kind != "head":
            mlps.add(s + 1 if kind == "head+mlp" else s)
    return placed


def _constant_expressions(program: Any, inputs: tuple[Inputs, ...]) -> set[int]:
    """Ids of the program's expressions that take the same value on every one of ``inputs``."""
    first, *others = (evaluate_rasp(program, x) for x in inputs)
    varying = {i for values in others for i, value in values.items() if value != first[i]}
    return set(first) - varying


def make_tracr_case(name: str) -> Case:
    """The tracr case ``name`` (see the module docstring)."""
    if name not in TRACR_CASES:
        raise ValueError(f"Unknown tracr case {name!r}; choose one of {', '.join(TRACR_CASES)}.")
    vocab, seq_len, distinct = TRACR_CASES[name]
    program = _program(name)
    sublayer_by_id, output_value_set = tracr_layers(program, set(vocab), seq_len)

    exprs: dict[int, Any] = {}
    stack = [program]
    while stack:
        expr = stack.pop()
        if expr.unique_id not in exprs:
            exprs[expr.unique_id] = expr
            stack.extend(expr.children)
    if distinct:
        inputs = tuple(itertools.permutations(vocab, seq_len))
    else:
        inputs = tuple(itertools.product(vocab, repeat=seq_len))
    # Deterministic order: tracr's sublayer, then the RASP expression id (creation order).  Blocks
    # whose value is the same on every input are folded into their readers (module docstring).
    constant = _constant_expressions(program, inputs)
    if program.unique_id in constant:
        raise ValueError(f"The output of {name} is the same on every input of length {seq_len}: nothing to learn.")
    block_ids = sorted((i for i, e in exprs.items() if _block_of(e) and i not in constant), key=lambda i: (sublayer_by_id[i], i))
    missing = [exprs[i].label for i in block_ids if i not in sublayer_by_id]
    if missing:  # pragma: no cover - tracr allocates every block
        raise ValueError(f"Tracr allocated no layer to {missing}.")
    block_exprs: dict[int, str] = {}
    for i in block_ids:
        block_exprs[i] = _stable_name(exprs[i], set(block_exprs.values()))
    names = [block_exprs[i] for i in block_ids]
    kinds = {block_exprs[i]: _block_of(exprs[i]) for i in block_ids}
    reads = {block_exprs[i]: _reads(exprs[i], block_exprs) for i in block_ids}
    parents = {n: tuple(dict.fromkeys(p for _, ps in reads[n] for p in ps)) for n in names}
    placed = _place(kinds, {block_exprs[i]: sublayer_by_id[i] for i in block_ids}, parents, names)
    order = sorted(names, key=lambda n: (placed[n], names.index(n)))
    nodes = tuple(HighLevelNode(n, kinds[n], placed[n] // 2, reads[n]) for n in order)
    if program.unique_id not in block_exprs:
        raise ValueError(f"The output of {name} is not computed by a block.")
    id_of = {n: i for i, n in block_exprs.items()}

    def evaluate(inputs: Inputs, overrides: Mapping[str, tuple]) -> Values:
        unknown = sorted(set(overrides) - set(id_of))
        if unknown:
            raise ValueError(f"Case {name} has no high-level nodes {unknown}; its nodes: {', '.join(order)}.")
        values = evaluate_rasp(program, inputs, {id_of[n]: v for n, v in overrides.items()})
        return {n: values[id_of[n]] for n in order}

    output_node = block_exprs[program.unique_id]
    is_numerical = _rasp().is_numerical(program)
    # Every value tracr's basis inference allows, not only those seen: interventions reach others.
    output_values = None if is_numerical else tuple(sorted(output_value_set, key=lambda v: (str(type(v)), v)))
    return Case(
        name=name, vocab=vocab, seq_len=seq_len, output_values=output_values,
        output_positions=tuple(range(1, seq_len + 1)), nodes=nodes, output_node=output_node,
        causal=False, evaluate=evaluate, inputs=inputs,
    )


# ---- the IOI-like case ---------------------------------------------------------------------------

IOI_NAMES = ("Ann", "Bob", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal")
IOI_SAID, IOI_FILLERS, IOI_END = "said", ("and", "then"), "END"
IOI_SEQ_LEN = 7


def _ioi_inputs() -> tuple[Inputs, ...]:
    inputs = []
    for n1, n2 in itertools.permutations(IOI_NAMES, 2):
        for said_first in (True, False):
            for subject in (n1, n2):
                for distractor in IOI_NAMES:
                    for filler in IOI_FILLERS:
                        if said_first:
                            inputs.append((n1, n2, IOI_SAID, subject, filler, distractor, IOI_END))
                        else:
                            inputs.append((n1, n2, filler, distractor, IOI_SAID, subject, IOI_END))
    return tuple(inputs)


def _evaluate_ioi(inputs: Inputs, overrides: Mapping[str, tuple]) -> Values:
    """The IOI-like high-level model; values are per position of ``inputs`` (index 0 = position 1)."""
    unknown = sorted(set(overrides) - {"previous_token", "duplicate_token", "s_inhibition", "name_mover"})
    if unknown:
        raise ValueError(f"Case ioi has no high-level nodes {unknown}.")
    n = len(inputs)

    def value(name: str, compute: Callable[[], tuple]) -> tuple:
        return tuple(overrides[name]) if name in overrides else compute()

    pt = value("previous_token", lambda: (None,) + tuple(inputs[:-1]))
    dt = value("duplicate_token", lambda: tuple(inputs[p] in inputs[:p] for p in range(n)))

    def s_inhibition() -> tuple:
        subject = next((inputs[q] for q in (3, 5) if dt[q] and pt[q] == IOI_SAID), None)
        return (None,) * (n - 1) + (subject,)

    si = value("s_inhibition", s_inhibition)
    nm = value("name_mover", lambda: (None,) * (n - 1) + (inputs[0] if si[-1] != inputs[0] else inputs[1],))
    return {"previous_token": pt, "duplicate_token": dt, "s_inhibition": si, "name_mover": nm}


def make_ioi_case() -> Case:
    """The IOI-like case (see the module docstring)."""
    nodes = (
        HighLevelNode("previous_token", "head", 0, (("q", (INPUT,)), ("k", (INPUT,)), ("v", (INPUT,)))),
        HighLevelNode("duplicate_token", "head", 0, (("q", (INPUT,)), ("k", (INPUT,)), ("v", (INPUT,)))),
        HighLevelNode("s_inhibition", "head", 1, (("q", (INPUT,)), ("k", ("previous_token", "duplicate_token")), ("v", (INPUT,)))),
        HighLevelNode("name_mover", "head", 2, (("q", ("s_inhibition",)), ("k", (INPUT,)), ("v", (INPUT,)))),
    )
    return Case(
        name="ioi", vocab=(IOI_SAID, *IOI_FILLERS, IOI_END, *IOI_NAMES), seq_len=IOI_SEQ_LEN,
        output_values=IOI_NAMES, output_positions=(IOI_SEQ_LEN,), nodes=nodes, output_node="name_mover",
        causal=True, evaluate=_evaluate_ioi, inputs=_ioi_inputs(),
    )


# ---- the registry --------------------------------------------------------------------------------


class _Cases(Mapping):
    """Case name -> ``Case``, each built on first use (tracr programs take ~0.1 s, the import ~1.5 s)."""

    _builders: dict[str, Callable[[], Case]] = {
        **{name: functools.partial(make_tracr_case, name) for name in TRACR_CASES},
        "ioi": make_ioi_case,
    }

    def __getitem__(self, name: str) -> Case:
        if name not in self._builders:
            raise KeyError(f"Unknown SIIT case {name!r}; known cases: {', '.join(self._builders)}.")
        return _built(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


@functools.cache
def _built(name: str) -> Case:
    return _Cases._builders[name]()


CASES: Mapping[str, Case] = _Cases()


def get_case(name: str) -> Case:
    """``CASES[name]`` with a ValueError naming the known cases."""
    if name not in CASES:
        raise ValueError(f"Unknown SIIT case {name!r}; known cases: {', '.join(CASES)}.")
    return CASES[name]


# ---- datasets and scores (behavior-like; the pipeline registers them) ---------------------------


def make_dataset(case: str | Case, n_examples: int | None, seed: int) -> pl.DataFrame:
    """A dataset of ``case``, deterministic from ``seed``: ``n_examples`` inputs drawn without
    replacement (all of them for None), kept in the case's order.

    Columns: ``clean``, ``corrupted`` (list[int64] token ids, BOS first, length seq_len + 1;
    ``corrupted[i] = clean[sigma(i)]`` for a random derangement sigma, so each corrupted input is
    another example) and ``answer``: H's output at ``case.output_positions`` (output ids, or floats for
    a numerical case).
    """
    from circuitflow.behaviors.tracr import derangement  # here: circuitflow.behaviors imports this module's package

    case = get_case(case) if isinstance(case, str) else case
    everything = list(case.inputs)
    rng = np.random.default_rng(seed)
    if n_examples is not None:
        if not 2 <= n_examples <= len(everything):
            raise ValueError(f"Case {case.name} has {len(everything)} inputs; ask for 2 to {len(everything)} examples, not {n_examples}.")
        everything = [everything[i] for i in np.sort(rng.choice(len(everything), size=n_examples, replace=False))]
    sigma = derangement(len(everything), rng)
    clean = [case.encode(x) for x in everything]
    answer_type = pl.Int64 if case.categorical else pl.Float64
    return pl.DataFrame(
        {
            "clean": clean,
            "corrupted": [clean[j] for j in sigma],
            "answer": [case.labels(case.output(x)) for x in everything],
        },
        schema={"clean": pl.List(pl.Int64), "corrupted": pl.List(pl.Int64), "answer": pl.List(answer_type)},
    )


def score(case: str | Case, circuit_logits: Tensor, model_logits: Tensor) -> Tensor:
    """Per-example score, lower is better: the mean squared difference between the circuit's and the
    full model's outputs at the case's output positions.  (batch, pos, vocab) -> (batch,)."""
    case = get_case(case) if isinstance(case, str) else case
    if circuit_logits.shape != model_logits.shape or circuit_logits.dim() != 3:
        raise ValueError(f"Score needs outputs of one shape (batch, pos, vocab), got {tuple(circuit_logits.shape)} and {tuple(model_logits.shape)}.")
    positions = list(case.output_positions)
    return (circuit_logits[:, positions] - model_logits[:, positions]).pow(2).mean(dim=(1, 2))


def attribution_metric(case: str | Case, logits: Tensor, examples: Mapping[str, Tensor]) -> Tensor:
    """A scalar to differentiate (higher = more of the behavior): summed over examples and output
    positions, logit[answer] - mean logit (categorical) or the numerical output."""
    case = get_case(case) if isinstance(case, str) else case
    outputs = logits[:, list(case.output_positions)]
    if not case.categorical:
        return outputs[..., 0].sum()
    answer = examples["answer"].long().unsqueeze(-1)
    return (outputs.gather(-1, answer).squeeze(-1) - outputs.mean(-1)).sum()


def tokens(dataset: pl.DataFrame, column: str = "clean") -> Tensor:
    """A dataset column of token ids as a (batch, pos) long tensor."""
    return torch.tensor(dataset[column].to_list(), dtype=torch.long)
