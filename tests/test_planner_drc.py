"""The DRC against an unbatched step-by-step reference written from the paper's equations, and its
hooks: every hidden and cell state of every layer at every tick passes one."""

import pytest
import torch
import torch.nn.functional as F

from circuitflow.planner.drc import DRC, caching, hook_names, hooks


def reference_step(model, obs, state):
    """One example (no batch dimension), one environment step, gate by gate from the weights."""
    enc = model.encoder
    x = F.conv2d(torch.relu(F.conv2d(obs[None], enc.conv1.weight, enc.conv1.bias, padding=1)), enc.conv2.weight, enc.conv2.bias, padding=1)[0]
    h = [state[d, 0] for d in range(model.depth)]
    c = [state[d, 1] for d in range(model.depth)]
    C = model.channels
    for _ in range(model.ticks):
        below = h[-1]
        for d, layer in enumerate(model.layers):
            pooled = torch.cat([h[d].mean((1, 2)), h[d].amax((1, 2))])
            injected = (layer.inject.weight @ pooled + layer.inject.bias)[:, None, None].expand(C, model.rows, model.cols)
            inputs = torch.cat([x, below, injected, h[d]])[None]
            gate = [F.conv2d(inputs, layer.gates.weight[k * C:(k + 1) * C], layer.gates.bias[k * C:(k + 1) * C], padding=1)[0] for k in range(4)]
            c[d] = torch.sigmoid(gate[1] + 1) * c[d] + torch.sigmoid(gate[0]) * torch.tanh(gate[2])
            h[d] = torch.sigmoid(gate[3]) * torch.tanh(c[d])
            below = h[d]
    flat = torch.cat([h[-1], x]).flatten()
    hidden = torch.relu(model.head[1].weight @ flat + model.head[1].bias)
    logits = model.policy.weight @ hidden + model.policy.bias
    value = model.value.weight @ hidden + model.value.bias
    return logits, value[0], torch.stack([torch.stack(h), torch.stack(c)], dim=1)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return DRC(depth=3, ticks=2, channels=5, hidden=16, rows=6, cols=7).eval()


def test_the_batched_drc_equals_the_unbatched_reference(model):
    generator = torch.Generator().manual_seed(1)
    obs = torch.rand(4, 3, 4, 6, 7, generator=generator)  # (time, batch, planes, rows, cols)
    starts = torch.tensor([[True] * 3, [False, True, False], [False] * 3, [True, False, False]])
    initial = torch.randn(3, 2, 3, 5, 6, 7, generator=generator)
    with torch.no_grad():
        logits, values = model.unroll(obs, starts, initial)
        for b in range(3):
            state = initial[:, :, b]
            for t in range(4):
                state = state * (not starts[t, b])
                ref_logits, ref_value, state = reference_step(model, obs[t, b], state)
                assert torch.allclose(logits[t, b], ref_logits, atol=1e-5) and torch.allclose(values[t, b], ref_value, atol=1e-5)


def test_hooks_cover_every_state_at_every_tick(model):
    assert hook_names(model) == ["encoder.hook_x"] + [f"layers.{d}.hook_{s}" for d in range(3) for s in "hc"]
    obs, state = torch.rand(2, 4, 6, 7), model.initial_state(2)
    with torch.no_grad(), caching(model) as cache:
        _, _, new_state = model(obs, state)
    assert all(len(cache[f"layers.{d}.hook_{s}"]) == model.ticks for d in range(3) for s in "hc")
    for d in range(3):  # the last tick's hooked values are the state carried to the next step
        assert torch.equal(cache[f"layers.{d}.hook_h"][-1], new_state[d, 0]) and torch.equal(cache[f"layers.{d}.hook_c"][-1], new_state[d, 1])
    with torch.no_grad(), hooks(model, {"layers.1.hook_c": torch.zeros_like}):
        _, _, zeroed = model(obs, state)
    assert torch.equal(zeroed[1, 1], torch.zeros_like(zeroed[1, 1])) and not torch.equal(zeroed[2], new_state[2])


def test_hooks_are_removed_on_any_exit_and_unknown_names_refused(model):
    with pytest.raises(RuntimeError), hooks(model, {"layers.0.hook_h": torch.zeros_like}):
        raise RuntimeError
    assert all(not module._forward_hooks for module in model.modules())
    with pytest.raises(ValueError, match="'layers.9.hook_h' is not a hook point"):
        with hooks(model, {"layers.9.hook_h": torch.zeros_like}):
            pass
