"""Tail analysis (Kwa et al. 2024): the Hill estimator against its definition and against samples
with known tails, the exponential reference against simulation, Q-Q data and figures."""

import math

import numpy as np
import pytest

from circuitflow.evaluation.tails import (
    classify,
    exceedances,
    exponential_hill,
    hill_estimates,
    hill_range,
    qq_points,
    tail_verdict,
)
from circuitflow.report.adversarial_figures import plot_hill, plot_qq

N = 1_000_000


def naive_hill(sample, k):
    """Kwa et al. 2024 word for word: demean, keep positives, sort descending, then the formula."""
    x = [v - sum(sample) / len(sample) for v in sample]
    x = sorted((v for v in x if v > 0), reverse=True)
    return sum(math.log(v) for v in x[:k]) / k - math.log(x[k])


def test_hill_matches_its_definition():
    sample = np.random.default_rng(0).pareto(2.0, 400) + 1
    plot = hill_estimates(sample)
    assert plot["k"].to_list() == list(range(2, 21))  # ceil(400^0.1) = 2 .. 400^0.5 = 20
    for row in plot.iter_rows(named=True):
        assert row["hill"] == pytest.approx(naive_hill(sample.tolist(), row["k"]), rel=1e-12)
        assert row["se"] == pytest.approx(row["hill"] / math.sqrt(row["k"]))
        assert row["alpha"] == pytest.approx(1 / row["hill"])


@pytest.mark.parametrize("alpha", [1.5, 2.0, 3.0])
def test_hill_recovers_the_pareto_tail_index_within_10_percent(alpha):
    """Seed 1 lands at -3%, -4%, -9%; over 20 seeds 19, 18 and 16 of 20 land within 10% (the
    demeaning the reference prescribes biases alpha low by ~4% at alpha 3)."""
    sample = np.random.default_rng(1).pareto(alpha, N) + 1  # classic Pareto, x_min 1
    verdict = tail_verdict(sample)
    assert verdict.alpha == pytest.approx(alpha, rel=0.10), verdict.explain()
    assert verdict.heavy, verdict.explain()
    assert verdict.alpha_low <= verdict.alpha <= verdict.alpha_high
    assert (verdict.k_min, verdict.k_max) == (4, 1000)


@pytest.mark.parametrize("name", ["exponential", "normal"])
@pytest.mark.parametrize("n", [1_000, 10_000, N])
def test_exponential_and_normal_samples_are_light_tailed(name, n):
    rng = np.random.default_rng(2)
    sample = rng.exponential(3.0, n) if name == "exponential" else rng.normal(5.0, 2.0, n)
    verdict = tail_verdict(sample)
    assert not verdict.heavy, verdict.explain()
    if n >= 10_000:  # calibrated to be decisive there; at 10^3 "undetermined" is allowed
        assert verdict.verdict == "light" and verdict.explain().startswith("light tail")


def test_verdict_thresholds_by_hand():
    assert classify(2.01, 10_000) == classify(2.01, 300) == "heavy"
    assert classify(1.99, 10_000) == classify(1.99, 10**6) == "light"
    assert classify(0.3, 1_000) == "light" and classify(0.4, 1_000) == "undetermined"
    assert classify(-0.39, 300) == "light" and classify(-0.37, 300) == "undetermined"
    assert classify(-5.0, 299) == "undetermined"  # below the calibrated sizes: never light
    midway = (0.36 + 2.0) / 2  # log-linear between 10^3 and 10^4, at 10^3.5
    assert classify(midway - 0.01, 3162) == "light" and classify(midway + 0.01, 3162) == "undetermined"


