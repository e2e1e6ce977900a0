"""Docstring (Heimersheim & Janiak 2023; ACDC's docstring setting), at the word level.

A Python method whose reST docstring documents its parameters in order; the model must name the
next one (ACDC's prompt shape: 2 leading parameters, 3 documented "matching" ones, 1 trailing
one, a 3-word description, 2-word parameter descriptions):
    def load ( self , node , port , data , name , file , count ) : \"\"\" price table voice
    : param data : cost issue : param name : age father : param        -> "file"
(one line, 36 words, pad-free).  A word-level tokenizer sees the words; a BPE tokenizer sees them
without ACDC's line breaks and indentation (each word one token, spaced as in the code: "(", ")",
",", ":" and "param" glued to the word before, like ":param" at a line start), so token positions
are the same for both.

Corruption: ACDC's ``random_random`` prompt: the same method name, descriptions and leading and
trailing parameters, with the three matching parameters in the def replaced by three random names
and the two documented ones by two other random names (none of them the answer).

Score (lower is better): -(logit[answer] - max over wrong names of logit[wrong]) at the last
position, the wrong names being (as in ACDC) all other parameter names drawn for the example: the
def's and docstring's other names in the clean and the corrupted prompt and two unused
distractors (13 in all).  Attribution metric: the same difference summed over the batch.  KL:
KL(model || circuit) at the last position (ACDC's metric).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from circuitflow.behaviors.tokenizer import encode_answers, encode_prompts
from circuitflow.metrics import kl_divergence as _kl

DEFAULT_N_EXAMPLES = 100
N_PREFIX, N_MATCHING, N_SUFFIX = 2, 3, 1  # ACDC: n_def_prefix_args, n_matching_args, n_def_suffix_args
N_METHOD_WORDS, N_ARG_WORDS = 3, 2  # ACDC: met_desc_len, arg_desc_len
QUOTES = '"""'
GLUED = frozenset({"(", ")", ",", ":", "param"})

# Parameter and method names, and description words: common words, disjoint lists.
NAMES: tuple[str, ...] = (
    "data", "name", "file", "value", "test", "result", "line", "user", "key", "default", "request", "path",
    "output", "node", "item", "url", "response", "text", "version", "log", "field", "start", "number", "index",
    "error", "context", "image", "message", "check", "size", "event", "state", "row", "obj", "parser", "end",
    "query", "label", "run", "target", "array", "code", "num", "source", "config", "options", "update", "module",
    "status", "group", "content", "client", "filename", "count", "match", "tag", "title", "parent", "token", "port",
)
WORDS: tuple[str, ...] = (
    "price", "control", "action", "cost", "issue", "process", "position", "course", "type", "research",
    "father", "force", "order", "matter", "health", "street", "class", "mind", "paper", "bank",
    "century", "section", "table", "building", "sense", "staff", "team", "student", "language", "town",
    "plan", "morning", "product", "practice", "evidence", "ground", "letter", "game", "food", "union",
    "role", "land", "art", "support", "range", "stage", "trade", "voice", "club", "history",
)


def _prompt(method: str, def_args: list[str], doc_args: list[str], method_words: list[str], arg_words: list[list[str]]) -> str:
    words = ["def", method, "(", "self"]
    for arg in def_args:
        words += [",", arg]
    words += [")", ":", QUOTES, *method_words]
    for arg, description in zip(doc_args, arg_words):
        words += [":", "param", arg, ":", *description]
    return " ".join([*words, ":", "param"])


def glue(previous: str | None, word: str) -> bool:
    """Natural code writes no space before "(", ")", ",", ":", "param", nor after "(" and '\"\"\"'."""
    return word in GLUED or previous in ("(", QUOTES)


