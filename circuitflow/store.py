"""The activation cache: every graph source's activations, stored in one Parquet file.

The cache stage runs a model over a behavior's clean and corrupted inputs and keeps the output of
every source node of the graph (the input embedding, each attention head's output, each MLP's
output), plus the means that mean ablation patches in. Later stages read ablation values from here
instead of running the model again.

Dimension names, as everywhere in circuitflow: ``source`` (a graph source node), ``batch`` (an
example), ``pos`` (a token position), ``d_model`` (the residual stream).

File layout (format 1)
----------------------
One Parquet file, one row per (source, example), rows in source-major order: row ``s * batch + b``
holds source ``s``, example ``b``. Columns, none nullable:

==============  =================================================  ====================================
column          Arrow type                                         Parquet encoding
==============  =================================================  ====================================
``source``      ``string``: the source's name                      dictionary; min/max statistics
``example``     ``int32``: index into the batch, 0..batch-1        plain; min/max statistics
``activation``  ``fixed_size_list<float32|float64, pos*d_model>``  plain, no statistics, 16 MiB pages
==============  =================================================  ====================================

``activation`` holds one example's ``(pos, d_model)`` activations flattened in C order, so the whole
column is one contiguous ``(source, batch, pos, d_model)`` buffer and reading it back is a reshape
plus one copy. Nothing is compressed: activations are float noise to a compressor, and the cache is
read far more often than it is written.

Row groups: one per source (a source larger than 64 MiB is split across several row groups, never
mixed with another), so reading a subset of sources reads only their row groups. The ``source``
column's per-row-group statistics name the source, so other Parquet readers (polars, DuckDB) can
skip row groups with a filter on ``source`` too.

Schema metadata: key ``circuitflow.activations``, a JSON object with sorted keys::

    {"dtype": "float32", "format": 1, "metadata": {...user's str -> str...},
     "shape": [source, batch, pos, d_model], "sources": ["name of source 0", ...]}

Writing is atomic (``circuitflow.io.write_atomic``): the file is written under a temporary name in
the same directory, then renamed over the target; an interrupted write leaves the old file or none,
never half of a new one.

No timestamps or host names are stored: writing the same tensor twice gives byte-identical files
(the README, determinism), given the same pyarrow version (Parquet records its writer's version).

What is checked on read: the footer and page headers (a truncated or garbage file is an error), the
metadata, and that the columns agree with it (row count, list size, dtype, and the source and example
of every row read). Bit flips inside the float data itself are not detected here; DVC's checksums of
the artefact cover those.

The format's constants and those checks are ``store_format.py``'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from circuitflow.io import write_atomic
from circuitflow.store_format import (
    DTYPE_BY_NAME,
    DTYPES,
    FIX,
    FORMAT_VERSION,
    METADATA_KEY,
    CacheFileError,
    check_columns,
    check_rows,
    check_sources,
    corrupt,
    parse_header,
    preview,
    select_examples,
    select_sources,
)

__all__ = [
    "ActivationTable",
    "CacheFileError",
    "mean_activations",
    "read_activations",
    "write_activations",
]

# A source bigger than this is split across row groups: very large row groups read slowly
# (one huge allocation, no parallel decoding) and cost as much memory again while being read.
_ROW_GROUP_BYTES = 64 << 20

_WRITE_OPTIONS = dict(
    compression="none",
    use_dictionary=["source"],
    # Statistics on the activations cost ~15% of write time and no reader uses them.
    write_statistics=["source", "example"],
    # Fewer, larger pages and batches: each page and batch costs fixed work in the encoder
    # (measured: up to ~40% faster writes than the defaults, 1 MiB pages and 1024-value batches).
    data_page_size=16 << 20,
    write_batch_size=1 << 20,
)


@dataclass(frozen=True, eq=False)
class ActivationTable:
    """Activations read back from a cache file.

    Attributes:
        activations: ``(source, batch, pos, d_model)`` tensor, float32 or float64 as written, on the
            CPU. It owns its memory (a copy of the file's data): writing to it changes nothing else.
        sources: the source names, one per entry of dimension 0, in the order read.
        metadata: the user metadata given to :func:`write_activations`.
        examples: the example index (in the file) of each entry of dimension 1, in the order read.
    """

    activations: torch.Tensor
    sources: list[str]
    metadata: dict[str, str]
    examples: list[int]
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(self.sources)})

    def get(self, source: str) -> torch.Tensor:
        """One source's activations, shape ``(batch, pos, d_model)``: a view into ``activations``."""
        try:
            return self.activations[self._index[source]]
        except KeyError:
            raise KeyError(
                f"source {source!r} is not in this activation table; it holds {preview(self.sources)}"
            ) from None


# --------------------------------------------------------------------------------------------------
# writing


def write_activations(
    path: str | os.PathLike[str],
    activations: torch.Tensor,
    sources: Sequence[str],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``activations`` (shape ``(source, batch, pos, d_model)``) to a Parquet cache at ``path``.

    ``sources`` names the entries of dimension 0 (unique, in order). ``metadata`` (str -> str, e.g.
    model, behavior, split, commit) is stored with the file and returned by
    :func:`read_activations`. The dtype (float32 or float64) is kept; a tensor on another device is
    copied to the CPU first. ``activations`` is not modified.

    The file is written under a temporary name in the same directory, flushed to disk, then renamed
    over ``path``: an interrupted write or a crash leaves the old file (or none), never half of a
    new one.
    Missing parent directories are created.
    """
    path = Path(path)
    if not isinstance(activations, torch.Tensor):
        raise TypeError(f"activations must be a torch.Tensor, not {type(activations).__name__}")
    if activations.dtype not in DTYPES:
        raise ValueError(
            f"activations have dtype {activations.dtype}; the cache stores float32 or float64, "
            "so convert them first (e.g. `activations.float()`)"
        )
    if activations.dim() != 4 or 0 in activations.shape:
        raise ValueError(
            f"activations must have shape (source, batch, pos, d_model) with no empty dimension, "
            f"got {tuple(activations.shape)}"
        )
    n_sources, batch, pos, d_model = (int(n) for n in activations.shape)
    if isinstance(sources, str):
        raise TypeError(f"sources must be a list of source names, not the string {sources!r}")
    sources = list(sources)
    check_sources(sources, n_sources)
    metadata = dict(metadata or {})
    bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise TypeError(f"metadata must map str to str; entries {bad!r} do not")

    dtype_name, arrow_type = DTYPES[activations.dtype]
    header = {
        "dtype": dtype_name,
        "format": FORMAT_VERSION,
        "metadata": metadata,
        "shape": [n_sources, batch, pos, d_model],
        "sources": sources,
    }
    table = _to_table(activations, sources, arrow_type, header)
    # Row groups of at most _ROW_GROUP_BYTES, equal within a source, never straddling two sources.
    groups_per_source = -(-batch * pos * d_model * activations.element_size() // _ROW_GROUP_BYTES)
    rows_per_group = -(-batch // groups_per_source)
    if rows_per_group == batch:  # the usual case: one row group per source, in one call
        write_atomic(path, lambda tmp: pq.write_table(table, str(tmp), row_group_size=batch, **_WRITE_OPTIONS))
    else:
        _write_split(path, table, batch, rows_per_group)


def _to_table(
    activations: torch.Tensor, sources: list[str], arrow_type: pa.DataType, header: dict
) -> pa.Table:
    n_sources, batch, pos, d_model = activations.shape
    # One flat C-order buffer; pa.array wraps it without copying when it is already contiguous.
    flat = activations.detach().cpu().contiguous().numpy().reshape(-1)
    list_type = pa.list_(pa.field("item", arrow_type, nullable=False), pos * d_model)
    activation = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=arrow_type), type=list_type)
    # A plain string column (Parquet dictionary-encodes it per row group, storing each name once per
    # row group); an Arrow dictionary column would store the whole name list in every row group.
    source_index = np.repeat(np.arange(n_sources, dtype=np.int32), batch)
    source = pa.array(sources, type=pa.string()).take(pa.array(source_index))
    example = pa.array(np.tile(np.arange(batch, dtype=np.int32), n_sources))
    schema = pa.schema(
        [
            pa.field("source", pa.string(), nullable=False),
            pa.field("example", pa.int32(), nullable=False),
            pa.field("activation", list_type, nullable=False),
        ],
        metadata={METADATA_KEY: json.dumps(header, sort_keys=True, separators=(",", ":"))},
    )
    return pa.Table.from_arrays([source, example, activation], schema=schema)


def _write_split(path: Path, table: pa.Table, batch: int, rows_per_group: int) -> None:
    def write(tmp: str) -> None:
        with pq.ParquetWriter(tmp, table.schema, **_WRITE_OPTIONS) as writer:
            for start in range(0, table.num_rows, batch):
                writer.write_table(table.slice(start, batch), row_group_size=rows_per_group)

    write_atomic(path, lambda tmp: write(str(tmp)))


# --------------------------------------------------------------------------------------------------
# reading


def read_activations(
    path: str | os.PathLike[str],
    sources: Sequence[str] | None = None,
    examples: Sequence[int] | None = None,
) -> ActivationTable:
    """Read a cache written by :func:`write_activations`.

    Args:
        path: the cache file.
        sources: names of the sources to read, in the order wanted (no repeats); ``None`` reads all.
            Only these sources' row groups are read from disk.
        examples: indices (0..batch-1) of the examples to read, in the order wanted; repeats are
            allowed. ``None`` reads all. The selected sources' row groups are still read whole.

    Returns:
        An :class:`ActivationTable` whose ``activations`` has shape
        ``(len(sources), len(examples), pos, d_model)`` and the dtype written; a fresh CPU tensor.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CacheFileError: ``path`` is not a readable activation cache (truncated, corrupt, not Parquet,
            not a cache, or its data disagrees with its metadata).
        ValueError: a requested source or example is not in the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"activation cache {path} does not exist; run `dvc repro` for the cache stage"
        )
    try:
        return _read(path, sources, examples)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (pa.ArrowException, OSError) as error:
        message = f"{path} is not a readable activation cache (truncated or corrupt); {FIX}"
        raise CacheFileError(message) from error


def _read(path: Path, sources: Sequence[str] | None, examples: Sequence[int] | None) -> ActivationTable:
    # Memory-mapped: pages are decoded straight out of the page cache instead of first being copied
    # into a read buffer. Safe against the writer, which replaces files rather than rewriting them.
    with pq.ParquetFile(path, memory_map=True) as parquet:
        return _read_open(path, parquet, sources, examples)


def _read_open(
    path: Path, parquet: pq.ParquetFile, sources: Sequence[str] | None, examples: Sequence[int] | None
) -> ActivationTable:
    header = parse_header(path, parquet.schema_arrow.metadata)
    n_sources, batch, pos, d_model = header["shape"]
    torch_dtype, arrow_type = DTYPE_BY_NAME[header["dtype"]]
    all_sources: list[str] = header["sources"]
    check_columns(path, parquet, header, arrow_type)

    if sources is None:
        source_ids = np.arange(n_sources, dtype=np.int64)
        sources = all_sources
    else:
        if isinstance(sources, str):
            raise TypeError(f"sources must be a list of source names, not the string {sources!r}")
        sources = list(sources)
        source_ids = select_sources(path, sources, all_sources)
    if examples is None:
        example_ids = np.arange(batch, dtype=np.int64)
    else:
        example_ids = select_examples(path, examples, batch)

    # Global rows wanted, in output order, and the row groups that hold them.
    wanted = (source_ids[:, None] * batch + example_ids[None, :]).reshape(-1)
    group_rows = np.array([parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)])
    group_start = np.concatenate([[0], np.cumsum(group_rows)])
    groups = np.unique(np.searchsorted(group_start, wanted, side="right") - 1)

    row_len = pos * d_model
    out = torch.empty((len(sources), len(example_ids), pos, d_model), dtype=torch_dtype)
    out_rows = out.numpy().reshape(-1, row_len)  # a writable view of `out`
    if len(wanted):
        table = parquet.read_row_groups(groups.tolist(), use_threads=True)
        # Global row number of each row of `table`, and the position in `table` of each wanted row.
        read_rows = np.concatenate([np.arange(group_start[g], group_start[g + 1]) for g in groups])
        check_rows(path, table, read_rows, batch, all_sources)
        position = np.searchsorted(read_rows, wanted)
        _copy_rows(path, table.column("activation"), position, out_rows, row_len)

    return ActivationTable(
        activations=out,
        sources=list(sources),
        metadata=dict(header["metadata"]),
        examples=example_ids.tolist(),
    )


