"""The canonical circuits: published counts, generator == shipped data, and they fit the models' graphs."""

import pytest
import torch
from transformer_lens import HookedTransformerConfig

from circuitflow.circuit import Circuit
from circuitflow.graph import Graph
from circuitflow.models import canonical


def gpt2_small_config() -> HookedTransformerConfig:
    """GPT-2 small's shape, written by hand (no download): 12 layers, 12 heads, MLPs."""
    return HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024,
        act_fn="gelu_new", normalization_type="LN",
    )


def attn_only_4l_config() -> HookedTransformerConfig:
    """attn-only-4l's shape: 4 layers, 8 heads, attention only, shortformer positions."""
    return HookedTransformerConfig(
        n_layers=4, d_model=512, n_heads=8, d_head=64, d_vocab=48262, n_ctx=2048, act_fn="gelu",
        attn_only=True, normalization_type="LN", positional_embedding_type="shortformer",
    )


CONFIGS = {"ioi": gpt2_small_config, "greater-than": gpt2_small_config, "docstring": attn_only_4l_config}
PUBLISHED = {"ioi": 1041, "greater-than": 262, "docstring": 37}


def test_graphs_of_the_hand_built_configs_have_the_published_sizes():
    gpt2 = Graph.from_config(gpt2_small_config(), qkv_direct_edges=True)
    assert (gpt2.n_residual_edges, gpt2.n_edges) == (32491, 32923)
    docstring = Graph.from_config(attn_only_4l_config(), qkv_direct_edges=True)
    assert (docstring.n_residual_edges, docstring.n_edges) == (1281, 1377)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_circuit_has_the_published_count_and_fits_the_model_graph(name):
    edges = canonical.canonical_edges(name)
    assert len(edges) == len(set(edges)) == PUBLISHED[name]
    graph = Graph.from_config(CONFIGS[name](), qkv_direct_edges=True)
    circuit = canonical.canonical_circuit(name, graph)
    assert len(circuit) == PUBLISHED[name]
    assert circuit.edges == edges  # stored in graph order


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_data_is_what_the_generator_writes(name, tmp_path):
    assert canonical.GENERATORS[name]() == canonical.canonical_edges(name)
    canonical.write_canonical(tmp_path)
    assert (tmp_path / f"{name}.json").read_bytes() == (canonical.DATA_DIR / f"{name}.json").read_bytes()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_head_used_is_switched_on_and_every_head_switched_on_is_used(name):
    """A head with outgoing edges keeps at least one q/k/v direct edge, and the reverse."""
    edges = canonical.canonical_edges(name)
    direct = {edge.split(" -> ")[1] for edge in edges if edge.split(" -> ")[0].count(".") == 2}
    senders = {edge.split(" -> ")[0] for edge in edges if edge.split(" -> ")[0].startswith("a") and edge.split(" -> ")[0].count(".") == 1}
    receivers = {edge.split(" -> ")[1].rsplit(".", 1)[0] for edge in edges if edge.split(" -> ")[1].count(".") == 2}
    assert senders == direct
    assert receivers <= direct


def test_ioi_circuit_holds_the_26_heads_and_wires_the_name_movers_to_the_logits():
    edges = set(canonical.canonical_edges("ioi"))
    direct = [edge for edge in edges if edge.split(" -> ")[0].count(".") == 2]
    assert len(direct) == 26 * 3
    assert {"a9.9 -> logits", "a10.0 -> logits", "a9.6 -> logits", "a10.7 -> logits"} <= edges
    assert "a9.9.q -> a9.9" in edges and "a9.9 -> a10.0.q" not in edges  # no name mover -> name mover
    assert "a7.3 -> a9.9.q" in edges and "a7.3 -> a9.9.k" not in edges  # S-inhibition writes the query only
    assert "input -> a9.9.q" not in edges and "m3 -> a9.9.q" in edges  # MLPs stay in, the embedding only where named
    assert not any(edge.startswith("a1.0") for edge in edges)  # a head outside the circuit


def test_greaterthan_circuit_keeps_the_amid_queries_clean():
    edges = set(canonical.canonical_edges("greater-than"))
    assert {f"m{layer} -> a9.1.q" for layer in range(9)} <= edges
    assert "a9.1 -> logits" in edges and "m11 -> logits" in edges
    assert "a5.5 -> m5" not in edges and "a5.5 -> m8" in edges


def test_docstring_circuit_is_the_manual_graph():
    edges = set(canonical.canonical_edges("docstring"))
    assert {"a3.0 -> logits", "a3.6 -> logits", "a0.5 -> a1.4.v", "a1.2 -> a3.6.k"} <= edges
    heads = {edge.split(" -> ")[0] for edge in edges if edge.split(" -> ")[0].count(".") == 1 and edge[0] == "a"}
    assert heads == {"a0.5", "a1.2", "a1.4", "a2.0", "a3.0", "a3.6"}


def test_wrong_graph_or_name_is_one_clear_sentence():
    with pytest.raises(ValueError, match="Unknown canonical circuit 'induction'"):
        canonical.canonical_edges("induction")
    with pytest.raises(ValueError, match="needs gpt2's graph"):
        canonical.canonical_circuit("ioi", Graph.from_config(attn_only_4l_config(), qkv_direct_edges=True))
    with pytest.raises(ValueError, match="qkv_direct_edges=True"):
        canonical.canonical_circuit("docstring", Graph.from_config(attn_only_4l_config()))
    with pytest.raises(ValueError, match="belongs to gpt2"):
        canonical.check_circuit_for_model("ioi", "attn-only-4l")


def test_circuit_runs_as_a_mask_of_the_graph():
    graph = Graph.from_config(attn_only_4l_config(), qkv_direct_edges=True)
    circuit = canonical.canonical_circuit("docstring", graph)
    mask = graph.edges_to_mask(circuit.members.float())
    assert mask.shape == (graph.n_sources, graph.n_destinations)
    # the direct edges of heads outside the circuit zero their q/k/v columns entirely
    column = graph.destination_index["a3.1.q"]
    assert torch.all(mask[:, column] == 0)
    assert isinstance(Circuit.from_edges(graph, circuit.edges), Circuit)
