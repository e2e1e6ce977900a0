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
    return STEP_TASKS[stage](key, params_path)


@flow(name="circuitflow-pipeline", log_prints=True)
def pipeline_flow(params_path: str = "params.yaml") -> dict[str, dict[str, float]]:
    """The whole DAG in one process: models, then each pair's generate -> cache -> discover ->
    evaluate, then the report.  Each step's MLflow run is nested under one pipeline run."""
    params = load_params(params_path)
    experiment = params.section("mlflow").get("experiment", "circuitflow")
    with mlflow_run("pipeline", experiment) as parent:
        parent_id = parent.info.run_id
        models = {m: STEP_TASKS["models"].submit(m, params_path, parent_id) for m in params.models}
        evaluated = {}
        for name, pair in params.pairs.items():
            upstream = models[pair.model]
            for stage in ("generate", "cache", "discover", "evaluate"):
                upstream = STEP_TASKS[stage].submit(name, params_path, parent_id, wait_for=[upstream])
            evaluated[name] = upstream
        results = {name: future.result() for name, future in evaluated.items()}
        from circuitflow.pipeline import FIGURES

        for figure in FIGURES:
            results[f"figure@{figure}"] = STEP_TASKS["figure"](figure, params_path, parent_id)
        results["report"] = STEP_TASKS["report"](None, params_path, parent_id)
    return results
