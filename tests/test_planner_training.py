"""PPO training: same seed same bytes, and a run killed after k updates resumes from its last
checkpoint to the bytes of an uninterrupted run; GAE against a hand computation."""

import hashlib

import pytest
import torch

from circuitflow.planner.training import advantages, n_updates, snapshot_updates, train, weight_bytes
from circuitflow.settings.models import PlannerModel
from circuitflow.settings.parsing import SettingsError, parse

TINY = {"kind": "planner", "n_train_levels": 20, "env_steps": 96, "n_envs": 4, "rollout": 4, "channels": 4,
        "hidden": 8, "checkpoint_every": 2, "n_checkpoints": 3, "minibatches": 2}


def settings(**changes):
    return parse(PlannerModel, {**TINY, **changes}, "models.tiny")


def digests(folder):
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*.safetensors"))}


def test_a_killed_run_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path):
    tiny = settings()
    assert n_updates(tiny) == 6 and snapshot_updates(tiny) == [2, 4, 6]
    whole = train(tiny, tmp_path / "whole", progress=False)
    again = train(tiny, tmp_path / "again", progress=False)
    assert weight_bytes(whole["model"]) == weight_bytes(again["model"])  # same seed, same bytes
    stopped = train(tiny, tmp_path / "killed", stop_after=3, progress=False)  # the last checkpoint is update 2
    assert not stopped["done"] and len(stopped["curves"]["step"]) == 3
    resumed = train(tiny, tmp_path / "killed", progress=False)  # replays update 3 from the checkpoint
    assert resumed["done"] and weight_bytes(resumed["model"]) == weight_bytes(whole["model"])
    assert resumed["curves"] == whole["curves"] and resumed["curves"]["step"] == [16 * k for k in range(1, 7)]
    assert digests(tmp_path / "killed") == digests(tmp_path / "whole") and len(digests(tmp_path / "whole")) == 3
    assert weight_bytes(train(settings(seed=1), tmp_path / "other", progress=False)["model"]) != weight_bytes(whole["model"])


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    train(settings(), tmp_path, stop_after=2, progress=False)
    changed = train(settings(lr=5e-4), tmp_path, stop_after=1, progress=False)
    assert len(changed["curves"]["step"]) == 1  # started afresh


def test_gae_by_hand():
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [0.2], [0.1]])
    dones = torch.tensor([[False], [True], [False]])
    got = advantages(rewards, values, dones, torch.tensor([0.3]), gamma=0.9, lam=0.5)
    d2 = 2.0 + 0.9 * 0.3 - 0.1
    d1 = 0.0 - 0.2  # terminal: no bootstrap
    d0 = 1.0 + 0.9 * 0.2 - 0.5
    assert torch.allclose(got[:, 0], torch.tensor([d0 + 0.45 * d1, d1, d2]))


def test_planner_settings_are_checked():
    with pytest.raises(SettingsError, match="min_boxes` \\(3\\) exceeds max_boxes"):
        settings(min_boxes=3)
    with pytest.raises(SettingsError, match="multiple of minibatches"):
        settings(minibatches=3)
    with pytest.raises(SettingsError, match="`models.tiny.chanels` is not a setting: did you mean `channels`"):
        parse(PlannerModel, {**TINY, "chanels": 4}, "models.tiny")
