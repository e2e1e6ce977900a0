"""BIG-bench-style tasks as behaviors: a user's JSON file ``{"examples": [{"input": "...",
"target": "..."}, ...]}`` (the ``examples`` list of a BIG-bench JSON task; other keys are ignored).

Each example's ``input`` is the clean prompt, with its whitespace collapsed to single spaces (the
word-level text every behavior uses; words are what the tokenizer sees, so write punctuation as
separate words: "2 + 3 = ?" not "2+3=?"); ``target`` is the answer: ONE word (a string, or a list
holding one string), one token of the model's tokenizer.  All inputs must have the same number of
words (the pipeline runs without padding).

Corruption (like resample ablation in the papers): example i is paired with the input of example
sigma(i), sigma a seeded random derangement in which every partner has ANOTHER target, so the
corrupted input argues for another answer.  sigma is drawn uniformly among such derangements by
rejection (up to 1,000 draws); past that (one target holding nearly half the examples) a rotation
of the examples grouped by target is used, which always works when no target holds more than half.

Score (lower is better): -(logit[target] - logit[corrupted example's target]) at the last
position, a logit difference like IOI's.  Attribution metric: that difference summed over the
batch.  KL: KL(model || circuit) at the last position.

Errors name the example's index in the file: a missing or non-string field, a target that is not
one word, inputs of different lengths, and (at ``encode``) a word the tokenizer cannot encode.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from circuitflow.behaviors.tokenizer import bos_id, encode_words
from circuitflow.metrics import kl_divergence as _kl

PREFIX = "bigbench:"


def read_examples(path: str | Path) -> pl.DataFrame:
    """The file's examples, checked: columns ``index`` (position in the file), ``input`` (words
    joined by single spaces), ``target`` (one word)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"BIG-bench task file {path} does not exist; give the path of a JSON file with an 'examples' list.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"BIG-bench task file {path} is not valid JSON ({error.msg} at line {error.lineno}); fix the file.") from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or len(examples) < 2:
        raise ValueError(f"BIG-bench task file {path} needs an 'examples' list of at least 2 {{'input', 'target'}} objects.")
    inputs, targets = [], []
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise ValueError(f"Example {i} of {path} is not an object; every example needs 'input' and 'target' strings.")  # noqa: TRY004 (bad input is a ValueError here)
        for field in ("input", "target"):
            if field not in example:
                raise ValueError(f"Example {i} of {path} has no {field!r} field; every example needs 'input' and 'target' strings.")
        target = example["target"]
        if isinstance(target, list) and len(target) == 1:
            target = target[0]
        if not isinstance(example["input"], str) or not isinstance(target, str):
            raise ValueError(f"Example {i} of {path}: 'input' must be a string and 'target' a string (or a list of one), got {type(example['input']).__name__} and {type(example['target']).__name__}.")  # noqa: TRY004
        words = example["input"].split()
        if not words:
            raise ValueError(f"Example {i} of {path} has an empty 'input'; give a prompt.")
        if len(target.split()) != 1:
            raise ValueError(f"Example {i} of {path} has target {target!r}, which is not one word; the score compares single-token answers.")
        inputs.append(" ".join(words))
        targets.append(target.strip())
    lengths = [len(text.split(" ")) for text in inputs]
    for i, length in enumerate(lengths):
        if length != lengths[0]:
            raise ValueError(
                f"Example {i} of {path} has {length} input words but example 0 has {lengths[0]}; all inputs must have the "
                "same length (no padding): keep the examples of one length in the file."
            )
    return pl.DataFrame({"index": list(range(len(inputs))), "input": inputs, "target": targets},
                        schema={"index": pl.Int64, "input": pl.String, "target": pl.String})


def pairing(targets: list[str], rng: np.random.Generator, tries: int = 1000) -> np.ndarray:
    """A permutation sigma of range(n) with targets[sigma[i]] != targets[i] for every i (hence no
    fixed point): uniform by rejection, else a rotation by the largest target group."""
    n = len(targets)
    label, count = Counter(targets).most_common(1)[0]
    if 2 * count > n:
        raise ValueError(
            f"{count} of the {n} examples have target {label!r}, more than half, so they cannot all be paired with an "
            "example of another target; add examples with other targets or use fewer of these."
        )
    codes = np.array([sorted(set(targets)).index(t) for t in targets])
    for _ in range(tries):
        sigma = rng.permutation(n)
        if (codes[sigma] != codes).all():
            return sigma
    order = np.lexsort((rng.permutation(n), codes))  # grouped by target, shuffled within a group
    sigma = np.empty(n, dtype=np.int64)
    sigma[order] = order[(np.arange(n) + count) % n]
    return sigma


