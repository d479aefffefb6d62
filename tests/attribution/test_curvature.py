"""The curvature seam: the evenly spaced sample does not depend on how sketches are split, kinds round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.config import CurvatureConfig
from attribution.curvature import KINDS, fit_curvature, load_curvature, sample_sketches
from attribution.errors import ConfigError
from attribution.preconditioner import PreconditionMode


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6), sample=st.integers(1, 50),
       windows=st.sampled_from([None, 2]))
def test_sample_is_the_same_however_the_rows_are_split(sizes: list[int], sample: int, windows: int | None) -> None:
    rng = np.random.default_rng(len(sizes) * 100 + sample)
    shape = (sum(sizes), 4) if windows is None else (sum(sizes), windows, 4)
    whole = rng.standard_normal(shape)
    cuts = np.cumsum(sizes)[:-1]
    split = sample_sketches(np.split(whole, cuts), 4, sample)
    together = sample_sketches([torch.from_numpy(whole)], 4, sample)
    assert split.count == together.count
    torch.testing.assert_close(split.sum, together.sum)
    flat = whole.reshape(-1, 4)
    stride = max(1, len(flat) // sample)
    torch.testing.assert_close(together.sum, torch.from_numpy(flat[::stride].T @ flat[::stride]))


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_fits_saves_and_loads(kind: PreconditionMode, tmp_path: Path) -> None:
    sketches = torch.randn(200, 6, dtype=torch.float64)
    fitted = fit_curvature([sketches], 6, CurvatureConfig(kind=kind, damping=0.3, sample=64))
    fitted.save(tmp_path / "c.safetensors")
    loaded = load_curvature(tmp_path / "c.safetensors")
    assert loaded.describe() == fitted.describe() and loaded.describe()["mode"] == kind.value
    torch.testing.assert_close(loaded.apply_train(sketches), fitted.apply_train(sketches))
    torch.testing.assert_close(loaded.apply_query(sketches), fitted.apply_query(sketches))


def test_none_fits_nothing_and_a_missing_file_loads_as_none(tmp_path: Path) -> None:
    assert fit_curvature([torch.randn(10, 3)], 3, CurvatureConfig(kind="none")) is None
    assert load_curvature(tmp_path / "absent.safetensors") is None
    with pytest.raises(ConfigError, match="kind must be one of"):
        CurvatureConfig(kind="kfac-someday")
