"""The ``checkpoint`` model kind: a researcher's own TransformerLens model, saved as files.

params.yaml: ``{kind: checkpoint, path: <dir>}``, where ``<dir>`` holds
    config.json         HookedTransformerConfig fields (``{"n_layers": 2, "d_model": 64, ...}``);
                        ``dtype`` as a string ("float32"); ``device`` is dropped (the model loads on
                        the CPU and the pipeline's ``device`` setting moves it)
    model.safetensors   the state dict (``safetensors.torch.save_file(model.state_dict(), ...)``)
    tokenizer/          optional: a Hugging Face tokenizer saved with ``save_pretrained``
``build`` checks them (every config key a HookedTransformerConfig field, every tensor of the state
dict present with its shape, nothing extra, a tokenizer that loads offline and fits ``d_vocab``) and
copies them into the model directory with a ``config.json`` of kind ``checkpoint`` (the config,
the source path and the weights' SHA-256), so ``load_model`` loads it.  ``save_checkpoint`` writes
a live model in this layout.  Bad input is one sentence naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer

from circuitflow.graph import Graph
from circuitflow.io import write_atomic, write_json_atomic
from circuitflow.models.kind import LoadedModel, ModelKind

FORMAT = "circuitflow-checkpoint-1"
FIELDS = frozenset(field.name for field in dataclasses.fields(HookedTransformerConfig) if field.init)
_DROPPED = ("device",)


# ---- reading and checking -----------------------------------------------------------------------
def read_config(path: Path) -> dict[str, Any]:
    """The HookedTransformerConfig fields of a checkpoint's ``config.json`` (JSON values: ``dtype``
    stays a string), checked; ``device`` is dropped."""
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"Checkpoint config {path} does not exist; write the model's HookedTransformerConfig fields there as JSON.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"Checkpoint config {path} is not JSON ({error}); write the HookedTransformerConfig fields as a JSON object.") from None
    if not isinstance(config, dict):
        raise ValueError(f"Checkpoint config {path} is not a JSON object; write the HookedTransformerConfig fields as one.")  # noqa: TRY004 (bad input is a ValueError here)
    unknown = sorted(set(config) - FIELDS)
    if unknown:
        raise ValueError(f"Checkpoint config {path} has unknown key {unknown[0]!r}; keep only HookedTransformerConfig fields (n_layers, d_model, ...).")
    return {key: value for key, value in config.items() if key not in _DROPPED}


def hooked_config(fields: dict[str, Any], path: Path) -> HookedTransformerConfig:
    """A CPU HookedTransformerConfig from checked fields; a rejected value is one sentence naming ``path``."""
    fields = dict(fields)
    if isinstance(fields.get("dtype"), str):
        dtype = getattr(torch, fields["dtype"].removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"Checkpoint config {path} has dtype {fields['dtype']!r}, not a torch dtype; write e.g. \"float32\".")  # noqa: TRY004
        fields["dtype"] = dtype
    try:
        return HookedTransformerConfig(**fields, device="cpu")
    except (TypeError, ValueError, AssertionError) as error:
        raise ValueError(f"Checkpoint config {path} is not a valid HookedTransformerConfig ({error or type(error).__name__}); fix that field.") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a safetensors file; a missing or unreadable file is one sentence."""
    try:
        return load_safetensors(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"Checkpoint weights {path} do not exist; save the state dict there with safetensors.torch.save_file.") from None
    except (SafetensorError, OSError) as error:
        raise ValueError(f"Checkpoint weights {path} are not a safetensors file ({error}); save the state dict with safetensors.torch.save_file.") from None


