"""BIG-bench-style JSON tasks: the dataset, the target-respecting derangement, the score, and one
clear error (naming the example) for each kind of bad file."""

import json

import numpy as np
import pytest
import torch

from circuitflow.behaviors import bigbench, get_behavior
from circuitflow.behaviors.tokenizer import (
    build_word_tokenizer,
    load_tokenizer,
    save_tokenizer,
)
from circuitflow.io import write_json_atomic, write_text_atomic

EXAMPLES = [
    {"input": "2 plus 3 is", "target": "5"},
    {"input": "1 plus 1 is", "target": "2"},
    {"input": "4 plus  4\\nis".replace("\\n", "\n"), "target": ["8"]},
    {"input": "3 plus 2 is", "target": "5"},
    {"input": "0 plus 2 is", "target": "2"},
    {"input": "6 plus 3 is", "target": "9"},
]


def task(tmp_path, examples=EXAMPLES, name="task.json"):
    path = tmp_path / name
    write_json_atomic(path, {"name": "addition", "examples": examples})
    return path


def tokenizer_for(tmp_path, path, drop=()):
    save_tokenizer(build_word_tokenizer([w for w in bigbench.vocabulary(path) if w not in drop]), tmp_path / "tok")
    return load_tokenizer(tmp_path / "tok")


def test_dataset_pairs_each_input_with_another_target(tmp_path):
    path = task(tmp_path)
    frame = bigbench.make_dataset(path, None, seed=0)
    assert frame["clean"].to_list() == ["2 plus 3 is", "1 plus 1 is", "4 plus 4 is", "3 plus 2 is", "0 plus 2 is", "6 plus 3 is"]
    assert frame["answer"].to_list() == ["5", "2", "8", "5", "2", "9"]
    partners = [frame["clean"].to_list().index(c) for c in frame["corrupted"]]
    assert sorted(partners) == list(range(6))
    assert all(frame["answer"][j] == frame["corrupted_answer"][i] != frame["answer"][i] for i, j in enumerate(partners))
    assert frame.equals(bigbench.make_dataset(path, None, seed=0))
    sample = bigbench.make_dataset(path, 4, seed=1)
    assert sample.height == 4 and sample["index"].to_list() == sorted(sample["index"].to_list())
    with pytest.raises(ValueError, match="ask for 2 to 6, not 7"):
        bigbench.make_dataset(path, 7, seed=0)


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
    with pytest.raises(ValueError, match="3 of the 5 examples have target 'a', more than half"):
        bigbench.pairing(["a", "b", "a", "c", "a"], np.random.default_rng(0))


def test_behavior_from_the_registry_encodes_and_scores(tmp_path):
    path = task(tmp_path)
    behavior = get_behavior(f"bigbench:{path}")
    assert behavior.name == f"bigbench:{path}" and behavior.word_level
    assert behavior.vocabulary() == sorted({"0", "1", "2", "3", "4", "5", "6", "8", "9", "plus", "is"})
    tok = tokenizer_for(tmp_path, path)
    examples = behavior.encode(behavior.make_dataset(None, 0), tok)
    vocab = tok.get_vocab()
    assert examples["clean"].shape == (6, 5) and examples["clean"][2].tolist() == [tok.bos_token_id, vocab["4"], vocab["plus"], vocab["4"], vocab["is"]]
    logits = torch.zeros(6, 5, len(tok))
    logits[torch.arange(6), -1, examples["answer"]] = 2.0
    assert behavior.score(logits, logits, examples).tolist() == [-2.0] * 6
    logits[torch.arange(6), -1, examples["corrupted_answer"]] = 3.0
    assert behavior.score(logits, logits, examples).tolist() == [1.0] * 6
    assert behavior.attribution_metric(logits, examples).item() == -6.0
    training = behavior.training_examples(10, 0)
    assert training.height == 10 and set(training["target"]) <= {"5", "2", "8", "9"}


def test_encode_names_the_example_whose_target_the_tokenizer_lacks(tmp_path):
    path = task(tmp_path)
    tok = tokenizer_for(tmp_path, path, drop=("9",))
    with pytest.raises(ValueError, match=r"Word '9' \(target of example 5 of .*task.json\) is not in the tokenizer's vocabulary"):
        bigbench.encode(bigbench.make_dataset(path, None, 0), tok, path=path)


@pytest.mark.parametrize("examples, message", [
    ([{"input": "2 plus 3 is"}, *EXAMPLES], "Example 0 of .* has no 'target' field"),
    ([*EXAMPLES, {"target": "4"}], "Example 6 of .* has no 'input' field"),
    ([*EXAMPLES[:3], {"input": "1 plus 2 is", "target": "three or 3"}], "Example 3 of .* has target 'three or 3', which is not one word"),
    ([*EXAMPLES[:2], {"input": "1 plus 2 is", "target": 3}], "Example 2 of .*'target' a string"),
    ([*EXAMPLES[:4], {"input": "what is 1 plus 2", "target": "3"}], "Example 4 of .* has 5 input words but example 0 has 4"),
    ([EXAMPLES[0]], "needs an 'examples' list of at least 2"),
    ([*EXAMPLES[:2], "1 plus 2 is 3"], "Example 2 of .* is not an object"),
])
def test_bad_files_are_one_sentence_naming_the_example(tmp_path, examples, message):
    with pytest.raises(ValueError, match=message):
        bigbench.read_examples(task(tmp_path, examples))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bigbench.make_dataset(tmp_path / "nope.json", None, 0)
    write_text_atomic(tmp_path / "broken.json", '{"examples": [')
    with pytest.raises(ValueError, match="is not valid JSON"):
        bigbench.read_examples(tmp_path / "broken.json")
    write_text_atomic(tmp_path / "list.json", json.dumps(EXAMPLES))
    with pytest.raises(ValueError, match="needs an 'examples' list"):
        bigbench.read_examples(tmp_path / "list.json")
