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
          keys: [tracr-reverse]      # ... for these models / pairs (default: all of them)

The deployments, as Prefect names them:
    circuitflow-pipeline/pipeline    parameters: params_path
    circuitflow-stage/<stage>        parameters: stage (fixed), key, params_path; one per stage
A stage's cron becomes one schedule per key, each passing its ``key``; the figure and report stages take none.
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

from circuitflow.settings import ScheduleSettings, Settings, SettingsError, load_settings
from circuitflow.stages import STAGE_NAMES, get_stage

PIPELINE_FLOW = "circuitflow-pipeline"
STAGE_FLOW = "circuitflow-stage"


@dataclass(frozen=True)
class Schedule:
    """One cron schedule; ``key`` is the model or pair a stage's scheduled runs take."""

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


def _check_cron(cron: str, timezone: str, where: str) -> str:
    """Validate with Prefect's own schedule model, so what passes here is what the server accepts."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError:
        raise SettingsError(f'`{where}.cron` {cron!r} is not a valid cron string; write five fields such as "0 3 * * *".') from None
    return cron


def _schedules(entry: ScheduleSettings, keys: list[str | None], timezone: str, where: str) -> tuple[Schedule, ...]:
    if entry.cron is None:
        return ()
    cron = _check_cron(entry.cron, timezone, where)
    if entry.keys is None:
        return tuple(Schedule(cron, key) for key in keys)
    if keys == [None]:
        raise SettingsError(f"`{where}.keys` does not apply: that stage takes no key; remove it.")
    missing = [k for k in entry.keys if k not in keys]
    if missing:
        raise SettingsError(f"`{where}.keys` names unknown {missing[0]!r}; known: {', '.join(map(str, keys))}.")
    return tuple(Schedule(cron, key) for key in dict.fromkeys(entry.keys))


def deployment_specs(settings: Settings) -> list[DeploymentSpec]:
    """The pipeline deployment, then one deployment per stage of the registry, with the schedules of
    params.yaml's ``deployments:`` section.  A mistake is a SettingsError naming the fix."""
    section = settings.deployments
    try:
        ZoneInfo(section.timezone)
    except (ValueError, KeyError, OSError):
        raise SettingsError(f"`deployments.timezone` {section.timezone!r} is not a known time zone; use an IANA name such as UTC or Europe/London.") from None
    unknown = [s for s in section.stages if s not in STAGE_NAMES]
    if unknown:
        raise SettingsError(f"`deployments.stages.{unknown[0]}` is not a stage; stages: {', '.join(STAGE_NAMES)}.")
    specs = [DeploymentSpec("pipeline", None, _schedules(section.pipeline, [None], section.timezone, "deployments.pipeline"), section.timezone)]
    for name in STAGE_NAMES:
        entry = section.stages.get(name, ScheduleSettings())
        keys = get_stage(name).keys(settings)
        specs.append(DeploymentSpec(name, name, _schedules(entry, keys, section.timezone, f"deployments.stages.{name}"), section.timezone))
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
        raise SettingsError(
            "circuitflow serve needs a Prefect server that outlives it: start one with "
            "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api."
        )
    specs = deployment_specs(load_settings(params_path))
    print(describe(specs), flush=True)
    serve(*to_deployments(specs, params_path), print_starting_message=False)
