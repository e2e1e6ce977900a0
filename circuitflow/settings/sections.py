"""Settings of the pairs, discovery, evaluation and orchestration sections."""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Literal

from circuitflow.settings.options import BEHAVIOR_PREFIXES, BEHAVIORS, METHODS, Ablation
from circuitflow.settings.parsing import SettingsError, _closest, setting


# ---- pairs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CircuitRule:
    """Each method's saved circuit: ``size`` edges (top-n), or where the model has a known circuit
    and size is ``ground_truth`` its size; otherwise the smallest top-n circuit recovering
    ``recovered`` of the model's score, or, with ``accuracy`` set, the smallest top-n circuit whose
    accuracy (the fraction of examples on which the answer beats the counterfactual answer, the
    behavior's score below zero) reaches it (Ensign & Garriga-Alonso's 85% for Mamba)."""

    size: int | Literal["ground_truth"] = setting("ground_truth", low=0)
    recovered: float = setting(0.8, low=1e-9, high=1.0)
    accuracy: float | None = setting(None, low=1e-9, high=1.0)


@dataclass(frozen=True)
class PairSettings:
    """One (model, behavior) pair: the unit the DAG fans out over."""

    model: str
    behavior: str
    n_examples: int | None = setting(None, low=2)  # null: the behavior's default
    seed: int = setting(0, low=0)
    ablation: Ablation = Ablation.RESAMPLE
    batch_size: int = setting(64, low=1)
    positional: bool = False  # also score every edge at every position (positional EAP-IG)
    circuit: CircuitRule | None = None  # this pair's circuit rule, instead of discover.circuit
    name: str = field(default="", metadata={"key": "__name__"})  # set from the pairs mapping's key

    def check(self, where: str) -> None:
        if self.behavior not in BEHAVIORS and not self.behavior.startswith(BEHAVIOR_PREFIXES):
            raise SettingsError(
                f"`{where}.behavior` is {self.behavior!r}, not a behavior: "
                f"{_closest(self.behavior, list(BEHAVIORS))}, or bigbench:<task.json>, siit-<case>, pairs:<file>."
                .replace("known keys", "known behaviors"))
        for prefix in BEHAVIOR_PREFIXES:
            if self.behavior == prefix:
                raise SettingsError(f"`{where}.behavior` {self.behavior!r} names nothing after the prefix; write e.g. {prefix}<name>.")
        for prefix in ("bigbench:", "pairs:"):  # files: checked here, before any stage runs
            path = Path(self.behavior.removeprefix(prefix))
            if self.behavior.startswith(prefix) and not path.is_file():
                what = "is a folder, not a file" if path.is_dir() else "does not exist"
                raise SettingsError(f"`{where}.behavior` names {path}, which {what}; give the path of the {prefix[:-1]} file from the project root.")


# ---- discovery ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AcdcSettings:
    """ACDC (Conmy et al.): the tau sweep; each tau gives one circuit (one ROC point)."""

    thresholds: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)

    def check(self, where: str) -> None:
        if not self.thresholds or min(self.thresholds) < 0:
            raise SettingsError(f"`{where}.thresholds` must be a non-empty list of non-negative numbers.")


@dataclass(frozen=True)
class EapSettings:
    """Edge attribution patching (Syed et al.) has no settings."""


@dataclass(frozen=True)
class EapIgSettings:
    """EAP with integrated gradients (Hanna et al.): 5 to 10 steps suffice."""

    steps: int = setting(5, low=1)
    over: Literal["inputs", "activations"] = "inputs"  # inputs: the paper's; activations: edge-mask IG


@dataclass(frozen=True)
class HispSettings:
    """Head importance scores for pruning (Michel et al.)."""

    normalize: bool = True  # per-layer L2 normalisation


@dataclass(frozen=True)
class SpSettings:
    """Subnetwork probing: a hard-concrete mask per edge or node, swept over the L0 weight lambda
    (the penalty is the expected fraction of gates open)."""

    lambdas: tuple[float, ...] = (0.01, 0.1, 1.0)
    level: Literal["edge", "node"] = "edge"
    steps: int = setting(150, low=1)
    lr: float = setting(0.1, low=0)
    seed: int = setting(0, low=0)


