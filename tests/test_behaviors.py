"""The papers' behaviors at the word level: exact prompt formats, determinism, corruptions, score
signs on hand-built logits, encoding with a word-level and a BPE tokenizer, and EAP through them."""

import polars as pl
import pytest
import torch
from conftest import small_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from circuitflow.behaviors import (
    BEHAVIORS,
    docstring,
    get_behavior,
    greater_than,
    induction,
    ioi,
)
from circuitflow.behaviors.tokenizer import (
    build_word_tokenizer,
    encode_training,
    load_tokenizer,
    save_tokenizer,
)
from circuitflow.discovery.eap import eap_scores
from circuitflow.graph import Graph
from circuitflow.ablation import ablation_values
from circuitflow.patching import run_circuits, source_outputs

WORD_BEHAVIORS = ("ioi", "greater-than", "docstring", "induction")


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    """One saved-and-reloaded word-level tokenizer over all four behaviors' vocabularies."""
    words = [w for name in WORD_BEHAVIORS for w in get_behavior(name).vocabulary()]
    directory = tmp_path_factory.mktemp("tok")
    save_tokenizer(build_word_tokenizer(words), directory)
    return load_tokenizer(directory)


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A small GPT-2-style byte-level BPE tokenizer whose merges make every vocabulary word, bare
    and with a leading space, one token (and never merge across words, as GPT-2 does for " 17"+"32")."""
    words = sorted({w for name in WORD_BEHAVIORS for w in get_behavior(name).vocabulary()})
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=5000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator((words + [" " + w for w in words]) * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def logits_like(examples, vocab_size):
    return torch.zeros(*examples["clean"].shape, vocab_size)


# ---- formats and determinism -------------------------------------------------------------------
@pytest.mark.parametrize("name", WORD_BEHAVIORS)
def test_datasets_are_deterministic_from_the_seed(name):
    behavior = get_behavior(name)
    assert behavior.make_dataset(20, 3).equals(behavior.make_dataset(20, 3))
    assert not behavior.make_dataset(20, 3).equals(behavior.make_dataset(20, 4))
    assert behavior.make_dataset(None, 0).height == 100
    training = behavior.training_examples(20, 3)
    assert training.equals(behavior.training_examples(20, 3)) and training.columns == ["prompt", "target"]
    assert training["prompt"].to_list() != behavior.make_dataset(20, 3)["clean"].to_list()  # another random stream


@pytest.mark.parametrize("name", WORD_BEHAVIORS)
def test_vocabulary_holds_every_word_and_prompts_have_one_length(name):
    behavior = get_behavior(name)
    vocabulary = behavior.vocabulary()
    assert vocabulary == sorted(set(vocabulary))
    frame, training = behavior.make_dataset(200, 0), behavior.training_examples(200, 0)
    texts = [*frame["clean"], *frame["corrupted"], *training["prompt"], *training["target"]]
    assert {w for text in texts for w in text.split(" ")} <= set(vocabulary)
    assert len({len(text.split(" ")) for text in [*frame["clean"], *frame["corrupted"]]}) == 1


def test_ioi_prompts_follow_the_templates_with_abc_corruption():
    assert ioi._fill(ioi.TEMPLATES[0], "Mary", "John", "John", "store", "drink") == "When Mary and John went to the store , John gave a drink to"
    assert {len(t.split(" ")) for t in ioi.TEMPLATES} == {14}
    frame = ioi.make_dataset(40, 0)
    assert frame["order"].to_list() == ["ABBA", "BABA"] * 20
    for row in frame.iter_rows(named=True):
        first, second = (row["io"], row["s"]) if row["order"] == "ABBA" else (row["s"], row["io"])
        place, obj = row["place"], row["object"]
        template = ioi.TEMPLATES[row["template"]]
        assert row["clean"] == ioi._fill(template, first, second, row["s"], place, obj)
        x, y, z = row["corrupted_names"]
        assert len({x, y, z, row["io"], row["s"]}) == 5
        assert row["corrupted"] == ioi._fill(template, x, y, z, place, obj)


def test_greater_than_prompts_and_01_corruption():
    frame = greater_than.make_dataset(50, 0)
    for row in frame.iter_rows(named=True):
        c, yy = row["century"], row["yy"]
        assert row["clean"] == f"The {row['noun']} lasted from the year {c} {yy:02d} to the year {c}"
        assert row["corrupted"] == f"The {row['noun']} lasted from the year {c} 01 to the year {c}"
        assert 2 <= yy <= 98 and c in greater_than.CENTURIES
    training = greater_than.training_examples(200, 0)
    assert all(int(t) > int(p.split(" ")[7]) for p, t in zip(training["prompt"], training["target"]))


def test_docstring_prompts_document_the_parameters_in_order():
    assert not set(docstring.NAMES) & set(docstring.WORDS)
    frame = docstring.make_dataset(30, 0)
    for row in frame.iter_rows(named=True):
        words = row["clean"].split(" ")
        assert words[:4] == ["def", words[1], "(", "self"] and words[16:19] == [")", ":", '"""']
        def_args = words[5:16:2]
        assert words[6:16:2] == [","] * 5 and len(def_args) == 6
        assert words[22:24] == [":", "param"] and words[28:30] == [":", "param"] and words[34:] == [":", "param"]
        assert [words[24], words[30]] == def_args[2:4] and row["answer"] == def_args[4]
        corrupted = row["corrupted"].split(" ")
        assert corrupted[1] == words[1] and corrupted[19:22] == words[19:22]  # method name, description
        assert corrupted[5:8:2] == def_args[:2] and corrupted[15] == def_args[5]  # prefix and suffix kept
        assert row["answer"] not in corrupted and len(set(corrupted[9:14:2]) & set(def_args)) == 0
        assert len(row["wrong"]) == 13 == len(set(row["wrong"])) and row["answer"] not in row["wrong"]
        assert set(def_args) - {row["answer"]} <= set(row["wrong"]) and {corrupted[24], corrupted[30]} <= set(row["wrong"])


