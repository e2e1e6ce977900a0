"""Positional EAP-IG (discovery.positional_eap_ig_scores) and its figures (report.positional_figures)."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from circuitflow.behaviors import get_behavior
from circuitflow.discovery import DiscoveryTask, positional_eap_ig_scores
from circuitflow.discovery.eap_ig import eap_ig_inputs_scores
from circuitflow.graph import Graph
from circuitflow.models import siit
from circuitflow.behaviors.siit_cases import CASES
from circuitflow.ablation import ablation_values
from circuitflow.patching import source_outputs
from circuitflow.report.positional_figures import layer_importance, node_layer, plot_layer_importance, plot_positional_heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def task():
    # A fresh (untrained) SIIT-shaped transformer on the siit-hist behavior: real model, data and metric.
    case = CASES["hist"]
    torch.manual_seed(0)
    model = siit._new_model(siit.hooked_config(case, siit.resolve_settings(case, {})))
    model.cfg.dtype = torch.float64
    model = model.double()
    behavior = get_behavior("siit-hist")
    examples = behavior.encode(behavior.make_dataset(12, 0), None)
    graph = Graph.from_config(model.cfg)
    corrupted = source_outputs(model, graph, examples["corrupted"])
    ablated = ablation_values("resample", corrupted=corrupted)
    return DiscoveryTask(model, graph, examples["clean"], ablated, behavior, examples, batch_size=5)


def test_positional_scores_summed_over_positions_are_the_plain_scores(task):
    graph, positional = positional_eap_ig_scores(task, {"steps": 3})
    n_positions = task.clean.shape[1]
    assert graph.n_positions == n_positions and positional.shape == (task.graph.n_edges * n_positions,)
    assert graph.edge_names[0] == f"{task.graph.edge_names[0]} @ 0"
    plain = eap_ig_inputs_scores(task.model, task.graph, task.clean, task.ablated, task.metric, steps=3, batch_size=5)
    summed = positional.view(task.graph.n_edges, n_positions).sum(1)
    torch.testing.assert_close(summed, plain.double(), rtol=1e-9, atol=1e-9)
    assert positional.abs().max() > 0  # not all zero: the identity is not empty


def test_layer_importance_sums_the_edges_into_and_out_of_each_layer():
    scores = pl.DataFrame({
        "edge": ["input -> l0", "input -> l0", "l0 -> l1", "l0 -> logits", "l1 -> logits", "a0.1 -> m0"],
        "position": [0, 1, 1, 2, 2, 0],
        "score": [1.0, -2.0, 0.5, 4.0, -8.0, 16.0],
    })
    importance = layer_importance(scores, n_layers=2)
    assert importance["into"].to_list() == [3.0 + 16.0, 0.5]  # m0 reads layer 0's residual stream
    assert importance["out_of"].to_list() == [0.5 + 4.0 + 16.0, 8.0]
    assert [node_layer(n, 2) for n in ("input", "a1.3.q", "m0", "l1", "logits")] == [-1, 1, 0, 1, 2]
    with pytest.raises(ValueError, match="Cannot tell the layer"):
        node_layer("resid_pre", 2)


def test_positional_figures_are_written(tmp_path):
    scores = pl.DataFrame({"edge": ["input -> l0", "l0 -> logits"] * 3, "position": [0, 0, 1, 1, 2, 2],
                           "score": [0.1, -0.3, 0.2, 0.0, 0.5, 1.0]})
    (heatmap,) = plot_positional_heatmap(scores, tmp_path / "heatmap", "positional", formats=("png",))
    (bars,) = plot_layer_importance(layer_importance(scores, 1), tmp_path / "layers", "layers", formats=("png",))
    assert heatmap.read_bytes().startswith(PNG_MAGIC) and bars.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="no positional scores"):
        plot_positional_heatmap(scores.clear(), tmp_path / "empty", "empty", formats=("png",))
