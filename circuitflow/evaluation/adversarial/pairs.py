"""KL(full || circuit) for every pair of a clean and a corrupted input (the package docstring says
why), streamed to Parquet and read back per circuit; the circuits the paper compares; losses grouped
by two labels.  Dimension names: clean, corrupted, circuit, batch, pos, source, d_model, vocab."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitflow.circuit import Circuit
from circuitflow.graph import Graph
from circuitflow.io import write_atomic
from circuitflow.metrics import kl_divergence
from circuitflow.patching import run_circuits, source_outputs

PAIR_SCHEMA = pa.schema(
    [("clean", pa.int32()), ("corrupted", pa.int32()), ("circuit", pa.dictionary(pa.int32(), pa.string())), ("kl", pa.float64())]
)
_METADATA_KEY = b"circuitflow.adversarial"


# ---- input checks ------------------------------------------------------------------------------
def check_tokens(clean: torch.Tensor, corrupted: torch.Tensor) -> None:
    for name, tokens in (("clean", clean), ("corrupted", corrupted)):
        if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.shape[0] == 0:
            raise ValueError(f"The {name} inputs must be a non-empty (n, pos) tensor of token ids, got {tuple(tokens.shape)} {tokens.dtype}.")
    if clean.shape[1] != corrupted.shape[1]:
        raise ValueError(
            f"Clean inputs have {clean.shape[1]} positions but corrupted inputs {corrupted.shape[1]}; "
            "resample ablation pairs positions one to one, so pad both to the same length."
        )


def stack_masks(graph: Graph, circuits: Mapping[str, torch.Tensor | Circuit]) -> tuple[list[str], torch.Tensor]:
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


def answer_positions(positions: int | torch.Tensor, n_clean: int, n_pos: int) -> torch.Tensor:
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
    check_tokens(clean, corrupted)
    if batch_size < 1 or pairs_per_row_group < 1:
        raise ValueError(f"batch_size ({batch_size}) and pairs_per_row_group ({pairs_per_row_group}) must be at least 1.")
    names, masks = stack_masks(graph, circuits)
    n_clean, n_corrupted = clean.shape[0], corrupted.shape[0]
    answer = answer_positions(positions, n_clean, clean.shape[1])
    outputs = _given_or_computed_outputs(model, graph, corrupted, corrupted_outputs, batch_size)
    n_pairs = n_clean * n_corrupted
    rows = _PairRows(names, n_clean, n_corrupted)

    def write(tmp: Path) -> None:
        buffered: list[tuple[torch.Tensor, torch.Tensor]] = []
        count = 0
        with pq.ParquetWriter(tmp, rows.schema) as writer, tqdm(
            total=n_pairs, desc="pairs", unit="pair", disable=not progress, leave=False
        ) as bar:
            for start in range(0, n_pairs, batch_size):
                pairs = torch.arange(start, min(start + batch_size, n_pairs))
                kl = pair_kl(model, graph, clean, outputs, masks, pairs // n_corrupted, pairs % n_corrupted, answer)
                buffered.append((pairs, kl))
                count += len(pairs)
                if count >= pairs_per_row_group:
                    rows.flush(writer, buffered)
                    count = 0
                bar.update(len(pairs))
            if buffered:
                rows.flush(writer, buffered)

    write_atomic(path, write)
    return Path(path)


def _given_or_computed_outputs(
    model: HookedTransformer, graph: Graph, corrupted: torch.Tensor, given: torch.Tensor | None, batch_size: int
) -> torch.Tensor:
    """``given`` (source, n_corrupted, pos, d_model) once its shape is checked, else the corrupted
    inputs' source outputs computed in batches."""
    if given is None:
        return corrupted_source_outputs(model, graph, corrupted, batch_size=batch_size)
    expected = (graph.n_sources, corrupted.shape[0], corrupted.shape[1], model.cfg.d_model)
    if tuple(given.shape) != expected:
        raise ValueError(f"corrupted_outputs has shape {tuple(given.shape)}; these inputs need {expected} (source, corrupted, pos, d_model).")
    return given


class _PairRows:
    """The rows of a pair-KL file: its schema (the circuit names and input counts as metadata) and
    one row group per ``flush`` of buffered (pairs (batch,), kl (circuit, batch)) blocks."""

    def __init__(self, names: list[str], n_clean: int, n_corrupted: int):
        self.n_circuits, self.n_corrupted = len(names), n_corrupted
        metadata = {"circuits": names, "n_clean": n_clean, "n_corrupted": n_corrupted}
        self.schema = PAIR_SCHEMA.with_metadata({_METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
        self.dictionary = pa.array(names, type=pa.string())

    def flush(self, writer: pq.ParquetWriter, buffered: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write the buffered blocks as one row group, pair-major, and empty the buffer."""
        n_circuits, n_corrupted = self.n_circuits, self.n_corrupted
        pairs = torch.cat([p for p, _ in buffered]).numpy()
        kl = torch.cat([k for _, k in buffered], dim=1).T.reshape(-1).cpu().numpy()  # pair-major
        table = pa.table(
            {
                "clean": np.repeat(pairs // n_corrupted, n_circuits).astype(np.int32),
                "corrupted": np.repeat(pairs % n_corrupted, n_circuits).astype(np.int32),
                "circuit": pa.DictionaryArray.from_arrays(np.tile(np.arange(n_circuits, dtype=np.int32), len(pairs)), self.dictionary),
                "kl": kl,
            },
            schema=self.schema,
        )
        writer.write_table(table, row_group_size=table.num_rows)
        buffered.clear()


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
