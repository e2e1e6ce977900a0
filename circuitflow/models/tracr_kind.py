"""The ``tracr`` model kind: compiled RASP programs with known circuits (see ``tracr.py``)."""

from __future__ import annotations

from pathlib import Path

from circuitflow.graph import Graph
from circuitflow.models.kind import LoadedModel, ModelKind
from circuitflow.models import tracr

PROGRAMS = ("reverse", "frac_prevs")


def validate(name: str, spec: dict) -> None:
    program = spec.get("program")
    if program not in PROGRAMS:
        raise ValueError(f"Tracr model {name!r} has unknown program {program!r}; known programs: {', '.join(PROGRAMS)}.")


def build(name: str, spec: dict, directory: Path) -> dict[str, float]:
    """Compile, convert, verify against tracr on every input, and save; returns the verification figures."""
    program = spec["program"]
    compiled = tracr.compile_program(program)
    model, info = tracr.to_hooked_transformer(compiled)
    max_error = tracr.verify_conversion(compiled, model)
    truth = tracr.ground_truth_circuits(program, model, info)
    tracr.write_tracr_model(directory, model, info, truth)
    return {
        "max_abs_error_vs_tracr": max_error,
        "ground_truth_edges_zero": len(truth["zero"]),
        "ground_truth_edges_resample": len(truth["resample"]),
    }


def load(directory: Path) -> LoadedModel:
    model, info = tracr.load_tracr_model(directory)
    graph = Graph.from_config(model.cfg, split_input=True)
    ground_truth = tracr.load_ground_truth(directory)
    return LoadedModel(model=model, graph=graph, ground_truth=ground_truth, info=info)


KIND = ModelKind(validate=validate, build=build, load=load)
