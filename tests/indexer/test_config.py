"""Index configs: local paths are stored absolute (the index opens from any directory); hub ids are kept."""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from attribution.config import AttributionConfig, CurvatureConfig, ScoringConfig, field_docs
from attribution.errors import ConfigError
from attribution.sketch import SketchConfig
from indexer.config import IndexConfig, IndexMismatchError, StorageConfig, check_same


def test_local_paths_become_absolute_and_hub_ids_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    local = IndexConfig.create("model", "data/document", normalizer=None).with_absolute_paths()
    assert local.model == str(tmp_path / "model") and local.data == str(tmp_path / "data" / "document")
    hub = IndexConfig(model="EleutherAI/pythia-70m-deduped", data="hf:monology/pile-uncopyrighted")
    assert hub.with_absolute_paths() == hub
    # an index saved with relative paths (older builds) still matches the same request made absolute
    check_same(IndexConfig(model="model", data="data/document"), local, tmp_path)
    with pytest.raises(IndexMismatchError, match="model"):
        check_same(IndexConfig(model="other", data="data/document"), local, tmp_path)


def test_nested_record_round_trips_and_old_flat_configs_still_load() -> None:
    config = IndexConfig.create("m", "d", k=8, window=16, precondition="none", precondition_sample=64,
                                faiss_factory="IVF4,Flat", revisions=("step8", None))
    assert config.attribution.sketch.k == 8 and config.attribution.window == 16
    assert config.attribution.curvature.kind == "none" and config.attribution.curvature.sample == 64
    assert config.storage.faiss_factory == "IVF4,Flat" and config.attribution.revisions == ("step8", None)
    assert IndexConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    flat = {"model": "m", "data": "d", "revisions": ["step8", None], "k": 8, "seed": 0, "include_head": False,
            "window": 16, "mode": "cosine", "precondition": "none", "damping": 0.1, "normalizer": None,
            "faiss_factory": "IVF4,Flat", "shard_size": 1024, "precondition_sample": 64}
    assert IndexConfig.from_json(flat) == config  # config.json of an index built before the nested record


def test_parameter_groups_and_the_old_include_head() -> None:
    assert IndexConfig.create("m", "d").attribution.sketch.groups == ("blocks",)
    assert IndexConfig.create("m", "d", include_head=True).attribution.sketch.groups == ("blocks", "head")
    assert IndexConfig.from_json({"model": "m", "data": "d", "include_head": True}).attribution.sketch.groups == (
        "blocks", "head")
    assert IndexConfig.create("m", "d", groups=("embed", "head"), include_head=True).attribution.sketch.groups == (
        "embed", "head")
    with pytest.raises(ConfigError, match="groups must be among"):
        IndexConfig.create("m", "d", groups=("blocks", "attention"))
    with pytest.raises(ConfigError, match="at least one parameter group"):
        IndexConfig.create("m", "d", groups=())


def test_curvature_is_the_name_and_precondition_its_old_alias() -> None:
    new = IndexConfig.create("m", "d", curvature="kfac", curvature_sample=64)
    assert new == IndexConfig.create("m", "d", precondition="kfac", precondition_sample=64)
    assert new.attribution.curvature.kind.value == "kfac" and new.attribution.curvature.sample == 64


def test_unknown_or_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="unknown settings"):
        IndexConfig.from_json({"model": "m", "data": "d", "attribution": {"sketch": {"kk": 3}}})
    with pytest.raises(ConfigError, match="kind must be one of"):
        IndexConfig.create("m", "d", precondition="kfac-ish")
    with pytest.raises(ConfigError, match="shard_size must be positive"):
        IndexConfig.create("m", "d", shard_size=0)


def test_every_cli_setting_has_help_from_its_record() -> None:
    for record in (IndexConfig, StorageConfig, AttributionConfig, CurvatureConfig, ScoringConfig, SketchConfig):
        documented = set(field_docs(record))
        nested = {f.name for f in fields(record) if is_dataclass(f.default_factory)} | {"extra"}  # records
        settings = {f.name for f in fields(record)} - nested
        assert settings <= documented, f"{record.__name__}: fields without a docstring: {settings - documented}"
