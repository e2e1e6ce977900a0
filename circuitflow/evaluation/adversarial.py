"""Adversarial circuit evaluation (uit de Bos & Garriga-Alonso 2024; REFERENCE.md 6).

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

Contents:
  pair_kl / stream_pair_kl      KL per pair, streamed to Parquet in row groups (never all in memory);
  summarize / summarize_pair_kl percentiles 25 ... 99.99, mean, std, min, max, z-scores;
  order_statistic_bound(_for_confidence)   the paper's upper bound on a percentile;
  worst_pairs                   the k worst pairs, decoded by the caller's tokens -> text function;
  comparison_circuits           circuit, random (p = 0.4), circuit minus 2 edges, full model;
  grouped_mean                  losses grouped by two label arrays (the IOI name x template heatmap);
  search_bad_inputs             gradient search over convex combinations of real inputs' embeddings.
Dimension names: clean, corrupted, circuit, batch, pos, source, d_model, vocab, restart.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from scipy.stats import binom
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitflow.circuit import Circuit
from circuitflow.graph import Graph
from circuitflow.io import write_atomic
from circuitflow.metrics import kl_divergence
from circuitflow.patching import patched_forward, run_circuits, source_outputs

PERCENTILES: tuple[float, ...] = (25, 50, 75, 95, 99, 99.9, 99.99)
PAIR_SCHEMA = pa.schema(
    [("clean", pa.int32()), ("corrupted", pa.int32()), ("circuit", pa.dictionary(pa.int32(), pa.string())), ("kl", pa.float64())]
)
_METADATA_KEY = b"circuitflow.adversarial"


# ---- input checks ------------------------------------------------------------------------------
def _check_tokens(clean: torch.Tensor, corrupted: torch.Tensor) -> None:
    for name, tokens in (("clean", clean), ("corrupted", corrupted)):
        if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.shape[0] == 0:
            raise ValueError(f"The {name} inputs must be a non-empty (n, pos) tensor of token ids, got {tuple(tokens.shape)} {tokens.dtype}.")
    if clean.shape[1] != corrupted.shape[1]:
        raise ValueError(
            f"Clean inputs have {clean.shape[1]} positions but corrupted inputs {corrupted.shape[1]}; "
            "resample ablation pairs positions one to one, so pad both to the same length."
        )


def _stack_masks(graph: Graph, circuits: Mapping[str, torch.Tensor | Circuit]) -> tuple[list[str], torch.Tensor]:
    """(names, (circuit, n_edges) float masks) from name -> Circuit or (n_edges,) mask."""
    if not circuits:
        raise ValueError("No circuits to evaluate; pass a mapping of name -> Circuit or (n_edges,) mask.")
    names, masks = [], []
    for name, circuit in circuits.items():
        if isinstance(circuit, Circuit) and circuit.graph != graph:
            raise ValueError(f"Circuit {name!r} belongs to another graph ({circuit.graph.describe()}); build it on this model's graph.")
        mask = circuit.mask() if isinstance(circuit, Circuit) else torch.as_tensor(circuit)
        if mask.shape != (graph.n_edges,):
            raise ValueError(f"Circuit {name!r} has a mask of shape {tuple(mask.shape)}; this graph needs ({graph.n_edges},).")
        names.append(str(name))
        masks.append(mask.float())
    if len(set(names)) != len(names):
        raise ValueError(f"Circuit names must be distinct, got {names}.")
    return names, torch.stack(masks)


def _answer_positions(positions: int | torch.Tensor, n_clean: int, n_pos: int) -> torch.Tensor:
    """(n_clean,) non-negative answer positions from an int (every input) or one per clean input."""
    positions = torch.as_tensor(positions, dtype=torch.long)
    if positions.dim() == 0:
        positions = positions.expand(n_clean)
    if positions.shape != (n_clean,):
        raise ValueError(f"Answer positions must be an int or one per clean input ({n_clean},), got {tuple(positions.shape)}.")
    positions = torch.where(positions < 0, positions + n_pos, positions)
    if bool(((positions < 0) | (positions >= n_pos)).any()):
        raise ValueError(f"An answer position lies outside the {n_pos} token positions; give indices in [-{n_pos}, {n_pos}).")
    return positions.clone()


def corrupted_source_outputs(
    model: HookedTransformer, graph: Graph, corrupted: torch.Tensor, *, batch_size: int = 512
) -> torch.Tensor:
    """Every source's output on every corrupted input, (source, corrupted, pos, d_model), in batches."""
    chunks = [source_outputs(model, graph, corrupted[s : s + batch_size]) for s in range(0, corrupted.shape[0], batch_size)]
    return torch.cat(chunks, dim=1)


