"""Behaviors from a researcher's own counterfactual pairs: a CSV or Parquet file with the columns
``clean``, ``corrupted``, ``answer`` and ``wrong_answer`` (one pair per row; other columns are
ignored), named ``"pairs:<path>"`` (``get_behavior``).

Tokenisation: by the model's own tokenizer, the text exactly as written: BOS (when the tokenizer
has one) then ``tokenizer(text)`` without special tokens.  Each answer, tokenised as written, must
be ONE token: for a BPE tokenizer such as GPT-2's write the space the answer follows (" Mary"); a
word-level tokenizer must know every word (an unknown word is refused, never mapped to [UNK]).

Lengths: every clean and corrupted prompt must have as many tokens as the first clean prompt (no
padding: resample ablation pairs the two runs position by position); the first that differs is
refused with one sentence naming it and the fix.

Score (lower is better): -(logit[answer] - logit[wrong_answer]) at the last position, per example.
Attribution metric: logit[answer] - logit[wrong_answer] at the last position, summed over the batch.
KL: KL(model || circuit) at the last position (ACDC's and SP's loss).

Dataset (``make_dataset``): every row in file order, or with ``n_examples`` a sample of that many
rows drawn with ``seed`` and kept in file order; the same file and seed always give the same frame.
Bad files (missing, not CSV/Parquet, not UTF-8, empty, a missing column, an empty cell) stop with
one sentence naming the file and the fix.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from circuitflow.behaviors.tokenizer import is_word_level
from circuitflow.metrics import kl_divergence as _kl

PREFIX = "pairs:"
COLUMNS = ("clean", "corrupted", "answer", "wrong_answer")
SUFFIXES = (".csv", ".parquet", ".pq")
_FIX = f"give a CSV or Parquet file with the columns {', '.join(COLUMNS)} and one pair per row"


# ---- reading ------------------------------------------------------------------------------------
def _read_table(path: Path) -> pl.DataFrame:
    """The file as a frame of strings (CSV: every cell read as text; Parquet: columns cast to text)."""
    if not path.is_file():
        raise ValueError(f"Pairs file {path} does not exist; {_FIX}.")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"Pairs file {path} is neither .csv nor .parquet; {_FIX}.")
    data = path.read_bytes()
    if path.suffix.lower() == ".csv":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"Pairs file {path} is not UTF-8 (byte {error.start}); save it as UTF-8 (e.g. from a spreadsheet: CSV UTF-8).") from None
        if not text.strip():
            raise ValueError(f"Pairs file {path} is empty; {_FIX}.")
        try:
            return pl.read_csv(io.StringIO(text), infer_schema=False)
        except pl.exceptions.PolarsError as error:
            raise ValueError(f"Pairs file {path} is not a readable CSV ({str(error).splitlines()[0]}); {_FIX}.") from None
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except (pl.exceptions.PolarsError, OSError) as error:
        raise ValueError(f"Pairs file {path} is not a readable Parquet file ({str(error).splitlines()[0]}); {_FIX}.") from None
    present = [name for name in COLUMNS if name in frame.columns]
    return frame.with_columns(pl.col(present).cast(pl.String))


def read_pairs(path: str | Path) -> pl.DataFrame:
    """The file's pairs, checked: ``index`` (row in the file, from 0), then ``COLUMNS`` as text."""
    path = Path(path)
    frame = _read_table(path)
    missing = [name for name in COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(f"Pairs file {path} has no {missing[0]!r} column (it has {', '.join(frame.columns) or 'none'}); {_FIX}.")
    if frame.height == 0:
        raise ValueError(f"Pairs file {path} holds no rows; {_FIX}.")
    frame = frame.select(COLUMNS)
    for name in COLUMNS:
        empty = frame[name].is_null() | (frame[name].str.strip_chars() == "")
        if empty.any():
            row = int(empty.arg_max())
            raise ValueError(f"Row {row} of pairs file {path} has an empty {name!r} cell; fill it or drop the row.")
    return frame.with_row_index("index").with_columns(pl.col("index").cast(pl.Int64))


def select(frame: pl.DataFrame, n_examples: int | None, seed: int, where: str = "the pairs") -> pl.DataFrame:
    """All rows (``n_examples`` None) or a seeded sample of ``n_examples`` rows kept in their order."""
    if n_examples is None:
        return frame
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or not 1 <= n_examples <= frame.height:
        raise ValueError(f"{where} hold {frame.height} pairs; ask for 1 to {frame.height}, not {n_examples!r}.")
    picks = np.sort(np.random.default_rng([seed, 0]).choice(frame.height, size=n_examples, replace=False))
    return frame[picks.tolist()]


def make_dataset(path: str | Path, n_examples: int | None, seed: int) -> pl.DataFrame:
    """The file's dataset (module docstring): columns ``index``, ``clean``, ``corrupted``,
    ``answer``, ``wrong_answer``; deterministic in (file, n_examples, seed)."""
    return select(read_pairs(path), n_examples, seed, where=f"Pairs file {path}")


def vocabulary(path: str | Path) -> list[str]:
    """Every whitespace-separated word of the file's prompts and answers, sorted (for building a
    word-level tokenizer)."""
    frame = read_pairs(path)
    return sorted({word for name in COLUMNS for text in frame[name].to_list() for word in text.split()})


def training_examples(path: str | Path, n: int, seed: int) -> pl.DataFrame:
    """``n`` rows drawn with replacement: ``prompt`` = clean prompt, ``target`` = answer (no held-out split)."""
    frame = read_pairs(path)
    picks = np.random.default_rng([seed, 1]).integers(frame.height, size=n).tolist()
    return pl.DataFrame({"prompt": [" ".join(t.split()) for t in frame["clean"].to_list()],
                         "target": [a.strip() for a in frame["answer"].to_list()]})[picks]


# ---- encoding -----------------------------------------------------------------------------------
def _unknown(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> bool:
    """True when a word-level tokenizer mapped a word to its unknown token."""
    return is_word_level(tokenizer) and tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], column: str, where: str,
                   indices: Sequence[int], length: int | None = None) -> Tensor:
    """Prompts as (n, pos) int64 ids, BOS first when the tokenizer has one; every row must have
    ``length`` tokens (default: the first row's)."""
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    rows = [bos + list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    length = len(rows[0]) if length is None else length
    for index, text, row in zip(indices, texts, rows):
        if _unknown(tokenizer, row):
            raise ValueError(f"The {column} prompt of example {index} of {where} holds a word the tokenizer does not know ({text!r}); use words of its vocabulary.")
        if len(row) != length:
            raise ValueError(
                f"The {column} prompt of example {index} of {where} is {len(row)} tokens but the first clean prompt is {length}; "
                "give every clean and corrupted prompt the same number of tokens (no padding is done)."
            )
    return torch.tensor(rows, dtype=torch.long)


def encode_answers(tokenizer: PreTrainedTokenizerBase, answers: Sequence[str], column: str, where: str,
                   indices: Sequence[int]) -> Tensor:
    """Answers as (n,) int64 ids; each must be one token of the tokenizer, tokenised as written."""
    ids = []
    for index, answer, tokens in zip(indices, answers, tokenizer(list(answers), add_special_tokens=False)["input_ids"]):
        if len(tokens) != 1 or _unknown(tokenizer, tokens):
            raise ValueError(
                f"The {column} of example {index} of {where}, {answer!r}, is {len(tokens)} tokens (or unknown) for the model's tokenizer, "
                "not one; give single-token answers (for GPT-2-style tokenizers with their leading space, ' Mary')."
            )
        ids.append(int(tokens[0]))
    return torch.tensor(ids, dtype=torch.long)


def encode(frame: pl.DataFrame, tokenizer: PreTrainedTokenizerBase, where: str = "the pairs") -> dict[str, Tensor]:
    """``clean``, ``corrupted`` (n, pos) ids and ``answer``, ``wrong_answer`` (n,) ids.  Errors name
    the example (``index`` when the frame has one, else its row) and ``where``."""
    missing = [name for name in COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(f"The frame of {where} has no {missing[0]!r} column; make it with make_dataset.")
    if frame.height == 0:
        raise ValueError(f"{where} hold no pairs; give at least one.")
    if tokenizer is None:
        raise ValueError(f"Encoding {where} needs the model's tokenizer; give a model with a tokenizer (model.set_tokenizer) or token ids.")
    indices = frame["index"].to_list() if "index" in frame.columns else list(range(frame.height))
    clean = encode_prompts(tokenizer, frame["clean"].to_list(), "clean", where, indices)
    return {
        "clean": clean,
        "corrupted": encode_prompts(tokenizer, frame["corrupted"].to_list(), "corrupted", where, indices, clean.shape[1]),
        "answer": encode_answers(tokenizer, frame["answer"].to_list(), "answer", where, indices),
        "wrong_answer": encode_answers(tokenizer, frame["wrong_answer"].to_list(), "wrong_answer", where, indices),
    }


# ---- metrics ------------------------------------------------------------------------------------
def logit_difference(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """logit[answer] - logit[wrong_answer] at the last position: (batch, pos, vocab) -> (batch,)."""
    last = logits[:, -1]
    right = last.gather(-1, examples["answer"].long()[:, None])[:, 0]
    return right - last.gather(-1, examples["wrong_answer"].long()[:, None])[:, 0]


def score(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Per-example score, lower is better: minus the circuit's logit difference.
    circuit_logits, model_logits: (batch, pos, vocab) -> (batch,)."""
    return -logit_difference(circuit_logits, examples)


def attribution_metric(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """The logit difference summed over the batch (higher = more of the behavior): (batch, pos, vocab) -> scalar."""
    return logit_difference(logits, examples).sum()


def kl_divergence(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """KL(model || circuit) at the last position, lower is better: (batch, pos, vocab) -> (batch,)."""
    return _kl(model_logits[:, -1], circuit_logits[:, -1])


# ---- the behavior of one file -------------------------------------------------------------------
@dataclass(frozen=True)
class PairsFile:
    """The Behavior functions of one pairs file (``get_behavior("pairs:<path>")`` wraps them); the
    file is read when a function is called, not here."""

    path: str

    def __post_init__(self) -> None:
        if not str(self.path).strip():
            raise ValueError(f"Behavior {PREFIX!r} names no file; write '{PREFIX}' followed by the path of a CSV or Parquet file of pairs.")

    def make_dataset(self, n_examples: int | None, seed: int) -> pl.DataFrame:
        return make_dataset(self.path, n_examples, seed)

    def encode(self, frame: pl.DataFrame, tokenizer: PreTrainedTokenizerBase) -> dict[str, Tensor]:
        return encode(frame, tokenizer, where=f"pairs file {self.path}")

    def vocabulary(self) -> list[str]:
        return vocabulary(self.path)

    def training_examples(self, n: int, seed: int) -> pl.DataFrame:
        return training_examples(self.path, n, seed)

    score = staticmethod(score)
    attribution_metric = staticmethod(attribution_metric)
    kl_divergence = staticmethod(kl_divergence)
