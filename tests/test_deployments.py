"""Scheduled Prefect deployments (flows/deployments.py, `circuitflow serve`).

Fast tests read schedules out of params.yaml; the slow one serves the deployments against a local
Prefect server, reads them back through the API, and runs the pipeline deployment to completion.
"""

from __future__ import annotations

import re
import subprocess
import time

import mlflow
import polars as pl
import pytest
import yaml
from project_copy import ROOT, make_project_copy, prefect_server, project_env, stop

from circuitflow.settings import SettingsError, load_settings
from circuitflow.stages import FIGURES, STAGE_NAMES
from flows.deployments import (
    Schedule,
    deployment_specs,
    serve_deployments,
    to_deployments,
)

STAGES = list(STAGE_NAMES)


def params_with(tmp_path, deployments):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["deployments"] = deployments
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_settings(path)


def test_schedules_come_from_params_yaml(tmp_path):
    params = params_with(tmp_path, {
        "timezone": "Europe/London",
        "pipeline": {"cron": "0 3 * * *"},
        "stages": {"discover": {"cron": "0 4 * * 0", "keys": ["tracr-reverse"]}, "models": {"cron": "30 2 * * *"}},
    })
    specs = {spec.full_name: spec for spec in deployment_specs(params)}
    assert list(specs) == ["circuitflow-pipeline/pipeline"] + [f"circuitflow-stage/{s}" for s in STAGES]
    assert specs["circuitflow-pipeline/pipeline"].schedules == (Schedule("0 3 * * *"),)
    # A stage's cron runs it for every key (params.yaml's order) unless keys narrows it.
    models = yaml.safe_load((ROOT / "params.yaml").read_text())["models"]
    assert specs["circuitflow-stage/models"].schedules == tuple(Schedule("30 2 * * *", name) for name in models)
    assert specs["circuitflow-stage/discover"].schedules == (Schedule("0 4 * * 0", "tracr-reverse"),)
    assert specs["circuitflow-stage/evaluate"].schedules == ()
    assert {spec.timezone for spec in specs.values()} == {"Europe/London"}


def test_no_section_serves_everything_on_demand(tmp_path):
    specs = deployment_specs(params_with(tmp_path, None))
    assert len(specs) == 1 + len(STAGES)
    assert all(spec.schedules == () and spec.timezone == "UTC" for spec in specs)


def test_deployments_carry_the_stage_and_each_schedule_its_key(tmp_path):
    params = params_with(tmp_path, {"stages": {"figure-roc": {"cron": "15 5 * * *"}, "evaluate": {"cron": "0 4 * * *"}},
                                    "pipeline": {"cron": "0 3 * * *"}})
    deployments = {d.name: d for d in to_deployments(deployment_specs(params), "params.yaml")}
    pipeline, figure, report = deployments["pipeline"], deployments["figure-roc"], deployments["report"]
    assert pipeline.flow_name == "circuitflow-pipeline" and pipeline.parameters == {"params_path": "params.yaml"}
    assert [(s.schedule.cron, s.schedule.timezone, s.parameters) for s in pipeline.schedules] == [("0 3 * * *", "UTC", {})]
    assert figure.flow_name == "circuitflow-stage" and figure.parameters == {"stage": "figure-roc", "params_path": "params.yaml"}
    assert [s.parameters for s in figure.schedules] == [{}] and "roc" in FIGURES
    pairs = yaml.safe_load((ROOT / "params.yaml").read_text())["pairs"]
    assert [s.parameters for s in deployments["evaluate"].schedules] == [{"key": name} for name in pairs]
    assert report.schedules == [] and report.parameters["stage"] == "report"


