"""DRC(D, N), the Deep Repeated ConvLSTM of Guez et al. 2019 that Taufeeque et al. 2024 train on
Boxoban, with a named hook on every layer's hidden and cell state.

One step: a two-layer convolutional encoder turns the observation (4 planes) into ``channels``
planes ``x``; then D stacked ConvLSTM layers are ticked N times.  At each tick layer d reads
``[x, h below, pool-and-inject of its own h, its own h]`` through one 3x3 convolution into the
four gates (input, forget, cell, output): ``x`` reaches every layer (the encoder skip connection);
"h below" is layer d-1's new hidden state, and for the first layer the last layer's hidden state
from the previous tick (the top-down skip); pool-and-inject is the mean and max of h over the
board, projected linearly and tiled back onto it.  After the N ticks the last layer's h and ``x``
(skip) are flattened into an MLP giving 4 action logits and a value.  The recurrent state is one
tensor ``(D, 2, batch, channels, rows, cols)`` (index 0: h, 1: c).

Hooks: ``hook_names(model)`` lists ``encoder.hook_x`` and ``layers.{d}.hook_h`` /
``layers.{d}.hook_c``; each layer's hooks run at every tick.  ``hooks(model, {name: fn})`` attaches
``fn(tensor) -> tensor | None`` (a returned tensor replaces the state) for a block and removes them
on any exit; ``run_with_cache`` records every call.  These are plain torch forward hooks on identity
modules, TransformerLens-style in naming, so the planner does not import TransformerLens (ten
seconds) nor its transformer-shaped HookedRootModule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from circuitflow.planner.sokoban import N_ACTIONS, N_PLANES


class HookPoint(nn.Module):
    """The identity, as a module so that a hook can read or replace the tensor passing through."""

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


class ConvLSTMLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.gates = nn.Conv2d(4 * channels, 4 * channels, 3, padding=1)
        self.inject = nn.Linear(2 * channels, channels)
        self.hook_h, self.hook_c = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, below: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One tick: (batch, channels, rows, cols) inputs, the new (h, c)."""
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)
        injected = self.inject(pooled)[:, :, None, None].expand_as(h)
        i, f, g, o = self.gates(torch.cat([x, below, injected, h], dim=1)).chunk(4, dim=1)
        c = self.hook_c(torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * torch.tanh(g))  # forget bias 1
        h = self.hook_h(torch.sigmoid(o) * torch.tanh(c))
        return h, c


class Encoder(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(N_PLANES, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.hook_x = HookPoint()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.hook_x(self.conv2(torch.relu(self.conv1(obs))))


class DRC(nn.Module):
    """DRC(``depth``, ``ticks``) with ``channels`` per ConvLSTM and a ``hidden``-wide head for
    ``rows`` x ``cols`` boards (module docstring)."""

    def __init__(self, depth: int, ticks: int, channels: int, hidden: int, rows: int, cols: int):
        super().__init__()
        self.depth, self.ticks, self.channels, self.rows, self.cols = depth, ticks, channels, rows, cols
        self.encoder = Encoder(channels)
        self.layers = nn.ModuleList(ConvLSTMLayer(channels) for _ in range(depth))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * rows * cols, hidden), nn.ReLU())
        self.policy = nn.Linear(hidden, N_ACTIONS)
        self.value = nn.Linear(hidden, 1)

    def initial_state(self, batch: int) -> torch.Tensor:
        """Zeros, (depth, 2, batch, channels, rows, cols)."""
        return torch.zeros(self.depth, 2, batch, self.channels, self.rows, self.cols)

    def forward(self, obs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One environment step: obs (batch, 4, rows, cols), state as ``initial_state``; returns
        logits (batch, 4), value (batch,) and the new state."""
        x = self.encoder(obs)
        hs, cs = list(state[:, 0].unbind(0)), list(state[:, 1].unbind(0))
        for _ in range(self.ticks):
            below = hs[-1]  # top-down skip: the last layer's output at the previous tick
            for d, layer in enumerate(self.layers):
                hs[d], cs[d] = layer(x, below, hs[d], cs[d])
                below = hs[d]
        features = self.head(torch.cat([hs[-1], x], dim=1))
        return self.policy(features), self.value(features).squeeze(1), torch.stack([torch.stack(hs), torch.stack(cs)], dim=1)

    def unroll(self, obs: torch.Tensor, starts: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (time, batch, 4) and values (time, batch) along a rollout obs (time, batch, ...),
        zeroing the state where ``starts`` (time, batch) marks an episode's first step."""
        logits, values = [], []
        for t in range(obs.shape[0]):
            state = state * (~starts[t]).float()[None, None, :, None, None, None]
            step_logits, step_value, state = self(obs[t], state)
            logits.append(step_logits)
            values.append(step_value)
        return torch.stack(logits), torch.stack(values)


def hook_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, HookPoint)]


@contextlib.contextmanager
def hooks(model: nn.Module, functions: dict[str, Callable[[torch.Tensor], torch.Tensor | None]]) -> Iterator[nn.Module]:
    """Attach ``functions`` to the named hook points for the block (module docstring)."""
    known = set(hook_names(model))
    handles = []
    try:
        for name, function in functions.items():
            if name not in known:
                raise ValueError(f"{name!r} is not a hook point of this DRC; hook points: {', '.join(sorted(known))}.")
            handles.append(model.get_submodule(name).register_forward_hook(lambda _m, _a, out, f=function: f(out)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def caching(model: nn.Module, names: list[str] | None = None) -> Iterator[dict[str, list[torch.Tensor]]]:
    """For the block, record every value passing the hook points ``names`` (default: all), in
    call order, detached: ``{name: [tensor, ...]}``."""
    cache: dict[str, list[torch.Tensor]] = {name: [] for name in names or hook_names(model)}
    with hooks(model, {name: (lambda out, n=name: cache[n].append(out.detach())) for name in cache}):
        yield cache


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
