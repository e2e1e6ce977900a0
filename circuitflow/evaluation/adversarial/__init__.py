"""Adversarial circuit evaluation (uit de Bos & Garriga-Alonso 2024; uit de Bos & Garriga-Alonso 2024).

A circuit is judged by its worst inputs, not its average: for every pair of a clean input x_i and a
corrupted input x'_j, the circuit runs on x_i with every ablated edge carrying x'_j's activation
(resample ablation), and its loss is

    KL(p_full(. | x_i) || p_circuit(. | x_i, x'_j))   at the answer position (lower is better),

over the whole Cartesian product of N clean and M corrupted inputs (the paper: 1,000 x 1,000).

The reference p_full(. | x_i) is the patching engine's own run of x_i keeping every edge (zero
ablation values, which no kept edge reads), once per clean input.  A circuit that keeps every edge
reads no ablation value, so it does not depend on x'_j: its run *is* the reference run, and its KL is
exactly 0 on every pair.  (The engine's all-ones path with resample values equals the model only up
to float error, ~1e-6 in the logits, varying with x'_j, because it sums ablated + (output - ablated);
KLs are computed in float64, which leaves a noise floor of ~1e-12 under every other circuit.)  Every
other circuit runs once per pair, so a comparison of C circuits costs C engine circuits per pair.

Contents (modules ``pairs``, ``statistics``, ``search``; their public names are this package's):
  pair_kl / stream_pair_kl      KL per pair, streamed to Parquet in row groups (never all in memory);
  summarize / summarize_pair_kl percentiles 25 ... 99.99, mean, std, min, max, z-scores;
  order_statistic_bound(_for_confidence)   the paper's upper bound on a percentile;
  worst_pairs                   the k worst pairs, decoded by the caller's tokens -> text function;
  comparison_circuits           circuit, random (p = 0.4), circuit minus 2 edges, full model;
  grouped_mean                  losses grouped by two label arrays (the IOI name x template heatmap);
  search_bad_inputs             gradient search over convex combinations of real inputs' embeddings.
Dimension names: clean, corrupted, circuit, batch, pos, source, d_model, vocab, restart.
"""

from circuitflow.evaluation.adversarial.pairs import (
    PAIR_SCHEMA,
    comparison_circuits,
    corrupted_source_outputs,
    grouped_mean,
    pair_kl,
    pair_kl_circuits,
    read_pair_kl,
    reference_logits,
    stream_pair_kl,
)
from circuitflow.evaluation.adversarial.search import BadInputSearch, search_bad_inputs
from circuitflow.evaluation.adversarial.statistics import (
    PERCENTILES,
    PercentileBound,
    order_statistic_bound,
    order_statistic_bound_for_confidence,
    summarize,
    summarize_pair_kl,
    worst_pairs,
    z_scores,
)

__all__ = [
    "PAIR_SCHEMA",
    "PERCENTILES",
    "BadInputSearch",
    "PercentileBound",
    "comparison_circuits",
    "corrupted_source_outputs",
    "grouped_mean",
    "order_statistic_bound",
    "order_statistic_bound_for_confidence",
    "pair_kl",
    "pair_kl_circuits",
    "read_pair_kl",
    "reference_logits",
    "search_bad_inputs",
    "stream_pair_kl",
    "summarize",
    "summarize_pair_kl",
    "worst_pairs",
    "z_scores",
]
