"""params.yaml: reading, validation and the artefact layout under data/.

Every knob of the pipeline lives in params.yaml.  ``load_params`` checks it once, up front, and
turns every mistake into one sentence that names the problem and the fix (a ``ConfigError``), so a
typo stops ``dvc repro`` before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from circuitflow.behaviors import get_behavior
from circuitflow.discovery import METHODS, method_settings
from circuitflow.models import MODEL_KINDS
from circuitflow.patching import ABLATIONS


class ConfigError(ValueError):
    """A mistake in params.yaml; the message is one sentence naming it and the fix."""


@dataclass(frozen=True)
class Pair:
    """One (model, behavior) pair: the unit the DAG fans out over."""

    name: str
    model: str
    behavior: str
    n_examples: int | None
    seed: int
    ablation: str
    batch_size: int
    positional: bool = False  # also score every edge at every position (positional EAP-IG)


@dataclass(frozen=True)
class Params:
    raw: dict[str, Any]
    models: dict[str, dict[str, Any]]
    pairs: dict[str, Pair]
    methods: tuple[str, ...]

    def pair(self, name: str) -> Pair:
        if name not in self.pairs:
            raise ConfigError(f"Unknown pair {name!r}; params.yaml lists: {', '.join(self.pairs)}.")
        return self.pairs[name]

    def model(self, name: str) -> dict[str, Any]:
        if name not in self.models:
            raise ConfigError(f"Unknown model {name!r}; params.yaml lists: {', '.join(self.models)}.")
        return self.models[name]

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.raw.get(name) or {})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; run from the project root or pass --params.") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{path} is not valid YAML{line}; fix the syntax there.") from None
    _require(isinstance(raw, dict), f"{path} must be a mapping of sections (models, pairs, discover, ...).")
    models = raw.get("models") or {}
    pairs = raw.get("pairs") or {}
    _require(isinstance(models, dict) and models, f"{path}: `models` must map model names to their settings.")
    _require(isinstance(pairs, dict) and pairs, f"{path}: `pairs` must map pair names to a model and a behavior.")

    for name, spec in models.items():
        _require(isinstance(spec, dict) and "kind" in spec, f"Model {name!r} in {path} needs a `kind` ({', '.join(MODEL_KINDS)}).")
        _require(
            spec["kind"] in MODEL_KINDS,
            f"Model {name!r} has unknown kind {spec['kind']!r}; known kinds: {', '.join(MODEL_KINDS)}.",
        )
        MODEL_KINDS[spec["kind"]].validate(name, spec)

    parsed = {}
    for name, spec in pairs.items():
        _require(isinstance(spec, dict), f"Pair {name!r} in {path} must be a mapping with `model` and `behavior`.")
        model, behavior = spec.get("model"), spec.get("behavior")
        _require(
            model in models,
            f"Pair {name!r} names unknown model {model!r}; known models: {', '.join(models)}.",
        )
        _require(isinstance(behavior, str), f"Pair {name!r} needs a `behavior` name.")
        try:
            get_behavior(behavior)
        except ValueError as error:
            raise ConfigError(f"Pair {name!r} names {str(error)[0].lower()}{str(error)[1:]}") from None
        ablation = spec.get("ablation", "resample")
        _require(ablation in ABLATIONS, f"Pair {name!r} has unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}.")
        n_examples = spec.get("n_examples")
        _require(
            n_examples is None or (isinstance(n_examples, int) and n_examples > 1),
            f"Pair {name!r}: n_examples must be an integer above 1, or null for the behavior's default.",
        )
        seed = spec.get("seed", 0)
        _require(isinstance(seed, int), f"Pair {name!r}: seed must be an integer.")
        batch_size = spec.get("batch_size", 64)
        _require(isinstance(batch_size, int) and batch_size > 0, f"Pair {name!r}: batch_size must be a positive integer.")
        positional = spec.get("positional", False)
        _require(isinstance(positional, bool), f"Pair {name!r}: positional must be true or false, got {positional!r}.")
        parsed[name] = Pair(name, model, behavior, n_examples, seed, ablation, batch_size, positional)

    methods = _check_discover(raw.get("discover") or {}, path)
    return Params(raw=raw, models=models, pairs=parsed, methods=methods)


def _check_discover(discover: dict, path: Path) -> tuple[str, ...]:
    """The ``discover`` section: the methods, each method's settings, and the circuit rule."""
    _require(isinstance(discover, dict), f"{path}: `discover` must be a mapping with `methods`.")
    methods = tuple(discover.get("methods") or ())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"Unknown discovery method {unknown[0]!r} in discover.methods; known methods: {', '.join(METHODS)}.")
    _require(bool(methods), f"{path}: discover.methods must list at least one method ({', '.join(METHODS)}).")
    extra = sorted(set(discover) - {"methods", "circuit", *METHODS})
    if extra:
        raise ConfigError(f"discover has unknown key {extra[0]!r}; allowed: methods, circuit, {', '.join(METHODS)}.")
    for method in METHODS:
        try:
            method_settings(method, discover.get(method))
        except ValueError as error:
            raise ConfigError(str(error)) from None
    circuit = discover.get("circuit") or {}
    _require(isinstance(circuit, dict) and set(circuit) <= {"size", "recovered"},
             "discover.circuit takes `size` (an integer or ground_truth) and `recovered` (a fraction).")
    size = circuit.get("size", "ground_truth")
    _require(size == "ground_truth" or (isinstance(size, int) and not isinstance(size, bool) and size >= 0),
             f"discover.circuit.size must be a non-negative integer or ground_truth, got {size!r}.")
    recovered = circuit.get("recovered", 0.8)
    _require(isinstance(recovered, (int, float)) and not isinstance(recovered, bool) and 0 < recovered <= 1,
             f"discover.circuit.recovered must be a fraction in (0, 1], got {recovered!r}.")
    return methods


# ---- where artefacts live (every path is a DVC out; see dvc.yaml) ------------------------------
DATA = Path("data")


def model_dir(model: str) -> Path:
    return DATA / "models" / model


def dataset_dir(pair: str) -> Path:
    return DATA / "datasets" / pair


def cache_dir(pair: str) -> Path:
    return DATA / "cache" / pair


def discover_dir(pair: str) -> Path:
    return DATA / "discover" / pair


def evaluate_dir(pair: str) -> Path:
    return DATA / "evaluate" / pair


def figure_dir(figure: str) -> Path:
    return DATA / "figures" / figure


def report_dir() -> Path:
    return DATA / "report"
