"""Stochastic-gradient MCMC: SGLD and SGHMC with a cyclical step size, under a few priors.

The target is the tempered posterior p(theta | D)^(1/T) = exp(-U(theta) / T) with the potential
U(theta) = -log p(D | theta) - log p(theta) (a minibatch estimate: N / B times the batch's summed
negative log-likelihood).  One step with step size eps:

    SGLD   (Welling & Teh 2011)   theta += -eps / 2 * grad U + N(0, eps T)
    SGHMC  (Chen et al. 2014, eq. 15 with no noise estimate; eps plays eta, the friction alpha)
           v = (1 - alpha) v - eps grad U + N(0, 2 alpha eps T);   theta += v

T = 1 is the Bayes posterior, T < 1 a cold one (T = 0: noise-free SGD / SGD with momentum).  The
cyclical schedule (Zhang et al. 2020, cSG-MCMC) restarts a cosine from the peak every cycle, so each
cycle explores with large steps and samples with small ones: ``cyclical_step_size``.

Why not the ``posteriors`` package (0.1.3, built on torch.func): it installs here without another
torch, but brings torchopt, tensordict, optree and pyvers (compiled extensions tied to torch
versions) into the lock for two update rules of a few lines each; it has no cyclical schedule, and
its noise convention and RNG (the global one) would have to be matched to the above and to the
trainers' per-seed determinism (``training.deterministic_torch``).  Written here instead, and tested
against the closed-form posterior of Bayesian linear regression (tests/test_posterior.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

Sampler = Literal["sgld", "sghmc"]
Prior = Literal["gaussian", "laplace", "student-t", "scale-mixture"]
PRIORS: tuple[Prior, ...] = ("gaussian", "laplace", "student-t", "scale-mixture")
STUDENT_T_DF = 3.0  # heavy-tailed but with a finite variance (BNNpriors' Student-t default)
MIXTURE = (0.5, 0.1)  # scale mixture: weight of the wide N(0, scale^2), and the narrow one's scale / scale


def log_prior(params: list[torch.Tensor], prior: Prior, scale: float) -> torch.Tensor:
    """log p(theta) summed over every entry of ``params`` (any shapes), each entry i.i.d.:
    gaussian N(0, scale^2), laplace Laplace(0, scale), student-t t_3(0, scale), scale-mixture
    0.5 N(0, scale^2) + 0.5 N(0, (scale / 10)^2) (Blundell et al.'s form).  A scalar tensor."""
    if prior not in PRIORS:
        raise ValueError(f"Unknown prior {prior!r}; choose one of {', '.join(PRIORS)}.")
    flat = torch.cat([p.reshape(-1) for p in params])
    zero, scale_ = torch.zeros((), dtype=flat.dtype), torch.tensor(scale, dtype=flat.dtype)  # the parameters' precision
    if prior == "gaussian":
        return torch.distributions.Normal(zero, scale_).log_prob(flat).sum()
    if prior == "laplace":
        return torch.distributions.Laplace(zero, scale_).log_prob(flat).sum()
    if prior == "student-t":
        return torch.distributions.StudentT(torch.tensor(STUDENT_T_DF, dtype=flat.dtype), zero, scale_).log_prob(flat).sum()
    weight, ratio = MIXTURE
    wide = torch.distributions.Normal(zero, scale_).log_prob(flat) + math.log(weight)
    narrow = torch.distributions.Normal(zero, scale_ * ratio).log_prob(flat) + math.log(1 - weight)
    return torch.logaddexp(wide, narrow).sum()


def cyclical_step_size(step: int, cycle_steps: int, peak: float) -> float:
    """peak / 2 * (cos(pi * (step mod L) / L) + 1), L = cycle_steps: the peak at each cycle's
    first step, falling towards 0 at its last."""
    return peak / 2 * (math.cos(math.pi * (step % cycle_steps) / cycle_steps) + 1)


def _noise(param: torch.Tensor, variance: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(param.shape, generator=generator, dtype=param.dtype) * math.sqrt(variance)


def sgld_step(params: list[torch.Tensor], grads: list[torch.Tensor], eps: float, temperature: float, generator: torch.Generator) -> None:
    """One SGLD step, in place on ``params``: theta += -eps / 2 grad U + N(0, eps T)."""
    with torch.no_grad():
        for param, grad in zip(params, grads):
            param.add_(-0.5 * eps * grad + _noise(param, eps * temperature, generator))


def sghmc_step(params: list[torch.Tensor], grads: list[torch.Tensor], momenta: list[torch.Tensor], eps: float, friction: float,
               temperature: float, generator: torch.Generator) -> None:
    """One SGHMC step, in place on ``params`` and ``momenta`` (same shapes):
    v = (1 - alpha) v - eps grad U + N(0, 2 alpha eps T); theta += v."""
    with torch.no_grad():
        for param, grad, momentum in zip(params, grads, momenta):
            momentum.mul_(1 - friction).add_(-eps * grad + _noise(param, 2 * friction * eps * temperature, generator))
            param.add_(momentum)


def run_chain(
    potential: Callable[[], torch.Tensor],
    params: list[torch.Tensor],
    sampler: Sampler,
    steps: int,
    step_size: Callable[[int], float],
    *,
    temperature: float = 1.0,
    friction: float = 0.1,
    keep: Callable[[int], bool] = lambda step: True,
    seed: int = 0,
) -> list[list[torch.Tensor]]:
    """Run ``steps`` steps of ``sampler`` on ``params`` (leaf tensors with requires_grad; changed in
    place) and return copies of them after every step where ``keep(step)``.

    potential: () -> scalar U(theta) at the current ``params`` (a fresh minibatch each call);
    step_size: step -> eps.  The noise comes from a generator seeded by ``seed`` alone, so the chain
    is a function of (its start, potential, seed)."""
    if sampler not in ("sgld", "sghmc"):
        raise ValueError(f"Unknown sampler {sampler!r}; choose sgld or sghmc.")
    generator = torch.Generator().manual_seed(seed)
    momenta = [torch.zeros_like(p) for p in params]
    kept = []
    for step in range(steps):
        grads = torch.autograd.grad(potential(), params)
        eps = step_size(step)
        if sampler == "sgld":
            sgld_step(params, grads, eps, temperature, generator)
        else:
            sghmc_step(params, grads, momenta, eps, friction, temperature, generator)
        if keep(step):
            kept.append([p.detach().clone() for p in params])
    return kept
