"""Settings: one frozen, typed object per params.yaml section, parsed once, defaults in one place.

``load_settings(path)`` reads params.yaml and returns a ``Settings``; every stage, ``circuitflow
check`` and the orchestration parse through it.  A mistake anywhere is a ``SettingsError``: one
sentence naming the setting (``evaluate.adversarial.n_clen``), what is wrong and the fix, with the
closest known key for a misspelt one.  Nothing here imports torch or TransformerLens, so
``circuitflow check`` answers at once.

Each dataclass field is a setting; its default is THE default (library functions refer to these
classes instead of repeating numbers).  Types are enforced as written: ``int`` refuses ``true`` and
``"ten"``, ``float`` accepts integers, ``tuple[float, ...]`` wants a list, ``X | None`` accepts
``null``; ``setting(..., low=, high=)`` bounds a number.  A section that may be switched off
(``hypothesis_tests: null``) is typed ``X | None``: absent means the defaults, ``null`` means off.

The closed option sets the rest of the library registers implementations for live here too
(``Ablation``, ``METHODS``, ``MODEL_KINDS``, the built-in behaviors): the registries in
``ablation.py``, ``discovery/``, ``models/`` and ``behaviors/`` are keyed by them, and the tests
check that the two agree.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from circuitflow.settings.models import (  # noqa: F401  (re-exported: import settings from circuitflow.settings)
    MODEL_KINDS,
    CheckpointModel,
    MambaModel,
    ModelSettings,
    OrganismModel,
    PretrainedModel,
    SiitModel,
    TracrModel,
    field_defaults,
    parse_model,
)
from circuitflow.settings.options import (  # noqa: F401  (re-exported: import settings from circuitflow.settings)
    BEHAVIOR_PREFIXES,
    BEHAVIORS,
    MAMBA_BEHAVIORS,
    METHODS,
    ORGANISM_BEHAVIORS,
    TRACR_PROGRAMS,
    Ablation,
)
from circuitflow.settings.parsing import (  # noqa: F401  (re-exported: import settings from circuitflow.settings)
    SettingsError,
    _closest,
    parse,
    setting,
)
from circuitflow.settings.sections import (  # noqa: F401  (re-exported: import settings from circuitflow.settings)
    AcdcSettings,
    AdversarialSettings,
    CircuitRule,
    ComputeSettings,
    DeploymentSettings,
    DiscoverSettings,
    EapIgSettings,
    EapSettings,
    EdgePruningSettings,
    EnsembleSettings,
    EvaluateSettings,
    HispSettings,
    HypothesisTestSettings,
    MlflowSettings,
    PairSettings,
    PrefectSettings,
    ScheduleSettings,
    SearchSettings,
    SpSettings,
)


@dataclass(frozen=True)
class Settings:
    """params.yaml, parsed.  ``raw`` keeps the file's mapping (for provenance and MLflow)."""

    models: Mapping[str, ModelSettings]
    pairs: Mapping[str, PairSettings]
    discover: DiscoverSettings
    evaluate: EvaluateSettings
    prefect: PrefectSettings
    deployments: DeploymentSettings
    mlflow: MlflowSettings
    raw: Mapping[str, Any]
    compute: ComputeSettings = ComputeSettings()
    path: str = "params.yaml"

    SECTIONS: ClassVar[tuple[str, ...]] = ("models", "pairs", "discover", "evaluate", "compute", "prefect", "deployments", "mlflow")

    def model(self, name: str) -> ModelSettings:
        if name not in self.models:
            raise SettingsError(f"Unknown model {name!r}: {self.path} lists {', '.join(self.models)}.")
        return self.models[name]

    def pair(self, name: str) -> PairSettings:
        if name not in self.pairs:
            raise SettingsError(f"Unknown pair {name!r}: {self.path} lists {', '.join(self.pairs)}.")
        return self.pairs[name]

    @property
    def methods(self) -> tuple[str, ...]:
        return self.discover.methods


def as_data(settings_object: Any) -> dict[str, Any]:
    """A settings object as JSON-able data (enums as their value, tuples as lists), for provenance
    and MLflow."""
    return json.loads(json.dumps(dataclasses.asdict(settings_object), default=str))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """params.yaml as a mapping; a missing file or a YAML error is one sentence."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"{path} does not exist; run from the project root or pass --params.") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path} is not UTF-8 text; save it as UTF-8.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise SettingsError(f"{path} is not valid YAML{line}; fix the syntax there.") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path} must be a mapping of sections ({', '.join(Settings.SECTIONS)}).")
    return raw


def parse_settings(raw: Mapping[str, Any], path: str = "params.yaml") -> Settings:
    """Every section of a params mapping, checked; see the module docstring."""
    for key in raw:
        if key not in Settings.SECTIONS:
            raise SettingsError(f"`{key}` in {path} is not a section: {_closest(key, list(Settings.SECTIONS))}.")
    models, pairs = raw.get("models"), raw.get("pairs")
    if not isinstance(models, Mapping) or not models:
        raise SettingsError(f"`models` in {path} must map model names to their settings.")
    if not isinstance(pairs, Mapping) or not pairs:
        raise SettingsError(f"`pairs` in {path} must map pair names to a model and a behavior.")
    parsed_models = {str(name): parse_model(spec, f"models.{name}") for name, spec in models.items()}
    parsed_pairs = {}
    for name, spec in pairs.items():
        if not isinstance(spec, Mapping):
            raise SettingsError(f"`pairs.{name}` must be a mapping with `model` and `behavior`.")
        pair = dataclasses.replace(parse(PairSettings, spec, f"pairs.{name}"), name=str(name))
        if pair.model not in parsed_models:
            raise SettingsError(f"`pairs.{name}.model` is {pair.model!r}, not a model in {path}: {_closest(pair.model, list(parsed_models))}."
                                .replace("known keys", "known models"))
        parsed_pairs[str(name)] = pair
    settings = Settings(
        models=types.MappingProxyType(parsed_models), pairs=types.MappingProxyType(parsed_pairs),
        discover=parse(DiscoverSettings, raw.get("discover"), "discover"),
        evaluate=_optional_section(EvaluateSettings, raw, "evaluate"),
        prefect=parse(PrefectSettings, raw.get("prefect"), "prefect"),
        deployments=parse(DeploymentSettings, raw.get("deployments"), "deployments"),
        mlflow=parse(MlflowSettings, raw.get("mlflow"), "mlflow"),
        compute=parse(ComputeSettings, raw.get("compute"), "compute"),
        raw=types.MappingProxyType(dict(raw)), path=str(path),
    )
    _check_references(settings)
    return settings


def _optional_section(cls: type, raw: Mapping, key: str) -> Any:
    return parse(cls, raw.get(key), key)


def _check_references(settings: Settings) -> None:
    """Names that point at other sections: the circuit under test must be a discovered method."""
    circuit = settings.evaluate.circuit
    if circuit is not None and circuit not in settings.methods:
        raise SettingsError(f"`evaluate.circuit` is {circuit!r}, which is not in discover.methods ({', '.join(settings.methods)}); pick one of those.")


def load_settings(path: str | Path = "params.yaml") -> Settings:
    """Read and check a params file (see the module docstring)."""
    return parse_settings(read_yaml(path), str(path))
