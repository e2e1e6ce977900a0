"""Tracr models: conversion against tracr on every input, ground truth, save/load, datasets, score."""

import copy
import re

import numpy as np
import pytest
import torch

from circuitflow.behaviors import tracr as behaviors
from circuitflow.graph import Graph
from circuitflow.models import tracr
from circuitflow.ablation import ablation_values
from circuitflow.patching import run_circuits, source_outputs

N_INPUTS = {"reverse": 363, "frac_prevs": 1364}
BEHAVIOR = {"reverse": "reverse", "frac_prevs": "proportion"}

# ACDC's published tracr circuits (acdc/tracr_task/utils.py, get_tracr_reverse_edges and
# get_tracr_proportion_edges), reference data translated to this project's names: their residual
# edges only; ACDC also counts one direct edge per used q/k/v input (hook_q_input -> hook_q).
ACDC_RESIDUAL_EDGES = {
    "reverse": {
        "a3.0 -> logits", "m2 -> a3.0.q", "pos_embed -> a3.0.k", "embed -> a3.0.v", "m1 -> m2",
        "m0 -> m1", "embed -> m1", "pos_embed -> m1", "a0.0 -> m0", "embed -> m0", "embed -> a0.0.v",
    },
    "frac_prevs": {
        "a1.0 -> logits", "embed -> a1.0.q", "pos_embed -> a1.0.q", "embed -> a1.0.k",
        "pos_embed -> a1.0.k", "m0 -> a1.0.v", "embed -> m0",
    },
}
ACDC_PUBLISHED_COUNT = {"reverse": 15, "frac_prevs": 10}


def acdc_count(edges) -> int:
    """Edges counted ACDC's way: residual edges plus one direct edge per used q/k/v input."""
    return len(edges) + len({dst for dst in (e.split(" -> ")[1] for e in edges) if re.search(r"\.[qkv]$", dst)})


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():  # nothing here differentiates; also lets a test perturb a weight in place
        yield


@pytest.fixture(scope="module", params=tracr.TRACR_NAMES)
def built(request):
    compiled = tracr.compile_program(request.param)
    model, info = tracr.to_hooked_transformer(compiled)
    return compiled, model, info, tracr.tracr_outputs(compiled)


@pytest.fixture(scope="module")
def truth(built):
    compiled, model, info, _ = built
    return tracr.ground_truth_circuits(compiled.name, model, info)


# ---- conversion -----------------------------------------------------------------------------------


def test_conversion_matches_tracr_on_every_input(built):
    compiled, model, info, reference = built
    assert sum(len(tokens) for tokens, _ in reference) == N_INPUTS[compiled.name]
    assert [tokens.shape[1] for tokens, _ in reference] == [2, 3, 4, 5, 6]
    assert tracr.verify_conversion(compiled, model, reference=reference) < 1e-12


def test_conversion_check_fails_on_one_perturbed_weight(built):
    compiled, model, _, reference = built
    broken = copy.deepcopy(model)
    w_v = broken.blocks[-1].attn.W_V  # the aggregating head's value weights, a weight every output uses
    index = np.unravel_index(int(w_v.abs().argmax()), tuple(w_v.shape))
    w_v[index] += 1e-6
    with pytest.raises(ValueError, match=f"converted {compiled.name} model differs from tracr"):
        tracr.verify_conversion(compiled, broken, reference=reference)
    assert tracr.verify_conversion(compiled, model, reference=reference) < 1e-12  # the original is untouched


def test_shapes_and_encoding(built):
    compiled, model, info, _ = built
    cfg = model.cfg
    shapes = (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.d_vocab_out)
    if compiled.name == "reverse":
        assert shapes == (4, 1, 41, 12, 30, 3)
        assert (info.bos_id, info.pad_id, info.vocab_ids) == (3, 4, (0, 1, 2))  # tracr sorts 1, 2, 3 before "BOS"
        assert info.encode([1, 2, 3]) == [3, 0, 1, 2]
    else:
        assert shapes == (2, 1, 14, 7, 1, 1)
        assert (info.bos_id, info.pad_id, info.vocab_ids) == (0, 1, (2, 3, 4, 5))
        assert info.encode(["w", "x"]) == [0, 2, 3]
    assert cfg.dtype == torch.float64 and cfg.normalization_type is None and cfg.n_ctx == 6
    assert not any(re.search(r"_\d+(:|$)", label) for label in info.residual_labels), "counters must be stripped"
    with pytest.raises(ValueError, match="takes 1 to 5 tokens"):
        info.encode(["BOS"])


def test_reverse_model_reverses(built):
    compiled, model, info, reference = built
    for tokens, _ in reference:
        out = model(tokens)
        if compiled.name == "reverse":
            decoded = [[info.output_tokens[i] for i in row] for row in out[:, 1:].argmax(-1).tolist()]
            expected = [[info.input_tokens[i] for i in row[1:]][::-1] for row in tokens.tolist()]
            assert decoded == expected
        else:
            is_x = (tokens[:, 1:] == info.input_tokens.index("x")).double()
            fraction = is_x.cumsum(1) / torch.arange(1, tokens.shape[1])
            assert torch.allclose(out[:, 1:, 0], fraction, atol=1e-7)


