"""The ``planner`` model kind: a DRC agent trained on Sokoban (``circuitflow/planner``).

It has no (model, behavior) pairs: the planner stages (``planner-*``) run its experiments.  ``load``
gives the DRC as ``LoadedModel.model`` with no graph (the patching engine does not apply).
"""

from __future__ import annotations

from pathlib import Path

from circuitflow.models.kind import LoadedModel, ModelKind
from circuitflow.planner import artefacts
from circuitflow.settings.models import PlannerModel
from circuitflow.settings.parsing import parse


def validate(name: str, spec: dict) -> None:
    parse(PlannerModel, spec, f"models.{name}")


def build(name: str, spec: dict, directory: Path) -> dict[str, float]:
    return artefacts.build(name, parse(PlannerModel, spec, f"models.{name}"), Path(directory))


def load(directory: Path) -> LoadedModel:
    model, settings = artefacts.load_agent(Path(directory))
    return LoadedModel(model=model, graph=None, info={"settings": settings})


KIND = ModelKind(validate=validate, build=build, load=load)
