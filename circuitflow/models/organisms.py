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

Held-out accuracy (higher is better; every other number here is a loss, lower is better):
    ioi, docstring   the last position's top-1 prediction is the answer;
    greater-than     the top-1 prediction is a two-digit year strictly after the prompt's;
    induction        top-1 accuracy on the predictable repeated words (the ``loss_mask`` positions);
                     also the loss on the random first half vs the repeated half, and each head's
                     induction score (mean attention from a repeated word to the word after its first
                     occurrence; ``induction_scores``).
Induction organisms are attention-only (2 layers); the others have MLPs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.behaviors import docstring, get_behavior, induction
from circuitflow.behaviors import tokenizer as word_tokenizer
from circuitflow.graph import Graph
from circuitflow.io import write_atomic, write_json_atomic
from circuitflow.models.kind import LoadedModel, ModelKind
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


@contextlib.contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Seed torch's global RNG, force deterministic algorithms and one thread for the block; the
    caller's RNG state, determinism flag and thread count come back afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)


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


def masked_loss(logits: torch.Tensor, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the ``loss_mask`` positions (lower is better).
    logits (batch, pos, vocab), tokens (batch, pos), loss_mask (batch, pos) -> scalar."""
    mask = loss_mask[:, :-1]
    return F.cross_entropy(logits[:, :-1][mask], tokens[:, 1:][mask])


# ---- held-out measurement -----------------------------------------------------------------------
def correct(behavior: str, logits: torch.Tensor, examples: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example accuracy in [0, 1] (higher is better; see the module docstring).
    logits (batch, pos, vocab) -> (batch,) float."""
    if behavior == "induction":
        predicted = logits[:, :-1].argmax(-1) == examples["clean"][:, 1:]
        mask = examples["loss_mask"][:, :-1]
        return (predicted & mask).sum(-1).float() / mask.sum(-1)
    top = logits[:, -1].argmax(-1)
    if behavior == "ioi":
        return (top == examples["io"]).float()
    if behavior == "docstring":
        return (top == examples["answer"]).float()
    is_year = examples["year_ids"] == top[:, None]  # (batch, 100)
    later = torch.arange(100)[None, :] > examples["yy"][:, None]
    return (is_year & later).any(-1).float()


def induction_scores(model: HookedTransformer, clean: torch.Tensor) -> torch.Tensor:
    """Each head's induction score: the mean attention from the i-th repeated word to the word after
    its first occurrence (i = 1 .. L-1), over the batch.  clean (batch, 2L + 1), BOS first ->
    (n_layers, n_heads); ~1 for an induction head, ~0 for others."""
    half = (clean.shape[1] - 1) // 2
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(clean, names_filter=lambda name: name in names)
    queries = torch.arange(half + 1, 2 * half)  # the repeated words s1 .. s_{L-1}
    keys = queries - half + 1  # the word after each one's first occurrence
    return torch.stack([cache[name][:, :, queries, keys].mean(dim=(0, 2)) for name in names])


def evaluate(model: HookedTransformer, behavior: str, examples: dict[str, torch.Tensor]) -> dict[str, float]:
    """Held-out figures: ``accuracy`` (higher is better) and ``loss`` (answer cross-entropy, lower is
    better); for induction also ``loss_first_half`` / ``loss_repeated_half``, each head's
    ``induction_score_a{layer}.{head}`` and their maximum ``induction_score_max``."""
    with torch.no_grad():
        logits = model(examples["clean"])
        figures = {"accuracy": float(correct(behavior, logits, examples).mean())}
        if behavior == "induction":
            clean = examples["clean"]
            half = (clean.shape[1] - 1) // 2
            token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), clean[:, 1:], reduction="none")  # (batch, pos-1)
            repeated = examples["loss_mask"][:, :-1]
            first = torch.zeros_like(repeated)
            first[:, 1:half] = True  # predicting s2 .. sL from the random half: unpredictable
            figures["loss"] = figures["loss_repeated_half"] = float(token_loss[repeated].mean())
            figures["loss_first_half"] = float(token_loss[first].mean())
            scores = induction_scores(model, clean)
            figures["induction_score_max"] = float(scores.max())
            for layer in range(scores.shape[0]):
                for head in range(scores.shape[1]):
                    figures[f"induction_score_a{layer}.{head}"] = float(scores[layer, head])
        else:
            answer = _answer_ids(behavior, examples)
            last = logits[:, -1]
            if answer is None:  # greater-than: the answer is any later year
                probabilities = torch.softmax(last, -1).gather(-1, examples["year_ids"])
                later = torch.arange(100)[None, :] > examples["yy"][:, None]
                figures["loss"] = float(-torch.log((probabilities * later).sum(-1)).mean())
            else:
                figures["loss"] = float(F.cross_entropy(last, answer))
    return figures


def _answer_ids(behavior: str, examples: dict[str, torch.Tensor]) -> torch.Tensor | None:
    return {"ioi": examples.get("io"), "docstring": examples.get("answer")}.get(behavior)


# ---- training -----------------------------------------------------------------------------------
def _learning_rate(step: int, settings: dict) -> float:
    """Linear warm-up, then cosine decay to a tenth of ``lr``."""
    lr, warmup, steps = settings["lr"], settings["warmup_steps"], settings["steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


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


def fit(
    make_model: Callable[[], torch.nn.Module],
    behavior_name: str,
    settings: dict,
    data: dict[str, torch.Tensor],
    heldout: dict[str, torch.Tensor],
    label: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Build a model with ``make_model()`` (under ``deterministic_torch(seed)``, so its initial
    weights come from the seed) and train it with Adam on ``data`` (``masked_loss``), evaluating on
    ``heldout`` every ``eval_every`` steps.  The model maps tokens (batch, pos) to logits.
    Returns {"model" (eval mode), "metrics", "curves", "train_seconds", "train_cpu_seconds"} as
    ``train_organism`` describes them."""
    curves: dict[str, list] = {"step": [], "train_loss": [], "eval_step": [], "eval_accuracy": [], "eval_loss": []}
    start, start_cpu = time.perf_counter(), time.process_time()
    with deterministic_torch(settings["seed"]):
        model = make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
        batches = torch.Generator().manual_seed(settings["seed"])
        n_data = data["tokens"].shape[0]
        for step in tqdm(range(settings["steps"]), desc=label, disable=not progress):
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, settings)
            index = torch.randint(n_data, (settings["batch_size"],), generator=batches)
            tokens, mask = data["tokens"][index], data["loss_mask"][index]
            model.train()
            loss = masked_loss(model(tokens), tokens, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
            optimizer.step()
            curves["step"].append(step)
            curves["train_loss"].append(loss.item())
            if (step + 1) % settings["eval_every"] == 0 or step + 1 == settings["steps"]:
                model.eval()
                figures = evaluate(model, behavior_name, heldout)
                curves["eval_step"].append(step + 1)
                curves["eval_accuracy"].append(figures["accuracy"])
                curves["eval_loss"].append(figures["loss"])
        model.eval()
        metrics = evaluate(model, behavior_name, heldout)
    train_seconds, train_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    metrics["final_train_loss"] = curves["train_loss"][-1]
    metrics["n_train_examples"] = float(n_data)
    return {"model": model, "metrics": metrics, "curves": curves, "train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds}


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
