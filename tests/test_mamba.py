"""Mamba in the circuit engine (Ensign & Garriga-Alonso 2024): the layer-level graph, masked patching against
HookedMamba itself and against mamba-lens's own hook points, EAP / EAP-IG / ACDC / HISP / SP on it,
and the ``mamba`` model kind (deterministic training, loading, bad settings)."""

import math

import pytest
import torch

from circuitflow.ablation import ablation_values
from circuitflow.circuit import Circuit
from circuitflow.discovery.acdc import acdc_scores
from circuitflow.discovery.eap import eap_scores
from circuitflow.discovery.eap_ig import eap_ig_activations_scores, eap_ig_inputs_scores
from circuitflow.discovery.hisp import hisp_scores
from circuitflow.discovery.subnetwork_probing import subnetwork_probing_sweep
from circuitflow.graph import Graph
from circuitflow.models import MODEL_KINDS
from circuitflow.models import mamba as mamba_kind
from circuitflow.metrics import kl_divergence
from circuitflow.patching import (
    check_model,
    run_circuits,
    run_circuits_from,
    source_outputs,
    sources_before,
)

VOCAB = 40


def small_mamba(seed: int = 0, n_layers: int = 3, dtype: torch.dtype = torch.float32):
    """A random 3-layer Mamba, d_model 16, d_inner 32, d_state 4, with its RMSNorm scales and skip
    weights D randomised too (so that a forgotten one makes a test fail)."""
    torch.manual_seed(seed)
    cfg = mamba_kind.MambaCfg(d_model=16, n_layers=n_layers, vocab_size=VOCAB, d_state=4, d_conv=3, device="cpu")
    model = mamba_kind.hooked_mamba(cfg)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("norm.weight", "W_D")):
                parameter.add_(torch.randn_like(parameter) * 0.2)
    model = model.to(dtype)
    model.cfg.dtype = dtype
    return model


@pytest.fixture
def tokens():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (4, 7), generator=generator), torch.randint(0, VOCAB, (4, 7), generator=generator)


def resample(model, graph, corrupted):
    with torch.no_grad():
        return ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))


def logit_difference(logits, index=None):
    return (logits[:, -1, 3] - logits[:, -1, 7]).sum()


# ---- the graph -----------------------------------------------------------------------------------

def test_graph_is_layer_level_and_round_trips():
    graph = Graph.mamba(3)
    assert graph.sources == ("input", "l0", "l1", "l2")
    assert graph.destinations == ("l0", "l1", "l2", "logits")
    assert graph.edge_names == (
        "input -> l0", "input -> l1", "l0 -> l1", "input -> l2", "l0 -> l2", "l1 -> l2",
        "input -> logits", "l0 -> logits", "l1 -> logits", "l2 -> logits",
    )
    assert [graph.layer_sources(layer) for layer in range(3)] == [slice(1, 2), slice(2, 3), slice(3, 4)]
    assert [graph.layer_destination(layer) for layer in range(3)] == [0, 1, 2]
    assert [sources_before(graph, d) for d in range(graph.n_destinations)] == [1, 2, 3, 4]
    assert Graph(**graph.describe()) == graph and Graph(**Graph.mamba(2, n_positions=5).describe()) == Graph.mamba(2, n_positions=5)
    assert Graph.from_config(small_mamba(n_layers=2).cfg, n_positions=4) == Graph.mamba(2, n_positions=4)
    assert Graph.mamba(2, n_positions=3).edge_names[:4] == ("input -> l0 @ 0", "input -> l0 @ 1", "input -> l0 @ 2", "input -> l1 @ 0")
    circuit = Circuit.from_edges(graph, ["input -> l1", "l1 -> logits"])
    assert circuit.nodes() == ["input", "l1", "logits"]
    assert Circuit.from_json(circuit.to_json(), graph) == circuit


# ---- (a) identities ------------------------------------------------------------------------------

@pytest.mark.parametrize("n_positions", [None, 7])
def test_all_edges_give_the_model_and_none_the_corrupted_run(tokens, n_positions):
    model = small_mamba()
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg, n_positions=n_positions)
    ablated = resample(model, graph, corrupted)
    with torch.no_grad():
        full = run_circuits(model, graph, clean, ablated, torch.ones(graph.n_edges))
        empty = run_circuits(model, graph, clean, ablated, torch.zeros(graph.n_edges))
        assert torch.allclose(full, model(clean), atol=1e-5)
        assert torch.allclose(empty, model(corrupted), atol=1e-5)
        for kind in ("zero", "mean"):  # every ablation runs; all edges kept still gives the model
            values = ablation_values(kind, reference=source_outputs(model, graph, corrupted), like=ablated)
            assert torch.allclose(run_circuits(model, graph, clean, values, torch.ones(graph.n_edges)), model(clean), atol=1e-5)


