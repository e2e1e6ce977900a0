"""The activation cache (circuitflow.store): round trips, selection, bad files, atomicity, determinism."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from circuitflow import store
from circuitflow.store import (
    ActivationTable,
    CacheFileError,
    mean_activations,
    read_activations,
    write_activations,
)


def _activations(shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype)


def _names(n: int) -> list[str]:
    return [f"blocks.{i}.hook_out" for i in range(n)]


def _written(tmp_path: Path, shape=(6, 5, 4, 3), dtype=torch.float32, name="cache.parquet"):
    x = _activations(shape, dtype)
    path = tmp_path / name
    write_activations(path, x, _names(shape[0]), {"model": "toy", "split": "clean"})
    return path, x


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 2, 5, 7), (21, 8, 12, 16), (2, 13, 1, 17), (5, 1, 3, 1)])
def test_round_trip_is_identical(tmp_path, dtype, shape):
    x = _activations(shape, dtype)
    # Values a lossy path would mangle: signed zero, infinities, NaN, a subnormal.
    flat = x.view(-1)
    specials = [-0.0, float("inf"), -float("inf"), float("nan"), torch.finfo(dtype).tiny / 4]
    specials = torch.tensor(specials, dtype=dtype)
    flat[: min(len(specials), flat.numel())] = specials[: flat.numel()]
    write_activations(tmp_path / "a.parquet", x, _names(shape[0]), {"model": "toy"})

    table = read_activations(tmp_path / "a.parquet")

    assert table.activations.dtype == dtype
    assert table.activations.shape == shape
    # Bitwise identity (torch.equal treats NaN as unequal to itself).
    assert np.array_equal(table.activations.numpy().view(np.uint8), x.numpy().view(np.uint8))
    finite = torch.isfinite(x)
    assert torch.equal(table.activations[finite], x[finite])
    assert table.sources == _names(shape[0])
    assert table.metadata == {"model": "toy"}
    assert table.examples == list(range(shape[1]))


def test_round_trip_torch_equal_and_get(tmp_path):
    path, x = _written(tmp_path)
    table = read_activations(path)
    assert torch.equal(table.activations, x)
    assert torch.equal(table.get("blocks.2.hook_out"), x[2])
    with pytest.raises(KeyError, match="blocks.99"):
        table.get("blocks.99.hook_out")


def test_write_accepts_non_contiguous_and_leaves_input_alone(tmp_path):
    base = _activations((4, 6, 3, 5))
    x = base.transpose(1, 2).transpose(1, 2)[:, ::2]  # a strided view
    before = base.clone()
    write_activations(tmp_path / "a.parquet", x, _names(4))
    assert torch.equal(read_activations(tmp_path / "a.parquet").activations, x)
    assert torch.equal(base, before)


def test_read_gives_writable_tensor_that_owns_its_memory(tmp_path):
    path, x = _written(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when wrapping a read-only Arrow buffer
        first = read_activations(path)
    first.activations.add_(1.0)  # in place: must neither fail nor reach the file or another read
    assert torch.equal(read_activations(path).activations, x)


def test_reference_reader_agrees(tmp_path):
    """The fast reader against a naive one: pyarrow rows -> Python lists -> tensor."""
    path, x = _written(tmp_path, shape=(4, 3, 2, 5), dtype=torch.float64)
    rows = pq.read_table(path).to_pylist()
    naive = torch.zeros(x.shape, dtype=torch.float64)
    names = _names(4)
    for row in rows:
        value = torch.tensor(row["activation"], dtype=torch.float64).view(2, 5)
        naive[names.index(row["source"]), row["example"]] = value
    assert torch.equal(naive, x)
    assert torch.equal(read_activations(path).activations, naive)


def test_schema_is_documented_layout(tmp_path):
    path, x = _written(tmp_path, shape=(3, 4, 2, 5))
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    assert schema.names == ["source", "example", "activation"]
    assert schema.field("source").type == pa.string()
    assert schema.field("example").type == pa.int32()
    assert schema.field("activation").type.list_size == 10
    assert schema.field("activation").type.value_type == pa.float32()
    header = json.loads(schema.metadata[b"circuitflow.activations"])
    assert header == {
        "dtype": "float32",
        "format": 1,
        "metadata": {"model": "toy", "split": "clean"},
        "shape": [3, 4, 2, 5],
        "sources": _names(3),
    }
    # One row group per source, uncompressed, source-major rows.
    assert parquet.num_row_groups == 3
    for g in range(3):
        group = parquet.metadata.row_group(g)
        assert group.column(2).compression == "UNCOMPRESSED"
        assert group.column(0).statistics.min == group.column(0).statistics.max == _names(3)[g]
    table = parquet.read()
    assert table.column("example").to_pylist() == [0, 1, 2, 3] * 3


def test_large_source_is_split_into_row_groups_that_do_not_straddle_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "_ROW_GROUP_BYTES", 3 * 4 * 2 * 5)  # three examples' worth
    path, x = _written(tmp_path, shape=(3, 7, 2, 5))
    parquet = pq.ParquetFile(path)
    assert [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)] == [3, 3, 1] * 3
    assert torch.equal(read_activations(path).activations, x)
    picked = read_activations(path, sources=["blocks.2.hook_out", "blocks.0.hook_out"], examples=[6, 0, 3])
    assert torch.equal(picked.activations, x[[2, 0]][:, [6, 0, 3]])


# ---------------------------------------------------------------------------------------------
# selection


def test_select_sources_in_requested_order(tmp_path):
    path, x = _written(tmp_path)
    table = read_activations(path, sources=["blocks.4.hook_out", "blocks.1.hook_out"])
    assert table.sources == ["blocks.4.hook_out", "blocks.1.hook_out"]
    assert torch.equal(table.activations, x[[4, 1]])
    assert torch.equal(table.get("blocks.1.hook_out"), x[1])


def test_select_sources_reads_only_their_row_groups(tmp_path, monkeypatch):
    path, x = _written(tmp_path)
    asked: list[list[int]] = []
    original = pq.ParquetFile.read_row_groups

    def spy(self, row_groups, *args, **kwargs):
        asked.append(list(row_groups))
        return original(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    read_activations(path, sources=["blocks.3.hook_out", "blocks.1.hook_out"])
    assert asked == [[1, 3]]


def test_select_examples_with_repeats(tmp_path):
    path, x = _written(tmp_path)
    table = read_activations(path, sources=["blocks.0.hook_out"], examples=[4, 0, 4])
    assert table.examples == [4, 0, 4]
    assert torch.equal(table.activations, x[[0]][:, [4, 0, 4]])
    assert read_activations(path, examples=[]).activations.shape == (6, 0, 4, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sources": ["nope"]}, "not in activation cache"),
        ({"sources": ["blocks.0.hook_out", "blocks.0.hook_out"]}, "repeat"),
        ({"examples": [5]}, r"0\.\.4"),
        ({"examples": [-1]}, r"0\.\.4"),
        ({"examples": [0.5]}, "integers"),
        ({"sources": "blocks.0.hook_out"}, "not the string"),
    ],
)
def test_bad_selection_is_a_clear_error(tmp_path, kwargs, match):
    path, _ = _written(tmp_path)
    with pytest.raises((ValueError, TypeError), match=match) as raised:
        read_activations(path, **kwargs)
    assert not isinstance(raised.value, CacheFileError)


# ---------------------------------------------------------------------------------------------
# bad files


def _assert_cache_error(path: Path) -> CacheFileError:
    with pytest.raises(CacheFileError) as raised:
        read_activations(path)
    message = str(raised.value)
    assert str(path) in message
    assert "\n" not in message
    assert isinstance(raised.value, ValueError)
    return raised.value


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.0])
def test_truncated_file(tmp_path, keep):
    path, _ = _written(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    error = _assert_cache_error(path)
    assert "dvc repro" in str(error)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(os.urandom(5000))
    _assert_cache_error(path)


def test_garbage_with_parquet_magic(tmp_path):
    path = tmp_path / "magic.parquet"
    path.write_bytes(b"PAR1" + os.urandom(5000) + (200).to_bytes(4, "little") + b"PAR1")
    _assert_cache_error(path)


def test_corrupt_footer(tmp_path):
    path, _ = _written(tmp_path)
    data = bytearray(path.read_bytes())
    footer_length = int.from_bytes(data[-8:-4], "little")
    data[-8 - footer_length : -8] = bytes(footer_length)  # zero the whole footer
    path.write_bytes(bytes(data))
    _assert_cache_error(path)


def test_parquet_file_that_is_not_a_cache(tmp_path):
    path = tmp_path / "dataset.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": [1, 2]}), path)
    error = _assert_cache_error(path)
    assert "not an activation cache" in str(error)


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h.update(shape=[6, 5, 4, 4]),  # list size disagrees
        lambda h: h.update(shape=[6, 4, 4, 3]),  # row count disagrees
        lambda h: h.update(shape=[6, 5, 4]),
        lambda h: h.update(dtype="float64"),
        lambda h: h.update(dtype="int8"),
        lambda h: h.update(sources=h["sources"][:-1]),
        lambda h: h.update(sources=["x"] * 6),
        lambda h: h.update(format=2),
        lambda h: h.update(metadata={"a": 1}),
        lambda h: h.update(sources=h["sources"][::-1]),  # rows no longer match their source names
    ],
)
def test_metadata_that_disagrees_with_data(tmp_path, edit):
    path, _ = _written(tmp_path)
    table = pq.read_table(path)
    header = json.loads(table.schema.metadata[b"circuitflow.activations"])
    edit(header)
    table = table.replace_schema_metadata({b"circuitflow.activations": json.dumps(header)})
    pq.write_table(table, path, row_group_size=5)
    _assert_cache_error(path)


def test_metadata_that_is_not_json(tmp_path):
    path, _ = _written(tmp_path)
    table = pq.read_table(path).replace_schema_metadata({b"circuitflow.activations": b"{not json"})
    pq.write_table(table, path)
    _assert_cache_error(path)


def test_rows_out_of_order(tmp_path):
    path, _ = _written(tmp_path)
    table = pq.read_table(path)
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    pq.write_table(shuffled, path)
    _assert_cache_error(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        read_activations(tmp_path / "absent.parquet")


# ---------------------------------------------------------------------------------------------
# writing: validation, atomicity, determinism


@pytest.mark.parametrize(
    ("activations", "sources", "metadata", "error"),
    [
        (torch.zeros(2, 3, 4, 5, dtype=torch.float16), ["a", "b"], None, ValueError),
        (torch.zeros(2, 3, 4), ["a", "b"], None, ValueError),
        (torch.zeros(2, 0, 4, 5), ["a", "b"], None, ValueError),
        (torch.zeros(2, 3, 4, 5), ["a"], None, ValueError),
        (torch.zeros(2, 3, 4, 5), ["a", "a"], None, ValueError),
        (torch.zeros(2, 3, 4, 5), ["a", ""], None, TypeError),
        (torch.zeros(2, 3, 4, 5), ["a", "b"], {"n": 3}, TypeError),
        (torch.zeros(2, 3, 4, 5), "ab", None, TypeError),
        (np.zeros((2, 3, 4, 5)), ["a", "b"], None, TypeError),
    ],
)
def test_bad_write_arguments(tmp_path, activations, sources, metadata, error):
    with pytest.raises(error):
        write_activations(tmp_path / "a.parquet", activations, sources, metadata)
    assert list(tmp_path.iterdir()) == []


def test_write_leaves_no_temporary_files(tmp_path):
    path, _ = _written(tmp_path)
    _written(tmp_path)  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["cache.parquet"]


def test_interrupted_write_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path, x = _written(tmp_path)
    before = path.read_bytes()

    def interrupted(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_activations(path, x + 1, _names(6))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cache.parquet"]


def test_write_creates_parent_directories(tmp_path):
    path, x = _written(tmp_path, name="deep/er/cache.parquet")
    assert torch.equal(read_activations(path).activations, x)


def test_writing_twice_is_byte_identical(tmp_path):
    x = _activations((7, 3, 5, 2), torch.float64)
    write_activations(tmp_path / "a.parquet", x, _names(7), {"b": "2", "a": "1"})
    write_activations(tmp_path / "b.parquet", x.clone(), _names(7), {"a": "1", "b": "2"})
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_write_detaches_tensors_that_require_grad(tmp_path):
    x = _activations((2, 2, 2, 2)).requires_grad_()
    write_activations(tmp_path / "a.parquet", x * 1, _names(2))
    assert torch.equal(read_activations(tmp_path / "a.parquet").activations, x.detach())


# ---------------------------------------------------------------------------------------------
# means


def test_mean_activations_matches_naive_loop():
    x = _activations((3, 4, 5, 6), torch.float64)
    naive = torch.zeros(3, 1, 5, 6, dtype=torch.float64)
    for s in range(3):
        for b in range(4):
            naive[s, 0] += x[s, b]
    naive /= 4
    assert torch.allclose(mean_activations(x, per_position=True), naive)
    assert torch.allclose(mean_activations(x, per_position=False), naive.mean(dim=2, keepdim=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_activations_shape_dtype_and_storable(tmp_path, dtype):
    x = _activations((4, 3, 5, 2), dtype)
    per_position = mean_activations(x, per_position=True)
    pooled = mean_activations(x, per_position=False)
    assert per_position.shape == (4, 1, 5, 2) and per_position.dtype == dtype
    assert pooled.shape == (4, 1, 1, 2) and pooled.dtype == dtype
    write_activations(tmp_path / "means.parquet", pooled, _names(4), {"ablation": "mean"})
    assert torch.equal(read_activations(tmp_path / "means.parquet").activations, pooled)


def test_mean_activations_rejects_bad_input():
    with pytest.raises(ValueError):
        mean_activations(torch.zeros(2, 0, 3, 4), per_position=True)
    with pytest.raises(ValueError):
        mean_activations(torch.zeros(2, 3, 4), per_position=True)


def test_activation_table_is_frozen(tmp_path):
    path, _ = _written(tmp_path)
    table = read_activations(path)
    assert isinstance(table, ActivationTable)
    with pytest.raises(AttributeError):
        table.sources = []  # type: ignore[misc]