# ---- KL per pair -------------------------------------------------------------------------------
def reference_logits(
    model: HookedTransformer, graph: Graph, clean: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """The full model's logits at each input's answer position, (batch, vocab) float64: the engine's
    run keeping every edge.  clean: (batch, pos) tokens; positions: (batch,) answer positions."""
    zeros = torch.zeros(graph.n_sources, 1, 1, model.cfg.d_model, dtype=model.cfg.dtype, device=clean.device)
    keep_all = torch.ones(graph.n_edges, dtype=model.cfg.dtype, device=clean.device)
    with torch.no_grad():
        logits = run_circuits(model, graph, clean, zeros, keep_all)
    return logits[torch.arange(clean.shape[0], device=clean.device), positions.to(clean.device)].double()


def pair_kl(
    model: HookedTransformer,
    graph: Graph,
    clean: torch.Tensor,
    corrupted_outputs: torch.Tensor,
    masks: torch.Tensor,
    clean_index: torch.Tensor,
    corrupted_index: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """KL(full || circuit) at the answer position for one batch of (clean, corrupted) pairs.

    clean: (n_clean, pos) tokens; corrupted_outputs: (source, n_corrupted, pos, d_model) from
    ``corrupted_source_outputs``; masks: (circuit, n_edges) in [0, 1]; clean_index, corrupted_index:
    (batch,) which pairs; positions: (n_clean,) answer position of each clean input.
    Returns (circuit, batch) float64, >= 0, lower is better.  A mask of all ones is the reference
    run itself (it reads no ablated value) and scores exactly 0.
    """
    device = clean.device
    clean_index, corrupted_index = clean_index.to(device), corrupted_index.to(device)
    positions, masks = positions.to(device), masks.to(device)
    unique, inverse = torch.unique(clean_index, return_inverse=True)
    reference = reference_logits(model, graph, clean[unique], positions[unique])[inverse]  # (batch, vocab)
    kl = torch.empty(masks.shape[0], clean_index.shape[0], dtype=torch.float64, device=device)
    full = (masks == 1).all(-1)
    kl[full] = kl_divergence(reference, reference)
    if not bool(full.all()):
        with torch.no_grad():
            logits = run_circuits(model, graph, clean[clean_index], corrupted_outputs[:, corrupted_index], masks[~full])
        answer = logits[:, torch.arange(clean_index.shape[0], device=device), positions[clean_index]].double()
        kl[~full] = kl_divergence(reference, answer).clamp_min(0.0)  # rounding only can go below 0
    return kl


def stream_pair_kl(
    model: HookedTransformer,
    graph: Graph,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    circuits: Mapping[str, torch.Tensor | Circuit],
    path: str | Path,
    *,
    positions: int | torch.Tensor = -1,
    batch_size: int = 256,
    pairs_per_row_group: int = 131_072,
    corrupted_outputs: torch.Tensor | None = None,
    progress: bool = False,
) -> Path:
    """Write KL(full || circuit) for every (clean, corrupted) pair and circuit to a Parquet file.

    clean: (n_clean, pos), corrupted: (n_corrupted, pos) token ids; circuits: name -> Circuit or
    (n_edges,) mask; positions: the answer position, one int or (n_clean,).  Rows ``clean``,
    ``corrupted`` (indices), ``circuit`` (name), ``kl`` (float64, lower is better), ordered by
    clean, corrupted, then the circuits' order (``circuit`` is dictionary-encoded: polars reads it as
    a Categorical), written in row groups as the pairs are computed:
    memory holds the corrupted activations (source x n_corrupted x pos x d_model) and one row group,
    never the product.  ``corrupted_outputs`` (source, n_corrupted, pos, d_model) passes those
    activations in (e.g. from the cache stage) instead of computing them.  The file appears
    atomically when complete (no partial file to resume from).  Returns ``path``.
    """
    _check_tokens(clean, corrupted)
    if batch_size < 1 or pairs_per_row_group < 1:
        raise ValueError(f"batch_size ({batch_size}) and pairs_per_row_group ({pairs_per_row_group}) must be at least 1.")
    names, masks = _stack_masks(graph, circuits)
    n_clean, n_corrupted = clean.shape[0], corrupted.shape[0]
    answer = _answer_positions(positions, n_clean, clean.shape[1])
    if corrupted_outputs is None:
        outputs = corrupted_source_outputs(model, graph, corrupted, batch_size=batch_size)
    else:
        expected = (graph.n_sources, corrupted.shape[0], corrupted.shape[1], model.cfg.d_model)
        if tuple(corrupted_outputs.shape) != expected:
            raise ValueError(f"corrupted_outputs has shape {tuple(corrupted_outputs.shape)}; these inputs need {expected} (source, corrupted, pos, d_model).")
        outputs = corrupted_outputs
    n_pairs, n_circuits = n_clean * n_corrupted, len(names)
    metadata = {"circuits": names, "n_clean": n_clean, "n_corrupted": n_corrupted}
    schema = PAIR_SCHEMA.with_metadata({_METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    dictionary = pa.array(names, type=pa.string())

    def write(tmp: Path) -> None:
        buffered: list[tuple[torch.Tensor, torch.Tensor]] = []
        count = 0

        def flush() -> None:
            pairs = torch.cat([p for p, _ in buffered]).numpy()
            kl = torch.cat([k for _, k in buffered], dim=1).T.reshape(-1).cpu().numpy()  # pair-major
            table = pa.table(
                {
                    "clean": np.repeat(pairs // n_corrupted, n_circuits).astype(np.int32),
                    "corrupted": np.repeat(pairs % n_corrupted, n_circuits).astype(np.int32),
                    "circuit": pa.DictionaryArray.from_arrays(np.tile(np.arange(n_circuits, dtype=np.int32), len(pairs)), dictionary),
                    "kl": kl,
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=table.num_rows)
            buffered.clear()

        with pq.ParquetWriter(tmp, schema) as writer, tqdm(
            total=n_pairs, desc="pairs", unit="pair", disable=not progress, leave=False
        ) as bar:
            for start in range(0, n_pairs, batch_size):
                pairs = torch.arange(start, min(start + batch_size, n_pairs))
                kl = pair_kl(model, graph, clean, outputs, masks, pairs // n_corrupted, pairs % n_corrupted, answer)
                buffered.append((pairs, kl))
                count += len(pairs)
                if count >= pairs_per_row_group:
                    flush()
                    count = 0
                bar.update(len(pairs))
            if buffered:
                flush()

    write_atomic(path, write)
    return Path(path)


def pair_kl_circuits(path: str | Path) -> list[str]:
    """The circuit names of a ``stream_pair_kl`` file, in the order they were given."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        return list(json.loads(metadata[_METADATA_KEY])["circuits"])
    except (OSError, pa.ArrowInvalid, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a pair-KL Parquet file ({error}); rewrite it with stream_pair_kl.") from None


def read_pair_kl(path: str | Path, circuit: str) -> np.ndarray:
    """The KL of every pair for one circuit of a ``stream_pair_kl`` file, (n_clean * n_corrupted,) float64,
    in (clean, corrupted) order; lower is better."""
    names = pair_kl_circuits(path)
    if circuit not in names:
        raise ValueError(f"{path} has no circuit {circuit!r}; it has {', '.join(map(repr, names))}.")
    table = pq.read_table(path, columns=["kl"], filters=[("circuit", "==", circuit)])
    return table.column("kl").to_numpy()


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
    """Upper bound on the p-th quantile (REFERENCE.md 6): the ceil((p + eps) n)-th smallest sample.

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


# ---- the paper's comparison --------------------------------------------------------------------
def comparison_circuits(
    circuit: Circuit, *, seed: int, keep_probability: float = 0.4, n_removed: int = 2
) -> dict[str, Circuit]:
    """The circuits the paper compares, in order: ``circuit``, ``random`` (each edge kept with
    probability ``keep_probability``), ``circuit minus {n_removed}`` (that many of its edges removed,
    drawn uniformly) and ``full model``.  Deterministic in ``seed``."""
    if not 0 <= keep_probability <= 1:
        raise ValueError(f"keep_probability must lie in [0, 1], got {keep_probability}.")
    if not 0 <= n_removed <= len(circuit):
        raise ValueError(f"Cannot remove {n_removed} edges from a circuit of {len(circuit)}; choose n_removed <= {len(circuit)}.")
    generator = torch.Generator().manual_seed(seed)
    graph = circuit.graph
    random = torch.rand(graph.n_edges, generator=generator, dtype=torch.float64) < keep_probability
    members = circuit.members.nonzero().flatten()
    removed = members[torch.randperm(len(members), generator=generator)[:n_removed]]
    minus = circuit.members.clone()
    minus[removed] = False
    return {
        "circuit": circuit,
        "random": Circuit(graph, random),
        f"circuit minus {n_removed}": Circuit(graph, minus),
        "full model": Circuit.full(graph),
    }


def grouped_mean(values: np.ndarray, rows: Sequence, columns: Sequence) -> pl.DataFrame:
    """Mean loss per (row label, column label), e.g. per (IO name, template) for IOI.

    values: (n,) losses (lower is better); rows, columns: (n,) labels of each value (str or int),
    for pairs e.g. ``names[clean_index]``.  Returns columns row, col, mean, count, sorted by label;
    empty combinations are absent.  Sums run in a fixed order, so the result is reproducible.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    rows, columns = np.asarray(rows), np.asarray(columns)
    if not (rows.shape == columns.shape == values.shape):
        raise ValueError(f"grouped_mean needs one row and one column label per value: {values.shape}, {rows.shape}, {columns.shape}.")
    row_labels, row_code = np.unique(rows, return_inverse=True)
    col_labels, col_code = np.unique(columns, return_inverse=True)
    cell = row_code * len(col_labels) + col_code
    cells = len(row_labels) * len(col_labels)
    count = np.bincount(cell, minlength=cells)
    total = np.bincount(cell, weights=values, minlength=cells)
    present = np.flatnonzero(count)
    return pl.DataFrame(
        {
            "row": row_labels[present // len(col_labels)].tolist(),
            "col": col_labels[present % len(col_labels)].tolist(),
            "mean": total[present] / count[present],
            "count": count[present],
        }
    )


# ---- gradient search for bad inputs ------------------------------------------------------------
def _token_embedding(model: HookedTransformer, graph: Graph) -> torch.nn.Module:
    """The model's token-embedding module (a Mamba model's ``embedding``, a transformer's ``embed``)."""
    return model.embedding if graph.is_mamba else model.embed


@contextlib.contextmanager
def _token_embeddings(model: HookedTransformer, graph: Graph, embeddings: torch.Tensor) -> Iterator[None]:
    """While open, the token embedding returns ``embeddings`` (batch, pos, d_model) whatever its
    tokens: the patching engine reads token ids, so soft inputs enter through this forward hook."""

    def replace(module, args, output):
        if output.shape != embeddings.shape:
            raise ValueError(f"Soft embeddings {tuple(embeddings.shape)} do not match the tokens' {tuple(output.shape)}.")
        return embeddings

    handle = _token_embedding(model, graph).register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class BadInputSearch:
    """What ``search_bad_inputs`` found; KL(full || circuit) is the loss, lower is better for the circuit."""

    kl: torch.Tensor  # (restart,) best KL reached on the soft inputs
    hard_kl: torch.Tensor  # (restart,) KL of the hard projections (tokens of the heaviest weight)
    clean_tokens: torch.Tensor  # (restart, pos) hard projection of the best clean weights
    corrupted_tokens: torch.Tensor  # (restart, pos)
    clean_weights: torch.Tensor  # (restart, pos, n_clean_pool) softmax weights at the best step
    corrupted_weights: torch.Tensor  # (restart, pos, n_corrupted_pool)
    history: torch.Tensor  # (steps, restart) KL at each step

    @property
    def best(self) -> float:
        """The largest KL found, soft or hard."""
        return float(torch.cat([self.kl, self.hard_kl]).max())


def search_bad_inputs(
    model: HookedTransformer,
    graph: Graph,
    mask: torch.Tensor | Circuit,
    clean_pool: torch.Tensor,
    corrupted_pool: torch.Tensor,
    *,
    position: int = -1,
    n_restarts: int = 8,
    steps: int = 100,
    lr: float = 0.1,
    seed: int = 0,
) -> BadInputSearch:
    """Gradient ascent on KL(full || circuit) over soft (clean, corrupted) input pairs.

    At each position the input's token embedding is a convex combination (softmax weights) of the
    pool inputs' token embeddings at that position, for the clean and the corrupted input alike;
    the corrupted one's source activations are the resample-ablation values, so the gradient reaches
    both.  Each restart starts 95% on a random real pair (seeded) and runs ``steps`` Adam steps.
    mask: (n_edges,) or a Circuit; clean_pool (n_clean, pos), corrupted_pool (n_corrupted, pos)
    token ids of real inputs.  The soft inputs lie between real embeddings but need not be
    realisable as tokens: ``hard_kl`` scores their projection onto each position's heaviest token.
    """
    _check_tokens(clean_pool, corrupted_pool)
    _, masks = _stack_masks(graph, {"circuit": mask})
    if n_restarts < 1 or steps < 1:
        raise ValueError(f"n_restarts ({n_restarts}) and steps ({steps}) must be at least 1.")
    n_pos = clean_pool.shape[1]
    position = int(_answer_positions(position, 1, n_pos)[0])
    generator = torch.Generator().manual_seed(seed)
    device = clean_pool.device
    masks = masks.to(device)
    with torch.no_grad():
        embed = _token_embedding(model, graph)
        clean_embed, corrupted_embed = embed(clean_pool), embed(corrupted_pool)  # (n, pos, d_model)

    def start(pool_size: int) -> torch.Tensor:
        chosen = torch.randint(pool_size, (n_restarts,), generator=generator)
        logits = torch.zeros(n_restarts, n_pos, pool_size, dtype=clean_embed.dtype)
        # weight 0.95 on the chosen input: e^a / (e^a + n - 1) = 0.95
        logits[torch.arange(n_restarts), :, chosen] = math.log(19 * max(pool_size - 1, 1))
        return logits.to(device).requires_grad_()

    clean_logits, corrupted_logits = start(clean_pool.shape[0]), start(corrupted_pool.shape[0])
    optimizer = torch.optim.Adam([clean_logits, corrupted_logits], lr=lr)
    dummy = torch.zeros(n_restarts, n_pos, dtype=torch.long, device=device)
    keep_all = torch.ones(graph.n_edges, dtype=clean_embed.dtype, device=device)
    all_ones = torch.ones(1, graph.n_sources, graph.n_destinations, dtype=clean_embed.dtype, device=device)
    zeros = torch.zeros(graph.n_sources, 1, 1, model.cfg.d_model, dtype=clean_embed.dtype, device=device)
    best_kl = torch.full((n_restarts,), -1.0, dtype=torch.float64, device=device)
    best_clean = clean_logits.detach().softmax(-1)
    best_corrupted = corrupted_logits.detach().softmax(-1)
    history = []
    for _ in range(steps):
        clean_w, corrupted_w = clean_logits.softmax(-1), corrupted_logits.softmax(-1)
        with _token_embeddings(model, graph, torch.einsum("rpn,npd->rpd", corrupted_w, corrupted_embed)):
            _, outputs = patched_forward(model, graph, dummy, zeros, all_ones, return_deltas=True)
        with _token_embeddings(model, graph, torch.einsum("rpn,npd->rpd", clean_w, clean_embed)):
            reference = run_circuits(model, graph, dummy, zeros, keep_all)[:, position].double()
            circuit = run_circuits(model, graph, dummy, outputs[0], masks[0])[:, position].double()
        kl = kl_divergence(reference, circuit)  # (restart,)
        improved = kl.detach() > best_kl
        best_kl = torch.where(improved, kl.detach(), best_kl)
        best_clean = torch.where(improved[:, None, None], clean_w.detach(), best_clean)
        best_corrupted = torch.where(improved[:, None, None], corrupted_w.detach(), best_corrupted)
        history.append(kl.detach())
        # gradients for the weights only: the model's parameters get none (and cost none)
        clean_logits.grad, corrupted_logits.grad = torch.autograd.grad(-kl.sum(), [clean_logits, corrupted_logits])
        optimizer.step()

    positions_index = torch.arange(n_pos, device=device)
    clean_tokens = clean_pool[best_clean.argmax(-1), positions_index]  # (restart, pos)
    corrupted_tokens = corrupted_pool[best_corrupted.argmax(-1), positions_index]
    hard_outputs = source_outputs(model, graph, corrupted_tokens)
    restarts = torch.arange(n_restarts, device=device)
    hard_kl = pair_kl(
        model, graph, clean_tokens, hard_outputs, masks, restarts, restarts, torch.full((n_restarts,), position, device=device)
    )[0]
    return BadInputSearch(
        kl=best_kl.clamp_min(0.0),
        hard_kl=hard_kl,
        clean_tokens=clean_tokens,
        corrupted_tokens=corrupted_tokens,
        clean_weights=best_clean,
        corrupted_weights=best_corrupted,
        history=torch.stack(history),
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
