"""EAP against an independent computation on the plain model, and its cut into circuits."""

import pytest
import torch

from circuitflow.discovery.circuits import above_threshold, ranking, top_n, top_n_masks
from circuitflow.discovery.eap import eap_scores
from circuitflow.graph import Graph
from circuitflow.ablation import ablation_values
from circuitflow.patching import source_outputs


def plain_autograd_eap(model, graph: Graph, clean, corrupted, metric) -> dict[str, float]:
    """score(s -> d) = (corrupt_s - clean_s) . dMetric/d(input_d), by TransformerLens hooks and autograd."""
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    _, corrupted_cache = model.run_with_cache(corrupted)
    inputs = {}

    def keep(activation, hook):
        activation.retain_grad()
        inputs[hook.name] = activation
        return activation

    names = lambda name: name.endswith(("_input", "hook_mlp_in", "hook_result", "hook_mlp_out", "hook_embed", "hook_pos_embed")) or name == f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    logits = model.run_with_hooks(clean, fwd_hooks=[(names, keep)])
    metric(logits).backward()

    def source(name, cache):
        if name == "input":
            return cache["hook_embed"] + cache["hook_pos_embed"]
        if name.startswith("a"):
            layer, head = map(int, name[1:].split("."))
            return cache[f"blocks.{layer}.attn.hook_result"][:, :, head]
        return cache[f"blocks.{int(name[1:])}.hook_mlp_out"]

    def gradient(name):
        if name == "logits":
            return inputs[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"].grad
        if name.startswith("m"):
            return inputs[f"blocks.{int(name[1:])}.hook_mlp_in"].grad
        head, qkv = name.rsplit(".", 1)
        layer, index = map(int, head[1:].split("."))
        return inputs[f"blocks.{layer}.hook_{qkv}_input"].grad[:, :, index]

    clean_cache = {k: v.detach() for k, v in inputs.items()}
    scores = {}
    for edge in graph.edge_names:
        src, dst = edge.split(" -> ")
        difference = source(src, corrupted_cache) - source(src, clean_cache)
        scores[edge] = float((difference * gradient(dst)).sum()) / clean.shape[0]
    return scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eap_equals_plain_autograd(make_model, tokens, seed):
    model = make_model(seed=seed, dtype=torch.float64)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg)
    metric = lambda logits: (logits[:, -1, 3] - logits[:, -1, 7]).sum()
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    ours = eap_scores(model, graph, clean, ablated, lambda logits, index: metric(logits), batch_size=4)
    reference = plain_autograd_eap(model, graph, clean, corrupted, metric)
    expected = torch.tensor([reference[e] for e in graph.edge_names], dtype=torch.float64)
    assert expected.abs().max() > 1e-3  # the check is not vacuous
    assert torch.allclose(ours, expected, rtol=1e-6, atol=1e-9)


def test_cutting_circuits_from_scores_is_deterministic_on_ties():
    graph = Graph(n_layers=1, n_heads=2, attn_only=True)
    assert graph.n_edges == 9
    scores = torch.tensor([0.5, 0.9, 0.5, 0.1, 0.9, 0.0, 0.2, 0.3, 0.6])
    order = ranking(scores).tolist()
    assert order[:5] == [1, 4, 8, 0, 2]  # ties keep edge order
    assert top_n(graph, scores, 3).members.nonzero().flatten().tolist() == [1, 4, 8]
    assert len(above_threshold(graph, scores, 0.5)) == 5
    masks = top_n_masks(graph, scores, [0, 3, graph.n_edges])
    assert masks.sum(1).tolist() == [0, 3, graph.n_edges]
    assert torch.equal(masks[1].bool(), top_n(graph, scores, 3).members)
