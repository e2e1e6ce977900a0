"""A temporary copy of the project with tiny params, run the way a user runs it (subprocesses).

The orchestration tests (end to end, deployments, Dask, MLflow UI) share these helpers:

    root = make_project_copy(tmp_path / "project")          # files, tiny params.yaml, git repository
    env = project_env(root)                                   # venv on PATH, this copy's code first
    with prefect_server(env, root / ".prefect") as api_url:   # one local Prefect server on loopback
        run_in(root, dict(env, PREFECT_API_URL=api_url), "circuitflow", "run")
    digests(root)                                             # sha256 of every file under data/

The copy holds git's tracked files plus the untracked ones it does not ignore (work in progress
that the copy's imports may need); never data/ or artifacts/.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
_SKIPPED = ("data/", "artifacts/")


def project_files() -> list[str]:
    """The project's files, relative to its root, sorted: tracked ones and untracked ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    names = {name for name in out.split("\0") if name and not name.startswith(_SKIPPED)}
    return sorted(name for name in names if (ROOT / name).is_file())


def tiny_params(params: dict[str, Any]) -> dict[str, Any]:
    """The default params shrunk so that the whole DAG runs in seconds per stage (changes ``params``
    in place and returns it): organisms train for a few steps (the code path, not a trained model)."""
    for pair in params["pairs"].values():
        pair.update(n_examples=24, batch_size=12)
    for spec in params["models"].values():
        if spec["kind"] == "organism":
            spec.update(steps=6, n_train=300, n_eval=20, eval_every=3, d_model=32, n_heads=2)
        elif spec["kind"] == "mamba":
            spec.update(steps=6, n_train=300, n_eval=20, eval_every=3, n_layers=2, d_model=32)
        elif spec["kind"] == "siit":
            spec.update(max_steps=6, eval_every=3, n_eval_pairs=32, batch_size=16)
        elif spec["kind"] == "planner":
            spec.update(env_steps=256, n_envs=8, rollout=8, channels=4, hidden=8, n_train_levels=30, n_eval_levels=6,
                        thinking_steps=[0, 2], probe_levels=12, probe_thinking_steps=[0, 1], n_checkpoints=2, max_steps=30)
    discover = params["discover"]
    if "acdc" in discover:
        discover["acdc"]["thresholds"] = [1e-3, 1e-2, 0.1]
    if "sp" in discover:
        discover["sp"].update(steps=5, lambdas=[0.1, 1.0])
    params["evaluate"]["faithfulness_points"] = 5
    if isinstance(params["evaluate"].get("hypothesis_tests"), dict):
        params["evaluate"]["hypothesis_tests"].update(n_random=20, n_permutations=50, n_references=20)
    if isinstance(params["evaluate"].get("adversarial"), dict):
        params["evaluate"]["adversarial"].update(n_clean=8, n_corrupted=8, search={"restarts": 2, "steps": 3})
    return params


def only_pairs(params: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Keep the pairs ``names`` and the models they use (in place; returns ``params``)."""
    params["pairs"] = {name: params["pairs"][name] for name in names}
    used = {pair["model"] for pair in params["pairs"].values()}
    params["models"] = {name: spec for name, spec in params["models"].items() if name in used}
    return params


def write_params(root: Path, params: dict[str, Any]) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_project_copy(
    root: Path, edit_params: Callable[[dict[str, Any]], None] | None = None, git: bool = True
) -> Path:
    """Copy the project to ``root`` (created) with tiny params, then ``edit_params(params)`` if given.

    ``git``: make the copy its own repository with one commit (DVC and the runs' git_commit tag need one).
    """
    root.mkdir(parents=True, exist_ok=True)
    for name in project_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    (root / "dvc.lock").unlink(missing_ok=True)
    params = tiny_params(yaml.safe_load((root / "params.yaml").read_text()))
    if edit_params is not None:
        edit_params(params)
    write_params(root, params)
    if git:
        env = project_env(root)
        for command in (["git", "init", "-q"], ["git", "add", "-A"],
                        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
            subprocess.run(command, cwd=root, check=True, env=env)
    return root


def project_env(root: Path) -> dict[str, str]:
    """The environment of a command run in the copy: the venv's commands on PATH, the copy's code
    imported before the editable install's (PYTHONPATH), offline switches, no inherited Prefect
    server or MLflow store, and a Prefect home of its own (its settings and database)."""
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        PYTHONPATH=str(root),
        PREFECT_HOME=str(root / ".prefect"),
        HF_HUB_OFFLINE="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="1",
    )
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "CIRCUITFLOW_PARENT_RUN_ID"):
        env.pop(key, None)
    return env


def run_in(root: Path, env: dict[str, str], *command: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``command`` in the copy; on failure raise with the tail of its output."""
    result = subprocess.run(list(command), check=False, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root/data``, by path relative to ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "data").rglob("*")) if p.is_file()
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 120.0) -> float:
    """Wait until ``url`` answers 200; return the seconds it took.  Fails if ``process`` exits first."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[:4]} exited with {process.returncode} before {url} answered.")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s.")


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate ``process`` (and wait); kill it if it does not stop.  A process started with
    ``start_new_session=True`` is stopped with every process it started (its process group):
    a command that runs a server as its child would otherwise leave the server behind."""
    if process.poll() is not None:
        return
    group = os.getpgid(process.pid) == process.pid

    def send(sig: int) -> None:
        try:
            os.killpg(process.pid, sig) if group else process.send_signal(sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()
    if group:  # children may outlive the leader by a moment
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(process.pid):
            time.sleep(0.2)
        send(signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@contextlib.contextmanager
def prefect_server(env: dict[str, str], log: Path) -> Iterator[str]:
    """A Prefect server on a free loopback port for the duration of the block; yields its API URL.

    Without its background services (faster to start, and the scheduler creates no runs behind the
    test's back: a served deployment still picks up the runs the test triggers).  Output goes to ``log``.
    """
    port = free_port()
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
               "--no-ui", "--no-services"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        server = subprocess.Popen(command, env=dict(env, PREFECT_UI_ENABLED="false"), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for_http(f"{url}/health", server)
        yield url
    finally:
        stop(server)
