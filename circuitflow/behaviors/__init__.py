"""Behaviors: a dataset plus a metric that elicits one thing a model does (the README).

Registry names (``get_behavior(name)``; ``BEHAVIORS`` holds the built-in ones):
  "ioi", "greater-than", "docstring", "induction"   word-level behaviors of the papers (Shi et al. 2024)
  "tracr-reverse", "tracr-proportion"               tracr programs (datasets already token ids)
  "bigbench:<path to a JSON file>"                  a BIG-bench-style task imported by ``bigbench.py``
  "pairs:<path to a CSV or Parquet file>"           the user's counterfactual pairs (``counterfactual.py``)
  "siit-<case>"                                     the task of a SIIT case (``siit_cases.py``;
                                                    token ids like tracr, the score the MSE against the model)

Each ``Behavior`` gives
  make_dataset(n_examples, seed) -> polars DataFrame, deterministic from the seed; ``n_examples``
      None means the behavior's default (100, the papers' setting; all inputs for tracr).
      Word-level behaviors: TEXT columns ``clean``, ``corrupted`` (str, words separated by single
      spaces, no BOS) plus answer columns (words); tracr: token-id lists (BOS first).
  encode(frame, tokenizer) -> Examples: the frame as tensors: ``clean``, ``corrupted`` (batch, pos)
      int64 ids with the tokenizer's BOS first, plus the answer tensors the score needs, each with
      the batch as its first dimension.  Pad-free: every prompt of one dataset has the same number of
      tokens (the templates are built so), and every word must be ONE token of the tokenizer; a word
      that is not (unknown to a word-level tokenizer, or several BPE tokens) is a ValueError naming
      the word and the example.  Tracr behaviors ignore the tokenizer (pass None).
  score(circuit_logits, model_logits, examples) -> (batch,) per-example score, LOWER IS BETTER
      (Shi et al. 2024), used for faithfulness and the hypothesis tests;
  attribution_metric(logits, examples) -> scalar summed over the batch, HIGHER = more of the
      behavior: what gradient-based discovery (EAP) differentiates.  It must not be flat at the
      full model, which rules out the MSE-to-the-model score;
  kl_divergence(circuit_logits, model_logits, examples) -> (batch,) KL(model || circuit) over the
      behavior's answer positions (ACDC's metric), lower is better;
  vocabulary() -> sorted list[str] of every word the generator can write (clean, corrupted,
      answers, training targets): build an organism's tokenizer from it
      (``tokenizer.build_word_tokenizer``); None for tracr;
  training_examples(n, seed) -> DataFrame with ``prompt`` (str) and ``target`` (str, one or more
      words): train on "[BOS] prompt target" with the loss on the target words only
      (``tokenizer.encode_training`` makes ``tokens`` (batch, pos) and ``loss_mask`` (batch, pos),
      loss_mask[b, t] True where the logits at t must predict tokens[b, t + 1]).  For induction the
      prompt is the random sequence plus its first repeated word and the target the rest of the
      repeat.  None for tracr.
``examples`` is a dict of ``encode``'s tensors, restricted to the batch (indexed along dim 0).
Logits are (batch, pos, vocab); the answer is predicted at the LAST position for ioi,
greater-than, docstring and bigbench, at the ``loss_mask`` positions for induction.

The word-level datasets (text columns; ``encode``'s tensors; pos counts BOS):
  ioi           template, order (ABBA|BABA), place, object, clean, corrupted (ACDC's ABC: three
                new names), io, s, corrupted_names -> clean, corrupted (b, 15), io, s (b,)
  greater-than  noun, century ("11".."17"), yy (int 2..98), clean "The war lasted from the year
                17 32 to the year 17", corrupted ("... 17 01 ...") -> clean, corrupted (b, 13),
                yy (b,), year_ids (b, 100) the ids of "00".."99"
  docstring     clean, corrupted (ACDC's random_random), answer, wrong (13 names)
                -> clean, corrupted (b, 37), answer (b,), wrong (b, 13)
  induction     clean "s1..s10 s1..s10", corrupted (another row, a derangement), half_length
                -> clean, corrupted (b, 21), loss_mask (b, 21) True at 11..19
  bigbench:...  index (in the file), clean, corrupted (another example's input with another
                target), answer, corrupted_answer -> clean, corrupted (b, 1 + words), answer,
                corrupted_answer (b,)
Scores (lower is better): ioi -(logit IO - logit S); greater-than -(P(>=YY) - P(<YY)) over
"00".."99"; docstring -(logit answer - max wrong logit); induction the mean NLL over loss_mask;
bigbench -(logit target - logit partner's target).  Each module's docstring says why.

For the organism trainer: one organism per behavior, or one for several (concatenate the
``training_examples`` frames; ``encode_training`` right-pads).  Build its tokenizer from the
union of the ``vocabulary()`` of every behavior it will be evaluated on, save it next to the
weights with ``save_tokenizer`` and load it with ``load_tokenizer``; the evaluation prompts
(``make_dataset``) come from another random stream than ``training_examples`` of the same seed.
For the pipeline: ``generate`` writes ``make_dataset``'s frame (text for word-level behaviors);
the later stages call ``behavior.encode(frame, model_tokenizer)`` instead of turning the columns
into tensors themselves (tracr's ``encode`` ignores the tokenizer and does just that).

Tokenizers (``circuitflow.behaviors.tokenizer``): ``build_word_tokenizer(words)`` (WordLevel,
WhitespaceSplit, ids 0..3 = [BOS] [EOS] [PAD] [UNK], then the sorted words), ``save_tokenizer``
(byte-identical files for the same words), ``load_tokenizer`` (always save and reload: an
in-memory tokenizer fails inside TransformerLens).  The same ``encode`` serves a GPT-2-style BPE
tokenizer: words are tokenized with a leading space, except the first and the ones glued to the
previous word (punctuation, greater-than's "YY" after its century, so "17 32" gives GPT-2's
" 17" + "32" of "1732"), one token per word, so positions are the same for both tokenizers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from circuitflow.behaviors import bigbench, counterfactual, docstring, greater_than, induction, ioi
from circuitflow.behaviors import siit_cases
from circuitflow.behaviors import tracr as tracr_behaviors
from circuitflow.metrics import positions_kl

Examples = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Behavior:
    """One behavior's functions (see the module docstring for each one's contract)."""

    name: str
    make_dataset: Callable[[int | None, int], pl.DataFrame]
    score: Callable[[torch.Tensor, torch.Tensor, Examples], torch.Tensor]
    attribution_metric: Callable[[torch.Tensor, Examples], torch.Tensor]
    encode: Callable[[pl.DataFrame, Any], Examples]
    kl_divergence: Callable[[torch.Tensor, torch.Tensor, Examples], torch.Tensor] | None = None
    vocabulary: Callable[[], list[str]] | None = None
    training_examples: Callable[[int, int], pl.DataFrame] | None = None

    @property
    def word_level(self) -> bool:
        """True when the dataset is text that ``encode`` tokenizes (False for tracr's ids)."""
        return self.vocabulary is not None


def _id_columns(frame: pl.DataFrame, tokenizer: Any = None) -> Examples:
    """A dataset of token ids (tracr) as tensors: every column, lists as (n_examples, ...)."""
    return {name: torch.tensor(np.array(frame[name].to_list())) for name in frame.columns}


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
        encode=_id_columns,
    )


