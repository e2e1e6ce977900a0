"""The patching engine against exact identities and an independent plain-hook implementation."""

import pytest
import torch

from circuitflow.ablation import ablation_values
from circuitflow.circuit import Circuit
from circuitflow.graph import Graph
from circuitflow.patching import (
    run_circuits,
    run_circuits_from,
    source_outputs,
    sources_before,
)

ARCHITECTURES = {
    "gpt2-like": dict(),
    "attn-only shortformer": dict(attn_only=True, positional_embedding_type="shortformer"),
    "no layernorm (tracr-like)": dict(normalization_type=None, act_fn="relu"),
    "rotary rms": dict(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8),
}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("overrides", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
def test_all_edges_kept_gives_the_model_and_none_kept_gives_the_corrupted_run(make_model, tokens, overrides):
    model = make_model(**overrides)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    with torch.no_grad():
        kept = run_circuits(model, graph, clean, ablated, torch.ones(graph.n_edges))
        none = run_circuits(model, graph, clean, ablated, torch.zeros(graph.n_edges))
        assert relative_error(kept, model(clean)) < 1e-5
        assert relative_error(none, model(corrupted)) < 1e-5


# ---- an independent reference: TransformerLens's own split-input hooks, one edge at a time -------

def _source_hook(graph: Graph, source: str) -> tuple[list[str], int | None]:
    if source == "input":
        return ["hook_embed", "hook_pos_embed"], None
    if source in ("embed", "pos_embed"):
        return [f"hook_{source}"], None
    if source.startswith("a"):
        layer, head = map(int, source[1:].split("."))
        return [f"blocks.{layer}.attn.hook_result"], head
    return [f"blocks.{int(source[1:])}.hook_mlp_out"], None


def _destination_hook(model, destination: str) -> tuple[str, int | None]:
    if destination == "logits":
        return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", None
    if destination.startswith("m"):
        return f"blocks.{int(destination[1:])}.hook_mlp_in", None
    head, qkv = destination.rsplit(".", 1)
    layer, index = map(int, head[1:].split("."))
    return f"blocks.{layer}.hook_{qkv}_input", index


def plain_edge_patch(model, edge: str, clean, clean_sources: dict, ablated_sources: dict):
    """Logits with one edge's source value replaced at its destination, by hooks on the plain model."""
    source, destination = edge.split(" -> ")
    name, head = _destination_hook(model, destination)
    difference = clean_sources[source] - ablated_sources[source]

    def hook(activation, hook):
        activation = activation.clone()
        if head is None:
            activation -= difference
        else:
            activation[:, :, head] -= difference
        return activation

    return model.run_with_hooks(clean, fwd_hooks=[(name, hook)])


def source_values(model, graph, tokens) -> dict:
    """Each source's output read from TransformerLens's own hooks."""
    _, cache = model.run_with_cache(tokens)
    values = {}
    for source in graph.sources:
        hooks, head = _source_hook(graph, source)
        value = sum(cache[h] for h in hooks)
        values[source] = value if head is None else value[:, :, head]
    return values


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_single_edge_ablation_matches_plain_hooks(make_model, tokens, seed, ablation):
    model = make_model(seed=seed)
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg)
    corrupted_outputs = source_outputs(model, graph, corrupted)
    ablated = ablation_values(ablation, corrupted=corrupted_outputs, reference=corrupted_outputs, like=corrupted_outputs)
    ablated_by_name = {s: ablated[i].expand(clean.shape[0], clean.shape[1], -1) for i, s in enumerate(graph.sources)}
    clean_by_name = source_values(model, graph, clean)
    assert torch.allclose(torch.stack([clean_by_name[s] for s in graph.sources]), source_outputs(model, graph, clean), atol=1e-5)

    generator = torch.Generator().manual_seed(seed)
    for index in torch.randperm(graph.n_edges, generator=generator)[:6].tolist():
        edge = graph.edge_names[index]
        mask = torch.ones(graph.n_edges)
        mask[index] = 0.0
        with torch.no_grad():
            ours = run_circuits(model, graph, clean, ablated, mask)
            reference = plain_edge_patch(model, edge, clean, clean_by_name, ablated_by_name)
        assert relative_error(ours, reference) < 1e-5, edge
        assert not torch.allclose(reference, model(clean), atol=1e-6) or ablation == "mean", edge


