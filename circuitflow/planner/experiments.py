"""The learned-planner experiments (Taufeeque et al. 2024): thinking steps, pacing, box-push probes.

``play(model, levels, thinking)`` runs the greedy (argmax) agent on every level at once: first the
network is stepped ``thinking`` times on the first observation with its actions discarded (the
paper's thinking steps), then it acts until the episode ends (solved, or Boxoban's 120 steps).
It returns per level whether it was solved, the steps it took, and whether the episode returned to
an earlier state (player square and box squares) within its first ``pacing_steps`` steps (the
paper's "pacing": cycles the agent walks while it plans); with ``record=True`` also every layer's
ConvLSTM cell state after each step's ticks, the box squares and the direction of the push made.

``probe_rows`` turns a recorded play into one row per (step, square holding a box): the cell
states at that square and the label, the direction that box is next pushed (0-3, up down left
right) or 4 when it is not pushed again in the episode.  ``fit_probe`` fits one multinomial
logistic regression (scikit-learn, standardised features), shared by every square: a linear probe
read out per square, as in the follow-up work that decodes plans from the DRC.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from circuitflow.numerics import deterministic_torch
from circuitflow.planner.artefacts import load_agent, read_settings, snapshots
from circuitflow.planner.drc import DRC
from circuitflow.planner.levels import Level, format_level, generate_levels
from circuitflow.planner.sokoban import BatchedSokoban
from circuitflow.planner.training import training_levels
from circuitflow.settings.models import PlannerModel

NOT_PUSHED = 4
_HELD_OUT_SEED = 1_000_000  # held-out level seeds start here (training levels use the model's seed)


def held_out_levels(settings: PlannerModel, n_boxes: tuple[int, int], count: int, salt: int, exclude: set[str]) -> list[Level]:
    """``count`` generated levels not among ``exclude`` (the training levels' text), from seeds
    disjoint from training's (``salt`` keeps level sets apart)."""
    levels, offset = [], 0
    while len(levels) < count:
        batch = generate_levels(settings.room_size, n_boxes, count, _HELD_OUT_SEED + 1000 * salt + offset + settings.seed)
        levels += [level for level in batch if format_level(level) not in exclude][: count - len(levels)]
        offset += 1
        if offset > 50:
            raise ValueError(f"Fewer than {count} held-out {settings.room_size}x{settings.room_size} levels differ from the training levels; lower n_eval_levels.")
    return levels


def _keys(env: BatchedSokoban) -> torch.Tensor:
    """(envs, cells + 2) long: the box squares and the player's square, one state per row."""
    return torch.cat([env.boxes.flatten(1).long(), env.player], dim=1)


@torch.no_grad()
def play(model: DRC, levels: list[Level], thinking: int, max_steps: int = 120, pacing_steps: int = 10,
         record: bool = False) -> dict[str, torch.Tensor]:
    """The greedy agent on ``levels`` after ``thinking`` thinking steps (module docstring); finished
    episodes leave the batch.  Returns solved (bool), steps (long), cycle (bool) per level and, with
    ``record``, ``cells`` (time, depth, levels, channels, rows, cols), ``boxes`` (time, levels,
    rows, cols), ``pushes`` (time, levels, rows, cols: the direction a box was pushed from that
    square at that step, else -1) and ``alive`` (time, levels)."""
    env = BatchedSokoban.from_levels(levels, max_steps)
    n = len(levels)
    state = model.initial_state(n)
    obs = env.observe()
    for _ in range(thinking):
        _, _, state = model(obs, state)
    alive = torch.ones(n, dtype=torch.bool)
    solved, steps = torch.zeros(n, dtype=torch.bool), torch.full((n,), max_steps)
    history, cycle = [_keys(env)], torch.zeros(n, dtype=torch.bool)
    recorded: dict[str, list[torch.Tensor]] = {"cells": [], "boxes": [], "pushes": [], "alive": []}
    for t in range(max_steps):
        index = alive.nonzero().squeeze(1)
        if len(index) == 0:
            break
        logits, _, new_state = model(obs[index], state[:, :, index])
        state[:, :, index] = new_state
        actions = torch.zeros(n, dtype=torch.long)
        actions[index] = logits.argmax(1)
        before = env.boxes.clone()
        _, done, now_solved = env.step(actions)
        if record:
            pushes = torch.where(before & ~env.boxes & alive[:, None, None], actions[:, None, None], -1)
            for name, value in (("cells", state[:, 1].clone()), ("boxes", before), ("pushes", pushes), ("alive", alive.clone())):
                recorded[name].append(value)
        if t < pacing_steps:
            keys = _keys(env)
            cycle |= alive & torch.stack([(keys == old).all(1) for old in history]).any(0)
            history.append(keys)
        solved |= alive & now_solved
        steps = torch.where(alive & done, torch.tensor(t + 1), steps)
        alive &= ~done
        obs = env.observe()
    result = {"solved": solved, "steps": steps, "cycle": cycle}
    if record:
        result.update({name: torch.stack(values) for name, values in recorded.items()})
    return result


def summarise(result: dict[str, torch.Tensor]) -> dict[str, float]:
    """Success rate, mean steps of the solved episodes (NaN when none), fraction with an early cycle."""
    solved = result["solved"]
    return {
        "success": float(solved.float().mean()),
        "steps_to_solve": float(result["steps"][solved].float().mean()) if solved.any() else float("nan"),
        "cycle_fraction": float(result["cycle"].float().mean()),
    }


def next_push_labels(pushes: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """(time, levels, rows, cols): the direction the box on each square is next pushed (from this
    step on, within its episode), else ``NOT_PUSHED``."""
    labels = torch.empty_like(pushes)
    upcoming = torch.full_like(pushes[0], NOT_PUSHED)
    for t in reversed(range(pushes.shape[0])):
        upcoming = torch.where(pushes[t] >= 0, pushes[t], upcoming)
        labels[t] = upcoming
    return labels


def probe_rows(result: dict[str, torch.Tensor], thinking: int, split: str, first_level: int = 0) -> pl.DataFrame:
    """One row per (step, level, square with a box) of a recorded play: its labels and the cell
    states of every layer at that square (columns ``l{layer}_c{channel}``)."""
    labels = next_push_labels(result["pushes"], result["alive"])
    where = (result["boxes"] & result["alive"][:, :, None, None]).nonzero()  # (rows, 4): t, level, r, c
    t, level, r, c = where.unbind(1)
    cells = result["cells"].permute(0, 2, 4, 5, 1, 3)[t, level, r, c].flatten(1).numpy()  # (rows, depth x channels)
    depth, channels = result["cells"].shape[1], result["cells"].shape[3]
    columns = {
        "thinking_steps": np.full(len(t), thinking, dtype=np.int64), "split": [split] * len(t),
        "level": (level + first_level).numpy(), "step": t.numpy(), "row": r.numpy(), "col": c.numpy(),
        "label": labels[t, level, r, c].numpy(),
    }
    columns |= {f"l{d}_c{k}": cells[:, d * channels + k] for d in range(depth) for k in range(channels)}
    return pl.DataFrame(columns)


def fit_probe(rows: pl.DataFrame, seed: int = 0) -> dict[str, float]:
    """Fit the probe on the ``train`` rows, score it on the ``test`` rows: accuracy over every step,
    at the first step (before any move), and the majority-class accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = [name for name in rows.columns if name.startswith("l") and "_c" in name]
    train, test = rows.filter(pl.col("split") == "train"), rows.filter(pl.col("split") == "test")
    if train.height == 0 or test.height == 0:
        raise ValueError("The probe needs rows in both splits (a box on the board); play more probe levels.")
    majority = int(train["label"].mode().sort()[0])
    if train["label"].n_unique() < 2:  # nothing to separate (e.g. no box was ever pushed): the constant probe
        predicted = np.full(test.height, majority)
    else:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        probe.fit(train.select(features).to_numpy(), train["label"].to_numpy())
        predicted = probe.predict(test.select(features).to_numpy())
    correct = predicted == test["label"].to_numpy()
    first = (test["step"] == 0).to_numpy()
    return {
        "accuracy": float(correct.mean()),
        "accuracy_first_step": float(correct[first].mean()) if first.any() else float("nan"),
        "majority_accuracy": float((test["label"].to_numpy() == majority).mean()),
        "majority_accuracy_first_step": float((test["label"].to_numpy()[first] == majority).mean()) if first.any() else float("nan"),
        "n_train": float(train.height), "n_test": float(test.height),
    }


# ---- the experiments, over a built planner folder ------------------------------------------------
def _exclusion(settings: PlannerModel) -> set[str]:
    return {format_level(level) for level in training_levels(settings)}


def thinking_table(directory: Path) -> pl.DataFrame:
    """Experiments (a) and (b): for every weight snapshot, level set (``easy``: ``easy_boxes``
    boxes, ``hard``: ``hard_boxes``) and thinking-step count, the success rate, the mean steps of
    the solved episodes and the fraction of episodes with a cycle in their first ``pacing_steps``."""
    settings = read_settings(directory)
    exclude = _exclusion(settings)
    level_sets = {name: held_out_levels(settings, (boxes, boxes), settings.n_eval_levels, salt, exclude)
                  for salt, (name, boxes) in enumerate((("easy", settings.easy_boxes), ("hard", settings.hard_boxes)))}
    rows = []
    with deterministic_torch(settings.seed):  # one thread: the pipeline shares the cores
        for env_steps, path in snapshots(directory):
            model, _ = load_agent(directory, path)
            for level_set, levels in level_sets.items():
                for thinking in settings.thinking_steps:
                    result = play(model, levels, thinking, settings.max_steps, settings.pacing_steps)
                    rows.append({"env_steps": env_steps, "level_set": level_set, "thinking_steps": thinking,
                                 "n_levels": len(levels), **summarise(result)})
    return pl.DataFrame(rows)


def probe_tables(directory: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Experiment (c) on the final weights: the cached rows (``probe_rows``) of ``probe_levels``
    held-out levels (first half train, second half test) per probe thinking-step count, and the
    probe's accuracy per count (``fit_probe``)."""
    settings = read_settings(directory)
    model, _ = load_agent(directory)
    levels = held_out_levels(settings, (settings.min_boxes, settings.max_boxes), settings.probe_levels, 2, _exclusion(settings))
    half = len(levels) // 2
    tables, scores = [], []
    for thinking in settings.probe_thinking_steps:
        with deterministic_torch(settings.seed):
            parts = [probe_rows(play(model, part, thinking, settings.max_steps, settings.pacing_steps, record=True), thinking, split, first)
                     for split, first, part in (("train", 0, levels[:half]), ("test", half, levels[half:]))]
        table = pl.concat(parts)
        scores.append({"thinking_steps": thinking, **fit_probe(table, settings.seed)})
        tables.append(table)
    return pl.concat(tables), pl.DataFrame(scores)
