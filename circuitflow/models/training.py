"""Training shared by the trained model kinds (``organisms.py``, ``mamba.py``; ``siit.py`` uses
``deterministic_torch``): the loop, its loss, its learning-rate schedule and its held-out evaluation.

``fit`` builds the model under ``deterministic_torch(seed)`` (initialisation under a forked torch
RNG, batches from a seeded generator, deterministic algorithms, one thread), so the same settings
give the same weights on any machine.

Held-out accuracy (higher is better; every other number here is a loss, lower is better):
    ioi, docstring   the last position's top-1 prediction is the answer;
    greater-than     the top-1 prediction is a two-digit year strictly after the prompt's;
    induction        top-1 accuracy on the predictable repeated words (the ``loss_mask`` positions);
                     also the loss on the random first half vs the repeated half, and each head's
                     induction score (mean attention from a repeated word to the word after its first
                     occurrence; ``induction_scores``).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitflow.numerics import deterministic_torch  # noqa: F401  (the trainers import it from here)


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
