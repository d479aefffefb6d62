"""Pythia's preshuffled Parquet copy: the same ids and steps as the Megatron copy, only the files a step range needs,
typed errors for bad files, and a build from it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from headwater.cli import app
from indexer.errors import CorruptShardError, DataFormatError, MissingFieldError, StepRangeError
from indexer.hf_stream import HFSource
from indexer.megatron import MegatronDataset, write_dataset
from indexer.parquet import ParquetSource
from indexer.sources import READERS, open_source
from indexer.training_rows import layout_batch_size

B = 4  # rows a step in the small fixtures


def tokens_of(row: int) -> np.ndarray:
    """Row ``row``'s tokens: 3 to 7 of them, all different across rows."""
    return np.arange(row * 10, row * 10 + 3 + row % 5, dtype=np.int64)


def write_parquet(path: Path, first_step: int, stop_step: int, batch_rows: int = B, rows: int | None = None,
                  row_group_size: int = 6, statistics: bool = True, tokens=tokens_of) -> Path:
    """Steps ``[first_step, stop_step)`` as Pythia's Parquet copy writes them (``rows``: fewer, a partial last
    step); ``uid`` is the global row."""
    start = first_step * batch_rows
    ids = range(start, start + (rows if rows is not None else (stop_step - first_step) * batch_rows))
    table = pa.table({"uid": pa.array(ids, pa.int64()), "batch_idx": pa.array([r // batch_rows for r in ids],
                                                                               pa.int64()),
                      "token_ids": pa.array([tokens(r).tolist() for r in ids], pa.list_(pa.int32()))})
    pq.write_table(table, path, row_group_size=row_group_size, write_statistics=statistics)
    return path


@pytest.fixture
def steps12(tmp_path: Path) -> Path:
    """Steps 0:12 at 4 rows a step in three files, train-000004 … train-000012 (48 rows), and the same rows as
    Megatron data at ``tmp_path / "megatron" / "document"``."""
    data = tmp_path / "parquet"
    data.mkdir()
    for stop in (4, 8, 12):
        write_parquet(data / f"train-{stop:06d}.parquet", stop - 4, stop)
    (tmp_path / "megatron").mkdir()
    write_dataset(tmp_path / "megatron" / "document", [tokens_of(r) for r in range(48)], dtype=np.int32)
    return data


def summary(examples) -> list[tuple]:
    return [(e.example_id, e.metadata["row"], e.metadata["step"], e.metadata["batch_pos"], e.token_ids.tolist())
            for e in examples]


def test_ids_steps_and_tokens_match_the_megatron_copy(steps12: Path) -> None:
    megatron = str(steps12.parent / "megatron" / "document")
    for steps in (None, "2:7", "5", "0:12", "9:"):
        got = open_source(str(steps12), steps=steps, batch_rows=B)
        want = open_source(megatron, steps=steps, batch_rows=B)
        assert (got.count, got.first_row, got.global_ids) == (want.count, want.first_row, True), steps
        assert summary(got.read(0, got.count, None)) == summary(want.read(0, want.count, None)), steps
        assert summary(got.read(3, 9, None)) == summary(want.read(3, 9, None)), steps
        assert list(got.read(got.count, got.count + 4, None)) == []
    rows = open_source(str(steps12), rows="6:30", batch_rows=B)
    assert (rows.count, rows.first_row) == (24, 6)
    want = open_source(megatron, rows="6:30", batch_rows=B)
    assert summary(rows.read(0, 24, None)) == summary(want.read(0, 24, None))
    example = next(open_source(str(steps12), steps="3", batch_rows=B).read(1, 2, None))
    assert example.token_ids.dtype == np.int64 and example.text is None
    assert example.metadata == {"source": "train-000004.parquet", "row": 13, "step": 3, "batch_pos": 1}


class Decoder:
    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def test_text_is_decoded_when_a_tokenizer_is_given(steps12: Path) -> None:
    example = next(open_source(str(steps12), steps="1", batch_rows=B).read(0, 1, Decoder()))
    assert example.text == " ".join(map(str, tokens_of(4)))


def test_a_step_range_opens_only_the_files_that_hold_it(steps12: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (steps12 / "train-000012.parquet").write_bytes(b"not parquet")
    source = open_source(str(steps12), steps="0:8", batch_rows=B)  # the corrupt file is never opened
    assert [p.path.name for p in source.parts] == ["train-000004.parquet", "train-000008.parquet"]
    assert [p.path.name for p in open_source(str(steps12), steps="5:6", batch_rows=B).parts] == \
        ["train-000008.parquet"]
    with pytest.raises(CorruptShardError, match="train-000012.parquet: not a readable Parquet file"):
        open_source(str(steps12), steps="7:9", batch_rows=B)
    calls = []
    real = pq.ParquetFile.iter_batches

    def recording(self, *args, **kwargs):
        calls.append((kwargs["row_groups"], tuple(kwargs["columns"])))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    got = list(open_source(str(steps12), steps="4:8", batch_rows=B).read(13, 15, None))  # file rows 13, 14
    assert [e.example_id for e in got] == [29, 30]
    assert calls == [([2], ("batch_idx", "token_ids"))]  # row groups of 6 rows: only the third; never uid


def test_pythia_shaped_rows_have_pythia_ids(tmp_path: Path) -> None:
    def pythia_row(row: int) -> np.ndarray:
        return (np.arange(2049, dtype=np.int64) * 7 + row) % 50_277

    path = write_parquet(tmp_path / "train-143000.parquet", 142_999, 143_000, 1024, rows=5, tokens=pythia_row)
    source = open_source(str(path))  # Pythia's 1,024 rows a step by default; the last step partial
    assert (source.count, source.first_row) == (5, 142_999 * 1024)
    got = list(source.read(0, 5, None))
    assert [(e.example_id, e.metadata["step"], e.metadata["batch_pos"]) for e in got] == \
        [(142_999 * 1024 + i, 142_999, i) for i in range(5)]
    assert all(len(e.token_ids) == 2049 for e in got)
    assert np.array_equal(got[3].token_ids, pythia_row(142_999 * 1024 + 3))
    with pytest.raises(StepRangeError, match=r"steps 0:10 are outside the data .* which holds steps 142999:143000"):
        open_source(str(path), steps="0:10")


def test_spec_forms_resolve_to_the_parquet_source(steps12: Path) -> None:
    for spec in (str(steps12), str(steps12 / "train-000008.parquet"), str(steps12 / "train-*.parquet")):
        source = open_source(spec, batch_rows=B)
        assert type(source) is ParquetSource and source.kind == "parquet", spec
    assert open_source(str(steps12 / "train-000008.parquet"), batch_rows=B).first_row == 16
    assert open_source(str(steps12 / "train-00001*.parquet"), batch_rows=B).count == 16
    assert isinstance(open_source(f"hf:{steps12}"), HFSource)  # hf: specs stay streamed text
    kinds = [r.kind for r in READERS]
    assert kinds.index("parquet") < kinds.index("megatron")


def test_files_with_other_names_take_their_steps_from_batch_idx(tmp_path: Path) -> None:
    write_parquet(tmp_path / "part-a.parquet", 3, 6)
    write_parquet(tmp_path / "part-b.parquet", 6, 8, rows=6, statistics=False)  # read from the column itself
    source = open_source(str(tmp_path), batch_rows=B)
    assert (source.count, source.first_row) == (18, 12)
    assert [e.example_id for e in source.read(10, 18, None)] == list(range(22, 30))
    assert open_source(str(tmp_path), steps="7", batch_rows=B).count == 2  # the partial last step


def test_bad_files_and_ranges_raise_typed_errors(steps12: Path, tmp_path: Path) -> None:
    spec = str(steps12)
    with pytest.raises(StepRangeError, match="steps 10:14 are outside the data .* which holds steps 0:12"):
        open_source(spec, steps="10:14", batch_rows=B)
    with pytest.raises(StepRangeError, match="steps 20:30 are outside .* holds steps 0:12"):
        open_source(spec, steps="20:30", batch_rows=B)
    with pytest.raises(StepRangeError, match="rows 40:60 are outside"):
        open_source(spec, rows="40:60", batch_rows=B)
    with pytest.raises(StepRangeError, match="not both"):
        open_source(spec, steps="0:1", rows="0:4", batch_rows=B)
    (steps12 / "train-000008.parquet").unlink()
    with pytest.raises(StepRangeError, match="steps 4:8 are in no file .* hold steps 0:4, 8:12"):
        open_source(spec, batch_rows=B)
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"uid": [0], "tokens": [[1, 2]]}), bad / "train-000001.parquet")
    with pytest.raises(MissingFieldError, match="no column 'batch_idx' or 'token_ids'"):
        open_source(str(bad / "train-000001.parquet"), batch_rows=1)
    write_parquet(bad / "train-000009.parquet", 0, 4)
    with pytest.raises(DataFormatError, match="its name says it ends at step 8, but its batch_idx runs 0:4"):
        open_source(str(bad / "train-000009.parquet"), batch_rows=B)
    with pytest.raises(DataFormatError, match="16 rows for steps 0:4, which is not 2 rows a step"):
        open_source(str(steps12 / "train-000004.parquet"), batch_rows=2)
    shuffled = pa.table({"batch_idx": [1, 0, 0, 1], "token_ids": [[1], [2], [3], [4]]})
    pq.write_table(shuffled, bad / "train-000002.parquet")
    with pytest.raises(DataFormatError, match="row 0 has batch_idx 1, .* must be in batch_idx order"):
        list(open_source(str(bad / "train-000002.parquet"), batch_rows=2).read(0, 4, None))
    good = write_parquet(tmp_path / "train-000004.parquet", 0, 4, row_group_size=16)
    blob = bytearray(good.read_bytes())
    blob[200:600] = bytes(400)  # the page data, not the footer
    good.write_bytes(bytes(blob))
    source = open_source(str(good), batch_rows=B)
    with pytest.raises(CorruptShardError, match="train-000004.parquet: corrupt Parquet data"):
        list(source.read(0, 16, None))


