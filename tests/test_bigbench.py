"""BIG-bench JSON tasks in the real task.json format: multiple choice (``target_scores``, appended
choices, ragged inputs), target lists, the prefixes; the dataset rows, the left-padded tensors, the
score and metric against hand computations on a tiny model, one EAP run, and one clear error (naming
the file and the fix) for each kind of bad file."""

import json

import numpy as np
import polars as pl
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerFast

from circuitflow.behaviors import bigbench, get_behavior
from circuitflow.behaviors.tokenizer import (
    build_word_tokenizer,
    load_tokenizer,
    save_tokenizer,
)
from circuitflow.discovery import DiscoveryTask, discover_scores
from circuitflow.graph import Graph
from circuitflow.io import write_json_atomic, write_text_atomic
from circuitflow.models.organisms import hooked_config
from circuitflow.ablation import ablation_values
from circuitflow.patching import source_outputs
from circuitflow.stages.artefacts import write_parquet

# multiple choice, BIG-bench's defaults (prefixes "\nQ: " / "\nA: ", choices appended), inputs of 3 to 8 words
MULTIPLE_CHOICE = [
    {"input": "2 plus 3 is", "target_scores": {"5": 1, "6": 0, "four": 0}},
    {"input": "1 plus 1\nis", "target_scores": {"2": 1, "3": 0}},
    {"input": "what do you get when adding 4 and 4", "target_scores": {"8": 1, "9": 0.5, "7": 0}, "target": "8"},
    {"input": "0 plus 2", "target_scores": {"two": 1, "5": 0}},
    {"input": "6 plus 3 is", "target_scores": {"9": 1, "8": 0, "6": 0}},
    {"input": "3 plus 3 is", "target_scores": {"6": 1, "9": 0}},
]
# the prompts hand-written from BIG-bench's format: choices in the permutation of the sorted choices seeded by the example's index
MC_PROMPTS = [
    "Q: 2 plus 3 is choice: four choice: 5 choice: 6 A:",
    "Q: 1 plus 1 is choice: 2 choice: 3 A:",
    "Q: what do you get when adding 4 and 4 choice: 9 choice: 7 choice: 8 A:",
    "Q: 0 plus 2 choice: two choice: 5 A:",
    "Q: 6 plus 3 is choice: 6 choice: 8 choice: 9 A:",
    "Q: 3 plus 3 is choice: 9 choice: 6 A:",
]
TARGETS = [
    {"input": "2 plus 3 is", "target": ["5", "five"]},
    {"input": "1 plus 1 is", "target": "2"},
    {"input": "4 plus  4\nis", "target": ["8"]},
    {"input": "3 plus 2 is", "target": "5"},
    {"input": "0 plus 2", "target": "2"},
    {"input": "6 plus 3 is", "target": "nine or 9"},
]


def task(tmp_path, examples, name="task.json", **options):
    path = tmp_path / name
    # json.dumps keeps the choices in the order written, as in BIG-bench's own files (write_json_atomic sorts keys)
    write_text_atomic(path, json.dumps({"name": "addition", "metrics": ["multiple_choice_grade"], **options, "examples": examples}, indent=1))
    return path


def word_tokenizer(tmp_path, path, drop=()):
    save_tokenizer(build_word_tokenizer([w for w in bigbench.vocabulary(path) if w not in drop]), tmp_path / "tok")
    return load_tokenizer(tmp_path / "tok")


