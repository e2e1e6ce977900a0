"""Floating-point modes that some computations need, switched on for a block and off again.

``flush_denormal()``: subnormal floats (below 1.2e-38 in float32) are flushed to zero inside the
block.  A Mamba layer's state decay exp(delta * A) underflows into them, and x86 computes on
subnormals two orders of magnitude slower (measured: a 4-layer Mamba forward on 100 IOI prompts,
4.7 s -> 0.4 s).  Values that small cannot matter to a circuit's logits.  Torch's flag is global to
the thread and has no getter, so the blocks nest by a per-thread depth count: the outermost block
sets the flag and clears it on exit, exception or not.  Nothing here runs at import.

``resolve_device(setting)``: the torch device of params.yaml's ``compute.device``.
``deterministic_torch(seed)``: seeded, deterministic, one-thread training (same seed, same bytes).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_state = threading.local()  # .depth: how many flush_denormal blocks this thread is inside


@contextlib.contextmanager
def flush_denormal(enabled: bool = True) -> Iterator[None]:
    """Flush subnormal floats to zero in this thread for the block (a no-op when not ``enabled``,
    so callers can write ``with flush_denormal(graph.is_mamba):``).  Where the CPU cannot flush
    (``torch.set_flush_denormal`` returns False) the block runs unchanged."""
    if not enabled:
        yield
        return
    depth = getattr(_state, "depth", 0)
    if depth == 0:
        torch.set_flush_denormal(True)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth
        if depth == 0:
            torch.set_flush_denormal(False)


def resolve_device(device: str) -> torch.device:
    """The torch device of the ``compute.device`` setting: ``auto`` is CUDA when torch sees a GPU,
    else the CPU; ``cuda`` without a GPU is one sentence naming the fix."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("compute.device is cuda but torch sees no GPU (torch.cuda.is_available() is False); set it to auto or cpu.")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"compute.device must be auto, cpu or cuda, got {device!r}.")
    return torch.device(device)


@contextlib.contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Seed torch's global RNG, force deterministic algorithms and one thread for the block (so the
    reduction order, and the bytes, do not depend on the machine's cores); the caller's RNG state,
    determinism flag and thread count come back afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
