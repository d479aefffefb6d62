"""Hugging Face streaming: the hub code path, exercised on local Pile-format files."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.errors import MissingFieldError, UnknownSourceError
from indexer.hf_stream import read_hf
from indexer.textfiles import read_jsonl, write_jsonl_zst


def test_local_pile_shards_stream_like_the_native_reader(tmp_path: Path) -> None:
    records = [{"text": f"text {i}", "meta": {"pile_set_name": "FreeLaw"}} for i in range(7)]
    write_jsonl_zst(tmp_path / "00.jsonl.zst", records[:4])
    write_jsonl_zst(tmp_path / "01.jsonl.zst", records[4:])
    streamed = list(read_hf(str(tmp_path / "*.jsonl.zst")))
    native = list(read_jsonl(tmp_path / "*.jsonl.zst"))
    assert [e.text for e in streamed] == [e.text for e in native]
    assert {e.metadata["pile_set_name"] for e in streamed} == {"FreeLaw"}
    assert [e.example_id for e in read_hf(str(tmp_path / "*.jsonl.zst"), limit=3)] == [0, 1, 2]


def test_missing_text_field(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(MissingFieldError, match="no string field 'text'"):
        list(read_hf(str(tmp_path / "a.jsonl")))


def test_unreachable_hub_dataset_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownSourceError, match="cannot stream Hugging Face dataset 'monology/pile-uncopyrighted'"):
        next(read_hf("monology/pile-uncopyrighted"))


def test_local_parquet_under_hf_is_a_clear_error(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"batch_idx": [0], "token_ids": [[1, 2, 3]]}), tmp_path / "train-1000.parquet")
    with pytest.raises(UnknownSourceError, match="read without 'hf:'"):
        next(read_hf(str(tmp_path / "train-1000.parquet")))
