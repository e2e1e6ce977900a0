"""Prefect flows: one per DVC stage (what `circuitflow stage ...` runs), and the whole DAG as one
flow (`circuitflow run`)."""

from __future__ import annotations

from prefect import flow

from circuitflow.config import load_params
from flows.runners import make_task_runner, runner_settings
from tasks.steps import STEP_TASKS
from tasks.tracking import mlflow_run


@flow(name="circuitflow-stage", log_prints=True)
def stage_flow(stage: str, key: str | None = None, params_path: str = "params.yaml") -> dict[str, float]:
    """Run one stage for one model or pair (the report stage takes no key)."""
    if stage not in STEP_TASKS:
        raise ValueError(f"Unknown stage {stage!r}; stages: {', '.join(STEP_TASKS)}.")
    if key is None and stage != "report":
        raise ValueError(f"The {stage} stage needs a key (a model, pair or figure name); pass parameters={{'key': ...}}.")
    return STEP_TASKS[stage](key, params_path)


@flow(name="circuitflow-pipeline", log_prints=True)
def pipeline_flow(params_path: str = "params.yaml") -> dict[str, dict[str, float]]:
    """The whole DAG in one process: models, then each pair's generate -> cache -> discover ->
    evaluate, then the figures and the report.  Each step's MLflow run is nested under one pipeline
    run.  The steps run on the task runner params.yaml's ``prefect:`` section names (flows/runners.py)."""
    from circuitflow.pipeline import FIGURES

    params = load_params(params_path)
    settings = runner_settings(params)
    experiment = params.section("mlflow").get("experiment", "circuitflow")
    with mlflow_run("pipeline", experiment) as parent, make_task_runner(settings) as runner:

        def submit(stage: str, key: str | None, wait_for=()):
            # Every step goes through the runner, none runs inline: MLflow's active run is per
            # thread, and this thread holds the pipeline run.
            parameters = {"key": key, "params_path": params_path, "parent_run": parent.info.run_id}
            return runner.submit(STEP_TASKS[stage], parameters, wait_for=list(wait_for))

        models = {m: submit("models", m) for m in params.models}
        futures = {}
        for name, pair in params.pairs.items():
            upstream = models[pair.model]
            for stage in ("generate", "cache", "discover", "evaluate"):
                upstream = submit(stage, name, [upstream])
            futures[name] = upstream
        evaluated = list(futures.values())
        futures.update({f"figure@{figure}": submit("figure", figure, evaluated) for figure in FIGURES})
        futures["report"] = submit("report", None, [futures[f"figure@{figure}"] for figure in FIGURES])
        return {name: future.result() for name, future in futures.items()}
