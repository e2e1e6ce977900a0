import itertools

import numpy as np
import pytest
import torch

from circuitflow.circuit import Circuit
from circuitflow.evaluation.roc import (
    ROC_COLUMNS,
    auc_pessimistic,
    auc_trapezoid,
    is_nested,
    node_truth_and_scores,
    roc_from_circuits,
    roc_points,
    roc_points_from_circuits,
    scored_nodes,
)
from circuitflow.graph import Graph


# ---- slow references ---------------------------------------------------------------------------
def naive_roc(scores, truth):
    """Loop over thresholds and count edges one by one (the twin of roc_points)."""
    rows = [(np.inf, 0, 0, 0)]
    for t in sorted(set(scores.tolist()), reverse=True):
        kept = [i for i in range(len(scores)) if scores[i] >= t]
        tp = sum(bool(truth[i]) for i in kept)
        rows.append((t, len(kept), tp, len(kept) - tp))
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    return [(t, k, tp, fp, tp / n_pos, fp / n_neg) for t, k, tp, fp in rows]


def pairwise_auc(scores, truth, tie):
    """Mann-Whitney: P(random positive outscores random negative), a tie counting ``tie``."""
    total = 0.0
    pos, neg = scores[truth], scores[~truth]
    for p, n in itertools.product(pos.tolist(), neg.tolist()):
        total += 1.0 if p > n else tie if p == n else 0.0
    return total / (len(pos) * len(neg))


def staircase_area(fpr, tpr):
    """Brute force: integrate the 'right first, then up' step function on a fine grid of x."""
    area, grid = 0.0, 4000
    for j in range(grid):
        x = (j + 0.5) / grid
        # the height at x is the tpr of the last point whose fpr is at or left of x
        # (a point straight above another, same fpr, lifts the step only after it)
        height = max(y for xp, y in zip(fpr, tpr) if xp <= x)
        area += height / grid
    return area


def random_case(rng, n=None, n_levels=None):
    n = n or int(rng.integers(4, 25))
    n_levels = n_levels or int(rng.integers(2, 6))
    scores = rng.integers(0, n_levels, n).astype(float)  # few levels: many ties
    truth = rng.random(n) < 0.4
    truth[0], truth[1] = True, False  # both classes present
    return scores, truth


# ---- roc_points --------------------------------------------------------------------------------
def test_roc_points_matches_naive_sweep_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores, truth = random_case(rng)
        fast = roc_points(scores, truth)
        assert fast.columns == list(ROC_COLUMNS)
        expected = naive_roc(scores, truth)
        assert len(fast) == len(expected) == len(np.unique(scores)) + 1
        for row, ref in zip(fast.iter_rows(), expected):
            assert row[:4] == ref[:4]
            assert row[4:] == pytest.approx(ref[4:])


def test_roc_points_ends_and_monotone():
    scores = np.array([0.3, 0.9, 0.1, 0.9, 0.5])
    truth = np.array([False, True, False, False, True])
    roc = roc_points(scores, truth)
    first, last = roc.row(0, named=True), roc.row(-1, named=True)
    assert (first["threshold"], first["n_kept"], first["tpr"], first["fpr"]) == (np.inf, 0, 0.0, 0.0)
    assert (last["threshold"], last["n_kept"], last["tpr"], last["fpr"]) == (0.1, 5, 1.0, 1.0)
    # the tie at 0.9 (one positive, one negative) enters as one point
    assert roc.row(1) == (0.9, 2, 1, 1, 0.5, 1 / 3)
    assert (roc["fpr"].diff().drop_nulls() >= 0).all() and (roc["tpr"].diff().drop_nulls() >= 0).all()


def test_roc_points_does_not_depend_on_edge_order_and_takes_torch():
    rng = np.random.default_rng(1)
    scores, truth = random_case(rng, n=30)
    perm = rng.permutation(30)
    a = roc_points(scores, truth)
    assert a.equals(roc_points(scores[perm], truth[perm]))
    assert a.equals(roc_points(torch.tensor(scores, dtype=torch.float32), torch.tensor(truth)))


