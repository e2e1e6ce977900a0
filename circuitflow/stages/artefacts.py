"""Where artefacts live under data/, and how stages write and read them.

Every stage writes one folder whole (``io.staged``): a stage that fails or is interrupted leaves the
previous outputs untouched and nothing a rerun would trust.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from circuitflow.io import write_atomic

DATA = Path("data")


def model_dir(model: str) -> Path:
    return DATA / "models" / model


def dataset_dir(pair: str) -> Path:
    return DATA / "datasets" / pair


def cache_dir(pair: str) -> Path:
    return DATA / "cache" / pair


def discover_dir(pair: str) -> Path:
    return DATA / "discover" / pair


def evaluate_dir(pair: str) -> Path:
    return DATA / "evaluate" / pair


def figure_dir(figure: str) -> Path:
    return DATA / "figures" / figure


def report_dir() -> Path:
    return DATA / "report"


def write_parquet(path: Path, frame: pl.DataFrame, provenance: dict[str, Any] | None = None) -> None:
    """``frame`` as zstd Parquet, atomically; ``provenance`` (JSON-able) goes into the file's
    key-value metadata under ``circuitflow`` (``read_provenance`` reads it back)."""
    if provenance is None:
        write_atomic(path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=False))
        return
    table = frame.to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"circuitflow": json.dumps(provenance, sort_keys=True).encode()})
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", write_statistics=False))


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The ``provenance`` ``write_parquet`` stored in a Parquet file ({} if none)."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[b"circuitflow"]) if b"circuitflow" in metadata else {}


def read_parquet(path: Path, stage: str) -> pl.DataFrame:
    """A Parquet artefact; a missing one names the stage that writes it, a corrupt one the file."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `dvc repro {stage}` first.")
    try:
        return pl.read_parquet(path)
    except Exception as error:  # polars raises several kinds for a damaged file
        raise ValueError(f"{path} is not a readable Parquet file ({type(error).__name__}); rerun `dvc repro {stage}` to rewrite it.") from None


def write_csv(path: Path, frame: pl.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: frame.write_csv(tmp, float_precision=6))


def read_csv(path: Path) -> pl.DataFrame:
    """A table ``write_csv`` wrote; one with no columns (nothing applied, e.g. no ground truth) is empty."""
    return pl.read_csv(path) if path.read_text().strip() else pl.DataFrame()


def read_json(path: Path, stage: str) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `dvc repro {stage}` first.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not valid JSON; rerun `dvc repro {stage}` to rewrite it.") from None


def load_dataset(pair: str) -> pl.DataFrame:
    return read_parquet(dataset_dir(pair) / "dataset.parquet", f"generate@{pair}")
