"""Subnetwork probing: the hard-concrete gate, the effect of lambda, determinism, and recovery of
the tracr ground-truth circuits."""

import numpy as np
import pytest
import torch

from circuitflow.behaviors import tracr as tracr_behaviors
from circuitflow.discovery.subnetwork_probing import (
    GAMMA,
    ZETA,
    deterministic_gates,
    expected_l0,
    gate_of_edge,
    kl_loss,
    sample_gates,
    subnetwork_probing,
    subnetwork_probing_scores,
    subnetwork_probing_sweep,
)
from circuitflow.evaluation.roc import (
    auc_pessimistic,
    auc_trapezoid,
    roc_from_circuits,
    roc_points,
    scored_nodes,
)
from circuitflow.graph import Graph
from circuitflow.models import tracr
from circuitflow.ablation import ablation_values
from circuitflow.patching import source_outputs


# ---- the gate ------------------------------------------------------------------------------------
def test_hard_concrete_gate():
    log_alpha = torch.tensor([-4.0, -0.5, -0.01, 0.5, 4.0], dtype=torch.float64)
    draws = torch.stack([sample_gates(log_alpha, torch.Generator().manual_seed(s)) for s in range(4000)])
    assert draws.min() == 0 and draws.max() == 1  # the stretch puts mass on exactly 0 and exactly 1
    assert ((draws > 0) & (draws < 1)).any()
    # the expected L0 is the probability of a non-zero gate (Louizos et al. 2018, eq. 12)
    assert torch.allclose((draws > 0).double().mean(0), expected_l0(log_alpha), atol=0.025)
    # closed form of P(z > 0): P(s > -gamma / (zeta - gamma))
    threshold = -GAMMA / (ZETA - GAMMA)
    assert torch.allclose(expected_l0(log_alpha), torch.sigmoid(log_alpha - (2 / 3) * np.log(threshold / (1 - threshold))))
    # the test-time gate exceeds 1/2 exactly when log_alpha > 0
    assert (deterministic_gates(log_alpha) > 0.5).tolist() == [False, False, False, True, True]
    assert deterministic_gates(torch.tensor([-10.0, 10.0])).tolist() == [0.0, 1.0]
    # differentiable in log_alpha
    leaf = log_alpha.clone().requires_grad_()
    sample_gates(leaf, torch.Generator().manual_seed(0)).sum().backward()
    assert leaf.grad.abs().sum() > 0


def test_node_gates_are_shared_by_a_source_s_edges():
    graph = Graph(n_layers=2, n_heads=2, attn_only=False)
    edges = gate_of_edge(graph, "edge")
    nodes = gate_of_edge(graph, "node")
    assert edges.tolist() == list(range(graph.n_edges))
    assert [graph.sources[i] for i in nodes[:3].tolist()] == [name.split(" -> ")[0] for name in graph.edge_names[:3]]
    assert set(nodes.tolist()) == set(range(graph.n_sources))
    with pytest.raises(ValueError, match="q/k/v direct edges have none"):
        gate_of_edge(Graph(n_layers=1, n_heads=2, attn_only=True, qkv_direct_edges=True), "node")
    with pytest.raises(ValueError, match="Unknown subnetwork-probing level 'head'"):
        gate_of_edge(graph, "head")


# ---- a tiny random model -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from conftest import small_model

    model = small_model(seed=0, n_layers=2)
    generator = torch.Generator().manual_seed(2)
    clean, corrupted = torch.randint(0, 50, (2, 16, 6), generator=generator)
    graph = Graph.from_config(model.cfg)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    return model, graph, clean, ablated


@pytest.mark.parametrize("level", ["edge", "node"])
def test_lambda_prunes(tiny, level):
    """A strong L0 weight prunes nearly everything; lambda = 0 keeps nearly everything, and the
    kept circuit then matches the model better than the strongly pruned one."""
    model, graph, clean, ablated = tiny
    settings = {"level": level, "steps": 80, "lr": 0.1, "batch_size": 8}
    strong, free = subnetwork_probing_sweep(model, graph, clean, ablated, kl_loss([-1]), lams=[30.0, 0.0], **settings)
    print(f"{level} SP on {graph.n_edges} edges: kept {int(strong.kept.sum())} at lambda 30, {int(free.kept.sum())} at lambda 0")
    assert strong.kept.float().mean() < 0.05
    assert free.kept.float().mean() > 0.95
    assert (strong.lam, free.lam) == (30.0, 0.0)
    assert strong.losses.shape == (80,) and strong.losses[-10:].mean() < strong.losses[:10].mean()
    n_gates = graph.n_edges if level == "edge" else graph.n_sources
    assert strong.log_alpha.shape == (n_gates,) and strong.scores.dtype == torch.float64
    assert torch.equal(strong.kept, strong.scores > 0)


def test_same_seed_same_scores(tiny):
    model, graph, clean, ablated = tiny
    settings = {"lam": 1.0, "steps": 15, "lr": 0.1, "batch_size": 8}
    first = subnetwork_probing_scores(model, graph, clean, ablated, kl_loss(), seed=3, **settings)
    again = subnetwork_probing_scores(model, graph, clean, ablated, kl_loss(), seed=3, **settings)
    other = subnetwork_probing_scores(model, graph, clean, ablated, kl_loss(), seed=4, **settings)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == (graph.n_edges,)


