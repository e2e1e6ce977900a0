"""MLflow logging for pipeline steps: one run per step, nested under one pipeline run.

The tracking store is ``sqlite:///mlflow.db`` in the project root unless ``MLFLOW_TRACKING_URI``
points elsewhere (a shared server).  Each run is tagged with the git commit, the DVC stage and, for a
keyed stage, what it ran on (``stage_tags``: pair, model, behavior), so the UI's search box finds a
pair's runs (``tags.pair = "ioi"``); its params are every setting the stage used, flattened to
dotted names (``discover.acdc.thresholds``); its artefacts are every file it wrote.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from circuitflow.settings import Settings
    from circuitflow.stages import Stage

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


def stage_tags(settings: Settings, stage: Stage, key: str | None) -> dict[str, str]:
    """The tags of one stage run: ``dvc_stage`` (its DVC label), and ``pair``, ``model`` and
    ``behavior`` where the stage runs for a pair, ``model`` where it runs for a model."""
    tags = {"dvc_stage": stage.label(key)}
    if stage.key == "pair" and key is not None:
        pair = settings.pair(key)
        tags.update(pair=key, model=pair.model, behavior=pair.behavior)
    elif stage.key == "model" and key is not None:
        tags["model"] = key
    return tags


def runs_url(base: str, experiment_id: str, search: str | None = None, view: str | None = None) -> str:
    """The MLflow UI's page listing an experiment's runs (MLflow 3's experiment page, not its GenAI
    overview), filtered by a search expression such as ``tags.pair = "ioi"`` or showing a view
    saved by ``share_runs_view`` (MLflow ignores a view when the address also has a search)."""
    url = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
    if search:
        return f"{url}?searchFilter={quote(search, safe='')}"
    return f"{url}?viewStateShareKey={quote(view, safe='')}" if view else url


def share_runs_view(experiment_id: str, name: str, *, search: str = "", params: tuple[str, ...] = (),
                    tags: tuple[str, ...] = ("pair", "model", "behavior"), group_by: str | None = "pair") -> str:
    """Save a view of the runs table as MLflow's UI shares one (the experiment tag
    ``mlflow.sharedViewState.<name>``): runs matching ``search``, the columns of the params and tags
    named, grouped by the tag ``group_by`` (the stage runs of a pair together, out from under their
    pipeline run); returns ``name`` for ``runs_url(..., view=name)``."""
    import json

    import mlflow

    configure()
    columns = [f"params.`{p}`" for p in params] + [f"tags.`{t}`" for t in tags]
    state = {"searchFilter": search, "selectedColumns": columns,
             "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": group_by}]} if group_by else None}
    mlflow.MlflowClient().set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{name}", json.dumps(state))
    return name


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
    close_orphans(found.experiment_id)
    parent = nested_under or os.environ.get(PARENT_RUN_ENV)
    run_tags = {"git_commit": _git_commit(), "host": socket.gethostname(), "pid": str(os.getpid()), **(tags or {})}
    if parent:
        run_tags["mlflow.parentRunId"] = parent
    run = mlflow.start_run(run_name=name, tags=run_tags)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def close_orphans(experiment_id: str) -> None:
    """Mark FAILED the runs still RUNNING whose process on this host is gone (a kill -9 or a crash
    ended it before it could say so)."""
    import mlflow

    client = mlflow.MlflowClient()
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get("host") == socket.gethostname() and tags.get("pid", "").isdigit() and not _alive(int(tags["pid"])):
            client.set_terminated(run.info.run_id, "FAILED")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    files = [Path(path) for path in artifacts if Path(path).is_file()]
    root = Path(os.path.commonpath([str(path.parent) for path in files])) if files else None
    for path in files:  # under their folder relative to the stage's directory (curves/ioi.csv), not flattened
        folder = path.parent.relative_to(root).as_posix()
        mlflow.log_artifact(str(path), artifact_path=None if folder == "." else folder)