# ---- (b) one edge against mamba-lens's own hook points ------------------------------------------

def plain_hook_patch(model, clean, corrupted, edge: str) -> torch.Tensor:
    """Resample-ablate one edge with mamba-lens hooks: the destination's input (``hook_layer_input``,
    which mamba-lens clones so the residual stream itself is untouched; for the logits the last
    ``hook_resid_post``) minus the source's clean output plus its corrupted output (``hook_embed``
    for the input, ``hook_out_proj`` for a layer)."""
    source, destination = edge.split(" -> ")
    source_hook = "hook_embed" if source == "input" else f"blocks.{int(source[1:])}.hook_out_proj"
    last = model.cfg.n_layers - 1
    destination_hook = f"blocks.{last}.hook_resid_post" if destination == "logits" else f"blocks.{int(destination[1:])}.hook_layer_input"
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=[source_hook])
    seen = {}

    def save(activation, hook):
        seen["clean"] = activation.clone()

    def patch(activation, hook):
        return activation - seen["clean"] + corrupted_cache[source_hook]

    return model.run_with_hooks(clean, fwd_hooks=[(source_hook, save), (destination_hook, patch)])


@pytest.mark.parametrize("edge", ["input -> l0", "input -> l2", "l0 -> l1", "l0 -> l2", "l1 -> logits", "input -> logits"])
def test_single_edge_patch_equals_plain_hooks(tokens, edge):
    model = small_mamba(seed=1)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg)
    mask = torch.ones(graph.n_edges)
    mask[graph.edge_index[edge]] = 0
    with torch.no_grad():
        ours = run_circuits(model, graph, clean, resample(model, graph, corrupted), mask)
        reference = plain_hook_patch(model, clean, corrupted, edge)
        assert (reference - model(clean)).abs().max() > 1e-3  # the edge matters: the check is not vacuous
    assert torch.allclose(ours, reference, atol=1e-5)


# ---- (c) positional EAP-IG, (d) EAP against plain autograd ----------------------------------------

@pytest.mark.parametrize("score", [eap_ig_inputs_scores, eap_ig_activations_scores])
def test_positional_eap_ig_sums_to_plain_scores(tokens, score):
    model = small_mamba(dtype=torch.float64)
    clean, corrupted = tokens
    n_pos = clean.shape[1]
    graph, positional = Graph.from_config(model.cfg), Graph.from_config(model.cfg, n_positions=n_pos)
    ablated = resample(model, graph, corrupted)
    plain = score(model, graph, clean, ablated, logit_difference, steps=3, batch_size=3)
    per_position = score(model, positional, clean, ablated, logit_difference, steps=3, batch_size=3)
    assert per_position.shape == (graph.n_edges * n_pos,)
    assert torch.allclose(per_position.view(graph.n_edges, n_pos).sum(1), plain, rtol=1e-8, atol=1e-10)
    assert per_position.view(graph.n_edges, n_pos)[:, :-1].abs().max() > 1e-4  # earlier positions matter too


def test_eap_equals_plain_autograd_through_hooks(tokens):
    """score(s -> d) = (corrupt_s - clean_s) . dMetric/d(input_d), the gradient taken at mamba-lens's
    ``hook_layer_input`` (or the last ``hook_resid_post`` for the logits)."""
    model = small_mamba(seed=2, dtype=torch.float64)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg)
    last = model.cfg.n_layers - 1
    sources = ["hook_embed"] + [f"blocks.{layer}.hook_out_proj" for layer in range(model.cfg.n_layers)]
    reads = [f"blocks.{layer}.hook_layer_input" for layer in range(model.cfg.n_layers)] + [f"blocks.{last}.hook_resid_post"]
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=sources)
    kept = {}

    def keep(activation, hook):
        activation.retain_grad()
        kept[hook.name] = activation
        return activation

    logit_difference(model.run_with_hooks(clean, fwd_hooks=[(name, keep) for name in sources + reads])).backward()
    expected = torch.tensor([
        float(((corrupted_cache[sources[graph.source_index[s]]] - kept[sources[graph.source_index[s]]].detach()) * kept[reads[graph.destination_index[d]]].grad).sum())
        for s, d in (name.split(" -> ") for name in graph.edge_names)
    ], dtype=torch.float64) / clean.shape[0]
    ours = eap_scores(model, graph, clean, resample(model, graph, corrupted), logit_difference, batch_size=3)
    assert expected.abs().max() > 1e-3
    assert torch.allclose(ours, expected, rtol=1e-6, atol=1e-9)


# ---- (e) the resumed pass -------------------------------------------------------------------------

