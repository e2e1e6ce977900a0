"""The `circuitflow` command: what every DVC stage runs, and the whole pipeline in one process.

    circuitflow stage models tracr-reverse     one stage run: models takes a model name;
                                               generate, cache, discover, evaluate a pair name;
                                               figure-* and report none (circuitflow stage --list)
    circuitflow repro                          what `dvc repro` does, in one warm process: the stale
                                               stages (and what depends on them), then `dvc commit`
    circuitflow run                            the whole DAG as one Prefect flow, no DVC needed
    circuitflow check                          validate params.yaml and exit
    circuitflow ui                             open the MLflow UI on localhost
    circuitflow serve                          serve the pipeline and stage flows as Prefect deployments,
                                               on params.yaml's cron schedules (needs PREFECT_API_URL)

`--params FILE` goes before or after the command.  Prefect, MLflow and the library's torch code
are imported only by the commands that use them, so `check` and `--help` answer at once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import traceback
from pathlib import Path

from circuitflow.settings import load_settings
from circuitflow.stages import STAGE_NAMES, STAGES, get_stage

DEFAULT_PARAMS = "params.yaml"
LOG_FILE = Path("logs") / "circuitflow.log"  # flows/logs.py writes Prefect's records there too


def _quiet_offline_environment() -> None:
    """No network at run time: keep every library from phoning home (the README)."""
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        # one line per log record on the console, tracebacks in logs/circuitflow.log (flows/logs.py)
        "PREFECT_LOGGING_SETTINGS_PATH": str(Path(__file__).with_name("logging.yml")),
        # Prefect's temporary server gets 20 s to start by default, which a busy 2-core machine misses
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }.items():
        os.environ.setdefault(key, value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuitflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help=f"the params file (default: {DEFAULT_PARAMS})")
    # The same option after the command; SUPPRESS keeps it from overwriting one given before.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--params", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    stage = commands.add_parser("stage", parents=[after], help="run one stage (what each DVC stage runs)")
    stage.add_argument("stage", choices=STAGE_NAMES, metavar="STAGE", help=f"one of: {', '.join(STAGE_NAMES)}")
    stage.add_argument("key", nargs="?", help="the model name (models) or pair name (generate ... evaluate)")
    commands.add_parser("repro", parents=[after], help="bring the stale stages up to date in one process and record them in DVC")
    commands.add_parser("run", parents=[after], help="run the whole pipeline as one Prefect flow")
    commands.add_parser("check", parents=[after], help="validate params.yaml")
    ui = commands.add_parser("ui", parents=[after], help="open the MLflow UI on localhost")
    ui.add_argument("--port", type=int, default=5000)
    commands.add_parser("serve", parents=[after], help="serve the flows as scheduled Prefect deployments")
    return parser


def _check(params_path: str) -> int:
    settings = load_settings(params_path)
    runs = sum(len(stage.keys(settings)) for stage in STAGES)
    print(f"{params_path}: {len(settings.models)} models, {len(settings.pairs)} pairs, methods {', '.join(settings.methods)}; "
          f"{runs} stage runs.")
    return 0


def _ui(params_path: str, port: int) -> int:
    """Serve the MLflow UI on loopback and print the address of the experiment's runs page (the
    experiment params.yaml names; MLflow 3's landing page would show its GenAI overview instead)."""
    from tasks.tracking import DEFAULT_TRACKING_URI, runs_url, share_runs_view

    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    base = f"http://127.0.0.1:{port}"
    try:
        experiment = load_settings(params_path).mlflow.experiment
    except (ValueError, OSError):  # no readable params file here: the UI still serves every experiment
        experiment = None
    import mlflow  # only here: the other commands answer without it

    found = experiment and mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    if found:  # and a saved view of the same runs grouped by pair, with their pair, model and behavior
        grouped = runs_url(base, found.experiment_id, view=share_runs_view(found.experiment_id, "circuitflow-by-pair"))
        print(f"MLflow UI for {uri}: the runs of {experiment!r} at {runs_url(base, found.experiment_id)}\n"
              f"  grouped by pair: {grouped}\n  one pair's runs: type tags.pair = \"<pair>\" in the search box (Ctrl-C stops the UI)", flush=True)
    else:
        print(f"MLflow UI for {uri} at {base} (no runs of experiment {experiment!r} yet; Ctrl-C stops it)", flush=True)
    # One web worker and no job runners: the UI answers in seconds instead of about a minute.
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return subprocess.call(command, env=env)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check":
        return _check(args.params)
    if args.command == "ui":
        return _ui(args.params, args.port)
    if args.command == "repro":
        from flows.repro import repro, summary  # DVC only for this command

        repro(args.params)
        print(summary(load_settings(args.params)))
        return 0
    settings = load_settings(args.params)  # every mistake in params.yaml stops here, before any work
    if args.command == "stage":
        get_stage(args.stage).check_key(settings, args.key)
        from flows.stages import stage_flow  # Prefect only for the commands that run flows

        stage_flow(args.stage, args.key, args.params)
    elif args.command == "run":
        from flows.stages import pipeline_flow

        pipeline_flow(args.params)
    elif args.command == "serve":
        from flows.deployments import serve_deployments

        serve_deployments(args.params)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_offline_environment()
    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError) as error:
        # A known mistake (bad params, missing artefact, corrupt file): one sentence, no traceback.
        print(f"circuitflow: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitflow: interrupted; the interrupted stage's previous outputs are as they were.", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: one line here, the traceback in the log file
        _log_traceback()
        print(f"circuitflow: {type(error).__name__}: {error} (traceback in {LOG_FILE})", file=sys.stderr)
        return 1


def _log_traceback() -> None:
    LOG_FILE.parent.mkdir(exist_ok=True)
    with LOG_FILE.open("a", encoding="utf-8") as log:
        log.write(traceback.format_exc())


if __name__ == "__main__":
    sys.exit(main())
