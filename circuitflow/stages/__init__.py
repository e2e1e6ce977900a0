"""The pipeline's stages, in one registry that the CLI, the Prefect tasks and flows, the
deployments and dvc.yaml all follow.

models -> generate -> cache -> discover -> evaluate -> figures -> report.  A stage is a module of
this package with a function ``run(settings, key) -> StepResult``: it reads artefacts under
``data/``, calls the science (discovery/, evaluation/, report/) and writes only its own outputs,
atomically (``artefacts.staged``).  Nothing here knows about Prefect, DVC or MLflow.

``STAGES`` lists them in execution order.  ``Stage.key`` says what one run of the stage is for: a
model (``models``), a pair (``generate`` ... ``evaluate``) or the whole run (figures, report).
``Stage.upstream`` names the stages whose outputs it reads (for the flow's ordering); ``params``
and ``data`` are what dvc.yaml declares beside the code the stage's module imports
(``tools/dvc_yaml.py`` writes dvc.yaml from this registry; a test checks they agree).  This module
imports nothing heavy: the stage's module is imported when it runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from circuitflow.io import staged
from circuitflow.settings import Settings, SettingsError


@dataclass
class StepResult:
    """What a stage reports to the orchestration (MLflow): its metrics, the files it wrote, the
    settings it used and any curves (name -> (steps, values), e.g. training loss)."""

    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    key: Literal["model", "pair"] | None
    summary: str
    directory: str  # the folder it writes, whole and atomically; {key} is the model or pair
    upstream: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # params.yaml keys dvc.yaml declares ({key} as in outputs)
    data: tuple[str, ...] = ()  # artefacts it reads ({key}; {model}: the pair's model)
    outputs: tuple[str, ...] = ()  # what DVC caches, inside ``directory`` (default: all of it)
    metrics: tuple[str, ...] = ()  # files inside ``directory`` that are DVC metrics

    @property
    def outs(self) -> tuple[str, ...]:
        return tuple(f"{self.directory}/{name}" for name in self.outputs) or (self.directory,)

    @property
    def module(self) -> str:
        return f"circuitflow.stages.{self.name.replace('-', '_')}"

    def keys(self, settings: Settings) -> list[str | None]:
        """The runs of this stage: one per model, one per pair, or one."""
        if self.key == "model":
            return list(settings.models)
        if self.key == "pair":
            return list(settings.pairs)
        return [None]

    def check_key(self, settings: Settings, key: str | None) -> None:
        """A wrong or missing key is one sentence naming the known ones."""
        if self.key is None:
            if key is not None:
                raise SettingsError(f"The {self.name} stage takes no key; drop {key!r}.")
            return
        if key is None:
            raise SettingsError(f"The {self.name} stage needs a {self.key} name: one of {', '.join(map(str, self.keys(settings)))}.")
        settings.model(key) if self.key == "model" else settings.pair(key)

    def run(self, settings: Settings, key: str | None = None) -> StepResult:
        """Run the stage for ``key`` into a fresh folder that replaces ``directory`` only once
        every output is written; the result lists the files written."""
        self.check_key(settings, key)
        module = importlib.import_module(self.module)
        directory = Path(self.directory.format(key=key))
        with staged(directory) as out:
            result = module.run(settings, key, out) if self.key else module.run(settings, out)
        result.artifacts = sorted(path for path in directory.rglob("*") if path.is_file())
        return result

    def needs(self, settings: Settings, key: str | None, other: "Stage", other_key: str | None) -> bool:
        """Whether this stage's run for ``key`` reads the outputs of ``other``'s run for
        ``other_key``: ``other`` is upstream, and the runs are for the same pair, for the pair's
        model, or this stage runs over the whole DAG."""
        if other.name not in self.upstream:
            return False
        if self.key is None or other_key == key and other.key == self.key:
            return True
        return other.key == "model" and key in settings.pairs and settings.pairs[key].model == other_key

    def label(self, key: str | None) -> str:
        """``discover@ioi`` for a keyed run, the stage's name otherwise (DVC's and MLflow's names)."""
        return f"{self.name}@{key}" if key else self.name


_PAIR_INPUTS = ("data/models/{model}", "data/datasets/{key}", "data/cache/{key}")
_EVALUATED = ("evaluate",)

