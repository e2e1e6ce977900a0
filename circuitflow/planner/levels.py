"""Sokoban levels: Boxoban's text format both ways and gym-sokoban's reverse-play generator.

A ``Level`` is four arrays over the whole grid, border walls included: ``walls``, ``targets`` and
``boxes`` (bool, rows x columns) and the player's ``(row, column)``.  ``parse_levels(text)`` reads
Boxoban's files (``#`` wall, ``@`` player, ``$`` box, ``.`` target, ``*`` box on target, ``+``
player on target, space floor; levels separated by ``; <index>`` lines) and ``format_level`` writes
one back.  ``generate_level(size, n_boxes, seed)`` follows gym-sokoban's recipe: carve a room by a
random walk, put the boxes on their targets, then play backwards (the player walks and pulls boxes)
so the level is solvable by construction; the same arguments always give the same level.
``stack_levels`` turns a list into the tensors ``sokoban.BatchedSokoban`` plays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# up, down, left, right: the agent's four actions (Boxoban's pushes/moves without the no-op)
DIRECTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))
_CHARS = {"#": (1, 0, 0, 0), " ": (0, 0, 0, 0), "@": (0, 0, 0, 1), "$": (0, 0, 1, 0),
          ".": (0, 1, 0, 0), "*": (0, 1, 1, 0), "+": (0, 1, 0, 1)}


@dataclass(frozen=True, eq=False)
class Level:
    walls: np.ndarray  # (rows, cols) bool
    targets: np.ndarray
    boxes: np.ndarray
    player: tuple[int, int]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Level) and format_level(self) == format_level(other)

    @property
    def shape(self) -> tuple[int, int]:
        return self.walls.shape


def parse_level(lines: list[str], where: str = "level") -> Level:
    """One level from its text rows (short rows padded with floor); a bad character, no player or
    unequal boxes and targets is one sentence naming ``where``."""
    width = max(map(len, lines), default=0)
    if not lines or width == 0:
        raise ValueError(f"{where} is empty; give its rows of #, @, $, ., *, + and spaces.")
    grid = np.zeros((4, len(lines), width), dtype=bool)
    players = []
    for row, line in enumerate(lines):
        for col, char in enumerate(line.ljust(width)):
            if char not in _CHARS:
                raise ValueError(f"{where} has {char!r} at row {row}, column {col}; Boxoban levels use only # @ $ . * + and spaces.")
            grid[:, row, col] = _CHARS[char]
            if char in "@+":
                players.append((row, col))
    if len(players) != 1:
        raise ValueError(f"{where} has {len(players)} players; a level needs exactly one @ or +.")
    if grid[2].sum() != grid[1].sum() or grid[2].sum() == 0:
        raise ValueError(f"{where} has {int(grid[2].sum())} boxes and {int(grid[1].sum())} targets; it needs as many of each, at least one.")
    return Level(walls=grid[0], targets=grid[1], boxes=grid[2], player=players[0])


def parse_levels(text: str) -> list[Level]:
    """Every level of a Boxoban file: blocks of rows, each after a ``; <index>`` line."""
    levels, rows, name = [], [], "level 0"
    for line in text.splitlines():
        if line.startswith(";"):
            if rows:
                levels.append(parse_level(rows, name))
            rows, name = [], f"level {line[1:].strip() or len(levels)}"
        elif line.strip():
            rows.append(line.rstrip("\n"))
    if rows:
        levels.append(parse_level(rows, name))
    return levels


def format_level(level: Level) -> str:
    """The level in Boxoban's text format (rows joined by newlines)."""
    rows = []
    for r in range(level.shape[0]):
        row = ""
        for c in range(level.shape[1]):
            player = (r, c) == tuple(level.player)
            code = (bool(level.walls[r, c]), bool(level.targets[r, c]), bool(level.boxes[r, c]), player)
            row += next(char for char, value in _CHARS.items() if tuple(map(bool, value)) == code)
        rows.append(row)
    return "\n".join(rows)


def format_levels(levels: list[Level]) -> str:
    return "".join(f"; {i}\n{format_level(level)}\n\n" for i, level in enumerate(levels))