def _copy_rows(
    path: Path, column: pa.ChunkedArray, position: np.ndarray, out_rows: np.ndarray, row_len: int
) -> None:
    """Copy row ``position[i]`` of ``column`` into ``out_rows[i]``, chunk by chunk, no loop over rows."""
    order = np.argsort(position, kind="stable")
    sorted_position = position[order]
    chunk_start = 0
    for chunk in column.chunks:
        chunk_end = chunk_start + len(chunk)
        lo, hi = np.searchsorted(sorted_position, [chunk_start, chunk_end])
        if hi > lo:
            values = chunk.flatten()  # respects the chunk's offset, unlike `.values`
            if chunk.null_count or values.null_count:
                corrupt(path, "it holds null activations")
            rows = values.to_numpy(zero_copy_only=True).reshape(-1, row_len)
            targets = order[lo:hi]
            local = sorted_position[lo:hi] - chunk_start
            if _is_run(targets) and _is_run(local):
                out_rows[targets[0] : targets[-1] + 1] = rows[local[0] : local[-1] + 1]
            else:
                out_rows[targets] = rows[local]
        chunk_start = chunk_end


def _is_run(index: np.ndarray) -> bool:
    """Whether ``index`` is ``k, k+1, ..., k+n-1`` (so a slice copy can replace a gather)."""
    return bool(index[-1] - index[0] == len(index) - 1 and np.all(np.diff(index) == 1))


