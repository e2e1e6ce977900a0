"""The two tracr behaviors: ``reverse`` (program ``reverse``) and ``proportion`` (program ``frac_prevs``).

Datasets: clean inputs are BOS then ``max_seq_len - 1`` = 4 tokens, all of them (81 for reverse, 256
for proportion, in lexicographic id order) or a seeded sample without replacement, kept in that
order.  Not full length: at full length the reverse program's length is the same on every input, and
zero-ablating the head and MLP that compute it happens to give that same length (the MLP's lookup
table maps 0 to the top bucket), so 2 of its 11 ground-truth edges have no effect on the dataset and
no method can find them (measured: every method's edge AUC 0.818; 1.000 for ACDC at length 4).  ``corrupted[i] = clean[sigma(i)]`` for a seeded random derangement
``sigma`` (a uniformly drawn permutation without fixed points), so every corrupted input is another
example of the same dataset, as resample ablation needs.  Expected outputs come from evaluating the
RASP program itself, not the compiled model.

Score (lower is better): per example, the mean squared difference between a circuit's output and the
full model's at the output positions 1.. (everything after BOS): over the logits for reverse, over
the single numerical output for proportion (Shi et al. 2024, "tracr MSE against the full model").
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import polars as pl
import torch
from torch import Tensor

from circuitflow.behaviors.tracr_programs import TracrInfo, enumerate_inputs, make_program, tracr_info

TracrBehavior = Literal["reverse", "proportion"]
TRACR_BEHAVIORS: tuple[str, ...] = get_args(TracrBehavior)
PROGRAM: dict[str, str] = {"reverse": "reverse", "proportion": "frac_prevs"}


def dataset_length(info: TracrInfo) -> int:
    """Tokens after BOS in every dataset input (see the module docstring)."""
    return info.max_seq_len - 1


def _check_name(name: str) -> None:
    if name not in TRACR_BEHAVIORS:
        hint = " (the behavior of the frac_prevs program is 'proportion')" if name == "frac_prevs" else ""
        raise ValueError(f"Unknown tracr behavior {name!r}{hint}; choose one of {', '.join(TRACR_BEHAVIORS)}.")


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(n) without fixed points (rejection sampling: about
    e ~ 2.7 draws on average)."""
    if n < 2:
        raise ValueError(f"A derangement needs at least 2 elements, got {n}; use n_examples >= 2.")
    while True:
        sigma = rng.permutation(n)
        if not (sigma == np.arange(n)).any():
            return sigma


def _expected_outputs(name: str, info: TracrInfo, clean: np.ndarray) -> list[list]:
    """The RASP program's output at positions 1.. of each clean input: output ids for reverse,
    fractions for proportion."""
    program = make_program(PROGRAM[name])
    answers = []
    for row in clean:
        values = program([info.input_tokens[i] for i in row[1:]])
        if info.categorical_output:
            answers.append([info.output_tokens.index(v) for v in values])
        else:  # RASP's mean of a single boolean is the boolean itself
            answers.append([float(v) for v in values])
    return answers


def make_dataset(name: TracrBehavior, n_examples: int | None, seed: int, info: TracrInfo | None = None) -> pl.DataFrame:
    """The dataset of a tracr behavior, deterministic from ``seed`` (``numpy.random.default_rng``).

    Columns: ``clean``, ``corrupted`` (list[int64] token ids, BOS first, length max_seq_len) and
    ``answer``: the expected output at positions 1.., list[int64] output ids for reverse, list[float64]
    for proportion.  ``info``: the model's ``TracrInfo`` (from ``load_tracr_info``); without it the
    program is compiled to get tracr's encoding (a few seconds).
    """
    _check_name(name)
    if info is None:
        info = tracr_info(PROGRAM[name])
    if info.name != PROGRAM[name]:
        raise ValueError(f"The tracr info describes the {info.name!r} program, but {name!r} needs {PROGRAM[name]!r}.")
    everything = enumerate_inputs(info, dataset_length(info)).numpy()
    rng = np.random.default_rng(seed)
    if n_examples is not None:
        if not 2 <= n_examples <= len(everything):
            raise ValueError(f"The {name} behavior has {len(everything)} inputs of length {dataset_length(info)}; ask for 2 to {len(everything)} examples, not {n_examples}.")
        everything = everything[np.sort(rng.choice(len(everything), size=n_examples, replace=False))]
    sigma = derangement(len(everything), rng)
    answer_type = pl.Int64 if info.categorical_output else pl.Float64
    return pl.DataFrame(
        {
            "clean": everything.tolist(),
            "corrupted": everything[sigma].tolist(),
            "answer": _expected_outputs(name, info, everything),
        },
        schema={"clean": pl.List(pl.Int64), "corrupted": pl.List(pl.Int64), "answer": pl.List(answer_type)},
    )


def score(name: TracrBehavior, circuit_logits: Tensor, model_logits: Tensor) -> Tensor:
    """Per-example score, lower is better: mean over positions 1.. and outputs of the squared
    difference between the circuit's and the full model's outputs.

    circuit_logits, model_logits: (batch, pos, vocab); vocab is 1 for proportion (its numerical
    output).  Returns (batch,).
    """
    _check_name(name)
    if circuit_logits.shape != model_logits.shape or circuit_logits.dim() != 3:
        raise ValueError(
            f"Score needs circuit and model outputs of one shape (batch, pos, vocab), got "
            f"{tuple(circuit_logits.shape)} and {tuple(model_logits.shape)}."
        )
    if name == "proportion" and circuit_logits.shape[-1] != 1:
        raise ValueError(f"The proportion model has one numerical output, got {circuit_logits.shape[-1]} outputs per position.")
    diff = circuit_logits[:, 1:] - model_logits[:, 1:]
    return diff.pow(2).mean(dim=(1, 2))


def tokens(dataset: pl.DataFrame, column: str = "clean") -> Tensor:
    """A dataset column of token ids as a (batch, pos) long tensor."""
    return torch.tensor(dataset[column].to_list(), dtype=torch.long)
