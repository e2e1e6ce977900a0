"""Resample ablation over K corrupted inputs (evaluation/resamples.py): K = 1 is today's bytes, and
the batched, aggregated scores equal a loop over the copies aggregated by hand."""

import math

import pytest
import torch

from circuitflow.evaluation.faithfulness import per_example_scores
from circuitflow.evaluation.resamples import (
    aggregate,
    ladder,
    resample_evaluation,
    resample_indices,
)
from circuitflow.graph import Graph
from circuitflow.metrics import kl_divergence
from circuitflow.patching import run_circuits, source_outputs

N, POS = 10, 6


@pytest.fixture
def setup(make_model):
    model = make_model(0, n_layers=2)
    graph = Graph.from_config(model.cfg)
    generator = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 50, (N, POS), generator=generator)
    corrupted = source_outputs(model, graph, torch.randint(0, 50, (N, POS), generator=generator))
    answers = torch.randint(0, 50, (N, 2), generator=generator)
    masks = (torch.rand(5, graph.n_edges, generator=generator) < 0.4).float()
    masks[0] = 0  # the empty circuit: every edge carries its corrupted value

    def score(circuit_logits, model_logits, index):  # -(logit a - logit b) at the last position
        last = circuit_logits[:, -1]
        return -(last.gather(-1, answers[index, :1]) - last.gather(-1, answers[index, 1:])).squeeze(-1)

    def kl(circuit_logits, model_logits, index):
        return kl_divergence(model_logits[:, -1], circuit_logits[:, -1])

    return model, graph, clean, corrupted, masks, score, kl


def test_indices_pair_copy_zero_as_today_and_grow_by_prefix():
    indices = resample_indices(12, 4, seed=5)
    assert torch.equal(indices[0], torch.arange(12))
    assert all(torch.equal(row.sort().values, torch.arange(12)) for row in indices)  # permutations
    assert torch.equal(resample_indices(12, 2, seed=5), indices[:2])
    assert torch.equal(resample_indices(12, 4, seed=5), indices)  # deterministic
    assert not torch.equal(resample_indices(12, 4, seed=6), indices)
    assert ladder(1) == [1] and ladder(8) == [1, 2, 4, 8] and ladder(6) == [1, 2, 4, 6]


@pytest.mark.parametrize("how", ["logits", "probabilities"])
def test_k_1_is_todays_bytes(setup, how):
    model, graph, clean, corrupted, masks, score, kl = setup
    today = per_example_scores(model, graph, clean, corrupted, masks, score, batch_size=4)
    result = resample_evaluation(model, graph, clean, corrupted, masks, score, resample_indices(N, 1, 0),
                                 aggregates=(how,), kl=kl, batch_size=4)
    assert result.scores[how, 1].numpy().tobytes() == today.numpy().tobytes()
    assert result.per_copy[:, 0].numpy().tobytes() == today.numpy().tobytes()


def _by_hand(model, graph, clean, corrupted, masks, score, kl, indices, k, how):
    """Each copy through the engine on its own, then the aggregate written out."""
    logits = torch.stack([run_circuits(model, graph, clean, corrupted[:, indices[j]], masks) for j in range(k)])  # (k, circuit, n, pos, vocab)
    if how == "logits":
        combined = logits.mean(0)
    else:
        combined = torch.log(torch.softmax(logits.double(), -1).mean(0))
    model_logits = model(clean)
    everyone = torch.arange(N)
    return (torch.stack([score(combined[c], model_logits, everyone) for c in range(masks.shape[0])]).double(),
            torch.stack([kl(combined[c].float(), model_logits, everyone) for c in range(masks.shape[0])]).double(),
            torch.stack([torch.stack([score(logits[j, c], model_logits, everyone) for j in range(k)]) for c in range(masks.shape[0])]).double())


@pytest.mark.parametrize("how", ["logits", "probabilities"])
def test_aggregates_equal_a_loop_over_the_copies(setup, how):
    model, graph, clean, corrupted, masks, score, kl = setup
    indices = resample_indices(N, 4, seed=2)
    result = resample_evaluation(model, graph, clean, corrupted, masks, score, indices, ks=[2, 4], aggregates=(how,), kl=kl, batch_size=4)
    with torch.no_grad():
        for k in (2, 4):
            scores, kls, copies = _by_hand(model, graph, clean, corrupted, masks, score, kl, indices, k, how)
            torch.testing.assert_close(result.scores[how, k], scores, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(result.kl[how, k], kls, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(result.per_copy, copies, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(result.scores[how, 4], result.scores[how, 1] if (how, 1) in result.scores else result.per_copy[:, 0])


def test_the_two_aggregates_differ_and_agree_on_identical_copies():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 4, 7, generator=generator, dtype=torch.float64)
    assert not torch.allclose(torch.softmax(aggregate(logits, "logits"), -1), torch.softmax(aggregate(logits, "probabilities"), -1))
    same = logits[:1].expand(3, -1, -1, -1)
    torch.testing.assert_close(torch.softmax(aggregate(same, "probabilities"), -1), torch.softmax(logits[0], -1))
    torch.testing.assert_close(aggregate(same, "logits"), logits[0])
    expected = torch.log(torch.softmax(logits, -1).mean(0))
    torch.testing.assert_close(aggregate(logits, "probabilities"), expected)
    assert aggregate(logits[:1], "probabilities") is not None and torch.equal(aggregate(logits[:1], "probabilities"), logits[0])
    assert math.isfinite(float(aggregate(logits, "probabilities").exp().sum(-1).mean()))


def test_bad_inputs_are_one_sentence(setup):
    model, graph, clean, corrupted, masks, score, _ = setup
    with pytest.raises(ValueError, match="choose one of"):
        aggregate(torch.zeros(2, 1, 1, 3), "median")
    with pytest.raises(ValueError, match="Every k"):
        resample_evaluation(model, graph, clean, corrupted, masks, score, resample_indices(N, 2, 0), ks=[3])
    with pytest.raises(ValueError, match="one row"):
        resample_evaluation(model, graph, clean, corrupted[:, :1], masks, score, resample_indices(N, 2, 0))
