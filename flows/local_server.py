"""Run a command with one local Prefect server shared by all its processes.

Without PREFECT_API_URL, every process that runs a flow starts Prefect's temporary server, which
costs 7-11 s (the README); `dvc repro` runs one process per stage.  This starts one server on
loopback, points PREFECT_API_URL at it for the command, and stops it afterwards:

    python -m flows.local_server dvc repro

If PREFECT_API_URL is already set (a real server), the command just runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("The local Prefect server exited at start-up; run `prefect server start` to see why.")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"The local Prefect server did not answer at {url} within {timeout:.0f} s.")


def main(argv: list[str] | None = None) -> int:
    command = (argv if argv is not None else sys.argv[1:])
    if not command:
        print(__doc__)
        return 2
    if os.environ.get("PREFECT_API_URL"):
        return subprocess.call(command)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services", "--no-ui"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        started = time.monotonic()
        _wait_healthy(url, server)
        print(f"Prefect server on {url} (started in {time.monotonic() - started:.1f} s)", flush=True)
        return subprocess.call(command, env=dict(os.environ, PREFECT_API_URL=url))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
