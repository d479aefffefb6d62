"""The merge under faults: a factory FAISS cannot train, a killed merge's temporaries, a full disk."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from attribution.errors import ConfigError
from attribution.vectors import min_training_vectors, new_faiss_index
from headwater.cli import app
from indexer.build import build_index, merge_index
from indexer.config import IndexConfig
from indexer.errors import IndexWriteError
from indexer.manifest import read_manifest, verify_build
from indexer.runner import Rank

runner = CliRunner()


def config_for(demo: Path, **overrides) -> IndexConfig:
    base = dict(model=str(demo / "model"), data=str(demo / "data" / "document"), k=4, window=16, shard_size=64)
    return IndexConfig.create(**{**base, **overrides})


@pytest.fixture(scope="module")
def shards_only(tiny_demo: Path, tmp_path_factory) -> Path:
    """Every shard of the tiny demo written, nothing merged (a finished Slurm array)."""
    out = tmp_path_factory.mktemp("shards") / "index"
    build_index(config_for(tiny_demo), out, Rank(), merge_after=False)
    assert not (out / "current").exists()
    return out


@pytest.mark.parametrize("factory", ["IVF16,PQ8", "PQ16x4fs", "IVF300,Flat", "OPQ8,IVF4,PQ8x4", "HNSW16",
                                     "HNSW16,PQ8", "IVF8,PQ8,Refine(Flat)"])
def test_min_training_vectors_is_what_faiss_needs(factory: str) -> None:
    need = min_training_vectors(new_faiss_index(factory, 32))
    vectors = np.random.default_rng(0).standard_normal((need, 32)).astype(np.float32)
    new_faiss_index(factory, 32).train(vectors)  # enough
    if need > 1:
        with pytest.raises(RuntimeError, match="training points"):
            new_faiss_index(factory, 32).train(vectors[:-1])


def test_a_factory_that_cannot_train_on_these_rows_is_refused_before_the_pass(tiny_demo: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "index"
    args = ["index", "build", "--model", str(tiny_demo / "model"), "--data", str(tiny_demo / "data" / "document"),
            "--out", str(out), "--k", "4", "--shard-size", "64", "--faiss-factory", "IVF16,PQ8"]
    result = runner.invoke(app, args)  # 192 whole rows: PQ8's 256 centroids cannot be trained
    assert result.exit_code == 2, result.output
    assert "needs at least 256 training vectors" in result.output and "the index gives 192" in result.output
    assert "Traceback" not in result.output
    assert not list(out.glob("work/shard-*"))  # refused before the sketch pass
    with pytest.raises(ConfigError, match="needs at least 1,024 training vectors"):  # 192 rows × 5 windows
        build_index(config_for(tiny_demo, faiss_factory="IVF1024,Flat"), tmp_path / "windows", Rank())


def test_a_killed_merge_leaves_no_temporary_behind(shards_only: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    shutil.copytree(shards_only, out)
    stale = out / "builds" / ".tmp-20260101T000000-deadbeef"
    stale.mkdir(parents=True)
    (stale / "vectors.npy").write_bytes(b"\0" * 4096)  # what a SIGKILL mid-merge leaves
    build = merge_index(out)
    assert not stale.exists() and not list((out / "builds").glob(".tmp-*"))
    assert verify_build(build) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A 4 MiB tmpfs; its path and free bytes."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot mount a tmpfs here ({err}): needs root and CAP_SYS_ADMIN")
    try:
        yield mount, shutil.disk_usage(mount).free
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def fill_to(mount: Path, spare: int) -> None:
    """Leave ``spare`` bytes free on ``mount``."""
    filler = mount / "filler"
    filler.write_bytes(b"\0" * max(0, shutil.disk_usage(mount).free - spare))


def test_a_merge_without_room_is_refused_before_it_writes(shards_only: Path, small_disk) -> None:
    mount, _ = small_disk
    out = mount / "index"
    shutil.copytree(shards_only, out)
    fill_to(mount, 100_000)
    result = runner.invoke(app, ["index", "merge", str(out)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "merging needs about" in result.output and "MiB are free" in result.output
    assert str(out / "builds") in result.output
    assert not (out / "current").exists() and not list((out / "builds").glob(".tmp-*"))
    (mount / "filler").unlink()  # room again: the same command publishes, from the kept shards
    result = runner.invoke(app, ["index", "merge", str(out)])
    assert result.exit_code == 0, result.output
    assert read_manifest(out).counts.examples == 192


def test_a_disk_that_fills_during_the_merge_is_a_clear_error(shards_only: Path, small_disk) -> None:
    """Past the estimate (another writer filled the disk), writing the memory-mapped vectors must fail as an error,
    not kill the process with SIGBUS; in a child process so that a SIGBUS cannot take the test run with it."""
    mount, _ = small_disk
    out = mount / "index"
    shutil.copytree(shards_only, out)
    fill_to(mount, 60_000)  # less than the 240 KB of float16 vectors
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import indexer.merge as merge
        from indexer.build import merge_index
        from indexer.errors import IndexWriteError
        merge.check_free_space = lambda directory, needed: None  # the estimate passed; the disk fills anyway
        try:
            merge_index(Path({str(out)!r}))
        except IndexWriteError as err:
            print("IndexWriteError:", err)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])  # -7 would be SIGBUS
    assert "the disk filled up while merging" in done.stdout and str(out / "builds") in done.stdout
    assert not (out / "current").exists() and not list((out / "builds").glob(".tmp-*"))


def test_one_merge_at_a_time(shards_only: Path, tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "index"
    shutil.copytree(shards_only, out)
    with (out / "work" / ".merge.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(IndexWriteError, match="another merge of this index is running"):
            merge_index(out)
    assert merge_index(out).is_dir()


def test_faiss_training_failure_names_the_factory() -> None:
    vectors = np.zeros((100, 16), np.float16)
    from attribution.vectors import build_faiss_index

    with pytest.raises(ConfigError, match="IVF8,PQ8 needs at least 256"):
        build_faiss_index(vectors, "IVF8,PQ8")
    assert faiss.IndexFlatIP(16).is_trained  # flat needs no training


def test_a_filesystem_without_locks_merges_and_leaves_temporaries(shards_only: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import fcntl

    def no_locks(*args) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    out = tmp_path / "index"
    shutil.copytree(shards_only, out)
    other = out / "builds" / ".tmp-20260101T000000-0therrun"  # perhaps another node's merge, running
    other.mkdir(parents=True)
    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert verify_build(merge_index(out)) == []
    assert other.is_dir()