def tiny_model(tokenizer, padding_side="left", seed=0):
    """An organism-shaped (pre-LN, GELU, learned positions) random 2-layer transformer, float64."""
    settings = {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_mlp": 32, "attn_only": False}
    torch.manual_seed(seed)
    model = HookedTransformer(hooked_config(settings, d_vocab=len(tokenizer), n_ctx=32)).double()
    model.cfg.dtype = torch.float64
    model.set_tokenizer(tokenizer, default_padding_side=padding_side)
    return model.eval()


# ---- formatting: the file as BIG-bench reads it -------------------------------------------------
def test_multiple_choice_prompts_append_the_choices_between_the_default_prefixes(tmp_path):
    examples = bigbench.read_examples(task(tmp_path, MULTIPLE_CHOICE))
    assert examples["prompt"].to_list() == MC_PROMPTS
    assert examples["answer"].to_list() == ["5", "2", "8", "two", "9", "6"]
    assert examples["wrong"].to_list() == [["6", "four"], ["3"], ["9", "7"], ["5"], ["8", "6"], ["9"]]  # 0.5 < 1 is wrong too
    assert examples["multiple_choice"].all()
    for i, example in enumerate(MULTIPLE_CHOICE):  # "\n  choice: " before each choice, in the index-seeded order
        order = np.random.default_rng([i]).permutation(sorted(example["target_scores"])).tolist()
        assert MC_PROMPTS[i] == "Q: " + " ".join(example["input"].split()) + "".join(f" choice: {c}" for c in order) + " A:"


def test_prefixes_and_a_target_list(tmp_path):
    options = {"task_prefix": "Add the numbers.\n", "example_input_prefix": "\nSum: ", "example_output_prefix": " =\n",
               "choice_prefix": "\n option ", "append_choices_to_input": False}
    mixed = [TARGETS[0], MULTIPLE_CHOICE[1], TARGETS[2]]
    examples = bigbench.read_examples(task(tmp_path, mixed, **options))
    assert examples["prompt"].to_list() == ["Add the numbers. Sum: 2 plus 3 is =", "Add the numbers. Sum: 1 plus 1 is =",
                                            "Add the numbers. Sum: 4 plus 4 is ="]  # no choices appended
    assert examples["answer"].to_list() == ["5", "2", "8"]  # a target list's first
    assert examples["correct"].to_list() == [["5", "five"], ["2"], ["8"]]
    examples = bigbench.read_examples(task(tmp_path, mixed, **dict(options, append_choices_to_input=True)))
    assert examples["prompt"][1] == "Add the numbers. Sum: 1 plus 1 is option 2 option 3 ="


def test_target_dataset_pairs_each_input_with_another_answer(tmp_path):
    path = task(tmp_path, TARGETS)
    frame = bigbench.make_dataset(path, None, seed=0)
    assert frame.columns == ["index", "clean", "corrupted", "answer", "wrong", "corrupted_answer"]
    assert frame["clean"].to_list() == ["Q: 2 plus 3 is A:", "Q: 1 plus 1 is A:", "Q: 4 plus 4 is A:", "Q: 3 plus 2 is A:",
                                        "Q: 0 plus 2 A:", "Q: 6 plus 3 is A:"]
    assert frame["answer"].to_list() == ["5", "2", "8", "5", "2", "nine or 9"]
    partners = [frame["clean"].to_list().index(c) for c in frame["corrupted"]]
    assert sorted(partners) == list(range(6))
    assert all(frame["answer"][j] == frame["corrupted_answer"][i] != frame["answer"][i] for i, j in enumerate(partners))
    assert frame["wrong"].to_list() == [[a] for a in frame["corrupted_answer"]]
    assert frame.equals(bigbench.make_dataset(path, None, seed=0))
    sample = bigbench.make_dataset(path, 4, seed=1)
    assert sample.height == 4 and sample["index"].to_list() == sorted(sample["index"].to_list())
    with pytest.raises(ValueError, match="ask for 2 to 6, not 7"):
        bigbench.make_dataset(path, 7, seed=0)
    training = bigbench.training_examples(path, 10, 0)
    assert training.height == 10 and set(training["target"]) <= {"5", "2", "8", "nine or 9"}


def test_pairing_is_valid_and_falls_back_when_rejection_fails():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 12))
        targets = [str(t) for t in rng.integers(0, 3, size=n)]
        if 2 * max(targets.count(t) for t in set(targets)) > n:
            continue
        for tries in (1000, 0):  # 0 forces the rotation
            sigma = bigbench.pairing(targets, np.random.default_rng(trial), tries=tries)
            assert sorted(sigma.tolist()) == list(range(n))
            assert all(targets[j] != targets[i] for i, j in enumerate(sigma))
    with pytest.raises(ValueError, match="3 of the 5 examples have answer 'a', more than half"):
        bigbench.pairing(["a", "b", "a", "c", "a"], np.random.default_rng(0))
    correct = [["a", "b"], ["b"], ["c"], ["d"]]  # "b" is also right for example 0: never its partner
    for seed in range(20):
        assert bigbench.pairing(["a", "b", "c", "d"], np.random.default_rng(seed), correct=correct)[0] != 1
    with pytest.raises(ValueError, match="whose answer is not one of its own correct answers"):
        bigbench.pairing(["a", "b"], np.random.default_rng(0), correct=[["a", "b"], ["b"]])


