"""circuitflow: find the circuits inside a neural network and test whether they explain it."""

import torch

# Subnormal floats are flushed to zero (in the importing thread; the pipeline's Prefect tasks set it
# in theirs, tasks/steps.py): a Mamba layer's state decay exp(delta * A)
# underflows into them, and x86 computes on subnormals two orders of magnitude slower (measured: a
# 4-layer Mamba forward on 100 IOI prompts, 4.7 s -> 0.4 s).  Values below 1.2e-38 cannot matter
# to a circuit's logits; setting it for every entry point (stages, `circuitflow run`, tests,
# benchmarks) keeps them computing the same bytes.
torch.set_flush_denormal(True)
