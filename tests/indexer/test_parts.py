"""Appended parts: a failed append blocks nothing, an unfinished one is resumed or discarded, steps are reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attribution.errors import DataFormatError
from headwater.cli import app
from indexer.build import build_index
from indexer.config import IndexConfig, IndexMismatchError
from indexer.manifest import indexed_data, joined_steps, read_manifest, verify_build
from indexer.runner import Rank

runner = CliRunner()


def config_for(demo: Path, **overrides) -> IndexConfig:
    base = dict(model=str(demo / "model"), data=str(demo / "data" / "document"), k=4, window=16, shard_size=64)
    return IndexConfig.create(**{**base, **overrides})


def write_jsonl(path: Path, lines: int, broken_at: int | None = None) -> Path:
    with path.open("w") as out:
        for i in range(lines):
            out.write("{not json\n" if i == broken_at else json.dumps({"text": f"Appended document {i} about rivers."})
                      + "\n")
    return path


@pytest.fixture
def index_0_24(tiny_demo: Path, tmp_path: Path) -> Path:
    out = tmp_path / "index"
    build_index(config_for(tiny_demo, steps="0:24"), out, Rank())
    return out


def test_a_failed_append_leaves_nothing_that_blocks_the_next(tiny_demo: Path, index_0_24: Path,
                                                             tmp_path: Path) -> None:
    out, published = index_0_24, (index_0_24 / "current").resolve()
    broken = write_jsonl(tmp_path / "broken.jsonl", 10, broken_at=3)
    with pytest.raises(DataFormatError, match="broken.jsonl:4: not valid JSON"):
        build_index(config_for(tiny_demo, data=str(broken), steps=None), out, Rank(), append=True)
    assert not (out / "work" / "parts").exists() or not list((out / "work" / "parts").iterdir())
    assert (out / "current").resolve() == published  # the served index is untouched
    good = write_jsonl(tmp_path / "good.jsonl", 10)
    build_index(config_for(tiny_demo, data=str(good), steps=None), out, Rank(), append=True)
    assert read_manifest(out).counts.examples == 96 + 10
    fixed = write_jsonl(tmp_path / "broken.jsonl", 10)  # the first data, mended, appends after it
    build_index(config_for(tiny_demo, data=str(fixed), steps=None), out, Rank(), append=True)
    manifest = read_manifest(out)
    assert manifest.counts.examples == 116 and manifest.counts.last_id == 115
    assert verify_build(out) == []


def test_an_unfinished_append_is_resumed_or_discarded(tiny_demo: Path, index_0_24: Path, tmp_path: Path) -> None:
    out, published = index_0_24, (index_0_24 / "current").resolve()
    late = write_jsonl(tmp_path / "late.jsonl", 80, broken_at=70)  # shard 0 (rows 0-63) finishes, shard 1 fails
    with pytest.raises(DataFormatError):
        build_index(config_for(tiny_demo, data=str(late), steps=None), out, Rank(), append=True)
    part = out / "work" / "parts" / "01"
    assert (part / "shard-00000" / "done.json").is_file()  # kept for a rerun
    other = write_jsonl(tmp_path / "other.jsonl", 5)
    with pytest.raises(IndexMismatchError, match=r"late.jsonl\) did not finish; rerun it .*index discard .* --part 01"):
        build_index(config_for(tiny_demo, data=str(other), steps=None), out, Rank(), append=True)
    result = runner.invoke(app, ["index", "merge", str(out)])  # the stream's finished shard alone is not merged
    assert result.exit_code == 2 and "did not finish" in result.output and "nothing was merged" in result.output
    assert (out / "current").resolve() == published
    result = runner.invoke(app, ["index", "discard", str(out), "--part", "07"])
    assert result.exit_code == 2 and "no such appended part" in result.output
    result = runner.invoke(app, ["index", "discard", str(out), "--part", "01"])
    assert result.exit_code == 0, result.output
    assert not part.exists()
    build_index(config_for(tiny_demo, data=str(other), steps=None), out, Rank(), append=True)
    manifest = read_manifest(out)
    assert manifest.counts.examples == 96 + 5 and [p["data"] for p in manifest.counts.parts][1] == str(other)
    result = runner.invoke(app, ["index", "discard", str(out), "--part", "01"])
    assert result.exit_code == 2 and "only an unfinished append can be discarded" in result.output


def test_appended_steps_are_reported_whole(tiny_demo: Path, index_0_24: Path) -> None:
    build_index(config_for(tiny_demo, steps="24:40"), index_0_24, Rank(), append=True)
    data = indexed_data(read_manifest(index_0_24))
    assert data["steps"] == "0:40" and [p["steps"] for p in data["parts"]] == ["0:24", "24:40"]
    result = runner.invoke(app, ["index", "info", str(index_0_24)])
    assert "'steps': '0:40'" in result.output and "steps 24:40" in result.output


def test_joined_steps() -> None:
    assert joined_steps(["0:24"]) == "0:24" and joined_steps([None]) is None
    assert joined_steps(["0:24", "24:48", "48:50"]) == "0:50"
    assert joined_steps(["0:24", "30:48"]) == "0:24, 30:48"
    assert joined_steps(["0:24", None]) == "0:24, all"


def test_a_slurm_rank_that_failed_then_succeeded_leaves_the_part_mergeable(tiny_demo: Path, index_0_24: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from indexer import runner as runner_module
    from indexer.build import merge_index

    real = runner_module.ShardRunner.compute

    def broken(self, index: int) -> bool:
        raise DataFormatError("a bad record")

    monkeypatch.setattr(runner_module.ShardRunner, "compute", broken)
    with pytest.raises(DataFormatError):  # rank 0 of 2 (a Slurm array: ranks cannot meet) fails
        build_index(config_for(tiny_demo, steps="24:40"), index_0_24, Rank(0, 2), append=True)
    part = index_0_24 / "work" / "parts" / "01"
    assert json.loads((part / "part.json").read_text())["failed"]
    monkeypatch.setattr(runner_module.ShardRunner, "compute", real)
    for rank in (Rank(0, 2), Rank(1, 2)):  # the rerun of rank 0 succeeds; rank 1 runs
        assert build_index(config_for(tiny_demo, steps="24:40"), index_0_24, rank, append=True) is None
    assert not json.loads((part / "part.json").read_text())["failed"]
    merge_index(index_0_24)  # was refused: the failed flag was never cleared
    assert read_manifest(index_0_24).counts.examples == 160
    assert json.loads((part / "part.json").read_text())["finished"]
