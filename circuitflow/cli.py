"""The `circuitflow` command: what every DVC stage runs, and the whole pipeline in one process.

    circuitflow stage models tracr-reverse     one DVC stage (models/generate/cache/discover/evaluate
                                               take a model or pair name, figure a figure name; report)
    circuitflow run                            the whole DAG as one Prefect flow, no DVC needed
    circuitflow check                          validate params.yaml and exit
    circuitflow ui                             open the MLflow UI on localhost
    circuitflow serve                          serve the pipeline and stage flows as Prefect deployments,
                                               on params.yaml's cron schedules (needs PREFECT_API_URL)

Orchestration is imported lazily so `check` and errors in params.yaml answer fast.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

STAGES = ("models", "generate", "cache", "discover", "evaluate", "figure", "report")


def _quiet_offline_environment() -> None:
    """No network at run time: keep every library from phoning home (DESIGN.md stack notes)."""
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }.items():
        os.environ.setdefault(key, value)


def _check(params_path: str, stage: str | None = None, key: str | None = None):
    from circuitflow.config import load_params

    params = load_params(params_path)
    needs = {"models": "a model name", "figure": "a figure name"}.get(stage, "a pair name")
    if stage not in (None, "report") and key is None:
        raise ValueError(f"The {stage} stage needs {needs}.")
    if stage == "models":
        params.model(key)
    elif stage == "figure":
        from circuitflow.pipeline import FIGURES

        if key not in FIGURES:
            raise ValueError(f"Unknown figure {key!r}; known figures: {', '.join(FIGURES)}.")
    elif stage not in (None, "report"):
        params.pair(key)
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="circuitflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    stage = commands.add_parser("stage", help="run one DVC stage")
    stage.add_argument("stage", choices=STAGES)
    stage.add_argument("key", nargs="?", help="model name (models stage) or pair name")
    commands.add_parser("run", help="run the whole pipeline as one Prefect flow")
    commands.add_parser("check", help="validate params.yaml")
    ui = commands.add_parser("ui", help="open the MLflow UI on localhost")
    ui.add_argument("--port", type=int, default=5000)
    commands.add_parser("serve", help="serve the flows as scheduled Prefect deployments (flows/deployments.py)")
    args = parser.parse_args(argv)

    _quiet_offline_environment()
    try:
        if args.command == "check":
            params = _check(args.params)
            print(f"{args.params}: {len(params.models)} models, {len(params.pairs)} pairs, methods {', '.join(params.methods)}.")
            return 0
        if args.command == "ui":
            from tasks.tracking import DEFAULT_TRACKING_URI

            uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
            print(f"MLflow UI for {uri} at http://127.0.0.1:{args.port} (Ctrl-C stops it)")
            # One web worker and no job runners: the UI answers in seconds instead of about a minute.
            env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
            command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
            return subprocess.call(command, env=env)
        if args.command == "stage":
            _check(args.params, args.stage, args.key)
            from flows.stages import stage_flow

            stage_flow(args.stage, args.key, args.params)
            return 0
        if args.command == "run":
            from flows.runners import runner_settings

            runner_settings(_check(args.params))
            from flows.stages import pipeline_flow

            pipeline_flow(args.params)
            return 0
        if args.command == "serve":
            _check(args.params)
            from flows.deployments import serve_deployments

            serve_deployments(args.params)
            return 0
    except (ValueError, FileNotFoundError) as error:
        # A known mistake (bad params, missing artefact, corrupt file): one sentence, no traceback.
        print(f"circuitflow: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
