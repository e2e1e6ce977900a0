"""Scale-out: params.yaml picks the pipeline's Prefect task runner (flows/runners.py).

Fast tests check the choice; the slow one runs a sweep over several (model, behavior, ablation,
method) combinations on the default thread pool and on a local Dask cluster of two worker
processes, and checks that both write the same bytes.
"""

from __future__ import annotations

import re
import shutil
import time

import pytest
import yaml
from project_copy import (
    ROOT,
    digests,
    make_project_copy,
    only_pairs,
    prefect_server,
    project_env,
    run_in,
    write_params,
)

from circuitflow.settings import PrefectSettings, SettingsError, load_settings
from flows.runners import make_task_runner


def write_with(tmp_path, prefect):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw.pop("prefect", None)
    if prefect is not None:
        raw["prefect"] = prefect
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def params_with(tmp_path, prefect):
    return load_settings(write_with(tmp_path, prefect))


def test_threads_are_the_default(tmp_path):
    from prefect.task_runners import ThreadPoolTaskRunner

    assert params_with(tmp_path, None).prefect == PrefectSettings("threads")
    runner = make_task_runner(params_with(tmp_path, {"task_runner": "threads", "max_workers": 3}).prefect)
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 3


def test_dask_with_an_address_connects_to_that_cluster(tmp_path):
    from prefect_dask import DaskTaskRunner

    settings = params_with(tmp_path, {"task_runner": "dask", "address": "tcp://10.0.0.5:8786"}).prefect
    runner = make_task_runner(settings)
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address == "tcp://10.0.0.5:8786" and runner.cluster_kwargs == {}


def test_a_local_dask_cluster_shares_the_flows_prefect_server(tmp_path):
    """Worker processes are told the flow's Prefect server, or each would start a temporary one."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = params_with(tmp_path, {"task_runner": "dask", "n_workers": 2}).prefect
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4321/api"}):
        runner = make_task_runner(settings)
    assert runner.address is None
    assert runner.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                     "env": {"PREFECT_API_URL": "http://127.0.0.1:4321/api"}, "dashboard_address": "127.0.0.1:0"}


@pytest.mark.parametrize("section, message", [
    ({"task_runner": "ray"}, "`prefect.task_runner` must be one of threads, dask, got str 'ray'."),
    ({"task_runner": "dask", "address": "tcp://h:8786", "n_workers": 2}, "`prefect.n_workers` sizes a local Dask cluster; remove it"),
    ({"task_runner": "dask", "address": "localhost"}, "`prefect.address` must be a Dask scheduler address such as tcp://host:8786"),
    ({"task_runner": "dask", "max_workers": 2}, "`prefect.max_workers` does not apply to the dask task runner; remove it."),
    ({"address": "tcp://h:8786"}, "`prefect.address` does not apply to the threads task runner"),
    ({"task_runner": "threads", "max_workers": 0}, "`prefect.max_workers` must be at least 1, got 0."),
    ({"task_runner": "dask", "n_workers": True}, "`prefect.n_workers` must be an integer, got bool True."),
])
def test_bad_runner_settings_name_the_fix(tmp_path, section, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        params_with(tmp_path, section)


def test_circuitflow_run_rejects_a_bad_runner_before_running(tmp_path, capsys):
    from flows.cli import main

    write_with(tmp_path, {"task_runner": "ray"})
    assert main(["--params", str(tmp_path / "params.yaml"), "run"]) == 2
    assert "circuitflow: `prefect.task_runner` must be one of threads, dask" in capsys.readouterr().err


def _sweep(params):
    """Both tracr models, each under two ablations (zero, the ACDC paper's tracr setting, and
    resample or mean): four (model, behavior, ablation) pairs, each run through every method."""
    only_pairs(params, ["tracr-reverse", "tracr-proportion"])
    params["discover"]["methods"] = ["acdc", "eap"]  # the runners' bytes, not every method's (test_pipeline_e2e)
    for name, ablation in (("tracr-reverse", "resample"), ("tracr-proportion", "mean")):
        params["pairs"][f"{name}-{ablation}"] = dict(params["pairs"][name], ablation=ablation)


@pytest.mark.slow
def test_a_dask_cluster_writes_the_same_bytes_as_threads(tmp_path):
    root = make_project_copy(tmp_path / "project", edit_params=_sweep)
    env = project_env(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params.get("prefect", {}).get("task_runner", "threads") == "threads"  # the baseline is the default runner
    started = time.monotonic()
    with prefect_server(env, tmp_path / "server.log") as url:
        env["PREFECT_API_URL"] = url
        print(f"Prefect server: {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        run_in(root, env, "circuitflow", "run")
        threads = digests(root)
        print(f"threads: {time.monotonic() - started:.0f} s")

        shutil.rmtree(root / "data")
        write_params(root, dict(params, prefect={"task_runner": "dask", "n_workers": 2}))
        started = time.monotonic()
        result = run_in(root, env, "circuitflow", "run")
        on_dask = digests(root)
        print(f"dask: {time.monotonic() - started:.0f} s")
    output = result.stdout + result.stderr
    assert "PrefectDaskClient" in output and "Finished in state Completed" in output
    assert len(threads) > 30 and any("tracr-proportion-mean" in path for path in threads)
    differing = sorted(path for path in threads.keys() | on_dask.keys() if threads.get(path) != on_dask.get(path))
    assert not differing, f"artefacts differ between the thread pool and Dask: {differing}"
