"""The closed option sets: every list of names the library registers implementations for."""

from __future__ import annotations

import enum


class Ablation(enum.StrEnum):
    """What an ablated edge carries instead of its clean value (``ablation.py`` implements each)."""

    ZERO = "zero"
    MEAN = "mean"  # over the corrupted inputs (the reference set), per position or not
    RESAMPLE = "resample"  # paired: clean example i takes corrupted example i's activations


METHODS = ("acdc", "eap", "eap-ig", "hisp", "sp", "edge-pruning", "ensemble")
BEHAVIORS = ("tracr-reverse", "tracr-proportion", "ioi", "greater-than", "docstring", "induction")
BEHAVIOR_PREFIXES = ("bigbench:", "siit-", "pairs:")  # a task file, a SIIT case, the user's counterfactual pairs
ORGANISM_BEHAVIORS = ("ioi", "greater-than", "docstring", "induction")
MAMBA_BEHAVIORS = ("ioi", "greater-than", "docstring")  # induction's evaluation reads attention patterns
TRACR_PROGRAMS = ("reverse", "frac_prevs")
