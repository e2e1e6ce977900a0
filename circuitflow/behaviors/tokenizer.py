"""Word-level tokenizers for the model organisms, and the words -> token ids encoding every
word-level behavior shares.

A word-level tokenizer (``tokenizers`` WordLevel model, WhitespaceSplit pre-tokenizer) has the
special tokens ``SPECIAL_TOKENS`` = [BOS] [EOS] [PAD] [UNK] at ids 0..3, then the vocabulary's words in
sorted (code point) order: the same words always give the same ids, whatever order they came in.
It adds no special token by itself; the encoders below put BOS first.  Save it and load it back
(``save_tokenizer``, ``load_tokenizer``) before giving it to TransformerLens: TransformerLens
reloads a tokenizer from its ``name_or_path``, which an in-memory tokenizer lacks.

Encoding (``encode_words``, ``encode_prompts``): one token per word, always.  A word-level
tokenizer maps each word to its id; any other tokenizer (GPT-2's byte-level BPE) gets each word
with a leading space, except the first word and the words ``glued`` to the previous one (written
without a space in natural text: punctuation, greater-than's year "32" after "17").  A word that
is unknown or more than one token is a ValueError naming the word and the example, so a dataset
that encodes at all is pad-free: all prompts of the same number of words have the same length.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import polars as pl
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from circuitflow.io import write_atomic

BOS, EOS, PAD, UNK = "[BOS]", "[EOS]", "[PAD]", "[UNK]"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, UNK)
PUNCTUATION = frozenset({",", ".", ":", ";", "!", "?", ")"})

# (previous word or None for the first, word) -> True when natural text writes no space between them
Glue = Callable[[str | None, str], bool]


def glue_punctuation(previous: str | None, word: str) -> bool:
    """The default ``Glue``: punctuation attaches to the word before it."""
    return word in PUNCTUATION


def build_word_tokenizer(vocabulary: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: ids 0..3 the special tokens, then the distinct words, sorted.

    Words must be non-empty, contain no whitespace and not be a special token.  Build, then
    ``save_tokenizer`` and ``load_tokenizer`` before use in TransformerLens.
    """
    words = sorted(set(vocabulary))
    for word in words:
        if not word or any(ch.isspace() for ch in word):
            raise ValueError(f"Vocabulary word {word!r} is empty or holds whitespace; a word-level tokenizer splits on whitespace, so give single words.")
        if word in SPECIAL_TOKENS:
            raise ValueError(f"Vocabulary word {word!r} is a special token of the word-level tokenizer; remove it from the vocabulary.")
    if not words:
        raise ValueError("The vocabulary is empty; give at least one word.")
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=1_000_000, clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> list[Path]:
    """``save_pretrained`` into ``directory``, each file written atomically and with sorted JSON
    keys, so the same tokenizer always gives byte-identical files.  Returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / ".tokenizer-staging"
    staging.mkdir(exist_ok=True)
    try:
        written = tokenizer.save_pretrained(staging)
        paths = []
        for name in sorted({Path(p).name for p in written if Path(p).exists()}):
            source = staging / name
            data = source.read_bytes()
            if name.endswith(".json"):
                data = (json.dumps(json.loads(data), indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
            write_atomic(directory / name, lambda tmp, data=data: tmp.write_bytes(data))
            paths.append(directory / name)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return paths


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(directory)`` (offline: a local directory only)."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").exists() and not (directory / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"{directory} holds no saved tokenizer (tokenizer.json missing); save one with save_tokenizer first.")
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def is_word_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True for a tokenizer whose backend is a ``tokenizers`` WordLevel model."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.model, models.WordLevel)


def bos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.bos_token_id is None:
        raise ValueError("The tokenizer has no BOS token; the behaviors put BOS first, so give a tokenizer with a bos_token.")
    return int(tokenizer.bos_token_id)


def encode_words(
    tokenizer: PreTrainedTokenizerBase, words: Sequence[str], glue: Glue = glue_punctuation, where: str = "", first: bool = True,
) -> list[int]:
    """One token id per word (no BOS).  ``where`` names the example in errors.  ``first``: the
    first word starts the text (no leading space for a BPE tokenizer)."""
    ids = []
    word_level = is_word_level(tokenizer)
    for i, word in enumerate(words):
        if word_level:
            token = tokenizer.convert_tokens_to_ids(word)
            if token is None or token == tokenizer.unk_token_id and word != tokenizer.unk_token:
                raise ValueError(f"Word {word!r}{where} is not in the tokenizer's vocabulary; build the tokenizer from the behavior's vocabulary().")
            ids.append(int(token))
            continue
        previous = words[i - 1] if i else None
        bare = (i == 0 and first) or glue(previous, word)
        pieces = tokenizer.encode(word if bare else " " + word, add_special_tokens=False)
        if len(pieces) != 1:
            raise ValueError(f"Word {word!r}{where} is {len(pieces)} tokens for this tokenizer, not one; use words that are single tokens.")
        ids.append(int(pieces[0]))
    return ids


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], glue: Glue = glue_punctuation, column: str = "clean",
) -> torch.Tensor:
    """Texts (words separated by spaces) as a (batch, pos) int64 tensor, BOS first, one token per
    word.  All texts must have the same number of words (the datasets are pad-free)."""
    if not texts:
        raise ValueError(f"Column {column!r} is empty; ask for at least one example.")
    first = bos_id(tokenizer)
    rows = []
    for i, text in enumerate(texts):
        words = text.split(" ")
        rows.append([first, *encode_words(tokenizer, words, glue, where=f" (example {i}, column {column!r})")])
        if len(rows[-1]) != len(rows[0]):
            raise ValueError(
                f"Example {i} of column {column!r} has {len(words)} words but example 0 has {len(rows[0]) - 1}; "
                "every prompt of a dataset must have the same length (no padding): fix the templates or the inputs."
            )
    return torch.tensor(rows, dtype=torch.long)


def encode_answers(
    tokenizer: PreTrainedTokenizerBase, answers: Sequence[str], glued: bool = False, column: str = "answer",
) -> torch.Tensor:
    """Answer words (each one token, following the prompt) as a (batch,) int64 tensor.  ``glued``:
    the answer follows the prompt's last word without a space (greater-than's "YY")."""
    glue: Glue = (lambda previous, word: True) if glued else glue_punctuation
    return torch.tensor(
        [encode_words(tokenizer, [word], glue, where=f" (example {i}, column {column!r})", first=False)[0] for i, word in enumerate(answers)],
        dtype=torch.long,
    )


def encode_training(frame: pl.DataFrame, tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """A ``training_examples`` frame (``prompt``, ``target``) for next-token training.

    Returns ``tokens`` (batch, pos) int64 = [BOS] prompt target, right-padded with PAD to the
    longest row, and ``loss_mask`` (batch, pos) bool: True at t where the logits at t must predict
    ``tokens[:, t + 1]``, a target word.  Train with the mean cross-entropy over the True entries.
    """
    for column in ("prompt", "target"):
        if column not in frame.columns:
            raise ValueError(f"The training frame has no {column!r} column; make it with the behavior's training_examples().")
    first = bos_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else first
    rows, masks = [], []
    for i, (prompt, target) in enumerate(zip(frame["prompt"].to_list(), frame["target"].to_list())):
        prompt_ids = encode_words(tokenizer, prompt.split(" "), where=f" (training example {i}, prompt)")
        target_ids = encode_words(tokenizer, target.split(" "), where=f" (training example {i}, target)", first=False)
        rows.append([first, *prompt_ids, *target_ids])
        start = len(prompt_ids)  # logits at position len(prompt) (the last prompt word) predict the first target word
        masks.append([start <= t < start + len(target_ids) for t in range(len(rows[-1]))])
    width = max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, mask) in enumerate(zip(rows, masks)):
        tokens[i, : len(row)] = torch.tensor(row)
        loss_mask[i, : len(mask)] = torch.tensor(mask)
    return {"tokens": tokens, "loss_mask": loss_mask}
