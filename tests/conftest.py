"""Shared fixtures: small random-weight models, built locally (no downloads)."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

# The test models are tiny: one thread is faster than two and keeps a loaded machine usable.
torch.set_num_threads(1)


def small_model(seed: int = 0, **overrides) -> HookedTransformer:
    """A random 3-layer, 4-head model; ``overrides`` change any HookedTransformerConfig field."""
    settings = dict(
        n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16,
        act_fn="gelu", normalization_type="LN", seed=seed,
    )
    settings.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**settings))
    # TransformerLens initialises biases to 0 and LayerNorm scales to 1; randomise them so that a
    # forgotten bias or scale makes a test fail.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("b") or leaf == "w":
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.1
                parameter.add_(noise)
    model.eval()
    return model


@pytest.fixture
def make_model():
    return small_model


@pytest.fixture
def tokens():
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (6, 7), generator=generator)
    corrupted = torch.randint(0, 50, (6, 7), generator=generator)
    return clean, corrupted
