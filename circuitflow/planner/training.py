"""Training the DRC on Sokoban with PPO, resumable to the byte.

Why PPO and not the paper's IMPALA V-trace: V-trace corrects for the lag between many asynchronous
actors and one learner; here one process collects each rollout with the current weights, so the
data is on-policy and V-trace's importance weights would all be 1 (it reduces to n-step returns).
PPO with GAE reuses each rollout for a few epochs, which is what a small CPU budget needs.  torchrl
(which has both losses) is not installed and pins its own torch; the clipped loss is ten lines.

``train(settings, workdir)`` builds the model under a fixed seed and then runs
``ceil(env_steps / (n_envs x rollout))`` updates: collect ``rollout`` steps in ``n_envs``
environments (finished ones restart on a random level of the training pool), then ``epochs``
passes of clipped-PPO over ``minibatches`` groups of environments, each unrolled through time from
the rollout's first recurrent state.  Every random draw comes from one ``torch.Generator``; torch
runs deterministic, on one thread.  Every ``checkpoint_every`` updates ``workdir/resume.pt``
holds everything the loop carries (weights, Adam's moments, the generator, the environments, the
recurrent state, the curves), so a killed run started again continues from there and ends with the
same bytes as an uninterrupted one.  Weight snapshots for the experiments are written to
``workdir/checkpoints/<env steps>.safetensors`` at ``n_checkpoints`` evenly spaced updates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save
from tqdm.auto import tqdm

from circuitflow.io import write_atomic
from circuitflow.numerics import deterministic_torch
from circuitflow.planner.drc import DRC
from circuitflow.planner.levels import Level, generate_levels, stack_levels
from circuitflow.planner.sokoban import BatchedSokoban
from circuitflow.settings.models import PlannerModel

CURVES = ("step", "return", "success", "episode_length", "policy_loss", "value_loss", "entropy")
_WINDOW = 100  # finished episodes in the running return and success curves


def make_model(settings: PlannerModel) -> DRC:
    """The DRC ``settings`` describe, initialised from its seed."""
    torch.manual_seed(settings.seed)
    size = settings.room_size
    return DRC(settings.depth, settings.ticks, settings.channels, settings.hidden, size, size)


def n_updates(settings: PlannerModel) -> int:
    return math.ceil(settings.env_steps / (settings.n_envs * settings.rollout))


def training_levels(settings: PlannerModel) -> list[Level]:
    """The training levels (seed ``settings.seed``; the experiments' held-out levels use others)."""
    return generate_levels(settings.room_size, (settings.min_boxes, settings.max_boxes), settings.n_train_levels, settings.seed)


def training_pool(settings: PlannerModel) -> dict[str, torch.Tensor]:
    return stack_levels(training_levels(settings))


def weight_bytes(model: torch.nn.Module) -> bytes:
    return save({name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()})


def _start(settings: PlannerModel) -> dict[str, Any]:
    """The loop's carried state at update 0."""
    model = make_model(settings)
    generator = torch.Generator().manual_seed(settings.seed)
    pool = training_pool(settings)
    env = BatchedSokoban(pool, settings.n_envs, settings.max_steps)
    env.reset(torch.randint(pool["walls"].shape[0], (settings.n_envs,), generator=generator))
    return {
        "update": 0, "model": model, "generator": generator, "env": env, "pool_size": pool["walls"].shape[0],
        "optimizer": torch.optim.Adam(model.parameters(), lr=settings.lr, eps=1e-5),
        "state": model.initial_state(settings.n_envs), "starts": torch.ones(settings.n_envs, dtype=torch.bool),
        "episode_return": torch.zeros(settings.n_envs), "finished": [], "curves": {name: [] for name in CURVES},
    }


def _save_resume(path: Path, run: dict[str, Any], fingerprint: str) -> None:
    blob = {
        "fingerprint": fingerprint, "update": run["update"], "model": run["model"].state_dict(),
        "optimizer": run["optimizer"].state_dict(), "generator": run["generator"].get_state(),
        "env": run["env"].state(), "state": run["state"], "starts": run["starts"],
        "episode_return": run["episode_return"], "finished": run["finished"], "curves": run["curves"],
    }
    write_atomic(path, lambda tmp: torch.save(blob, tmp))


def _load_resume(path: Path, run: dict[str, Any], fingerprint: str) -> None:
    """Replace ``run``'s carried state by the checkpoint's when it was written by these settings."""
    if not path.exists():
        return
    blob = torch.load(path, weights_only=True)
    if blob["fingerprint"] != fingerprint:
        return
    run["model"].load_state_dict(blob["model"])
    run["optimizer"].load_state_dict(blob["optimizer"])
    run["generator"].set_state(blob["generator"])
    run["env"].load_state(blob["env"])
    for name in ("update", "state", "starts", "episode_return", "finished", "curves"):
        run[name] = blob[name]


def collect(run: dict[str, Any], settings: PlannerModel) -> dict[str, torch.Tensor]:
    """``rollout`` steps of every environment with the current policy (sampled); updates ``run``'s
    environments, recurrent state and finished-episode records; returns the rollout."""
    model, env, generator = run["model"], run["env"], run["generator"]
    rollout = {"initial": run["state"], "obs": [], "starts": [], "actions": [], "logp": [], "values": [], "rewards": [], "dones": []}
    state, starts = run["state"], run["starts"]
    with torch.no_grad():
        for _ in range(settings.rollout):
            obs = env.observe()
            state = state * (~starts).float()[None, None, :, None, None, None]
            logits, value, state = model(obs, state)
            probs = torch.softmax(logits, dim=1)
            actions = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            reward, done, solved = env.step(actions)
            run["episode_return"] += reward
            for i in done.nonzero().squeeze(1).tolist():
                run["finished"] = [*run["finished"][-_WINDOW + 1:], (float(run["episode_return"][i]), float(solved[i]), int(env.steps[i]))]
            run["episode_return"] = run["episode_return"] * (~done).float()
            if done.any():
                env.reset(torch.randint(run["pool_size"], (int(done.sum()),), generator=generator), done)
            for name, item in zip(("obs", "starts", "actions", "logp", "values", "rewards", "dones"),
                                  (obs, starts, actions, torch.log(probs.gather(1, actions[:, None]).squeeze(1)), value, reward, done)):
                rollout[name].append(item)
            starts = done
        _, last_value, _ = model(env.observe(), state * (~starts).float()[None, None, :, None, None, None])
    run["state"], run["starts"] = state, starts
    batch = {name: torch.stack(values) for name, values in rollout.items() if name != "initial"}
    batch["advantages"] = advantages(batch["rewards"], batch["values"], batch["dones"], last_value, settings.gamma, settings.gae_lambda)
    batch["returns"] = batch["advantages"] + batch["values"]
    batch["initial"] = rollout["initial"]
    return batch


def advantages(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
               gamma: float, lam: float) -> torch.Tensor:
    """GAE(gamma, lambda) over (time, envs); an episode's end (solved or out of steps) is terminal."""
    result, running, next_value = torch.zeros_like(rewards), torch.zeros_like(last_value), last_value
    for t in reversed(range(rewards.shape[0])):
        keep = (~dones[t]).float()
        delta = rewards[t] + gamma * next_value * keep - values[t]
        running = delta + gamma * lam * keep * running
        result[t], next_value = running, values[t]
    return result


def ppo_update(run: dict[str, Any], batch: dict[str, torch.Tensor], settings: PlannerModel) -> dict[str, float]:
    """``epochs`` passes of the clipped PPO loss over groups of environments; the last group's losses."""
    model, optimizer = run["model"], run["optimizer"]
    size = settings.n_envs // settings.minibatches
    for _ in range(settings.epochs):
        order = torch.randperm(settings.n_envs, generator=run["generator"])
        for group in order.split(size):
            logits, values = model.unroll(batch["obs"][:, group], batch["starts"][:, group], batch["initial"][:, :, group])
            logp_all = F.log_softmax(logits, dim=-1)
            logp = logp_all.gather(2, batch["actions"][:, group, None]).squeeze(2)
            adv = batch["advantages"][:, group]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            ratio = torch.exp(logp - batch["logp"][:, group])
            policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - settings.clip, 1 + settings.clip) * adv).mean()
            value_loss = 0.5 * (batch["returns"][:, group] - values).pow(2).mean()
            entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
            loss = policy_loss + settings.value_coef * value_loss - settings.entropy_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
    return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}


