"""The curvature seam: the evenly spaced sample does not depend on how sketches are split, kinds round-trip,
per-module blocks are the global inverse square root restricted to each module (K-FAC/EK-FAC: test_kfac.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.batching import training_batch
from attribution.config import CurvatureConfig
from attribution.curvature import KINDS, evenly_spaced, fit_curvature, load_curvature, sample_sketches
from attribution.errors import ConfigError
from attribution.preconditioner import PreconditionMode
from attribution.sketch import SketchConfig, Sketcher
from tests.attribution.conftest import make_tiny_model, random_rows

SKETCH_SPACE = [kind for kind, entry in KINDS.items() if entry.statistics is None and entry.prefit is None]


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


@pytest.mark.parametrize("kind", SKETCH_SPACE)
def test_every_sketch_space_kind_fits_saves_and_loads(kind: PreconditionMode, tmp_path: Path) -> None:
    sketches = torch.randn(200, 6, dtype=torch.float64)
    fitted = fit_curvature([sketches], 6, CurvatureConfig(kind=kind, damping=0.3, sample=64))
    fitted.save(tmp_path / "c.safetensors")
    loaded = load_curvature(tmp_path / "c.safetensors")
    assert loaded.describe() == fitted.describe() and loaded.describe()["mode"] == kind.value
    assert fitted.describe()["bytes"] > 0 and fitted.describe()["fit_seconds"] is not None
    torch.testing.assert_close(loaded.apply_train(sketches), fitted.apply_train(sketches))
    torch.testing.assert_close(loaded.apply_query(sketches), fitted.apply_query(sketches))


def test_block_with_one_module_is_the_global_inverse_sqrt() -> None:
    sketches = torch.randn(300, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    config = dict(damping=0.2, sample=100)
    block = fit_curvature([sketches], 8, CurvatureConfig(kind="block", **config))
    whole = fit_curvature([sketches], 8, CurvatureConfig(kind="inverse_sqrt", **config))
    assert block.lams == [pytest.approx(whole.lam)] and block.matrices[0].dtype == torch.float32
    torch.testing.assert_close(block.apply_train(sketches), whole.apply_train(sketches), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block.apply_query(sketches), whole.apply_query(sketches), rtol=1e-5, atol=1e-5)


def test_block_is_each_modules_own_inverse_sqrt() -> None:
    sketcher = Sketcher(make_tiny_model(torch.float64), SketchConfig(k=2))
    sketches = sketcher.sketch(training_batch(random_rows([9] * 40, seed=1)))
    block = fit_curvature([sketches], sketcher.dim, CurvatureConfig(kind="block", damping=0.1), sketcher=sketcher)
    assert block.modules == sketcher.module_names and len(block.matrices) == len(sketcher.modules)
    out = block.apply_train(sketches)
    for m in range(len(sketcher.module_names)):
        part = sketches[:, 4 * m : 4 * (m + 1)]
        alone = fit_curvature([part], 4, CurvatureConfig(kind="inverse_sqrt", damping=0.1))
        torch.testing.assert_close(out[:, 4 * m : 4 * (m + 1)], alone.apply_train(part), rtol=1e-5, atol=1e-6)


def test_evenly_spaced_rows() -> None:
    assert evenly_spaced(10, 4) == [0, 2, 5, 7] and evenly_spaced(3, 8) == [0, 1, 2] and evenly_spaced(0, 2) == []


def test_none_fits_nothing_and_a_missing_file_loads_as_none(tmp_path: Path) -> None:
    assert fit_curvature([torch.randn(10, 3)], 3, CurvatureConfig(kind="none")) is None
    assert load_curvature(tmp_path / "absent.safetensors") is None
    with pytest.raises(ConfigError, match="kind must be one of"):
        CurvatureConfig(kind="kfac-someday")
    with pytest.raises(ConfigError, match="damping must be positive"):
        CurvatureConfig(kind="block", damping=0.0)
