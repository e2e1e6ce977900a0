"""The hypothesis tests of Shi et al. 2024: the statistics against their formulas, and the tracr
ground-truth circuits against the paper's outcome (zero ablation, MSE against the full model)."""

import itertools
import json
import statistics

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats

from circuitflow.behaviors import tracr as behaviors
from circuitflow.circuit import Circuit
from circuitflow.evaluation import hypothesis_tests as ht
from circuitflow.evaluation.random_circuits import inflate, random_circuit_masks, random_paths
from circuitflow.graph import Graph
from circuitflow.io import write_atomic
from circuitflow.models import tracr
from circuitflow.ablation import ablation_values
from circuitflow.report.hypothesis_figures import plot_minimality_effects, plot_random_circuit_curve


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny tracr models run overhead-bound: one thread is ~10x faster than two on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- equivalence ---------------------------------------------------------------------------------


def naive_equivalence_p(p_hat: float, n: int, eps: float) -> float:
    return sum(stats.binom.pmf(k, n, 0.5 + eps) for k in range(n + 1) if abs(k / n - 0.5) >= abs(p_hat - 0.5) - 1e-12)


def test_equivalence_p_values_match_the_reference_check_values():
    assert ht.equivalence_p_value(0.50, 100, 0.1) == pytest.approx(1.0)
    assert ht.equivalence_p_value(0.65, 100, 0.1) == pytest.approx(0.18, abs=0.005)
    assert ht.equivalence_p_value(0.75, 100, 0.1) == pytest.approx(0.0012, abs=0.00005)
    for p_hat, n, eps in [(0.65, 100, 0.1), (0.75, 100, 0.1), (0.3, 40, 0.05), (0.9, 17, 0.2), (0.52, 100, 0.1)]:
        assert ht.equivalence_p_value(p_hat, n, eps) == pytest.approx(naive_equivalence_p(p_hat, n, eps), rel=1e-12)


def test_equivalence_uses_the_fraction_not_the_mean_difference():
    model = np.linspace(0.0, 1.0, 100)  # a score that varies over the examples
    # far off on every example, better half the time and worse half the time: P(delta > 0) = 1/2
    balanced = model + np.where(np.arange(100) % 2 == 0, 10.0, -10.0)
    result = ht.equivalence_test(balanced, model)
    assert (result.statistic, result.p_value, result.passes, result.status) == (0.5, pytest.approx(1.0), True, "passes")
    identical = ht.equivalence_test(model, model)  # all ties: counted one half each
    assert identical.statistic == 0.5 and identical.p_value == pytest.approx(1.0) and identical.passes
    assert (identical.k, identical.ties) == (0, 100)
    worse_75 = model + np.where(np.arange(100) < 75, 1.0, -1.0)
    result = ht.equivalence_test(worse_75, model)
    assert result.statistic == 0.75 and result.p_value == pytest.approx(0.0012, abs=0.00005)
    assert result.reject and not result.passes and result.status == "fails"
    ties = ht.equivalence_test(model + np.r_[np.full(50, 1e-12), np.ones(50)], model)  # 50 ties, 50 worse
    assert ties.statistic == 0.75 and ties.settings["n_ties"] == 50 and (ties.k, ties.ties) == (50, 50)


def test_equivalence_and_independence_do_not_apply_to_a_constant_model_score():
    """tracr / categorical SIIT: s(M) compares the model with itself, 0 on every example."""
    model = np.zeros(40)
    circuit = np.r_[np.zeros(30), np.ones(10)]
    result = ht.equivalence_test(circuit, model)
    assert result.status == "not applicable" and not result.passes and not result.reject and "constant" in result.reason
    assert (result.k, result.ties) == (10, 30)  # counted all the same
    independence = ht.independence_test(model, np.arange(40.0))
    assert independence.status == "not applicable" and not independence.passes and "constant" in independence.reason
    assert ht.independence_test(np.arange(40.0), np.full(40, 2.0)).status == "not applicable"
    frame = ht.results_frame([result, independence], circuit="c")
    assert frame["status"].to_list() == ["not applicable"] * 2 and not frame["passes"].any()
    assert frame["reason"].str.contains("constant").all()
    with pytest.raises(ValueError, match="reason"):
        ht.HypothesisResult("equivalence", "p_hat", 0.5, 1.0, 0.05, False, False, 10, status="not applicable")
    with pytest.raises(ValueError, match="contradicts"):
        ht.HypothesisResult("equivalence", "p_hat", 0.5, 1.0, 0.05, False, True, 10, status="fails")