def _check_state(model: HookedTransformer, state: dict[str, torch.Tensor], path: Path) -> None:
    """Every tensor the model has, with its shape, and nothing else; else one sentence naming ``path``."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ValueError(f"Checkpoint weights {path} lack {key!r} {tuple(tensor.shape)}; save the full state dict of a model with this config.")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ValueError(f"Checkpoint weights {path} give {key!r} shape {tuple(state[key].shape)}, but the config needs {tuple(tensor.shape)}; save weights that match config.json.")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ValueError(f"Checkpoint weights {path} hold {extra[0]!r}, which a model with this config lacks; save weights that match config.json.")


def read_tokenizer(directory: Path, d_vocab: int) -> Any:
    """The saved tokenizer in ``directory`` (offline), or None when there is none."""
    if not directory.exists():
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"Checkpoint tokenizer {directory} does not load ({str(error).splitlines()[0]}); save it with tokenizer.save_pretrained.") from None
    if len(tokenizer) > d_vocab:
        raise ValueError(f"Checkpoint tokenizer {directory} has {len(tokenizer)} tokens but the model's d_vocab is {d_vocab}; save the model's own tokenizer.")
    return tokenizer


def _for_loading(cfg: HookedTransformerConfig) -> HookedTransformerConfig:
    """The config to build the model with before its weights are loaded: no random initialisation
    (every tensor is overwritten) and no seed (TransformerLens would reseed the global RNGs)."""
    return dataclasses.replace(cfg, init_weights=False, seed=None)


def load_checkpoint(directory: str | Path) -> tuple[HookedTransformer, Any, dict[str, Any]]:
    """The model (eval mode, on the CPU, its tokenizer set when there is one), the tokenizer (or
    None) and the checked config fields of a checkpoint directory (module docstring)."""
    directory = Path(directory)
    fields = read_config(directory / "config.json")
    cfg = hooked_config(fields, directory / "config.json")
    state = read_weights(directory / "model.safetensors")
    tokenizer = read_tokenizer(directory / "tokenizer", cfg.d_vocab)
    if tokenizer is None and cfg.tokenizer_name is not None:
        raise ValueError(f"Checkpoint config {directory / 'config.json'} names tokenizer {cfg.tokenizer_name!r}, which is never downloaded; save it into {directory / 'tokenizer'} instead.")
    model = HookedTransformer(_for_loading(cfg), tokenizer=tokenizer)
    _check_state(model, state, directory / "model.safetensors")
    model.load_state_dict(state, strict=True)
    return model.eval(), tokenizer, fields


def save_checkpoint(model: HookedTransformer, directory: str | Path, tokenizer: Any = None) -> None:
    """Write ``model`` (and ``tokenizer``, default the model's own) as a checkpoint directory: the
    config fields that differ from TransformerLens's defaults, the state dict, ``tokenizer/``."""
    directory = Path(directory)
    defaults = HookedTransformerConfig(d_model=model.cfg.d_model, d_head=model.cfg.d_head, n_layers=model.cfg.n_layers, n_ctx=model.cfg.n_ctx)
    fields = {}
    for name in sorted(FIELDS - set(_DROPPED)):
        value = getattr(model.cfg, name)
        if value != getattr(defaults, name) or name in ("d_model", "d_head", "n_layers", "n_ctx"):
            fields[name] = str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value
    write_json_atomic(directory / "config.json", fields)
    blob = save({key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()})
    write_atomic(directory / "model.safetensors", lambda tmp: tmp.write_bytes(blob))
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory / "tokenizer"))


# ---- the `checkpoint` model kind ----------------------------------------------------------------
def validate(name: str, spec: dict) -> None:
    """params.yaml spec: ``{kind: checkpoint, path: <dir>}`` and nothing else (the files are checked by ``build``)."""
    unknown = sorted(set(spec) - {"kind", "path"})
    if unknown:
        raise ValueError(f"Checkpoint model {name!r} has unknown setting {unknown[0]!r}; a checkpoint takes only `path`.")
    if not isinstance(spec.get("path"), str) or not spec["path"].strip():
        raise ValueError(f"Checkpoint model {name!r} needs `path`, the directory holding config.json and model.safetensors.")


def build(name: str, spec: dict, directory: Path) -> dict[str, float]:
    """Check the checkpoint at ``spec["path"]`` and copy it into ``directory``; returns its size."""
    validate(name, spec)
    source = Path(spec["path"]).expanduser()
    model, _, fields = load_checkpoint(source)
    directory = Path(directory)
    blob = (source / "model.safetensors").read_bytes()
    write_atomic(directory / "model.safetensors", lambda tmp: tmp.write_bytes(blob))
    tokenizer_files = sorted(path for path in (source / "tokenizer").glob("*") if path.is_file())
    for path in tokenizer_files:
        data = path.read_bytes()
        write_atomic(directory / "tokenizer" / path.name, lambda tmp, data=data: tmp.write_bytes(data))
    write_json_atomic(directory / "config.json", {
        "kind": "checkpoint", "format": FORMAT, "source": str(source), "hooked_transformer_config": fields,
        "sha256": hashlib.sha256(blob).hexdigest(), "tokenizer": bool(tokenizer_files),
    })
    return {"n_parameters": float(sum(p.numel() for p in model.parameters()))}


def load(directory: Path) -> LoadedModel:
    """The model ``build`` wrote into ``directory``, with its graph and tokenizer."""
    directory = Path(directory)
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{path} is missing or not JSON; build the checkpoint model again (the models stage).") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint model config ({FORMAT}); build the checkpoint model again.")
    cfg = hooked_config(config["hooked_transformer_config"], path)
    tokenizer = read_tokenizer(directory / "tokenizer", cfg.d_vocab)
    model = HookedTransformer(_for_loading(cfg), tokenizer=tokenizer)
    state = read_weights(directory / "model.safetensors")
    _check_state(model, state, directory / "model.safetensors")
    model.load_state_dict(state, strict=True)
    info = {"source": config["source"], "sha256": config["sha256"]}
    return LoadedModel(model=model.eval(), graph=Graph.from_config(model.cfg), tokenizer=tokenizer, info=info)


KIND = ModelKind(validate=validate, build=build, load=load)
