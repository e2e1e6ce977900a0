"""MIB's faithfulness at a size, CPR and CMD (circuitflow.evaluation.mib): the areas by hand, the
pruning of dangling edges, a naive twin written from the formulas, and random against oracle scores
on the tracr reverse model."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import polars as pl
import pytest
import torch
from conftest import small_model

from circuitflow.ablation import ablation_values
from circuitflow.behaviors import get_behavior
from circuitflow.discovery import DiscoveryTask
from circuitflow.discovery.eap_ig import eap_ig_inputs_scores
from circuitflow.evaluation.mib import (
    FRAME_COLUMNS,
    MIB_SIZES,
    cmd,
    connected_edges,
    cpr,
    logit_difference,
    mib_scores,
    size_circuits,
    trapezoid_area,
)
from circuitflow.graph import Graph
from circuitflow.models import tracr
from circuitflow.patching import run_circuits, source_outputs


# ---- the areas by hand ---------------------------------------------------------------------------
def test_cpr_and_cmd_by_hand():
    ks, f = (0.0, 0.5, 1.0), (0.0, 0.5, 1.0)
    assert cpr(ks, f) == pytest.approx(0.5 * (0 + 0.5) / 2 + 0.5 * (0.5 + 1) / 2)  # 0.5
    assert cmd(ks, f) == pytest.approx(0.5 * (1 + 0.5) / 2 + 0.5 * (0.5 + 0) / 2)  # 0.5
    # overshooting counts in CMD as much as falling short: |1 - 1.5| = 0.5
    assert cmd((0.0, 1.0), (1.5, 1.0)) == pytest.approx(0.25)
    assert cpr((0.0, 1.0), (1.5, 1.0)) == pytest.approx(1.25)
    # a perfect curve over MIB's sizes: CPR is the width of the axis, CMD is 0
    assert cpr(MIB_SIZES, [1.0] * 10) == pytest.approx(0.999)
    assert cmd(MIB_SIZES, [1.0] * 10) == 0
    # a hand-made curve over MIB's sizes: the half from 0.5 to 1 carries half the weight
    f = [0.0, 0.0, 0.1, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]
    by_hand = (0.001 * 0.0 + 0.003 * 0.05 + 0.005 * 0.1 + 0.01 * 0.15 + 0.03 * 0.25 + 0.05 * 0.4
               + 0.1 * 0.6 + 0.3 * 0.8 + 0.5 * 0.95)
    assert cpr(MIB_SIZES, f) == pytest.approx(by_hand, abs=1e-15)
    assert cmd(MIB_SIZES, f) == pytest.approx(0.999 - by_hand, abs=1e-15)  # f <= 1 here
    with pytest.raises(ValueError, match="one value per size"):
        trapezoid_area((0.0, 1.0), (1.0,))


def test_dangling_edges_are_pruned():
    graph = Graph(n_layers=2, n_heads=1, attn_only=False)

    def kept(*edges):
        members = torch.zeros(graph.n_edges, dtype=torch.bool)
        members[[graph.edge_index[e] for e in edges]] = True
        return {graph.edge_names[i] for i in connected_edges(graph, members).nonzero().flatten().tolist()}

    assert kept("input -> a0.0.q", "a0.0 -> logits") == {"input -> a0.0.q", "a0.0 -> logits"}  # q belongs to its head
    assert kept("a0.0 -> logits") == set()  # a0.0 gets nothing from the input
    assert kept("input -> a0.0.v", "a0.0 -> m0") == set()  # m0 leads nowhere
    assert kept("input -> a0.0.v", "a0.0 -> m0", "m0 -> a1.0.k", "a1.0 -> logits", "m1 -> logits", "input -> m1") == {
        "input -> a0.0.v", "a0.0 -> m0", "m0 -> a1.0.k", "a1.0 -> logits", "m1 -> logits", "input -> m1"}
    assert kept("input -> a0.0.v", "a0.0 -> m0", "m0 -> a1.0.k", "m1 -> logits") == set()
    full = torch.ones(graph.n_edges, dtype=torch.bool)
    assert torch.equal(connected_edges(graph, full), full)
    with pytest.raises(ValueError, match="plain residual graphs"):
        connected_edges(Graph(n_layers=1, n_heads=1, attn_only=True, n_positions=3), torch.zeros(9, dtype=torch.bool))


# ---- a naive twin: the formulas, brute force ------------------------------------------------------
def _node(destination: str) -> str:
    return destination[:-2] if destination[-2:] in (".q", ".k", ".v") else destination


def _bfs_prune(edges: list[tuple[str, str]], inputs: set[str]) -> set[tuple[str, str]]:
    """Edges on an input -> logits path, by explicit breadth-first search both ways."""
    reached, queue = set(inputs), list(inputs)
    while queue:
        here = queue.pop(0)
        for src, dst in edges:
            if src == here and _node(dst) not in reached:
                reached.add(_node(dst))
                queue.append(_node(dst))
    useful, queue = {"logits"}, ["logits"]
    while queue:
        here = queue.pop(0)
        for src, dst in edges:
            if _node(dst) == here and src not in useful:
                useful.add(src)
                queue.append(src)
    return {(s, d) for s, d in edges if s in reached and _node(d) in useful}


def _naive_mib(model, graph, clean, ablated, metric, scores):
    names = [tuple(name.split(" -> ")) for name in graph.edge_names]
    inputs = {"embed", "pos_embed"} if graph.split_input else {"input"}

    def m(kept: set) -> float:
        mask = torch.tensor([name in kept for name in names], dtype=torch.float64)
        with torch.no_grad():
            logits = run_circuits(model, graph, clean, ablated, mask)
        return float(metric(logits, torch.arange(clean.shape[0])).double().mean())

    m_full, m_empty = m(set(names)), m(set())
    curves, counts = {}, {}
    for ranking, key in (("signed", scores.tolist()), ("absolute", scores.abs().tolist())):
        order = sorted(range(len(names)), key=lambda i: (-key[i], i))
        f, kept_counts = [], []
        for k in MIB_SIZES:
            top = [names[i] for i in order[: math.floor(Fraction(str(k)) * len(names))]]
            kept = _bfs_prune(top, inputs)
            kept_counts.append(len(kept))
            f.append((m(kept) - m_empty) / (m_full - m_empty))
        curves[ranking], counts[ranking] = f, kept_counts
    area = lambda values: float(np.trapezoid(values, MIB_SIZES))
    return curves, counts, area(curves["signed"]), area([abs(1 - v) for v in curves["absolute"]])


def test_mib_scores_match_the_naive_twin():
    model = small_model(seed=1, n_layers=2, n_heads=2, d_head=16, dtype=torch.float64)
    graph = Graph.from_config(model.cfg)
    generator = torch.Generator().manual_seed(4)
    clean, corrupted = torch.randint(0, 50, (2, 7, 5), generator=generator)
    answer, wrong = torch.randint(0, 50, (2, 7), generator=generator)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    metric = logit_difference(answer, wrong)
    # signed scores with ties (rounded to one decimal) and negative values that rank apart from |.|
    scores = (torch.randn(graph.n_edges, generator=generator, dtype=torch.float64) * 3).round(decimals=1)
    frame, got_cpr, got_cmd = mib_scores(model, graph, clean, ablated, metric, scores, batch_size=3)
    curves, counts, want_cpr, want_cmd = _naive_mib(model, graph, clean, ablated, metric, scores)
    print(f"{graph.n_edges} edges: CPR {got_cpr:.6f} (naive {want_cpr:.6f}), CMD {got_cmd:.6f} (naive {want_cmd:.6f})")
    assert tuple(frame.columns) == FRAME_COLUMNS and frame.height == 20
    for ranking in ("signed", "absolute"):
        rows = frame.filter(pl.col("ranking") == ranking)
        assert rows["k"].to_list() == list(MIB_SIZES)
        assert rows["n_edges_requested"].to_list() == [math.floor(Fraction(str(k)) * graph.n_edges) for k in MIB_SIZES]
        assert rows["n_edges_kept"].to_list() == counts[ranking]
        np.testing.assert_allclose(rows["f"].to_numpy(), curves[ranking], rtol=0, atol=1e-9)
    assert abs(got_cpr - want_cpr) < 1e-9 and abs(got_cmd - want_cmd) < 1e-9
    assert frame.filter(pl.col("k") == 1.0)["f"].to_list() == pytest.approx([1.0, 1.0], abs=1e-12)
    assert 0 < sum(counts["signed"]) < sum(frame["n_edges_requested"].to_list()[:10])  # pruning did something


def test_refusals():
    graph = Graph(n_layers=1, n_heads=1, attn_only=False)
    with pytest.raises(ValueError, match="one score per edge"):
        size_circuits(graph, torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        size_circuits(graph, torch.full((graph.n_edges,), float("nan")))
    with pytest.raises(ValueError, match="increasing fractions"):
        size_circuits(graph, torch.zeros(graph.n_edges), sizes=(0.5, 0.1))
    model = small_model(seed=0, n_layers=1, n_heads=1, d_head=32)
    tokens = torch.zeros(2, 3, dtype=torch.long)
    zero = ablation_values("zero", like=source_outputs(model, graph, tokens))
    with pytest.raises(ValueError, match="same for the full and the empty circuit"):
        mib_scores(model, graph, tokens, zero, lambda logits, index: torch.zeros(len(index)), torch.zeros(graph.n_edges))


# ---- tracr reverse: random against oracle --------------------------------------------------------
@pytest.fixture(scope="module")
def reverse():
    model, info = tracr.to_hooked_transformer(tracr.compile_program("reverse"))
    graph = tracr.tracr_graph(model)
    truth = torch.zeros(graph.n_edges, dtype=torch.bool)
    truth[[graph.edge_index[e] for e in tracr.ground_truth_circuits("reverse", model, info)["zero"]]] = True
    behavior = get_behavior("tracr-reverse")
    examples = behavior.encode(behavior.make_dataset(None, 0), None)
    clean = examples["clean"]
    ablated = ablation_values("zero", like=source_outputs(model, graph, clean[:1]))
    return model, graph, clean, ablated, truth, DiscoveryTask(model, graph, clean, ablated, behavior, examples, batch_size=64)


def answer_margin(answers: torch.Tensor):
    """Per example, mean over output positions of logit[answer] - mean logit (tracr-reverse)."""
    def metric(logits, index):
        outputs = logits[:, 1:]
        chosen = outputs.gather(-1, answers[index].long().unsqueeze(-1)).squeeze(-1)
        return (chosen - outputs.mean(-1)).mean(-1)
    return metric


def test_random_scores_are_far_from_an_oracle_on_tracr_reverse(reverse):
    model, graph, clean, ablated, truth, task = reverse
    metric = answer_margin(task.examples["answer"])
    _, oracle_cpr, oracle_cmd = mib_scores(model, graph, clean, ablated, metric, truth.double())
    randoms = [mib_scores(model, graph, clean, ablated, metric, torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(s),
                                                                             dtype=torch.float64))[1:] for s in range(5)]
    random_cpr, random_cmd = np.mean([r[0] for r in randoms]), np.mean([r[1] for r in randoms])
    signed = eap_ig_inputs_scores(model, graph, clean, ablated, task.metric, steps=5, batch_size=64).double()
    _, ig_cpr, ig_cmd = mib_scores(model, graph, clean, ablated, metric, signed)
    print(f"tracr-reverse ({graph.n_edges} edges, zero ablation): oracle CPR {oracle_cpr:.3f} CMD {oracle_cmd:.3f}; "
          f"random (mean of 5) CPR {random_cpr:.3f} CMD {random_cmd:.3f}; EAP-IG (inputs, 5 steps) CPR {ig_cpr:.3f} CMD {ig_cmd:.3f}")
    assert oracle_cmd < 0.2
    assert random_cmd > oracle_cmd + 0.2
    assert ig_cmd < random_cmd
