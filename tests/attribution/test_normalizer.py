"""The factored Adam normalizer: exact when the second moment is rank one; mismatches refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from attribution.batching import training_batch
from attribution.normalizer import NormalizerMismatchError, adam_scales, factored_scales
from attribution.sketch import SketchConfig, Sketcher
from tests.attribution.conftest import make_tiny_model, random_rows
from tests.attribution.test_sketch import exact_gradients


def test_factored_scales_invert_a_rank_one_moment() -> None:
    a, b = torch.rand(5, dtype=torch.float64) + 0.1, torch.rand(3, dtype=torch.float64) + 0.1
    v = torch.outer(a, b)
    in_scale, out_scale = factored_scales(v)
    torch.testing.assert_close(torch.outer(out_scale, in_scale), 1 / v.sqrt())


def test_normalized_sketch_is_exact_for_rank_one_moments(tmp_path: Path) -> None:
    model = make_tiny_model()
    plain = Sketcher(model, SketchConfig(k=4, seed=2))
    generator = torch.Generator().manual_seed(0)
    moments = {}
    for name, mod in plain.modules.items():
        a = torch.rand(mod.out_features, generator=generator, dtype=torch.float64) + 0.05
        b = torch.rand(mod.in_features, generator=generator, dtype=torch.float64) + 0.05
        moments[f"{name}.weight.exp_avg_sq"] = torch.outer(a, b)
    save_file(moments, str(tmp_path / "adam.safetensors"))
    sketcher = Sketcher(model, SketchConfig(k=4, seed=2), adam_scales(tmp_path / "adam.safetensors", plain.modules))
    batch = training_batch(random_rows([8, 6]))
    got = sketcher.sketch(batch)
    for b, grads in enumerate(exact_gradients(model, plain, batch)):
        parts = []
        for name in plain.module_names:
            p_in, p_out = plain.projections[name]
            v = moments[f"{name}.weight.exp_avg_sq"]
            parts.append((p_out.T @ (grads[name] / v.sqrt()) @ p_in).flatten())
        expected = torch.cat(parts)
        assert float((got[b] - expected).norm() / expected.norm()) < 1e-8


def test_state_from_another_model_is_refused(tmp_path: Path) -> None:
    small, big = make_tiny_model(hidden=16), make_tiny_model(hidden=32)
    modules = Sketcher(big, SketchConfig(k=2)).modules
    small_modules = Sketcher(small, SketchConfig(k=2)).modules
    state = {f"{n}.weight.exp_avg_sq": torch.ones(m.weight.shape) for n, m in small_modules.items()}
    save_file(state, str(tmp_path / "s.safetensors"))
    with pytest.raises(NormalizerMismatchError, match="another model shape"):
        adam_scales(tmp_path / "s.safetensors", modules)
    save_file({"x": torch.ones(2)}, str(tmp_path / "t.safetensors"))
    with pytest.raises(NormalizerMismatchError, match="no second moment for layer"):
        adam_scales(tmp_path / "t.safetensors", modules)
    with pytest.raises(NormalizerMismatchError, match="not found"):
        adam_scales(tmp_path / "missing.safetensors", modules)