# ---- the reverse-play generator (gym-sokoban's recipe) ------------------------------------------
def _carve(size: int, rng: np.random.Generator) -> np.ndarray:
    """gym-sokoban's room topology: a random walk of 1.5 x (rows + cols) steps inside the border
    (turning with probability 0.35), carving a random mask (cell, bar, square, cross) at each step;
    True is floor."""
    floor = np.zeros((size, size), dtype=bool)
    masks = (((0, 0),), ((0, 0), (0, 1)), ((0, 0), (1, 0)), ((0, 0), (0, 1), (1, 0), (1, 1)),
             ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)))
    n = int(1.5 * 2 * size)
    turns, directions, chosen = rng.random(n), rng.integers(4, size=n + 1), rng.integers(len(masks), size=n)
    row, col = (int(v) for v in rng.integers(1, size - 1, size=2))
    step = DIRECTIONS[directions[n]]
    for i in range(n):
        if turns[i] < 0.35:
            step = DIRECTIONS[directions[i]]
        row, col = min(max(row + step[0], 1), size - 2), min(max(col + step[1], 1), size - 2)
        for dr, dc in masks[chosen[i]]:
            if 1 <= row + dr < size - 1 and 1 <= col + dc < size - 1:
                floor[row + dr, col + dc] = True
    return floor


def _play_backwards(floor: np.ndarray, targets: np.ndarray, player: tuple[int, int], steps: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Start with every box on its target and walk the player ``steps`` random moves, pulling the
    box behind it half the time; return the position seen with the largest total box displacement
    (summed Manhattan distance from each box's own target, gym-sokoban's displacement score) among
    those with no box on a target (the latest such, so the player may have walked away), or None
    when there was none."""
    (row, col), directions, coins = player, rng.integers(4, size=steps), rng.random(steps)
    where = {(int(r), int(c)): (int(r), int(c)) for r, c in np.argwhere(targets)}  # box square -> its target
    best, best_score, target_squares = None, 0, set(where)
    for i in range(steps):
        dr, dc = DIRECTIONS[directions[i]]
        if not floor[row + dr, col + dc] or (row + dr, col + dc) in where:
            continue
        if (row - dr, col - dc) in where and coins[i] < 0.5:
            where[(row, col)] = where.pop((row - dr, col - dc))
        row, col = row + dr, col + dc
        score = sum(abs(r - tr) + abs(c - tc) for (r, c), (tr, tc) in where.items())
        if score >= best_score > 0 or score > best_score:  # the latest position with the best score
            if not any(square in target_squares for square in where):
                best, best_score = (dict(where), (row, col)), score
    if best is None:
        return None
    boxes = np.zeros_like(floor)
    for r, c in best[0]:
        boxes[r, c] = True
    return boxes, best[1]


def generate_level(size: int, n_boxes: int, seed: int, reverse_steps: int | None = None) -> Level:
    """A solvable ``size`` x ``size`` level (border walls included) with ``n_boxes`` boxes, none on
    its target, from ``seed`` alone; ``reverse_steps`` (default 5 x (rows + cols): longer than
    gym-sokoban's 1.7 x, since one random walk stands in for its search over walks) is how long the
    backward play runs; a room whose play never leaves every box off every target
    is carved again."""
    if size < 5 or n_boxes < 1:
        raise ValueError(f"A generated level needs size >= 5 and at least one box, got size {size} and {n_boxes} boxes.")
    rng = np.random.default_rng(seed)
    steps = reverse_steps if reverse_steps is not None else 5 * 2 * size
    for _ in range(1000):
        floor = _carve(size, rng)
        cells = np.argwhere(floor)
        if len(cells) < n_boxes + 3:
            continue
        chosen = cells[rng.choice(len(cells), size=n_boxes + 1, replace=False)]
        targets = np.zeros_like(floor)
        targets[chosen[1:, 0], chosen[1:, 1]] = True
        played = _play_backwards(floor, targets, (int(chosen[0][0]), int(chosen[0][1])), steps, rng)
        if played is not None:
            return Level(walls=~floor, targets=targets, boxes=played[0], player=played[1])
    raise ValueError(f"No {size}x{size} level with {n_boxes} boxes came out of 1000 tries for seed {seed}; use a larger size or fewer boxes.")


def generate_levels(size: int, boxes: tuple[int, int], count: int, seed: int) -> list[Level]:
    """``count`` levels, level i from seed ``(seed, i)`` with ``boxes[0]..boxes[1]`` boxes (cycled)."""
    low, high = boxes
    return [generate_level(size, low + i % (high - low + 1), int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
            for i in range(count)]


def stack_levels(levels: list[Level]) -> dict[str, torch.Tensor]:
    """The levels as tensors (one shape for all): walls, targets, boxes (L, rows, cols) bool and
    player (L, 2) long."""
    shapes = {level.shape for level in levels}
    if len(shapes) != 1:
        raise ValueError(f"Levels of {len(shapes)} different shapes cannot be batched; pad them to one size.")
    return {
        "walls": torch.from_numpy(np.stack([lv.walls for lv in levels])),
        "targets": torch.from_numpy(np.stack([lv.targets for lv in levels])),
        "boxes": torch.from_numpy(np.stack([lv.boxes for lv in levels])),
        "player": torch.tensor([lv.player for lv in levels], dtype=torch.long),
    }
