"""Prefect flows: one per DVC stage (what `circuitflow stage ...` runs), and the whole DAG as one
flow (`circuitflow run`)."""

from __future__ import annotations

from prefect import flow

from circuitflow.config import load_params
from tasks.steps import STEP_TASKS
from tasks.tracking import mlflow_run


@flow(name="circuitflow-stage", log_prints=True)
def stage_flow(stage: str, key: str | None = None, params_path: str = "params.yaml") -> dict[str, float]:
    """Run one stage for one model or pair (the report stage takes no key)."""
    task = STEP_TASKS[stage]
    return task(key, params_path) if key is not None else task(params_path)


@flow(name="circuitflow-pipeline", log_prints=True)
def pipeline_flow(params_path: str = "params.yaml") -> dict[str, dict[str, float]]:
    """The whole DAG in one process: models, then each pair's generate -> cache -> discover ->
    evaluate, then the report.  Each step's MLflow run is nested under one pipeline run."""
    params = load_params(params_path)
    experiment = params.section("mlflow").get("experiment", "circuitflow")
    results: dict[str, dict[str, float]] = {}
    with mlflow_run("pipeline", experiment) as parent:
        parent_id = parent.info.run_id
        models = {m: STEP_TASKS["models"].submit(m, params_path, parent_id) for m in params.models}
        for name, pair in params.pairs.items():
            upstream = models[pair.model]
            for stage in ("generate", "cache", "discover", "evaluate"):
                upstream = STEP_TASKS[stage].submit(name, params_path, parent_id, wait_for=[upstream])
            results[name] = upstream
        pending = {name: future for name, future in results.items()}
        results = {name: future.result() for name, future in pending.items()}
        results["report"] = STEP_TASKS["report"](params_path, parent_id)
    return results
