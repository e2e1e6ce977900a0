"""The Prefect task runner the pipeline flow fans its steps out on, chosen in params.yaml.

    prefect:
      task_runner: threads            # default: a thread pool in the flow's own process
      max_workers: 4                  # threads only; absent or null: Prefect's default pool size

    prefect:
      task_runner: dask               # prefect-dask's DaskTaskRunner
      address: tcp://scheduler:8786   # a running Dask cluster; absent or null: a local cluster
      n_workers: 2                    # local cluster only: worker processes (one thread each)

The choice changes where steps run, never what they write: every step is a pure function of its
params and input files, so a sweep gives byte-identical artefacts on either runner
(tests/test_dask.py).  Workers of a cluster named by ``address`` must have this project installed
and reach the same Prefect server (PREFECT_API_URL), MLflow store (MLFLOW_TRACKING_URI) and data/
directory (a shared file system) as the flow.  The local cluster is started for one flow run and
its workers are pointed at the flow's Prefect server, so they do not each start a temporary one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from circuitflow.config import ConfigError, Params

TASK_RUNNERS = ("threads", "dask")
_FIELDS = {"threads": ("task_runner", "max_workers"), "dask": ("task_runner", "address", "n_workers")}


@dataclass(frozen=True)
class RunnerSettings:
    """The validated ``prefect:`` section of params.yaml."""

    task_runner: str = "threads"
    max_workers: int | None = None
    address: str | None = None
    n_workers: int | None = None


def runner_settings(params: Params) -> RunnerSettings:
    """Read and check params.yaml's ``prefect:`` section; a mistake is a ConfigError naming the fix."""
    section = params.section("prefect")
    kind = section.get("task_runner", "threads")
    if kind not in TASK_RUNNERS:
        raise ConfigError(f"Unknown prefect.task_runner {kind!r} in params.yaml; choose one of {', '.join(TASK_RUNNERS)}.")
    unknown = sorted(set(section) - set(_FIELDS[kind]))
    if unknown:
        raise ConfigError(
            f"prefect.{unknown[0]} does not apply to the {kind} task runner; "
            f"its settings are {', '.join(_FIELDS[kind][1:])} (remove the others)."
        )
    for field in ("max_workers", "n_workers"):
        value = section.get(field)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ConfigError(f"prefect.{field} must be a positive integer or null, not {value!r}.")
    address = section.get("address")
    if address is not None and not (isinstance(address, str) and "://" in address):
        raise ConfigError(f"prefect.address must be a Dask scheduler address such as tcp://host:8786, not {address!r}.")
    if address is not None and section.get("n_workers") is not None:
        raise ConfigError("prefect.n_workers sizes a local Dask cluster; remove it when prefect.address names a running one.")
    return RunnerSettings(kind, section.get("max_workers"), address, section.get("n_workers"))


def make_task_runner(settings: RunnerSettings) -> Any:
    """A fresh, unstarted Prefect TaskRunner for ``settings`` (use it as a context manager)."""
    if settings.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=settings.max_workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("prefect.task_runner is dask but prefect-dask is not installed; run `pip install prefect-dask==0.3.7`.") from None
    if settings.address is not None:
        return DaskTaskRunner(address=settings.address)
    cluster = {"threads_per_worker": 1, "processes": True, "env": {"PREFECT_API_URL": _prefect_api_url()}}
    if settings.n_workers is not None:
        cluster["n_workers"] = settings.n_workers
    return DaskTaskRunner(cluster_kwargs=cluster)


def _prefect_api_url() -> str:
    """The API URL of the Prefect server this process talks to: PREFECT_API_URL, or the temporary
    server Prefect started for it (which worker processes could not find on their own)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")