def make_dataset(path: str | Path, n_examples: int | None, seed: int) -> pl.DataFrame:
    """The task's dataset, deterministic from ``seed``: all examples (``n_examples`` None) or a
    seeded sample without replacement kept in file order.

    Columns: ``index`` (in the file), ``clean``, ``corrupted`` (text), ``answer`` (target),
    ``corrupted_answer`` (the partner's target, always another word).
    """
    examples = read_examples(path)
    rng = np.random.default_rng([seed, 0])
    if n_examples is not None:
        if not 2 <= n_examples <= examples.height:
            raise ValueError(f"BIG-bench task {path} has {examples.height} examples; ask for 2 to {examples.height}, not {n_examples}.")
        examples = examples[np.sort(rng.choice(examples.height, size=n_examples, replace=False)).tolist()]
    targets = examples["target"].to_list()
    sigma = pairing(targets, rng).tolist()
    inputs = examples["input"].to_list()
    return pl.DataFrame({
        "index": examples["index"],
        "clean": inputs,
        "corrupted": [inputs[j] for j in sigma],
        "answer": targets,
        "corrupted_answer": [targets[j] for j in sigma],
    })


def training_examples(path: str | Path, n: int, seed: int) -> pl.DataFrame:
    """``n`` examples drawn with replacement from the file (no held-out split): ``prompt`` = input,
    ``target`` = target."""
    examples = read_examples(path)
    picks = np.random.default_rng([seed, 1]).integers(examples.height, size=n).tolist()
    return pl.DataFrame({"prompt": examples["input"].to_list(), "target": examples["target"].to_list()})[picks]


def vocabulary(path: str | Path) -> list[str]:
    """Every word of the file's inputs and targets, sorted."""
    examples = read_examples(path)
    words = {w for text in examples["input"].to_list() for w in text.split(" ")}
    return sorted(words | set(examples["target"].to_list()))


def encode(frame: pl.DataFrame, tokenizer: PreTrainedTokenizerBase, path: str | Path = "the task file") -> dict[str, Tensor]:
    """``clean``, ``corrupted`` (batch, pos) ids, BOS first; ``answer``, ``corrupted_answer``
    (batch,) ids.  Errors name the example's index in the file."""
    first = bos_id(tokenizer)
    indices = frame["index"].to_list()
    rows: dict[str, list] = {"clean": [], "answer": [], "corrupted": [], "corrupted_answer": []}
    # the example's own words first, so an unencodable word is reported at the example that holds it
    for column, answer_column, whose in (("clean", "answer", ""), ("corrupted", "corrupted_answer", "the partner of ")):
        for index, text, answer in zip(indices, frame[column].to_list(), frame[answer_column].to_list()):
            rows[column].append([first, *encode_words(tokenizer, text.split(" "), where=f" (input of {whose}example {index} of {path})")])
            rows[answer_column].append(encode_words(tokenizer, [answer], where=f" (target of {whose}example {index} of {path})", first=False)[0])
            if len(rows[column][-1]) != len(rows[column][0]):
                raise ValueError(f"The input of {whose}example {index} of {path} has another number of tokens than the first one's; all inputs must have the same number of words.")
    return {name: torch.tensor(values, dtype=torch.long) for name, values in rows.items()}


def logit_difference(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """logit[target] - logit[corrupted target] at the last position: (batch, pos, vocab) -> (batch,)."""
    last = logits[:, -1]
    return last.gather(-1, examples["answer"].long()[:, None])[:, 0] - last.gather(-1, examples["corrupted_answer"].long()[:, None])[:, 0]


def score(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Per-example score, lower is better: -(logit[target] - logit[corrupted target]) of the
    circuit at the last position.  circuit_logits, model_logits: (batch, pos, vocab) -> (batch,)."""
    return -logit_difference(circuit_logits, examples)


def attribution_metric(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Sum over the batch of logit[target] - logit[corrupted target] (higher = more of the task).
    logits: (batch, pos, vocab) -> scalar."""
    return logit_difference(logits, examples).sum()


def kl_divergence(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """KL(model || circuit) at the last position, lower is better: (batch, pos, vocab) -> (batch,)."""
    return _kl(model_logits[:, -1], circuit_logits[:, -1])
