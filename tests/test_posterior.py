"""Posterior organisms: the SG-MCMC samplers against Bayesian linear regression's closed-form
posterior, their determinism, the priors, and circuit stability (Jaccard, inclusion) by hand."""

import math

import numpy as np
import pytest
import torch

from circuitflow.evaluation.stability import (
    group_stability,
    inclusion_frequency,
    jaccard_matrix,
    mean_jaccard,
    top_n_members,
)
from circuitflow.models.sgmcmc import cyclical_step_size, log_prior, run_chain

# Bayesian linear regression: y = X w + noise (sigma 1), prior w ~ N(0, I / ALPHA).
N, D, ALPHA, CHAINS = 20, 2, 1.0, 256


def _regression():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=generator, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -0.5], dtype=torch.float64) + torch.randn(N, generator=generator, dtype=torch.float64)
    covariance = torch.linalg.inv(ALPHA * torch.eye(D, dtype=torch.float64) + x.T @ x)
    return x, y, covariance @ x.T @ y, covariance


def _chain(sampler, eps, steps, temperature=1.0, seed=0, friction=0.1):
    """CHAINS independent chains at once (their potentials add up, so their gradients separate)."""
    x, y, _, _ = _regression()
    w = torch.zeros(CHAINS, D, dtype=torch.float64, requires_grad=True)

    def potential():
        return 0.5 * ((y - w @ x.T) ** 2).sum() + 0.5 * ALPHA * (w**2).sum()

    kept = run_chain(potential, [w], sampler, steps, lambda step: eps, temperature=temperature, friction=friction,
                     keep=lambda step: step >= steps // 2, seed=seed)
    return torch.cat([sample[0] for sample in kept])  # (kept * CHAINS, D)


@pytest.mark.parametrize("sampler, eps", [("sgld", 2e-3), ("sghmc", 1e-3)])
def test_samplers_recover_the_gaussian_posterior(sampler, eps):
    _, _, mean, covariance = _regression()
    samples = _chain(sampler, eps, 1600)
    torch.testing.assert_close(samples.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), covariance, atol=0.1 * float(covariance.diagonal().max()), rtol=0)


def test_cold_temperature_shrinks_the_covariance():
    _, _, _, covariance = _regression()
    samples = _chain("sgld", 2e-3, 1600, temperature=0.25)
    torch.testing.assert_close(torch.cov(samples.T), 0.25 * covariance, atol=0.03 * float(covariance.diagonal().max()), rtol=0)


@pytest.mark.parametrize("sampler", ["sgld", "sghmc"])
def test_chains_are_deterministic_per_seed(sampler):
    first, again, other = (_chain(sampler, 1e-3, 20, seed=s) for s in (3, 3, 4))
    assert first.numpy().tobytes() == again.numpy().tobytes()
    assert not torch.equal(first, other)


def test_priors_and_schedule():
    theta = [torch.tensor([0.5, -2.0], dtype=torch.float64)]
    gaussian = float(log_prior(theta, "gaussian", 1.0))
    assert math.isclose(gaussian, sum(-0.5 * v * v - 0.5 * math.log(2 * math.pi) for v in (0.5, -2.0)))
    assert math.isclose(float(log_prior(theta, "laplace", 2.0)), sum(-abs(v) / 2 - math.log(4) for v in (0.5, -2.0)))
    mixture = sum(math.log(0.5 * math.exp(-v * v / 2) / math.sqrt(2 * math.pi) + 0.5 * math.exp(-v * v / 0.02) / math.sqrt(2 * math.pi * 0.01))
                  for v in (0.5, -2.0))
    assert math.isclose(float(log_prior(theta, "scale-mixture", 1.0)), mixture, rel_tol=1e-9)
    assert float(log_prior(theta, "student-t", 1.0)) > gaussian  # heavier tails at -2
    with pytest.raises(ValueError, match="choose one of"):
        log_prior(theta, "cauchy", 1.0)
    assert cyclical_step_size(0, 10, 0.4) == pytest.approx(0.4) and cyclical_step_size(10, 10, 0.4) == pytest.approx(0.4)
    assert cyclical_step_size(5, 10, 0.4) == pytest.approx(0.2) and cyclical_step_size(9, 10, 0.4) < 0.01


