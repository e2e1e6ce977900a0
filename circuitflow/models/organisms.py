"""Model organisms: small transformers trained here on one behavior each (no download).

``train_organism("ioi", {"n_layers": 2, "steps": 1500, "seed": 0}, directory)`` builds a word-level
tokenizer from the behavior's vocabulary, trains a small pre-LayerNorm transformer with Adam on the
behavior's ``training_examples`` (the loss on the target words only; docstring and induction in
varied layouts, see ``training_frame``), measures it on a held-out ``make_dataset`` sample (prompts
that also occur in the training pool are dropped from the pool), and writes into ``directory``:
    model.safetensors      the state dict
    config.json            {"kind": "organism", "behavior", "settings" (all of them, defaults filled),
                            "hooked_transformer_config", "metrics" (final, deterministic), "versions"}
    training_curves.json   per-step training loss and the held-out evaluations, as lists
    tokenizer/             the word-level tokenizer (``behaviors.tokenizer.load_tokenizer``)
Every file is written atomically, and the same settings give byte-identical files: the weights come
from ``seed`` alone (initialisation under a forked torch RNG, batches from a seeded generator,
deterministic algorithms, one thread for the duration of training, so the reduction order does not
depend on the machine's core count).  Wall-clock time is returned, never written.

The training loop, its held-out accuracy and losses are ``training.py``'s.
Induction organisms are attention-only (2 layers); the others have MLPs.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.behaviors import docstring, get_behavior, induction
from circuitflow.behaviors import tokenizer as word_tokenizer
from circuitflow.graph import Graph
from circuitflow.io import write_atomic, write_json_atomic
from circuitflow.models.kind import LoadedModel, ModelKind
from circuitflow.models.training import (  # noqa: F401 - correct, induction_scores: read here by this module's users
    correct,
    fit,
    induction_scores,
)
from circuitflow.settings import ORGANISM_BEHAVIORS, OrganismModel, field_defaults

BEHAVIORS = ORGANISM_BEHAVIORS
CONFIG_FORMAT = "circuitflow-organism-1"

# Defaults per behavior (measured on one core; see tests/test_organisms.py's slow tier): ioi,
# greater-than and docstring reach 100% held-out accuracy; induction 100% with 3000 steps (93.8% with
# 1000), its layer-1 heads sharing the job (induction score about 0.34 each, not one sharp head).
# Docstring trains on the behavior's one layout: its answer is then always the def's fifth
# parameter, which a positional head can copy (100% by step 250).  In varied layouts
# (vary_layout: true), where only the docstring mechanism works, it stays near 30% whatever the
# steps, layers, learning rate or data (best 35%): it learns "one of the def's last parameters".
_COMMON = field_defaults(OrganismModel)  # the defaults live in circuitflow.settings
DEFAULTS: dict[str, dict[str, Any]] = {behavior: {**_COMMON, **OrganismModel.BEHAVIOR_DEFAULTS[behavior]} for behavior in BEHAVIORS}
VARIED_LAYOUTS = OrganismModel.VARIED_LAYOUTS
INDUCTION_HALF_LENGTHS = tuple(range(4, 16))  # training half lengths; the behavior's datasets use 10
DOCSTRING_EXTRA_ARGS = (0, 1, 2, 3)  # parameters before and after the three matching ones (the behavior: 2, 1)
SETTINGS = tuple(_COMMON)
ACCURACY_TARGET = 0.95


# ---- settings -----------------------------------------------------------------------------------
def resolve_settings(behavior: str, settings: dict) -> dict[str, Any]:
    """The behavior's defaults overridden by ``settings``; unknown keys and bad values are refused."""
    if behavior not in BEHAVIORS:
        raise ValueError(f"Organisms are trained on {', '.join(BEHAVIORS)}, not {behavior!r}; pick one of those.")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"Unknown organism settings {unknown}; allowed: {', '.join(SETTINGS)}.")
    resolved = {**DEFAULTS[behavior], **settings}
    if resolved["d_mlp"] is None:
        resolved["d_mlp"] = 4 * resolved["d_model"]
    for key in ("seed", "n_layers", "d_model", "n_heads", "d_mlp", "steps", "batch_size", "warmup_steps", "n_train", "n_eval", "eval_every"):
        value = resolved[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key in ("seed", "warmup_steps") else 1):
            raise ValueError(f"Organism setting {key} must be a positive integer, got {value!r}.")
    for key in ("lr", "weight_decay", "grad_clip"):
        if not isinstance(resolved[key], (int, float)) or isinstance(resolved[key], bool) or resolved[key] < 0:
            raise ValueError(f"Organism setting {key} must be a non-negative number, got {resolved[key]!r}.")
    for key in ("attn_only", "vary_layout"):
        if not isinstance(resolved[key], bool):
            raise ValueError(f"Organism setting {key} must be true or false, got {resolved[key]!r}.")
    if resolved["vary_layout"] and behavior not in VARIED_LAYOUTS:
        raise ValueError(f"vary_layout applies to {' and '.join(VARIED_LAYOUTS)} only; drop it for {behavior}.")
    if resolved["d_model"] % resolved["n_heads"]:
        raise ValueError(f"d_model ({resolved['d_model']}) must be a multiple of n_heads ({resolved['n_heads']}).")
    if behavior == "induction" and not resolved["attn_only"]:
        raise ValueError("The induction organism is attention-only; leave attn_only at true.")
    return resolved


