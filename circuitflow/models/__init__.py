"""Models: every kind of model the pipeline builds or loads, behind one interface.

A model kind knows how to check its params, build its artefacts into a directory (weights as
safetensors, config, ground-truth circuits where known) and load them back as a
``LoadedModel``.  This package and ``patching.py`` are the only places that touch TransformerLens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transformer_lens import HookedTransformer

from circuitflow.graph import Graph


@dataclass(frozen=True)
class LoadedModel:
    model: HookedTransformer
    graph: Graph
    ground_truth: dict[str, list[str]] | None = None  # ablation -> edge names, where known
    tokenizer: Any = None  # what the behaviors' ``encode`` takes (None for tracr: datasets are ids)
    info: Any = None


@dataclass(frozen=True)
class ModelKind:
    validate: Callable[[str, dict], None]  # (name, spec) -> None or ConfigError-like ValueError
    build: Callable[[str, dict, Path], dict[str, float]]  # writes the directory, returns metrics
    load: Callable[[Path], LoadedModel]


MODEL_KINDS: dict[str, ModelKind] = {}


def _register() -> None:
    from circuitflow.models.mamba import KIND as MAMBA
    from circuitflow.models.organisms import KIND as ORGANISM
    from circuitflow.models.pretrained import KIND as PRETRAINED
    from circuitflow.models.siit import KIND as SIIT
    from circuitflow.models.tracr_kind import KIND as TRACR

    MODEL_KINDS.update(tracr=TRACR, organism=ORGANISM, pretrained=PRETRAINED, siit=SIIT, mamba=MAMBA)


_register()


def load_model(directory: str | Path) -> LoadedModel:
    """Load a model the models stage wrote; the kind is read from its config.json."""
    import json

    directory = Path(directory)
    config = directory / "config.json"
    if not config.exists():
        raise FileNotFoundError(f"{directory} holds no built model (config.json missing); run `dvc repro` for the models stage first.")
    kind = json.loads(config.read_text()).get("kind", "tracr")
    if kind not in MODEL_KINDS:
        raise ValueError(f"{config} names unknown model kind {kind!r}; known kinds: {', '.join(MODEL_KINDS)}.")
    return MODEL_KINDS[kind].load(directory)
