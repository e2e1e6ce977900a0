"""Prefect tasks: one per pipeline step, each a thin wrapper that runs the library's step and logs
it to MLflow.  They take names and the params path, never live models."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from circuitflow import pipeline
from circuitflow.config import load_params
from tasks.tracking import log_step, mlflow_run


def _run_step(stage: str, key: str | None, params_path: str, parent_run: str | None) -> dict[str, float]:
    import torch

    torch.set_flush_denormal(True)  # per thread: this task's, as circuitflow/__init__.py does for the main one
    params = load_params(params_path)
    step = getattr(pipeline, {"models": "build_model"}.get(stage, stage))
    experiment = params.section("mlflow").get("experiment", "circuitflow")
    name = f"{stage}@{key}" if key else stage
    with mlflow_run(name, experiment, tags={"dvc_stage": name}, nested_under=parent_run):
        result = step(params, key) if key else step(params)
        log_step(result.params, result.metrics, result.artifacts, result.curves)
    return result.metrics


def _step_task(stage: str):
    """The Prefect task of one stage: (key, params path, parent MLflow run) -> metrics.
    DVC already skips up-to-date stages, so Prefect's own result caching stays off."""

    def run(key: str | None, params_path: str = "params.yaml", parent_run: str | None = None) -> dict[str, float]:
        return _run_step(stage, key, params_path, parent_run)

    run.__name__ = run.__qualname__ = stage
    return task(name=stage, cache_policy=NO_CACHE)(run)


STEP_TASKS = {stage: _step_task(stage) for stage in ("models", "generate", "cache", "discover", "evaluate", "figure", "report")}
