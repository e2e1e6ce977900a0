"""Strict Interchange Intervention Training (SIIT; Gupta et al. 2024, "InterpBench"; InterpBench, Gupta et al. 2024).

A fresh TransformerLens model L is trained to implement a high-level causal model H
(``behaviors.high_level.Case``) through a correspondence: each high-level node maps to one or two
low-level nodes (an attention head ``a{layer}.{head}``, the MLP ``m{layer}``), placed at the node's layer
(tracr's allocation for tracr cases; ``correspondence``).  Each step draws base and source inputs
independently (a seeded generator over the case's inputs) and sums three losses:

    behavior (weight 1)  L(base) against H(base): the plain task loss;
    IIT      (weight 1)  one high-level node h drawn per step; L(base) with h's image patched from
                         L(source) against H(base) with h's value taken from H(source);
    strict   (weight 0.4, applied once) one low-level node outside the image drawn per step; L(base)
                         with it patched from L(source) against H(base): it must not matter.

Categorical outputs use cross-entropy, numerical ones mean squared error, at the case's output
positions.  A head is patched through its ``hook_z`` (at every position; the same as patching its
result, since ``W_O`` is linear), an MLP through ``hook_post``; source activations carry no
gradient.  The three forward passes on the base run as one batch (3 x batch_size rows).  The
correspondence, the hooks and the losses are ``siit_interventions.py``'s.

Metrics (``evaluate_siit``, on ``n_eval_pairs`` fixed (base, source) pairs from a generator of their
own), per output position: accuracy (L(base) vs H(base)); IIA, the interchange-intervention accuracy
averaged over the high-level nodes; strict accuracy, the accuracy with one non-circuit node patched,
averaged over the non-circuit nodes (``*_min``: the worst node).  A numerical output is correct within
``NUMERICAL_TOLERANCE``.  Training stops when accuracy and the worst node's IIA and strict accuracy
reach ``target`` (checked every ``eval_every`` steps; stricter than InterpBench, which stops on the
means: on reverse the means reach 0.99 while one non-circuit head still flips 6% of outputs) or after
``max_steps``.

Defaults as InterpBench: Adam betas (0.9, 0.9), lr 1e-3, gradient-norm clip 0.1, weights 1 / 1 / 0.4,
target 0.99 (InterpBench: 0.995), except batch 128 (InterpBench: 256; measured here, reverse reaches
the target in the same 200 steps with either, so 128 halves the time on 2 cores) and up to 4,000 steps; low-level model pre-LN, GELU, d_model 64, 4 heads,
d_mlp 4 d_model, max(2, layers the case needs) layers; attention bidirectional for tracr cases (as
tracr's, which reverse and sort need), causal for IOI.  The case inputs are small sets (243 to 3,584
inputs), so training draws from all of them.

``train_siit`` writes into its directory (each file atomically; the same settings give
byte-identical files: initialisation and batches from ``seed`` under ``deterministic_torch``):
    model.safetensors     the state dict
    config.json           {"kind": "siit", "format", "case", "settings", "hooked_transformer_config",
                           "correspondence", "metrics" (final, deterministic), "versions"}
    training_curves.json  per-step losses and the periodic evaluations
    ground_truth.json     {"zero", "resample", "mean"}: the same edge list for every ablation, the
                          image of H's graph under the correspondence (``ground_truth_edges``).
"""

from __future__ import annotations

import importlib.metadata
import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.behaviors.high_level import Case
from circuitflow.behaviors.siit_cases import get_case
from circuitflow.graph import Graph
from circuitflow.io import write_atomic, write_json_atomic
from circuitflow.models.kind import LoadedModel, ModelKind
from circuitflow.models.siit_interventions import (
    HighLevelTargets,
    capture,
    correct,
    correspondence,
    ground_truth_edges,
    low_level_nodes,
    non_circuit_nodes,
    output_loss,
    patched,
    same_output,
)
from circuitflow.models.training import deterministic_torch
from circuitflow.settings import Ablation, SiitModel, field_defaults

CONFIG_FORMAT = "circuitflow-siit-1"
DEFAULTS: dict[str, Any] = field_defaults(SiitModel)  # the defaults live in circuitflow.settings
SETTINGS = tuple(DEFAULTS)


# ---- settings and the low-level model ------------------------------------------------------------


