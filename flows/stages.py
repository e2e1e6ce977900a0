"""Prefect flows: one stage run (what `circuitflow stage ...` and every DVC stage run), and the
whole DAG as one flow (`circuitflow run`), both following the stage registry."""

from __future__ import annotations

import importlib

from prefect import flow

from circuitflow.settings import load_settings
from circuitflow.stages import STAGES, get_stage
from flows.runners import make_task_runner
from tasks.steps import STAGE_TASKS
from tasks.tracking import mlflow_run


@flow(name="circuitflow-stage", log_prints=True)
def stage_flow(stage: str, key: str | None = None, params_path: str = "params.yaml") -> dict[str, float]:
    """Run one stage for one model or pair (stages over the whole run take no key)."""
    get_stage(stage).check_key(load_settings(params_path), key)
    return STAGE_TASKS[stage](key, params_path)


@flow(name="circuitflow-pipeline", log_prints=True)
def pipeline_flow(params_path: str = "params.yaml", only: list[str] | None = None) -> dict[str, dict[str, float]]:
    """The whole DAG in one process, in the registry's order (``only``: just these runs, by label,
    e.g. ``discover@ioi``): each run waits for the runs it reads (``Stage.needs``).  Each stage's
    MLflow run is nested under one pipeline run; the runs go to the task runner params.yaml's
    ``prefect:`` section names, so independent pairs run concurrently."""
    settings = load_settings(params_path)
    # Import every stage's module here, in one thread, before the runner starts threads: two
    # threads importing transformers' lazy modules for the first time at once race (ImportError:
    # cannot import name 'AutoTokenizer'; KeyError: 'transformers.utils').
    for stage in STAGES:
        importlib.import_module(stage.module)
    with mlflow_run("pipeline", settings.mlflow.experiment) as parent, make_task_runner(settings.prefect) as runner:
        futures: dict[tuple[str, str | None], object] = {}
        for stage in STAGES:
            for key in stage.keys(settings):
                if only is not None and stage.label(key) not in only:
                    continue
                waits = [future for (name, other), future in futures.items() if stage.needs(settings, key, get_stage(name), other)]
                # Every run goes through the runner, none inline: MLflow's active run is per
                # thread, and this thread holds the pipeline run.
                parameters = {"key": key, "params_path": params_path, "parent_run": parent.info.run_id}
                futures[(stage.name, key)] = runner.submit(STAGE_TASKS[stage.name], parameters, wait_for=waits)
        return {get_stage(name).label(key): future.result() for (name, key), future in futures.items()}
