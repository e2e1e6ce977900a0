"""The activation cache's file format (``store.py`` describes it): its metadata key and version,
the dtypes it holds, and the checks that a file, or a selection from it, follows the format.

Every failed check is a ``CacheFileError`` (or a ValueError for a bad selection) in one sentence
naming the file and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

METADATA_KEY = b"circuitflow.activations"
FORMAT_VERSION = 1

DTYPES: dict[torch.dtype, tuple[str, pa.DataType]] = {
    torch.float32: ("float32", pa.float32()),
    torch.float64: ("float64", pa.float64()),
}
DTYPE_BY_NAME = {name: (torch_dtype, arrow_type) for torch_dtype, (name, arrow_type) in DTYPES.items()}

FIX = "delete it and rerun `dvc repro` for the cache stage"


class CacheFileError(ValueError):
    """A file that is not a readable activation cache: truncated, corrupt, or something else."""


def parse_header(path: Path, schema_metadata: dict[bytes, bytes] | None) -> dict:
    raw = (schema_metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise CacheFileError(
            f"{path} is a Parquet file but not an activation cache (its schema has no "
            f"{METADATA_KEY.decode()} metadata); write it with circuitflow.store.write_activations "
            "or rerun `dvc repro` for the cache stage"
        )
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        corrupt(path, "its metadata is not valid JSON")
    if not isinstance(header, dict):
        corrupt(path, "its metadata is not a JSON object")
    if header.get("format") != FORMAT_VERSION:
        raise CacheFileError(
            f"{path} is an activation cache in format {header.get('format')!r}, but this circuitflow "
            f"reads format {FORMAT_VERSION}; {FIX}"
        )
    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(type(n) is int and n > 0 for n in shape)):
        corrupt(path, f"its metadata shape {shape!r} is not four positive integers")
    if header.get("dtype") not in DTYPE_BY_NAME:
        corrupt(path, f"its metadata dtype {header.get('dtype')!r} is not float32 or float64")
    names = header.get("sources")
    if not (
        isinstance(names, list)
        and len(names) == shape[0]
        and all(isinstance(n, str) for n in names)
        and len(set(names)) == len(names)
    ):
        corrupt(path, f"its metadata does not name {shape[0]} distinct sources")
    user = header.get("metadata")
    if not (isinstance(user, dict) and all(isinstance(v, str) for v in user.values())):
        corrupt(path, "its user metadata is not a map of strings")
    return header


def check_columns(path: Path, parquet: pq.ParquetFile, header: dict, arrow_type: pa.DataType) -> None:
    n_sources, batch, pos, d_model = header["shape"]
    schema = parquet.schema_arrow
    if schema.names != ["source", "example", "activation"]:
        corrupt(path, f"it has columns {schema.names}, not ['source', 'example', 'activation']")
    activation = schema.field("activation").type
    if not (
        pa.types.is_fixed_size_list(activation)
        and activation.list_size == pos * d_model
        and activation.value_type == arrow_type
    ):
        corrupt(
            path,
            f"its metadata says shape {header['shape']} and dtype {header['dtype']}, "
            f"but its activation column is {activation}",
        )
    if not (pa.types.is_string(schema.field("source").type) and schema.field("example").type == pa.int32()):
        corrupt(path, "its source or example column has the wrong type")
    if parquet.metadata.num_rows != n_sources * batch:
        corrupt(
            path,
            f"its metadata says shape {header['shape']} ({n_sources * batch} rows), "
            f"but it holds {parquet.metadata.num_rows} rows",
        )


def check_rows(
    path: Path, table: pa.Table, read_rows: np.ndarray, batch: int, all_sources: list[str]
) -> None:
    """Every row read must hold the source and example that its position says (source-major order)."""
    if table.num_rows != len(read_rows):
        corrupt(path, "its row groups hold fewer rows than its footer says")
    example = table.column("example").to_numpy()
    expected_source = pa.array(all_sources, type=pa.string()).take(pa.array(read_rows // batch))
    source = table.column("source")
    if not (np.array_equal(example, read_rows % batch) and source.equals(pa.chunked_array([expected_source]))):
        corrupt(path, "its rows are not in (source, example) order as its metadata says")


def select_sources(path: Path, wanted: list[str], all_sources: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(all_sources)}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise ValueError(
            f"sources {missing} are not in activation cache {path}; it holds {preview(all_sources)}"
        )
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"sources to read from {path} repeat a name: {wanted}")
    return np.array([index[name] for name in wanted], dtype=np.int64)


def select_examples(path: Path, examples: Sequence[int], batch: int) -> np.ndarray:
    ids = np.asarray(examples)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"examples must be a sequence of integers, got {examples!r}")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= batch):
        raise ValueError(f"examples must lie in 0..{batch - 1} for activation cache {path}, got {examples!r}")
    return ids


def check_sources(sources: list[str], n_sources: int) -> None:
    if len(sources) != n_sources:
        raise ValueError(f"got {len(sources)} source names for {n_sources} sources (activations' dimension 0)")
    if not all(isinstance(name, str) and name for name in sources):
        raise TypeError("source names must be non-empty strings")
    if len(set(sources)) != len(sources):
        seen: set[str] = set()
        repeated = sorted({name for name in sources if name in seen or seen.add(name)})
        raise ValueError(f"source names must be distinct; repeated: {repeated}")


def corrupt(path: Path, reason: str) -> NoReturn:
    raise CacheFileError(f"{path} is not a readable activation cache ({reason}); {FIX}")


def preview(names: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(name) for name in names[:n])
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return f"[{shown}{more}]"