@pytest.mark.parametrize("n_positions", [None, 7])
def test_resumed_pass_equals_the_full_pass(tokens, n_positions):
    model = small_mamba(seed=3)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg, n_positions=n_positions)
    ablated = resample(model, graph, corrupted)
    outputs = source_outputs(model, graph, clean)
    edge_destination = torch.tensor([graph.destination_index[name.split(" @ ")[0].split(" -> ")[1]] for name in graph.edge_names])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for d in range(graph.n_destinations):
            masks = (torch.rand(5, graph.n_edges, generator=generator) > 0.5).float()
            masks[:, edge_destination < d] = 1  # every edge into earlier destinations kept
            upstream = outputs[: sources_before(graph, d)]
            full = run_circuits(model, graph, clean, ablated, masks)
            assert torch.allclose(run_circuits_from(model, graph, clean, ablated, masks, upstream), full, atol=1e-5)
            positions = torch.tensor([6, 2])
            at = run_circuits_from(model, graph, clean, ablated, masks, upstream, positions=positions)
            assert torch.allclose(at, full[:, :, positions], atol=1e-5)


# ---- every discovery method runs (or refuses in one sentence) -----------------------------------

def test_discovery_methods_run_on_the_mamba_graph(tokens):
    model = small_mamba(seed=4)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg)
    ablated = resample(model, graph, corrupted)
    loss = lambda circuit_logits, model_logits, index: kl_divergence(model_logits[:, -1], circuit_logits[:, -1])
    acdc = acdc_scores(model, graph, clean, ablated, thresholds=[1e-4, 1e-2], loss=loss, batch_size=4)
    assert acdc.shape == (graph.n_edges,) and torch.isfinite(acdc).any()
    hisp = hisp_scores(model, graph, clean, ablated, logit_difference, normalize=False)
    assert hisp.shape == (graph.n_edges,) and math.isinf(hisp[graph.edge_index["input -> logits"]])
    # one node per layer: nothing to normalise against, so normalize=True leaves the scores as they are
    torch.testing.assert_close(hisp_scores(model, graph, clean, ablated, logit_difference, normalize=True), hisp)
    for level in ("edge", "node"):
        runs = subnetwork_probing_sweep(model, graph, clean, ablated, loss, lams=[0.1], level=level, steps=3, batch_size=4)
        assert runs[0].kept.shape == (graph.n_edges,)


def test_graph_and_model_must_match(tokens):
    model = small_mamba(n_layers=2)
    with pytest.raises(ValueError, match="does not belong"):
        check_model(model, Graph.mamba(3))
    with pytest.raises(ValueError, match="does not belong"):
        check_model(model, Graph(n_layers=2, n_heads=2, attn_only=False))
    with pytest.raises(ValueError, match="one node per layer"):
        Graph(n_layers=2, n_heads=1, attn_only=False, architecture="mamba")


# ---- (f) the model kind: deterministic training, loading; (g) bad settings ----------------------

TINY = {"n_layers": 1, "d_model": 16, "d_state": 4, "steps": 3, "batch_size": 8, "n_train": 200, "n_eval": 20, "eval_every": 2, "warmup_steps": 1}


def test_tiny_training_is_byte_identical_and_loads(tmp_path):
    for name in ("a", "b"):
        MODEL_KINDS["mamba"].build("ioi-mamba", {"kind": "mamba", "behavior": "ioi", **TINY}, tmp_path / name)
    for file in ("model.safetensors", "config.json", "training_curves.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    loaded = MODEL_KINDS["mamba"].load(tmp_path / "a")
    assert loaded.graph == Graph.mamba(1) and loaded.info["behavior"] == "ioi"
    tokens = torch.randint(0, loaded.model.cfg.vocab_size, (2, 5))
    with torch.no_grad():
        ones = torch.ones(loaded.graph.n_edges)
        zero = ablation_values("zero", like=source_outputs(loaded.model, loaded.graph, tokens))
        assert torch.allclose(run_circuits(loaded.model, loaded.graph, tokens, zero, ones), loaded.model(tokens), atol=1e-5)


@pytest.mark.parametrize("spec, message", [
    ({"behavior": "induction"}, "Mamba organisms are trained on"),
    ({"behavior": "ioi", "n_heads": 4}, "Unknown mamba settings"),
    ({"behavior": "ioi", "n_layers": 0}, "n_layers must be a positive integer"),
    ({"behavior": "ioi", "lr": -1}, "lr must be a non-negative number"),
])
def test_bad_settings_are_one_sentence(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        MODEL_KINDS["mamba"].validate("m", {"kind": "mamba", **spec})
    assert str(error.value).startswith("Mamba model 'm': ") and "\n" not in str(error.value)