def _words(name: str, module) -> Behavior:
    return Behavior(
        name=name,
        make_dataset=module.make_dataset,
        score=module.score,
        attribution_metric=module.attribution_metric,
        encode=module.encode,
        kl_divergence=module.kl_divergence,
        vocabulary=module.vocabulary,
        training_examples=module.training_examples,
    )


def bigbench_behavior(path: str | Path) -> Behavior:
    """The behavior of a BIG-bench-style JSON task file, named ``"bigbench:<path>"``.  The file is
    read (and checked) when a function is called, not here."""
    return Behavior(
        name=f"{bigbench.PREFIX}{path}",
        make_dataset=partial(bigbench.make_dataset, path),
        score=bigbench.score,
        attribution_metric=bigbench.attribution_metric,
        encode=partial(bigbench.encode, path=path),
        kl_divergence=bigbench.kl_divergence,
        vocabulary=partial(bigbench.vocabulary, path),
        training_examples=partial(bigbench.training_examples, path),
    )


BEHAVIORS: dict[str, Behavior] = {
    "tracr-reverse": _tracr("tracr-reverse", "reverse", _answer_logit_margin),
    "tracr-proportion": _tracr("tracr-proportion", "proportion", _numerical_output),
    "ioi": _words("ioi", ioi),
    "greater-than": _words("greater-than", greater_than),
    "docstring": _words("docstring", docstring),
    "induction": _words("induction", induction),
}


SIIT_PREFIX = "siit-"


def siit_behavior(case: str) -> Behavior:
    """The behavior of SIIT case ``case``: its datasets, the logit-margin attribution metric, and as
    score KL(model || circuit) averaged over the output positions for a categorical case (SIIT
    trains the output distribution with cross-entropy, and its strict loss leaves non-circuit
    nodes free to move logits that do not change it: a distance between raw logits would count
    those), the squared error of the output for a numerical one."""
    high_level = siit_cases.get_case(case)  # an unknown case is a ValueError naming the known ones
    positions = list(high_level.output_positions)

    def output_kl(circuit_logits: torch.Tensor, model_logits: torch.Tensor, examples: Examples) -> torch.Tensor:
        return positions_kl(model_logits, circuit_logits, positions)

    def squared_error(circuit_logits: torch.Tensor, model_logits: torch.Tensor, examples: Examples) -> torch.Tensor:
        return siit_cases.score(case, circuit_logits, model_logits)

    return Behavior(
        name=f"{SIIT_PREFIX}{case}",
        make_dataset=lambda n_examples, seed: siit_cases.make_dataset(case, n_examples, seed),
        score=output_kl if high_level.categorical else squared_error,
        attribution_metric=lambda logits, examples: siit_cases.attribution_metric(case, logits, examples),
        encode=_id_columns,
        kl_divergence=output_kl if high_level.categorical else None,
    )


def get_behavior(name: str) -> Behavior:
    """A built-in behavior by name, ``"bigbench:<path>"`` for a BIG-bench-style JSON task, or
    ``"siit-<case>"`` for a SIIT case's task."""
    if name.startswith(SIIT_PREFIX):
        return siit_behavior(name[len(SIIT_PREFIX):])
    if name.startswith(bigbench.PREFIX):
        path = name[len(bigbench.PREFIX):]
        if not path:
            raise ValueError(f"Behavior {name!r} names no file; write 'bigbench:' followed by the path of the JSON task.")
        return bigbench_behavior(path)
    if name.startswith(counterfactual.PREFIX):  # the user's counterfactual pairs (CSV or Parquet)
        return _words(name, counterfactual.PairsFile(name[len(counterfactual.PREFIX):]))
    if name not in BEHAVIORS:
        raise ValueError(f"Unknown behavior {name!r}; known behaviors: {', '.join(BEHAVIORS)}, bigbench:<path to a JSON task>, or siit-<case>.")
    return BEHAVIORS[name]
