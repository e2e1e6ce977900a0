"""Edge pruning (circuitflow.discovery.edge_pruning) and the rank-averaged ensemble with connected
selection (circuitflow.discovery.ensemble): recovery of the tracr-reverse circuit, determinism, the
sparsity target, ranks by hand, and selections without dangling edges."""

from __future__ import annotations

import pytest
import torch
from conftest import small_model

from circuitflow.ablation import ablation_values
from circuitflow.behaviors import get_behavior
from circuitflow.discovery import (
    METHODS,
    DiscoveryTask,
    discover_scores,
    method_settings,
)
from circuitflow.discovery.edge_pruning import edge_pruning, target_at
from circuitflow.discovery.ensemble import (
    connected_top_n,
    rank_average,
    scores_to_ranks,
)
from circuitflow.discovery.subnetwork_probing import kl_loss
from circuitflow.evaluation.mib import connected_edges
from circuitflow.evaluation.roc import auc_pessimistic, auc_trapezoid, roc_points
from circuitflow.graph import Graph
from circuitflow.models import tracr
from circuitflow.patching import source_outputs
from circuitflow.settings import SettingsError


@pytest.fixture(scope="module")
def tiny():
    model = small_model(seed=0, n_layers=2)
    generator = torch.Generator().manual_seed(2)
    clean, corrupted = torch.randint(0, 50, (2, 16, 6), generator=generator)
    graph = Graph.from_config(model.cfg)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    return model, graph, clean, ablated


# ---- edge pruning --------------------------------------------------------------------------------
def test_target_ramp():
    assert [target_at(s, 10, 0.8, 0.5) for s in (0, 4, 5, 9)] == pytest.approx([0.16, 0.8, 0.8, 0.8])
    assert target_at(0, 10, 0.8, 0.0) == 0.8


def test_same_seed_same_scores_and_the_target_is_reached(tiny):
    model, graph, clean, ablated = tiny
    settings = {"target_sparsity": 0.6, "steps": 40, "lr": 0.1, "lambda_lr": 0.1, "warmup": 0.25, "batch_size": 8}
    first = edge_pruning(model, graph, clean, ablated, kl_loss([-1]), seed=3, **settings)
    again = edge_pruning(model, graph, clean, ablated, kl_loss([-1]), seed=3, **settings)
    other = edge_pruning(model, graph, clean, ablated, kl_loss([-1]), seed=4, **settings)
    assert torch.equal(first.scores, again.scores) and torch.equal(first.lambdas, again.lambdas)
    assert not torch.equal(first.scores, other.scores)
    assert first.scores.shape == (graph.n_edges,) and first.scores.dtype == torch.float64
    assert torch.equal(first.kept, first.scores > 0)
    print(f"{graph.n_edges} edges, target sparsity 0.6: expected sparsity {first.sparsity[-1]:.3f} after 40 steps")
    assert abs(float(first.sparsity[-1]) - 0.6) < 0.1
    assert first.sparsity[0] < 0.2  # it starts nearly dense


