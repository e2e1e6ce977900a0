"""Tracr-compiled models with known circuits (tracr, Lindner et al. 2023): convert, verify, save.

The two RASP programs and their compiling are ``behaviors/tracr_programs.py``'s (the behaviors'
datasets need tracr's encoding).  Compiled, they give:

``reverse``     4 layers, 1 head each, d_model 41, d_head 12, d_mlp 30, categorical output.
``frac_prevs``  2 layers, d_model 14, d_head 7, d_mlp 1, one numerical output.

Each is converted to a float64 TransformerLens ``HookedTransformer`` (no LayerNorm, ReLU, standard
positional embeddings, separate ``W_E`` and ``W_pos``, bidirectional attention) whose unembedding is
built from the residual-space labels and tracr's output encoder, and checked against tracr itself on
every input of length 1..5 (363 and 1,364 inputs; the largest difference is about 2e-16).  Their
ground-truth circuits: ``tracr_ground_truth.py``.

Token ids and residual labels are tracr's, as ``TracrInfo`` records them (``tracr_programs``).

Files written by ``save_tracr_model``: ``model.safetensors`` (the state dict), ``config.json`` (the
``HookedTransformerConfig`` fields, the tracr encoding in ``TracrInfo``, library versions) and
``ground_truth.json``; all atomic and byte-identical across runs.
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.behaviors.tracr_programs import (
    TRACR_NAMES,  # noqa: F401 - the program names, read from here by this module's users
    CompiledProgram,
    TracrInfo,
    TracrName,
    check_program,
    compile_program,
    compiled_info,
    enumerate_inputs,
)
from circuitflow.io import write_atomic, write_json_atomic
from circuitflow.models.tracr_ground_truth import (  # noqa: F401 - the last three: this module's users read them here
    ground_truth_circuits,
    structural_edges,
    tracr_graph,
    zero_ablation_effects,
)

CONFIG_FORMAT = "circuitflow.tracr/1"

# ---- conversion to TransformerLens -------------------------------------------------------------


def _hooked_config(fields: dict, device: str | torch.device = "cpu") -> HookedTransformerConfig:
    fields = dict(fields)
    fields["dtype"] = getattr(torch, fields["dtype"])
    return HookedTransformerConfig(**fields, device=str(device), init_weights=False)


def _build_hooked(fields: dict, device: str | torch.device = "cpu") -> HookedTransformer:
    with warnings.catch_warnings():  # 3.9 announces its 4.0 removal; this project pins 3.9 (the README)
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(_hooked_config(fields, device))
    return model.eval()


def _unembedding(compiled: CompiledProgram) -> np.ndarray:
    """(d_model, d_vocab_out): output id j reads the residual direction ``<output label>:<token j>``
    (or the single direction ``<output label>`` of a numerical output)."""
    assembled = compiled.assembled
    labels = list(assembled.residual_labels)
    output_label = compiled.program.label
    output_map = getattr(assembled.output_encoder, "encoding_map", None)
    if output_map is None:
        wanted = {output_label: 0}
    else:
        wanted = {f"{output_label}:{token}": j for token, j in output_map.items()}
    missing = sorted(set(wanted) - set(labels))
    if missing:
        raise ValueError(f"The residual stream of {compiled.name} lacks the output directions {missing}.")
    w_u = np.zeros((len(labels), len(wanted)))
    for label, j in wanted.items():
        w_u[labels.index(label), j] = 1.0
    return w_u


def to_hooked_transformer(compiled: CompiledProgram) -> tuple[HookedTransformer, TracrInfo]:
    """Convert a compiled program to a float64 ``HookedTransformer`` (CPU, eval mode) and its info."""
    assembled = compiled.assembled
    params = {module: {k: np.asarray(v, dtype=np.float64) for k, v in p.items()} for module, p in assembled.params.items()}
    config = assembled.model_config
    if config.layer_norm or config.causal:
        raise ValueError(f"{compiled.name} was compiled with LayerNorm or causal attention, which this converter does not handle.")
    w_e = params["token_embed"]["embeddings"]
    w_pos = params["pos_embed"]["embeddings"]
    w_u = _unembedding(compiled)
    d_model, n_heads, d_head = w_e.shape[1], config.num_heads, config.key_size
    fields = {
        "n_layers": config.num_layers,
        "d_model": d_model,
        "n_heads": n_heads,
        "d_head": d_head,
        "d_mlp": config.mlp_hidden_size,
        "d_vocab": w_e.shape[0],
        "d_vocab_out": w_u.shape[1],
        "n_ctx": w_pos.shape[0],
        "act_fn": "relu",
        "normalization_type": None,
        "attention_dir": "bidirectional",
        "positional_embedding_type": "standard",
        "default_prepend_bos": False,
        "dtype": "float64",
        "model_name": f"tracr-{compiled.name}",
    }
    model = _build_hooked(fields)

    def heads_in(w: np.ndarray) -> np.ndarray:  # (d_model, head * d_head) -> (head, d_model, d_head)
        return w.reshape(d_model, n_heads, d_head).transpose(1, 0, 2)

    weights = {"embed.W_E": w_e, "pos_embed.W_pos": w_pos, "unembed.W_U": w_u, "unembed.b_U": np.zeros(w_u.shape[1])}
    for layer in range(config.num_layers):
        attn, mlp = f"transformer/layer_{layer}/attn", f"transformer/layer_{layer}/mlp"
        for tl_name, tracr_name in (("Q", "query"), ("K", "key"), ("V", "value")):
            weights[f"blocks.{layer}.attn.W_{tl_name}"] = heads_in(params[f"{attn}/{tracr_name}"]["w"])
            weights[f"blocks.{layer}.attn.b_{tl_name}"] = params[f"{attn}/{tracr_name}"]["b"].reshape(n_heads, d_head)
        weights[f"blocks.{layer}.attn.W_O"] = params[f"{attn}/linear"]["w"].reshape(n_heads, d_head, d_model)
        weights[f"blocks.{layer}.attn.b_O"] = params[f"{attn}/linear"]["b"]
        weights[f"blocks.{layer}.mlp.W_in"] = params[f"{mlp}/linear_1"]["w"]
        weights[f"blocks.{layer}.mlp.b_in"] = params[f"{mlp}/linear_1"]["b"]
        weights[f"blocks.{layer}.mlp.W_out"] = params[f"{mlp}/linear_2"]["w"]
        weights[f"blocks.{layer}.mlp.b_out"] = params[f"{mlp}/linear_2"]["b"]
    state = model.state_dict()
    unknown = sorted(set(weights) - set(state))
    if unknown:  # pragma: no cover - guards against a TransformerLens renaming
        raise ValueError(f"TransformerLens has no parameters {unknown}; the converter needs updating.")
    for key, value in weights.items():
        state[key] = torch.tensor(np.ascontiguousarray(value), dtype=torch.float64)
    model.load_state_dict(state, strict=True)
    return model, compiled_info(compiled)


# ---- verification against tracr ----------------------------------------------------------------


def tracr_outputs(compiled: CompiledProgram) -> list[tuple[Tensor, np.ndarray]]:
    """Tracr's own outputs before any argmax on every input of length 1..max_seq_len.

    One (tokens (n, L + 1), outputs (n, L + 1, d_vocab_out)) pair per length L; the haiku forward
    runs jitted on the whole batch of each length (about 0.5 s per length, mostly XLA compiling).
    """
    import haiku as hk
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    assembled = compiled.assembled

    @hk.without_apply_rng
    @hk.transform
    def forward(tokens):
        model = assembled.get_compiled_model()
        residual = model.transformer(model.embed(tokens), jnp.ones_like(tokens), use_dropout=False).output
        return model.unembed(residual, use_unembed_argmax=False)

    apply = jax.jit(forward.apply)
    info = compiled_info(compiled)
    results = []
    for length in range(1, info.max_seq_len + 1):
        tokens = enumerate_inputs(info, length)
        outputs = np.asarray(apply(assembled.params, jnp.asarray(tokens.numpy())), dtype=np.float64)
        if outputs.ndim == 2:  # tracr squeezes a numerical output
            outputs = outputs[..., None]
        results.append((tokens, outputs))
    return results


def verify_conversion(
    compiled: CompiledProgram,
    model: HookedTransformer,
    *,
    tol: float = 1e-9,
    reference: list[tuple[Tensor, np.ndarray]] | None = None,
) -> float:
    """Largest absolute difference between ``model``'s and tracr's outputs over every input of length
    1..5 (all positions, before argmax); raises ``ValueError`` when it exceeds ``tol`` or, for a
    categorical output, when an argmax at positions 1.. differs.  ``reference``: ``tracr_outputs``
    computed before (it takes most of the time); the model is not changed.
    """
    reference = tracr_outputs(compiled) if reference is None else reference
    worst, worst_tokens = 0.0, None
    categorical = compiled_info(compiled).categorical_output
    for tokens, expected in reference:
        with torch.no_grad():
            got = model(tokens.to(model.cfg.device)).double().cpu().numpy()
        if got.shape != expected.shape:
            raise ValueError(f"The converted {compiled.name} model outputs shape {got.shape}, tracr {expected.shape}.")
        diff = np.abs(got - expected).max(axis=(1, 2))
        if categorical:  # an argmax flip is a failure whatever its size
            flipped = (got[:, 1:].argmax(-1) != expected[:, 1:].argmax(-1)).any(-1)
            diff = np.where(flipped, np.inf, diff)
        i = int(diff.argmax())
        if diff[i] > worst or worst_tokens is None:
            worst, worst_tokens = float(diff[i]), tokens[i].tolist()
    if not worst <= tol:
        raise ValueError(
            f"The converted {compiled.name} model differs from tracr by {worst:.3g} (tolerance {tol:g}) "
            f"on input ids {worst_tokens}, so the conversion is wrong."
        )
    return worst


def build_tracr_model(name: TracrName, *, tol: float = 1e-9) -> tuple[HookedTransformer, TracrInfo]:
    """Compile, convert and verify ``name``: the model every later stage uses."""
    compiled = compile_program(name)
    model, info = to_hooked_transformer(compiled)
    verify_conversion(compiled, model, tol=tol)
    return model, info


# ---- saving and loading ------------------------------------------------------------------------

_CONFIG_FIELDS = (
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx", "act_fn",
    "normalization_type", "attention_dir", "positional_embedding_type", "default_prepend_bos", "model_name",
)


def _config_fields(model: HookedTransformer) -> dict:
    fields = {key: getattr(model.cfg, key) for key in _CONFIG_FIELDS}
    fields["dtype"] = str(model.cfg.dtype).removeprefix("torch.")
    return fields


def save_tracr_model(directory: str | Path, name: TracrName) -> Path:
    """Compile, convert and verify ``name``, derive its ground truth, and write ``model.safetensors``,
    ``config.json`` and ``ground_truth.json`` into ``directory`` (see ``write_tracr_model``).
    The same program always gives the same bytes.  Returns ``directory``.
    """
    check_program(name)
    compiled = compile_program(name)
    model, info = to_hooked_transformer(compiled)
    verify_conversion(compiled, model)
    return write_tracr_model(directory, model, info, ground_truth_circuits(name, model, info))


def write_tracr_model(
    directory: str | Path, model: HookedTransformer, info: TracrInfo, ground_truth: dict[str, list[str]]
) -> Path:
    """Write a converted model, its info and ground truth into ``directory`` (created if needed), each
    file atomically; JSON keys sorted, so equal inputs give equal bytes.  Returns ``directory``."""
    directory = Path(directory)
    if set(ground_truth) != {"zero", "resample"}:
        raise ValueError(f"The ground truth needs the keys 'zero' and 'resample', got {sorted(ground_truth)}.")
    config = {
        "format": CONFIG_FORMAT,
        "hooked_transformer_config": _config_fields(model),
        "tracr": info.to_json(),
        "versions": {pkg: importlib.metadata.version(pkg) for pkg in ("tracr-pypi", "transformer-lens")},
    }
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    blob = save(state)
    write_atomic(directory / "model.safetensors", lambda tmp: tmp.write_bytes(blob))
    write_json_atomic(directory / "config.json", config)
    write_json_atomic(directory / "ground_truth.json", {k: sorted(v) for k, v in ground_truth.items()})
    return directory


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ValueError(f"{path} is missing; write {what} with save_tracr_model first.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rewrite it with save_tracr_model.") from None


def load_tracr_info(directory: str | Path) -> TracrInfo:
    """The ``TracrInfo`` saved in ``directory/config.json``."""
    config = _read_json(Path(directory) / "config.json", "the tracr model")
    if config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"{Path(directory) / 'config.json'} is not a {CONFIG_FORMAT} file; rewrite it with save_tracr_model.")
    return TracrInfo.from_json(config["tracr"])


def load_tracr_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[HookedTransformer, TracrInfo]:
    """The model and info written by ``save_tracr_model`` (eval mode, float64, on ``device``)."""
    directory = Path(directory)
    info = load_tracr_info(directory)
    config = _read_json(directory / "config.json", "the tracr model")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{weights} is missing; write the tracr model with save_tracr_model first.")
    model = _build_hooked(config["hooked_transformer_config"], device)
    model.load_state_dict(load_file(weights, device=str(device)), strict=True)
    return model, info


def load_ground_truth(directory: str | Path) -> dict[str, list[str]]:
    """The ground-truth circuits saved in ``directory/ground_truth.json``: {"zero": [...], "resample": [...]}."""
    truth = _read_json(Path(directory) / "ground_truth.json", "the tracr model")
    if set(truth) != {"zero", "resample"}:
        raise ValueError(f"{Path(directory) / 'ground_truth.json'} needs the keys 'zero' and 'resample'; rewrite it with save_tracr_model.")
    return truth
