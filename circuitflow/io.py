"""Atomic file writes: an interrupted stage leaves the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file owner-only; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """JSON with sorted keys and a trailing newline: the same data always gives the same bytes."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def staged(directory: str | Path) -> Iterator[Path]:
    """An empty folder to write ``directory``'s new contents into; on success it replaces
    ``directory`` whole, on any exception (Ctrl-C included) it is deleted and ``directory`` stays as
    it was."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial, old = directory.with_name(f".{directory.name}.partial"), directory.with_name(f".{directory.name}.old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    partial.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