def _record(run: dict[str, Any], losses: dict[str, float], settings: PlannerModel) -> None:
    curves, finished = run["curves"], run["finished"]
    curves["step"].append(run["update"] * settings.n_envs * settings.rollout)
    for i, name in enumerate(("return", "success", "episode_length")):
        curves[name].append(sum(item[i] for item in finished) / len(finished) if finished else 0.0)
    for name, value in losses.items():
        curves[name].append(value)


def snapshot_updates(settings: PlannerModel) -> list[int]:
    """The updates after which a weight snapshot is written (the last one included)."""
    total = n_updates(settings)
    return sorted({max(1, round(total * (k + 1) / settings.n_checkpoints)) for k in range(settings.n_checkpoints)})


def train(settings: PlannerModel, workdir: Path, stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or continue training) into ``workdir`` (module docstring); ``stop_after`` stops after
    that many updates in total, as a kill would.  Returns the model (eval mode), the curves and the
    seconds this call trained."""
    workdir = Path(workdir)
    fingerprint = json.dumps(dataclasses.asdict(settings), sort_keys=True, default=list)
    total, snapshots = n_updates(settings), snapshot_updates(settings)
    start = time.perf_counter()
    with deterministic_torch(settings.seed):
        run = _start(settings)
        _load_resume(workdir / "resume.pt", run, fingerprint)
        bar = tqdm(total=total, initial=run["update"], desc="planner PPO", disable=not progress)
        while run["update"] < total and (stop_after is None or run["update"] < stop_after):
            batch = collect(run, settings)
            losses = ppo_update(run, batch, settings)
            run["update"] += 1
            _record(run, losses, settings)
            bar.update(1)
            if run["update"] in snapshots:
                blob = weight_bytes(run["model"])
                write_atomic(workdir / "checkpoints" / f"{run['update'] * settings.n_envs * settings.rollout:09d}.safetensors", lambda tmp, b=blob: tmp.write_bytes(b))
            if run["update"] % settings.checkpoint_every == 0 or run["update"] == total:
                _save_resume(workdir / "resume.pt", run, fingerprint)
        bar.close()
    return {"model": run["model"].eval(), "curves": run["curves"], "done": run["update"] == total, "seconds": time.perf_counter() - start}


def remove_resume(workdir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(Path(workdir) / "resume.pt")
