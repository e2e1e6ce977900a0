"""EAP-IG (both variants) and positional EAP: against EAP, against a plain-hook reference, against
the integral they approximate, and against the exact effect of ablating each edge alone."""

import pytest
import torch

from circuitflow.discovery.eap import eap_scores
from circuitflow.discovery.eap_ig import (
    eap_ig_activations_scores,
    eap_ig_inputs_scores,
    input_edges,
)
from circuitflow.graph import Graph
from circuitflow.ablation import ablation_values
from circuitflow.patching import run_circuits, source_outputs

VARIANTS = {"inputs": eap_ig_inputs_scores, "activations": eap_ig_activations_scores}


def logit_difference(logits, index):
    return (logits[:, -1, 3] - logits[:, -1, 7]).sum()


def setting(make_model, tokens, ablation="resample", **overrides):
    model = make_model(dtype=torch.float64, **overrides)
    clean, corrupted = tokens
    graph = Graph.from_config(model.cfg)
    corrupted_outputs = source_outputs(model, graph, corrupted)
    ablated = ablation_values(ablation, corrupted=corrupted_outputs, reference=corrupted_outputs, like=corrupted_outputs)
    return model, graph, clean, corrupted, ablated


def metric_of(model, graph, clean, ablated, masks, metric=logit_difference):
    """The metric of each circuit in ``masks`` (circuit, n_edges), averaged over examples."""
    with torch.no_grad():
        logits = run_circuits(model, graph, clean, ablated, masks)
    return torch.stack([metric(row, None) for row in logits]).double() / clean.shape[0]


# ---- one step is EAP ---------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_one_step_is_eap_exactly(make_model, tokens, variant, ablation):
    model, graph, clean, _, ablated = setting(make_model, tokens, ablation)
    expected = eap_scores(model, graph, clean, ablated, logit_difference, batch_size=4)
    ours = VARIANTS[variant](model, graph, clean, ablated, logit_difference, steps=1, batch_size=4)
    assert expected.abs().max() > 1e-3
    assert torch.equal(ours, expected)


