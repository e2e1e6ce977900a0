"""HISP against brute force: per-example EAP scores of each node's outgoing edges, and plain autograd
through TransformerLens hooks; node scores to edge scores; layer normalisation; errors."""

import math

import pytest
import torch

from circuitflow.circuit import Circuit
from circuitflow.discovery.eap import eap_scores
from circuitflow.discovery.hisp import hisp_edge_scores, hisp_node_scores, hisp_scores
from circuitflow.graph import Graph
from circuitflow.ablation import ablation_values
from circuitflow.patching import source_outputs


def logit_difference(logits, index):
    """A metric in the EAP interface: summed over the batch."""
    return (logits[:, -1, 3] - logits[:, -1, 7]).sum()


def _setup(make_model, tokens, seed, **overrides):
    model = make_model(seed=seed, dtype=torch.float64, **overrides)
    graph = Graph.from_config(model.cfg)
    clean, corrupted = tokens
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    return model, graph, clean, corrupted, ablated


def plain_autograd_node_attributions(model, clean, corrupted, metric) -> dict[str, torch.Tensor]:
    """AP_i(node) = (corrupt_out - clean_out) . d metric / d out, per example, by TransformerLens hooks."""
    model.set_use_attn_result(True)
    try:
        _, corrupted_cache = model.run_with_cache(corrupted)
        outputs = {}

        def keep(activation, hook):
            activation.retain_grad()
            outputs[hook.name] = activation
            return activation

        names = lambda name: name.endswith(("hook_result", "hook_mlp_out"))
        logits = model.run_with_hooks(clean, fwd_hooks=[(names, keep)])
        metric(logits, None).backward()  # a sum over examples: the per-example slices are per-example gradients
        per_example = {}
        for layer in range(model.cfg.n_layers):
            result = f"blocks.{layer}.attn.hook_result"
            for head in range(model.cfg.n_heads):
                difference = corrupted_cache[result][:, :, head] - outputs[result][:, :, head].detach()
                per_example[f"a{layer}.{head}"] = (difference * outputs[result].grad[:, :, head]).sum(dim=(1, 2))
            if not model.cfg.attn_only:
                mlp = f"blocks.{layer}.hook_mlp_out"
                difference = corrupted_cache[mlp] - outputs[mlp].detach()
                per_example[f"m{layer}"] = (difference * outputs[mlp].grad).sum(dim=(1, 2))
        return per_example
    finally:
        model.set_use_attn_result(False)


@pytest.mark.parametrize("seed,attn_only", [(0, False), (1, True)])
def test_node_scores_equal_plain_autograd(make_model, tokens, seed, attn_only):
    model, graph, clean, corrupted, ablated = _setup(make_model, tokens, seed, attn_only=attn_only)
    scores = hisp_node_scores(model, graph, clean, ablated, logit_difference, normalize=False)
    reference = plain_autograd_node_attributions(model, clean, corrupted, logit_difference)
    expected = torch.tensor([reference[s].abs().mean().item() for s in graph.sources[1:]], dtype=torch.float64)
    assert expected.min() > 1e-4  # every node matters a little: the comparison is not vacuous
    assert scores[0] == math.inf  # the input is never pruned
    assert torch.allclose(scores[1:], expected, rtol=1e-9, atol=1e-12)
    # the absolute value is taken per example: the mean of the signed attributions is smaller somewhere
    signed = torch.tensor([reference[s].mean().abs().item() for s in graph.sources[1:]], dtype=torch.float64)
    assert (signed < expected - 1e-6).any()


def test_node_scores_equal_outgoing_eap_scores_per_example(make_model, tokens):
    model, graph, clean, _, ablated = _setup(make_model, tokens, seed=2)
    scores = hisp_node_scores(model, graph, clean, ablated, logit_difference, normalize=False)
    per_example = torch.stack([
        eap_scores(model, graph, clean[i : i + 1], ablated[:, i : i + 1], logit_difference)
        for i in range(clean.shape[0])
    ])  # (example, edge)
    for s, node in enumerate(graph.sources[1:], start=1):
        outgoing = [e for e, name in enumerate(graph.edge_names) if name.split(" -> ")[0] == node]
        expected = per_example[:, outgoing].sum(1).abs().mean()
        assert torch.isclose(scores[s], expected, rtol=1e-9, atol=1e-12), node


