"""Adversarial circuit evaluation: per-pair KL over the Cartesian product, its statistics and the
gradient search for bad inputs (uit de Bos & Garriga-Alonso 2024), checked against plain per-pair computations."""

import math
from fractions import Fraction

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from circuitflow.circuit import Circuit
from circuitflow.evaluation.adversarial import (
    PERCENTILES,
    comparison_circuits,
    grouped_mean,
    order_statistic_bound,
    order_statistic_bound_for_confidence,
    pair_kl_circuits,
    read_pair_kl,
    reference_logits,
    search_bad_inputs,
    stream_pair_kl,
    summarize,
    summarize_pair_kl,
    worst_pairs,
    z_scores,
)
from circuitflow.graph import Graph
from circuitflow.metrics import kl_divergence
from circuitflow.patching import run_circuits, source_outputs
from circuitflow.report.adversarial_figures import plot_grouped_heatmap, plot_kl_distributions
from conftest import small_model

N_CLEAN, N_CORRUPTED, POS = 6, 5, 7


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is as fast, and on a shared, oversubscribed machine two
    threads' OpenMP spin-waits made the gradient search 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup():
    model = small_model(0)
    graph = Graph.from_config(model.cfg)
    generator = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 50, (N_CLEAN, POS), generator=generator)
    corrupted = torch.randint(0, 50, (N_CORRUPTED, POS), generator=generator)
    circuit = Circuit(graph, torch.rand(graph.n_edges, generator=generator) < 0.5)
    return model, graph, clean, corrupted, circuit


@pytest.fixture(scope="module")
def streamed(setup, tmp_path_factory):
    model, graph, clean, corrupted, circuit = setup
    circuits = comparison_circuits(circuit, seed=0)
    path = tmp_path_factory.mktemp("kl") / "pairs.parquet"
    # a batch size that does not divide the 30 pairs, and row groups smaller than the product
    stream_pair_kl(model, graph, clean, corrupted, circuits, path, batch_size=7, pairs_per_row_group=10)
    return path, circuits


def naive_pair_kl(model, graph, clean, corrupted, mask, i, j, position=-1):
    """The slow twin: one pair at a time, against the model's own forward pass."""
    with torch.no_grad():
        ablated = source_outputs(model, graph, corrupted[j : j + 1])
        circuit_logits = run_circuits(model, graph, clean[i : i + 1], ablated, mask)
        model_logits = model(clean[i : i + 1])
    return float(kl_divergence(model_logits[0, position].double(), circuit_logits[0, position].double()))


# ---- the product of pairs ----------------------------------------------------------------------
def test_full_model_kl_is_exactly_zero_on_every_pair(streamed):
    path, _ = streamed
    full = read_pair_kl(path, "full model")
    assert full.shape == (N_CLEAN * N_CORRUPTED,)
    assert (full == 0.0).all(), f"the full model's KL is not exactly 0: max {full.max()}"
    assert (read_pair_kl(path, "circuit") > 1e-3).all()  # and a real circuit is not


def test_full_model_shortcut_is_numerically_faithful(setup):
    """The full model's 0 is not hiding anything: run through the resample path, keeping every edge
    gives the reference up to float error (KL ~1e-12, far below any circuit's)."""
    model, graph, clean, corrupted, _ = setup
    positions = torch.full((N_CLEAN,), POS - 1)
    reference = reference_logits(model, graph, clean, positions)
    with torch.no_grad():
        for j in range(N_CORRUPTED):
            ablated = source_outputs(model, graph, corrupted[[j] * N_CLEAN])
            logits = run_circuits(model, graph, clean, ablated, torch.ones(graph.n_edges))[:, -1].double()
            assert kl_divergence(reference, logits).abs().max() < 1e-9


def test_pair_kl_matches_one_pair_at_a_time(setup, streamed):
    model, graph, clean, corrupted, _ = setup
    path, circuits = streamed
    for name in ("circuit", "random", "circuit minus 2"):
        streamed_kl = read_pair_kl(path, name).reshape(N_CLEAN, N_CORRUPTED)
        mask = circuits[name].mask()
        for i, j in [(0, 0), (2, 4), (5, 1), (3, 3)]:
            assert streamed_kl[i, j] == pytest.approx(naive_pair_kl(model, graph, clean, corrupted, mask, i, j), rel=1e-4, abs=1e-6)


