"""The word-level tokenizer: deterministic ids, byte-identical saves, a round trip through
save_pretrained / AutoTokenizer, TransformerLens accepting it, and the word encoders' errors."""

import polars as pl
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.behaviors.tokenizer import (
    SPECIAL_TOKENS,
    build_word_tokenizer,
    encode_answers,
    encode_prompts,
    encode_training,
    encode_words,
    is_word_level,
    load_tokenizer,
    save_tokenizer,
)

WORDS = ["Mary", "John", "gave", "a", "drink", "to", ",", "17", "32"]


@pytest.fixture
def saved(tmp_path):
    save_tokenizer(build_word_tokenizer(WORDS), tmp_path / "tok")
    return load_tokenizer(tmp_path / "tok")


def test_ids_are_the_special_tokens_then_the_sorted_words():
    tok = build_word_tokenizer(reversed(WORDS + ["Mary"]))  # order and duplicates do not matter
    vocab = tok.get_vocab()
    assert [vocab[s] for s in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])][4:] == sorted(WORDS)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (0, 1, 2, 3)


def test_saves_are_byte_identical_for_the_same_vocabulary(tmp_path):
    first = save_tokenizer(build_word_tokenizer(WORDS), tmp_path / "a")
    second = save_tokenizer(build_word_tokenizer(sorted(WORDS, reverse=True)), tmp_path / "b")
    save_tokenizer(build_word_tokenizer(WORDS + ["Alice"]), tmp_path / "c")
    assert [p.name for p in first] == [p.name for p in second] and "tokenizer.json" in [p.name for p in first]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() != (tmp_path / "c" / "tokenizer.json").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [p.name for p in first]  # no staging left behind


def test_round_trip_keeps_ids_and_marks_unknown_words(saved):
    built = build_word_tokenizer(WORDS)
    text = "Mary gave a drink to John"
    assert saved(text, add_special_tokens=False)["input_ids"] == built(text, add_special_tokens=False)["input_ids"]
    assert is_word_level(saved)
    assert saved.decode(saved(text, add_special_tokens=False)["input_ids"]) == text
    assert saved("Mary Alice", add_special_tokens=False)["input_ids"] == [saved.get_vocab()["Mary"], saved.unk_token_id]


def test_transformer_lens_takes_the_loaded_tokenizer(saved):
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2, d_vocab=len(saved), attn_only=True, seed=0)
    model = HookedTransformer(cfg, tokenizer=saved)
    assert model.to_str_tokens("Mary gave John") == ["[BOS]", "Mary", "gave", "John"]
    assert model(model.to_tokens("Mary gave John")).shape == (1, 4, len(saved))


@pytest.mark.parametrize("words, message", [
    (["two words"], "holds whitespace"),
    ([""], "is empty or holds whitespace"),
    (["[PAD]"], "is a special token"),
    ([], "vocabulary is empty"),
])
def test_bad_vocabularies_are_one_sentence(words, message):
    with pytest.raises(ValueError, match=message):
        build_word_tokenizer(words)


def test_loading_a_directory_without_a_tokenizer_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no saved tokenizer"):
        load_tokenizer(tmp_path)


def test_encoders_put_bos_first_and_name_bad_words(saved):
    vocab = saved.get_vocab()
    ids = encode_prompts(saved, ["Mary gave John", "John gave Mary"])
    assert ids.tolist() == [[0, vocab["Mary"], vocab["gave"], vocab["John"]], [0, vocab["John"], vocab["gave"], vocab["Mary"]]]
    assert encode_answers(saved, ["John", "17"]).tolist() == [vocab["John"], vocab["17"]]
    with pytest.raises(ValueError, match=r"Word 'Alice' \(example 1, column 'clean'\) is not in the tokenizer's vocabulary"):
        encode_prompts(saved, ["Mary gave John", "Alice gave John"])
    with pytest.raises(ValueError, match="Example 1 of column 'clean' has 2 words but example 0 has 3"):
        encode_prompts(saved, ["Mary gave John", "Mary gave"])
    with pytest.raises(ValueError, match="Word 'Bob'"):
        encode_words(saved, ["Bob"])


def test_encode_training_masks_exactly_the_target_words(saved):
    vocab = saved.get_vocab()
    frame = pl.DataFrame({"prompt": ["Mary gave a drink to", "Mary gave"], "target": ["John", "a drink"]})
    out = encode_training(frame, saved)
    assert out["tokens"].tolist() == [
        [0, vocab["Mary"], vocab["gave"], vocab["a"], vocab["drink"], vocab["to"], vocab["John"]],
        [0, vocab["Mary"], vocab["gave"], vocab["a"], vocab["drink"], saved.pad_token_id, saved.pad_token_id],
    ]
    # the logits at t predict token t + 1: the target tokens sit right after the masked positions
    assert out["loss_mask"].nonzero().tolist() == [[0, 5], [1, 2], [1, 3]]
    predicted = out["tokens"][:, 1:][out["loss_mask"][:, :-1]]
    assert predicted.tolist() == [vocab["John"], vocab["a"], vocab["drink"]]
    with pytest.raises(ValueError, match="no 'target' column"):
        encode_training(frame.drop("target"), saved)
    assert torch.equal(encode_training(frame, saved)["tokens"], out["tokens"])