def resolve_settings(case: Case, settings: Mapping[str, Any]) -> dict[str, Any]:
    """DEFAULTS overridden by ``settings``, n_layers and d_mlp filled in; unknown keys and bad values
    are refused with one sentence."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"Unknown SIIT settings {unknown}; allowed: {', '.join(SETTINGS)}.")
    resolved = {**DEFAULTS, **settings}
    needed = max(2, case.n_layers)
    if resolved["n_layers"] is None:
        resolved["n_layers"] = needed
    if resolved["d_mlp"] is None:
        resolved["d_mlp"] = 4 * resolved["d_model"] if isinstance(resolved["d_model"], int) else None
    for key in ("seed", "n_layers", "d_model", "n_heads", "d_mlp", "batch_size", "max_steps", "eval_every", "n_eval_pairs"):
        value = resolved[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "seed" else 1):
            raise ValueError(f"SIIT setting {key} must be a positive integer, got {value!r}.")
    for key in ("lr", "grad_clip", "target", "behavior_weight", "iit_weight", "strict_weight"):
        value = resolved[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"SIIT setting {key} must be a non-negative number, got {value!r}.")
    if resolved["n_layers"] < needed:
        raise ValueError(f"Case {case.name} needs at least {needed} layers, got n_layers={resolved['n_layers']}.")
    if resolved["n_heads"] < 4:
        raise ValueError(f"SIIT models have at least 4 heads per layer (the cases place up to 4), got {resolved['n_heads']}.")
    if resolved["d_model"] % resolved["n_heads"]:
        raise ValueError(f"d_model ({resolved['d_model']}) must be a multiple of n_heads ({resolved['n_heads']}).")
    if resolved["target"] > 1:
        raise ValueError(f"SIIT setting target is an accuracy in [0, 1], got {resolved['target']}.")
    return resolved


def hooked_config(case: Case, settings: Mapping[str, Any]) -> HookedTransformerConfig:
    """The low-level architecture: pre-LN, GELU, learned positions, d_head = d_model / n_heads."""
    return HookedTransformerConfig(
        n_layers=settings["n_layers"], d_model=settings["d_model"], n_heads=settings["n_heads"],
        d_head=settings["d_model"] // settings["n_heads"], d_mlp=settings["d_mlp"], act_fn="gelu",
        normalization_type="LN", d_vocab=len(case.vocab) + 1,
        d_vocab_out=len(case.output_values) if case.categorical else 1, n_ctx=case.seq_len + 1,
        attention_dir="causal" if case.causal else "bidirectional", positional_embedding_type="standard",
        default_prepend_bos=False, model_name=f"siit-{case.name}",
    )


def _new_model(cfg: HookedTransformerConfig) -> HookedTransformer:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        return HookedTransformer(cfg)


# ---- evaluation ----------------------------------------------------------------------------------


def evaluate_siit(model: HookedTransformer, targets: HighLevelTargets, base: Tensor, source: Tensor) -> dict[str, Any]:
    """Accuracy, IIA and strict accuracy (module docstring) on the pairs (base[i], source[i]) of
    input indices; ``iia_by_node`` and ``strict_by_node`` give each node's figure."""
    case = targets.case
    image = correspondence(case)
    others = non_circuit_nodes(case, model.cfg)
    base_tokens, source_tokens = targets.tokens[base], targets.tokens[source]
    labels = targets.labels[base]
    with torch.no_grad():
        accuracy = correct(case, model(base_tokens), labels).float().mean().item()
        acts = capture(model, source_tokens, [p for parts in image.values() for p in parts] + list(others))
        iia = {}
        for node, parts in image.items():
            with patched(model, [(p, slice(None), acts[p]) for p in parts]):
                logits = model(base_tokens)
            iia[node] = correct(case, logits, targets.intervened(base, source, node)).float().mean().item()
        strict = {}
        for node in others:
            with patched(model, [(node, slice(None), acts[node])]):
                strict[node] = correct(case, model(base_tokens), labels).float().mean().item()
    return {
        "accuracy": accuracy,
        "iia": sum(iia.values()) / len(iia),
        "iia_min": min(iia.values()),
        "strict_accuracy": sum(strict.values()) / len(strict) if strict else 1.0,
        "strict_accuracy_min": min(strict.values()) if strict else 1.0,
        "iia_by_node": iia,
        "strict_by_node": strict,
    }


def resampling_effects(model: HookedTransformer, targets: HighLevelTargets, base: Tensor, source: Tensor) -> dict[str, dict[str, float]]:
    """Per low-level node, resampled from the source run on the pairs (base[i], source[i]):
    ``changed``, the fraction of inputs whose output (any output position) differs from the
    unpatched model's; and for nodes in the image of a high-level node, ``as_predicted``, the
    fraction whose output equals H's under the same intervention on that node."""
    case = targets.case
    image = correspondence(case)
    owner = {p: node for node, parts in image.items() for p in parts}
    base_tokens = targets.tokens[base]
    nodes = low_level_nodes(model.cfg)
    effects = {}
    with torch.no_grad():
        clean = model(base_tokens)
        acts = capture(model, targets.tokens[source], nodes)
        for node in nodes:
            with patched(model, [(node, slice(None), acts[node])]):
                logits = model(base_tokens)
            figures = {"changed": 1.0 - same_output(case, logits, clean).float().mean().item()}
            if node in owner:
                predicted = targets.intervened(base, source, owner[node])
                figures["as_predicted"] = correct(case, logits, predicted).all(-1).float().mean().item()
            effects[node] = figures
    return effects