# --------------------------------------------------------------------------------------------------
# means for mean ablation


def mean_activations(activations: torch.Tensor, per_position: bool) -> torch.Tensor:
    """Mean over the batch, and over positions too unless ``per_position``.

    Args:
        activations: ``(source, batch, pos, d_model)``, float32 or float64.
        per_position: keep one mean per position (for inputs of fixed length, where position ``p``
            means the same thing in every example) instead of one per source.

    Returns:
        ``(source, 1, pos, d_model)`` if ``per_position`` else ``(source, 1, 1, d_model)``, in the
        input's dtype, so it can be stored with :func:`write_activations`. Summed in float64, so a
        float32 result does not depend on how many threads summed it. ``activations`` is unchanged.
    """
    if activations.dim() != 4:
        raise ValueError(
            f"activations must have shape (source, batch, pos, d_model), got {tuple(activations.shape)}"
        )
    if activations.dtype not in DTYPES:
        raise ValueError(f"activations have dtype {activations.dtype}; expected float32 or float64")
    if activations.shape[1] == 0 or activations.shape[2] == 0:
        raise ValueError(
            f"cannot average activations with an empty batch or no positions: {tuple(activations.shape)}"
        )
    dims = (1,) if per_position else (1, 2)
    return activations.to(torch.float64).mean(dim=dims, keepdim=True).to(activations.dtype)