STAGES: tuple[Stage, ...] = (
    Stage("models", "model", "compile, train or load one model (weights, config, ground truth)",
          "data/models/{key}", params=("models.{key}",)),
    Stage("generate", "pair", "one behavior's dataset, deterministic from its seed",
          "data/datasets/{key}", params=("pairs.{key}.behavior", "pairs.{key}.n_examples", "pairs.{key}.seed")),
    Stage("cache", "pair", "every graph source's activations on the clean and corrupted inputs, and their means",
          "data/cache/{key}", ("models", "generate"), params=("pairs.{key}.model", "pairs.{key}.batch_size"),
          data=_PAIR_INPUTS[:2]),
    Stage("discover", "pair", "every discovery method's per-edge scores and the circuit each gives",
          "data/discover/{key}", ("cache",), params=("pairs.{key}", "discover"), data=_PAIR_INPUTS),
    Stage("evaluate", "pair", "faithfulness, ROC against the ground truth, hypothesis tests, adversarial evaluation",
          "data/evaluate/{key}", ("discover",), params=("pairs.{key}", "discover.methods", "evaluate"),
          data=(*_PAIR_INPUTS, "data/discover/{key}"),
          outputs=("faithfulness.parquet", "roc.parquet", "mib.parquet", "hypothesis_tests.parquet", "minimality_effects.parquet",
                   "minimality_references.parquet", "random_circuit_sweep.parquet", "adversarial", "evaluation.json",
                   "resamples.parquet", "resample_variance.parquet", "faithfulness_resamples.parquet"),
          metrics=("metrics.json",)),
    Stage("planner-thinking", "model", "a planner's success, steps to solve and early cycles against thinking steps, per checkpoint",
          "data/planner/thinking/{key}", ("models",), params=("models.{key}",), data=("data/models/{key}",)),
    Stage("planner-probe", "model", "a planner's cell states and linear box-push probes against thinking steps",
          "data/planner/probe/{key}", ("models",), params=("models.{key}",), data=("data/models/{key}",)),
    Stage("posterior", "model", "a posterior organism: one discovery method on each posterior sample and each SGD seed (others: skipped)",
          "data/posterior/{key}", ("models",), params=("models.{key}", "discover"), data=("data/models/{key}",)),
    Stage("figure-roc", None, "ROC curves and the AUC table (ACDC paper)", "data/figures/roc", _EVALUATED,
          params=("pairs", "discover.methods"), data=("data/evaluate", "data/discover")),
    Stage("figure-faithfulness", None, "faithfulness against circuit size", "data/figures/faithfulness", _EVALUATED,
          params=("pairs", "discover.methods"), data=("data/evaluate",)),
    Stage("figure-hypothesis", None, "Shi et al.'s Table 1, random-circuit curves, minimality effects",
          "data/figures/hypothesis", _EVALUATED, params=("pairs", "evaluate.hypothesis_tests"), data=("data/evaluate",)),
    Stage("figure-adversarial", None, "adversarial percentiles, KL distributions, worst inputs, tails",
          "data/figures/adversarial", _EVALUATED, params=("pairs",), data=("data/evaluate",)),
    Stage("figure-mib", None, "MIB's circuit-localization scores: CPR and CMD per method and pair, f_k curves",
          "data/figures/mib", _EVALUATED, params=("pairs", "discover.methods"), data=("data/evaluate",)),
    Stage("figure-siit", None, "the InterpBench benchmark: edge AUROC per method and SIIT case",
          "data/figures/siit", _EVALUATED, params=("models", "pairs", "discover.methods"), data=("data/models", "data/evaluate")),
    Stage("figure-positional", None, "positional EAP-IG: edge x position heatmap, layer importance",
          "data/figures/positional", _EVALUATED, params=("pairs",), data=("data/discover",)),
    Stage("planner-figure", None, "the learned planner: success, pacing and probe accuracy against thinking steps",
          "data/figures/planner", ("planner-thinking", "planner-probe"), params=("models",), data=("data/planner",)),
    Stage("figure-resamples", None, "faithfulness and KL against K resamples per aggregate, per-example variance (resample pairs)",
          "data/figures/resamples", _EVALUATED, params=("pairs", "evaluate.resamples"), data=("data/evaluate",)),
    Stage("figure-posterior", None, "circuit stability across posterior samples against SGD seeds (Jaccard, inclusion), accuracy against T",
          "data/figures/posterior", ("posterior",), params=("models",), data=("data/posterior", "data/models")),
)
# The report reads every figure stage's folder.
STAGES += (Stage("report", None, "one self-contained HTML page with every table, figure and circuit", "data/report",
                 tuple(stage.name for stage in STAGES if stage.directory.startswith("data/figures/")),
                 params=("pairs", "discover.methods"), data=("data/figures", "data/discover")),)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
FIGURES = tuple(name.removeprefix("figure-") for name in STAGE_NAMES if name.startswith("figure-"))


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise SettingsError(f"Unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}.")