# ---- encoding, score and metric -----------------------------------------------------------------
def test_ragged_multiple_choice_is_left_padded_and_scored_against_the_best_wrong_choice(tmp_path):
    path = task(tmp_path, MULTIPLE_CHOICE)
    behavior = get_behavior(f"bigbench:{path}")
    tok = word_tokenizer(tmp_path, path)
    frame = behavior.make_dataset(None, 0)
    assert frame["clean"].to_list() == MC_PROMPTS and frame["wrong"].to_list() == bigbench.read_examples(path)["wrong"].to_list()
    assert all(frame["answer"][i] != frame["corrupted_answer"][i] for i in range(6))
    examples = behavior.encode(frame, tok)
    vocab, pad, bos = tok.get_vocab(), tok.pad_token_id, tok.bos_token_id
    width = 1 + max(len(p.split(" ")) for p in MC_PROMPTS)
    assert examples["clean"].shape == examples["corrupted"].shape == (6, width)
    for i, prompt in enumerate(MC_PROMPTS):
        ids = [bos] + [vocab[w] for w in prompt.split(" ")]
        assert examples["clean"][i].tolist() == [pad] * (width - len(ids)) + ids
        assert examples["clean_attention_mask"][i].tolist() == [0] * (width - len(ids)) + [1] * len(ids)
        j = MC_PROMPTS.index(frame["corrupted"][i])
        assert examples["corrupted"][i].tolist() == examples["clean"][j].tolist()
    assert examples["answer"].tolist() == [vocab[a] for a in ["5", "2", "8", "two", "9", "6"]]
    assert examples["wrong"].tolist() == [[vocab[w] for w in row] for row in [["6", "four"], ["3", "3"], ["9", "7"], ["5", "5"], ["8", "6"], ["9", "9"]]]

    model = tiny_model(tok)
    with torch.no_grad():
        logits = model(examples["clean"])
    margins = []
    for i in range(6):  # by hand: the answer's logit minus the best wrong choice's, at the last position
        last = logits[i, -1]
        margins.append(float(last[vocab[frame["answer"][i]]] - max(last[vocab[w]] for w in frame["wrong"][i])))
    torch.testing.assert_close(behavior.score(logits, logits, examples), -torch.tensor(margins, dtype=torch.float64))
    torch.testing.assert_close(behavior.attribution_metric(logits, examples), torch.tensor(sum(margins), dtype=torch.float64))
    assert behavior.kl_divergence(logits, logits, examples).abs().max() < 1e-12


def test_a_left_padding_model_masks_the_pad_and_sees_the_unpadded_prompt(tmp_path):
    """TransformerLens builds the attention mask from the leading PADs of a left-padding tokenizer and
    shifts the positions; a right-padding one attends to them (the module docstring says so)."""
    path = task(tmp_path, MULTIPLE_CHOICE)
    tok = word_tokenizer(tmp_path, path)
    examples = bigbench.encode(bigbench.make_dataset(path, None, 0), tok, path=path)
    for side, same in (("left", True), ("right", False)):
        model = tiny_model(load_tokenizer(tmp_path / "tok"), padding_side=side)
        with torch.no_grad():
            padded = model(examples["clean"])[:, -1]
            alone = [model(row[mask.bool()][None])[0, -1] for row, mask in zip(examples["clean"], examples["clean_attention_mask"])]
        assert torch.allclose(padded, torch.stack(alone), atol=1e-10) is same


def test_target_task_first_tokens_and_multi_word_answers(tmp_path):
    path = task(tmp_path, TARGETS)
    tok = word_tokenizer(tmp_path, path)
    assert "five" not in tok.get_vocab()  # another correct answer is never written
    frame = bigbench.make_dataset(path, None, 0)
    examples = bigbench.encode(frame, tok, path=path)
    vocab = tok.get_vocab()
    assert examples["answer"].tolist() == [vocab[a.split(" ")[0]] for a in frame["answer"]]  # "nine or 9" -> "nine"
    assert examples["wrong"][:, 0].tolist() == [vocab[a.split(" ")[0]] for a in frame["corrupted_answer"]]
    assert examples["clean"][4, 0] == tok.pad_token_id and examples["clean"][4, 1] == tok.bos_token_id  # "Q: 0 plus 2 A:" is one word short


