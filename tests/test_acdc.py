"""ACDC: the batched, speculative implementation against the one-edge-at-a-time algorithm, threshold
sweeps, dead ends, scores, determinism across processes, errors, and the tracr ground truth."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from circuitflow.circuit import Circuit
from circuitflow.discovery.acdc import (
    MetricBatch,
    acdc,
    acdc_scores,
    acdc_sweep,
    kl_batches,
    kl_metric,
    loss_batches,
    visit_order,
)
from circuitflow.discovery.circuits import above_threshold
from circuitflow.evaluation.roc import auc_pessimistic, auc_trapezoid, is_nested, roc_from_circuits, roc_points
from circuitflow.graph import Graph
from circuitflow.metrics import kl_divergence
from circuitflow.ablation import ablation_values
from circuitflow.patching import run_circuits, source_outputs

TAUS = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)
ORDER_SEED = 0  # a model on which the visit order matters (test_the_visit_order_changes_circuits)


# ---- the naive reference: one edge at a time, by edge names ------------------------------------


def _ends(name: str) -> tuple[str, str]:
    src, dst = name.split(" @ ")[0].split(" -> ")
    return src, dst


def _reaches_logits(graph: Graph, kept: set[str], dest: str) -> bool:
    """Whether destination ``dest`` reaches the logits through kept edges (recursion over names)."""
    if dest == "logits":
        return True
    if dest[-2:] in (".q", ".k", ".v"):
        head = dest[:-2]
        if graph.qkv_direct_edges and f"{dest} -> {head}" not in kept:
            return False
        node = head
    else:
        node = dest  # an MLP input feeds the MLP's output
    return any(src == node and _reaches_logits(graph, kept, dst) for src, dst in (_ends(e) for e in kept) if dst in graph.destination_index)


def paper_receivers(graph: Graph) -> list[tuple[str, list[str]]]:
    """Conmy et al.'s visit order, written from their code (TLACDCExperiment with main.py's defaults,
    TransformerLens 1.6.1's hook order reversed): logits; per layer from the last, the MLP input,
    the direct edges of every head's v, then k, then q; every head's value input, then key, then
    query input; heads from the last.  Into one destination: the latest source first, the input
    sources last in graph order (embed before pos_embed), positions from the last.
    Returns (receiver, edge names in order); a direct edge is its own receiver."""
    inputs = [s for s in graph.sources if s in ("input", "embed", "pos_embed")]
    others = [s for s in reversed(graph.sources) if s not in inputs]
    positions = list(reversed(range(graph.n_positions))) if graph.n_positions else [None]

    def into(dest: str) -> list[str]:
        names = [f"{s} -> {dest}" + ("" if p is None else f" @ {p}") for s in others + inputs for p in positions]
        return [name for name in names if name in graph.edge_index]

    receivers = [("logits", into("logits"))]
    for layer in reversed(range(graph.n_layers)):
        heads = [f"a{layer}.{h}" for h in reversed(range(graph.n_heads))]
        if not graph.attn_only:
            receivers.append((f"m{layer}", into(f"m{layer}")))
        if graph.qkv_direct_edges:
            receivers += [(f"{head}.{x} -> {head}", [f"{head}.{x} -> {head}"]) for x in "vkq" for head in heads]
        receivers += [(f"{head}.{x}", into(f"{head}.{x}")) for x in "vkq" for head in heads]
    return receivers


def head_by_head_order(graph: Graph) -> list:
    """The order acdc.py used before (no direct edges): destinations in decreasing index -- a layer's
    heads one by one, each v, k, q -- and the edges into each in decreasing edge index."""
    assert not graph.qkv_direct_edges
    steps = sorted(visit_order(graph), key=lambda step: -step.dest)
    return [dataclasses.replace(step, edges=step.edges.sort(descending=True).values) for step in steps]


def naive_acdc(model, graph: Graph, batches, tau: float, receivers=None) -> tuple[torch.Tensor, float]:
    """ACDC written from the paper's description, one forward pass per edge, in the order of
    ``receivers`` (default ``paper_receivers``); dead ends dropped unevaluated."""
    names = graph.edge_names

    def metric(members: torch.Tensor) -> float:
        total = 0.0
        for batch in batches:
            with torch.no_grad():
                logits = run_circuits(model, graph, batch.tokens, batch.ablated, members.to(model.cfg.dtype))
            total += float(batch.metric(logits))
        return total

    members = torch.ones(graph.n_edges, dtype=torch.bool)
    current = metric(members)
    for receiver, edges in receivers or paper_receivers(graph):
        edges = [graph.edge_index[e] for e in edges]
        kept = {names[i] for i in members.nonzero().flatten().tolist()}
        if receiver in graph.destination_index:
            live = _reaches_logits(graph, kept, receiver)
        else:  # a direct edge into a head: live when one of the head's outgoing edges goes to a live destination
            head = _ends(receiver)[1]
            live = any(src == head and _reaches_logits(graph, kept, dst) for src, dst in map(_ends, kept) if dst in graph.destination_index)
        if not live:
            members[edges] = False
            continue
        for e in edges:
            trial = members.clone()
            trial[e] = False
            value = metric(trial)
            if value - current < tau:
                members, current = trial, value
    return members, current


# ---- fixtures ----------------------------------------------------------------------------------


def _setup(make_model, tokens, *, seed=0, ablation="resample", positions=-1, graph_options=None, **model_options):
    options = dict(n_layers=2, n_heads=2, dtype=torch.float64)
    options.update(model_options)
    model = make_model(seed=seed, **options)
    graph = Graph.from_config(model.cfg, **(graph_options or {}))
    clean, corrupted = tokens
    corrupted_out = source_outputs(model, graph, corrupted)  # the graph's sources (embed, pos_embed apart when split)
    ablated = ablation_values(ablation, corrupted=corrupted_out, reference=corrupted_out, like=corrupted_out)
    # two batches of different sizes, so the metric's sum over batches is exercised
    batches = kl_batches(model, graph, clean, ablated, positions=positions, batch_size=4)
    return model, graph, batches


CASES = {
    "resample-last-position": dict(seed=0),
    "mean-all-positions": dict(seed=1, ablation="mean", positions=None),
    "zero-attn-only": dict(seed=2, ablation="zero", attn_only=True),
    "qkv-direct-edges": dict(seed=3, graph_options=dict(qkv_direct_edges=True)),
    "per-position-edges": dict(seed=4, n_layers=1, graph_options=dict(n_positions=7)),
}


@pytest.mark.parametrize("case", CASES)
def test_batched_sweep_equals_one_edge_at_a_time(make_model, tokens, case):
    model, graph, batches = _setup(make_model, tokens, **CASES[case])
    sweep = acdc_sweep(model, graph, batches, TAUS)
    sizes = [len(c) for c in sweep.circuits]
    assert any(0 < size < graph.n_edges for size in sizes) and len(set(sizes)) > 2, sizes  # not vacuous
    for tau, circuit, value in zip(TAUS, sweep.circuits, sweep.metrics):
        members, current = naive_acdc(model, graph, batches, tau)
        assert torch.equal(circuit.members, members), (tau, set(circuit.edges) ^ {graph.edge_names[i] for i in members.nonzero().flatten()})
        assert value == pytest.approx(current, rel=1e-12, abs=1e-15)  # one-circuit calls differ in the last bits


@pytest.mark.parametrize("speculation", [1, 3, 64])
def test_speculation_changes_speed_not_circuits(make_model, tokens, speculation):
    model, graph, batches = _setup(make_model, tokens, seed=5)
    reference = acdc_sweep(model, graph, batches, TAUS, speculation=8)
    sweep = acdc_sweep(model, graph, batches, TAUS, speculation=speculation, circuits_per_call=5)
    assert [c.edges for c in sweep.circuits] == [c.edges for c in reference.circuits]
    assert sweep.metrics == pytest.approx(reference.metrics, rel=1e-12)  # the same circuits up to rounding
    assert sweep.decisions == reference.decisions


def test_sweep_equals_independent_runs_and_shares_work(make_model, tokens):
    model, graph, batches = _setup(make_model, tokens, seed=6)
    sweep = acdc_sweep(model, graph, batches, TAUS)
    singles = [acdc_sweep(model, graph, batches, [tau]) for tau in TAUS]
    assert [c.edges for c in sweep.circuits] == [s.circuits[0].edges for s in singles]
    assert acdc(model, graph, batches, TAUS[2]) == singles[2].circuits[0]
    # the shared prefix and the shared full-circuit evaluation make the sweep cheaper
    assert sweep.n_evaluations < sum(s.n_evaluations for s in singles)
    # one tau: every undecided edge costs at least one evaluation, and speculation wastes few
    for s in singles:
        assert s.decisions[0] < s.n_evaluations <= 2 * s.decisions[0] + 1


def test_sweep_exposes_its_per_threshold_circuits(make_model, tokens):
    model, graph, batches = _setup(make_model, tokens, seed=0)
    sweep = acdc_sweep(model, graph, batches, TAUS)
    assert sweep.kept.dtype == torch.bool and sweep.kept.shape == (len(TAUS), graph.n_edges)
    assert all(torch.equal(row, circuit.members) for row, circuit in zip(sweep.kept, sweep.circuits))
    assert is_nested(sweep.kept, sweep.thresholds) == sweep.nested


def test_thresholds_in_any_order(make_model, tokens):
    model, graph, batches = _setup(make_model, tokens, seed=0)
    forward = acdc_sweep(model, graph, batches, TAUS)
    shuffled = [TAUS[i] for i in (3, 0, 5, 1, 4, 2)]
    backward = acdc_sweep(model, graph, batches, shuffled)
    assert backward.thresholds == tuple(shuffled)
    assert [c.edges for c in backward.circuits] == [forward.circuits[TAUS.index(t)].edges for t in shuffled]
    assert torch.equal(backward.scores, forward.scores)


# ---- dead ends, visit order, scores ------------------------------------------------------------


def test_no_dead_ends_and_dead_ends_cost_nothing(make_model, tokens):
    model, graph, batches = _setup(make_model, tokens, seed=0, n_layers=3, n_heads=4)
    sweep = acdc_sweep(model, graph, batches, TAUS)
    for circuit in sweep.circuits:
        kept = set(circuit.edges)
        assert all(_reaches_logits(graph, kept, _ends(e)[1]) for e in kept)
    # a huge tau removes every edge into the logits; everything else is then a dead end, decided
    # without evaluation, and removal-first speculation wastes nothing
    huge = acdc_sweep(model, graph, batches, [1e9])
    n_into_logits = sum(_ends(e)[1] == "logits" for e in graph.edge_names)
    assert len(huge.circuits[0]) == 0
    assert huge.decisions == (n_into_logits,)
    assert huge.n_evaluations == 1 + n_into_logits


def test_visit_order_is_conmy_et_als():
    for graph in (Graph(n_layers=2, n_heads=2, attn_only=False, qkv_direct_edges=True),
                  Graph(n_layers=2, n_heads=2, attn_only=False, split_input=True),
                  Graph(n_layers=2, n_heads=3, attn_only=True, split_input=True),
                  Graph(n_layers=1, n_heads=2, attn_only=True, n_positions=2)):
        steps = visit_order(graph)
        walk = paper_receivers(graph)
        assert [step.receiver for step in steps] == [receiver for receiver, _ in walk]
        assert [[graph.edge_names[e] for e in step.edges] for step in steps] == [edges for _, edges in walk]
        covered = torch.cat([step.edges for step in steps])
        assert sorted(covered.tolist()) == list(range(graph.n_edges))  # every edge exactly once
    split = Graph(n_layers=2, n_heads=2, attn_only=False, split_input=True)
    steps = visit_order(split)
    assert [step.receiver for step in steps[:8]] == ["logits", "m1", "a1.1.v", "a1.0.v", "a1.1.k", "a1.0.k", "a1.1.q", "a1.0.q"]
    assert [split.edge_names[e] for e in steps[3].edges] == [
        "m0 -> a1.0.v", "a0.1 -> a1.0.v", "a0.0 -> a1.0.v", "embed -> a1.0.v", "pos_embed -> a1.0.v"]
    direct = [step.receiver for step in visit_order(Graph(n_layers=1, n_heads=2, attn_only=True, qkv_direct_edges=True))]
    assert direct[1:4] == ["a0.1.v -> a0.1", "a0.0.v -> a0.0", "a0.1.k -> a0.1"]


def test_the_visit_order_changes_circuits(make_model, tokens):
    """On a seeded random 2-layer model, ACDC in the order it used before (head by head) keeps other
    edges than in Conmy et al.'s at some tau; each order's fast path equals its naive run."""
    model, graph, batches = _setup(make_model, tokens, seed=ORDER_SEED, graph_options=dict(split_input=True))
    taus = np.geomspace(1e-4, 0.3, 12).tolist()
    paper = acdc_sweep(model, graph, batches, taus)
    old = acdc_sweep(model, graph, batches, taus, _order=head_by_head_order(graph))
    differ = [t for t, a, b in zip(taus, paper.circuits, old.circuits) if a != b]
    assert differ, "the two orders gave the same circuits at every tau"
    tau = differ[0]
    old_receivers = [(step.receiver, [graph.edge_names[e] for e in step.edges]) for step in head_by_head_order(graph)]
    assert torch.equal(old.circuits[taus.index(tau)].members, naive_acdc(model, graph, batches, tau, old_receivers)[0])
    assert torch.equal(paper.circuits[taus.index(tau)].members, naive_acdc(model, graph, batches, tau)[0])
    with pytest.raises(ValueError, match="every edge of the graph exactly once"):
        acdc_sweep(model, graph, batches, taus, _order=head_by_head_order(graph)[1:])


def test_scores_are_the_largest_tau_keeping_each_edge(make_model, tokens):
    model, graph, batches = _setup(make_model, tokens, seed=1)
    sweep = acdc_sweep(model, graph, batches, TAUS)
    for e in range(graph.n_edges):
        kept_at = [tau for tau, c in zip(TAUS, sweep.circuits) if c.members[e]]
        assert sweep.scores[e] == (max(kept_at) if kept_at else -math.inf)
    assert sweep.nested  # usual (not guaranteed): the reproduction below relies on it
    for tau, circuit in zip(TAUS, sweep.circuits):
        assert above_threshold(graph, sweep.scores, tau) == circuit
    # the ROC of the scores passes through every circuit's point of the sweep
    truth = torch.zeros(graph.n_edges, dtype=torch.bool)
    truth[sweep.circuits[-1].members.nonzero().flatten()[:2]] = True
    truth[torch.arange(0, graph.n_edges, 5)] = True
    points = {(fp, tp) for fp, tp in roc_points(sweep.scores, truth).select("fp", "tp").iter_rows()}
    members = torch.stack([c.members for c in sweep.circuits]).numpy()
    swept = {(fp, tp) for fp, tp in roc_from_circuits(members, truth.numpy(), pareto=False).select("fp", "tp").iter_rows()}
    assert swept <= points


def test_acdc_scores_is_the_sweep_with_the_kl_metric(make_model, tokens):
    model, graph, batches = _setup(make_model, tokens, seed=2, positions=None)
    clean, corrupted = tokens
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    scores = acdc_scores(model, graph, clean, ablated, thresholds=TAUS, positions=None, batch_size=4)
    assert torch.equal(scores, acdc_sweep(model, graph, batches, TAUS).scores)
    assert scores.dtype == torch.float64 and scores.shape == (graph.n_edges,)


# ---- the KL metric -----------------------------------------------------------------------------


def test_kl_metric_positions_and_weights():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    other = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    kl = kl_divergence(reference, other)  # (3, 4)
    assert kl_metric(reference)(reference) == 0
    assert torch.isclose(kl_metric(reference)(other), kl.mean())
    assert torch.isclose(kl_metric(reference, -1)(other), kl[:, -1].mean())
    assert torch.isclose(kl_metric(reference, -1, n_total=6)(other), kl[:, -1].sum() / 6)
    per_example = torch.tensor([0, 3, 1])
    assert torch.isclose(kl_metric(reference, per_example)(other), kl[torch.arange(3), per_example].mean())
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    expected = (kl[0, :2].mean() + kl[1, 3] + kl[2].mean()) / 3
    assert torch.isclose(kl_metric(reference, mask)(other), expected)
    with pytest.raises(ValueError, match="outside inputs of 4 positions"):
        kl_metric(reference, 4)
    with pytest.raises(ValueError, match="selects no position"):
        kl_metric(reference, mask & False)
    with pytest.raises(ValueError, match="one position per example"):
        kl_metric(reference, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="built for logits of shape"):
        kl_metric(reference)(other[:2])


def test_loss_batches_average_a_per_example_loss_over_all_examples(make_model, tokens):
    model, graph, kl = _setup(make_model, tokens, seed=0, positions=None)
    clean, corrupted = tokens
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    seen = []

    def loss(circuit_logits, model_logits, index):
        seen.append(index.tolist())
        return kl_divergence(model_logits, circuit_logits).mean(-1)  # (batch,): KL over every position

    batches = loss_batches(model, graph, clean, ablated, loss, batch_size=4)
    mask = (torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    with torch.no_grad():
        values = [[float(b.metric(run_circuits(model, graph, b.tokens, b.ablated, mask))) for b in group] for group in (batches, kl)]
    assert seen == [[0, 1, 2, 3], [4, 5]]
    assert sum(values[0]) == pytest.approx(sum(values[1]), rel=1e-12) and sum(values[0]) > 0
    with pytest.raises(ValueError, match="either a loss or positions"):
        acdc_scores(model, graph, clean, ablated, thresholds=[0.1], loss=loss, positions=-1)


def test_kl_batches_metric_of_the_full_circuit_is_zero(make_model, tokens):
    model, graph, batches = _setup(make_model, tokens, seed=0, positions=None)
    assert [b.tokens.shape[0] for b in batches] == [4, 2]
    sweep = acdc_sweep(model, graph, batches, [-1.0])  # a negative tau removes only improving edges
    full = torch.ones(graph.n_edges, dtype=torch.float64)
    with torch.no_grad():
        assert sum(float(b.metric(run_circuits(model, graph, b.tokens, b.ablated, full))) for b in batches) == 0.0
    assert sweep.metrics[0] <= 1.0


def test_kl_batches_read_positions_and_acdc_reading_every_position(make_model, tokens):
    """kl_batches tells ACDC where its metric reads; computing the logits only there (and the last
    layer's attention for those queries only) changes nothing but the speed."""
    model, graph, batches = _setup(make_model, tokens, seed=3)
    assert [b.read_positions.tolist() for b in batches] == [[6], [6]]
    clean, corrupted = tokens
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    per_example = torch.tensor([6, 2, 6, 2, 5, 5])
    split = kl_batches(model, graph, clean, ablated, positions=per_example, batch_size=4)
    assert [b.read_positions.tolist() for b in split] == [[2, 6], [5]]
    assert all(b.read_positions is None for b in kl_batches(model, graph, clean, ablated, batch_size=4))
    everywhere = [MetricBatch(b.tokens, b.ablated, b.metric) for b in batches]
    sweep, reference = acdc_sweep(model, graph, batches, TAUS), acdc_sweep(model, graph, everywhere, TAUS)
    assert [c.edges for c in sweep.circuits] == [c.edges for c in reference.circuits]
    assert sweep.metrics == pytest.approx(reference.metrics, rel=1e-12, abs=1e-15)


# ---- errors ------------------------------------------------------------------------------------


def test_bad_input_is_one_clear_error(make_model, tokens):
    model, graph, batches = _setup(make_model, tokens, seed=0)
    with pytest.raises(ValueError, match="at least one threshold"):
        acdc_sweep(model, graph, batches, [])
    with pytest.raises(ValueError, match="finite"):
        acdc_sweep(model, graph, batches, [0.1, float("nan")])
    with pytest.raises(ValueError, match="distinct"):
        acdc_sweep(model, graph, batches, [0.1, 0.1])
    with pytest.raises(ValueError, match="non-empty list of MetricBatch"):
        acdc_sweep(model, graph, [], [0.1])
    wrong = MetricBatch(batches[0].tokens, batches[0].ablated[:-1], batches[0].metric)
    with pytest.raises(ValueError, match="ablated must be"):
        acdc_sweep(model, graph, [wrong], [0.1])
    vector = MetricBatch(batches[0].tokens, batches[0].ablated, lambda logits: logits[:, -1, 0])
    with pytest.raises(ValueError, match="must return a scalar"):
        acdc_sweep(model, graph, [vector], [0.1])
    outside = MetricBatch(batches[0].tokens, batches[0].ablated, batches[0].metric, torch.tensor([7]))
    with pytest.raises(ValueError, match="read_positions must be"):
        acdc_sweep(model, graph, [outside], [0.1])
    with pytest.raises(ValueError, match="does not belong to this model"):
        acdc_sweep(model, Graph(n_layers=1, n_heads=2, attn_only=False), batches, [0.1])
    with pytest.raises(ValueError, match="at least 1"):
        acdc_sweep(model, graph, batches, [0.1], speculation=0)


# ---- determinism across processes --------------------------------------------------------------

_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import small_model
    from circuitflow.discovery.acdc import acdc_sweep, kl_batches
    from circuitflow.graph import Graph
    from circuitflow.ablation import ablation_values
    from circuitflow.patching import source_outputs
    torch.set_num_threads(1)
    model = small_model(seed=7)
    graph = Graph.from_config(model.cfg)
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (6, 7), generator=generator)
    corrupted = torch.randint(0, 50, (6, 7), generator=generator)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    sweep = acdc_sweep(model, graph, kl_batches(model, graph, clean, ablated, positions=-1), [3e-3, 1e-2, 3e-2])
    print(json.dumps({{"edges": [c.edges for c in sweep.circuits], "scores": sweep.scores.tolist(), "metrics": sweep.metrics}}))
    """
)


def test_same_circuits_in_every_process_whatever_the_hash_seed():
    script = _SCRIPT.format(tests=str(Path(__file__).parent))
    processes = [  # side by side: most of the time is importing torch and TransformerLens
        subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONHASHSEED=seed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in ("1", "2")
    ]
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    assert any(0 < len(edges) < 262 for edges in outputs[0]["edges"])  # a 3-layer, 4-head model: 262 edges


# ---- tracr: ACDC recovers the ground truth ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name,behavior", [("reverse", "reverse"), ("frac_prevs", "proportion")])
def test_tracr_ground_truth_is_recovered(name, behavior):
    """Zero ablation and the task metric (MSE against the full model at positions 1..), over every
    input of length 1..5 as five batches: edge AUC 1.0, as in the ACDC paper."""
    from circuitflow.behaviors.tracr import score
    from circuitflow.models import tracr

    model, info = tracr.to_hooked_transformer(tracr.compile_program(name))
    graph = tracr.tracr_graph(model)
    truth = Circuit.from_edges(graph, tracr.ground_truth_circuits(name, model, info)["zero"])
    zero = torch.zeros(graph.n_sources, 1, 1, model.cfg.d_model, dtype=torch.float64)
    inputs = [tracr.enumerate_inputs(info, length) for length in range(1, info.max_seq_len + 1)]
    n_total = sum(len(tokens) for tokens in inputs)
    mse = lambda circuit_logits, model_logits, index: score(behavior, circuit_logits, model_logits)
    batches = [b for tokens in inputs for b in loss_batches(model, graph, tokens, zero, mse, batch_size=1024, n_total=n_total)]
    assert len(batches) == 5  # one per length
    sweep = acdc_sweep(model, graph, batches, [1e-6, 1e-3, 1e-2, 0.3, 1.0])
    assert sweep.circuits[0] == truth and sweep.circuits[2] == truth
    points = roc_points(sweep.scores, truth.members)
    assert auc_pessimistic(points["fpr"], points["tpr"]) == 1.0
    assert auc_trapezoid(points["fpr"], points["tpr"]) == 1.0
    members = np.stack([c.members.numpy() for c in sweep.circuits])
    curve = roc_from_circuits(members, truth.members.numpy())
    assert auc_pessimistic(curve["fpr"], curve["tpr"]) == 1.0
