"""BIG-bench JSON tasks as behaviors: google/BIG-bench's ``task.json`` format, free-text
(``target``) and multiple-choice (``target_scores``) examples.  ``bigbench_format.py`` reads,
checks and formats the file (prompts, prefixes, appended choices, answers); this module makes the
dataset, encodes it and scores it.

Answers.  A ``target`` example's answer is its target (the first of a list); a multiple-choice
example's answer is its highest-scored choice and its wrong answers the choices scored lower.  A
free-text example has no wrong answers in the file: its one wrong answer is the target of the
example whose input corrupts it (below), as before.

Corruption (like resample ablation in the papers): example i's corrupted prompt is the prompt of
example sigma(i), sigma a seeded random derangement in which every partner has ANOTHER answer, one
that is not among example i's correct answers, so the corrupted prompt argues for another answer;
for multiple choice the partner's prompt carries its own choices.  sigma is drawn uniformly among
such derangements by rejection (up to 1,000 draws); past that (one answer holding nearly half
the examples) a rotation of the examples grouped by answer is used, which always works when no
answer holds more than half and no target list names another example's answer.

Score (lower is better): -(logit[answer] - max over wrong answers of logit[wrong]) at the last
position; attribution metric: that margin summed over the batch (higher = more of the task).  The
best wrong answer, not the mean of the wrong ones: BIG-bench's multiple_choice_grade counts an
example right when its answer outscores every other choice, and the margin over the best wrong
choice is positive exactly then, while a margin over the mean stays positive with a wrong choice
on top and grows by pushing down choices the model never considered (docstring's score is the
same).  With one wrong answer (free text) it is the former logit difference.  KL: KL(model ||
circuit) at the last position.

Multi-token answers: an answer (or a wrong answer) is its FIRST token, the one predicted at the
last position.  The summed log-probability of every token would need one forward pass per answer
with the answer appended, a different sequence for each choice, which the one clean prompt per
example that every discovery method patches does not have.  A wrong choice whose first token is
the answer's cannot be told apart from it there, and is refused at ``encode``.

Tokens.  A word-level tokenizer gets one token per word (a word it lacks is an error naming the
word and the example); any other (GPT-2's BPE) tokenizes the prompt text as a whole, and an answer
as " " + answer (it follows the prompt's last word after a space).  Prompts may differ in length:
``encode`` LEFT-pads ``clean`` and ``corrupted`` together to one width with the tokenizer's PAD,
before BOS ([PAD] .. [PAD] [BOS] words), so every prompt ends at the last position, where the
answer is predicted, and corrupted activations are patched position by position counted from that
end.  ``clean_attention_mask`` / ``corrupted_attention_mask`` (1 on BOS and words, 0 on PAD) come
with them.  A TransformerLens model whose tokenizer pads on the left (``model.set_tokenizer(tok,
default_padding_side="left")``) builds that mask from the leading PADs itself and shifts its
positional embeddings by it: its logits at the last position are those of the unpadded prompt.
A model whose tokenizer pads on the right (TransformerLens's default) attends to PAD like to any
token and sees every word a pad count later: its numbers then depend on the padding (on the longest
prompt of the dataset).  Prompts of one length need no PAD and are encoded the same either way.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from circuitflow.behaviors.bigbench_format import read_examples
from circuitflow.behaviors.tokenizer import bos_id, encode_words, is_word_level
from circuitflow.metrics import kl_divergence as _kl

PREFIX = "bigbench:"

__all__ = ["PREFIX", "attribution_metric", "encode", "kl_divergence", "logit_margin", "make_dataset", "pairing",
           "read_examples", "score", "training_examples", "vocabulary"]


def pairing(targets: list[str], rng: np.random.Generator, tries: int = 1000, correct: list[list[str]] | None = None) -> np.ndarray:
    """A permutation sigma of range(n) with targets[sigma[i]] != targets[i] and not in correct[i]
    (example i's correct answers, its target first; default just its target) for every i, hence
    no fixed point: uniform by rejection, else a rotation by the largest target group."""
    n = len(targets)
    label, count = Counter(targets).most_common(1)[0]
    if 2 * count > n:
        raise ValueError(
            f"{count} of the {n} examples have answer {label!r}, more than half, so they cannot all be paired with an "
            "example of another answer; add examples with other answers or use fewer of these."
        )
    code_of = {target: code for code, target in enumerate(sorted(set(targets)))}
    codes = np.array([code_of[t] for t in targets])
    # other correct answers that are some example's answer: the few pairs the codes alone do not rule out
    alternates = {i: {code_of[a] for a in answers[1:] if a in code_of} for i, answers in enumerate(correct or [])}
    alternates = {i: forbidden for i, forbidden in alternates.items() if forbidden}

    def valid(sigma: np.ndarray) -> bool:
        return bool((codes[sigma] != codes).all()) and all(codes[sigma[i]] not in forbidden for i, forbidden in alternates.items())

    for _ in range(tries):
        sigma = rng.permutation(n)
        if valid(sigma):
            return sigma
    order = np.lexsort((rng.permutation(n), codes))  # grouped by target, shuffled within a group
    sigma = np.empty(n, dtype=np.int64)
    sigma[order] = order[(np.arange(n) + count) % n]
    if not valid(sigma):
        raise ValueError(f"No pairing of the {n} examples gives every one a partner whose answer is not one of its own correct answers; "
                         "drop the target lists' alternatives that are other examples' answers.")
    return sigma


def make_dataset(path: str | Path, n_examples: int | None, seed: int) -> pl.DataFrame:
    """The task's dataset, deterministic from ``seed``: all examples (``n_examples`` None) or a
    seeded sample without replacement kept in file order.

    Columns: ``index`` (in the file), ``clean``, ``corrupted`` (prompts, word-level text),
    ``answer``, ``wrong`` (list: multiple choice, the choices scored below the answer; free text,
    [the partner's answer]), ``corrupted_answer`` (the partner's answer, always another one).
    """
    examples = read_examples(path)
    rng = np.random.default_rng([seed, 0])
    if n_examples is not None:
        if not 2 <= n_examples <= examples.height:
            raise ValueError(f"BIG-bench task {path} has {examples.height} examples; ask for 2 to {examples.height}, not {n_examples}.")
        examples = examples[np.sort(rng.choice(examples.height, size=n_examples, replace=False)).tolist()]
    answers, prompts = examples["answer"].to_list(), examples["prompt"].to_list()
    sigma = pairing(answers, rng, correct=examples["correct"].to_list()).tolist()
    wrong = [choices if chosen else [answers[j]]
             for choices, chosen, j in zip(examples["wrong"].to_list(), examples["multiple_choice"].to_list(), sigma)]
    return pl.DataFrame({
        "index": examples["index"],
        "clean": prompts,
        "corrupted": [prompts[j] for j in sigma],
        "answer": answers,
        "wrong": wrong,
        "corrupted_answer": [answers[j] for j in sigma],
    }, schema={"index": pl.Int64, "clean": pl.String, "corrupted": pl.String, "answer": pl.String,
               "wrong": pl.List(pl.String), "corrupted_answer": pl.String})


def training_examples(path: str | Path, n: int, seed: int) -> pl.DataFrame:
    """``n`` examples drawn with replacement from the file (no held-out split): ``prompt`` = the
    formatted prompt, ``target`` = the answer (all its words)."""
    examples = read_examples(path)
    picks = np.random.default_rng([seed, 1]).integers(examples.height, size=n).tolist()
    return pl.DataFrame({"prompt": examples["prompt"].to_list(), "target": examples["answer"].to_list()})[picks]


def vocabulary(path: str | Path) -> list[str]:
    """Every word the dataset can write, sorted: the prompts' (prefixes and appended choices
    included), the answers' and the wrong choices'."""
    examples = read_examples(path)
    texts = [*examples["prompt"].to_list(), *examples["answer"].to_list(), *examples["wrong"].explode().drop_nulls().to_list()]
    return sorted({word for text in texts for word in text.split(" ")})


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str, where: str) -> list[int]:
    """A prompt's ids without BOS: one per word for a word-level tokenizer, else the text's own."""
    if is_word_level(tokenizer):
        return encode_words(tokenizer, text.split(" "), where=where)
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def _first_token(tokenizer: PreTrainedTokenizerBase, answer: str, where: str) -> int:
    """The first token of an answer that follows the prompt after a space."""
    if is_word_level(tokenizer):
        return encode_words(tokenizer, answer.split(" ")[:1], where=where, first=False)[0]
    ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"Answer {answer!r}{where} gives no token; use answers the tokenizer can write.")
    return int(ids[0])


def _left_pad(rows: list[list[int]], width: int, pad: int) -> tuple[Tensor, Tensor]:
    """Rows of ids right-aligned in (batch, width) int64, PAD before them, and their attention mask."""
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return tokens, mask


def encode(frame: pl.DataFrame, tokenizer: PreTrainedTokenizerBase, path: str | Path = "the task file") -> dict[str, Tensor]:
    """``clean``, ``corrupted`` (batch, pos) ids, BOS first, left-padded together with PAD to one
    width; ``clean_attention_mask``, ``corrupted_attention_mask`` (batch, pos) int64, 0 on PAD;
    ``answer`` (batch,) and ``wrong`` (batch, k) first-token ids, k the most wrong answers of an
    example, a row with fewer repeating its first (the max is unchanged).  Errors name the
    example's index in the file."""
    first = bos_id(tokenizer)
    indices = frame["index"].to_list()
    prompts: dict[str, list[list[int]]] = {"clean": [], "corrupted": []}
    answers, wrongs = [], []
    # the example's own words first, so an unencodable word is reported at the example that holds it
    for index, clean, answer in zip(indices, frame["clean"].to_list(), frame["answer"].to_list()):
        prompts["clean"].append([first, *_prompt_ids(tokenizer, clean, f" (prompt of example {index} of {path})")])
        answers.append(_first_token(tokenizer, answer, f" (answer of example {index} of {path})"))
    for index, corrupted, answer, wrong, answer_id in zip(indices, frame["corrupted"].to_list(), frame["answer"].to_list(), frame["wrong"].to_list(), answers):
        prompts["corrupted"].append([first, *_prompt_ids(tokenizer, corrupted, f" (prompt of the partner of example {index} of {path})")])
        wrongs.append([_first_token(tokenizer, w, f" (wrong answer {w!r} of example {index} of {path})") for w in wrong])
        if answer_id in wrongs[-1]:
            clash = wrong[wrongs[-1].index(answer_id)]
            raise ValueError(f"Example {index} of {path}: its answer {answer!r} and its wrong answer {clash!r} start with the same token, "
                             "the only one the score reads; reword one of them so that their first words differ.")
    lengths = [len(row) for rows in prompts.values() for row in rows]
    if min(lengths) != max(lengths) and tokenizer.pad_token_id is None:
        raise ValueError(f"The prompts of {path} have {min(lengths)} to {max(lengths)} tokens but the tokenizer has no PAD token to "
                         "left-pad them with; give a tokenizer with a pad_token (tokenizer.pad_token = tokenizer.eos_token).")
    pad = first if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
    clean, clean_mask = _left_pad(prompts["clean"], max(lengths), pad)
    corrupted, corrupted_mask = _left_pad(prompts["corrupted"], max(lengths), pad)
    k = max(len(row) for row in wrongs)
    wrong_ids = torch.tensor([row + row[:1] * (k - len(row)) for row in wrongs], dtype=torch.long)
    return {"clean": clean, "corrupted": corrupted, "clean_attention_mask": clean_mask, "corrupted_attention_mask": corrupted_mask,
            "answer": torch.tensor(answers, dtype=torch.long), "wrong": wrong_ids}


def logit_margin(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """logit[answer] - max over the wrong answers of logit[wrong] at the last position:
    (batch, pos, vocab) -> (batch,)."""
    last = logits[:, -1]
    answer = last.gather(-1, examples["answer"].long()[:, None])[:, 0]
    return answer - last.gather(-1, examples["wrong"].long()).max(-1).values


def score(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Per-example score, lower is better: -(logit[answer] - max logit[wrong]) of the circuit at
    the last position.  circuit_logits, model_logits: (batch, pos, vocab) -> (batch,)."""
    return -logit_margin(circuit_logits, examples)


def attribution_metric(logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """Sum over the batch of logit[answer] - max logit[wrong] (higher = more of the task).
    logits: (batch, pos, vocab) -> scalar."""
    return logit_margin(logits, examples).sum()


def kl_divergence(circuit_logits: Tensor, model_logits: Tensor, examples: dict[str, Tensor]) -> Tensor:
    """KL(model || circuit) at the last position, lower is better: (batch, pos, vocab) -> (batch,)."""
    return _kl(model_logits[:, -1], circuit_logits[:, -1])