def test_verdict_calibration_on_a_few_dozen_samples():
    """The calibration (benchmarks/bench_tails.py, 200 samples per cell) on 40 seeded samples per
    cell, loose bounds: at 10^4 light tails are light and Pareto tails heavy; at 10^3 a Pareto(3)
    tail is rarely called light (the rule says "undetermined" instead: measured 5%, and 42% light
    under the former heavy-or-light rule)."""
    draws = {"exponential": lambda rng, n: rng.exponential(size=n), "normal": lambda rng, n: rng.normal(size=n),
             "pareto-2": lambda rng, n: rng.pareto(2.0, n) + 1, "pareto-3": lambda rng, n: rng.pareto(3.0, n) + 1}

    def counts(name, n):
        verdicts = [tail_verdict(draws[name](np.random.default_rng([seed, 7]), n)).verdict for seed in range(40)]
        return {v: verdicts.count(v) for v in ("heavy", "light", "undetermined")}

    for name in ("exponential", "normal"):
        assert counts(name, 10_000)["light"] >= 37, name
    for name in ("pareto-2", "pareto-3"):
        tally = counts(name, 10_000)
        assert tally["heavy"] >= 35 and tally["light"] <= 3, (name, tally)
    small = counts("pareto-3", 1_000)
    assert small["light"] <= 6 and small["heavy"] >= 15, small
    assert counts("exponential", 1_000)["heavy"] == 0


def test_other_heavy_tails_are_called_heavy():
    rng = np.random.default_rng(3)
    for sample in (rng.standard_t(3, 100_000), rng.lognormal(0, 1, 100_000), rng.weibull(0.5, 100_000)):
        assert tail_verdict(sample).heavy


def test_exponential_reference_matches_simulation():
    m, ks = 1000, np.array([2, 5, 10, 31])
    rng = np.random.default_rng(4)
    simulated = []
    for _ in range(2000):
        logs = np.log(-np.sort(-rng.exponential(size=m)))
        simulated.append(np.cumsum(logs)[ks - 1] / ks - logs[ks])
    assert exponential_hill(m, ks) == pytest.approx(np.mean(simulated, axis=0), rel=0.03)


def test_exceedances_and_bad_samples():
    assert exceedances(np.array([1.0, 2.0, 3.0, 6.0, 8.0])).tolist() == [4.0, 2.0]  # mean 4
    with pytest.raises(ValueError, match="no tail"):
        tail_verdict(np.zeros(1000))
    with pytest.raises(ValueError, match="finite"):
        hill_estimates(np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="at least 3"):
        hill_range(100, 2)


def test_qq_points():
    rng = np.random.default_rng(5)
    normal = rng.normal(3.0, 2.0, 50_000)
    points = qq_points(normal, "normal", max_points=900)
    assert points.height <= 900
    x, y = points["theoretical"].to_numpy(), points["sample"].to_numpy()
    assert np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0)
    assert y.max() == pytest.approx((normal.max() - normal.mean()) / normal.std())  # the extreme is kept
    assert np.abs(y - x)[np.abs(x) < 3].max() < 0.1  # a normal sample lies on y = x
    exponential = rng.exponential(2.0, 50_000)
    points = qq_points(exponential, "exponential")
    x, y = points["theoretical"].to_numpy(), points["sample"].to_numpy()
    core = x < 5
    assert np.polyfit(x[core], y[core], 1)[0] == pytest.approx(2.0, rel=0.05)  # exceedances ~ Exp(scale 2)
    assert points["line"].to_numpy() == pytest.approx(x * exceedances(exponential).mean())
    small = qq_points(np.arange(10.0), "normal")
    assert small.height == 10
    with pytest.raises(ValueError, match="normal or exponential"):
        qq_points(normal, "cauchy")


def test_tail_figures_are_reproducible(tmp_path):
    sample = np.random.default_rng(6).pareto(2.0, 20_000) + 1
    verdict = tail_verdict(sample)
    hill = hill_estimates(sample)
    normal, exponential = qq_points(sample, "normal"), qq_points(sample, "exponential")
    for name in ("a", "b"):
        figure = plot_hill(hill, tmp_path / name / "hill.png", "Pareto 2", verdict=verdict)
        plot_qq(normal, exponential, tmp_path / name / "qq.png", "Pareto 2", formats=("png",))
    assert "heavy tail" in figure.axes[0].get_title()
    for file in ("hill.png", "hill.svg", "qq.png"):
        data = (tmp_path / "a" / file).read_bytes()
        assert data == (tmp_path / "b" / file).read_bytes(), file
    assert b"Software" not in (tmp_path / "a" / "hill.png").read_bytes()