def test_model_left_untouched_and_errors(tiny):
    model, graph, clean, ablated = tiny
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    subnetwork_probing(model, graph, clean, ablated, kl_loss(), lam=1.0, steps=2)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    bad = [
        ({"lam": -1.0}, "lambda must be a finite number >= 0"),
        ({"lam": float("nan")}, "lambda must be a finite number >= 0"),
        ({"lam": 1.0, "steps": 0}, "training steps >= 1"),
        ({"lam": 1.0, "lr": 0.0}, "learning rate must be positive"),
        ({"lam": 1.0, "level": "layer"}, "Unknown subnetwork-probing level"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            subnetwork_probing(model, graph, clean, ablated, kl_loss(), **kwargs)
    with pytest.raises(ValueError, match="lambda sweep is empty"):
        subnetwork_probing_sweep(model, graph, clean, ablated, kl_loss(), lams=[])


# ---- tracr ground truth --------------------------------------------------------------------------
BEHAVIOR = {"reverse": "reverse", "frac_prevs": "proportion"}


def tracr_setting(name: str):
    model, info = tracr.to_hooked_transformer(tracr.compile_program(name))
    graph = tracr.tracr_graph(model)
    truth_edges = tracr.ground_truth_circuits(name, model, info)["zero"]  # the ACDC paper's tracr setting
    truth = torch.zeros(graph.n_edges, dtype=torch.bool)
    truth[[graph.edge_index[edge] for edge in truth_edges]] = True
    clean = tracr_behaviors.tokens(tracr_behaviors.make_dataset(BEHAVIOR[name], None, seed=0, info=info))
    ablated = ablation_values("zero", like=source_outputs(model, graph, clean[:1]))
    loss = lambda circuit_logits, model_logits, index: tracr_behaviors.score(BEHAVIOR[name], circuit_logits, model_logits)
    return model, graph, clean, ablated, loss, truth


def aucs(scores, truth) -> tuple[float, float]:
    points = roc_points(scores, truth)
    return auc_trapezoid(points["fpr"], points["tpr"]), auc_pessimistic(points["fpr"], points["tpr"])


def node_level(graph: Graph, result, truth: torch.Tensor):
    """Node SP's own scores (one gate per head or MLP) and the node ground truth: nodes a truth edge
    leaves or enters."""
    nodes = scored_nodes(graph)
    touched = {end.split(".")[0] + ("." + end.split(".")[1] if end.startswith("a") else "")
               for edge in np.array(graph.edge_names)[truth.numpy()] for end in edge.split(" -> ")}
    scores = torch.tensor([float(result.log_alpha[graph.source_index[n]]) for n in nodes])
    return scores, torch.tensor([n in touched for n in nodes])


def test_sp_recovers_the_tracr_proportion_circuit():
    model, graph, clean, ablated, loss, truth = tracr_setting("frac_prevs")
    settings = {"lam": 0.1, "steps": 150, "lr": 0.1, "batch_size": 64}
    edge = subnetwork_probing(model, graph, clean, ablated, loss, level="edge", **settings)
    node = subnetwork_probing(model, graph, clean, ablated, loss, level="node", **settings)
    edge_aucs = aucs(edge.scores, truth)
    node_aucs = aucs(*node_level(graph, node, truth))
    print(f"tracr-proportion, zero ablation: edge SP AUC (trapezoid, pessimistic) {edge_aucs}, "
          f"kept {int(edge.kept.sum())} edges ({int((edge.kept & truth).sum())} of {int(truth.sum())} true); node SP node AUC {node_aucs}")
    assert edge_aucs[1] > 0.95
    assert node_aucs[1] > 0.95
    assert edge.kept[truth].all()


@pytest.mark.slow
def test_sp_recovers_the_tracr_reverse_circuit():
    model, graph, clean, ablated, loss, truth = tracr_setting("reverse")
    settings = {"steps": 300, "lr": 0.05, "batch_size": 256}
    sweep = subnetwork_probing_sweep(model, graph, clean, ablated, loss, lams=[0.001, 0.01, 0.1, 1.0, 10.0], **settings)
    edge_aucs = {result.lam: aucs(result.scores, truth) for result in sweep}
    circuits = roc_from_circuits(torch.stack([result.kept for result in sweep]), truth)
    sweep_aucs = (auc_trapezoid(circuits["fpr"], circuits["tpr"]), auc_pessimistic(circuits["fpr"], circuits["tpr"]))
    node = subnetwork_probing(model, graph, clean, ablated, loss, level="node", lam=0.1, **settings)
    node_aucs = aucs(*node_level(graph, node, truth))
    print(f"tracr-reverse, zero ablation: edge SP AUC by lambda (trapezoid, pessimistic) {edge_aucs}; "
          f"lambda-sweep circuits AUC {sweep_aucs}; kept {[int(r.kept.sum()) for r in sweep]}; node SP node AUC {node_aucs}")
    assert edge_aucs[0.1][1] > 0.95
    assert sweep_aucs[1] > 0.8
