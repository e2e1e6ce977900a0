"""Induction (Olsson et al. 2022; ACDC's induction setting), on repeated random word sequences.

A clean example is L = ``HALF_LENGTH`` (10) distinct words drawn at random from ``WORDS``, then
the same L words again ("[BOS] s1 .. sL s1 .. sL", 2L + 1 tokens, pad-free).  From the second
copy's first word on, each next word can be read off the first copy: induction predicts it.

Corruption: another example's sequence (``corrupted[i] = clean[sigma(i)]`` for a seeded random
derangement sigma).  ACDC's induction task (natural text, redwood_attn_2l) patched in the
validation batch shuffled along the examples, i.e. other examples' text: this is that, with
every corrupted row also a repeated sequence but of other words.  (Shi et al. run induction
under zero ablation, where the corrupted inputs are not used.)

Score (lower is better): the mean negative log-likelihood of the clean next word over the
``loss_mask`` positions t = L+1 .. 2L-1 (BOS at 0: the logits at t predict token t+1, the repeated
words s2 .. sL; s1's repeat is not predictable).  Attribution metric: minus that loss, summed over
the batch.  KL: KL(model || circuit) averaged over the same positions (ACDC's metric).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from circuitflow.behaviors.tokenizer import encode_prompts
from circuitflow.behaviors.tracr import derangement
from circuitflow.metrics import kl_divergence as _kl

DEFAULT_N_EXAMPLES = 100
HALF_LENGTH = 10
WORDS: tuple[str, ...] = (
    "apple", "river", "stone", "cloud", "table", "green", "music", "paper", "horse", "light",
    "water", "night", "field", "house", "glass", "bread", "chair", "train", "plant", "smile",
    "ocean", "metal", "dream", "heart", "sugar", "tiger", "radio", "storm", "money", "phone",
    "bird", "fish", "tree", "road", "door", "wall", "book", "king", "ship", "lake",
    "snow", "fire", "wind", "rain", "moon", "star", "gold", "salt", "milk", "rice",
    "hat", "cup", "box", "car", "dog", "cat", "egg", "map", "pen", "bag",
    "blue", "red", "cold", "warm", "fast", "slow", "soft", "loud", "dark", "deep",
    "north", "south", "east", "west", "sound", "voice", "watch", "plate", "shirt", "coat",
)


def _sequences(n: int, half_length: int, rng: np.random.Generator) -> list[list[str]]:
    pool = sorted(set(WORDS))
    if not 2 <= half_length <= len(pool):
        raise ValueError(f"Induction's half length must be 2 to {len(pool)} (distinct words from the pool), got {half_length}.")
    return [[pool[i] for i in rng.choice(len(pool), size=half_length, replace=False)] for _ in range(n)]


def make_dataset(n_examples: int | None, seed: int, half_length: int = HALF_LENGTH) -> pl.DataFrame:
    """``n_examples`` (default 100, at least 2) repeated sequences, deterministic from ``seed``.

    Columns: ``clean``, ``corrupted`` (text, 2 * half_length words; corrupted = a deranged other
    row), ``half_length`` (int).
    """
    n = DEFAULT_N_EXAMPLES if n_examples is None else n_examples
    if n < 2:
        raise ValueError(f"Induction corrupts each example with another one, so it needs n_examples >= 2, got {n}.")
    rng = np.random.default_rng([seed, 0])
    clean = [" ".join(seq + seq) for seq in _sequences(n, half_length, rng)]
    sigma = derangement(n, rng)
    return pl.DataFrame(
        {"clean": clean, "corrupted": [clean[j] for j in sigma], "half_length": [half_length] * n},
        schema={"clean": pl.String, "corrupted": pl.String, "half_length": pl.Int64},
    )


def training_examples(n: int, seed: int, half_length: int = HALF_LENGTH) -> pl.DataFrame:
    """``n`` sequences (another random stream than ``make_dataset``'s): ``prompt`` = the random
    half and the first repeated word, ``target`` = the rest of the repeat (the loss positions)."""
    rows = _sequences(n, half_length, np.random.default_rng([seed, 1]))
    return pl.DataFrame({
        "prompt": [" ".join([*seq, seq[0]]) for seq in rows],
        "target": [" ".join(seq[1:]) for seq in rows],
    })


def vocabulary() -> list[str]:
    """Every word a sequence can hold, sorted."""
    return sorted(set(WORDS))


def encode(frame: pl.DataFrame, tokenizer: PreTrainedTokenizerBase) -> dict[str, Tensor]:
    """``clean``, ``corrupted`` (batch, pos = 2L + 1) ids, BOS first; ``loss_mask`` (batch, pos)
    bool, True at t = L+1 .. 2L-1 (the logits there predict the repeated words s2 .. sL)."""
    clean = encode_prompts(tokenizer, frame["clean"].to_list(), column="clean")
    corrupted = encode_prompts(tokenizer, frame["corrupted"].to_list(), column="corrupted")
    if clean.shape != corrupted.shape:
        raise ValueError(f"Induction's clean and corrupted sequences differ in length ({clean.shape[1]} and {corrupted.shape[1]} tokens); make both with make_dataset.")
    half = (clean.shape[1] - 1) // 2
    if clean.shape[1] != 2 * half + 1 or not torch.equal(clean[:, 1 : half + 1], clean[:, half + 1 :]):
        raise ValueError("An induction clean sequence is not a sequence followed by itself; make the dataset with make_dataset.")
    positions = torch.arange(clean.shape[1])
    loss_mask = ((positions >= half + 1) & (positions <= 2 * half - 1)).expand(clean.shape[0], -1).clone()
    return {"clean": clean, "corrupted": corrupted, "loss_mask": loss_mask}


def nll(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Mean over the ``loss_mask`` positions of -log p(clean token t+1 | logits at t):
    logits (batch, pos, vocab) -> (batch,)."""
    logprobs = F.log_softmax(logits[:, :-1], dim=-1)
    labels = examples["clean"].long()[:, 1:]
    mask = examples["loss_mask"][:, :-1].to(logprobs.dtype)
    token_nll = -logprobs.gather(-1, labels[..., None])[..., 0]
    return (token_nll * mask).sum(-1) / mask.sum(-1)


def score(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Per-example score, lower is better: the circuit's masked NLL on the repeated half.
    circuit_logits, model_logits: (batch, pos, vocab) -> (batch,)."""
    return nll(circuit_logits, examples)


def attribution_metric(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Minus the masked NLL, summed over the batch (higher = more induction).
    logits: (batch, pos, vocab) -> scalar."""
    return -nll(logits, examples).sum()


def kl_divergence(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """KL(model || circuit) averaged over the ``loss_mask`` positions, lower is better:
    (batch, pos, vocab) -> (batch,)."""
    mask = examples["loss_mask"].to(circuit_logits.dtype)
    return (_kl(model_logits, circuit_logits) * mask).sum(-1) / mask.sum(-1)