def test_induction_repeats_and_corrupts_with_another_row():
    frame = induction.make_dataset(30, 0)
    clean = frame["clean"].to_list()
    for i, row in enumerate(frame.iter_rows(named=True)):
        words = row["clean"].split(" ")
        assert len(words) == 20 and words[:10] == words[10:] and len(set(words[:10])) == 10
        assert row["corrupted"] in clean and clean.index(row["corrupted"]) != i
    assert sorted(frame["corrupted"].to_list()) == sorted(clean)  # a permutation of the rows
    with pytest.raises(ValueError, match="n_examples >= 2"):
        induction.make_dataset(1, 0)


# ---- encoding ----------------------------------------------------------------------------------
def test_encode_gives_tensors_with_bos_and_answers(word_tokenizer):
    vocab = word_tokenizer.get_vocab()
    frame = ioi.make_dataset(6, 0)
    examples = get_behavior("ioi").encode(frame, word_tokenizer)
    assert examples["clean"].shape == (6, 15) and (examples["clean"][:, 0] == word_tokenizer.bos_token_id).all()
    assert examples["io"].tolist() == [vocab[w] for w in frame["io"]]
    assert examples["clean"][0, 1:].tolist() == [vocab[w] for w in frame["clean"][0].split(" ")]
    gt = get_behavior("greater-than").encode(greater_than.make_dataset(3, 0), word_tokenizer)
    assert gt["year_ids"].shape == (3, 100) and gt["year_ids"][0, 32] == vocab["32"]
    ind = get_behavior("induction").encode(induction.make_dataset(3, 0), word_tokenizer)
    assert ind["loss_mask"][0].nonzero().flatten().tolist() == list(range(11, 20))


def test_encode_names_words_the_tokenizer_lacks(tmp_path, word_tokenizer):
    small = [w for w in ioi.vocabulary() if w != "Mary"]
    save_tokenizer(build_word_tokenizer(small), tmp_path)
    frame = pl.DataFrame({"clean": ["When Mary and John went to the store , John gave a drink to"] * 2,
                          "corrupted": ["When Tom and John went to the store , Bob gave a drink to"] * 2, "io": ["Mary"] * 2, "s": ["John"] * 2})
    with pytest.raises(ValueError, match=r"Word 'Mary' \(example 0, column 'clean'\) is not in the tokenizer's vocabulary"):
        ioi.encode(frame, load_tokenizer(tmp_path))
    uneven = frame.with_columns(pl.Series("corrupted", ["When Tom and John went to the store , Bob gave a drink to", "Tom and John went to the store , Bob gave a drink to"]))
    with pytest.raises(ValueError, match="Example 1 of column 'corrupted' has 13 words but example 0 has 14"):
        ioi.encode(uneven, word_tokenizer)


