"""Prefect deployments of the pipeline and of every stage, on cron schedules from params.yaml,
served by one long-running process:

    PREFECT_API_URL=http://127.0.0.1:4200/api circuitflow serve      (after `prefect server start`)

params.yaml (every entry optional; without a ``deployments:`` section every deployment is served
unscheduled, to be run on demand):

    deployments:
      timezone: UTC                  # the time zone of every cron below (default UTC)
      pipeline:
        cron: "0 3 * * *"            # the whole DAG (pipeline_flow) every night at 03:00
      stages:                        # a stage left out is served unscheduled
        discover:
          cron: "0 4 * * 0"          # Sundays at 04:00 ...
          keys: [tracr-reverse]      # ... for these models / pairs / figures (default: all of them)

The deployments, as Prefect names them:
    circuitflow-pipeline/pipeline    parameters: params_path
    circuitflow-stage/<stage>        parameters: stage (fixed), key, params_path; one per stage
A stage's cron becomes one schedule per key, each passing its ``key``; the report stage has none.
Run one on demand:

    prefect deployment run circuitflow-stage/discover --param key=tracr-reverse

Runs execute in subprocesses of the serving process, in its working directory (the project root,
where params.yaml's relative paths and data/ are).  Stopping the process pauses the schedules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from circuitflow.config import ConfigError, Params, load_params

PIPELINE_FLOW = "circuitflow-pipeline"
STAGE_FLOW = "circuitflow-stage"
_SECTION_FIELDS = ("timezone", "pipeline", "stages")


@dataclass(frozen=True)
class Schedule:
    """One cron schedule; ``key`` is the model, pair or figure a stage's scheduled runs take."""

    cron: str
    key: str | None = None


@dataclass(frozen=True)
class DeploymentSpec:
    """What to serve: the pipeline flow (``stage`` None) or one stage's flow, and its schedules."""

    name: str
    stage: str | None
    schedules: tuple[Schedule, ...]
    timezone: str

    @property
    def full_name(self) -> str:
        return f"{PIPELINE_FLOW if self.stage is None else STAGE_FLOW}/{self.name}"


def stage_keys(params: Params, stage: str) -> list[str | None]:
    """The keys one stage runs for: model names (models), figure names (figure), none (report),
    pair names (every other stage), in params.yaml's order."""
    if stage == "models":
        return list(params.models)
    if stage == "figure":
        from circuitflow.pipeline import FIGURES

        return list(FIGURES)
    if stage == "report":
        return [None]
    return list(params.pairs)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} in params.yaml must be a mapping, not {type(value).__name__}.")
    return value


