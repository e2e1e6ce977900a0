"""Prefect tasks: one per stage of the registry (``circuitflow.stages.STAGES``), each a thin
wrapper that runs the stage and logs it to MLflow.  They take names and the params path, never
live models."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from circuitflow.settings import load_settings
from circuitflow.stages import STAGES, get_stage
from tasks.tracking import log_step, mlflow_run, stage_tags


def run_stage(name: str, key: str | None, params_path: str, parent_run: str | None = None) -> dict[str, float]:
    """Run stage ``name`` for ``key`` inside an MLflow run (nested under ``parent_run``); its metrics."""
    settings = load_settings(params_path)
    stage = get_stage(name)
    label = stage.label(key)
    with mlflow_run(label, settings.mlflow.experiment, tags=stage_tags(settings, stage, key), nested_under=parent_run):
        result = stage.run(settings, key)
        log_step(result.params, result.metrics, result.artifacts, result.curves)
    return result.metrics


def _stage_task(name: str):
    """The Prefect task of one stage: (key, params path, parent MLflow run) -> metrics.
    DVC already skips up-to-date stages, so Prefect's own result caching stays off."""

    def run(key: str | None = None, params_path: str = "params.yaml", parent_run: str | None = None) -> dict[str, float]:
        return run_stage(name, key, params_path, parent_run)

    run.__name__ = run.__qualname__ = name.replace("-", "_")
    return task(name=name, cache_policy=NO_CACHE)(run)


STAGE_TASKS = {stage.name: _stage_task(stage.name) for stage in STAGES}