def test_score_inputs_are_checked():
    with pytest.raises(ValueError, match="same examples"):
        ht.equivalence_test(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="NaN"):
        ht.equivalence_test(np.r_[np.nan, 0.0], np.zeros(2))
    with pytest.raises(ValueError, match=r"\(n_examples,\)"):
        ht.independence_test(np.zeros((3, 2)), np.zeros((3, 2)))


# ---- binomial tests ------------------------------------------------------------------------------


def test_binomial_p_values_are_scipys_binomial_tests():
    for k in (0, 50, 87, 90, 95, 96, 100):
        assert ht.binomial_p_greater(k, 100, 0.9) == pytest.approx(stats.binomtest(k, 100, 0.9, alternative="greater").pvalue)
        assert ht.binomial_p_less(k, 100, 0.9) == pytest.approx(stats.binomtest(k, 100, 0.9, alternative="less").pvalue)
    # the paper's pass mark for sufficiency at N=100: k >= 96
    assert ht.binomial_p_greater(95, 100, 0.9) >= 0.05 > ht.binomial_p_greater(96, 100, 0.9)


# ---- independence (HSIC) -------------------------------------------------------------------------


def test_hsic_matches_the_trace_formula_and_median_bandwidth():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=8), rng.normal(size=8)
    n = len(x)
    pairs = [abs(a - b) for a, b in itertools.combinations(x, 2)]
    assert ht.median_bandwidth(x) == pytest.approx(statistics.median(pairs))

    def gram(v):
        bandwidth = statistics.median([abs(a - b) for a, b in itertools.combinations(v, 2)])
        return np.array([[np.exp(-((a - b) ** 2) / (2 * bandwidth**2)) for b in v] for a in v])

    h = np.eye(n) - np.ones((n, n)) / n
    assert ht.hsic(x, y) == pytest.approx(np.trace(gram(x) @ h @ gram(y) @ h) / n**2, rel=1e-10)
    assert ht.median_bandwidth(np.r_[np.zeros(6), 1.0, 3.0]) == pytest.approx(2.0)  # median of the non-zero distances
    assert ht.median_bandwidth(np.zeros(5)) == 1.0


def test_hsic_detects_a_noisy_copy_at_the_paper_defaults():
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=100)
        result = ht.independence_test(x, x + rng.normal(size=100))  # 1,000 permutations, seed 1
        assert result.p_value < 0.05 and result.reject and not result.passes
        assert result.p_value == pytest.approx(1 / 1001)


def test_hsic_power_and_false_positive_rate_over_seeds():
    detected = false_positives = 0
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        x = rng.normal(size=40)
        independent = ht.independence_test(x, rng.normal(size=40), n_permutations=100, seed=seed)
        false_positives += independent.reject
        if seed < 50:
            noisy_copy = ht.independence_test(x, x + rng.normal(size=40), n_permutations=100, seed=seed)
            detected += noisy_copy.reject
    # permutation p-values are exact: P(reject | H0) = 5/101; over 200 seeds a 99.6% binomial interval is 3..19
    assert 3 <= false_positives <= 19, false_positives
    assert detected >= 45, detected


def test_independence_of_a_constant_score_is_never_rejected():
    result = ht.independence_test(np.zeros(30), np.arange(30.0))
    assert result.statistic == 0.0 and result.p_value == 1.0 and not result.reject and result.status == "not applicable"


def test_independence_is_deterministic_in_the_seed():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = 0.3 * x + rng.normal(size=30)
    assert ht.independence_test(x, y, seed=4) == ht.independence_test(x, y, seed=4)


# ---- settings ------------------------------------------------------------------------------------


def test_settings_defaults_are_the_papers_and_bad_values_are_refused():
    s = ht.HypothesisSettings()
    assert (s.eps, s.q_star, s.alpha, s.n_random, s.n_permutations, s.n_references, s.seed) == (0.1, 0.9, 0.05, 100, 1000, 1000, 1)
    assert s.effect == "squared" and ht.HypothesisSettings(effect="mean_difference").effect == "mean_difference"
    with pytest.raises(ValueError, match="Unknown minimality effect 'abs'"):
        ht.HypothesisSettings(effect="abs")
    assert ht.HypothesisSettings.from_params({"n_references": 10_000}).n_references == 10_000
    with pytest.raises(ValueError, match="Unknown hypothesis-test setting.*n_refs"):
        ht.HypothesisSettings.from_params({"n_refs": 5})
    with pytest.raises(ValueError, match="eps=0.7"):
        ht.HypothesisSettings(eps=0.7)
    with pytest.raises(ValueError, match="n_random=0"):
        ht.HypothesisSettings(n_random=0)