def test_a_bpe_tokenizer_gets_the_natural_text_one_token_per_word(bpe_tokenizer):
    """The same datasets serve a GPT-2-style tokenizer: glued punctuation and years give the ids of
    the natural text ("store, John", "year 1732")."""
    tok = bpe_tokenizer
    bos = tok.bos_token_id
    frame = ioi.make_dataset(4, 0)
    examples = ioi.encode(frame, tok)
    natural = frame["clean"][0].replace(" , ", ", ").replace(" . ", ". ")
    assert examples["clean"][0].tolist() == [bos, *tok.encode(natural, add_special_tokens=False)]
    assert examples["io"][0].item() == tok.encode(" " + frame["io"][0], add_special_tokens=False)[0]
    gt = greater_than.encode(greater_than.make_dataset(4, 0), tok)
    assert tok.convert_ids_to_tokens(gt["clean"][0].tolist())[6:10] == ["Ġyear", "Ġ" + greater_than.make_dataset(4, 0)["century"][0], f"{greater_than.make_dataset(4, 0)['yy'][0]:02d}", "Ġto"]
    assert tok.convert_ids_to_tokens(gt["year_ids"][0, [0, 32]].tolist()) == ["00", "32"]
    doc = docstring.encode(docstring.make_dataset(2, 0), tok)
    assert tok.decode(doc["clean"][0, 1:9]).startswith("def ") and "(self, " in tok.decode(doc["clean"][0, 1:9])
    odd = frame.with_columns(pl.Series("clean", ["When Xanthippe and John went to the store , John gave a drink to"] * 4))
    with pytest.raises(ValueError, match=r"Word 'Xanthippe' \(example 0, column 'clean'\) is \d+ tokens for this tokenizer, not one"):
        ioi.encode(odd, tok)


# ---- scores ------------------------------------------------------------------------------------
def test_ioi_score_prefers_the_indirect_object(word_tokenizer):
    examples = ioi.encode(ioi.make_dataset(4, 0), word_tokenizer)
    right, wrong = logits_like(examples, len(word_tokenizer)), logits_like(examples, len(word_tokenizer))
    right[torch.arange(4), -1, examples["io"]] = 5.0
    wrong[torch.arange(4), -1, examples["s"]] = 5.0
    assert ioi.score(right, wrong, examples).tolist() == [-5.0] * 4
    assert ioi.score(wrong, right, examples).tolist() == [5.0] * 4
    assert ioi.attribution_metric(right, examples).item() == 20.0
    assert torch.equal(ioi.kl_divergence(right, right, examples), torch.zeros(4)) and (ioi.kl_divergence(wrong, right, examples) > 0).all()


def test_greater_than_score_prefers_later_years(word_tokenizer):
    examples = greater_than.encode(greater_than.make_dataset(4, 0), word_tokenizer)
    right, wrong = logits_like(examples, len(word_tokenizer)), logits_like(examples, len(word_tokenizer))
    for i, yy in enumerate(examples["yy"].tolist()):
        right[i, -1, examples["year_ids"][i, yy + 1]] = 30.0  # all mass on a later year
        wrong[i, -1, examples["year_ids"][i, yy - 1]] = 30.0  # all mass on an earlier year
    assert torch.allclose(greater_than.score(right, right, examples), -torch.ones(4), atol=1e-6)
    assert torch.allclose(greater_than.score(wrong, right, examples), torch.ones(4), atol=1e-6)
    same = logits_like(examples, len(word_tokenizer))
    same[torch.arange(4), -1, examples["year_ids"][torch.arange(4), examples["yy"]]] = 30.0
    assert torch.allclose(greater_than.score(same, same, examples), -torch.ones(4), atol=1e-6)  # YY itself counts as ">="
    assert torch.allclose(greater_than.attribution_metric(right, examples), torch.tensor(4.0), atol=1e-5)


def test_docstring_score_is_the_margin_over_the_best_wrong_name(word_tokenizer):
    examples = docstring.encode(docstring.make_dataset(3, 0), word_tokenizer)
    logits = logits_like(examples, len(word_tokenizer))
    logits[torch.arange(3), -1, examples["answer"]] = 3.0
    logits[torch.arange(3), -1, examples["wrong"][:, 7]] = 1.0
    assert docstring.score(logits, logits, examples).tolist() == [-2.0] * 3
    logits[torch.arange(3), -1, examples["wrong"][:, 2]] = 4.0
    assert docstring.score(logits, logits, examples).tolist() == [1.0] * 3
    assert docstring.attribution_metric(logits, examples).item() == -3.0


