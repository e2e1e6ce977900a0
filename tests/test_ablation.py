"""ablation.py: one implementation per kind of ablation, from activations or from the cache files."""

from __future__ import annotations

import pytest
import torch

from circuitflow.ablation import (
    CACHE_FILES,
    ablation_values,
    ablation_values_from_cache,
    as_ablation,
    select_examples,
)
from circuitflow.settings import Ablation
from circuitflow.store import mean_activations, write_activations

SOURCES, BATCH, POS, D_MODEL = 3, 5, 4, 6


def _outputs(seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(SOURCES, BATCH, POS, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_every_kind_has_a_cache_file_and_an_implementation():
    assert set(CACHE_FILES) == set(Ablation)
    outputs = _outputs()
    for kind in Ablation:  # the enum and its string both work
        for name in (kind, kind.value):
            values = ablation_values(name, corrupted=outputs, reference=outputs, like=outputs)
            assert values.dim() == 4 and values.shape[0] == SOURCES and values.shape[-1] == D_MODEL


def test_each_kind_by_hand():
    outputs = _outputs()
    assert torch.equal(ablation_values("zero", like=outputs), torch.zeros(SOURCES, 1, 1, D_MODEL))
    assert ablation_values("resample", corrupted=outputs) is outputs
    pooled = ablation_values("mean", reference=outputs)
    per_position = ablation_values("mean", reference=outputs, per_position=True)
    assert pooled.shape == (SOURCES, 1, 1, D_MODEL) and per_position.shape == (SOURCES, 1, POS, D_MODEL)
    torch.testing.assert_close(pooled, outputs.mean(dim=(1, 2), keepdim=True))
    torch.testing.assert_close(per_position, outputs.mean(dim=1, keepdim=True))


def test_mean_is_the_one_the_cache_holds():
    """One mean: the float64-summed store.mean_activations, bit for bit, whichever path asks."""
    outputs = _outputs(dtype=torch.float32)
    for per_position in (False, True):
        assert torch.equal(ablation_values("mean", reference=outputs, per_position=per_position), mean_activations(outputs, per_position))


def test_values_from_the_cache_files(tmp_path):
    corrupted = _outputs(seed=1)
    names = [f"s{i}" for i in range(SOURCES)]
    write_activations(tmp_path / "corrupted.parquet", corrupted, names)
    write_activations(tmp_path / "mean.parquet", mean_activations(corrupted, False), names)
    assert torch.equal(ablation_values_from_cache("resample", tmp_path), corrupted)
    assert torch.equal(ablation_values_from_cache(Ablation.MEAN, tmp_path), ablation_values("mean", reference=corrupted))
    assert torch.equal(ablation_values_from_cache("zero", tmp_path), torch.zeros(SOURCES, 1, 1, D_MODEL))


def test_select_examples_keeps_a_shared_row_and_slices_per_example_rows():
    outputs = _outputs()
    shared = outputs[:, :1]
    index = torch.tensor([3, 1])
    assert select_examples(shared, index) is shared
    assert torch.equal(select_examples(outputs, index), outputs[:, [3, 1]])
    assert torch.equal(select_examples(outputs, slice(2, 3)), outputs[:, 2:3])


def test_unknown_ablation_and_missing_inputs_are_one_sentence():
    with pytest.raises(ValueError, match=r"^Unknown ablation 'noise'; choose one of zero, mean, resample\.$"):
        as_ablation("noise")
    with pytest.raises(ValueError, match="Unknown ablation"):
        ablation_values("noise", like=_outputs())
    with pytest.raises(ValueError, match="Unknown ablation"):
        ablation_values_from_cache("noise", "anywhere")
    with pytest.raises(ValueError, match="needs `like`"):
        ablation_values("zero")
    with pytest.raises(ValueError, match="needs `reference`"):
        ablation_values("mean")
    with pytest.raises(ValueError, match="needs `corrupted`"):
        ablation_values("resample")
