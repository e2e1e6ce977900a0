"""Pieces of the pipeline's steps that the end-to-end run cannot pin down on tiny params."""

import torch

from circuitflow.behaviors import get_behavior
from circuitflow.behaviors.tokenizer import build_word_tokenizer, load_tokenizer, save_tokenizer
from circuitflow.pipeline import _answer_positions


def test_answer_positions_are_the_last_or_the_last_predicted_one(tmp_path):
    for name, expected in (("ioi", 14), ("induction", 19)):  # induction: loss_mask True at 11..19 of 21
        behavior = get_behavior(name)
        save_tokenizer(build_word_tokenizer(behavior.vocabulary()), tmp_path / name)
        examples = behavior.encode(behavior.make_dataset(5, 0), load_tokenizer(tmp_path / name))
        assert torch.equal(_answer_positions(examples), torch.full((5,), expected))
