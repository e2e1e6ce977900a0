"""Sokoban with Boxoban's rules and rewards, many environments stepped at once as torch tensors.

``BatchedSokoban(levels)`` holds a pool of levels (``levels.stack_levels``); ``reset(ids)`` puts
level ``ids[i]`` into environment ``i`` and ``step(actions)`` moves every player one square (up,
down, left, right; ``levels.DIRECTIONS``): a move into a wall, or a push of a box into a wall or
another box, leaves the state as it was.  Rewards are Boxoban's: -0.1 per step, +1 for a box pushed
onto a target, -1 for one pushed off, +10 when every box is on a target; an episode ends when
solved or after ``max_steps`` (120) steps.  The observation is four 0/1 planes (wall, target, box,
player), float32, (envs, 4, rows, cols).  ``SokobanEnv`` is one environment behind Gymnasium's
``Env`` interface (``reset(seed=)``, ``step(action) -> obs, reward, terminated, truncated, info``).

Kept libraries looked at: gym-sokoban (mpSchrader) steps one numpy environment at a time and renders
RGB images: far too slow for thousands of environments on one core, so its rules, rewards and
level generator (``levels.py``) are reimplemented here as tensor operations; boxoban-levels
(DeepMind) is only data, which ``levels.parse_levels`` reads; gymnasium is the interface standard,
so ``SokobanEnv`` implements it (gymnasium is a declared dependency) while training and the
experiments use the batched class directly.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch

from circuitflow.planner.levels import DIRECTIONS, Level, stack_levels

STEP_REWARD, BOX_ON, BOX_OFF, SOLVED_REWARD = -0.1, 1.0, -1.0, 10.0
MAX_STEPS = 120
N_ACTIONS = len(DIRECTIONS)
N_PLANES = 4
_DELTAS = torch.tensor(DIRECTIONS, dtype=torch.long)


class BatchedSokoban:
    """``n_envs`` Sokoban games over a pool of levels of one shape (module docstring)."""

    def __init__(self, pool: dict[str, torch.Tensor], n_envs: int, max_steps: int = MAX_STEPS):
        self.pool, self.max_steps = pool, max_steps
        self.rows, self.cols = pool["walls"].shape[1:]
        first = torch.zeros(n_envs, dtype=torch.long)
        self.walls, self.targets = pool["walls"][first].clone(), pool["targets"][first].clone()
        self.boxes, self.player = pool["boxes"][first].clone(), pool["player"][first].clone()
        self.steps = torch.zeros(n_envs, dtype=torch.long)

    @classmethod
    def from_levels(cls, levels: list[Level], max_steps: int = MAX_STEPS) -> BatchedSokoban:
        """One environment per level, each reset to it."""
        env = cls(stack_levels(levels), len(levels), max_steps)
        env.reset(torch.arange(len(levels)))
        return env

    @property
    def n_envs(self) -> int:
        return self.walls.shape[0]

    def state(self) -> dict[str, torch.Tensor]:
        """The mutable state (for checkpoints): boxes, player, steps, walls, targets."""
        return {"walls": self.walls, "targets": self.targets, "boxes": self.boxes, "player": self.player, "steps": self.steps}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            setattr(self, name, value.clone())

    def reset(self, level_ids: torch.Tensor, where: torch.Tensor | None = None) -> None:
        """Put pool level ``level_ids[k]`` into the k-th environment of ``where`` (a bool mask; all
        environments when None)."""
        index = torch.arange(self.n_envs) if where is None else where.nonzero().squeeze(1)
        for name in ("walls", "targets", "boxes", "player"):
            getattr(self, name)[index] = self.pool[name][level_ids]
        self.steps[index] = 0

    def observe(self) -> torch.Tensor:
        """(envs, 4, rows, cols) float32: wall, target, box and player planes."""
        player = torch.zeros_like(self.walls)
        player[torch.arange(self.n_envs), self.player[:, 0], self.player[:, 1]] = True
        return torch.stack([self.walls, self.targets, self.boxes, player], dim=1).float()

    def solved(self) -> torch.Tensor:
        return ~(self.boxes & ~self.targets).flatten(1).any(1)

    def _cells(self, position: torch.Tensor) -> torch.Tensor:
        """Flat indices of (envs, 2) positions, clamped into the grid (the border is wall anyway)."""
        row = position[:, 0].clamp(0, self.rows - 1)
        col = position[:, 1].clamp(0, self.cols - 1)
        return torch.arange(self.n_envs) * self.rows * self.cols + row * self.cols + col

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Move every player by ``actions`` (envs,) long; returns the rewards (float32), whether
        each episode ended (solved or out of steps) and whether it was solved.  Ended episodes keep
        their final state until ``reset``."""
        delta = _DELTAS[actions]
        ahead, beyond = self.player + delta, self.player + 2 * delta
        walls, boxes, targets = self.walls.view(-1), self.boxes.view(-1), self.targets.view(-1)
        cell, cell2 = self._cells(ahead), self._cells(beyond)
        inside = ((beyond >= 0) & (beyond < torch.tensor([self.rows, self.cols]))).all(1)
        box_ahead = boxes[cell]
        blocked = walls[cell] | (box_ahead & (~inside | walls[cell2] | boxes[cell2]))
        move, push = ~blocked, ~blocked & box_ahead
        reward = torch.full((self.n_envs,), STEP_REWARD)
        reward += push * (BOX_ON * targets[cell2].float() + BOX_OFF * targets[cell].float())
        boxes = boxes.clone()
        boxes[cell[push]] = False
        boxes[cell2[push]] = True
        self.boxes = boxes.view_as(self.boxes)
        self.player = torch.where(move.unsqueeze(1), ahead, self.player)
        self.steps = self.steps + 1
        solved = self.solved()
        reward += SOLVED_REWARD * solved.float()
        return reward, solved | (self.steps >= self.max_steps), solved


class SokobanEnv(gymnasium.Env):
    """One Sokoban game behind Gymnasium's interface; ``reset(seed=s)`` picks level ``s`` modulo
    the pool (no seed: the next level in order)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, levels: list[Level], max_steps: int = MAX_STEPS):
        self._game = BatchedSokoban(stack_levels(levels), 1, max_steps)
        self._count, self._next = len(levels), 0
        rows, cols = self._game.rows, self._game.cols
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (N_PLANES, rows, cols), dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(N_ACTIONS)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        level = (seed if seed is not None else self._next) % self._count
        self._next = level + 1
        self._game.reset(torch.tensor([level]))
        return self._game.observe()[0].numpy(), {"level": level}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward, done, solved = self._game.step(torch.tensor([int(action)]))
        terminated = bool(solved[0])
        return self._game.observe()[0].numpy(), float(reward[0]), terminated, bool(done[0]) and not terminated, {"solved": terminated}