def eval_pairs(n_inputs: int, n_pairs: int, seed: int) -> tuple[Tensor, Tensor]:
    """Fixed (base, source) index pairs for evaluation, from a generator of their own."""
    generator = torch.Generator().manual_seed(seed + 1_000_003)
    return torch.randint(n_inputs, (n_pairs,), generator=generator), torch.randint(n_inputs, (n_pairs,), generator=generator)


# ---- training ------------------------------------------------------------------------------------


def siit_step_loss(
    model: HookedTransformer, targets: HighLevelTargets, base: Tensor, source: Tensor, node: str, strict_node: str | None
) -> dict[str, Tensor]:
    """The three losses of one step: ``behavior``, ``iit`` (high-level ``node``) and ``strict``
    (low-level ``strict_node``; zero without one)."""
    case = targets.case
    parts = correspondence(case)[node]
    n = len(base)
    wanted = list(parts) + ([strict_node] if strict_node else [])
    source_acts = capture(model, targets.tokens[source], wanted)
    tokens = targets.tokens[base]
    patches = [(p, slice(n, 2 * n), source_acts[p]) for p in parts]
    if strict_node:
        patches.append((strict_node, slice(2 * n, 3 * n), source_acts[strict_node]))
    with patched(model, patches):
        logits = model(torch.cat([tokens, tokens, tokens]))
    labels = targets.labels[base]
    losses = {
        "behavior": output_loss(case, logits[:n], labels),
        "iit": output_loss(case, logits[n:2 * n], targets.intervened(base, source, node)),
        "strict": output_loss(case, logits[2 * n:], labels) if strict_node else logits.new_zeros(()),
    }
    return losses


def _reached(metrics: Mapping[str, Any], target: float) -> bool:
    # The worst node, not only the mean: a single non-circuit node that still matters would break
    # the ground truth (InterpBench stops on the means; those are reported too).
    return all(metrics[key] >= target for key in ("accuracy", "iia_min", "strict_accuracy_min"))