# ---- the inputs variant against TransformerLens hooks ------------------------------------------
def plain_hooks_eap_ig_inputs(model, graph: Graph, clean, corrupted, metric, steps: int) -> torch.Tensor:
    """The paper's formula with TransformerLens hooks and autograd, no patching engine:
    (corrupt_s - clean_s) . mean_k dMetric/d(input_d) at embeddings interpolated to alpha = k / steps."""
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    _, corrupted_cache = model.run_with_cache(corrupted)
    _, clean_cache = model.run_with_cache(clean)

    def source(name, cache):
        if name == "input":
            return cache["hook_embed"] + cache["hook_pos_embed"]
        if name.startswith("a"):
            layer, head = map(int, name[1:].split("."))
            return cache[f"blocks.{layer}.attn.hook_result"][:, :, head]
        return cache[f"blocks.{int(name[1:])}.hook_mlp_out"]

    def destination(name):
        if name == "logits":
            return last, None
        if name.startswith("m"):
            return f"blocks.{int(name[1:])}.hook_mlp_in", None
        head, qkv = name.rsplit(".", 1)
        layer, index = map(int, head[1:].split("."))
        return f"blocks.{layer}.hook_{qkv}_input", index

    names = {destination(d)[0] for d in graph.destinations}
    gradients = {}
    for k in range(1, steps + 1):
        alpha = k / steps
        inputs = {}

        def interpolate(activation, hook, alpha=alpha):
            base = corrupted_cache[hook.name]
            return base + alpha * (activation - base)

        def keep(activation, hook, inputs=inputs):
            activation.retain_grad()
            inputs[hook.name] = activation
            return activation

        hooks = [("hook_embed", interpolate), ("hook_pos_embed", interpolate)]
        hooks += [(name, keep) for name in sorted(names)]
        metric(model.run_with_hooks(clean, fwd_hooks=hooks)).backward()
        for name in names:
            gradients[name] = gradients.get(name, 0) + inputs[name].grad / steps
    model.zero_grad(set_to_none=True)
    scores = []
    for edge in graph.edge_names:
        src, dst = edge.split(" -> ")
        hook, head = destination(dst)
        grad = gradients[hook] if head is None else gradients[hook][:, :, head]
        scores.append(float(((source(src, corrupted_cache) - source(src, clean_cache)) * grad).sum()))
    return torch.tensor(scores, dtype=torch.float64) / clean.shape[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_inputs_variant_equals_plain_hooks(make_model, tokens, seed):
    model, graph, clean, corrupted, ablated = setting(lambda **kw: make_model(seed=seed, **kw), tokens)
    ours = eap_ig_inputs_scores(model, graph, clean, ablated, logit_difference, steps=3, batch_size=4)
    reference = plain_hooks_eap_ig_inputs(model, graph, clean, corrupted, lambda logits: logit_difference(logits, None), steps=3)
    assert reference.abs().max() > 1e-3
    assert torch.allclose(ours, reference, rtol=1e-6, atol=1e-9)
    # and it is not EAP: the interpolated gradients differ
    assert not torch.allclose(ours, eap_scores(model, graph, clean, ablated, logit_difference), rtol=1e-3)


# ---- the integral each variant approximates (completeness of integrated gradients) ---------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_scores_add_up_to_the_whole_path(make_model, tokens, variant):
    """Integrated gradients are complete: edge-mask IG integrates along M = alpha * 1, so all its
    scores add up to the metric's change when every edge is ablated; IG over the inputs integrates
    along the input embeddings, so the input edges' scores add up to metric(corrupted run) -
    metric(clean run).  The right Riemann sum errs by C / steps + O(1 / steps^2), so Richardson's
    extrapolation from 4 and 32 steps must land on the exact change."""
    model, graph, clean, corrupted, ablated = setting(make_model, tokens)
    if variant == "activations":
        ends = metric_of(model, graph, clean, ablated, torch.stack([torch.ones(graph.n_edges), torch.zeros(graph.n_edges)]).double())
        change, summed = float(ends[1] - ends[0]), torch.ones(graph.n_edges, dtype=torch.bool)
    else:
        with torch.no_grad():
            change = float(logit_difference(model(corrupted), None) - logit_difference(model(clean), None)) / clean.shape[0]
        summed = input_edges(graph)
        assert summed.sum() == len(graph.destinations)  # "input" feeds every destination
    sums = {m: float(VARIANTS[variant](model, graph, clean, ablated, logit_difference, steps=m)[summed].sum()) for m in (4, 32)}
    extrapolated = (32 * sums[32] - 4 * sums[4]) / 28
    print(f"{variant}: exact change {change:.5f}; sums at 4 / 32 steps {sums}; extrapolated {extrapolated:.5f}")
    assert abs(change) > 0.5
    assert abs(sums[32] - change) < 0.1 * abs(change)
    assert abs(extrapolated - change) < 0.01 * abs(change)


# ---- against the exact effect of ablating each edge alone ----------------------------------------
def pearson(a, b) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_many_steps_approach_exact_single_edge_effects(make_model):
    """With 50 steps EAP-IG over the inputs tracks the exact effect of ablating each edge alone (one
    circuit per edge, all run at once) much better than EAP does.  The model: 2 attention-only
    layers, seed 1, mean ablation, logit difference; other settings in the report's table."""
    model = make_model(seed=1, n_layers=2, attn_only=True, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    clean, corrupted = torch.randint(0, 50, (2, 16, 7), generator=generator)
    graph = Graph.from_config(model.cfg)
    ablated = ablation_values("mean", reference=source_outputs(model, graph, corrupted))
    masks = torch.cat([torch.ones(1, graph.n_edges), 1 - torch.eye(graph.n_edges)]).double()
    values = metric_of(model, graph, clean, ablated, masks)
    exact = values[1:] - values[0]
    correlations = {
        "eap": pearson(eap_scores(model, graph, clean, ablated, logit_difference), exact),
        "eap-ig inputs, 50 steps": pearson(eap_ig_inputs_scores(model, graph, clean, ablated, logit_difference, steps=50), exact),
        "eap-ig activations, 50 steps": pearson(eap_ig_activations_scores(model, graph, clean, ablated, logit_difference, steps=50), exact),
    }
    print(f"Pearson correlation with the exact single-edge effects ({graph.n_edges} edges): {correlations}")
    assert correlations["eap-ig inputs, 50 steps"] > 0.95
    assert correlations["eap"] < correlations["eap-ig inputs, 50 steps"] - 0.05


# ---- positional EAP ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["eap", "inputs", "activations"])
def test_positional_scores_sum_to_plain_scores(make_model, tokens, method):
    # resample ablation: the engine's per-position path fails on ablated values without a batch
    # dimension (mean, zero) at the time of writing, a view of a non-contiguous einsum in patching.py
    model, graph, clean, _, ablated = setting(make_model, tokens, "resample")
    n_pos = clean.shape[1]
    positional = Graph.from_config(model.cfg, n_positions=n_pos)
    score = eap_scores if method == "eap" else lambda *args, **kw: VARIANTS[method](*args, steps=3, **kw)
    per_position = score(model, positional, clean, ablated, logit_difference, batch_size=4)
    plain = score(model, graph, clean, ablated, logit_difference, batch_size=4)
    assert per_position.shape == (graph.n_edges * n_pos,)
    assert positional.edge_names[n_pos + 2] == f"{graph.edge_names[1]} @ 2"
    summed = per_position.view(graph.n_edges, n_pos).sum(1)
    assert torch.allclose(summed, plain, rtol=1e-9, atol=1e-12)
    # positions really differ: the last position carries most of this last-position metric
    assert per_position.view(graph.n_edges, n_pos)[:, :-1].abs().max() > 1e-4


# ---- errors and side effects -----------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_steps_and_metric_are_one_sentence(make_model, tokens, variant):
    model, graph, clean, _, ablated = setting(make_model, tokens)
    for steps in (0, 2.5, True):
        with pytest.raises(ValueError, match="integration steps >= 1"):
            VARIANTS[variant](model, graph, clean, ablated, logit_difference, steps=steps)
    with pytest.raises(ValueError, match="must return one number"):
        VARIANTS[variant](model, graph, clean, ablated, lambda logits, index: logits[:, -1, 3], steps=2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_left_untouched(make_model, tokens, variant):
    model, graph, clean, _, ablated = setting(make_model, tokens)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    VARIANTS[variant](model, graph, clean, ablated, logit_difference, steps=2)
    assert all(p.grad is None for p in model.parameters())  # no weight gradients left behind
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