def test_per_position_edges_match_plain_hooks_at_one_position(make_model, tokens):
    model = make_model(seed=3)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    model.set_use_attn_result(True)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg, n_positions=clean.shape[1])
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    clean_by_name = source_values(model, graph, clean)
    corrupted_by_name = source_values(model, graph, corrupted)
    for edge in ["input -> a1.2.k @ 2", "a0.3 -> m2 @ 6", "m1 -> logits @ 4"]:
        name, position = edge.split(" @ ")
        position = int(position)
        mask = torch.ones(graph.n_edges)
        mask[graph.edge_index[edge]] = 0.0
        ablated_one = {k: v.clone() for k, v in clean_by_name.items()}
        for k in ablated_one:
            ablated_one[k][:, position] = corrupted_by_name[k][:, position]
        with torch.no_grad():
            assert relative_error(run_circuits(model, graph, clean, ablated, mask),
                                  plain_edge_patch(model, name, clean, clean_by_name, ablated_one)) < 1e-5


def test_q_k_v_direct_edge_ablates_the_whole_input(make_model, tokens):
    model = make_model(seed=4)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg, qkv_direct_edges=True)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    direct = torch.ones(graph.n_edges)
    direct[graph.edge_index["a1.2.v -> a1.2"]] = 0.0
    every_input = torch.ones(graph.n_edges)
    for name, i in graph.edge_index.items():
        if name.endswith("-> a1.2.v"):
            every_input[i] = 0.0
    with torch.no_grad():
        assert relative_error(run_circuits(model, graph, clean, ablated, direct),
                              run_circuits(model, graph, clean, ablated, every_input)) < 1e-6