# ---- ground truth ----------------------------------------------------------------------------------


def test_ground_truth_circuits(built, truth):
    compiled, model, _, _ = built
    name = compiled.name
    assert len(tracr.structural_edges(model)) == {"reverse": 15, "frac_prevs": 7}[name]
    if name == "reverse":
        assert truth["resample"] == ["a3.0 -> logits", "embed -> a3.0.v"]
        # exactly ACDC's circuit: 11 residual edges + 4 direct q/k/v edges = the published 15
        assert set(truth["zero"]) == ACDC_RESIDUAL_EDGES[name]
        assert len(truth["zero"]) == 11 and acdc_count(truth["zero"]) == ACDC_PUBLISHED_COUNT[name]
    else:
        assert truth["resample"] == ["a1.0 -> logits", "embed -> m0", "m0 -> a1.0.v"]
        # ACDC's 10 = these 5 + the two BOS-default edges (which mattered only on its malformed
        # inputs) + 3 direct edges
        assert len(truth["zero"]) == 5 and acdc_count(truth["zero"]) == 8
        assert ACDC_RESIDUAL_EDGES[name] - set(truth["zero"]) == {"embed -> a1.0.q", "embed -> a1.0.k"}
        assert acdc_count(ACDC_RESIDUAL_EDGES[name]) == ACDC_PUBLISHED_COUNT[name]
    assert set(truth["resample"]) <= set(truth["zero"])
    assert all(truth[k] == sorted(truth[k]) for k in truth)
    graph = Graph.from_config(model.cfg, split_input=True)
    assert all(edge in graph.edge_index for k in truth for edge in truth[k])


def _changes(model, graph, tokens, ablated, circuits):
    """Largest change of any output at positions 1.. per circuit (a list of edge lists)."""
    masks = torch.zeros(len(circuits), graph.n_edges, dtype=torch.float64)
    for row, edges in enumerate(circuits):
        masks[row, [graph.edge_index[e] for e in edges]] = 1
    logits = run_circuits(model, graph, tokens, ablated, masks)
    return (logits - model(tokens))[:, :, 1:].abs().amax(dim=(1, 2, 3))


def test_ground_truth_is_sufficient_and_every_edge_necessary(built, truth):
    """Each circuit reproduces the model under its ablation; dropping any one of its edges does not."""
    compiled, model, info, _ = built
    graph = tracr.tracr_graph(model)
    data = behaviors.make_dataset(BEHAVIOR[compiled.name], None, seed=0, info=info)
    clean, corrupted = behaviors.tokens(data, "clean"), behaviors.tokens(data, "corrupted")
    resampled = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    for kind, tokens, ablated in [
        ("zero", clean, torch.zeros(graph.n_sources, 1, 1, model.cfg.d_model, dtype=torch.float64)),
        ("resample", clean, resampled),
    ]:
        edges = truth[kind]
        changes = _changes(model, graph, tokens, ablated, [edges] + [[e for e in edges if e != d] for d in edges])
        assert changes[0] < {"zero": 1e-5, "resample": 1e-12}[kind], kind
        if kind == "resample":
            assert (changes[1:] > 0.1).all(), kind
    # zero ablation: necessity shows on inputs of every length (two edges only matter below length 5)
    probe = tracr.zero_ablation_effects(model, info, truth["zero"], truth["zero"])
    assert min(probe.values()) >= 0.5


# ---- save and load ---------------------------------------------------------------------------------


def test_save_load_round_trip(built, truth, tmp_path):
    compiled, model, info, reference = built
    tracr.write_tracr_model(tmp_path, model, info, truth)
    loaded, loaded_info = tracr.load_tracr_model(tmp_path)
    assert loaded_info == info
    assert tracr.load_tracr_info(tmp_path) == info
    assert tracr.load_ground_truth(tmp_path) == truth
    for tokens, _ in reference:
        assert torch.equal(loaded(tokens), model(tokens))
    assert tracr.verify_conversion(compiled, loaded, reference=reference) < 1e-12