@dataclass(frozen=True)
class EdgePruningSettings:
    """Edge pruning (Bhaskar et al. 2024): hard-concrete edge masks trained on the task loss with a
    Lagrangian driving the expected sparsity (fraction of edges removed) to ``target_sparsity``."""

    # Measured on tracr-reverse (zero ablation; tests/test_edge_pruning.py): edge AUROC 0.998-1.0 over
    # seeds; with lr 0.1 or init 3 the masks overshoot the target and lose true edges for good.
    target_sparsity: float = setting(0.85, low=0, high=0.999999)
    steps: int = setting(300, low=1)
    lr: float = setting(0.02, low=1e-12)
    lambda_lr: float = setting(0.01, low=1e-12)  # the Lagrange multipliers' gradient ascent
    warmup: float = setting(0.5, low=0, high=1)  # fraction of the steps over which the target rises from 0
    init: float = 1.0  # every gate's starting log_alpha (1: open, P(gate != 0) = 0.93, still trainable)
    seed: int = setting(0, low=0)


@dataclass(frozen=True)
class EnsembleSettings:
    """Rank-averaged ensemble of other methods' scores, each run with its default settings."""

    methods: tuple[Literal["acdc", "eap", "eap-ig", "hisp", "sp", "edge-pruning"], ...] = ("eap-ig", "edge-pruning")

    def check(self, where: str) -> None:
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise SettingsError(f"`{where}.methods` must list at least one method, each once.")


@dataclass(frozen=True)
class DiscoverSettings:
    methods: tuple[Literal["acdc", "eap", "eap-ig", "hisp", "sp", "edge-pruning", "ensemble"], ...] = METHODS
    acdc: AcdcSettings = setting(factory=AcdcSettings)
    eap: EapSettings = setting(factory=EapSettings)
    eap_ig: EapIgSettings = setting(factory=EapIgSettings, key="eap-ig")
    hisp: HispSettings = setting(factory=HispSettings)
    sp: SpSettings = setting(factory=SpSettings)
    edge_pruning: EdgePruningSettings = setting(factory=EdgePruningSettings, key="edge-pruning")
    ensemble: EnsembleSettings = setting(factory=EnsembleSettings)
    circuit: CircuitRule = setting(factory=CircuitRule)

    def check(self, where: str) -> None:
        if not self.methods:
            raise SettingsError(f"`{where}.methods` must list at least one method ({', '.join(METHODS)}).")

    def method(self, name: str) -> Any:
        """The settings object of method ``name`` (``eap-ig`` -> ``eap_ig``)."""
        return getattr(self, name.replace("-", "_"))


# ---- evaluation ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HypothesisTestSettings:
    """Shi et al.'s five tests (the paper's defaults; 10,000 references for IOI and greater-than)."""

    eps: float = setting(0.1, low=1e-9, high=0.499999)
    q_star: float = setting(0.9, low=1e-9, high=0.999999)
    alpha: float = setting(0.05, low=1e-9, high=0.999999)
    n_random: int = setting(100, low=1)
    n_permutations: int = setting(1000, low=1)
    n_references: int = setting(1000, low=1)
    seed: int = setting(1, low=0)
    atol: float = setting(1e-9, low=0)  # score differences this small are ties
    # minimality's knock-out effect: the public code's mean of squared per-example changes, or the
    # change of the mean score (opposite per-example changes cancel)
    effect: Literal["squared", "mean_difference"] = "squared"
    # paper: Shi et al.'s ablation per behavior (zero for induction and tracr, resample for IOI,
    # greater-than and docstring, the pair's for any other); pair: the pair's own ablation
    ablation: Literal["paper", "pair"] = "paper"
    sweep: tuple[float, ...] | None = None  # random-circuit sizes (fractions); null: 5%, 10%, ..., 100%
    circuits: tuple[str, ...] | None = None  # which circuits to test; null: the ground truth and every method's