# ---- an additive toy behavior: the truth is known by construction ---------------------------------


def additive_evaluator(graph: Graph, important: torch.Tensor, n_examples: int = 30):
    """Per-example score = sum over ablated important edges of x_example (x > 0): every important
    edge matters, no other edge does."""
    x = torch.rand(n_examples, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    weights = important.double()[:, None] * x[None, :]  # (n_edges, n_examples)
    return lambda masks: (1 - masks.double()) @ weights


def test_minimality_and_sufficiency_on_an_additive_behavior():
    graph = Graph(2, 4, False)
    paths = random_paths(graph, 2, 0)
    important = torch.zeros(graph.n_edges, dtype=torch.bool)
    important[paths[paths >= 0]] = True
    evaluate = additive_evaluator(graph, important)
    circuit = Circuit(graph, important)
    model_scores = torch.zeros(30, dtype=torch.float64)
    minimal = ht.minimality_test(evaluate, circuit, n_references=200, progress=False)
    assert minimal.result.passes and minimal.edges["necessary"].all() and (minimal.edges["k"] == 200).all()
    assert np.allclose(minimal.references, 0.0)
    # the per-edge p-values are the binomial tests at k
    assert minimal.edges["p_value"].to_list() == pytest.approx([stats.binomtest(200, 200, 0.9, alternative="less").pvalue] * len(circuit))
    bigger = Circuit(graph, inflate(graph, important, 2, 1))
    flagged = ht.minimality_test(evaluate, bigger, n_references=200, progress=False)
    unnecessary = set(flagged.edges.filter(~pl.col("necessary"))["edge"])
    assert not flagged.result.passes and unnecessary == set((bigger - circuit).edges)
    assert flagged.result.statistic == len(unnecessary) and flagged.result.settings["alpha_per_edge"] == 0.05 / len(bigger)
    assert ht.sufficiency_test(evaluate, circuit, model_scores, progress=False).passes
    assert ht.partial_necessity_test(evaluate, circuit, model_scores, progress=False).passes


def test_minimality_squared_effect_sees_changes_of_opposite_sign():
    """Knocking out a circuit edge moves 50 examples by +1 and 50 by -1; every reference knockout
    (an edge outside C) moves all 100 by +0.1."""
    graph = Graph(2, 4, False)
    paths = random_paths(graph, 1, 0)
    members = torch.zeros(graph.n_edges, dtype=torch.bool)
    members[paths[paths >= 0]] = True
    signs = torch.where(torch.arange(100) < 50, 1.0, -1.0).double()

    def evaluate(masks):
        ablated = 1 - masks.double()
        inside, outside = ablated[:, members].sum(1), ablated[:, ~members].sum(1)
        return inside[:, None] * signs[None] + 0.1 * outside[:, None] * torch.ones(100, dtype=torch.float64)

    circuit = Circuit(graph, members)
    # by hand: squared effect of an edge mean((+-1)^2) = 1, of a reference (0.1)^2 = 0.01;
    # mean difference |mean(+-1)| = 0 for an edge, 0.1 for a reference
    new = ht.minimality_test(evaluate, circuit, n_references=100, progress=False)
    assert new.edges["delta"].to_list() == pytest.approx([1.0] * len(circuit))
    assert new.references == pytest.approx(np.full(100, 0.01))
    assert (new.edges["k"] == 100).all() and new.edges["necessary"].all() and new.result.status == "passes"
    assert new.result.settings["effect"] == "squared"
    old = ht.minimality_test(evaluate, circuit, n_references=100, effect="mean_difference", progress=False)
    assert old.edges["delta"].to_list() == pytest.approx([0.0] * len(circuit))
    assert (old.edges["k"] == 0).all() and not old.edges["necessary"].any() and old.result.status == "fails"
    # knockout_effect against a loop over examples
    before, after = np.random.default_rng(0).normal(size=(2, 3, 7))
    brute = [sum((b - a) ** 2 for b, a in zip(before[r], after[r])) / 7 for r in range(3)]
    assert ht.knockout_effect(before, after) == pytest.approx(brute)
    assert ht.knockout_effect(before, after, "mean_difference") == pytest.approx(np.abs(after.mean(1) - before.mean(1)))


def test_tie_rules_are_the_reference_codes_on_hand_made_scores():
    own = np.array([1.0, 1.0])
    others = np.array([[1.0, 1.0 + 1e-12, 2.0, 0.5], [0.0, 3.0, 1.0, 1.0]])
    k, ties = ht.count_k_and_ties("le", own, others, 1e-9)  # sufficiency: m(C) <= m(C_r) counts
    assert k.tolist() == [3, 3] and ties.tolist() == [2, 2]
    k, ties = ht.count_k_and_ties("gt", own, others, 1e-9)  # partial necessity, minimality: strictly more
    assert k.tolist() == [1, 1] and ties.tolist() == [2, 2]
    assert ht.TIE_RULES == {"minimality": "gt", "sufficiency": "le", "partial_necessity": "gt"}


def test_sufficiency_and_partial_necessity_report_ties_with_k():
    """Scores that depend only on how many edges of a set A are ablated: many random circuits tie
    with the circuit; k and ties against a brute-force count over the same random circuits."""
    graph = Graph(2, 4, False)
    a = torch.zeros(graph.n_edges, dtype=torch.bool)
    a[::7] = True
    x = torch.linspace(0.5, 1.5, 20, dtype=torch.float64)
    evaluate = lambda masks: (1 - masks.double())[:, a].sum(1, keepdim=True) * x[None]
    circuit = Circuit(graph, random_circuit_masks(graph, 12, 1, 5)[0])
    model_scores = torch.zeros(20, dtype=torch.float64)
    loss = lambda members: float(((evaluate(members[None].float())[0] - model_scores) ** 2).mean())
    randoms = random_circuit_masks(graph, 12, 40, np.random.default_rng([1, 12]))
    for test, run, flip, better in (("sufficiency", ht.sufficiency_test, False, lambda o, r: o <= r + 1e-9),
                                    ("partial_necessity", ht.partial_necessity_test, True, lambda o, r: o > r + 1e-9)):
        own = loss(~circuit.members if flip else circuit.members)
        others = [loss(~m if flip else m) for m in randoms]
        result = run(evaluate, circuit, model_scores, n_random=40, progress=False)
        assert result.k == sum(better(own, r) for r in others), test
        assert result.ties == sum(abs(own - r) <= 1e-9 for r in others) > 0, test
        assert result.settings["ties"] == result.ties and result.statistic == result.k / 40
    sweep = ht.sufficiency_sweep(evaluate, circuit, model_scores, fractions=(0.1, 0.2), n_random=10, progress=False)
    assert "ties" in sweep.columns and sweep.columns.index("ties") == sweep.columns.index("k") + 1


def test_progress_bars_and_bad_evaluators(capsys):
    graph = Graph(2, 4, False)
    important = torch.zeros(graph.n_edges, dtype=torch.bool)
    important[:3] = True
    ht.evaluate_masks(additive_evaluator(graph, important), torch.ones(5, graph.n_edges), batch_size=2, desc="demo")
    assert "demo" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"must return \(circuit, n_examples\)"):
        ht.evaluate_masks(lambda masks: masks.sum(1), torch.ones(3, graph.n_edges))
    with pytest.raises(ValueError, match="no edges"):
        ht.minimality_test(additive_evaluator(graph, important), Circuit.empty(graph))


