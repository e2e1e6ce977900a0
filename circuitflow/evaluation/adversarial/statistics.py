"""Statistics of per-pair losses (lower is better): summaries with z-scores, the order-statistic
upper bound on a percentile (uit de Bos & Garriga-Alonso 2024), and the worst pairs of a pair-KL file."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from scipy.stats import binom

from circuitflow.evaluation.adversarial.pairs import pair_kl_circuits, read_pair_kl

PERCENTILES: tuple[float, ...] = (25, 50, 75, 95, 99, 99.9, 99.99)


# ---- statistics --------------------------------------------------------------------------------
def z_scores(values: np.ndarray) -> np.ndarray:
    """(x - mean) / std of a (n,) sample, population std (ddof 0); all 0 for a constant sample."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std()
    return np.zeros_like(values) if std == 0 else (values - values.mean()) / std


def summarize(values: np.ndarray) -> dict[str, float]:
    """Summary of a (n,) sample of losses (lower is better).

    Keys: n, mean, std (population, ddof 0), min, p25, p50, p75, p95, p99, p99.9, p99.99 (numpy's
    linear interpolation between order statistics), max, and the z-score (value - mean) / std of each
    percentile and of the max, ``z_p99`` ... ``z_max`` (0 for a constant sample).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("summarize needs a non-empty sample of finite values; check for NaN or infinite losses.")
    mean, std = float(values.mean()), float(values.std())
    summary = {"n": float(values.size), "mean": mean, "std": std, "min": float(values.min())}
    quantiles = np.percentile(values, PERCENTILES)
    for p, q in zip(PERCENTILES, quantiles):
        summary[f"p{p:g}"] = float(q)
    summary["max"] = float(values.max())
    for key in [f"p{p:g}" for p in PERCENTILES] + ["max"]:
        summary[f"z_{key}"] = 0.0 if std == 0 else (summary[key] - mean) / std
    return summary


def summarize_pair_kl(path: str | Path) -> pl.DataFrame:
    """One row per circuit of a ``stream_pair_kl`` file (in its order) with ``summarize``'s columns."""
    rows = [{"circuit": name, **summarize(read_pair_kl(path, name))} for name in pair_kl_circuits(path)]
    return pl.DataFrame(rows)


@dataclass(frozen=True)
class PercentileBound:
    """The k-th smallest of n samples bounds the p-th quantile from above with probability ``confidence``."""

    p: float  # the quantile, a fraction (0.99 for the 99th percentile)
    eps: float  # k / n - p, rounded up to whole samples
    n: int
    k: int  # 1-based rank of the bounding order statistic
    value: float
    confidence: float  # BinomCDF(k - 1; n, p)


def _sorted_sample(values: np.ndarray, p: float) -> np.ndarray:
    values = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if values.size == 0:
        raise ValueError("A percentile bound needs at least one sample.")
    if not 0 < p < 1:
        raise ValueError(f"p must be a fraction in (0, 1) (0.99 for the 99th percentile), got {p}.")
    return values


def order_statistic_bound(values: np.ndarray, p: float, eps: float) -> PercentileBound:
    """Upper bound on the p-th quantile (uit de Bos & Garriga-Alonso 2024): the ceil((p + eps) n)-th smallest sample.

    For n i.i.d. samples of a continuous loss, P(X_(k) >= q_p) = P(Binom(n, p) <= k - 1), so the bound
    holds with probability BinomCDF(k - 1; n, p).  values: (n,); p a fraction, eps >= 0.
    The pairs of a Cartesian product are not independent (pairs share a clean or a corrupted input):
    for a guarantee, use one pair per input (e.g. a random matching); over the product it is a guide.
    """
    values = _sorted_sample(values, p)
    n = values.size
    if eps < 0:
        raise ValueError(f"eps must be at least 0, got {eps}.")
    k = math.ceil(round((p + eps) * n, 9))  # the rounding keeps 0.991 * 1000 from becoming 992
    if k > n:
        raise ValueError(f"ceil((p + eps) n) = {k} exceeds the {n} samples; take more samples or a smaller p + eps.")
    k = max(k, 1)
    return PercentileBound(p, k / n - p, n, k, float(values[k - 1]), float(binom.cdf(k - 1, n, p)))


def order_statistic_bound_for_confidence(values: np.ndarray, p: float, confidence: float) -> PercentileBound:
    """The smallest order statistic X_(k) that bounds the p-th quantile with at least ``confidence``:
    the least k with BinomCDF(k - 1; n, p) >= confidence.  values: (n,); p, confidence fractions."""
    values = _sorted_sample(values, p)
    n = values.size
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be a fraction in (0, 1), got {confidence}.")
    k = int(binom.ppf(confidence, n, p)) + 1  # ppf: least c with CDF(c) >= confidence
    while k > 1 and binom.cdf(k - 2, n, p) >= confidence:  # guard scipy's float rounding either way
        k -= 1
    while k <= n and binom.cdf(k - 1, n, p) < confidence:
        k += 1
    if k > n:
        raise ValueError(f"No order statistic of {n} samples bounds the {p} quantile with confidence {confidence}; take more samples.")
    return PercentileBound(p, k / n - p, n, k, float(values[k - 1]), float(binom.cdf(k - 1, n, p)))


def worst_pairs(
    path: str | Path,
    circuit: str,
    k: int,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    decode: Callable[[list[int]], str],
) -> pl.DataFrame:
    """The k pairs with the highest KL (worst) for one circuit of a ``stream_pair_kl`` file.

    clean: (n_clean, pos), corrupted: (n_corrupted, pos) the token ids the file was computed from;
    decode: token ids -> text.  Columns rank (1 = worst), clean, corrupted, kl, clean_text,
    corrupted_text; ties broken by clean, then corrupted index.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    pair_kl_circuits(path)  # a clear error for a file that is not ours
    worst = (
        pl.scan_parquet(path)
        .filter(pl.col("circuit") == circuit)
        .sort(["kl", "clean", "corrupted"], descending=[True, False, False])
        .head(k)
        .select("clean", "corrupted", "kl")
        .collect()
    )
    if worst.height == 0:
        raise ValueError(f"{path} has no rows for circuit {circuit!r}; it has {', '.join(map(repr, pair_kl_circuits(path)))}.")
    if int(worst["clean"].max()) >= clean.shape[0] or int(worst["corrupted"].max()) >= corrupted.shape[0]:
        raise ValueError(f"{path} indexes more inputs than were passed; pass the clean and corrupted tokens it was computed from.")
    return worst.with_columns(
        pl.Series("clean_text", [decode(clean[i].tolist()) for i in worst["clean"]]),
        pl.Series("corrupted_text", [decode(corrupted[j].tolist()) for j in worst["corrupted"]]),
    ).with_row_index("rank", offset=1)
