"""A trained planner on disk: what the models stage writes for a ``planner`` model and how the
experiment stages read it back.

    model.safetensors            the final weights
    checkpoints/<steps>.safetensors   the snapshots the experiments evaluate (env steps, 9 digits)
    config.json                  {"kind": "planner", "format", "settings" (every PlannerModel
                                 field), "metrics", "n_parameters", "train_seconds"}
    training_curves.json         per update: step (env steps), return, success, episode_length,
                                 policy_loss, value_loss, entropy (running over the last 100 episodes)

``build`` trains in a work folder beside the model's (``.<name>.training``, kept while training so
a killed stage resumes from its last checkpoint, removed once the model is written).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from circuitflow.io import write_atomic, write_json_atomic
from circuitflow.planner.drc import DRC, n_parameters
from circuitflow.planner.training import make_model, train, weight_bytes
from circuitflow.settings.models import PlannerModel
from circuitflow.settings.parsing import parse

FORMAT = "circuitflow-planner-1"


def build(name: str, settings: PlannerModel, out: Path, progress: bool = True) -> dict[str, float]:
    """Train (resuming where a killed run stopped) and write the model folder ``out``; returns the
    final running return and success and the parameter count."""
    out = Path(out)
    workdir = out.parent / f".{name}.training"
    result = train(settings, workdir, progress=progress)
    blob = weight_bytes(result["model"])
    write_atomic(out / "model.safetensors", lambda tmp: tmp.write_bytes(blob))
    for snapshot in sorted((workdir / "checkpoints").glob("*.safetensors")):
        data = snapshot.read_bytes()
        write_atomic(out / "checkpoints" / snapshot.name, lambda tmp, d=data: tmp.write_bytes(d))
    curves = result["curves"]
    metrics = {"final_return": curves["return"][-1], "final_success": curves["success"][-1],
               "n_parameters": float(n_parameters(result["model"]))}
    write_json_atomic(out / "config.json", {"kind": "planner", "format": FORMAT, "settings": dataclasses.asdict(settings), "metrics": metrics})
    write_json_atomic(out / "training_curves.json", curves)
    shutil.rmtree(workdir, ignore_errors=True)
    return metrics


def read_settings(directory: Path) -> PlannerModel:
    """The PlannerModel a planner folder was trained with; a missing or foreign folder is one sentence."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{path} is missing or not JSON; build the planner model first (the models stage).") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a planner model ({FORMAT}); build the planner model again.")
    return parse(PlannerModel, config["settings"], f"{path} settings")


def snapshots(directory: Path) -> list[tuple[int, Path]]:
    """(env steps, path) of every weight snapshot, in training order."""
    return [(int(path.stem), path) for path in sorted((Path(directory) / "checkpoints").glob("*.safetensors"))]


def load_agent(directory: Path, weights: Path | None = None) -> tuple[DRC, PlannerModel]:
    """The DRC (eval mode) with the final weights or a snapshot's, and its settings."""
    settings = read_settings(directory)
    path = Path(weights) if weights is not None else Path(directory) / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"{path} is missing; build the planner model again (the models stage).")
    with torch.random.fork_rng(devices=[]):
        model = make_model(settings)
    model.load_state_dict(load_file(path), strict=True)
    return model.eval(), settings