def _check_cron(cron: Any, timezone: str, where: str) -> str:
    """Validate with Prefect's own schedule model, so what passes here is what the server accepts."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    if not isinstance(cron, str):
        raise ConfigError(f'{where}.cron must be a cron string such as "0 3 * * *", or null.')
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError:
        raise ConfigError(f'{where}.cron {cron!r} is not a valid cron string; write five fields such as "0 3 * * *".') from None
    return cron


def _schedules(entry: dict[str, Any], keys: list[str | None], timezone: str, where: str) -> tuple[Schedule, ...]:
    unknown = sorted(set(entry) - {"cron", "keys"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not a deployment setting; use cron and keys.")
    if entry.get("cron") is None:
        if entry.get("keys") is not None:
            raise ConfigError(f"{where}.keys has no effect without {where}.cron; add a cron or remove keys.")
        return ()
    cron = _check_cron(entry["cron"], timezone, where)
    chosen = entry.get("keys")
    if chosen is None:
        return tuple(Schedule(cron, key) for key in keys)
    if keys == [None]:
        raise ConfigError(f"{where}.keys does not apply: that stage takes no key; remove it.")
    if not (isinstance(chosen, list) and chosen and all(isinstance(k, str) for k in chosen)):
        raise ConfigError(f"{where}.keys must be a non-empty list of names, or absent for all of them.")
    missing = [k for k in chosen if k not in keys]
    if missing:
        raise ConfigError(f"{where}.keys names unknown {missing[0]!r}; known: {', '.join(keys)}.")
    return tuple(Schedule(cron, key) for key in dict.fromkeys(chosen))


def deployment_specs(params: Params) -> list[DeploymentSpec]:
    """The pipeline deployment, then one deployment per stage (in the order of tasks.steps), with the
    schedules of params.yaml's ``deployments:`` section.  A mistake is a ConfigError naming the fix."""
    from tasks.steps import STEP_TASKS

    section = _mapping(params.raw.get("deployments"), "deployments")
    unknown = sorted(set(section) - set(_SECTION_FIELDS))
    if unknown:
        raise ConfigError(f"deployments.{unknown[0]} is not a deployments setting; use {', '.join(_SECTION_FIELDS)}.")
    timezone = section.get("timezone") or "UTC"
    try:
        ZoneInfo(str(timezone))
    except (ValueError, KeyError, OSError):
        raise ConfigError(f"deployments.timezone {timezone!r} is not a known time zone; use an IANA name such as UTC or Europe/London.") from None
    stages = _mapping(section.get("stages"), "deployments.stages")
    unknown = [s for s in stages if s not in STEP_TASKS]
    if unknown:
        raise ConfigError(f"deployments.stages.{unknown[0]} is not a stage; stages: {', '.join(STEP_TASKS)}.")
    specs = [DeploymentSpec("pipeline", None, _schedules(_mapping(section.get("pipeline"), "deployments.pipeline"), [None], timezone, "deployments.pipeline"), timezone)]
    for stage in STEP_TASKS:
        where = f"deployments.stages.{stage}"
        entry = _mapping(stages.get(stage), where)
        specs.append(DeploymentSpec(stage, stage, _schedules(entry, stage_keys(params, stage), timezone, where), timezone))
    return specs


def to_deployments(specs: list[DeploymentSpec], params_path: str = "params.yaml") -> list[Any]:
    """Prefect RunnerDeployments for ``specs`` (nothing is sent to the server until they are served)."""
    from prefect.schedules import Cron

    from flows.stages import pipeline_flow, stage_flow

    deployments = []
    for spec in specs:
        schedules = [
            Cron(s.cron, timezone=spec.timezone, parameters={} if s.key is None else {"key": s.key})
            for s in spec.schedules
        ]
        if spec.stage is None:
            deployment = pipeline_flow.to_deployment(
                spec.name, schedules=schedules, parameters={"params_path": params_path},
                description="The whole DAG as one flow (circuitflow run).", tags=["circuitflow"],
            )
        else:
            deployment = stage_flow.to_deployment(
                spec.name, schedules=schedules, parameters={"stage": spec.stage, "params_path": params_path},
                description=f"The {spec.stage} stage for one key (circuitflow stage {spec.stage} KEY).", tags=["circuitflow"],
            )
        deployments.append(deployment)
    return deployments


def describe(specs: list[DeploymentSpec]) -> str:
    """One line per deployment: its name and schedules."""
    lines = []
    for spec in specs:
        crons = sorted({s.cron for s in spec.schedules})
        keys = [s.key for s in spec.schedules if s.key is not None]
        when = f"cron {', '.join(crons)} ({spec.timezone})" if crons else "on demand"
        lines.append(f"{spec.full_name}: {when}" + (f" for {', '.join(keys)}" if keys else ""))
    return "\n".join(lines)


def serve_deployments(params_path: str = "params.yaml") -> None:
    """Register every deployment with the Prefect server at PREFECT_API_URL and run their flow runs
    until interrupted (Ctrl-C or SIGTERM), which pauses their schedules."""
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    if not (os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()):
        raise ConfigError(
            "circuitflow serve needs a Prefect server that outlives it: start one with "
            "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api."
        )
    specs = deployment_specs(load_params(params_path))
    print(describe(specs), flush=True)
    serve(*to_deployments(specs, params_path), print_starting_message=False)