def test_roc_points_rejects_bad_input():
    with pytest.raises(ValueError, match="both"):
        roc_points(np.arange(3.0), np.array([True, True, True]))
    with pytest.raises(ValueError, match="NaN"):
        roc_points(np.array([0.0, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="boolean"):
        roc_points(np.array([0.0, 1.0]), np.array([1, 0]))
    with pytest.raises(ValueError, match="shape"):
        roc_points(np.array([0.0, 1.0]), np.array([True, False, True]))


def test_infinite_scores_still_start_from_the_empty_circuit():
    roc = roc_points(np.array([np.inf, 1.0, 0.0]), np.array([True, False, True]))
    assert roc["n_kept"].to_list() == [0, 1, 2, 3]
    assert roc["tpr"].to_list() == [0.0, 0.5, 0.5, 1.0]


# ---- AUC ---------------------------------------------------------------------------------------
def aucs(scores, truth):
    roc = roc_points(scores, truth)
    return auc_pessimistic(roc["fpr"], roc["tpr"]), auc_trapezoid(roc["fpr"], roc["tpr"])


def test_perfect_reversed_and_random_rankings():
    truth = np.zeros(200, dtype=bool)
    truth[:40] = True
    perfect = np.linspace(1, 0, 200)
    assert aucs(perfect, truth) == (1.0, 1.0)
    assert aucs(-perfect, truth) == (0.0, 0.0)
    rng = np.random.default_rng(2)
    big_truth = rng.random(20_000) < 0.3
    pessimistic, trapezoid = aucs(rng.random(20_000), big_truth)
    assert pessimistic == pytest.approx(0.5, abs=0.02) and trapezoid == pytest.approx(0.5, abs=0.02)
    # all scores tied: one step from (0,0) to (1,1), the trapezoid gets half, the staircase nothing
    assert aucs(np.zeros(200), truth) == (0.0, 0.5)


def test_trapezoid_auc_is_mann_whitney_with_half_ties():
    rng = np.random.default_rng(3)
    for _ in range(100):
        scores, truth = random_case(rng)
        assert aucs(scores, truth)[1] == pytest.approx(pairwise_auc(scores, truth, tie=0.5), abs=1e-12)


def test_pessimistic_auc_against_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(30):
        scores, truth = random_case(rng, n=int(rng.integers(4, 12)))
        roc = roc_points(scores, truth)
        fpr, tpr = roc["fpr"].to_list(), roc["tpr"].to_list()
        pessimistic = auc_pessimistic(fpr, tpr)
        # (1) enumerate the pairs: ties earn nothing; (2) integrate the staircase numerically
        assert pessimistic == pytest.approx(pairwise_auc(scores, truth, tie=0.0), abs=1e-12)
        assert pessimistic == pytest.approx(staircase_area(fpr, tpr), abs=2e-3)
        assert pessimistic <= auc_trapezoid(fpr, tpr) + 1e-12


def test_pessimistic_auc_staircase_by_hand():
    # (0,0) -> (0.5, 0.5) -> (1, 1): right first at height 0, then at height 0.5
    assert auc_pessimistic([0, 0.5, 1], [0, 0.5, 1]) == 0.25
    assert auc_trapezoid([0, 0.5, 1], [0, 0.5, 1]) == 0.5
    # vertical jumps (same fpr) cost nothing
    assert auc_pessimistic([0, 0, 1, 1], [0, 1, 1, 1]) == 1.0


def test_auc_rejects_unsorted_or_open_curves():
    with pytest.raises(ValueError, match="sorted"):
        auc_pessimistic([0, 0.6, 0.4, 1], [0, 0.5, 0.6, 1])
    with pytest.raises(ValueError, match="fpr 0 to fpr 1"):
        auc_trapezoid([0.2, 1], [0.5, 1])


# ---- circuits found one by one (ACDC's tau sweep) ----------------------------------------------
def test_roc_from_circuits_pareto_front():
    truth = np.array([True, True, False, False])
    circuits = np.array(
        [
            [True, False, False, False],  # (fpr 0, tpr .5)
            [False, False, True, False],  # (fpr .5, tpr 0): dominated
            [True, True, True, False],  # (fpr .5, tpr 1)
            [True, False, True, False],  # (fpr .5, tpr .5): dominated
        ]
    )
    roc = roc_from_circuits(circuits, truth)
    # the end points always stay (they close the curve), though both are dominated here
    assert roc["circuit"].to_list() == [None, 0, 2, None]
    assert roc["fpr"].to_list() == [0.0, 0.0, 0.5, 1.0] and roc["tpr"].to_list() == [0.0, 0.5, 1.0, 1.0]
    assert auc_pessimistic(roc["fpr"], roc["tpr"]) == 0.5 * 0.5 + 0.5 * 1.0
    everything = roc_from_circuits(torch.tensor(circuits), torch.tensor(truth), pareto=False)
    assert len(everything) == 6 and everything["circuit"].null_count() == 2
    assert everything["tpr"].to_list() == [0.0, 0.5, 0.0, 0.5, 1.0, 1.0]  # sorted by (fpr, tpr)


# ---- nodes -------------------------------------------------------------------------------------
def test_node_truth_and_scores():
    graph = Graph(n_layers=2, n_heads=2, attn_only=False)
    nodes = scored_nodes(graph)
    assert nodes == ("a0.0", "a0.1", "m0", "a1.0", "a1.1", "m1")
    truth = ["input -> a0.1.v", "a0.1 -> a1.0.k", "a1.0 -> logits"]
    scores = np.zeros(graph.n_edges)
    scores[graph.edge_index["a0.0 -> m1"]] = 5.0
    scores[graph.edge_index["m0 -> a1.1.q"]] = 3.0
    scores[graph.edge_index["input -> logits"]] = 9.0  # touches no scored node
    node_scores, node_truth = node_truth_and_scores(graph, scores, truth)
    assert dict(zip(nodes, node_truth.tolist())) == {
        "a0.0": False, "a0.1": True, "m0": False, "a1.0": True, "a1.1": False, "m1": False,
    }
    assert dict(zip(nodes, node_scores.tolist())) == {
        "a0.0": 5.0, "a0.1": 0.0, "m0": 3.0, "a1.0": 0.0, "a1.1": 3.0, "m1": 5.0,
    }
    # the same ground truth given as a Circuit or a bool vector
    circuit = Circuit.from_edges(graph, truth)
    for given in (circuit, circuit.members, circuit.members.numpy()):
        assert np.array_equal(node_truth_and_scores(graph, scores, given)[1], node_truth)
    with pytest.raises(ValueError, match="not in this model's graph"):
        node_truth_and_scores(graph, scores, ["input -> a5.0.q"])
    with pytest.raises(ValueError, match="edges"):
        node_truth_and_scores(graph, scores[:-1], truth)


def test_node_level_with_positions_and_direct_edges():
    positional = Graph(n_layers=1, n_heads=2, attn_only=True, n_positions=3)
    scores = np.zeros(positional.n_edges)
    scores[positional.edge_index["a0.1 -> logits @ 2"]] = 7.0
    node_scores, node_truth = node_truth_and_scores(positional, scores, ["input -> a0.0.q @ 0"])
    assert node_scores.tolist() == [0.0, 7.0] and node_truth.tolist() == [True, False]

    direct = Graph(n_layers=1, n_heads=2, attn_only=True, qkv_direct_edges=True)
    scores = np.zeros(direct.n_edges)
    scores[direct.edge_index["a0.1.k -> a0.1"]] = 2.0
    node_scores, node_truth = node_truth_and_scores(direct, scores, ["a0.0.v -> a0.0"])
    assert node_scores.tolist() == [0.0, 2.0] and node_truth.tolist() == [True, False]
    roc = roc_points(node_scores, node_truth)
    assert auc_pessimistic(roc["fpr"], roc["tpr"]) == 0.0


# ---- sweeps: per-threshold circuits against "largest threshold keeping the edge" scores ---------


def _largest_keeping(kept: np.ndarray, thresholds) -> np.ndarray:
    """Per edge, the largest threshold whose circuit keeps it (-inf if none), by a loop."""
    return np.array([max([t for t, row in zip(thresholds, kept) if row[e]], default=-np.inf) for e in range(kept.shape[1])])


def _point_set(frame) -> set[tuple[float, float]]:
    return set(zip(frame["fpr"].to_list(), frame["tpr"].to_list()))


def test_sweep_points_of_a_non_nested_sweep_differ_from_its_scores():
    truth = np.array([True, True, False, False])
    thresholds = [1.0, 2.0, 3.0]
    kept = np.array([[True, False, True, False], [False, True, False, False], [True, False, False, False]])
    assert not is_nested(kept, thresholds)  # edge 1 is kept at tau 2 but not at tau 1
    points, aucs = roc_points_from_circuits(kept, truth)
    # by hand: the circuits sit at (fpr, tpr) = (0.5, 0.5), (0, 0.5), (0, 0.5), plus (0, 0) and (1, 1)
    assert sorted(_point_set(points)) == [(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (1.0, 1.0)]
    assert len(points) == 5 and points["circuit"].to_list() == [None, 1, 2, 0, None]
    assert aucs == {"trapezoid": pytest.approx(0.5 * 0.5 + 0.5 * 0.75), "pessimistic": pytest.approx(0.5 * 0.5 + 0.5 * 0.5)}
    scored = roc_points(_largest_keeping(kept, thresholds), truth)  # scores 3, 2, 1, -inf
    assert (0.0, 1.0) in _point_set(scored) and _point_set(scored) != _point_set(points)
    assert auc_trapezoid(scored["fpr"], scored["tpr"]) == 1.0 != aucs["trapezoid"]


def test_sweep_points_of_a_nested_sweep_are_its_score_points():
    truth = np.array([True, True, False, False, True])
    thresholds = [3.0, 1.0, 2.0]  # any order
    kept = np.array([[True, False, False, False, False], [True, True, True, False, True], [True, True, False, False, False]])
    assert is_nested(kept, thresholds) and is_nested(torch.from_numpy(kept), torch.tensor(thresholds))
    points, aucs = roc_points_from_circuits(kept, truth)
    scored = roc_points(_largest_keeping(kept, thresholds), truth)
    assert _point_set(points) == _point_set(scored)
    assert aucs["trapezoid"] == pytest.approx(auc_trapezoid(scored["fpr"], scored["tpr"]))
    assert aucs["pessimistic"] == pytest.approx(auc_pessimistic(scored["fpr"], scored["tpr"]))
    with pytest.raises(ValueError, match="distinct"):
        is_nested(kept, [1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="one threshold per row"):
        is_nested(kept, [1.0, 2.0])

