"""Throughput of the activation cache (circuitflow.store) against plain pyarrow and numpy.

Run: ``python benchmarks/bench_store.py [--json PATH] [--dir DIR] [--repeats N]``.

For each shape (source, batch, pos, d_model), float32, it times

* ours: ``write_activations`` / ``read_activations`` (read gives a fresh torch tensor);
* pyarrow: ``pyarrow.parquet.write_table`` / ``read_table`` of the same array as ONE uncompressed
  ``FixedSizeList<float32>`` column with pyarrow's other defaults (read stops at the Arrow table);
* numpy: ``numpy.save`` / ``numpy.load``, for context.

Throughput is MB (10^6 bytes of activations) per second, from the median of ``--repeats`` runs;
the methods take turns within each repeat so that drifts in disk or CPU speed hit all alike, and
``os.sync()`` runs (untimed) before each call so that none pays for another's pending disk writes.
The target is ours/pyarrow >= 0.7 for both write and read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from circuitflow import store

SHAPES = {
    "small": ((21, 32, 12, 128), 21),  # shape, repeats
    "big": ((157, 64, 32, 128), 7),
}
TARGET = 0.7


def _median_seconds(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in functions}
    for name, function in functions.items():  # warm-up: first-touch allocations, page cache
        function()
    for _ in range(repeats):
        for name, function in functions.items():
            # Untimed: write back every dirty page first, so that no method pays for the disk
            # writes another method left behind.
            os.sync()
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_shape(label: str, shape: tuple[int, int, int, int], repeats: int, directory: Path) -> dict:
    activations = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    array = activations.numpy()
    sources = [f"source.{i}" for i in range(shape[0])]
    megabytes = array.nbytes / 1e6
    names = ("ours.parquet", "pa.parquet", "npy")
    ours, baseline, npy = (directory / f"{label}.{name}" for name in names)

    def pyarrow_write() -> None:
        values = pa.array(array.reshape(-1))
        column = pa.FixedSizeListArray.from_arrays(values, shape[2] * shape[3])
        pq.write_table(pa.table({"activation": column}), baseline, compression="none", use_dictionary=False)

    seconds = _median_seconds(
        {
            "ours write": lambda: store.write_activations(ours, activations, sources),
            "pyarrow write": pyarrow_write,
            "numpy write": lambda: np.save(npy, array),
            "ours read": lambda: store.read_activations(ours),
            "pyarrow read": lambda: pq.read_table(baseline),
            "numpy read": lambda: np.load(npy),
        },
        repeats,
    )
    # Check that what was timed is right.
    assert torch.equal(store.read_activations(ours).activations, activations)
    assert np.array_equal(np.load(npy), array)

    mbps = {name: megabytes / s for name, s in seconds.items()}
    return {
        "case": label,
        "shape": list(shape),
        "megabytes": round(megabytes, 2),
        "repeats": repeats,
        "mb_per_s": {name: round(value, 1) for name, value in mbps.items()},
        "ratio_write": round(mbps["ours write"] / mbps["pyarrow write"], 3),
        "ratio_read": round(mbps["ours read"] / mbps["pyarrow read"], 3),
        "file_bytes": {"ours": ours.stat().st_size, "pyarrow": baseline.stat().st_size},
    }


def _print_table(results: list[dict]) -> None:
    columns = ("ours", "pyarrow", "numpy", "ours/pa")
    print(f"{'case':<6} {'shape':<16} {'MB':>6}  {'op':<6}" + "".join(f"{c:>9}" for c in columns))
    for result in results:
        mbps = result["mb_per_s"]
        shape = "x".join(map(str, result["shape"]))
        for op in ("write", "read"):
            ratio = result[f"ratio_{op}"]
            cells = [mbps[f"ours {op}"], mbps[f"pyarrow {op}"], mbps[f"numpy {op}"]]
            text = "".join(f"{c:9.0f}" for c in cells) + f"{ratio:9.2f}"
            flag = "" if ratio >= TARGET else "  < target"
            print(f"{result['case']:<6} {shape:<16} {result['megabytes']:>6.1f}  {op:<6}{text}{flag}")
    print(
        f"MB/s (10^6 bytes of activations per second), median; "
        f"target ours/pyarrow >= {TARGET}; load average {os.getloadavg()[0]:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--dir", type=Path, help="where to write the files (default: a temporary directory)")
    parser.add_argument("--repeats", type=int, help="repeats per method (default: 21 small, 7 big)")
    args = parser.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="bench_store.", dir=args.dir))
    try:
        results = [
            bench_shape(label, shape, args.repeats or repeats, directory)
            for label, (shape, repeats) in SHAPES.items()
        ]
    finally:
        shutil.rmtree(directory)
    _print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count(), "results": results}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
