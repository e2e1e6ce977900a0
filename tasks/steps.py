"""Prefect tasks: one per pipeline step, each a thin wrapper that runs the library's step and logs
it to MLflow.  They take names and the params path, never live models."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from circuitflow import pipeline
from circuitflow.config import load_params
from tasks.tracking import log_step, mlflow_run


def _run_step(stage: str, key: str | None, params_path: str, parent_run: str | None) -> dict[str, float]:
    params = load_params(params_path)
    step = getattr(pipeline, {"models": "build_model"}.get(stage, stage))
    experiment = params.section("mlflow").get("experiment", "circuitflow")
    name = f"{stage}@{key}" if key else stage
    with mlflow_run(name, experiment, tags={"dvc_stage": name}, nested_under=parent_run):
        result = step(params, key) if key else step(params)
        log_step(result.params, result.metrics, result.artifacts)
    return result.metrics


# DVC already skips up-to-date stages, so Prefect's own result caching stays off.
@task(name="models", cache_policy=NO_CACHE)
def build_model(model: str, params_path: str = "params.yaml", parent_run: str | None = None) -> dict[str, float]:
    return _run_step("models", model, params_path, parent_run)


@task(name="generate", cache_policy=NO_CACHE)
def generate(pair: str, params_path: str = "params.yaml", parent_run: str | None = None) -> dict[str, float]:
    return _run_step("generate", pair, params_path, parent_run)


@task(name="cache", cache_policy=NO_CACHE)
def cache(pair: str, params_path: str = "params.yaml", parent_run: str | None = None) -> dict[str, float]:
    return _run_step("cache", pair, params_path, parent_run)


@task(name="discover", cache_policy=NO_CACHE)
def discover(pair: str, params_path: str = "params.yaml", parent_run: str | None = None) -> dict[str, float]:
    return _run_step("discover", pair, params_path, parent_run)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(pair: str, params_path: str = "params.yaml", parent_run: str | None = None) -> dict[str, float]:
    return _run_step("evaluate", pair, params_path, parent_run)


@task(name="report", cache_policy=NO_CACHE)
def report(params_path: str = "params.yaml", parent_run: str | None = None) -> dict[str, float]:
    return _run_step("report", None, params_path, parent_run)


STEP_TASKS = {"models": build_model, "generate": generate, "cache": cache, "discover": discover, "evaluate": evaluate, "report": report}