def test_jaccard_and_inclusion_by_hand():
    scores = np.array([[5.0, 4.0, 3.0, 0.0, 0.0],
                       [5.0, 0.0, 3.0, 4.0, 0.0],
                       [0.0, 0.0, 1.0, 2.0, 3.0]])
    members = top_n_members(scores, 3)
    assert members.tolist() == [[True, True, True, False, False], [True, False, True, True, False], [False, False, True, True, True]]
    assert inclusion_frequency(members).tolist() == pytest.approx([2 / 3, 1 / 3, 1.0, 2 / 3, 1 / 3])
    # {0,1,2} vs {0,2,3}: 2 / 4; {0,1,2} vs {2,3,4}: 1 / 5; {0,2,3} vs {2,3,4}: 2 / 4
    expected = np.array([[1, 0.5, 0.2], [0.5, 1, 0.5], [0.2, 0.5, 1]])
    np.testing.assert_allclose(jaccard_matrix(members), expected)
    assert mean_jaccard(members) == pytest.approx((0.5 + 0.2 + 0.5) / 3)
    assert mean_jaccard(members[:1]) == 1.0
    assert jaccard_matrix(np.zeros((2, 3), dtype=bool)).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="top-n"):
        top_n_members(scores, 6)
    # saved circuits of sizes 2, 3, 1: {0,1}, {0,2,3}, {4}: Jaccard 1/4, 0, 0
    stability = group_stability(scores, np.array([2, 3, 1]), 3)
    assert stability == pytest.approx({"jaccard_top_n": 0.4, "jaccard_saved": 1 / 12, "edges_in_all": 1, "edges_in_any": 5, "inclusion_mean": 0.6})


TINY = {"kind": "posterior", "behavior": "greater-than", "n_layers": 1, "d_model": 16, "n_heads": 2, "steps": 4, "batch_size": 8, "n_train": 64, "n_eval": 16,
            "warmup_steps": 1, "eval_every": 100, "n_samples": 2, "cycle_steps": 3, "step_size": 0.05}


def test_posterior_organism_is_deterministic_and_loads(tmp_path):
    from circuitflow.models import load_model
    from circuitflow.models.posterior import (
        build_posterior,
        members,
        posterior_settings,
    )

    settings = posterior_settings("tiny", TINY)
    metrics = build_posterior(settings, tmp_path / "a", progress=False)
    build_posterior(settings, tmp_path / "b", progress=False)
    assert members(tmp_path / "a") == [("sample_0", "posterior"), ("sample_1", "posterior"), ("sgd_0", "sgd"), ("sgd_1", "sgd")]
    for member in ("sample_0", "sample_1", "sgd_1"):
        for name in ("model.safetensors", "config.json"):
            assert (tmp_path / "a" / member / name).read_bytes() == (tmp_path / "b" / member / name).read_bytes()
    assert (tmp_path / "a" / "config.json").read_bytes() == (tmp_path / "b" / "config.json").read_bytes()
    assert (tmp_path / "a" / "sample_0" / "model.safetensors").read_bytes() != (tmp_path / "a" / "sample_1" / "model.safetensors").read_bytes()
    assert 0 <= metrics["accuracy_posterior_bma"] <= 1 and "train_seconds" in metrics
    loaded = load_model(tmp_path / "a")
    assert loaded.info["members"][0] == ("sample_0", "posterior")
    assert loaded.model(torch.zeros(1, 3, dtype=torch.long)).shape[-1] == loaded.model.cfg.d_vocab


def test_posterior_settings_refuse_mistakes():
    from circuitflow.models.posterior import posterior_settings

    with pytest.raises(ValueError, match="sghmc sampler only"):
        posterior_settings("x", {**TINY, "friction": 0.5})
    with pytest.raises(ValueError, match="one of gaussian"):
        posterior_settings("x", {**TINY, "prior": "cauchy"})
    assert posterior_settings("x", {**TINY, "sampler": "sghmc", "friction": 0.5}).friction == 0.5
