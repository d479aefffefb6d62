"""Index builds: resumable after SIGKILL, equal across ranks, refused on mismatch, verified on disk."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from attribution.filters import Filters, subsets_of
from headwater.cli import app
from indexer import shards as shards_module
from indexer.build import build_index
from indexer.config import IndexConfig, IndexMismatchError
from indexer.errors import CorruptShardError, IndexWriteError
from indexer.manifest import read_manifest, verify_build
from indexer.runner import Rank
from indexer.store import open_index

runner = CliRunner()
FLAGS = ["--k", "4", "--window", "16", "--shard-size", "64", "--batch-size", "16"]


def cli_args(demo: Path, out: Path) -> list[str]:
    return ["index", "build", "--model", str(demo / "model"), "--data", str(demo / "data" / "document"),
            "--out", str(out), *FLAGS]


def config_for(demo: Path, **overrides) -> IndexConfig:
    base = dict(model=str(demo / "model"), data=str(demo / "data" / "document"), k=4, window=16, shard_size=64)
    return IndexConfig.create(**{**base, **overrides})


@pytest.fixture(scope="module")
def reference(tiny_demo: Path, tmp_path_factory) -> Path:
    """An uninterrupted single-process build."""
    out = tmp_path_factory.mktemp("ref-index")
    result = runner.invoke(app, cli_args(tiny_demo, out))
    assert result.exit_code == 0, result.output
    return out


def contents(index: Path) -> dict:
    build = (index / "current").resolve()
    con = duckdb.connect(str(build / "metadata.duckdb"), read_only=True)
    table = con.execute("SELECT id, step, batch_pos, pile_set_name, token_count, text FROM examples ORDER BY id")
    rows = table.fetchall()
    con.close()
    return {"vectors": np.load(build / "vectors.npy"), "rows": rows,
            "shards": {p.name: (p / "sketch-0.npy").read_bytes() for p in sorted((index / "work").glob("shard-*"))}}


def shard_records(index: Path) -> dict[str, str]:
    return {p.name: (p / "done.json").read_text() for p in sorted((index / "work").glob("shard-*"))}


NOT_BYTE_EQUAL = ("metadata.duckdb", "preconditioner-")
"""Build files equal in content but not in bytes (README, "Building an index"): DuckDB's own file layout, and the
curvature's fit time in its safetensors header."""


def assert_same_index(a: Path, b: Path) -> None:
    """What the README promises of a resumed or multi-rank build: every shard file and every build file byte for
    byte, except those of ``NOT_BYTE_EQUAL``, whose contents are equal (same rows; same curvature tensors)."""
    ca, cb = contents(a), contents(b)
    assert ca["shards"] == cb["shards"]  # byte-for-byte raw sketches
    assert shard_records(a) == shard_records(b)  # every shard file's size and sha256
    files_a, files_b = read_manifest(a).files, read_manifest(b).files
    assert files_a.keys() == files_b.keys()
    for name in files_a:
        if not name.startswith(NOT_BYTE_EQUAL):
            assert files_a[name] == files_b[name], name
    np.testing.assert_array_equal(ca["vectors"], cb["vectors"])
    assert ca["rows"] == cb["rows"]
    build_a, build_b = (a / "current").resolve(), (b / "current").resolve()
    for curvature in sorted(build_a.glob("preconditioner-*.safetensors")):
        tensors_a, tensors_b = load_file(curvature), load_file(build_b / curvature.name)
        assert tensors_a.keys() == tensors_b.keys()
        for key in tensors_a:
            torch.testing.assert_close(tensors_a[key], tensors_b[key], rtol=0, atol=0)


def test_reference_build_layout(reference: Path, tiny_demo: Path) -> None:
    manifest = read_manifest(reference)
    assert manifest.counts.examples == 192 and manifest.counts.shards == 3
    assert manifest.projection.k == 4 and manifest.counts.windows == 5
    rows = contents(reference)["rows"]
    assert [r[0] for r in rows] == list(range(192))  # no gaps, no duplicates
    assert {r[3] for r in rows} <= {"Gutenberg (PG-19)", "Bible (KJV)", "Python Docs", "Planted Facts"}
    session = open_index(reference)
    hits = session.attribute("Ilse Varga was born in", " Tarnow", k=5, method="gradient")
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    result = runner.invoke(app, ["index", "verify", str(reference)])
    assert result.exit_code == 0 and "OK" in result.output
    result = runner.invoke(app, ["index", "info", str(reference)])
    assert "192 examples in 3 shards" in result.output