def test_induction_score_is_the_masked_nll(word_tokenizer):
    examples = induction.encode(induction.make_dataset(3, 0), word_tokenizer)
    vocab_size = len(word_tokenizer)
    uniform = logits_like(examples, vocab_size)
    right = uniform.clone()
    right[:, :-1].scatter_(-1, examples["clean"][:, 1:, None], 50.0)  # predicts every next token
    assert torch.allclose(induction.score(uniform, uniform, examples), torch.full((3,), torch.log(torch.tensor(float(vocab_size)))))
    assert (induction.score(right, uniform, examples) < 1e-6).all()
    half_right = uniform.clone()  # right everywhere except at the masked positions: still uniform loss
    half_right[:, :11].scatter_(-1, examples["clean"][:, 1:12, None], 50.0)
    assert torch.allclose(induction.score(half_right, uniform, examples), induction.score(uniform, uniform, examples))
    assert torch.allclose(induction.attribution_metric(uniform, examples), -induction.score(uniform, uniform, examples).sum())
    assert torch.equal(induction.kl_divergence(right, right, examples), torch.zeros(3))


# ---- registry and the engine -------------------------------------------------------------------
def test_registry_names_and_errors():
    assert set(WORD_BEHAVIORS) | {"tracr-reverse", "tracr-proportion"} == set(BEHAVIORS)
    assert all(get_behavior(n).word_level for n in WORD_BEHAVIORS)
    assert not get_behavior("tracr-reverse").word_level and get_behavior("tracr-reverse").training_examples is None
    ids = pl.DataFrame({"clean": [[0, 2, 3]], "corrupted": [[0, 3, 2]], "answer": [[1, 2]]})
    assert get_behavior("tracr-reverse").encode(ids, None)["clean"].tolist() == [[0, 2, 3]]
    with pytest.raises(ValueError, match="Unknown behavior 'iio'"):
        get_behavior("iio")
    with pytest.raises(ValueError, match="names no file"):
        get_behavior("bigbench:")


@pytest.mark.parametrize("name", WORD_BEHAVIORS)
def test_eap_runs_through_each_behavior_metric(name, word_tokenizer):
    """The metrics are differentiable through the patching engine, and all-edges-kept gives the
    model's own score."""
    behavior = get_behavior(name)
    examples = behavior.encode(behavior.make_dataset(4, 0), word_tokenizer)
    model = small_model(seed=0, d_vocab=len(word_tokenizer), n_ctx=40, n_layers=2, dtype=torch.float64)
    graph = Graph.from_config(model.cfg)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, examples["corrupted"]))
    scores = eap_scores(model, graph, examples["clean"], ablated, lambda logits, index: behavior.attribution_metric(logits, {k: v[index] for k, v in examples.items()}))
    assert scores.shape == (graph.n_edges,) and torch.isfinite(scores).all() and scores.abs().max() > 0
    with torch.no_grad():
        model_logits = model(examples["clean"])
        kept = run_circuits(model, graph, examples["clean"], ablated, torch.ones(graph.n_edges, dtype=torch.float64))
    assert torch.allclose(behavior.score(kept, model_logits, examples), behavior.score(model_logits, model_logits, examples), atol=1e-8)
    assert torch.allclose(behavior.kl_divergence(kept, model_logits, examples), torch.zeros(4, dtype=torch.float64), atol=1e-10)


def test_training_examples_encode_with_the_loss_on_the_answer(word_tokenizer):
    for name in WORD_BEHAVIORS:
        frame = get_behavior(name).training_examples(5, 0)
        out = encode_training(frame, word_tokenizer)
        targets = [word_tokenizer.get_vocab()[w] for t in frame["target"] for w in t.split(" ")]
        assert out["tokens"][:, 1:][out["loss_mask"][:, :-1]].tolist() == targets
    # induction's training loss sits exactly where its evaluation loss does
    train = encode_training(induction.training_examples(3, 0), word_tokenizer)
    evaluate = induction.encode(induction.make_dataset(3, 0), word_tokenizer)
    assert torch.equal(train["loss_mask"], evaluate["loss_mask"])
