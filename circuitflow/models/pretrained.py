"""Pretrained models (GPT-2 small, attn-only-4l, redwood_attn_2l, any TransformerLens name), loaded
from a local Hugging Face cache and never from the network (the README).

``load_pretrained(name)`` resolves TransformerLens's name or alias to its Hugging Face repository,
looks for it in the cache (``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``) and loads it with every Hugging Face call offline: ``HF_HUB_OFFLINE``
is switched on for the duration of the load and every call passes ``local_files_only=True``.  A
missing repository stops at once with one sentence naming what to download and where, instead of
Hugging Face's ~46 s of retries.

Weight processing: none by default.  TransformerLens's ``from_pretrained`` folds LayerNorm,
centres the writing weights AND the unembedding, and folds the value biases unless told otherwise;
centring the unembedding shifts every logit (users keep reporting it) and folding value biases moves
part of each head's output into ``b_O``, which belongs to no edge, so it changes what ablating a head
removes.  Here the model's logits equal the original Hugging Face model's (up to float rounding
with ``fold_ln=True``, which folds LayerNorm and centres the writing weights and nothing else).
The patching engine folds LayerNorm itself, so no processing is needed for speed.

Two loading routes, both through TransformerLens:
  * Hugging Face models (``gpt2``, ...): ``HookedTransformer.from_pretrained`` with the cache dir.
  * TransformerLens-format checkpoints (``NeelNanda/*``, ``ArthurConmy/*``: ``attn-only-4l``,
    ``redwood_attn_2l``): TransformerLens 3.9 lists the repository's files over the network before
    loading them, which no offline switch avoids; so its own config reader is used and the
    ``*final.pth`` state dict is read from the cached snapshot, then given to
    ``HookedTransformer.load_and_process_state_dict`` exactly as ``from_pretrained`` would.

The ``pretrained`` model kind (``KIND``) records the name, cache revision and optional canonical
circuit in ``config.json``; the weights stay in the Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformer_lens import HookedTransformer
from transformer_lens import loading_from_pretrained as loading

from circuitflow.graph import Graph
from circuitflow.io import write_json_atomic
from circuitflow.models import canonical
from circuitflow.models.hub import (
    NotInCache,
    cached_revision,
    cached_snapshot,
    hf_cache_dir,
    missing_from_cache,
    official_name,
    offline,
)
from circuitflow.models.kind import LoadedModel, ModelKind

# Organisations whose repositories hold TransformerLens-format checkpoints (TransformerLens's own list).
TRANSFORMER_LENS_FORMAT = ("NeelNanda", "ArthurConmy", "Baidicoot")
# Architectures whose checkpoints TransformerLens converts after loading (see _convert).
_CONVERTED = ("neel-solu-old", "mingpt")


def _tokenizer(name: str, repo: str | None, cache: Path):
    """The model's tokenizer from the cache (None when the model names none)."""
    if repo is None:
        return None
    snapshot = cached_snapshot(repo, cache)
    if snapshot is None:
        raise missing_from_cache(name, repo, cache, what="'s tokenizer")
    from transformers import AutoTokenizer

    # From the snapshot folder, not the repository id: for an id, transformers 5 insists on a model
    # config.json that tokenizer-only repositories lack.  add_bos_token as TransformerLens sets it.
    with offline():
        return AutoTokenizer.from_pretrained(str(snapshot), add_bos_token=True)


def load_pretrained(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    fold_ln: bool = False,
) -> HookedTransformer:
    """Load ``name`` (any TransformerLens name or alias) from the local Hugging Face cache, offline.

    fold_ln: False (default) keeps the weights as published, so the logits equal the original model's;
        True folds LayerNorm into the next weights and centres the writing weights (logits equal up to
        float rounding; refused for shortformer models such as attn-only-4l, where it is impossible).
        The unembedding is never centred and value biases are never folded (see the module docstring).
    Returns the model in eval mode on ``device``; its ``tokenizer`` is set when the model names one.
    Raises ``NotInCache`` (one sentence naming the repository to download) when the cache lacks the
    model or its tokenizer, and ValueError for an unknown name.
    """
    repo = official_name(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hf_cache_dir()
    snapshot = cached_snapshot(repo, cache)
    if snapshot is None:
        raise missing_from_cache(name, repo, cache)
    hub = {"cache_dir": str(cache), "local_files_only": True}
    try:
        with offline():
            cfg = loading.get_pretrained_model_config(repo, fold_ln=False, device=device, dtype=dtype, **hub)
            if fold_ln and cfg.positional_embedding_type == "shortformer":
                raise ValueError(
                    f"{name} uses shortformer positions, where LayerNorm cannot be folded; load it with fold_ln=False."
                )
            if fold_ln:  # the folded config (LNPre); TransformerLens would silently skip folding above
                cfg = loading.get_pretrained_model_config(repo, fold_ln=True, device=device, dtype=dtype, **hub)
            tokenizer = _tokenizer(name, cfg.tokenizer_name, cache)
            processing = dict(
                fold_ln=fold_ln, center_writing_weights=fold_ln, center_unembed=False,
                fold_value_biases=False, refactor_factored_attn_matrices=False,
            )
            if repo.startswith(TRANSFORMER_LENS_FORMAT):
                model = _from_checkpoint(cfg, snapshot, tokenizer, processing, dtype)
            else:
                model = HookedTransformer.from_pretrained(
                    repo, tokenizer=tokenizer, device=device, dtype=dtype, **processing, **hub
                )
    except OSError as error:  # a snapshot without the weights or config the loader needs
        if isinstance(error, NotInCache):
            raise
        raise NotInCache(
            f"The cached snapshot of {repo} at {snapshot} is incomplete ({error.__class__.__name__}); "
            f"on a machine with network run `hf download {repo}` again and copy its cache here."
        ) from None
    return model.eval()


def _from_checkpoint(cfg, snapshot: Path, tokenizer, processing: dict, dtype: torch.dtype) -> HookedTransformer:
    """A TransformerLens-format checkpoint (``*final.pth`` in the snapshot), loaded the way
    ``HookedTransformer.from_pretrained`` loads it, without listing the repository online."""
    checkpoints = sorted(path for path in snapshot.iterdir() if path.name.endswith("final.pth"))
    if not checkpoints:
        raise FileNotFoundError(f"no *final.pth checkpoint in {snapshot}")
    state_dict = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    state_dict = {key: value.to(dtype) for key, value in state_dict.items()}
    if cfg.original_architecture == "neel-solu-old":
        state_dict = loading.convert_neel_solu_old_weights(state_dict, cfg)
    elif cfg.original_architecture == "mingpt":
        state_dict = loading.convert_mingpt_weights(state_dict, cfg)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **processing)
    model.move_model_modules_to_device()
    return model


