"""Mamba organisms: small Mamba models (mamba-lens ``HookedMamba``) trained here on one behavior
each, the ``mamba`` model kind (Ensign & Garriga-Alonso 2024; Ensign & Garriga-Alonso 2024).

``train_mamba("ioi", {"n_layers": 2, "steps": 200, "lr": 0.01, "seed": 0}, directory)`` trains like a
transformer organism (the same word-level tokenizer and training data as ``organisms.py``, the
same loop, masked loss, held-out evaluation, learning-rate schedule and ``deterministic_torch``
from ``training.py``; only the network differs) and writes into ``directory``:
    model.safetensors      the state dict
    config.json            {"kind": "mamba", "format", "behavior", "settings" (all of them, defaults
                           filled), "mamba_config" (the MambaCfg fields), "metrics", "versions"}
    training_curves.json   per-step training loss and the held-out evaluations, as lists
    tokenizer/             the word-level tokenizer
The same settings give byte-identical files.  Its graph is the layer-level Mamba graph
(``Graph.mamba``); the patching engine and every discovery method run on it.

params.yaml: ``models: {ioi-mamba: {kind: mamba, behavior: ioi}}`` (4 layers, 300 steps: ~3 minutes
on one core), or ``{kind: mamba, behavior: ioi, n_layers: 2, lr: 0.01, warmup_steps: 20, steps: 200}``
(~1 minute); both reach 100% held-out accuracy.

Speed: the scan is a Python loop over positions, and its many mid-sized buffers make glibc's
allocator map and unmap memory every step past ~32 tokens; the Makefile sets
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` (read at process start) for that.
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from circuitflow.behaviors import tokenizer as word_tokenizer
from circuitflow.graph import Graph
from circuitflow.io import write_atomic, write_json_atomic
from circuitflow.models import organisms, training
from circuitflow.models.kind import LoadedModel, ModelKind
from circuitflow.numerics import flush_denormal
from circuitflow.settings import MAMBA_BEHAVIORS, MambaModel, field_defaults

with warnings.catch_warnings():  # mamba-lens decorates CUDA kernels with a deprecated torch.cuda.amp API
    warnings.simplefilter("ignore", FutureWarning)
    from mamba_lens import HookedMamba, MambaCfg, MambaInitCfg

BEHAVIORS = MAMBA_BEHAVIORS
CONFIG_FORMAT = "circuitflow-mamba-1"
# Measured on IOI (one thread, MALLOC_* set as in the Makefile, 500 held-out prompts): 4 layers with
# lr 5e-3 and 50 warm-up steps reach 97% by step 225 and 100% by 250 (300 steps: ~170 s CPU); at lr
# 1e-2 4 layers do not learn in 200 steps, at 2e-3 they reach 35% in 300.  2 layers with lr 1e-2 and
# 20 warm-up steps reach 99% by step 125 and 100% by 150 (200 steps: ~60 s CPU).
DEFAULTS: dict[str, Any] = field_defaults(MambaModel)  # the defaults live in circuitflow.settings
SETTINGS = tuple(DEFAULTS)
_POSITIVE = ("n_layers", "d_model", "d_state", "expand", "d_conv", "steps", "batch_size", "n_train", "n_eval", "eval_every")


def resolve_settings(behavior: str, settings: dict) -> dict[str, Any]:
    """``DEFAULTS`` overridden by ``settings``; an unknown key or a bad value is one ValueError sentence."""
    if behavior not in BEHAVIORS:
        raise ValueError(f"Mamba organisms are trained on {', '.join(BEHAVIORS)}, not {behavior!r}; pick one of those.")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"Unknown mamba settings {unknown}; allowed: {', '.join(SETTINGS)}.")
    resolved = {**DEFAULTS, **settings}
    for key in (*_POSITIVE, "seed", "warmup_steps"):
        value = resolved[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key in _POSITIVE else 0):
            kind = "positive" if key in _POSITIVE else "non-negative"
            raise ValueError(f"Mamba setting {key} must be a {kind} integer, got {value!r}.")
    for key in ("lr", "weight_decay", "grad_clip"):
        value = resolved[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"Mamba setting {key} must be a non-negative number, got {value!r}.")
    return resolved


def mamba_config(settings: dict, d_vocab: int, n_ctx: int) -> MambaCfg:
    """The MambaCfg of ``settings`` on the CPU (its default device is 'cuda'); the vocabulary is
    padded to a multiple of 8 by mamba-lens."""
    return MambaCfg(
        d_model=settings["d_model"], n_layers=settings["n_layers"], vocab_size=d_vocab, d_state=settings["d_state"],
        expand=settings["expand"], d_conv=settings["d_conv"], n_ctx=n_ctx, device="cpu",
    )


def hooked_mamba(cfg: MambaCfg, *, initialize: bool = True) -> HookedMamba:
    """A HookedMamba of ``cfg`` (float32, CPU), initialised as Mamba's authors do when ``initialize``
    (the caller seeds torch).  Sets ``cfg.dtype``, which MambaCfg lacks and the patching engine and
    discovery methods read, as they do on a HookedTransformerConfig."""
    cfg.dtype = torch.float32
    if initialize:
        # mamba-lens 0.0.4's MambaInitCfg defaults are one-element tuples (trailing commas) and its
        # initialiser reads cfg.n_layer: both are given explicitly (its intended values).
        cfg.initializer_cfg = MambaInitCfg(
            initializer_range=0.02, rescale_prenorm_residual=True, n_residuals_per_layer=1, dt_init="random",
            dt_scale=1.0, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4,
        )
        cfg.n_layer = cfg.n_layers
    return HookedMamba(cfg=cfg, tokenizer=None, initialize_params=initialize).eval()


def train_mamba(behavior_name: str, settings: dict, directory: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train a Mamba organism on ``behavior_name`` and write it into ``directory`` (module docstring).

    Returns {"metrics", "curves", "train_seconds", "train_cpu_seconds"} as ``organisms.train_organism``.
    """
    settings = resolve_settings(behavior_name, settings)
    # the behaviors' own prompt layout (the organisms' vary_layout is for docstring and induction)
    tokenizer, heldout, data = organisms.prepare_training(behavior_name, {**settings, "vary_layout": False}, directory)
    n_ctx = max(data["tokens"].shape[1], heldout["clean"].shape[1])
    cfg = mamba_config(settings, d_vocab=len(tokenizer), n_ctx=n_ctx)
    with flush_denormal():  # the scan's state decays into subnormal floats: flushed, 10x faster (numerics.py)
        result = training.fit(lambda: hooked_mamba(cfg), behavior_name, settings, data, heldout, f"train {behavior_name} mamba", progress)
    _write(Path(directory), result.pop("model"), behavior_name, settings, result["metrics"], result["curves"])
    return result


