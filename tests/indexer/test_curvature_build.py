"""Index builds with each per-module curvature kind: statistics per shard, summed at merge, the same whatever the
ranks, shards or appended parts; the built index opens and answers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from attribution.curvature import KINDS
from attribution.session import AttributionSession
from headwater.cli import app
from indexer.build import build_index, merge_index
from indexer.config import IndexConfig
from indexer.errors import CorruptShardError
from indexer.manifest import curvature_file, prefit_file, read_manifest, statistics_file, verify_build
from indexer.runner import Rank
from indexer.store import open_index
from indexer.training_rows import RowRange, read_training_rows

runner = CliRunner()


def config_for(demo: Path, **overrides) -> IndexConfig:
    base = dict(model=str(demo / "model"), data=str(demo / "data" / "document"), k=4, window=16, shard_size=64)
    config = IndexConfig.create(**{**base, **overrides})
    curvature = replace(config.attribution.curvature, sample_rows=40)
    return replace(config, attribution=replace(config.attribution, curvature=curvature))


def factors(index: Path) -> dict[str, torch.Tensor]:
    return load_file(str((index / "current").resolve() / curvature_file(0)))


@pytest.mark.parametrize("kind", [kind.value for kind in KINDS])  # every registered kind, from the CLI
def test_a_build_with_each_kind_opens_and_answers(kind: str, tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    result = runner.invoke(app, ["index", "build", "--model", str(tiny_demo / "model"), "--data",
                                 str(tiny_demo / "data" / "document"), "--out", str(out), "--k", "4", "--window",
                                 "16", "--shard-size", "64", "--curvature", kind])
    assert result.exit_code == 0, result.output
    described = read_manifest(out).preconditioner[0]
    assert described["kind"] == kind and described["damping"] == (0.01 if kind == "ekfac_basis" else 0.1)
    assert described["bytes"] > 0 and described["fit_seconds"] >= 0
    assert (out / "work" / statistics_file(2, 0)).is_file() == (kind in ("kfac", "ekfac"))
    assert (out / "work" / prefit_file(0)).is_file() == (kind in ("kfac_whitened", "ekfac_basis"))
    assert verify_build(out) == []
    session = open_index(out)
    assert session.encoder.checkpoints[0].preconditioner.describe() == described
    hits = session.attribute("Ilse Varga was born in", " Tarnow", k=5, method="gradient")
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    assert sum(hits[0].token_contributions) == pytest.approx(hits[0].score, rel=1e-3, abs=1e-4)


def test_ekfac_is_the_same_across_ranks_shards_and_parts(tiny_demo: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    build_index(config_for(tiny_demo, precondition="ekfac", steps="0:40"), single, Rank())
    ranks = tmp_path / "ranks"
    for rank in (1, 0):  # Slurm-style: no process group, then one merge
        build_index(config_for(tiny_demo, precondition="ekfac", steps="0:40"), ranks, Rank(rank, 2))
    merge_index(ranks)
    reference = factors(single)
    assert {name: t.shape for name, t in factors(ranks).items()} == {n: t.shape for n, t in reference.items()}
    assert all(torch.equal(factors(ranks)[name], t) for name, t in reference.items())  # bit for bit
    parts = tmp_path / "parts"
    build_index(config_for(tiny_demo, precondition="ekfac", steps="0:24"), parts, Rank())
    build_index(config_for(tiny_demo, precondition="ekfac", steps="24:40"), parts, Rank(), append=True)
    one_shard = tmp_path / "one-shard"
    build_index(config_for(tiny_demo, precondition="ekfac", steps="0:40", shard_size=512), one_shard, Rank())
    for other in (parts, one_shard):  # other sums of the same tokens, and the same sampled rows
        for name, t in reference.items():
            if name.startswith("lambda."):
                torch.testing.assert_close(factors(other)[name], t, rtol=1e-3, atol=1e-6 * float(t.max()))
    assert read_manifest(parts).preconditioner[0]["examples"] == 40


def test_missing_shard_statistics_are_a_clear_error(tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    build_index(config_for(tiny_demo, precondition="kfac", steps="0:32"), out, Rank())
    (out / "work" / statistics_file(1, 0)).unlink()
    with pytest.raises(CorruptShardError, match="kfac statistics"):
        merge_index(out)


@pytest.mark.parametrize("kind", ["kfac_whitened", "ekfac_basis"])
def test_prefit_sketches_are_the_same_across_ranks_and_in_memory(kind: str, tiny_demo: Path, tmp_path: Path) -> None:
    config = config_for(tiny_demo, precondition=kind, steps="0:32")
    single, ranks = tmp_path / "single", tmp_path / "ranks"
    build_index(config, single, Rank())
    for rank in (1, 0):  # each rank fits the factors itself, from the same rows
        build_index(config, ranks, Rank(rank, 2))
    merge_index(ranks)
    for shard in sorted((single / "work").glob("shard-*")):
        assert (shard / "sketch-0.npy").read_bytes() == (ranks / "work" / shard.name / "sketch-0.npy").read_bytes()
    assert all(torch.equal(factors(ranks)[name], t) for name, t in factors(single).items())
    examples = list(read_training_rows(tiny_demo / "data" / "document", RowRange(0, 128), 4))
    session = AttributionSession.from_examples(tiny_demo / "model", examples, config.attribution)
    stored = np.load((single / "current").resolve() / "vectors.npy").astype(np.float32)
    in_memory = session.gradient.store.vectors(np.arange(128))
    np.testing.assert_allclose(in_memory, stored, atol=2e-3)


def test_curvature_flags_reach_the_saved_config(tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    result = runner.invoke(app, ["index", "build", "--model", str(tiny_demo / "model"), "--data",
                                 str(tiny_demo / "data" / "document"), "--out", str(out), "--k", "4", "--steps",
                                 "0:8", "--shard-size", "64", "--precondition", "ekfac", "--fisher", "sampled",
                                 "--curvature-rows", "24", "--factor-limit", "300"])
    assert result.exit_code == 0, result.output
    curvature = open_index(out).manifest.config.attribution.curvature
    assert (curvature.fisher.value, curvature.sample_rows, curvature.factor_limit) == ("sampled", 24, 300)