def test_killed_build_resumes_to_the_same_index(reference: Path, tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    cmd = [sys.executable, "-m", "headwater.cli", *cli_args(tiny_demo, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "work" / "shard-00000" / "done.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "work" / "shard-00000").is_dir() and not (out / "current").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "shard-00000: complete, skipped" in done.stderr
    assert_same_index(reference, out)


def test_two_torchrun_ranks_build_the_same_index(reference: Path, tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29517",
           "-m", "headwater.cli", *cli_args(tiny_demo, out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_index(reference, out)


def test_slurm_style_ranks_then_merge(reference: Path, tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    for task in ("1", "0"):
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_COUNT": "2"}
        done = subprocess.run([sys.executable, "-m", "headwater.cli", *cli_args(tiny_demo, out)],
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
    assert not (out / "current").exists()
    result = runner.invoke(app, ["index", "merge", str(out)])
    assert result.exit_code == 0, result.output
    assert_same_index(reference, out)


def test_other_settings_are_refused_unless_overwrite(reference: Path, tiny_demo: Path) -> None:
    with pytest.raises(IndexMismatchError, match=r"k: index has 4, asked for 6.*seed: index has 0, asked for 3"):
        build_index(config_for(tiny_demo, k=6, seed=3), reference, Rank())
    result = runner.invoke(app, [*cli_args(tiny_demo, reference)[:-8], "--k", "6"])
    assert result.exit_code == 2 and "use another --out, or --overwrite" in result.output


def test_search_settings_may_change_on_a_rerun_and_are_recorded(reference: Path, tiny_demo: Path,
                                                                 tmp_path: Path) -> None:
    """nprobe and rerank change no shard: a rerun with other values (e.g. a new default) is no mismatch; it
    merges again and records them, where any other setting is refused."""
    out = tmp_path / "index"
    shutil.copytree(reference, out, symlinks=True)
    build_index(config_for(tiny_demo, rerank=7, nprobe=3), out, Rank())
    assert IndexConfig.load(out / "work" / "config.json").storage.rerank == 7
    assert read_manifest(out).config.storage.nprobe == 3 and read_manifest(out).config.storage.rerank == 7
    with pytest.raises(IndexMismatchError, match="k: index has 4, asked for 6"):
        build_index(config_for(tiny_demo, k=6, rerank=7), out, Rank())


def test_overwrite_rebuilds_and_publishes_atomically(tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    first = build_index(config_for(tiny_demo, window=None), out, Rank())
    old = open_index(out)
    second = build_index(config_for(tiny_demo, window=None, k=3), out, Rank(), overwrite=True)
    assert first != second and (out / "current").resolve() == second
    assert first.is_dir()  # the previous build stays readable for open sessions
    assert len(old.attribute("Ilse Varga was born in", " Tarnow", k=2)) == 2
    assert read_manifest(out).projection.k == 3


def test_failing_writer_is_a_clear_error_and_resumable(tiny_demo: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "index"
    real = shards_module.write_npy
    calls = {"n": 0}

    def flaky(path: Path, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 5:  # inside the second shard
            raise OSError(28, "No space left on device")
        real(path, array)

    monkeypatch.setattr(shards_module, "write_npy", flaky)
    with pytest.raises(IndexWriteError, match="No space left on device.*rerun the same command"):
        build_index(config_for(tiny_demo), out, Rank())
    assert (out / "work" / "shard-00000" / "done.json").is_file() and not (out / "current").exists()
    monkeypatch.setattr(shards_module, "write_npy", real)
    build_index(config_for(tiny_demo), out, Rank())
    assert read_manifest(out).counts.examples == 192


def test_corruption_is_detected(reference: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference, copy, symlinks=True)
    vectors = (copy / "current").resolve() / "vectors.npy"
    blob = bytearray(vectors.read_bytes())
    blob[-1] ^= 0xFF
    vectors.write_bytes(bytes(blob))
    shard = copy / "work" / "shard-00001" / "sketch-0.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    result = runner.invoke(app, ["index", "verify", str(copy)])
    assert result.exit_code == 1
    assert "vectors.npy: checksum mismatch" in result.output and "sketch-0.npy" in result.output
    with pytest.raises(CorruptShardError, match="truncated"):
        shards_module.verify_shard(copy / "work" / "shard-00001")


def test_bad_build_input(tiny_demo: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, [*cli_args(tiny_demo, tmp_path / "a"), "--steps", "40:99"])
    assert result.exit_code == 2 and "outside the data" in result.output
    result = runner.invoke(app, [*cli_args(tiny_demo, tmp_path / "b")[:7], str(tmp_path / "nothing.bin"),
                                 *cli_args(tiny_demo, tmp_path / "b")[7:]])
    assert result.exit_code == 2
    result = runner.invoke(app, [*cli_args(tiny_demo, tmp_path / "c"), "--mode", "sideways"])
    assert result.exit_code == 2 and "sideways" in result.output
    for flags, message in ((["--precondition-sample", "0"], "curvature sample must be positive"),
                           (["--precondition", "kfac-ish"], "kind must be one of"),
                           (["--curvature", "kfac-ish"], "kind must be one of"),
                           (["--damping", "-1"], "damping must be positive"),
                           (["--rows-per-step", "0"], "--rows-per-step must be positive"),
                           (["--rows-per-step", "1024"], "disagrees with the layout.json"),
                           (["--rows", "0:99999"], "outside the data"),
                           (["--rows", "0:8", "--steps", "0:1"], "not both"),
                           (["--faiss-factory", "IVF4,PQ7"], "cannot index"),
                           (["--nprobe", "0"], "nprobe must be positive"),
                           (["--rerank", "0"], "rerank must be positive"),
                           (["--train-sample", "-5"], "train_sample must be positive"),
                           (["--token-batch-size", "0"], "--token-batch-size must be positive"),
                           (["--fisher", "true"], "fisher must be one of"),
                           (["--curvature-rows", "0"], "row sample must be positive"),
                           (["--factor-limit", "0"], "factor limit must be positive"),
                           (["--modules", "blocks,attention"], "groups must be among"),
                           (["--revision-weights", "1,2"], "revision_weights must be 1 positive finite"),
                           (["--revision-weights", "-1"], "revision_weights must be 1 positive finite"),
                           (["--facts", str(tmp_path / "nowhere.jsonl")], "no such file")):
        result = runner.invoke(app, [*cli_args(tiny_demo, tmp_path / "d"), *flags])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "d").exists()  # refused before anything is written
    result = runner.invoke(app, ["index", "merge", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    with pytest.raises(CorruptShardError, match="no published index"):
        open_index(tmp_path / "nothing")


def test_rerun_of_a_finished_build_is_up_to_date(reference: Path, tiny_demo: Path) -> None:
    before = (reference / "current").resolve()
    result = runner.invoke(app, cli_args(tiny_demo, reference))
    assert result.exit_code == 0, result.output
    assert (reference / "current").resolve() == before
    assert len(list((reference / "builds").iterdir())) == 1


def test_append_later_steps_equals_one_build(tiny_demo: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    build_index(config_for(tiny_demo, steps="0:40"), whole, Rank())
    parts = tmp_path / "parts"
    build_index(config_for(tiny_demo, steps="0:24"), parts, Rank())
    build_index(config_for(tiny_demo, steps="24:40"), parts, Rank(), append=True)
    manifest = read_manifest(parts)
    assert manifest.counts.examples == 160 and len(manifest.counts.parts) == 2
    np.testing.assert_array_equal(contents(whole)["rows"], contents(parts)["rows"])
    with pytest.raises(IndexMismatchError, match="append only later steps"):
        build_index(config_for(tiny_demo, steps="10:30"), parts, Rank(), append=True)
    with pytest.raises(IndexMismatchError, match="k: index has 4, asked for 5"):
        build_index(config_for(tiny_demo, steps="40:48", k=5), parts, Rank(), append=True)


def test_out_of_memory_names_the_flag_and_keeps_finished_shards(tiny_demo: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The second shard's pass runs out of memory: a clear error naming --token-batch-size, the first shard kept,
    nothing published; the rerun (with memory) resumes and publishes."""
    from attribution.encoder import GradientEncoder

    real, calls = GradientEncoder.raw_rows, []

    def failing(self, rows, *args, **kwargs):
        calls.append(len(rows))
        if sum(calls) > 64:  # past the first 64-row shard
            raise torch.OutOfMemoryError("CPU: can't allocate memory: you tried to allocate 13193330688 bytes")
        return real(self, rows, *args, **kwargs)

    monkeypatch.setattr(GradientEncoder, "raw_rows", failing)
    out = tmp_path / "index"
    result = runner.invoke(app, [*cli_args(tiny_demo, out), "--token-batch-size", "500"])
    assert result.exit_code == 2 and "--token-batch-size 500" in result.output, result.output
    assert "Traceback" not in result.output and not (out / "current").exists()
    assert (out / "work" / "shard-00000").is_dir() and not (out / "work" / "shard-00001").exists()
    assert max(calls) == 500 // 65  # the budget, not --batch-size 16, bounded every pass: 7 rows of 65 tokens
    monkeypatch.setattr(GradientEncoder, "raw_rows", real)
    result = runner.invoke(app, [*cli_args(tiny_demo, out), "--token-batch-size", "500"])
    assert result.exit_code == 0, result.output
    assert verify_build(out) == []


def test_a_row_range_indexes_exactly_those_rows(tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    result = runner.invoke(app, [*cli_args(tiny_demo, out), "--rows", "3:20"])
    assert result.exit_code == 0, result.output
    session = open_index(out)
    assert session.ids.tolist() == list(range(3, 20))
    assert session.manifest.config.rows == "3:20" and session.manifest.config.steps is None


def test_a_compressed_index_records_its_search_settings_and_filters(tiny_demo: Path, tmp_path: Path) -> None:
    """IVF-PQ candidates re-ranked exactly: nprobe and the re-rank depth recorded and used on reopen; a filtered
    query answers (it once raised 'IndexIVF params have incorrect type')."""
    import faiss

    from attribution.filters import Filters

    out = tmp_path / "index"
    result = runner.invoke(app, [*cli_args(tiny_demo, out), "--faiss-factory", "IVF4,PQ4x4", "--nprobe", "3",
                                 "--rerank", "6"])
    assert result.exit_code == 0, result.output
    session = open_index(out)
    storage = session.manifest.config.storage
    assert (storage.faiss_factory, storage.nprobe, storage.rerank) == ("IVF4,PQ4x4", 3, 6)
    assert faiss.extract_index_ivf(session.gradient.store.index).nprobe == 3
    assert 0 <= read_manifest(out).counts.faiss_recall_at_10 <= 1
    hits = session.attribute("Ilse Varga was born in", " Tarnow", k=4, filters=Filters(step_min=2, step_max=5))
    assert len(hits) == 4 and all(2 <= h.metadata["step"] <= 5 for h in hits)


def test_tantivy_lexical_index_streams_shards_and_answers_like_bm25s(reference: Path, tiny_demo: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "index"
    result = runner.invoke(app, [*cli_args(tiny_demo, out), "--lexical", "tantivy"])
    assert result.exit_code == 0, result.output
    build = (out / "current").resolve()
    assert (build / "bm25" / "engine.json").is_file()
    assert read_manifest(out).config.storage.lexical.value == "tantivy"
    result = runner.invoke(app, ["index", "verify", str(out)])
    assert result.exit_code == 0 and "OK" in result.output
    ours, theirs = open_index(out), open_index(reference)
    for prompt, completion in (("Ilse Varga was born in", " Tarnow"), ("the king", " said")):
        a = ours.attribute(prompt, completion, k=5, method="bm25")
        b = theirs.attribute(prompt, completion, k=5, method="bm25")
        assert a and {h.example_id for h in a} == {h.example_id for h in b}  # ties may order apart
    bible = Filters(pile_set_name="Bible (KJV)")
    filtered = ours.attribute("the king", " said", k=5, method="bm25", filters=bible)
    assert filtered and all("Bible (KJV)" in subsets_of(h.metadata) for h in filtered)
    result = runner.invoke(app, [*cli_args(tiny_demo, tmp_path / "bad"), "--lexical", "lucene"])
    assert result.exit_code != 0 and "lexical must be one of" in result.output