# ---- the tracr ground-truth circuits --------------------------------------------------------------

BEHAVIOR = {"reverse": "reverse", "frac_prevs": "proportion"}


@pytest.fixture(scope="module")
def compiled_models():
    built = {}
    for name in tracr.TRACR_NAMES:
        model, info = tracr.to_hooked_transformer(tracr.compile_program(name))
        built[name] = (model, info, tracr.ground_truth_circuits(name, model, info)["zero"])
    return built


def tracr_setup(built, name: str, n_full: int, lengths=()):
    """(evaluate, model scores, ground-truth circuit): zero ablation, score = MSE against the full
    model, on every input of each length in ``lengths`` plus ``n_full`` full-length examples
    (a seeded sample, in enumeration order), one batch per length, scores concatenated."""
    model, info, truth = built[name]
    graph = tracr.tracr_graph(model)
    behavior = BEHAVIOR[name]
    zero = ablation_values("zero", like=torch.zeros(graph.n_sources, 1, 1, model.cfg.d_model, dtype=model.cfg.dtype))
    sets = [tracr.enumerate_inputs(info, length) for length in lengths]
    full_length = tracr.enumerate_inputs(info, info.max_seq_len)
    sets.append(full_length[torch.randperm(len(full_length), generator=torch.Generator().manual_seed(1))[:n_full].sort().values])
    score = lambda circuit_logits, model_logits, index: behaviors.score(behavior, circuit_logits, model_logits)
    evaluate = ht.concatenate_evaluators([ht.circuit_evaluator(model, graph, tokens, zero, score) for tokens in sets])
    with torch.no_grad():
        model_scores = torch.cat([behaviors.score(behavior, model(tokens), model(tokens)) for tokens in sets])
    return evaluate, model_scores, Circuit.from_edges(graph, truth)