def test_stream_layout_metadata_and_reproducible_bytes(setup, streamed, tmp_path):
    model, graph, clean, corrupted, circuit = setup
    path, circuits = streamed
    assert pair_kl_circuits(path) == list(circuits) == ["circuit", "random", "circuit minus 2", "full model"]
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups == 3  # 30 pairs, flushed every >= 10 pairs in batches of 7
    table = pl.read_parquet(path)
    assert table.columns == ["clean", "corrupted", "circuit", "kl"]
    assert table.height == N_CLEAN * N_CORRUPTED * 4
    expected_clean = np.repeat(np.arange(N_CLEAN), N_CORRUPTED * 4)
    expected_corrupted = np.tile(np.repeat(np.arange(N_CORRUPTED), 4), N_CLEAN)
    assert (table["clean"].to_numpy() == expected_clean).all()
    assert (table["corrupted"].to_numpy() == expected_corrupted).all()
    assert table["circuit"].to_list()[:4] == list(circuits)
    again = tmp_path / "again.parquet"
    stream_pair_kl(model, graph, clean, corrupted, comparison_circuits(circuit, seed=0), again, batch_size=7, pairs_per_row_group=10)
    assert again.read_bytes() == path.read_bytes()
    assert not list(tmp_path.glob(".*tmp"))  # written atomically


def test_precomputed_corrupted_activations_give_the_same_file(setup, streamed, tmp_path):
    model, graph, clean, corrupted, circuit = setup
    path, circuits = streamed
    outputs = source_outputs(model, graph, corrupted)
    again = stream_pair_kl(model, graph, clean, corrupted, circuits, tmp_path / "cached.parquet",
                           batch_size=7, pairs_per_row_group=10, corrupted_outputs=outputs)
    for name in circuits:
        assert read_pair_kl(again, name) == pytest.approx(read_pair_kl(path, name), rel=1e-5, abs=1e-9)
    with pytest.raises(ValueError, match="corrupted_outputs has shape"):
        stream_pair_kl(model, graph, clean, corrupted, circuits, tmp_path / "bad.parquet", corrupted_outputs=outputs[:, :2])


def test_per_example_answer_positions(setup, tmp_path):
    model, graph, clean, corrupted, circuit = setup
    positions = torch.tensor([6, 2, 3, 6, 0, -3])
    path = stream_pair_kl(model, graph, clean, corrupted, {"c": circuit}, tmp_path / "p.parquet", positions=positions)
    kl = read_pair_kl(path, "c").reshape(N_CLEAN, N_CORRUPTED)
    for i, j in [(1, 0), (2, 3), (4, 4), (5, 2)]:
        expected = naive_pair_kl(model, graph, clean, corrupted, circuit.mask(), i, j, position=int(positions[i]))
        assert kl[i, j] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_bad_inputs_are_one_clear_error(setup, tmp_path):
    model, graph, clean, corrupted, circuit = setup
    with pytest.raises(ValueError, match="same length"):
        stream_pair_kl(model, graph, clean, corrupted[:, :5], {"c": circuit}, tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="mask of shape"):
        stream_pair_kl(model, graph, clean, corrupted, {"c": torch.ones(3)}, tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="outside the 7 token positions"):
        stream_pair_kl(model, graph, clean, corrupted, {"c": circuit}, tmp_path / "a.parquet", positions=7)
    with pytest.raises(ValueError, match="No circuits"):
        stream_pair_kl(model, graph, clean, corrupted, {}, tmp_path / "a.parquet")
    assert not (tmp_path / "a.parquet").exists()
    pl.DataFrame({"x": [1]}).write_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a pair-KL Parquet file"):
        read_pair_kl(tmp_path / "other.parquet", "c")


# ---- statistics --------------------------------------------------------------------------------
def test_summarize_percentiles_and_z_scores():
    values = np.random.default_rng(0).exponential(size=10_001)
    summary = summarize(values)
    for p in PERCENTILES:
        assert summary[f"p{p:g}"] == pytest.approx(np.percentile(values, p))
    assert (summary["mean"], summary["std"], summary["min"], summary["max"]) == pytest.approx(
        (values.mean(), values.std(), values.min(), values.max())
    )
    z = z_scores(values)
    assert summary["z_max"] == pytest.approx(z.max())
    assert z.mean() == pytest.approx(0, abs=1e-12) and z.std() == pytest.approx(1)
    constant = summarize(np.zeros(5))
    assert constant["std"] == 0 and constant["z_max"] == 0
    with pytest.raises(ValueError, match="finite"):
        summarize(np.array([1.0, np.nan]))


