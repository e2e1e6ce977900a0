"""Posterior organisms: is a circuit a property of one weight vector or of the posterior?

The ``posterior`` model kind (``settings.PosteriorModel``) starts from an organism: its tokenizer,
training data, held-out sample and architecture (``organisms.prepare_training``, ``train_organism``),
trained by Adam for ``steps`` as a warm start.  From there SG-MCMC (``sgmcmc.py``: SGLD or SGHMC,
cyclical step size, ``prior``, ``temperature``) draws ``n_samples`` weight vectors, one at the end
of each cycle of ``cycle_steps``.  The potential is U = N * (mean masked loss of a batch) - log p(theta)
with N the number of training examples, and eps = ``step_size`` / N (step_size is the step per
training example, comparable across N).  Beside them, the baseline: ``n_samples`` organisms trained
by Adam from seeds 0 .. S-1 for as many steps as the warm start and the chain together.

The directory holds one organism per member, each loadable by ``organisms.load_organism``:
    warm_start/             the Adam warm start
    sample_<i>/             posterior sample i (config.json: the warm start's, its own held-out metrics)
    sgd_<i>/                the baseline organism of seed i
    config.json             {"kind": "posterior", "format", "behavior", "settings", "members":
                            [[name, group], ...] (group: posterior | sgd), "metrics", "versions"}
metrics: ``accuracy_posterior_mean`` (mean over samples), ``accuracy_posterior_bma`` (the Bayesian
model average: the mean of the samples' probabilities), ``accuracy_sgd_mean``,
``accuracy_sgd_ensemble`` and ``accuracy_warm_start`` (held-out, higher is better).  The same
settings give the same bytes (``training.deterministic_torch``; the chain's noise and batches from
generators seeded by ``seed``).  Loading the directory as a model gives sample 0.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save

from circuitflow.io import write_atomic, write_json_atomic
from circuitflow.models import organisms
from circuitflow.models.kind import LoadedModel, ModelKind
from circuitflow.models.sgmcmc import cyclical_step_size, log_prior, run_chain
from circuitflow.models.training import (
    correct,
    deterministic_torch,
    evaluate,
    masked_loss,
)
from circuitflow.settings import SettingsError, as_data, parse
from circuitflow.settings.models import PosteriorModel

CONFIG_FORMAT = "circuitflow-posterior-1"


def posterior_settings(name: str, spec: dict) -> PosteriorModel:
    """``spec`` (params.yaml's ``models.<name>``) as ``PosteriorModel``; a mistake is one sentence."""
    try:
        return parse(PosteriorModel, {k: (v.value if hasattr(v, "value") else v) for k, v in spec.items()}, f"models.{name}")
    except SettingsError as error:
        raise ValueError(str(error)) from None


def draw_samples(model: torch.nn.Module, data: dict[str, torch.Tensor], settings: PosteriorModel) -> list[dict[str, torch.Tensor]]:
    """``settings.n_samples`` state dicts of ``model`` drawn by SG-MCMC from its current weights
    (``model`` is left at the last sample).  data: ``tokens`` (n_train, pos), ``loss_mask`` (n_train, pos)."""
    names = [name for name, _ in model.named_parameters()]
    params = [param for _, param in model.named_parameters()]
    n_train = data["tokens"].shape[0]
    batches = torch.Generator().manual_seed(settings.seed + 1)

    def potential() -> torch.Tensor:
        index = torch.randint(n_train, (settings.batch_size,), generator=batches)
        tokens, mask = data["tokens"][index], data["loss_mask"][index]
        return n_train * masked_loss(model(tokens), tokens, mask) - log_prior(params, settings.prior, settings.prior_scale)

    cycle = settings.cycle_steps
    model.train()
    kept = run_chain(potential, params, settings.sampler, settings.n_samples * cycle,
                     lambda step: cyclical_step_size(step, cycle, settings.step_size / n_train),
                     temperature=settings.temperature, friction=settings.friction, keep=lambda step: (step + 1) % cycle == 0, seed=settings.seed)
    model.eval()
    buffers = {name: value.detach().clone() for name, value in model.state_dict().items() if name not in names}
    return [{**buffers, **dict(zip(names, sample))} for sample in kept]


def _write_member(directory: Path, warm: Path, state: dict[str, torch.Tensor], metrics: dict, extra: dict) -> None:
    """An organism directory: the warm start's config (its metrics replaced) and tokenizer, ``state``'s weights."""
    directory.mkdir(parents=True, exist_ok=True)
    blob = save({key: value.detach().cpu().contiguous() for key, value in sorted(state.items())})
    write_atomic(directory / "model.safetensors", lambda tmp: tmp.write_bytes(blob))
    config = json.loads((warm / "config.json").read_text())
    write_json_atomic(directory / "config.json", {**config, "metrics": metrics, "posterior": extra})
    shutil.copytree(warm / "tokenizer", directory / "tokenizer", dirs_exist_ok=True)


def _ensemble_accuracy(model: torch.nn.Module, states: list[dict[str, torch.Tensor]], behavior: str, heldout: dict[str, torch.Tensor]) -> float:
    """Held-out accuracy of the mean of the members' probabilities (``model`` is left at the last state)."""
    with torch.no_grad():
        probabilities = 0
        for state in states:
            model.load_state_dict(state)
            probabilities = probabilities + torch.softmax(model(heldout["clean"]).double(), -1)
        return float(correct(behavior, torch.log(probabilities / len(states)), heldout).mean())


def _sgd_baseline(settings: PosteriorModel, directory: Path, progress: bool) -> list[dict[str, torch.Tensor]]:
    """Train the baseline organisms ``sgd_<i>`` and return their state dicts."""
    organism = settings.organism()
    steps = organism["steps"] + settings.n_samples * settings.cycle_steps
    states = []
    for seed in range(settings.n_samples):
        organisms.train_organism(settings.behavior, {**organism, "seed": seed, "steps": steps}, directory / f"sgd_{seed}", progress)
        model, _, _ = organisms.load_organism(directory / f"sgd_{seed}")
        states.append(model.state_dict())
    return states


def build_posterior(settings: PosteriorModel, directory: str | Path, progress: bool = True) -> dict[str, float]:
    """Write the posterior organism (see the module docstring) into ``directory``; returns its metrics
    with the wall-clock ``train_seconds`` and ``train_cpu_seconds`` (neither written)."""
    directory, start, start_cpu = Path(directory), time.perf_counter(), time.process_time()
    organism, warm = settings.organism(), Path(directory) / "warm_start"
    organisms.train_organism(settings.behavior, organism, warm, progress)
    resolved = organisms.resolve_settings(settings.behavior, organism)
    _, heldout, data = organisms.prepare_training(settings.behavior, resolved, warm)
    model, _, _ = organisms.load_organism(warm)
    warm_state = {k: v.clone() for k, v in model.state_dict().items()}
    with deterministic_torch(settings.seed):
        samples = draw_samples(model, data, settings)
        accuracies = []
        for i, state in enumerate(samples):
            model.load_state_dict(state)
            figures = evaluate(model, settings.behavior, heldout)
            accuracies.append(figures["accuracy"])
            _write_member(directory / f"sample_{i}", warm, state, figures, {"sample": i, "temperature": settings.temperature})
        bma = _ensemble_accuracy(model, samples, settings.behavior, heldout)
    sgd = _sgd_baseline(settings, directory, progress)
    sgd_accuracy = [json.loads((directory / f"sgd_{i}" / "config.json").read_text())["metrics"]["accuracy"] for i in range(settings.n_samples)]
    with deterministic_torch(settings.seed):
        ensemble = _ensemble_accuracy(model, sgd, settings.behavior, heldout)
    model.load_state_dict(warm_state)
    metrics = {"accuracy_warm_start": evaluate(model, settings.behavior, heldout)["accuracy"],
               "accuracy_posterior_mean": sum(accuracies) / len(accuracies), "accuracy_posterior_bma": bma,
               "accuracy_sgd_mean": sum(sgd_accuracy) / len(sgd_accuracy), "accuracy_sgd_ensemble": ensemble}
    members = [[f"sample_{i}", "posterior"] for i in range(settings.n_samples)] + [[f"sgd_{i}", "sgd"] for i in range(settings.n_samples)]
    write_json_atomic(directory / "config.json", {
        "kind": "posterior", "format": CONFIG_FORMAT, "behavior": settings.behavior, "settings": as_data(settings),
        "members": members, "metrics": metrics,
        "versions": {pkg: importlib.metadata.version(pkg) for pkg in ("torch", "transformer-lens")},
    })
    return {**metrics, "train_seconds": time.perf_counter() - start, "train_cpu_seconds": time.process_time() - start_cpu}


def members(directory: str | Path) -> list[tuple[str, str]]:
    """The (member directory name, group) pairs of a posterior organism; group: posterior | sgd."""
    path = Path(directory) / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    if config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"{path} is not a posterior organism's config ({CONFIG_FORMAT}); build it again (the models stage).")
    return [tuple(member) for member in config["members"]]


# ---- the `posterior` model kind ------------------------------------------------------------------
def validate(name: str, spec: dict) -> None:
    posterior_settings(name, spec)


def build(name: str, spec: dict, directory: Path) -> dict[str, float]:
    return build_posterior(posterior_settings(name, spec), directory)


def load(directory: Path) -> LoadedModel:
    """Sample 0, as an organism (its info also names the members)."""
    loaded = organisms.load(Path(directory) / members(directory)[0][0])
    return dataclasses.replace(loaded, info={**loaded.info, "members": members(directory)})


KIND = ModelKind(validate=validate, build=build, load=load)