def hooked_config(settings: dict, d_vocab: int, n_ctx: int) -> HookedTransformerConfig:
    """The organism's architecture: pre-LayerNorm, GELU, learned positions, d_head = d_model / n_heads."""
    return HookedTransformerConfig(
        n_layers=settings["n_layers"], d_model=settings["d_model"], n_heads=settings["n_heads"],
        d_head=settings["d_model"] // settings["n_heads"], d_mlp=None if settings["attn_only"] else settings["d_mlp"],
        attn_only=settings["attn_only"], d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu", normalization_type="LN",
        positional_embedding_type="standard", default_prepend_bos=True, model_name="organism",
    )


# ---- data ---------------------------------------------------------------------------------------
def _training_data(behavior, tokenizer, settings: dict, heldout: pl.DataFrame) -> dict[str, torch.Tensor]:
    """``n_train`` training examples minus those whose prompt is a held-out clean prompt, encoded:
    ``tokens`` (n_train', pos) and ``loss_mask`` (n_train', pos)."""
    frame = training_frame(behavior, settings)
    held = set(heldout["clean"].to_list())
    frame = frame.filter(~pl.col("prompt").is_in(sorted(held)))
    if frame.height == 0:
        raise ValueError("Every training prompt is also a held-out prompt; raise n_train or lower n_eval.")
    return word_tokenizer.encode_training(frame, tokenizer)