def _config_fields(cfg: MambaCfg) -> dict[str, Any]:
    """The MambaCfg fields that rebuild the model (the initialiser's settings and device left out)."""
    fields = asdict(cfg)
    for key in ("initializer_cfg", "device"):
        fields.pop(key)
    return fields


def _write(directory: Path, model: HookedMamba, behavior: str, settings: dict, metrics: dict, curves: dict) -> None:
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    blob = save(state)
    write_atomic(directory / "model.safetensors", lambda tmp: tmp.write_bytes(blob))
    write_json_atomic(directory / "training_curves.json", curves)
    write_json_atomic(directory / "config.json", {
        "kind": "mamba",
        "format": CONFIG_FORMAT,
        "behavior": behavior,
        "settings": settings,
        "mamba_config": _config_fields(model.cfg),
        "metrics": metrics,
        "versions": {pkg: importlib.metadata.version(pkg) for pkg in ("torch", "transformer-lens", "mamba-lens")},
    })


def load_mamba(directory: str | Path) -> tuple[HookedMamba, Any, dict]:
    """The model (eval mode), the tokenizer and the config.json written by ``train_mamba``; a
    missing or foreign file is one sentence naming it."""
    directory = Path(directory)
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{path} is missing or not JSON; train the Mamba model again (the models stage).") from None
    if config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"{path} is not a Mamba model config ({CONFIG_FORMAT}); train the Mamba model again.")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{weights} is missing; train the Mamba model again (the models stage).")
    model = hooked_mamba(MambaCfg(**config["mamba_config"], device="cpu"), initialize=False)
    model.load_state_dict(load_file(weights), strict=True)
    return model.eval(), word_tokenizer.load_tokenizer(directory / "tokenizer"), config


# ---- the `mamba` model kind ------------------------------------------------------------------------
def validate(name: str, spec: dict) -> None:
    """params.yaml spec: ``{kind: mamba, behavior: ioi, <any of SETTINGS>}``."""
    settings = {key: value for key, value in spec.items() if key not in ("kind", "behavior")}
    try:
        resolve_settings(spec.get("behavior"), settings)
    except ValueError as error:
        raise ValueError(f"Mamba model {name!r}: {error}") from None


def build(name: str, spec: dict, directory: Path) -> dict[str, float]:
    """Train the Mamba organism into ``directory``; returns its final held-out figures and the training time."""
    validate(name, spec)
    settings = {key: value for key, value in spec.items() if key not in ("kind", "behavior")}
    result = train_mamba(spec["behavior"], settings, directory)
    return {**result["metrics"], "train_seconds": result["train_seconds"], "train_cpu_seconds": result["train_cpu_seconds"]}


def load(directory: Path) -> LoadedModel:
    model, tokenizer, config = load_mamba(directory)
    info = {"tokenizer": tokenizer, "behavior": config["behavior"], "metrics": config["metrics"]}
    return LoadedModel(model=model, graph=Graph.from_config(model.cfg), ground_truth=None, tokenizer=tokenizer, info=info)


KIND = ModelKind(validate=validate, build=build, load=load)
