"""Greater-than (Hanna et al. 2023; ACDC's greater-than setting), at the word level.

    "The war lasted from the year 17 32 to the year 17"  -> a two-digit "YY" greater than 32
The year XXYY is written as two words, the century "XX" (11..17) and the two-digit "YY" (02..98,
as in the paper); a word-level tokenizer has each as one token, exactly the two tokens GPT-2 gives
the paper's years (" 17" + "32": the paper kept only the years GPT-2 splits so).  For a BPE
tokenizer ``encode`` glues "YY" to the century, so the text is the paper's "... year 1732 to the
year 17" and the answer token is the bare "YY" (for a year a BPE tokenizer does not split as
century + "YY", which the paper left out, these ids differ from its tokenization of the natural
text).  All prompts have 12 words (pad-free).

Corruption: the paper's "01" dataset: the same prompt with YY = 01 ("... year 17 01 to ..."),
which leaves no year before it for the model to exclude.

Score (lower is better): -(P(YY' >= YY) - P(YY' < YY)), the probabilities (softmax over the
whole vocabulary at the last position) summed over the two-digit tokens "00".."99" (the papers
5).  The paper's probability difference puts YY itself on the "less" side, and ACDC's code leaves
out "99"; this module follows the papers.  Attribution metric: P(>= YY) - P(< YY) summed over
the batch.  KL: KL(model || circuit) at the last position.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from circuitflow.behaviors.tokenizer import (
    encode_answers,
    encode_prompts,
    glue_punctuation,
)
from circuitflow.metrics import kl_divergence as _kl

DEFAULT_N_EXAMPLES = 100
TEMPLATE = "The {NOUN} lasted from the year {XX} {YY} to the year {XX}"
CENTURIES: tuple[str, ...] = tuple(str(c) for c in range(11, 18))
TWO_DIGITS: tuple[str, ...] = tuple(f"{y:02d}" for y in range(100))
YEARS: tuple[int, ...] = tuple(range(2, 99))  # the paper's YY: 02..98, so both sides are non-empty
CORRUPTED_YY = "01"
NOUNS: tuple[str, ...] = (
    "war", "expedition", "siege", "reign", "campaign", "voyage", "journey", "trial", "rivalry", "dynasty",
    "plague", "marriage", "friendship", "conflict", "project", "treaty", "rule", "tour", "study", "strike",
    "pilgrimage", "invasion", "dispute", "quest", "crisis", "festival", "program", "revolt", "alliance", "drought",
)


def glue(previous: str | None, word: str) -> bool:
    """Natural text writes "YY" right after its century ("1732"), and punctuation after its word."""
    return (previous in CENTURIES and word in TWO_DIGITS) or glue_punctuation(previous, word)


def _prompt(noun: str, century: str, yy: str) -> str:
    return TEMPLATE.format(NOUN=noun, XX=century, YY=yy)


def _draw(n: int, rng: np.random.Generator) -> tuple[list[str], list[str], list[int]]:
    nouns = [NOUNS[i] for i in rng.integers(len(NOUNS), size=n)]
    centuries = [CENTURIES[i] for i in rng.integers(len(CENTURIES), size=n)]
    years = [YEARS[i] for i in rng.integers(len(YEARS), size=n)]
    return nouns, centuries, years


def make_dataset(n_examples: int | None, seed: int) -> pl.DataFrame:
    """``n_examples`` (default 100) prompts, deterministic from ``seed``.

    Columns: ``noun``, ``century`` ("11".."17"), ``yy`` (int 2..98), ``clean``, ``corrupted``
    (text, 12 words; the corrupted year ends in "01").
    """
    n = DEFAULT_N_EXAMPLES if n_examples is None else n_examples
    if n < 1:
        raise ValueError(f"Greater-than needs at least one example, got n_examples={n}.")
    nouns, centuries, years = _draw(n, np.random.default_rng([seed, 0]))
    return pl.DataFrame(
        {
            "noun": nouns, "century": centuries, "yy": years,
            "clean": [_prompt(a, c, f"{y:02d}") for a, c, y in zip(nouns, centuries, years)],
            "corrupted": [_prompt(a, c, CORRUPTED_YY) for a, c in zip(nouns, centuries)],
        },
        schema={"noun": pl.String, "century": pl.String, "yy": pl.Int64, "clean": pl.String, "corrupted": pl.String},
    )


def training_examples(n: int, seed: int) -> pl.DataFrame:
    """``n`` prompts (another random stream than ``make_dataset``'s) whose ``target`` is a "YY"
    drawn uniformly from the years strictly after the prompt's (the war ended later)."""
    rng = np.random.default_rng([seed, 1])
    nouns, centuries, years = _draw(n, rng)
    targets = [f"{int(rng.integers(y + 1, 100)):02d}" for y in years]
    return pl.DataFrame({
        "prompt": [_prompt(a, c, f"{y:02d}") for a, c, y in zip(nouns, centuries, years)],
        "target": targets,
    })


def vocabulary() -> list[str]:
    """Every word a prompt or answer can hold, sorted (all of "00".."99")."""
    words = {w for w in TEMPLATE.split(" ") if not w.startswith("{")}
    return sorted(words | set(NOUNS) | set(CENTURIES) | set(TWO_DIGITS))


def encode(frame: pl.DataFrame, tokenizer: PreTrainedTokenizerBase) -> dict[str, Tensor]:
    """``clean``, ``corrupted`` (batch, pos) ids, BOS first; ``yy`` (batch,) the year's last two
    digits as an int; ``year_ids`` (batch, 100) the ids of "00".."99" (the same in every row)."""
    n = frame.height
    year_ids = encode_answers(tokenizer, list(TWO_DIGITS), glued=True, column="two-digit years")
    return {
        "clean": encode_prompts(tokenizer, frame["clean"].to_list(), glue, column="clean"),
        "corrupted": encode_prompts(tokenizer, frame["corrupted"].to_list(), glue, column="corrupted"),
        "yy": torch.tensor(frame["yy"].to_list(), dtype=torch.long),
        "year_ids": year_ids.expand(n, -1).clone(),
    }


def probability_difference(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """P(YY' >= YY) - P(YY' < YY) at the last position: logits (batch, pos, vocab) -> (batch,)."""
    probs = torch.softmax(logits[:, -1], dim=-1).gather(-1, examples["year_ids"].long())  # (batch, 100)
    later = torch.arange(100, device=probs.device)[None, :] >= examples["yy"].long()[:, None]
    return (probs * later).sum(-1) - (probs * ~later).sum(-1)


def score(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Per-example score, lower is better: -(P(>= YY) - P(< YY)) of the circuit.
    circuit_logits, model_logits: (batch, pos, vocab) -> (batch,)."""
    return -probability_difference(circuit_logits, examples)


def attribution_metric(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Sum over the batch of P(>= YY) - P(< YY) (higher = more greater-than).
    logits: (batch, pos, vocab) -> scalar."""
    return probability_difference(logits, examples).sum()


def kl_divergence(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """KL(model || circuit) at the last position, lower is better: (batch, pos, vocab) -> (batch,)."""
    return _kl(model_logits[:, -1], circuit_logits[:, -1])