def test_a_bpe_tokenizer_tokenizes_the_text_and_takes_the_answers_first_token(tmp_path):
    path = task(tmp_path, TARGETS)
    texts = bigbench.vocabulary(path)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([" " + w for w in texts], trainer)
    bpe = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    frame = bigbench.make_dataset(path, None, 0)
    # "[BOS] Q : 0 plus 2 A :" is 8 tokens, the others 9: ragged, and GPT-2-style tokenizers have no PAD
    with pytest.raises(ValueError, match=r"have 8 to 9 tokens but the tokenizer has no PAD token to left-pad them with"):
        bigbench.encode(frame, bpe, path=path)
    bpe.pad_token = bpe.eos_token
    examples = bigbench.encode(frame, bpe, path=path)
    row = examples["clean"][0][examples["clean_attention_mask"][0].bool()].tolist()
    assert row == [bpe.bos_token_id, *bpe("Q: 2 plus 3 is A:", add_special_tokens=False)["input_ids"]]
    assert examples["answer"][5] == bpe(" nine or 9", add_special_tokens=False)["input_ids"][0]


def test_encode_names_the_example_the_tokenizer_cannot_encode(tmp_path):
    path = task(tmp_path, TARGETS)
    tok = word_tokenizer(tmp_path, path, drop=("nine",))
    with pytest.raises(ValueError, match=r"Word 'nine' \(answer of example 5 of .*task.json\) is not in the tokenizer's vocabulary"):
        bigbench.encode(bigbench.make_dataset(path, None, 0), tok, path=path)
    clash = [*MULTIPLE_CHOICE[1:], {"input": "5 plus 5 is", "target_scores": {"ten 10": 1, "ten": 0}}]
    path = task(tmp_path, clash, name="clash.json")
    with pytest.raises(ValueError, match=r"Example 5 of .*clash.json: its answer 'ten 10' and its wrong answer 'ten' start with the same token"):
        bigbench.encode(bigbench.make_dataset(path, None, 0), word_tokenizer(tmp_path, path), path=path)


# ---- generate -> discover -----------------------------------------------------------------------
def test_a_ragged_multiple_choice_task_runs_through_generate_and_eap(tmp_path):
    path = task(tmp_path, MULTIPLE_CHOICE)
    behavior = get_behavior(f"bigbench:{path}")
    write_parquet(tmp_path / "dataset.parquet", behavior.make_dataset(None, 0))  # the generate stage's write
    frame = pl.read_parquet(tmp_path / "dataset.parquet")
    assert frame.equals(behavior.make_dataset(None, 0))
    tok = word_tokenizer(tmp_path, path)
    model = tiny_model(tok)
    examples = behavior.encode(frame, model.tokenizer)
    graph = Graph.from_config(model.cfg)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, examples["corrupted"]))
    discovery = DiscoveryTask(model, graph, examples["clean"], ablated, behavior, examples, batch_size=4)
    scores = discover_scores("eap", discovery)
    assert scores.shape == (graph.n_edges,) and scores.dtype == torch.float64
    assert torch.isfinite(scores).all() and scores.max() > 0
    torch.testing.assert_close(scores, discover_scores("eap", discovery))
    with torch.no_grad():  # the metric EAP differentiates is the summed margin at the full model
        logits = model(examples["clean"])
    torch.testing.assert_close(discovery.metric(logits, torch.arange(6)), -behavior.score(logits, logits, examples).sum())