# ---- the `pretrained` model kind ------------------------------------------------------------------
SPEC_KEYS = ("kind", "name", "circuit", "fold_ln")


def validate(name: str, spec: dict) -> None:
    """params.yaml spec: ``{kind: pretrained, name: gpt2, circuit: ioi, fold_ln: false}``; ``circuit``
    (a canonical circuit of ``canonical.CANONICAL`` for this model) and ``fold_ln`` are optional."""
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"Pretrained model {name!r} has unknown settings {unknown}; allowed: {', '.join(SPEC_KEYS)}.")
    if not isinstance(spec.get("name"), str):
        raise ValueError(f"Pretrained model {name!r} needs `name:` (a TransformerLens model name such as gpt2).")
    official_name(spec["name"])
    if not isinstance(spec.get("fold_ln", False), bool):
        raise ValueError(f"Pretrained model {name!r}: `fold_ln` must be true or false.")
    circuit = spec.get("circuit")
    if circuit is not None:
        canonical.check_circuit_for_model(circuit, spec["name"])


def build(name: str, spec: dict, directory: Path) -> dict[str, float]:
    """Check the model loads from the cache and record what was loaded (the weights stay in the cache):
    ``config.json`` (kind, name, repository, cached revision, fold_ln, circuit, model shape) and, with a
    circuit, ``ground_truth.json``.  Returns the parameter count and the circuit's edge count."""
    validate(name, spec)
    model = load_pretrained(spec["name"], fold_ln=spec.get("fold_ln", False))
    circuit = spec.get("circuit")
    config = {
        "kind": "pretrained",
        "name": spec["name"],
        "repository": official_name(spec["name"]),
        "revision": cached_revision(spec["name"]),
        "fold_ln": spec.get("fold_ln", False),
        "circuit": circuit,
        "hooked_transformer_config": {
            key: getattr(model.cfg, key)
            for key in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "act_fn",
                        "normalization_type", "positional_embedding_type", "attn_only")
        },
    }
    metrics = {"n_parameters": float(sum(p.numel() for p in model.parameters()))}
    if circuit is not None:
        edges = canonical.canonical_edges(circuit)
        canonical.check_against(circuit, Graph.from_config(model.cfg, qkv_direct_edges=True))
        write_json_atomic(Path(directory) / "ground_truth.json", {"circuit": circuit, "edges": edges})
        metrics["ground_truth_edges"] = float(len(edges))
    write_json_atomic(Path(directory) / "config.json", config)
    return metrics


def load(directory: Path) -> LoadedModel:
    """The model recorded by ``build``; refuses a cache whose revision differs from the recorded one.
    With a canonical circuit the graph has ACDC's q/k/v direct edges (``qkv_direct_edges=True``) and
    the circuit is the ground truth for every ablation (the papers give one circuit per behavior)."""
    import json

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    revision = cached_revision(config["name"])
    if revision != config["revision"]:
        raise ValueError(
            f"{config['name']} in the Hugging Face cache is revision {revision}, but {directory} was built from "
            f"{config['revision']}; rerun the models stage (dvc repro) to rebuild it."
        )
    model = load_pretrained(config["name"], fold_ln=config["fold_ln"])
    circuit = config.get("circuit")
    graph = Graph.from_config(model.cfg, qkv_direct_edges=circuit is not None)
    ground_truth = None
    if circuit is not None:
        edges = json.loads((directory / "ground_truth.json").read_text())["edges"]
        ground_truth = {ablation: list(edges) for ablation in ("zero", "mean", "resample")}
    info = {"tokenizer": model.tokenizer, "name": config["name"], "circuit": circuit}
    return LoadedModel(model=model, graph=graph, ground_truth=ground_truth, tokenizer=model.tokenizer, info=info)


KIND = ModelKind(validate=validate, build=build, load=load)
