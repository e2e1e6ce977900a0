"""numerics.flush_denormal: flushes subnormal floats inside the block only, nests, survives
exceptions, stays in its thread; importing circuitflow changes nothing."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch

from circuitflow.numerics import flush_denormal

SUBNORMAL = 1e-39  # below float32's smallest normal number, 1.2e-38


def flushed() -> bool:
    """Whether this thread flushes subnormals now (torch has no getter for the flag)."""
    return float(torch.tensor([SUBNORMAL]) * 2) == 0.0


if not torch.set_flush_denormal(False):  # the CPU cannot flush: nothing to test
    pytest.skip("this CPU does not support flushing subnormal floats", allow_module_level=True)


def test_the_block_flushes_and_nested_blocks_restore_on_the_outermost_exit():
    assert not flushed()
    with flush_denormal():
        assert flushed()
        with flush_denormal():
            assert flushed()
        assert flushed()  # the inner exit leaves the outer block flushing
    assert not flushed()


def test_an_exception_leaves_the_flag_as_it_was():
    with pytest.raises(RuntimeError):
        with flush_denormal():
            raise RuntimeError("inside")
    assert not flushed()
    with flush_denormal():
        assert flushed()  # the depth count came back to zero too


def test_disabled_is_a_no_op():
    with flush_denormal(False):
        assert not flushed()


def test_the_flag_stays_in_its_thread():
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def worker() -> None:
        with flush_denormal():
            seen["worker"] = flushed()
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(10)
    seen["main"] = flushed()
    release.set()
    thread.join()
    assert seen == {"worker": True, "main": False}


def test_importing_circuitflow_leaves_torch_alone():
    code = (
        "import torch\n"
        "import circuitflow, circuitflow.patching, circuitflow.numerics\n"
        "print(float(torch.tensor([1e-39]) * 2) == 0.0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