def test_build_from_a_parquet_directory(tiny_demo: Path, tmp_path: Path) -> None:
    prefix = tiny_demo / "data" / "document"
    rows_per_step = layout_batch_size(prefix)
    megatron = MegatronDataset(prefix)
    data = tmp_path / "data"
    data.mkdir()
    for stop in (4, 8):
        write_parquet(data / f"train-{stop:06d}.parquet", stop - 4, stop, rows_per_step,
                      tokens=lambda r: megatron[r].astype(np.int64))
    out = tmp_path / "index"
    result = CliRunner().invoke(app, ["index", "build", "--model", str(tiny_demo / "model"), "--data", str(data),
                                      "--out", str(out), "--steps", "3:6", "--rows-per-step", str(rows_per_step),
                                      "--k", "4", "--window", "16", "--shard-size", "8", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str((out / "current").resolve() / "metadata.duckdb"), read_only=True)
    got = con.execute("SELECT id, step, batch_pos, source, token_count FROM examples ORDER BY id").fetchall()
    con.close()
    rows = range(3 * rows_per_step, 6 * rows_per_step)
    assert [g[:3] for g in got] == [(r, r // rows_per_step, r % rows_per_step) for r in rows]
    assert {g[3] for g in got} == {"train-000004.parquet", "train-000008.parquet"}
    assert [g[4] for g in got] == [len(megatron[r]) for r in rows]
