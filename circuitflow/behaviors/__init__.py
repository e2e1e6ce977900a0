"""Behaviors: a dataset plus a metric that elicits one thing a model does (DESIGN.md "Words").

Each behavior gives
  make_dataset(n_examples, seed) -> polars DataFrame with ``clean`` and ``corrupted`` token ids
      (list[int], BOS first) and whatever its scores need (``answer``, ...); deterministic from the seed;
  score(circuit_logits, model_logits, examples) -> (batch,) per-example score, LOWER IS BETTER
      (REFERENCE.md 5), used for faithfulness and the hypothesis tests;
  attribution_metric(logits, examples) -> scalar summed over the batch, HIGHER = more of the
      behavior: what gradient-based discovery (EAP) differentiates.  It must not be flat at the
      full model, which rules out the MSE-to-the-model score.
``examples`` is a dict of the dataset's columns as tensors, restricted to the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import polars as pl
import torch

from circuitflow.behaviors import tracr as tracr_behaviors

Examples = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Behavior:
    name: str
    make_dataset: Callable[[int | None, int], pl.DataFrame]
    score: Callable[[torch.Tensor, torch.Tensor, Examples], torch.Tensor]
    attribution_metric: Callable[[torch.Tensor, Examples], torch.Tensor]


def _answer_logit_margin(logits: torch.Tensor, examples: Examples) -> torch.Tensor:
    """Sum over examples and output positions of logit[answer] - mean logit (tracr-reverse)."""
    outputs = logits[:, 1:]
    answer = examples["answer"].long().unsqueeze(-1)
    return (outputs.gather(-1, answer).squeeze(-1) - outputs.mean(-1)).sum()


def _numerical_output(logits: torch.Tensor, examples: Examples) -> torch.Tensor:
    """Sum over examples and output positions of the numerical output (tracr-proportion)."""
    return logits[:, 1:, 0].sum()


def _tracr(name: str, short: str, metric) -> Behavior:
    return Behavior(
        name=name,
        make_dataset=lambda n_examples, seed: tracr_behaviors.make_dataset(short, n_examples, seed),
        score=lambda circuit_logits, model_logits, examples: tracr_behaviors.score(short, circuit_logits, model_logits),
        attribution_metric=metric,
    )


BEHAVIORS: dict[str, Behavior] = {
    "tracr-reverse": _tracr("tracr-reverse", "reverse", _answer_logit_margin),
    "tracr-proportion": _tracr("tracr-proportion", "proportion", _numerical_output),
}


def get_behavior(name: str) -> Behavior:
    if name not in BEHAVIORS:
        raise ValueError(f"Unknown behavior {name!r}; known behaviors: {', '.join(BEHAVIORS)}.")
    return BEHAVIORS[name]