def test_layer_normalisation(make_model, tokens):
    model, graph, clean, _, ablated = _setup(make_model, tokens, seed=3)
    raw = hisp_node_scores(model, graph, clean, ablated, logit_difference, normalize=False)
    normalized = hisp_node_scores(model, graph, clean, ablated, logit_difference)
    for layer in range(graph.n_layers):
        span = graph.layer_sources(layer)
        assert torch.isclose(torch.linalg.vector_norm(normalized[span]), torch.tensor(1.0, dtype=torch.float64))
        assert torch.allclose(normalized[span] * torch.linalg.vector_norm(raw[span]), raw[span])
    assert not torch.equal(raw.argsort(), normalized.argsort())  # normalising changes the ranking across layers


def test_edge_scores_cut_node_circuits():
    graph = Graph(n_layers=2, n_heads=1, attn_only=False, qkv_direct_edges=True)
    assert graph.sources == ("input", "a0.0", "m0", "a1.0", "m1")
    nodes = torch.tensor([math.inf, 0.4, 0.1, 0.9, 0.2], dtype=torch.float64)
    scores = dict(zip(graph.edge_names, hisp_edge_scores(graph, nodes).tolist()))
    assert scores["input -> logits"] == math.inf
    assert scores["input -> a0.0.q"] == 0.4 and scores["a0.0 -> logits"] == 0.4
    assert scores["a0.0 -> a1.0.v"] == 0.4 and scores["m0 -> a1.0.k"] == 0.1 and scores["a1.0 -> m1"] == 0.2
    assert scores["a1.0.q -> a1.0"] == 0.9  # a direct edge: both ends are the head
    # the edges with score >= t are exactly the edges among the nodes with score >= t
    for t in (0.1, 0.2, 0.4, 0.9):
        kept_nodes = {n for n, s in zip(graph.sources, nodes.tolist()) if s >= t} | {"logits"}
        ends = lambda edge: [end[:-2] if end[-2:] in (".q", ".k", ".v") else end for end in edge.split(" -> ")]
        assert {e for e, s in scores.items() if s >= t} == {e for e in graph.edge_names if set(ends(e)) <= kept_nodes}


def test_hisp_scores_and_direct_edges_are_not_node_masked(make_model, tokens):
    model, graph, clean, _, ablated = _setup(make_model, tokens, seed=0)
    direct = Graph.from_config(model.cfg, qkv_direct_edges=True)
    plain_nodes = hisp_node_scores(model, graph, clean, ablated, logit_difference)
    assert torch.allclose(hisp_node_scores(model, direct, clean, ablated, logit_difference), plain_nodes, rtol=1e-12)
    scores = hisp_scores(model, graph, clean, ablated, logit_difference)
    assert torch.equal(scores, hisp_edge_scores(graph, plain_nodes))
    assert scores.shape == (graph.n_edges,) and scores.dtype == torch.float64
    # mean ablation: one ablated value for every example
    mean = ablation_values("mean", reference=source_outputs(model, graph, tokens[1]))
    assert torch.isfinite(hisp_node_scores(model, graph, clean, mean, logit_difference)[1:]).all()
    assert len(Circuit(graph, scores >= scores[scores.isfinite()].median())) > 0


def test_bad_input_is_one_clear_error(make_model, tokens):
    model, graph, clean, _, ablated = _setup(make_model, tokens, seed=0)
    with pytest.raises(ValueError, match="ablated must be"):
        hisp_node_scores(model, graph, clean, ablated[:, :2], logit_difference)
    with pytest.raises(ValueError, match="clean must be"):
        hisp_node_scores(model, graph, clean[0], ablated, logit_difference)
    with pytest.raises(ValueError, match="must return a scalar"):
        hisp_node_scores(model, graph, clean, ablated, lambda logits, index: logits[:, -1, :2])
    with pytest.raises(ValueError, match="one score per source"):
        hisp_edge_scores(graph, torch.zeros(3))
    with pytest.raises(ValueError, match="does not belong to this model"):
        hisp_node_scores(model, Graph(n_layers=1, n_heads=4, attn_only=False), clean, ablated, logit_difference)
