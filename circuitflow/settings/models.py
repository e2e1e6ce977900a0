"""Settings of each model kind (params.yaml ``models.<name>``), by ``kind``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from circuitflow.settings.options import Ablation
from circuitflow.settings.parsing import SettingsError, _closest, parse, setting


def field_defaults(cls: type) -> dict[str, Any]:
    """The settings of ``cls`` that have a default, with it (a model kind's training settings)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


@dataclass(frozen=True)
class TracrModel:
    """A compiled RASP program with its known circuit (``models/tracr.py``)."""

    kind: Literal["tracr"]
    program: Literal["reverse", "frac_prevs"]


@dataclass(frozen=True)
class OrganismModel:
    """A small transformer trained here on one behavior (``models/organisms.py``)."""

    kind: Literal["organism"]
    behavior: Literal["ioi", "greater-than", "docstring", "induction"]
    seed: int = setting(0, low=0)
    n_layers: int = setting(2, low=1)
    d_model: int = setting(64, low=1)
    n_heads: int = setting(4, low=1)
    d_mlp: int | None = setting(None, low=1)  # null: 4 d_model
    attn_only: bool = False
    steps: int = setting(1000, low=1)
    batch_size: int = setting(64, low=1)
    lr: float = setting(1e-3, low=0)
    weight_decay: float = setting(0.0, low=0)
    warmup_steps: int = setting(100, low=0)
    grad_clip: float = setting(1.0, low=0)
    n_train: int = setting(20000, low=1)
    n_eval: int = setting(500, low=1)
    eval_every: int = setting(250, low=1)
    vary_layout: bool = False

    # Per behavior (measured on one core, tests/test_organisms.py's slow tier): ioi, greater-than and
    # docstring reach 100% held-out accuracy; induction 100% with 3000 steps in varied layouts.
    BEHAVIOR_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "ioi": {"steps": 1500},
        "greater-than": {},
        "docstring": {"steps": 500},
        "induction": {"attn_only": True, "vary_layout": True, "steps": 3000},
    }
    VARIED_LAYOUTS: ClassVar[tuple[str, ...]] = ("docstring", "induction")

    @classmethod
    def prepare(cls, value: Mapping, where: str) -> dict:
        return {**cls.BEHAVIOR_DEFAULTS.get(value.get("behavior"), {}), **value}

    def check(self, where: str) -> None:
        if self.vary_layout and self.behavior not in self.VARIED_LAYOUTS:
            raise SettingsError(f"`{where}.vary_layout` applies to {' and '.join(self.VARIED_LAYOUTS)} only; drop it for {self.behavior}.")
        if self.d_model % self.n_heads:
            raise SettingsError(f"`{where}.d_model` ({self.d_model}) must be a multiple of n_heads ({self.n_heads}).")
        if self.behavior == "induction" and not self.attn_only:
            raise SettingsError(f"`{where}.attn_only`: the induction organism is attention-only; leave it at true.")

    def training(self) -> dict[str, Any]:
        """The training settings as the trainer takes them (d_mlp filled in)."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("kind", "behavior")}
        return {**values, "d_mlp": values["d_mlp"] or 4 * self.d_model}


@dataclass(frozen=True)
class PosteriorModel(OrganismModel):
    """``n_samples`` weight vectors of an organism's tempered posterior (``models/posterior.py``):
    the organism's architecture, data and Adam training for ``steps`` (a warm start), then SG-MCMC
    under ``prior`` at ``temperature`` with a cyclical step size, one sample at the end of each of
    ``n_samples`` cycles of ``cycle_steps``; beside them ``n_samples`` organisms trained by Adam
    from seeds 0 .. n_samples - 1 for ``steps + n_samples * cycle_steps`` steps (the baseline).
    The posterior stage runs ``methods`` on each of them, on ``n_examples`` of the behavior."""

    kind: Literal["posterior"]
    n_samples: int = setting(3, low=1)
    sampler: Literal["sgld", "sghmc"] = "sgld"
    prior: Literal["gaussian", "laplace", "student-t", "scale-mixture"] = "gaussian"
    prior_scale: float = setting(1.0, low=1e-12)
    temperature: float = setting(1.0, low=0)
    step_size: float = setting(1e-3, low=1e-12)  # the cycles' peak, per training example (epsilon N)
    friction: float = setting(0.1, low=1e-12, high=1)  # SGHMC only: the momentum lost per step
    cycle_steps: int = setting(50, low=1)
    methods: tuple[Literal["acdc", "eap", "eap-ig", "hisp", "sp", "edge-pruning", "ensemble"], ...] = ("eap-ig",)
    n_examples: int = setting(100, low=2)
    ablation: Ablation = Ablation.RESAMPLE

    def check(self, where: str) -> None:
        super().check(where)
        if self.sampler == "sgld" and self.friction != PosteriorModel.friction:
            raise SettingsError(f"`{where}.friction` applies to the sghmc sampler only; drop it for sgld.")
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise SettingsError(f"`{where}.methods` must list at least one discovery method, each once.")

    def organism(self) -> dict[str, Any]:
        """The organism settings of the warm start (``organisms.SETTINGS``, d_mlp filled in)."""
        names = {f.name for f in dataclasses.fields(OrganismModel)}
        return {k: v for k, v in OrganismModel.training(self).items() if k in names}


@dataclass(frozen=True)
class MambaModel:
    """A Mamba organism (mamba-lens HookedMamba) trained here on one behavior (``models/mamba.py``)."""

    kind: Literal["mamba"]
    behavior: Literal["ioi", "greater-than", "docstring"]
    seed: int = setting(0, low=0)
    n_layers: int = setting(4, low=1)
    d_model: int = setting(64, low=1)
    d_state: int = setting(16, low=1)
    expand: int = setting(2, low=1)
    d_conv: int = setting(4, low=1)
    steps: int = setting(300, low=1)
    batch_size: int = setting(64, low=1)
    lr: float = setting(5e-3, low=0)
    weight_decay: float = setting(0.0, low=0)
    warmup_steps: int = setting(50, low=0)
    grad_clip: float = setting(1.0, low=0)
    n_train: int = setting(20000, low=1)
    n_eval: int = setting(500, low=1)
    eval_every: int = setting(50, low=1)

    def training(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("kind", "behavior")}


@dataclass(frozen=True)
class SiitModel:
    """A transformer trained by strict interchange intervention training on a SIIT case
    (``models/siit.py``; InterpBench's defaults but batch 128, which reaches the same accuracy in
    the same steps here at half the time)."""

    kind: Literal["siit"]
    case: str
    seed: int = setting(0, low=0)
    n_layers: int | None = setting(None, low=1)  # null: the case's layers, at least 2
    d_model: int = setting(64, low=1)
    n_heads: int = setting(4, low=4)  # the cases place up to 4 heads per layer
    d_mlp: int | None = setting(None, low=1)  # null: 4 d_model
    lr: float = setting(1e-3, low=0)
    batch_size: int = setting(128, low=1)
    grad_clip: float = setting(0.1, low=0)
    max_steps: int = setting(4000, low=1)
    eval_every: int = setting(50, low=1)
    n_eval_pairs: int = setting(512, low=1)
    target: float = setting(0.99, low=0, high=1)
    behavior_weight: float = setting(1.0, low=0)
    iit_weight: float = setting(1.0, low=0)
    strict_weight: float = setting(0.4, low=0)  # InterpBench's public code squares it by mistake (0.16)

    def check(self, where: str) -> None:
        if self.d_model % self.n_heads:
            raise SettingsError(f"`{where}.d_model` ({self.d_model}) must be a multiple of n_heads ({self.n_heads}).")

    def training(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("kind", "case")}


@dataclass(frozen=True)
class PretrainedModel:
    """A TransformerLens model from the local Hugging Face cache (``models/pretrained.py``),
    optionally with one of the papers' canonical circuits as its ground truth."""

    kind: Literal["pretrained"]
    name: str
    circuit: str | None = None  # ioi, greater-than or docstring
    fold_ln: bool = False