def test_model_untouched_and_bad_settings(tiny):
    model, graph, clean, ablated = tiny
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    edge_pruning(model, graph, clean, ablated, kl_loss(), steps=2)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    bad = [
        ({"target_sparsity": 1.0}, "target sparsity is the fraction of edges to remove"),
        ({"target_sparsity": -0.1}, "target sparsity"),
        ({"steps": 0}, "training steps >= 1"),
        ({"lr": 0.0}, "learning rate lr must be a positive number"),
        ({"lambda_lr": float("inf")}, "learning rate lambda_lr"),
        ({"warmup": 1.5}, "warmup is the fraction of the steps"),
        ({"batch_size": 0}, "batch_size must be"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            edge_pruning(model, graph, clean, ablated, kl_loss(), **kwargs)
    with pytest.raises(SettingsError, match="target_sparsity"):
        method_settings("edge-pruning", {"target_sparsity": 1.5})
    with pytest.raises(SettingsError, match="discover.ensemble.methods"):
        method_settings("ensemble", {"methods": ["ensemble"]})
    with pytest.raises(SettingsError, match="each once"):
        method_settings("ensemble", {"methods": ["eap", "eap"]})


@pytest.fixture(scope="module")
def reverse_task():
    model, info = tracr.to_hooked_transformer(tracr.compile_program("reverse"))
    graph = tracr.tracr_graph(model)
    truth = torch.zeros(graph.n_edges, dtype=torch.bool)
    truth[[graph.edge_index[e] for e in tracr.ground_truth_circuits("reverse", model, info)["zero"]]] = True
    behavior = get_behavior("tracr-reverse")
    examples = behavior.encode(behavior.make_dataset(None, 0), None)
    ablated = ablation_values("zero", like=source_outputs(model, graph, examples["clean"][:1]))
    return DiscoveryTask(model, graph, examples["clean"], ablated, behavior, examples, batch_size=64), truth


def test_edge_pruning_recovers_the_tracr_reverse_circuit(reverse_task):
    """Zero ablation, the behavior's loss (tracr has no distribution to compare: its MSE to the
    model), the method's default settings through the registry."""
    task, truth = reverse_task
    assert "edge-pruning" in METHODS
    scores = discover_scores("edge-pruning", task)
    points = roc_points(scores, truth)
    trapezoid, pessimistic = auc_trapezoid(points["fpr"], points["tpr"]), auc_pessimistic(points["fpr"], points["tpr"])
    kept = scores > 0
    print(f"tracr-reverse, zero ablation: edge-pruning edge AUROC {trapezoid:.3f} (pessimistic {pessimistic:.3f}); "
          f"kept {int(kept.sum())} edges, {int((kept & truth).sum())} of {int(truth.sum())} true")
    assert pessimistic >= 0.95
    assert not (kept & ~truth).any()  # the run's own circuit has no false edge


# ---- the ensemble --------------------------------------------------------------------------------
def test_ranks_by_hand():
    assert scores_to_ranks(torch.tensor([0.5, -1.0, 2.0, 0.5])).tolist() == [1.5, 0.0, 3.0, 1.5]
    assert scores_to_ranks(torch.tensor([float("-inf"), float("-inf"), 1.0])).tolist() == [0.5, 0.5, 2.0]
    scores = {
        "a": torch.tensor([3.0, 1.0, 2.0, 0.0]),  # ranks 3 1 2 0
        "b": torch.tensor([0.1, 0.4, 0.4, 0.2]),  # ranks 0 2.5 2.5 1
    }
    by_hand = torch.tensor([(3 + 0) / 2, (1 + 2.5) / 2, (2 + 2.5) / 2, (0 + 1) / 2], dtype=torch.float64) / 3
    assert torch.equal(rank_average(scores), by_hand)
    assert torch.equal(rank_average(dict(reversed(list(scores.items())))), by_hand)  # order does not matter
    with pytest.raises(ValueError, match="NaN"):
        scores_to_ranks(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="same edges"):
        rank_average({"a": torch.zeros(3), "b": torch.zeros(4)})
    with pytest.raises(ValueError, match="at least one method"):
        rank_average({})


def test_connected_selection_keeps_no_dangling_edge():
    graph = Graph(n_layers=3, n_heads=2, attn_only=False)
    for seed in range(5):
        scores = torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        for n in (1, 5, 20, 60, graph.n_edges):
            circuit = connected_top_n(graph, scores, n)
            assert len(circuit) <= n
            assert torch.equal(connected_edges(graph, circuit.members), circuit.members)  # nothing dangles
            if n == graph.n_edges:
                assert len(circuit) == graph.n_edges
    # by hand: the best edges leave a0.0, which the input reaches only through its value input
    scores = torch.zeros(graph.n_edges, dtype=torch.float64)
    for rank, edge in enumerate(["a0.0 -> logits", "a0.0 -> m2", "input -> a0.0.v", "m2 -> logits"]):
        scores[graph.edge_index[edge]] = 10.0 - rank
    assert connected_top_n(graph, scores, 3).edges == ["input -> a0.0.v", "a0.0 -> logits"]
    assert connected_top_n(graph, scores, 4).edges == ["input -> a0.0.v", "a0.0 -> m2", "a0.0 -> logits", "m2 -> logits"]
    with pytest.raises(ValueError, match="whole number of edges"):
        connected_top_n(graph, scores, -1)


def test_the_ensemble_method(tiny):
    model, graph, clean, ablated = tiny
    behavior = get_behavior("tracr-reverse")  # its metric and loss only read the logits and "answer"
    examples = {"clean": clean, "answer": torch.randint(0, 50, (16, 5), generator=torch.Generator().manual_seed(0))}
    task = DiscoveryTask(model, graph, clean, ablated, behavior, examples, batch_size=8)
    scores = discover_scores("ensemble", task, {"methods": ["eap", "hisp"]})
    by_hand = rank_average({"eap": discover_scores("eap", task), "hisp": discover_scores("hisp", task)})
    assert torch.equal(scores, by_hand)
    assert scores.min() >= 0 and scores.max() <= 1
