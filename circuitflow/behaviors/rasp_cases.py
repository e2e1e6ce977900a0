"""SIIT cases made from tracr's RASP programs (``TRACR_CASES``), each a program from
``tracr.compiler.lib`` on ``rasp.tokens``:

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

Each case is a ``high_level.Case`` (see there for what a case is); ``siit_cases.CASES`` registers them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

from circuitflow.behaviors.high_level import INPUT, MAX_HEADS_PER_LAYER, Block, Case, HighLevelNode, Inputs, Values
from circuitflow.behaviors.tracr_programs import TRACR_NAMES, make_program


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

    if name in TRACR_NAMES:  # reverse and frac_prevs: the tracr behaviors' programs
        return make_program(name)
    tokens = _rasp().tokens
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