def test_tracr_ground_truth_equivalence_and_independence_do_not_apply(compiled_models):
    for name, lengths in (("reverse", (1, 2, 3, 4)), ("frac_prevs", ())):
        evaluate, model_scores, circuit = tracr_setup(compiled_models, name, 100, lengths)
        own = ht.evaluate_masks(evaluate, torch.stack([circuit.members, ~circuit.members]), progress=False)
        equivalence = ht.equivalence_test(own[0], model_scores)
        independence = ht.independence_test(model_scores, own[1])
        # the circuit's outputs match the model's to < 1e-6 on every example: all ties
        assert equivalence.statistic == 0.5 and equivalence.ties == len(model_scores), name
        # the full model's score (MSE against itself) is 0 on every example: neither test can say anything
        assert equivalence.status == independence.status == "not applicable", name
        assert independence.statistic == 0.0 and independence.p_value == 1.0 and not independence.passes, name


def test_tracr_reverse_minimality_needs_inputs_of_several_lengths(compiled_models):
    evaluate, _, circuit = tracr_setup(compiled_models, "reverse", 30, (1, 2, 3, 4))
    mixed = ht.minimality_test(evaluate, circuit, n_references=100, progress=False)
    assert mixed.result.passes and mixed.edges["necessary"].all()
    assert (mixed.edges["k"] == 100).all() and mixed.references.max() < 1e-9
    # on full-length inputs alone the length MLP reads a zeroed length head as length 5: exactly
    # the two edges into that head's output are found unnecessary
    evaluate, _, circuit = tracr_setup(compiled_models, "reverse", 100)
    full_length = ht.minimality_test(evaluate, circuit, n_references=100, progress=False)
    unnecessary = full_length.edges.filter(~pl.col("necessary"))
    assert set(unnecessary["edge"]) == {"a0.0 -> m0", "embed -> a0.0.v"}
    assert (unnecessary["delta"] == 0).all() and not full_length.result.passes


def test_tracr_inflated_circuit_is_not_minimal_and_a_random_circuit_ties_for_sufficiency(compiled_models):
    evaluate, model_scores, circuit = tracr_setup(compiled_models, "frac_prevs", 50)
    graph = circuit.graph
    assert ht.minimality_test(evaluate, circuit, n_references=100, progress=False).result.passes
    inflated = Circuit(graph, inflate(graph, circuit.members, 2, 0))
    flagged = ht.minimality_test(evaluate, inflated, n_references=100, progress=False)
    unnecessary = set(flagged.edges.filter(~pl.col("necessary"))["edge"])
    assert not flagged.result.passes and unnecessary and unnecessary <= set((inflated - circuit).edges)
    assert set(circuit.edges) <= set(flagged.edges.filter(pl.col("necessary"))["edge"])

    sufficient = ht.sufficiency_test(evaluate, circuit, model_scores, progress=False)
    assert sufficient.passes and sufficient.statistic == 1.0
    random_circuit = Circuit(graph, random_circuit_masks(graph, len(circuit), 1, 123)[0])
    assert random_circuit != circuit
    random_result = ht.sufficiency_test(evaluate, random_circuit, model_scores, progress=False)
    # zero ablation: the random circuit's output is as broken as that of almost every random circuit of
    # its size; the reference code's "<=" counts those ties for it, so it beats (strictly) under half
    # of them and "passes" on ties alone -- which the ties column shows
    assert random_result.ties >= 90 and random_result.k - random_result.ties < 50


# ---- results table and figures --------------------------------------------------------------------


def _parquet_bytes(frame: pl.DataFrame, path) -> bytes:
    write_atomic(path, lambda tmp: frame.write_parquet(tmp))
    return path.read_bytes()