def test_summarize_pair_kl_has_one_row_per_circuit(streamed):
    path, circuits = streamed
    table = summarize_pair_kl(path)
    assert table["circuit"].to_list() == list(circuits)
    row = table.filter(pl.col("circuit") == "random").row(0, named=True)
    assert row["p50"] == pytest.approx(np.median(read_pair_kl(path, "random")))


def binomial_cdf(c: int, n: int, p: Fraction) -> float:
    """P(Binom(n, p) <= c) summed exactly in rational arithmetic."""
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(c + 1)))


@pytest.mark.parametrize("n, p, eps", [(50, "9/10", "1/25"), (200, "99/100", "1/200"), (1000, "1/2", "1/50"), (333, "19/20", "0")])
def test_percentile_bound_matches_a_direct_binomial_computation(n, p, eps):
    p, eps = Fraction(p), Fraction(eps)
    values = np.random.default_rng(n).normal(size=n)
    bound = order_statistic_bound(values, float(p), float(eps))
    k = math.ceil((p + eps) * n)  # exact rational arithmetic
    assert bound.k == k and bound.n == n
    assert bound.value == np.sort(values)[k - 1]
    assert bound.confidence == pytest.approx(binomial_cdf(k - 1, n, p), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n, p, confidence", [(100, "9/10", 0.95), (1000, "99/100", 0.9), (500, "1/2", 0.99)])
def test_bound_for_a_confidence_is_the_smallest_that_reaches_it(n, p, confidence):
    p = Fraction(p)
    bound = order_statistic_bound_for_confidence(np.arange(n, dtype=float), float(p), confidence)
    assert binomial_cdf(bound.k - 1, n, p) >= confidence > binomial_cdf(bound.k - 2, n, p)
    assert bound.value == bound.k - 1  # the k-th smallest of 0, 1, ..., n-1


def test_bound_covers_the_true_percentile_as_often_as_promised():
    rng = np.random.default_rng(0)
    samples = rng.random((4000, 200))  # uniform: the true 0.9 quantile is 0.9
    bounds = [order_statistic_bound(s, 0.9, 0.03) for s in samples]
    covered = np.mean([b.value >= 0.9 for b in bounds])
    promised = bounds[0].confidence
    assert abs(covered - promised) < 4 * math.sqrt(promised * (1 - promised) / len(samples))


def test_bound_errors():
    with pytest.raises(ValueError, match="exceeds the 10 samples"):
        order_statistic_bound(np.arange(10.0), 0.95, 0.1)
    with pytest.raises(ValueError, match="fraction"):
        order_statistic_bound(np.arange(10.0), 95, 0.0)
    with pytest.raises(ValueError, match="take more samples"):
        order_statistic_bound_for_confidence(np.arange(10.0), 0.99, 0.99)


def test_worst_pairs_are_the_largest_kl_decoded(setup, streamed):
    _, _, clean, corrupted, _ = setup
    path, _ = streamed
    worst = worst_pairs(path, "circuit", 4, clean, corrupted, lambda ids: "-".join(map(str, ids)))
    kl = read_pair_kl(path, "circuit")
    order = np.argsort(-kl, kind="stable")[:4]
    assert worst["rank"].to_list() == [1, 2, 3, 4]
    assert worst["kl"].to_list() == kl[order].tolist()
    assert worst["clean"].to_list() == (order // N_CORRUPTED).tolist()
    first = worst.row(0, named=True)
    assert first["clean_text"] == "-".join(map(str, clean[first["clean"]].tolist()))
    assert first["corrupted_text"] == "-".join(map(str, corrupted[first["corrupted"]].tolist()))


# ---- the comparison circuits and grouping ------------------------------------------------------
def test_comparison_circuits_are_seeded_and_shaped_as_the_paper_says():
    graph = Graph(n_layers=4, n_heads=8, attn_only=False)  # ~1,600 edges
    circuit = Circuit(graph, torch.arange(graph.n_edges) % 7 == 0)
    first, second = comparison_circuits(circuit, seed=1), comparison_circuits(circuit, seed=1)
    assert list(first) == ["circuit", "random", "circuit minus 2", "full model"]
    assert all(first[k] == second[k] for k in first)
    assert first["random"] != comparison_circuits(circuit, seed=2)["random"]
    assert abs(len(first["random"]) / graph.n_edges - 0.4) < 0.05
    minus = first["circuit minus 2"]
    assert len(minus) == len(circuit) - 2 and (minus - circuit) == Circuit.empty(graph)
    assert len(first["full model"]) == graph.n_edges
    with pytest.raises(ValueError, match="Cannot remove 2 edges"):
        comparison_circuits(Circuit.from_edges(graph, [graph.edge_names[0]]), seed=0)


def test_grouped_mean_matches_a_plain_loop(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.exponential(size=500)
    names = rng.choice(["Mary", "John", "Alice"], size=500)
    templates = rng.integers(0, 4, size=500)
    table = grouped_mean(values, names, templates)
    assert table.columns == ["row", "col", "mean", "count"]
    assert table["row"].to_list() == sorted(table["row"].to_list())
    for row in table.iter_rows(named=True):
        chosen = (names == row["row"]) & (templates == row["col"])
        assert row["count"] == chosen.sum()
        assert row["mean"] == pytest.approx(values[chosen].mean())
    assert table.height == 12
    figure = plot_grouped_heatmap(table, tmp_path / "heat.png", "KL by name and template", row_name="name", column_name="template", formats=("png",))
    assert figure.axes and (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="one row and one column label per value"):
        grouped_mean(values, names[:10], templates)


def test_kl_distribution_figure_is_reproducible(streamed, tmp_path):
    path, circuits = streamed
    kl = {name: read_pair_kl(path, name) for name in circuits}
    plot_kl_distributions(kl, tmp_path / "a.png", "pairs", formats=("png",))
    plot_kl_distributions(kl, tmp_path / "b.png", "pairs", formats=("png",))
    data = (tmp_path / "a.png").read_bytes()
    assert data == (tmp_path / "b.png").read_bytes()
    assert b"Software" not in data


# ---- gradient search ---------------------------------------------------------------------------
def test_gradient_search_finds_inputs_at_least_as_bad_as_the_median_pair(setup, tmp_path):
    model, graph, _, _, circuit = setup
    generator = torch.Generator().manual_seed(5)
    clean_pool = torch.randint(0, 50, (12, POS), generator=generator)
    corrupted_pool = torch.randint(0, 50, (12, POS), generator=generator)
    path = stream_pair_kl(model, graph, clean_pool, corrupted_pool, {"c": circuit}, tmp_path / "pool.parquet")
    brute = read_pair_kl(path, "c")
    found = search_bad_inputs(model, graph, circuit, clean_pool, corrupted_pool, n_restarts=3, steps=15, lr=0.2, seed=0)
    print(f"gradient search: best {found.best:.4f} (hard projection {float(found.hard_kl.max()):.4f}), brute-force median {np.median(brute):.4f}, max {brute.max():.4f}, "
          f"ratio to max {found.best / brute.max():.3f}")
    assert found.best >= np.median(brute)
    assert found.history.shape == (15, 3) and found.kl.shape == (3,)
    assert (found.kl >= found.history[0]).all()  # the best step is at least the starting pair
    # hard projections are real tokens, position by position, and their KL is the engine's
    for r in range(3):
        for p in range(POS):
            assert int(found.clean_tokens[r, p]) in clean_pool[:, p].tolist()
            assert int(found.corrupted_tokens[r, p]) in corrupted_pool[:, p].tolist()
    j = 0
    expected = naive_pair_kl(model, graph, found.clean_tokens, found.corrupted_tokens, circuit.mask(), j, j)
    assert float(found.hard_kl[j]) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert torch.allclose(found.clean_weights.sum(-1), torch.ones(3, POS, dtype=found.clean_weights.dtype))
    assert all(parameter.grad is None for parameter in model.parameters())  # the model is left as it was
    assert not model.embed._forward_hooks
