"""circuitflow: find the circuits inside a neural network and test whether they explain it."""