@pytest.mark.parametrize("section, message", [
    ({"pipeline": {"cron": "0 3 * *"}}, "`deployments.pipeline.cron` '0 3 * *' is not a valid cron string"),
    ({"pipeline": {"cron": 3}}, "`deployments.pipeline.cron` must be a string, got int 3."),
    ({"stages": {"discovr": {"cron": "0 3 * * *"}}}, "`deployments.stages.discovr` is not a stage; stages: models, generate"),
    ({"stages": {"discover": {"cron": "0 3 * * *", "keys": ["tracr-revrse"]}}}, "`deployments.stages.discover.keys` names unknown 'tracr-revrse'; known: tracr-reverse, tracr-proportion"),
    ({"stages": {"report": {"cron": "0 3 * * *", "keys": ["x"]}}}, "`deployments.stages.report.keys` does not apply"),
    ({"stages": {"discover": {"keys": ["tracr-reverse"]}}}, "`deployments.stages.discover.keys` has no effect without a cron"),
    ({"stages": {"discover": {"crom": "0 3 * * *"}}}, "`deployments.stages.discover.crom` is not a setting: did you mean `cron`?"),
    ({"timezone": "Mars/Olympus"}, "`deployments.timezone` 'Mars/Olympus' is not a known time zone"),
    ({"pipelines": {"cron": "0 3 * * *"}}, "`deployments.pipelines` is not a setting: did you mean `pipeline`?"),
    (["pipeline"], "`deployments` must be a mapping of settings"),
])
def test_bad_deployment_settings_name_the_fix(tmp_path, section, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        deployment_specs(params_with(tmp_path, section))


def test_serve_without_a_server_says_how_to_start_one(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    params_with(tmp_path, None)
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(SettingsError, match="needs a Prefect server.*prefect server start"):
        serve_deployments(str(tmp_path / "params.yaml"))


def _one_pair_with_schedules(params):
    """One model and one pair keep the triggered pipeline run short."""
    params["models"] = {"tracr-proportion": params["models"]["tracr-proportion"]}
    params["pairs"] = {"tracr-proportion": params["pairs"]["tracr-proportion"]}
    params["deployments"] = {
        "timezone": "UTC",
        "pipeline": {"cron": "0 3 * * *"},
        "stages": {"discover": {"cron": "0 4 * * 0"}, "models": {"cron": "30 2 1 * *", "keys": ["tracr-proportion"]}},
    }


def _wait_for_deployments(client, serve, expected: int, timeout: float = 180):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if serve.poll() is not None:
            raise AssertionError(f"circuitflow serve exited with {serve.returncode}; see its log.")
        deployments = client.read_deployments()
        if len(deployments) >= expected:
            return {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in deployments}
        time.sleep(1)
    raise AssertionError(f"circuitflow serve registered no {expected} deployments within {timeout:.0f} s.")


@pytest.mark.slow
def test_served_deployments_are_scheduled_and_run(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = make_project_copy(tmp_path / "project", edit_params=_one_pair_with_schedules)
    env = project_env(root)
    with prefect_server(env, tmp_path / "server.log") as url, open(tmp_path / "serve.log", "w") as log:
        serve = subprocess.Popen(["circuitflow", "serve"], cwd=root, env=dict(env, PREFECT_API_URL=url), stdout=log, stderr=subprocess.STDOUT)
        try:
            with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
                deployments = _wait_for_deployments(client, serve, 1 + len(STAGES))
                assert set(deployments) == {"circuitflow-pipeline/pipeline"} | {f"circuitflow-stage/{s}" for s in STAGES}

                def schedules(name):
                    return sorted((s.schedule.cron, s.schedule.timezone, s.parameters.get("key"), s.active) for s in deployments[name].schedules)

                assert schedules("circuitflow-pipeline/pipeline") == [("0 3 * * *", "UTC", None, True)]
                assert schedules("circuitflow-stage/discover") == [("0 4 * * 0", "UTC", "tracr-proportion", True)]
                assert schedules("circuitflow-stage/models") == [("30 2 1 * *", "UTC", "tracr-proportion", True)]
                assert schedules("circuitflow-stage/report") == []
                assert deployments["circuitflow-stage/discover"].parameters == {"stage": "discover", "params_path": "params.yaml"}

                # A run triggered through the API is picked up by the serving process and completes.
                # (A stage run: the pipeline deployment runs the same way, but the tracr compile
                # of its models step would double the test's time.)
                started = time.monotonic()
                flow_run = run_deployment("circuitflow-stage/generate", parameters={"key": "tracr-proportion"}, timeout=300, poll_interval=1)
                assert flow_run.state.is_completed(), f"{flow_run.state}: see {tmp_path / 'serve.log'}"
                assert flow_run.parameters == {"stage": "generate", "key": "tracr-proportion", "params_path": "params.yaml"}
                print(f"triggered run took {time.monotonic() - started:.1f} s")
        finally:
            stop(serve)
        dataset = pl.read_parquet(root / "data/datasets/tracr-proportion/dataset.parquet")
        assert dataset.height == 24 and {"clean", "corrupted"} <= set(dataset.columns)
        tracking = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        runs = tracking.search_runs([tracking.get_experiment_by_name("circuitflow").experiment_id])
        assert [r.info.run_name for r in runs] == ["generate@tracr-proportion"]

        # Stopping the serving process pauses the schedules: nothing fires with no one to run it.
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            pipeline = client.read_deployment_by_name("circuitflow-pipeline/pipeline")
            assert pipeline.paused or not any(s.active for s in pipeline.schedules)