@pytest.mark.parametrize("built", ["frac_prevs"], indirect=True)  # the cheaper program to compile again
def test_save_is_byte_identical(built, truth, tmp_path):
    """A fresh compile (other tracr label counters) writes the same bytes as the fixture's model."""
    compiled, model, info, _ = built
    tracr.save_tracr_model(tmp_path / "fresh", "frac_prevs")
    tracr.write_tracr_model(tmp_path / "fixture", model, info, truth)
    files = sorted(p.name for p in (tmp_path / "fresh").iterdir())
    assert files == ["config.json", "ground_truth.json", "model.safetensors"]  # no temporary left over
    for name in files:
        assert (tmp_path / "fresh" / name).read_bytes() == (tmp_path / "fixture" / name).read_bytes(), name


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="config.json is missing"):
        tracr.load_tracr_model(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        tracr.load_tracr_info(tmp_path)
    with pytest.raises(ValueError, match="Unknown tracr program 'sort'"):
        tracr.compile_program("sort")


# ---- datasets and score ----------------------------------------------------------------------------


def test_dataset_deterministic_and_deranged(built):
    compiled, model, info, _ = built
    name = BEHAVIOR[compiled.name]
    full = behaviors.make_dataset(name, None, seed=0, info=info)
    assert full.height == {"reverse": 81, "proportion": 256}[name]  # every input of length 4
    assert sorted(map(tuple, full["clean"].to_list())) == sorted(map(tuple, full["corrupted"].to_list()))
    sample = behaviors.make_dataset(name, 40, seed=7, info=info)
    assert sample.equals(behaviors.make_dataset(name, 40, seed=7, info=info))
    assert not sample.equals(behaviors.make_dataset(name, 40, seed=8, info=info))
    for data in (full, sample):
        clean, corrupted = data["clean"].to_list(), data["corrupted"].to_list()
        assert len(set(map(tuple, clean))) == len(clean)  # without replacement
        assert all(c != k for c, k in zip(clean, corrupted))  # derangement: no example paired with itself
        assert all(len(row) == 5 and row[0] == info.bos_id for row in clean + corrupted)
        assert set(map(tuple, corrupted)) == set(map(tuple, clean))
    # the answers (from the RASP program) are what the model outputs
    out = model(behaviors.tokens(full))[:, 1:]
    answers = full["answer"].to_list()
    if name == "reverse":
        assert out.argmax(-1).tolist() == answers
    else:
        assert torch.allclose(out[..., 0], torch.tensor(answers, dtype=torch.float64), atol=1e-7)


def test_derangement_and_dataset_errors():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10):
        sigma = behaviors.derangement(n, rng)
        assert sorted(sigma.tolist()) == list(range(n)) and not (sigma == np.arange(n)).any()
    with pytest.raises(ValueError, match="at least 2"):
        behaviors.derangement(1, rng)
    with pytest.raises(ValueError, match="'proportion'"):
        behaviors.make_dataset("frac_prevs", 10, seed=0)
    with pytest.raises(ValueError, match="ask for 2 to 81"):
        behaviors.make_dataset("reverse", 500, seed=0, info=tracr.TracrInfo(
            name="reverse", input_tokens=(1, 2, 3, "BOS", "compiler_pad"), bos_id=3, pad_id=4,
            output_tokens=(1, 2, 3), categorical_output=True, max_seq_len=5, residual_labels=()))


def test_score():
    generator = torch.Generator().manual_seed(0)
    model_logits = torch.randn(4, 6, 3, generator=generator, dtype=torch.float64)
    assert torch.equal(behaviors.score("reverse", model_logits, model_logits), torch.zeros(4, dtype=torch.float64))
    circuit = model_logits.clone()
    circuit[:, 0] += 100.0  # the BOS position is not scored
    circuit[1, 2, 0] += 3.0
    expected = torch.tensor([0.0, 9.0 / 15, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(behaviors.score("reverse", circuit, model_logits), expected)
    with pytest.raises(ValueError, match="one numerical output"):
        behaviors.score("proportion", circuit, model_logits)
    numeric = torch.zeros(2, 6, 1)
    assert behaviors.score("proportion", numeric + 1, numeric).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="one shape"):
        behaviors.score("reverse", circuit[:, :3], model_logits)


EMPTY_COMPONENTS = {"reverse": ("a1.0", "a2.0", "m3"), "frac_prevs": ("a0.0", "m1")}  # tracr, Lindner et al. 2023


@pytest.mark.parametrize("ablation", ["zero", "resample"])
def test_ablating_the_empty_parts_changes_nothing(built, ablation):
    compiled, model, info, _ = built
    graph = tracr.tracr_graph(model)
    data = behaviors.make_dataset(BEHAVIOR[compiled.name], None, seed=0, info=info)
    clean, corrupted = behaviors.tokens(data, "clean"), behaviors.tokens(data, "corrupted")
    corrupted_outputs = source_outputs(model, graph, corrupted)
    ablated = ablation_values(ablation, corrupted=corrupted_outputs, like=corrupted_outputs)
    empty = EMPTY_COMPONENTS[compiled.name]
    touches = lambda edge: any(end.split(".")[:2] == node.split(".") for end in edge.split(" -> ") for node in empty)
    mask = torch.tensor([0.0 if touches(edge) else 1.0 for edge in graph.edge_names], dtype=torch.float64)
    assert mask.sum() < graph.n_edges - 5  # many edges really are ablated
    change = (run_circuits(model, graph, clean, ablated, mask) - model(clean)).abs().max()
    assert change < 1e-9
    # ...while ablating a used component does change the output
    last_head = f"a{model.cfg.n_layers - 1}.0 -> "
    used = torch.tensor([0.0 if edge.startswith(last_head) else 1.0 for edge in graph.edge_names], dtype=torch.float64)
    assert (run_circuits(model, graph, clean, ablated, used) - model(clean)).abs().max() > 0.1
