"""The planner stages through the registry's ``Stage.run`` on tiny settings, in this process: the
models stage trains a tiny DRC, the experiment stages skip other kinds, the figure stage draws."""

from pathlib import Path

import polars as pl
import torch
import yaml

from circuitflow.planner.experiments import NOT_PUSHED, next_push_labels
from circuitflow.stages import get_stage

TINY = {"kind": "planner", "n_train_levels": 30, "env_steps": 256, "n_envs": 8, "rollout": 8, "channels": 4, "hidden": 8,
        "n_eval_levels": 6, "thinking_steps": [0, 2], "probe_levels": 12, "probe_thinking_steps": [0, 1],
        "n_checkpoints": 2, "checkpoint_every": 2, "max_steps": 30}


def test_the_planner_stages_run_through_the_registry(tmp_path, monkeypatch):
    from circuitflow.settings import load_settings

    params = {"models": {"tracr-reverse": {"kind": "tracr", "program": "reverse"}, "planner": TINY},
              "pairs": {"tracr-reverse": {"model": "tracr-reverse", "behavior": "tracr-reverse"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    settings = load_settings("params.yaml")
    result = get_stage("models").run(settings, "planner")
    assert sorted(p.name for p in result.artifacts) == ["000000128.safetensors", "000000256.safetensors", "config.json", "model.safetensors", "training_curves.json"]
    assert set(result.curves) >= {"return", "success", "policy_loss"} and result.curves["success"][0] == [64, 128, 192, 256]
    assert not list(Path("data/models").glob(".planner.training"))  # the resume folder is gone
    for name in ("planner-thinking", "planner-probe"):
        stage = get_stage(name)
        assert stage.keys(settings) == list(settings.models)
        assert [p.name for p in stage.run(settings, "tracr-reverse").artifacts] == ["skipped.json"]
        stage.run(settings, "planner")
    thinking = pl.read_parquet("data/planner/thinking/planner/thinking.parquet")
    assert thinking.height == 2 * 2 * 2 and thinking["success"].is_between(0, 1).all()
    assert set(thinking["level_set"]) == {"easy", "hard"} and thinking["cycle_fraction"].is_between(0, 1).all()
    states = pl.read_parquet("data/planner/probe/planner/states.parquet")
    assert set(states["split"]) == {"train", "test"} and "l1_c3" in states.columns and states["label"].is_between(0, 4).all()
    probe = pl.read_parquet("data/planner/probe/planner/probe.parquet")
    assert probe["thinking_steps"].to_list() == [0, 1] and probe["accuracy"].is_between(0, 1).all()
    figures = get_stage("planner-figure").run(settings)
    assert {p.name for p in figures.artifacts} == {"success_planner.png", "pacing_planner.png", "probe_planner.png", "thinking.csv", "probe.csv"}


def test_the_next_push_label_looks_ahead_within_the_episode():
    pushes = torch.full((4, 1, 1, 2), -1)
    pushes[1, 0, 0, 0] = 3  # the box on square (0, 0) is pushed right at step 1
    pushes[3, 0, 0, 1] = 0  # the box on square (0, 1) up at step 3
    labels = next_push_labels(pushes, torch.ones(4, 1, dtype=torch.bool))
    assert labels[:, 0, 0, 0].tolist() == [3, 3, NOT_PUSHED, NOT_PUSHED]
    assert labels[:, 0, 0, 1].tolist() == [0, 0, 0, 0]