@dataclass(frozen=True)
class SearchSettings:
    """The gradient search for inputs on which the circuit is worst."""

    restarts: int = setting(8, low=1)
    steps: int = setting(100, low=1)


@dataclass(frozen=True)
class AdversarialSettings:
    """uit de Bos & Garriga-Alonso: KL(model || circuit) over every (clean, corrupted) pair (the
    paper: 1,000 x 1,000)."""

    n_clean: int = setting(100, low=1)
    n_corrupted: int = setting(100, low=1)
    k_worst: int = setting(10, low=1)  # worst pairs decoded to text
    confidence: float = setting(0.95, low=1e-9, high=0.999999)  # of the order-statistic bound on the 99th percentile
    seed: int = setting(0, low=0)  # the random comparison circuits
    batch_size: int = setting(256, low=1)
    search: SearchSettings | None = setting(factory=SearchSettings)  # null skips it


@dataclass(frozen=True)
class ResampleSettings:
    """Resample ablation over K corrupted inputs per clean input (``evaluation/resamples.py``): copy
    j = 0 is the pair's own pairing, copy j >= 1 a permutation of the corrupted inputs seeded by
    (seed, j); the circuit's outputs are aggregated as the mean of the K logits or the log of the
    mean of the K probabilities.  K = 1 is the pair's own resample ablation, unchanged."""

    k: int = setting(1, low=1)
    aggregate: Literal["logits", "probabilities"] = "logits"
    seed: int = setting(0, low=0)


@dataclass(frozen=True)
class EvaluateSettings:
    faithfulness_points: int = setting(20, low=2)  # circuit sizes on the faithfulness curve (log-spaced)
    resamples: ResampleSettings = setting(factory=ResampleSettings)  # resample pairs only
    circuit: str | None = None  # the circuit under test where the model has no ground truth; null: the first method
    hypothesis_tests: HypothesisTestSettings | None = setting(factory=HypothesisTestSettings)
    adversarial: AdversarialSettings | None = setting(factory=AdversarialSettings)


# ---- orchestration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefectSettings:
    """How ``circuitflow run`` fans out: a thread pool, or Dask (prefect-dask)."""

    task_runner: Literal["threads", "dask"] = "threads"
    max_workers: int | None = setting(None, low=1)  # threads only
    address: str | None = None  # dask: a running cluster; null: a local one
    n_workers: int | None = setting(None, low=1)  # dask local cluster only

    def check(self, where: str) -> None:
        misplaced = {"threads": ("address", "n_workers"), "dask": ("max_workers",)}[self.task_runner]
        for name in misplaced:
            if getattr(self, name) is not None:
                raise SettingsError(f"`{where}.{name}` does not apply to the {self.task_runner} task runner; remove it.")
        if self.address is not None and "://" not in self.address:
            raise SettingsError(f"`{where}.address` must be a Dask scheduler address such as tcp://host:8786, not {self.address!r}.")
        if self.address is not None and self.n_workers is not None:
            raise SettingsError(f"`{where}.n_workers` sizes a local Dask cluster; remove it when address names a running one.")


@dataclass(frozen=True)
class ScheduleSettings:
    cron: str | None = None  # five cron fields; null: on demand only
    keys: tuple[str, ...] | None = None  # the models / pairs a stage's schedule runs for; null: all

    def check(self, where: str) -> None:
        if self.cron is None and self.keys is not None:
            raise SettingsError(f"`{where}.keys` has no effect without a cron; add `{where}.cron` or remove keys.")


@dataclass(frozen=True)
class DeploymentSettings:
    """``circuitflow serve``: the pipeline and each stage as Prefect deployments on cron schedules."""

    timezone: str = "UTC"
    pipeline: ScheduleSettings = setting(factory=ScheduleSettings)
    stages: Mapping[str, ScheduleSettings] = setting(factory=lambda: types.MappingProxyType({}))


@dataclass(frozen=True)
class ComputeSettings:
    """Where the stages compute: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu`` or
    ``cuda``.  Discovery and evaluation follow it (the model, the examples and the ablation values
    move there); training stays on the CPU, where its bytes are pinned."""

    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class MlflowSettings:
    experiment: str = "circuitflow"