def _generate(n: int, rng: np.random.Generator) -> pl.DataFrame:
    rows: dict[str, list] = {k: [] for k in ("clean", "corrupted", "answer", "wrong")}
    n_names = 1 + 1 + N_MATCHING + (N_MATCHING - 1) + (N_MATCHING - 1) + N_MATCHING + N_PREFIX + N_SUFFIX
    for _ in range(n):
        drawn = [NAMES[i] for i in rng.choice(len(NAMES), size=n_names, replace=False)]
        method, rest = drawn[0], drawn[2:]  # drawn[1]: ACDC's spare "random answer", only a wrong answer
        random_def, rest = rest[:N_MATCHING], rest[N_MATCHING:]
        random_doc, rest = rest[: N_MATCHING - 1], rest[N_MATCHING - 1 :]
        rest = rest[N_MATCHING - 1 :]  # ACDC's "not matching" names: only wrong answers here
        matching, rest = rest[:N_MATCHING], rest[N_MATCHING:]
        prefix, suffix = rest[:N_PREFIX], rest[N_PREFIX:]
        method_words = [WORDS[i] for i in rng.choice(len(WORDS), size=N_METHOD_WORDS, replace=False)]
        arg_words = [[WORDS[i] for i in rng.choice(len(WORDS), size=N_ARG_WORDS, replace=False)] for _ in range(N_MATCHING - 1)]
        answer = matching[-1]
        rows["clean"].append(_prompt(method, prefix + matching + suffix, matching[:-1], method_words, arg_words))
        rows["corrupted"].append(_prompt(method, prefix + random_def + suffix, random_doc, method_words, arg_words))
        rows["answer"].append(answer)
        rows["wrong"].append([a for a in drawn[1:] if a != answer])
    return pl.DataFrame(rows, schema={"clean": pl.String, "corrupted": pl.String, "answer": pl.String, "wrong": pl.List(pl.String)})


def make_dataset(n_examples: int | None, seed: int) -> pl.DataFrame:
    """``n_examples`` (default 100) prompts, deterministic from ``seed``.

    Columns: ``clean``, ``corrupted`` (text, 36 words), ``answer`` (the next parameter's name),
    ``wrong`` (list of the 13 other names drawn for the example).
    """
    n = DEFAULT_N_EXAMPLES if n_examples is None else n_examples
    if n < 1:
        raise ValueError(f"Docstring needs at least one example, got n_examples={n}.")
    return _generate(n, np.random.default_rng([seed, 0]))


def training_examples(n: int, seed: int) -> pl.DataFrame:
    """``n`` clean prompts (another random stream than ``make_dataset``'s), ``target`` = answer."""
    frame = _generate(n, np.random.default_rng([seed, 1]))
    return frame.select(pl.col("clean").alias("prompt"), pl.col("answer").alias("target"))


def vocabulary() -> list[str]:
    """Every word a prompt or answer can hold, sorted."""
    return sorted({"def", "(", "self", ",", ")", ":", QUOTES, "param"} | set(NAMES) | set(WORDS))


def encode(frame: pl.DataFrame, tokenizer: PreTrainedTokenizerBase) -> dict[str, Tensor]:
    """``clean``, ``corrupted`` (batch, pos) ids, BOS first; ``answer`` (batch,) and ``wrong``
    (batch, 13) ids."""
    wrong = frame["wrong"].to_list()
    flat = encode_answers(tokenizer, [w for row in wrong for w in row], column="wrong")
    return {
        "clean": encode_prompts(tokenizer, frame["clean"].to_list(), glue, column="clean"),
        "corrupted": encode_prompts(tokenizer, frame["corrupted"].to_list(), glue, column="corrupted"),
        "answer": encode_answers(tokenizer, frame["answer"].to_list(), column="answer"),
        "wrong": flat.reshape(len(wrong), -1),
    }


def logit_margin(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """logit[answer] - max logit[wrong] at the last position: (batch, pos, vocab) -> (batch,)."""
    last = logits[:, -1]
    correct = last.gather(-1, examples["answer"].long()[:, None])[:, 0]
    return correct - last.gather(-1, examples["wrong"].long()).max(-1).values


def score(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Per-example score, lower is better: -(logit[answer] - max wrong logit) of the circuit.
    circuit_logits, model_logits: (batch, pos, vocab) -> (batch,)."""
    return -logit_margin(circuit_logits, examples)


def attribution_metric(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Sum over the batch of logit[answer] - max wrong logit (higher = more docstring).
    logits: (batch, pos, vocab) -> scalar."""
    return logit_margin(logits, examples).sum()


def kl_divergence(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """KL(model || circuit) at the last position, lower is better: (batch, pos, vocab) -> (batch,)."""
    return _kl(model_logits[:, -1], circuit_logits[:, -1])
