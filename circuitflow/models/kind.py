"""What every model kind provides: ``ModelKind`` (check params, build, load) and ``LoadedModel``.

Each kind module (``tracr_kind``, ``organisms``, ``pretrained``, ``siit``, ``mamba``) imports this
module and defines ``KIND``; ``circuitflow.models`` collects them into ``MODEL_KINDS``.
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