@dataclass(frozen=True)
class CheckpointModel:
    """A TransformerLens config and state dict on disk (``models/checkpoint.py``)."""

    kind: Literal["checkpoint"]
    path: str

    def check(self, where: str) -> None:
        if not Path(self.path).is_dir():
            raise SettingsError(f"`{where}.path` is {self.path}, which is not a folder; give the folder holding the checkpoint's "
                                "config.json and model.safetensors.")


@dataclass(frozen=True)
class PlannerModel:
    """A DRC(depth, ticks) agent trained here with PPO on generated Sokoban levels, and the settings
    of its experiments (``planner/``; Taufeeque et al. 2024).  ``room_size`` counts the border walls
    (Boxoban: 10); training levels have ``min_boxes``..``max_boxes`` boxes; the experiments play
    ``n_eval_levels`` held-out levels with ``easy_boxes`` and with ``hard_boxes`` boxes."""

    kind: Literal["planner"]
    seed: int = setting(0, low=0)
    room_size: int = setting(6, low=5)
    min_boxes: int = setting(1, low=1)
    max_boxes: int = setting(2, low=1)
    n_train_levels: int = setting(2000, low=1)
    depth: int = setting(2, low=1)
    ticks: int = setting(2, low=1)
    channels: int = setting(8, low=1)
    hidden: int = setting(64, low=1)
    max_steps: int = setting(120, low=1)  # Boxoban's episode limit
    env_steps: int = setting(30_000, low=1)
    n_envs: int = setting(32, low=1)
    rollout: int = setting(20, low=1)
    lr: float = setting(3e-3, low=0)
    gamma: float = setting(0.97, low=0, high=1)
    gae_lambda: float = setting(0.95, low=0, high=1)
    clip: float = setting(0.2, low=0)
    epochs: int = setting(4, low=1)
    minibatches: int = setting(4, low=1)
    entropy_coef: float = setting(0.005, low=0)
    value_coef: float = setting(0.5, low=0)
    grad_clip: float = setting(10.0, low=0)
    n_checkpoints: int = setting(4, low=1)  # weight snapshots the experiments evaluate, evenly spaced
    checkpoint_every: int = setting(25, low=1)  # updates between resumable checkpoints
    thinking_steps: tuple[int, ...] = (0, 1, 2, 4, 8, 16)
    n_eval_levels: int = setting(100, low=1)
    easy_boxes: int = setting(1, low=1)
    hard_boxes: int = setting(2, low=1)
    pacing_steps: int = setting(10, low=2)  # a cycle counts when it closes within these first steps
    probe_levels: int = setting(200, low=2)  # played per thinking-step count for the probes (half train, half test)
    probe_thinking_steps: tuple[int, ...] = (0, 2, 8)

    def check(self, where: str) -> None:
        if self.min_boxes > self.max_boxes:
            raise SettingsError(f"`{where}.min_boxes` ({self.min_boxes}) exceeds max_boxes ({self.max_boxes}); swap them.")
        if max(self.max_boxes, self.hard_boxes, self.easy_boxes) + 3 > (self.room_size - 2) ** 2:
            raise SettingsError(f"`{where}.room_size` {self.room_size} leaves too little floor for the boxes; make it larger.")
        if self.n_envs % self.minibatches:
            raise SettingsError(f"`{where}.n_envs` ({self.n_envs}) must be a multiple of minibatches ({self.minibatches}).")
        if any(n < 0 for n in (*self.thinking_steps, *self.probe_thinking_steps)):
            raise SettingsError(f"`{where}.thinking_steps` and probe_thinking_steps must be non-negative integers.")


MODEL_KINDS: dict[str, type] = {
    "tracr": TracrModel, "organism": OrganismModel, "siit": SiitModel, "mamba": MambaModel,
    "pretrained": PretrainedModel, "checkpoint": CheckpointModel, "posterior": PosteriorModel,
    "planner": PlannerModel,
}
ModelSettings = TracrModel | OrganismModel | SiitModel | MambaModel | PretrainedModel | CheckpointModel | PosteriorModel | PlannerModel


def parse_model(value: Any, where: str) -> ModelSettings:
    """One ``models.<name>`` entry, by its ``kind``."""
    if not isinstance(value, Mapping) or "kind" not in value:
        raise SettingsError(f"`{where}` needs a `kind`: one of {', '.join(MODEL_KINDS)}.")
    kind = value["kind"]
    if kind not in MODEL_KINDS:
        raise SettingsError(f"`{where}.kind` is {kind!r}, not a model kind: {_closest(kind, list(MODEL_KINDS))}.".replace("known keys", "known kinds"))
    return parse(MODEL_KINDS[kind], value, where)
