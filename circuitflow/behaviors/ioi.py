"""Indirect object identification (Wang et al. 2022; ACDC's IOI setting), at the word level.

A prompt names two people, then repeats one of them (the subject S) giving something to... the
other one, the indirect object IO, is the answer:
    "When Mary and John went to the store , John gave a drink to"  -> "Mary"
ABBA order (IO first: "Mary and John ... John") and BABA order (S first: "John and Mary ... John")
come in equal shares.  ``TEMPLATES`` are in the style of the IOI paper's; all have the same number
of words (14), so a dataset mixing them is pad-free; words are separated by single spaces, the
comma is a word of its own (a BPE tokenizer glues it to the word before, as natural text does).
Names, places and objects are common words (single GPT-2 tokens in the IOI paper's lists).

Corruption: ACDC's "ABC" dataset: the same template, place and object with the three name slots
(first, second, subject repeat) filled by three different random names, also different from the
clean IO and S, so the corrupted prompt carries no information about which name is the answer.

Score (lower is better): -(logit[IO] - logit[S]) at the last position.  Attribution metric:
logit[IO] - logit[S] at the last position, summed over the batch.  KL: KL(model || circuit) at
the last position (ACDC's metric).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from circuitflow.behaviors.tokenizer import encode_answers, encode_prompts
from circuitflow.metrics import kl_divergence as _kl

DEFAULT_N_EXAMPLES = 100

NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Tom", "James", "Dan", "Sarah", "Paul", "Anne", "Mark", "Laura",
    "Michael", "Lisa", "David", "Emma", "Peter", "Kate", "Steven", "Rachel", "George", "Helen", "Jack", "Jane",
    "Robert", "Susan", "Richard", "Linda", "Brian", "Amy", "Kevin", "Sam", "Chris", "Karen", "Eric", "Ruth",
)
PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park", "market")
OBJECTS: tuple[str, ...] = ("drink", "ring", "book", "bone", "basketball", "computer", "necklace", "snack", "letter", "kiss")
# {A} {B}: the two names of the first clause; {S}: the subject repeated; the prompt ends before IO.
TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {PLACE} , {S} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE} , {S} gave a {OBJECT} to",
    "While {A} and {B} were at the {PLACE} , {S} gave a {OBJECT} to",
    "{A} and {B} got a {OBJECT} at the {PLACE} , {S} gave it to",
    "After {A} and {B} arrived at the {PLACE} , {S} handed a {OBJECT} to",
    "{A} and {B} had fun at the {PLACE} . {S} gave a {OBJECT} to",
    "Later {A} and {B} met at the {PLACE} , {S} gave a {OBJECT} to",
)
ORDERS: tuple[str, ...] = ("ABBA", "BABA")


def _fill(template: str, first: str, second: str, subject: str, place: str, obj: str) -> str:
    return template.format(A=first, B=second, S=subject, PLACE=place, OBJECT=obj)


def _generate(n: int, rng: np.random.Generator) -> pl.DataFrame:
    rows: dict[str, list] = {k: [] for k in ("template", "order", "place", "object", "clean", "corrupted", "io", "s", "corrupted_names")}
    for i in range(n):
        template = int(rng.integers(len(TEMPLATES)))
        order = ORDERS[i % 2]  # equal shares, alternating
        picks = rng.choice(len(NAMES), size=5, replace=False)
        io, s, x, y, z = (NAMES[j] for j in picks)
        place, obj = PLACES[rng.integers(len(PLACES))], OBJECTS[rng.integers(len(OBJECTS))]
        first, second = (io, s) if order == "ABBA" else (s, io)
        rows["template"].append(template)
        rows["order"].append(order)
        rows["place"].append(place)
        rows["object"].append(obj)
        rows["clean"].append(_fill(TEMPLATES[template], first, second, s, place, obj))
        rows["corrupted"].append(_fill(TEMPLATES[template], x, y, z, place, obj))
        rows["io"].append(io)
        rows["s"].append(s)
        rows["corrupted_names"].append([x, y, z])
    return pl.DataFrame(rows, schema={
        "template": pl.Int64, "order": pl.String, "place": pl.String, "object": pl.String, "clean": pl.String, "corrupted": pl.String,
        "io": pl.String, "s": pl.String, "corrupted_names": pl.List(pl.String),
    })


def make_dataset(n_examples: int | None, seed: int) -> pl.DataFrame:
    """``n_examples`` (default 100) IOI prompts, deterministic from ``seed``.

    Columns: ``template`` (index into TEMPLATES), ``order`` ("ABBA" | "BABA", alternating),
    ``place``, ``object``, ``clean``, ``corrupted`` (text, 14 words), ``io``, ``s`` (the answer and the subject name),
    ``corrupted_names`` (the three names of the corrupted prompt).
    """
    n = DEFAULT_N_EXAMPLES if n_examples is None else n_examples
    if n < 1:
        raise ValueError(f"IOI needs at least one example, got n_examples={n}.")
    return _generate(n, np.random.default_rng([seed, 0]))


def training_examples(n: int, seed: int) -> pl.DataFrame:
    """``n`` clean prompts (another random stream than ``make_dataset``'s) with ``target`` = IO."""
    frame = _generate(n, np.random.default_rng([seed, 1]))
    return frame.select(pl.col("clean").alias("prompt"), pl.col("io").alias("target"))


def vocabulary() -> list[str]:
    """Every word an IOI prompt or answer can hold, sorted."""
    words = {w for t in TEMPLATES for w in t.split(" ") if not w.startswith("{")}
    return sorted(words | set(NAMES) | set(PLACES) | set(OBJECTS))


def encode(frame: pl.DataFrame, tokenizer: PreTrainedTokenizerBase) -> dict[str, Tensor]:
    """``clean``, ``corrupted`` (batch, pos) ids, BOS first; ``io``, ``s`` (batch,) ids."""
    return {
        "clean": encode_prompts(tokenizer, frame["clean"].to_list(), column="clean"),
        "corrupted": encode_prompts(tokenizer, frame["corrupted"].to_list(), column="corrupted"),
        "io": encode_answers(tokenizer, frame["io"].to_list(), column="io"),
        "s": encode_answers(tokenizer, frame["s"].to_list(), column="s"),
    }


def logit_difference(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """logit[IO] - logit[S] at the last position: logits (batch, pos, vocab) -> (batch,)."""
    last = logits[:, -1]
    return last.gather(-1, examples["io"].long()[:, None])[:, 0] - last.gather(-1, examples["s"].long()[:, None])[:, 0]


def score(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Per-example score, lower is better: -(logit[IO] - logit[S]) of the circuit at the last
    position.  circuit_logits, model_logits: (batch, pos, vocab) -> (batch,)."""
    return -logit_difference(circuit_logits, examples)


def attribution_metric(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Sum over the batch of logit[IO] - logit[S] at the last position (higher = more IOI).
    logits: (batch, pos, vocab) -> scalar."""
    return logit_difference(logits, examples).sum()


def kl_divergence(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """KL(model || circuit) at the last position, lower is better: (batch, pos, vocab) -> (batch,)."""
    return _kl(model_logits[:, -1], circuit_logits[:, -1])
