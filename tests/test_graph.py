import json

import pytest
import torch
from transformer_lens import HookedTransformerConfig

from circuitflow.circuit import Circuit
from circuitflow.graph import Graph


def published_config(name: str) -> HookedTransformerConfig:
    """The architectures of the papers' models (weights are not needed to count edges)."""
    shapes = {
        "gpt2": dict(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, attn_only=False, d_vocab=50257, n_ctx=1024, act_fn="gelu_new"),
        "attn-only-4l": dict(n_layers=4, n_heads=8, d_model=512, d_head=64, attn_only=True, d_vocab=48262, n_ctx=2048, positional_embedding_type="shortformer"),
        "redwood_attn_2l": dict(n_layers=2, n_heads=8, d_model=256, d_head=32, attn_only=True, d_vocab=50259, n_ctx=2048, positional_embedding_type="shortformer"),
    }[name]
    return HookedTransformerConfig(normalization_type="LN", **shapes)


@pytest.mark.parametrize(
    "name, edges, with_direct",
    [("gpt2", 32_491, 32_923), ("attn-only-4l", 1_281, 1_377), ("redwood_attn_2l", 257, 305)],
)
def test_published_edge_counts(name, edges, with_direct):
    cfg = published_config(name)
    assert Graph.from_config(cfg).n_edges == edges
    graph = Graph.from_config(cfg, qkv_direct_edges=True)
    assert graph.n_edges == with_direct == len(graph.edge_names) == len(set(graph.edge_names))


def test_edge_names_and_order_are_readable_and_stable():
    graph = Graph(n_layers=2, n_heads=2, attn_only=False)
    names = graph.edge_names
    assert names[0] == "input -> a0.0.q"
    assert "a0.1 -> m0" in names and "m0 -> a1.0.k" in names and "m1 -> logits" in names
    assert "m0 -> m0" not in names and "a1.0 -> a1.1.q" not in names  # only strictly earlier sources
    assert Graph(n_layers=2, n_heads=2, attn_only=False).edge_names == names


def test_split_input_and_positions():
    graph = Graph(n_layers=1, n_heads=1, attn_only=False, split_input=True)
    assert graph.sources[:2] == ("embed", "pos_embed")
    assert "pos_embed -> a0.0.k" in graph.edge_index
    positional = Graph(n_layers=1, n_heads=1, attn_only=False, n_positions=4)
    assert positional.n_edges == 4 * Graph(n_layers=1, n_heads=1, attn_only=False).n_edges
    assert "input -> m0 @ 3" in positional.edge_index


def test_edges_to_mask_places_each_edge():
    graph = Graph(n_layers=2, n_heads=2, attn_only=False, qkv_direct_edges=True)
    for name in ["a0.1 -> m1", "m0 -> logits", "input -> a1.0.v"]:
        values = torch.ones(graph.n_edges)
        values[graph.edge_index[name]] = 0.0
        dense = graph.edges_to_mask(values)
        src, dst = name.split(" -> ")
        zero = (dense == 0) & graph.parents
        assert zero.nonzero().tolist() == [[graph.source_index[src], graph.destination_index[dst]]]
    values = torch.ones(graph.n_edges)
    values[graph.edge_index["a1.1.k -> a1.1"]] = 0.0
    dense = graph.edges_to_mask(values)
    assert dense[:, graph.destination_index["a1.1.k"]].sum() == 0
    assert dense[graph.parents].sum() == graph.parents.sum() - graph.parents[:, graph.destination_index["a1.1.k"]].sum()


def test_circuit_json_round_trip_and_set_operations(tmp_path):
    graph = Graph(n_layers=2, n_heads=2, attn_only=False)
    a = Circuit.from_edges(graph, ["input -> a0.0.q", "a0.0 -> m0", "m1 -> logits"])
    b = Circuit.from_edges(graph, ["m1 -> logits", "a1.1 -> logits"])
    assert len(a | b) == 4 and (a & b).edges == ["m1 -> logits"] and len(a - b) == 2
    assert len(a.complement()) == graph.n_edges - 3 and (a | a.complement()) == Circuit.full(graph)
    assert a.nodes() == ["input", "a0.0", "m0", "m1", "logits"]
    a.save(tmp_path / "c.json")
    assert Circuit.load(tmp_path / "c.json", graph) == a
    assert json.loads((tmp_path / "c.json").read_text())["edges"] == a.edges


def test_circuit_rejects_unknown_edges_and_other_graphs(tmp_path):
    graph = Graph(n_layers=2, n_heads=2, attn_only=True)
    with pytest.raises(ValueError, match="'a5.0 -> logits' is not in this model's graph"):
        Circuit.from_edges(graph, ["a5.0 -> logits"])
    with pytest.raises(ValueError, match="no MLP|not in this model"):
        Circuit.from_edges(graph, ["a0.0 -> m0"])
    other = Graph(n_layers=3, n_heads=2, attn_only=True)
    Circuit.empty(other).save(tmp_path / "c.json")
    with pytest.raises(ValueError, match="saved for a graph"):
        Circuit.load(tmp_path / "c.json", graph)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not a circuit JSON file"):
        Circuit.load(tmp_path / "bad.json")


def test_unsupported_architectures_are_refused():
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=5, n_ctx=4, act_fn="gelu", parallel_attn_mlp=True)
    with pytest.raises(ValueError, match="Parallel attention"):
        Graph.from_config(cfg)