def test_results_table_sweeps_and_figures_are_deterministic(compiled_models, tmp_path):
    evaluate, model_scores, circuit = tracr_setup(compiled_models, "frac_prevs", 30)
    settings = ht.HypothesisSettings(n_references=50, n_random=30, n_permutations=100)
    results, minimality = ht.run_hypothesis_tests(evaluate, circuit, model_scores, settings, progress=False)
    frame = ht.results_frame(results, model="tracr-proportion", behavior="tracr-proportion", circuit="ground_truth")
    assert frame["test"].to_list() == list(ht.TESTS)
    assert frame.columns[:3] == ["model", "behavior", "circuit"]
    assert frame["status"].to_list() == ["not applicable", "not applicable", "passes", "passes", "fails"]
    assert frame["passes"].to_list() == [False, False, True, True, False]
    assert frame["ties"][0] == 30 and frame["k"][3] is not None and frame["ties"][1] is None
    assert json.loads(frame["settings"][2])["n_references"] == 50
    assert _parquet_bytes(frame, tmp_path / "a.parquet") == _parquet_bytes(
        ht.results_frame(results, model="tracr-proportion", behavior="tracr-proportion", circuit="ground_truth"), tmp_path / "b.parquet")
    assert set(ht.summary(results)) == set(ht.TESTS)

    sweep = pl.concat([
        ht.sufficiency_sweep(evaluate, circuit, model_scores, fractions=(0.1, 0.5, 1.0), n_random=30, progress=False),
        ht.partial_necessity_sweep(evaluate, circuit, model_scores, fractions=(0.1, 0.5, 1.0), n_random=30, progress=False),
    ])
    assert sweep["size"].to_list() == [3, 16, 32] * 2
    # at 100% the random "circuit" is the whole model; the exact circuit ties with it, which counts for it
    full = sweep.filter((pl.col("test") == "sufficiency") & (pl.col("size") == 32))
    assert full["k"].item() == full["ties"].item() == 30
    assert sweep.filter((pl.col("test") == "sufficiency") & (pl.col("size") == 3))["passes"].item()

    first = plot_random_circuit_curve(sweep, tmp_path / "curve", "tracr-proportion")
    again = plot_random_circuit_curve(sweep, tmp_path / "curve_again", "tracr-proportion")
    assert first[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and first[0].read_bytes() == again[0].read_bytes()
    effects = plot_minimality_effects(minimality, tmp_path / "effects", "tracr-proportion")
    assert effects[0].read_bytes() == plot_minimality_effects(minimality, tmp_path / "effects_again", "tracr-proportion")[0].read_bytes()
    with pytest.raises(ValueError, match="lacks column"):
        plot_random_circuit_curve(sweep.drop("fraction_beaten"), tmp_path / "bad", "x")


# ---- the paper's settings in full (slow) ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", tracr.TRACR_NAMES)
def test_tracr_ground_truth_at_the_paper_defaults(compiled_models, name):
    """100 full-length examples (plus every shorter input for reverse), 1,000 references, 100 random
    circuits, 1,000 permutations, seed 1."""
    lengths = (1, 2, 3, 4) if name == "reverse" else ()
    evaluate, model_scores, circuit = tracr_setup(compiled_models, name, 100, lengths)
    results, minimality = ht.run_hypothesis_tests(evaluate, circuit, model_scores, progress=False)
    outcome = {r.test: r.passes for r in results}
    status = {r.test: r.status for r in results}
    assert status["equivalence"] == status["independence"] == "not applicable"
    assert outcome["minimality"] and outcome["sufficiency"]
    assert minimality.edges["necessary"].all()
    # zero ablation makes removing any one critical edge of the chain as bad as removing all of it,
    # so a random circuit that holds one ties with the ground truth and partial necessity fails
    assert not outcome["partial_necessity"]
    inflated = Circuit(circuit.graph, inflate(circuit.graph, circuit.members, 2, 0))
    assert not ht.minimality_test(evaluate, inflated, progress=False).result.passes
    random_circuit = Circuit(circuit.graph, random_circuit_masks(circuit.graph, len(circuit), 1, 123)[0])
    random_result = ht.sufficiency_test(evaluate, random_circuit, model_scores, progress=False)
    # without the ties that the reference code's "<=" counts for it, it would not reach the pass mark of 96
    assert random_result.k - random_result.ties < 96