def test_many_circuits_in_one_call_equal_one_at_a_time(make_model, tokens):
    model = make_model(seed=5)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg)
    ablated = ablation_values("mean", reference=source_outputs(model, graph, corrupted), per_position=True)
    masks = (torch.rand(5, graph.n_edges, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    with torch.no_grad():
        stacked = run_circuits(model, graph, clean, ablated, masks)
        for i in range(5):
            assert relative_error(stacked[i], run_circuits(model, graph, clean, ablated, masks[i])) < 1e-5


def test_mask_gradient_is_the_derivative_of_the_output(make_model, tokens):
    model = make_model(seed=6, dtype=torch.float64)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    mask = torch.full((graph.n_edges,), 0.7, dtype=torch.float64, requires_grad=True)

    def metric(m):
        return run_circuits(model, graph, clean, ablated, m)[:, -1, 3].sum()

    metric(mask).backward()
    for index in [0, 17, graph.n_edges - 1]:
        step = torch.zeros(graph.n_edges, dtype=torch.float64)
        step[index] = 1e-6
        with torch.no_grad():
            numeric = (metric(mask + step) - metric(mask - step)) / 2e-6
        assert torch.isclose(mask.grad[index], numeric, rtol=1e-5, atol=1e-8)


def test_complement_ablates_exactly_the_circuit(make_model, tokens):
    model = make_model(seed=7)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    circuit = Circuit.from_edges(graph, ["a0.1 -> m0", "m2 -> logits"])
    with torch.no_grad():
        complement = run_circuits(model, graph, clean, ablated, circuit.complement().mask())
        by_hand = torch.ones(graph.n_edges)
        by_hand[[graph.edge_index["a0.1 -> m0"], graph.edge_index["m2 -> logits"]]] = 0
        assert torch.equal(complement, run_circuits(model, graph, clean, ablated, by_hand))


def test_a_graph_of_another_model_is_refused(make_model, tokens):
    model = make_model()
    with pytest.raises(ValueError, match="does not belong to this model"):
        source_outputs(model, Graph(n_layers=2, n_heads=4, attn_only=False), tokens[0])


# ---- resuming a forward pass from given upstream source outputs ----------------------------------

RESUME_CASES = {
    **{name: (overrides, {}) for name, overrides in ARCHITECTURES.items()},
    "split input (tracr-like)": ({"normalization_type": None, "act_fn": "relu"}, {"split_input": True}),
    "q/k/v direct edges": ({}, {"qkv_direct_edges": True}),
    "per-position edges": ({}, {"n_positions": 7}),
}


def _edge_destinations(graph: Graph) -> torch.Tensor:
    """Per edge, the index of the destination it enters (a direct edge: its q/k/v input)."""
    names = [name.split(" @ ")[0].split(" -> ") for name in graph.edge_names]
    return torch.tensor([graph.destination_index[dst if dst in graph.destination_index else src] for src, dst in names])


def test_sources_before_gives_the_resume_points():
    graph = Graph(n_layers=2, n_heads=2, attn_only=False)
    expected = {"a0.0.q": 1, "a0.1.v": 1, "m0": 3, "a1.0.k": 4, "m1": 6, "logits": 7}
    assert {name: sources_before(graph, graph.destination_index[name]) for name in expected} == expected
    attn_only = Graph(n_layers=2, n_heads=2, attn_only=True, split_input=True)
    assert [sources_before(attn_only, d) for d in range(attn_only.n_destinations)] == [2] * 6 + [4] * 6 + [6]


@pytest.mark.parametrize("case", RESUME_CASES, ids=RESUME_CASES.keys())
def test_resumed_forward_equals_the_full_forward(make_model, tokens, case):
    """From every resume point, circuits that keep the edges into the earlier destinations give the
    full forward's logits (float64: identical up to rounding), at every position or at some; what
    the masks say about those earlier edges is ignored."""
    overrides, graph_options = RESUME_CASES[case]
    model = make_model(seed=8, dtype=torch.float64, **overrides)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg, **graph_options)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    clean_outputs = source_outputs(model, graph, clean)
    resume_at = torch.tensor([sources_before(graph, d) for d in range(graph.n_destinations)])[_edge_destinations(graph)]
    generator = torch.Generator().manual_seed(0)
    for n_upstream in sorted(set(resume_at.tolist())):
        masks = (torch.rand(4, graph.n_edges, generator=generator, dtype=torch.float64) < 0.6).double()
        earlier = resume_at < n_upstream
        masks[:, earlier] = 1.0
        ignored = masks.clone()
        ignored[:, earlier] = 0.0  # edges into earlier destinations: the given outputs stand
        with torch.no_grad():
            full = run_circuits(model, graph, clean, ablated, masks)
            resumed = run_circuits_from(model, graph, clean, ablated, ignored, clean_outputs[:n_upstream], circuits_per_pass=3)
            assert relative_error(resumed, full) < 1e-12, n_upstream
            for positions in (torch.tensor([-1]), torch.tensor([4, 0])):
                some = run_circuits_from(model, graph, clean, ablated, masks, clean_outputs[:n_upstream], positions=positions)
                assert relative_error(some, full[:, :, positions]) < 1e-12, (n_upstream, positions)
            single = run_circuits_from(model, graph, clean, ablated, masks[0], clean_outputs[:n_upstream])
            assert relative_error(single, full[0]) < 1e-12


def test_resumed_forward_is_differentiable_in_the_mask(make_model, tokens):
    model = make_model(seed=9, dtype=torch.float64)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    n_upstream = sources_before(graph, graph.destination_index["a1.0.q"])
    later = torch.tensor([sources_before(graph, d) >= n_upstream for d in _edge_destinations(graph).tolist()])
    mask = torch.where(later, 0.7, 1.0).double().requires_grad_(True)
    last = torch.tensor([clean.shape[1] - 1])
    full = torch.autograd.grad(run_circuits(model, graph, clean, ablated, mask)[:, -1].logsumexp(-1).sum(), mask)[0]
    upstream = source_outputs(model, graph, clean)[:n_upstream]
    resumed = run_circuits_from(model, graph, clean, ablated, mask, upstream, positions=last)[:, 0].logsumexp(-1).sum()
    gradient = torch.autograd.grad(resumed, mask)[0]
    assert torch.allclose(gradient[later], full[later], rtol=1e-10, atol=1e-12)
    assert gradient[~later].abs().max() == 0 and full[later].abs().max() > 0


def test_resuming_at_a_wrong_point_or_positions_is_one_clear_error(make_model, tokens):
    model = make_model()
    clean, _ = tokens
    graph = Graph.from_config(model.cfg)
    outputs = source_outputs(model, graph, clean)
    ablated = ablation_values("zero", like=outputs)
    mask = torch.ones(graph.n_edges)
    with pytest.raises(ValueError, match="cannot resume after 3 sources"):
        run_circuits_from(model, graph, clean, ablated, mask, outputs[:3])
    with pytest.raises(ValueError, match="upstream must be"):
        run_circuits_from(model, graph, clean, ablated, mask, outputs[:6, :2])
    with pytest.raises(ValueError, match="outside inputs of 7 positions"):
        run_circuits_from(model, graph, clean, ablated, mask, outputs[:6], positions=torch.tensor([7]))
    with pytest.raises(ValueError, match="distinct"):
        run_circuits_from(model, graph, clean, ablated, mask, outputs[:6], positions=torch.tensor([1, -6]))
    with pytest.raises(ValueError, match="outside the graph"):
        sources_before(graph, graph.n_destinations)
