"""EAP-IG graph JSON (circuitflow.interchange): names both ways, edge counts, round trip, a
hand-written EAP-IG file imported and evaluated, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import small_model

from circuitflow.ablation import ablation_values
from circuitflow.circuit import Circuit
from circuitflow.evaluation.mib import mean_metric
from circuitflow.graph import Graph
from circuitflow.interchange import (
    eap_edge,
    eap_edge_names,
    eap_node,
    load_eap_circuit,
    load_eap_scores,
    project_edge,
    read_eap_json,
    to_eap_dict,
    write_eap_json,
)
from circuitflow.patching import run_circuits, source_outputs


def test_names_both_ways():
    pairs = {
        "a0.1 -> a2.3.q": "a0.h1->a2.h3<q>",
        "m0 -> logits": "m0->logits",
        "input -> a0.0.v": "input->a0.h0<v>",
        "a1.2 -> m1": "a1.h2->m1",
        "m0 -> a1.0.k": "m0->a1.h0<k>",
    }
    for ours, theirs in pairs.items():
        assert eap_edge(ours) == theirs
        assert project_edge(theirs) == ours
    assert [eap_node(n) for n in ("input", "a3.11", "m2", "logits")] == ["input", "a3.h11", "m2", "logits"]
    assert project_edge("not an edge") is None


def _eap_ig_edge_count(n_layers: int, n_heads: int) -> int:
    """EAP-IG's Graph.from_model construction, counted: every earlier source into each head's q, k,
    v and then into the MLP (which also reads its own layer's heads); everything into the logits."""
    stream, count = 1, 0
    for _ in range(n_layers):
        count += stream * n_heads * 3
        stream += n_heads
        count += stream
        stream += 1
    return count + stream


def test_gpt2_small_edge_count():
    graph = Graph(n_layers=12, n_heads=12, attn_only=False)
    names = eap_edge_names(graph)
    assert graph.n_edges == 32491
    assert len(set(names)) == 32491 == _eap_ig_edge_count(12, 12)
    exported = to_eap_dict(graph, d_model=768)
    assert len(exported["edges"]) == 32491 and set(exported["edges"]) == set(names)
    assert len(exported["nodes"]) == 1 + 12 * 13 + 1
    assert exported["cfg"] == {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": False, "d_model": 768}
    # EAP-IG's order: input into layer 0's q inputs first, the logits last
    assert list(exported["edges"])[:3] == ["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>"]
    assert list(exported["edges"])[-1] == "m11->logits"


def test_round_trip(tmp_path):
    graph = Graph(n_layers=2, n_heads=3, attn_only=False)
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(graph.n_edges, generator=generator, dtype=torch.float64) * 1e-3
    circuit = Circuit(graph, torch.rand(graph.n_edges, generator=generator) < 0.3)
    path = tmp_path / "graph.json"
    write_eap_json(path, graph, scores, circuit, d_model=32)
    read = read_eap_json(path, graph, d_model=32)
    assert torch.equal(read.scores, scores)  # exact: floats are written with repr
    assert read.circuit == circuit
    assert load_eap_circuit(path, graph) == circuit and torch.equal(load_eap_scores(path, graph), scores)
    data = json.loads(path.read_text())
    assert data["nodes"]["logits"]["in_graph"] is True
    assert {n for n, v in data["nodes"].items() if v["in_graph"]} == {eap_node(n) for n in circuit.nodes()} | {"logits"}
    first = path.read_bytes()
    write_eap_json(path, graph, scores, circuit, d_model=32)
    assert path.read_bytes() == first


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="split-input graph .* no EAP-IG equivalent"):
        eap_edge_names(Graph(n_layers=2, n_heads=1, attn_only=False, split_input=True))
    with pytest.raises(ValueError, match="no EAP-IG equivalent"):
        eap_edge_names(Graph(n_layers=2, n_heads=1, attn_only=True))
    graph = Graph(n_layers=2, n_heads=2, attn_only=False)
    path = tmp_path / "bad.json"
    cfg = {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 32}
    path.write_text(json.dumps({"cfg": cfg, "nodes": {}, "edges": {
        "input->a0.h0<q>": {"score": 1.0, "in_graph": True}, "m1->a0.h0<q>": {"score": 1.0, "in_graph": True},
        "a0.h7->m1": {"score": 1.0, "in_graph": True}}}))
    with pytest.raises(ValueError, match=r"bad\.json has edge 'm1->a0\.h0<q>', which is not in the graph"):
        read_eap_json(path, graph)
    path.write_text(json.dumps({"cfg": {**cfg, "n_layers": 3}, "nodes": {}, "edges": {}}))
    with pytest.raises(ValueError, match="bad.json has cfg n_layers=3 but the graph has n_layers=2"):
        read_eap_json(path, graph)
    path.write_text(json.dumps({"cfg": cfg, "nodes": {}, "edges": {}}))
    with pytest.raises(ValueError, match="cfg d_model=32 but the graph has d_model=64"):
        read_eap_json(path, graph, d_model=64)
    path.write_text(json.dumps({"cfg": cfg, "nodes": {}, "edges": {"m0->logits": {"score": "high", "in_graph": True}}}))
    with pytest.raises(ValueError, match="must map to"):
        read_eap_json(path, graph)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable JSON file"):
        read_eap_json(path, graph)


# A circuit as EAP-IG would write it for a 2-layer, 4-head model (only a handful of edges listed;
# the edges left out are out of the circuit with score 0, EAP-IG's defaults).
HAND_WRITTEN = {
    "cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32},
    "nodes": {"input": {"in_graph": True}, "a0.h1": {"in_graph": True}, "m0": {"in_graph": True},
              "a1.h2": {"in_graph": True}, "logits": {"in_graph": True}},
    "edges": {
        "input->a0.h1<v>": {"score": 0.9, "in_graph": True},
        "input->a0.h1<q>": {"score": 0.2, "in_graph": True},
        "a0.h1->m0": {"score": 0.7, "in_graph": True},
        "m0->a1.h2<k>": {"score": 0.5, "in_graph": True},
        "input->a1.h2<v>": {"score": -0.4, "in_graph": True},
        "a1.h2->logits": {"score": 1.1, "in_graph": True},
        "m0->logits": {"score": 0.6, "in_graph": True},
        "a0.h3->logits": {"score": 0.01, "in_graph": False},
    },
}
SAME_IN_OUR_NAMES = ["input -> a0.1.v", "input -> a0.1.q", "a0.1 -> m0", "m0 -> a1.2.k", "input -> a1.2.v",
                     "a1.2 -> logits", "m0 -> logits"]


def test_hand_written_eap_file_is_evaluated(tmp_path):
    model = small_model(seed=3, n_layers=2, dtype=torch.float64)
    graph = Graph.from_config(model.cfg)
    path = tmp_path / "eap_graph.json"
    path.write_text(json.dumps(HAND_WRITTEN))
    imported = read_eap_json(path, graph, d_model=model.cfg.d_model)
    assert imported.circuit == Circuit.from_edges(graph, SAME_IN_OUR_NAMES)
    assert float(imported.scores[graph.edge_index["input -> a1.2.v"]]) == -0.4
    assert float(imported.scores[graph.edge_index["a0.3 -> logits"]]) == 0.01
    assert int((imported.scores != 0).sum()) == 8

    generator = torch.Generator().manual_seed(5)
    clean, corrupted = torch.randint(0, 50, (2, 10, 6), generator=generator)
    answer, wrong = torch.randint(0, 50, (2, 10), generator=generator)
    rows = torch.arange(10)

    def metric(logits, index):
        return logits[:, -1].gather(-1, answer[index, None])[:, 0] - logits[:, -1].gather(-1, wrong[index, None])[:, 0]

    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    masks = torch.stack([Circuit.full(graph).members, Circuit.empty(graph).members, imported.circuit.members])
    m_full, m_empty, m_circuit = mean_metric(model, graph, clean, ablated, masks, metric, batch_size=4).tolist()
    recovered = (m_circuit - m_empty) / (m_full - m_empty)
    # direct: the model itself for the full and the empty circuit (resample ablation of every edge is
    # the model on the corrupted input), and the engine on the circuit named in this project's names
    with torch.no_grad():
        direct_full = metric(model(clean), rows).mean()
        direct_empty = metric(model(corrupted), rows).mean()
        mask = Circuit.from_edges(graph, SAME_IN_OUR_NAMES).mask(torch.float64)
        direct_circuit = metric(run_circuits(model, graph, clean, ablated, mask), rows).mean()
    direct = float((direct_circuit - direct_empty) / (direct_full - direct_empty))
    print(f"hand-written EAP-IG circuit on a 2-layer model: recovered fraction {recovered:.6f} (direct {direct:.6f})")
    assert abs(recovered - direct) < 1e-9


def test_hand_written_eap_file_on_the_ioi_organism(tmp_path):
    """The same hand-written EAP-IG file on an IOI organism trained here, evaluated on IOI prompts:
    MIB's recovered fraction through the engine equals the model's own forward passes (full: clean
    prompts; empty: every edge resample-ablated, i.e. the corrupted prompts) and the circuit's run."""
    from circuitflow.behaviors import get_behavior
    from circuitflow.models import load_model
    from circuitflow.models.organisms import train_organism

    directory = tmp_path / "ioi-organism"
    train_organism("ioi", {"steps": 300, "batch_size": 32, "n_train": 2000, "n_eval": 50, "eval_every": 300, "d_model": 32,
                           "n_heads": 4, "warmup_steps": 10, "lr": 3e-3}, directory, progress=False)
    loaded = load_model(directory)
    model, graph = loaded.model, loaded.graph
    behavior = get_behavior("ioi")
    examples = behavior.encode(behavior.make_dataset(20, 0), loaded.tokenizer)
    clean, corrupted, io, s = examples["clean"], examples["corrupted"], examples["io"], examples["s"]
    path = tmp_path / "ioi_eap_graph.json"
    path.write_text(json.dumps(HAND_WRITTEN))
    circuit = load_eap_circuit(path, graph, d_model=model.cfg.d_model)
    assert circuit == Circuit.from_edges(graph, SAME_IN_OUR_NAMES)

    def metric(logits, index):  # the logit difference of IO over S at the last position
        last = logits[:, -1]
        return last.gather(-1, io[index, None])[:, 0] - last.gather(-1, s[index, None])[:, 0]

    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    masks = torch.stack([Circuit.full(graph).members, Circuit.empty(graph).members, circuit.members])
    m_full, m_empty, m_circuit = mean_metric(model, graph, clean, ablated, masks, metric, batch_size=8).tolist()
    rows = torch.arange(clean.shape[0])
    with torch.no_grad():
        full, empty = metric(model(clean), rows).mean(), metric(model(corrupted), rows).mean()
        inside = metric(run_circuits(model, graph, clean, ablated, circuit.mask(torch.float32)), rows).mean()
    assert float(full) > 0  # the organism prefers IO to S
    assert abs(m_full - float(full)) < 1e-4 and abs(m_empty - float(empty)) < 1e-4 and abs(m_circuit - float(inside)) < 1e-4
    recovered = (m_circuit - m_empty) / (m_full - m_empty)
    print(f"hand-written EAP-IG circuit on the IOI organism: recovered fraction {recovered:.4f}")