def training_frame(behavior, settings: dict) -> pl.DataFrame:
    """The behavior's ``training_examples`` (``prompt``, ``target``), with ``vary_layout`` in varied layouts.

    The behaviors' prompts have one fixed layout, so the answer always sits at the same offset: a
    single positional head then solves induction (attend L-1 tokens back) and docstring (copy the
    def's fifth parameter), and no induction or docstring mechanism forms (measured: a fixed-layout
    induction organism's "induction heads" were all in layer 0; a fixed-layout docstring organism
    answered 0% of prompts with one parameter fewer before the matching ones).  Varying the layout
    makes the offset useless: induction halves of ``INDUCTION_HALF_LENGTHS`` words, docstring defs
    with ``DOCSTRING_EXTRA_ARGS`` random parameters before and after the matching three.
    """
    n, seed = settings["n_train"], settings["seed"]
    if not settings["vary_layout"]:
        return behavior.training_examples(n, seed)
    if behavior.name == "induction":
        lengths = INDUCTION_HALF_LENGTHS
        counts = [n // len(lengths) + (i < n % len(lengths)) for i in range(len(lengths))]
        frames = [induction.training_examples(count, seed * 1000 + length, half_length=length) for length, count in zip(lengths, counts) if count]
        order = np.random.default_rng([seed, 2]).permutation(n)
        return pl.concat(frames)[order.tolist()]
    return _vary_docstring_defs(behavior.training_examples(n, seed), np.random.default_rng([seed, 2]))


def _vary_docstring_defs(frame: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    """Docstring prompts with the def's parameters around the matching three redrawn: a random
    number (``DOCSTRING_EXTRA_ARGS``) before and after, names unused in the prompt."""
    prompts = []
    for prompt, target in zip(frame["prompt"].to_list(), frame["target"].to_list()):
        words = prompt.split(" ")
        close = words.index(")")
        if words[:4] != ["def", words[1], "(", "self"]:
            raise ValueError(f"A docstring training prompt does not start 'def NAME ( self': {prompt!r}; update _vary_docstring_defs to the new layout.")
        parameters = words[5:close:2]  # "self , a , b , c" -> a b c
        documented = [words[i + 1] for i in range(close, len(words) - 1) if words[i] == "param"]
        first = parameters.index(documented[0])
        matching = parameters[first : first + len(documented) + 1]
        if matching != [*documented, target]:
            raise ValueError(f"A docstring training prompt's def does not hold its documented parameters then the answer: {prompt!r}.")
        unused = sorted(set(docstring.NAMES) - set(words) - {target})
        before, after = (int(rng.choice(DOCSTRING_EXTRA_ARGS)) for _ in range(2))
        extra = [unused[i] for i in rng.choice(len(unused), size=before + after, replace=False)]
        new_parameters = extra[:before] + matching + extra[before:]
        prompts.append(" ".join([*words[:4], *(w for p in new_parameters for w in (",", p)), *words[close:]]))
    return frame.with_columns(pl.Series("prompt", prompts, dtype=pl.String))


# ---- training -----------------------------------------------------------------------------------
def train_organism(behavior_name: str, settings: dict, directory: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train an organism on ``behavior_name`` and write it into ``directory`` (see the module docstring).

    settings: any of ``SETTINGS``; missing ones take ``DEFAULTS[behavior_name]``.
    Returns {"metrics": final held-out figures plus "final_train_loss" (deterministic; also in
    config.json), "curves": {"step", "train_loss", "eval_step", "eval_accuracy", "eval_loss"} lists,
    "train_seconds" and "train_cpu_seconds": wall-clock and CPU time of the training loop (one
    thread, so the CPU time is what an idle core would take; neither is written anywhere)}.
    """
    settings = resolve_settings(behavior_name, settings)
    tokenizer, heldout, data = prepare_training(behavior_name, settings, directory)
    n_ctx = max(data["tokens"].shape[1], heldout["clean"].shape[1])
    cfg = hooked_config(settings, d_vocab=len(tokenizer), n_ctx=n_ctx)
    result = fit(lambda: HookedTransformer(cfg), behavior_name, settings, data, heldout, f"train {behavior_name} organism", progress)
    _write(Path(directory), result.pop("model"), behavior_name, settings, result["metrics"], result["curves"])
    return result


def prepare_training(behavior_name: str, settings: dict, directory: str | Path) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The word-level tokenizer (written to ``directory/tokenizer`` and read back), the encoded
    held-out sample and the encoded training data of an organism with resolved ``settings``."""
    behavior = get_behavior(behavior_name)
    directory = Path(directory)
    word_tokenizer.save_tokenizer(word_tokenizer.build_word_tokenizer(behavior.vocabulary()), directory / "tokenizer")
    tokenizer = word_tokenizer.load_tokenizer(directory / "tokenizer")
    heldout_frame = behavior.make_dataset(settings["n_eval"], settings["seed"] + 1_000_003)
    heldout = behavior.encode(heldout_frame, tokenizer)
    data = _training_data(behavior, tokenizer, settings, heldout_frame)
    return tokenizer, heldout, data


_CONFIG_FIELDS = (
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "act_fn", "attn_only",
    "normalization_type", "positional_embedding_type", "default_prepend_bos", "model_name",
)


def _write(directory: Path, model: HookedTransformer, behavior: str, settings: dict, metrics: dict, curves: dict) -> None:
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    blob = save(state)
    write_atomic(directory / "model.safetensors", lambda tmp: tmp.write_bytes(blob))
    write_json_atomic(directory / "training_curves.json", curves)
    write_json_atomic(directory / "config.json", {
        "kind": "organism",
        "format": CONFIG_FORMAT,
        "behavior": behavior,
        "settings": settings,
        "hooked_transformer_config": {key: getattr(model.cfg, key) for key in _CONFIG_FIELDS},
        "metrics": metrics,
        "versions": {pkg: importlib.metadata.version(pkg) for pkg in ("torch", "transformer-lens")},
    })


# ---- loading ------------------------------------------------------------------------------------
def load_organism(directory: str | Path, device: str | torch.device = "cpu") -> tuple[HookedTransformer, Any, dict]:
    """The model (eval mode, its tokenizer set), the tokenizer and the config.json written by
    ``train_organism``; a missing or foreign file is one sentence naming it."""
    directory = Path(directory)
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{path} is missing or not JSON; train the organism again (the models stage).") from None
    if config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"{path} is not an organism config ({CONFIG_FORMAT}); train the organism again.")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{weights} is missing; train the organism again (the models stage).")
    tokenizer = word_tokenizer.load_tokenizer(directory / "tokenizer")
    model = HookedTransformer(HookedTransformerConfig(**config["hooked_transformer_config"], device=str(device)))
    model.load_state_dict(load_file(weights, device=str(device)), strict=True)
    model.set_tokenizer(tokenizer)
    return model.eval(), tokenizer, config


# ---- the `organism` model kind ------------------------------------------------------------------
def validate(name: str, spec: dict) -> None:
    """params.yaml spec: ``{kind: organism, behavior: ioi, <any of SETTINGS>}``."""
    behavior = spec.get("behavior")
    settings = {key: value for key, value in spec.items() if key not in ("kind", "behavior")}
    try:
        resolve_settings(behavior, settings)
    except ValueError as error:
        raise ValueError(f"Organism model {name!r}: {error}") from None


def build(name: str, spec: dict, directory: Path) -> dict[str, float]:
    """Train the organism into ``directory``; returns its final held-out figures and the training time."""
    validate(name, spec)
    settings = {key: value for key, value in spec.items() if key not in ("kind", "behavior")}
    result = train_organism(spec["behavior"], settings, directory)
    return {**result["metrics"], "train_seconds": result["train_seconds"], "train_cpu_seconds": result["train_cpu_seconds"]}


def load(directory: Path) -> LoadedModel:
    model, tokenizer, config = load_organism(directory)
    info = {"tokenizer": tokenizer, "behavior": config["behavior"], "metrics": config["metrics"]}
    return LoadedModel(model=model, graph=Graph.from_config(model.cfg), ground_truth=None, tokenizer=tokenizer, info=info)


KIND = ModelKind(validate=validate, build=build, load=load)
