"""MLflow logging for pipeline steps: one run per step, nested under one pipeline run.

The tracking store is ``sqlite:///mlflow.db`` in the project root unless ``MLFLOW_TRACKING_URI``
points elsewhere (a shared server).  Each run is tagged with the git commit and the DVC stage.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARENT_RUN_ENV = "CIRCUITFLOW_PARENT_RUN_ID"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]
    return flat


def configure() -> None:
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))


@contextmanager
def mlflow_run(name: str, experiment: str, tags: dict[str, str] | None = None, nested_under: str | None = None) -> Iterator[Any]:
    """An MLflow run named ``name``; nested under the run id ``nested_under`` (or the pipeline run
    named by $CIRCUITFLOW_PARENT_RUN_ID) when given."""
    import mlflow

    configure()
    found = mlflow.set_experiment(experiment)
    if "mlflow.experimentKind" not in found.tags:  # else MLflow 3 opens it on the GenAI view, with no runs shown
        mlflow.MlflowClient().set_experiment_tag(found.experiment_id, "mlflow.experimentKind", "custom_model_development")
    parent = nested_under or os.environ.get(PARENT_RUN_ENV)
    run_tags = {"git_commit": _git_commit(), **(tags or {})}
    if parent:
        run_tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=name, tags=run_tags) as run:
        yield run


def log_step(params: dict[str, Any], metrics: dict[str, float], artifacts: list[Path],
             curves: dict[str, tuple[list[int], list[float]]] | None = None) -> None:
    """Log a finished step's params, metrics, curves (name -> (steps, values), one metric history
    each, in one batch) and artefacts to the active run."""
    import time

    import mlflow
    from mlflow.entities import Metric

    if params:
        mlflow.log_params(_flatten(params))
    if metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    if curves:
        now = int(time.time() * 1000)
        history = [Metric(name, float(value), now, int(step)) for name, (steps, values) in curves.items() for step, value in zip(steps, values)]
        run_id = mlflow.active_run().info.run_id
        for start in range(0, len(history), 1000):  # MLflow's batch limit
            mlflow.MlflowClient().log_batch(run_id, metrics=history[start : start + 1000])
    for path in artifacts:
        path = Path(path)
        if path.is_file():
            mlflow.log_artifact(str(path))