# ---- bad files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("examples, options, message", [
    ([{"input": "2 plus 3 is"}, *TARGETS], {}, r"Example 0 of .*task.json has neither 'target' nor 'target_scores'; give the answer as 'target'"),
    ([*TARGETS, {"target": "4"}], {}, r"Example 6 of .*task.json has no 'input' field; every example needs an 'input' string\."),
    ([*TARGETS[:2], {"input": "1 plus 2 is", "target": 3}], {}, r"Example 2 of .*: 'target' must be a string or a non-empty list of strings, got 3"),
    ([*TARGETS[:2], {"input": "1 plus 2 is", "target": []}], {}, r"Example 2 of .*: 'target' must be a string or a non-empty list"),
    ([*TARGETS[:2], {"input": "1 plus 2 is", "target": " \n"}], {}, r"Example 2 of .* has a blank target"),
    ([*MULTIPLE_CHOICE[:3], {"input": "1 plus 2 is", "target_scores": {"3": 0, "4": 0}}], {}, r"Example 3 of .* has no choice with a positive score in 'target_scores'; give the right choice a score of 1\."),
    ([*MULTIPLE_CHOICE[:3], {"input": "1 plus 2 is", "target_scores": {"3": 1, "three": 1}}], {}, r"Example 3 of .*: every choice in 'target_scores' has the best score 1, so none is wrong"),
    ([*MULTIPLE_CHOICE[:3], {"input": "1 plus 2 is", "target_scores": {"3": True, "4": False}}], {}, r"Example 3 of .*: the score of choice '3' is true, not a number"),
    ([*MULTIPLE_CHOICE[:3], {"input": "1 plus 2 is", "target_scores": {"3": 1}}], {}, r"Example 3 of .*: 'target_scores' must be an object of at least 2 choices"),
    ([*MULTIPLE_CHOICE[:3], {"input": "1 plus 2 is", "target_scores": {"3": 1, "3 ": 0}}], {}, r"Example 3 of .* has choices that differ only in whitespace"),
    ([TARGETS[0]], {}, r"needs an 'examples' list of at least 2 examples\."),
    ([*TARGETS[:2], "1 plus 2 is 3"], {}, r"Example 2 of .* is a JSON str, not an object"),
    (TARGETS, {"example_input_prefix": None}, r"task.json: 'example_input_prefix' must be a string, got NoneType None; fix it or remove it for BIG-bench's default '\\nQ: '\."),
    (TARGETS, {"append_choices_to_input": "yes"}, r"'append_choices_to_input' must be a boolean, got str 'yes'"),
    ([{"input": "", "target": "1"}, *TARGETS], {"example_input_prefix": "", "example_output_prefix": " "}, r"Example 0 of .* gives an empty prompt"),
])
def test_bad_examples_are_one_sentence_naming_the_file_and_the_fix(tmp_path, examples, options, message):
    with pytest.raises(ValueError, match=message) as caught:
        bigbench.read_examples(task(tmp_path, examples, **options))
    assert "\n" not in str(caught.value) and str(caught.value).endswith(".") and str(tmp_path) in str(caught.value)


def test_bad_files_are_one_sentence_naming_the_file_and_the_fix(tmp_path):
    cases = []
    with pytest.raises(FileNotFoundError, match=r"BIG-bench task file .*nope.json does not exist; give the path") as caught:
        bigbench.make_dataset(tmp_path / "nope.json", None, 0)
    cases.append(caught.value)
    (tmp_path / "simple_arithmetic").mkdir()
    with pytest.raises(ValueError, match=r"BIG-bench task path .*simple_arithmetic is a directory; name the JSON file itself, e.g. bigbench:.*simple_arithmetic/task.json\.") as caught:
        get_behavior(f"bigbench:{tmp_path / 'simple_arithmetic'}").vocabulary()
    cases.append(caught.value)
    (tmp_path / "latin1.json").write_bytes(json.dumps({"examples": [{"input": "café", "target": "x"}] * 2}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.json is not UTF-8 \(byte 0xe9 at offset 28\); re-save it as UTF-8") as caught:
        bigbench.read_examples(tmp_path / "latin1.json")
    cases.append(caught.value)
    write_text_atomic(tmp_path / "broken.json", '{"examples": [')
    with pytest.raises(ValueError, match=r"broken.json is not valid JSON \(Expecting value at line 1, column 15\); fix the file\.") as caught:
        bigbench.read_examples(tmp_path / "broken.json")
    cases.append(caught.value)
    write_text_atomic(tmp_path / "list.json", json.dumps(TARGETS))
    with pytest.raises(ValueError, match=r"list.json holds a JSON list, not an object; a task is an object with an 'examples' list\.") as caught:
        bigbench.read_examples(tmp_path / "list.json")
    cases.append(caught.value)
    write_json_atomic(tmp_path / "parent.json", {"name": "parent", "subtasks": ["a", "b"]})
    with pytest.raises(ValueError, match=r"parent.json needs an 'examples' list of at least 2 examples \(a task split into subtasks: name one subtask's task.json\)\.") as caught:
        bigbench.read_examples(tmp_path / "parent.json")
    cases.append(caught.value)
    assert all("\n" not in str(error) and str(error).endswith(".") for error in cases)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"examples": TARGETS}).encode())  # a UTF-8 BOM is fine
    assert bigbench.read_examples(tmp_path / "bom.json").height == 6
