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

from typing import Any

from circuitflow.settings import PrefectSettings, SettingsError


def make_task_runner(settings: PrefectSettings) -> Any:
    """A fresh, unstarted Prefect TaskRunner for ``settings`` (use it as a context manager)."""
    if settings.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=settings.max_workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise SettingsError("prefect.task_runner is dask but prefect-dask is not installed; run `pip install prefect-dask==0.3.7`.") from None
    if settings.address is not None:
        return DaskTaskRunner(address=settings.address)
    cluster = {"threads_per_worker": 1, "processes": True, "env": {"PREFECT_API_URL": _prefect_api_url()}, "dashboard_address": "127.0.0.1:0"}
    if settings.n_workers is not None:
        cluster["n_workers"] = settings.n_workers
    return DaskTaskRunner(cluster_kwargs=cluster)


def _prefect_api_url() -> str:
    """The API URL of the Prefect server this process talks to: PREFECT_API_URL, or the temporary
    server Prefect started for it (which worker processes could not find on their own)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")