def train_siit(case_name: str, settings: Mapping[str, Any], directory: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train a low-level model on ``case_name`` with SIIT and write it into ``directory`` (module
    docstring).  Returns the final metrics (accuracy, iia, strict_accuracy, their per-node worst and
    per-node figures, ``steps``) plus ``train_seconds`` (wall clock, never written)."""
    case = get_case(case_name)
    settings = resolve_settings(case, settings)
    cfg = hooked_config(case, settings)
    targets = HighLevelTargets(case)
    nodes = list(correspondence(case))
    others = list(non_circuit_nodes(case, cfg))
    eval_base, eval_source = eval_pairs(len(case.inputs), settings["n_eval_pairs"], settings["seed"])
    weights = {"behavior": settings["behavior_weight"], "iit": settings["iit_weight"], "strict": settings["strict_weight"]}
    curves: dict[str, list] = {"step": [], "loss": [], "behavior": [], "iit": [], "strict": [], "eval_step": [], "eval_accuracy": [], "eval_iia": [], "eval_strict_accuracy": []}

    start = time.perf_counter()
    with deterministic_torch(settings["seed"]):
        model = _new_model(cfg)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"], betas=(0.9, 0.9))
        generator = torch.Generator().manual_seed(settings["seed"])
        steps, metrics = 0, None
        bar = tqdm(range(settings["max_steps"]), desc=f"SIIT {case_name}", disable=not progress)
        for step in bar:
            base = torch.randint(len(case.inputs), (settings["batch_size"],), generator=generator)
            source = torch.randint(len(case.inputs), (settings["batch_size"],), generator=generator)
            node = nodes[int(torch.randint(len(nodes), (1,), generator=generator))]
            strict_node = others[int(torch.randint(len(others), (1,), generator=generator))] if others else None
            model.train()
            losses = siit_step_loss(model, targets, base, source, node, strict_node)
            loss = sum(weights[k] * losses[k] for k in weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
            optimizer.step()
            steps = step + 1
            curves["step"].append(steps)
            curves["loss"].append(loss.item())
            for key in weights:
                curves[key].append(losses[key].item())
            if steps % settings["eval_every"] == 0 or steps == settings["max_steps"]:
                model.eval()
                metrics = evaluate_siit(model, targets, eval_base, eval_source)
                curves["eval_step"].append(steps)
                curves["eval_accuracy"].append(metrics["accuracy"])
                curves["eval_iia"].append(metrics["iia"])
                curves["eval_strict_accuracy"].append(metrics["strict_accuracy"])
                bar.set_postfix(acc=f"{metrics['accuracy']:.3f}", iia=f"{metrics['iia']:.3f}", strict=f"{metrics['strict_accuracy']:.3f}")
                if _reached(metrics, settings["target"]):
                    break
        model.eval()
        if metrics is None or curves["eval_step"][-1] != steps:  # pragma: no cover - the loop evaluates last
            metrics = evaluate_siit(model, targets, eval_base, eval_source)
    train_seconds = time.perf_counter() - start
    metrics = {**metrics, "steps": steps, "reached_target": _reached(metrics, settings["target"])}
    write_siit_model(directory, model, case, settings, metrics, curves)
    return {**metrics, "train_seconds": train_seconds}


# ---- saving and loading --------------------------------------------------------------------------

_CONFIG_FIELDS = (
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx", "act_fn",
    "normalization_type", "attention_dir", "positional_embedding_type", "default_prepend_bos", "model_name",
)


def write_siit_model(directory: str | Path, model: HookedTransformer, case: Case, settings: Mapping[str, Any], metrics: Mapping[str, Any], curves: Mapping[str, list]) -> Path:
    """Write the four files of the module docstring into ``directory`` (created if needed)."""
    directory = Path(directory)
    edges = ground_truth_edges(case, model.cfg)
    blob = save({key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()})
    write_atomic(directory / "model.safetensors", lambda tmp: tmp.write_bytes(blob))
    write_json_atomic(directory / "training_curves.json", dict(curves))
    write_json_atomic(directory / "ground_truth.json", {ablation.value: edges for ablation in Ablation})
    write_json_atomic(directory / "config.json", {
        "kind": "siit",
        "format": CONFIG_FORMAT,
        "case": case.name,
        "settings": dict(settings),
        "hooked_transformer_config": {key: getattr(model.cfg, key) for key in _CONFIG_FIELDS},
        "correspondence": {node: list(parts) for node, parts in correspondence(case).items()},
        "metrics": dict(metrics),
        "versions": {pkg: importlib.metadata.version(pkg) for pkg in ("torch", "transformer-lens", "tracr-pypi")},
    })
    return directory


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{path} is missing or not JSON; train the SIIT model again (the models stage).") from None


def load_siit(directory: str | Path, device: str | torch.device = "cpu") -> tuple[HookedTransformer, dict, dict[str, list[str]]]:
    """The model (eval mode), config.json and ground_truth.json written by ``train_siit``."""
    directory = Path(directory)
    config = _read_json(directory / "config.json")
    if config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"{directory / 'config.json'} is not a SIIT config ({CONFIG_FORMAT}); train the SIIT model again.")
    truth = _read_json(directory / "ground_truth.json")
    if set(truth) != {ablation.value for ablation in Ablation}:
        raise ValueError(f"{directory / 'ground_truth.json'} needs the keys {', '.join(Ablation)}; train the SIIT model again.")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{weights} is missing; train the SIIT model again (the models stage).")
    model = _new_model(HookedTransformerConfig(**config["hooked_transformer_config"], device=str(device)))
    model.load_state_dict(load_file(weights, device=str(device)), strict=True)
    return model.eval(), config, truth


# ---- the `siit` model kind -----------------------------------------------------------------------


def _spec_settings(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if key not in ("kind", "case")}


def validate(name: str, spec: dict) -> None:
    """params.yaml spec: ``{kind: siit, case: reverse, <any of SETTINGS>}``."""
    try:
        resolve_settings(get_case(spec.get("case")), _spec_settings(spec))
    except ValueError as error:
        raise ValueError(f"SIIT model {name!r}: {error}") from None


def build(name: str, spec: dict, directory: Path) -> dict[str, float]:
    """Train the SIIT model into ``directory``; returns its final figures and the training time."""
    validate(name, spec)
    result = train_siit(spec["case"], _spec_settings(spec), directory)
    return {key: float(value) for key, value in result.items() if isinstance(value, (int, float))}


def load(directory: Path) -> LoadedModel:
    model, config, truth = load_siit(directory)
    info = {"case": config["case"], "correspondence": config["correspondence"], "metrics": config["metrics"]}
    return LoadedModel(model=model, graph=Graph.from_config(model.cfg), ground_truth=truth, tokenizer=None, info=info)


KIND = ModelKind(validate=validate, build=build, load=load)
