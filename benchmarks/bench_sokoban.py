"""Speed of the batched Sokoban environment and of PPO training of the DRC, on one thread.

Reports:
  env steps/second: BatchedSokoban stepping random actions (observe + step), per batch size
  training seconds per million env steps, per model/level scale: a short PPO run of the
  given settings (the default organism's, the full settings') timed after its first update
  (level generation and model construction excluded), scaled to 10^6 env steps
Run: python benchmarks/bench_sokoban.py [--updates N] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from circuitflow.io import write_json_atomic
from circuitflow.numerics import deterministic_torch
from circuitflow.planner.levels import generate_levels, stack_levels
from circuitflow.planner.sokoban import BatchedSokoban
from circuitflow.planner.training import _start, collect, ppo_update
from circuitflow.settings.models import PlannerModel
from circuitflow.settings.parsing import parse

SCALES = {
    "default (params.yaml)": {},
    # params-full.yaml's model and levels; 16 envs x 5 steps per update keeps one measured update
    # under a minute (the cost per env step hardly depends on the batch at this size)
    "full (params-full.yaml)": {"room_size": 10, "min_boxes": 4, "max_boxes": 4, "depth": 3, "ticks": 3, "channels": 32,
                                "hidden": 256, "n_envs": 16, "rollout": 5},
}


def env_speed(n_envs: int, size: int, boxes: int, steps: int = 300) -> float:
    pool = stack_levels(generate_levels(size, (boxes, boxes), 64, seed=0))
    env = BatchedSokoban(pool, n_envs)
    env.reset(torch.randint(64, (n_envs,), generator=torch.Generator().manual_seed(0)))
    actions = torch.randint(4, (steps, n_envs), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    for step in actions:
        env.observe()
        _, done, _ = env.step(step)
        if done.any():
            env.reset(torch.zeros(int(done.sum()), dtype=torch.long), done)
    return steps * n_envs / (time.perf_counter() - start)


def training_seconds_per_million(changes: dict, updates: int) -> tuple[float, PlannerModel]:
    settings = parse(PlannerModel, {"kind": "planner", "n_train_levels": 64, **changes}, "bench")
    updates = updates if settings.n_envs * settings.rollout < 1000 else 1
    with deterministic_torch(0):
        run = _start(settings)
        ppo_update(run, collect(run, settings), settings)  # warm-up
        start = time.perf_counter()
        for _ in range(updates):
            ppo_update(run, collect(run, settings), settings)
        seconds = time.perf_counter() - start
    return seconds / (updates * settings.n_envs * settings.rollout) * 1e6, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures = {}
    for n_envs, size, boxes in ((32, 6, 2), (256, 6, 2), (256, 10, 4), (1024, 10, 4)):
        rate = env_speed(n_envs, size, boxes)
        figures[f"env_steps_per_second_{n_envs}envs_{size}x{size}"] = rate
        print(f"BatchedSokoban, {n_envs} envs, {size}x{size}: {rate:,.0f} env steps/s")
    for name, changes in SCALES.items():
        seconds, settings = training_seconds_per_million(changes, args.updates)
        figures[f"train_seconds_per_million_{name.split()[0]}"] = seconds
        shape = {k: v for k, v in dataclasses.asdict(settings).items() if k in ("room_size", "max_boxes", "depth", "ticks", "channels", "n_envs", "rollout", "epochs")}
        print(f"PPO training, {name} {shape}: {seconds:,.0f} s per 10^6 env steps ({1e6 / seconds:,.0f} env steps/s)")
    if args.json:
        write_json_atomic(args.json, figures)


if __name__ == "__main__":
    main()
