"""Models: every kind of model the pipeline builds or loads, behind one interface.

A model kind knows how to check its params, build its artefacts into a directory (weights as
safetensors, config, ground-truth circuits where known) and load them back as a
``LoadedModel`` (``kind.py``).  This package and ``patching.py`` are the only places that touch
TransformerLens.
"""

from __future__ import annotations

import json
from pathlib import Path

from circuitflow.models import checkpoint, mamba, organisms, planner, posterior, pretrained, siit, tracr_kind
from circuitflow.models.kind import LoadedModel, ModelKind

__all__ = ["MODEL_KINDS", "LoadedModel", "ModelKind", "load_model"]

MODEL_KINDS: dict[str, ModelKind] = {
    "tracr": tracr_kind.KIND,
    "organism": organisms.KIND,
    "pretrained": pretrained.KIND,
    "siit": siit.KIND,
    "mamba": mamba.KIND,
    "checkpoint": checkpoint.KIND,
    "posterior": posterior.KIND,
    "planner": planner.KIND,
}


def load_model(directory: str | Path) -> LoadedModel:
    """Load a model the models stage wrote; the kind is read from its config.json."""
    directory = Path(directory)
    config = directory / "config.json"
    if not config.exists():
        raise FileNotFoundError(f"{directory} holds no built model (config.json missing); run `dvc repro` for the models stage first.")
    kind = json.loads(config.read_text()).get("kind", "tracr")
    if kind not in MODEL_KINDS:
        raise ValueError(f"{config} names unknown model kind {kind!r}; known kinds: {', '.join(MODEL_KINDS)}.")
    return MODEL_KINDS[kind].load(directory)
