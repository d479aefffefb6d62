"""The metadata schema: shards → DuckDB keeps every column and the readers' extra ``meta`` keys."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

from attribution.records import Example
from indexer.merge import build_duckdb
from indexer.metadata import SCHEMA, Column, DuckTexts, load_metadata, metadata_table
from indexer.shards import ShardContents, verify_shard, write_shard
from indexer.textfiles import read_jsonl, write_jsonl_zst


def write_meta_shard(work: Path, index: int, examples: list[Example]) -> Path:
    texts = [e.text for e in examples]
    contents = ShardContents(ids=np.asarray([e.example_id for e in examples], np.int64),
                             sketches=[np.zeros((len(examples), 2), np.float32)],
                             embeddings=np.zeros((len(examples), 2), np.float16),
                             meta=metadata_table(examples, texts))
    return write_shard(work, index, contents)


def test_extra_meta_keys_of_jsonl_survive_into_the_duckdb(tmp_path: Path) -> None:
    records = [{"text": "first", "meta": {"pile_set_name": "ArXiv", "doc_id": "a1", "span": [3, 9]}},
               {"text": "second", "meta": {"pile_set_name": "Github"}},
               {"text": "third", "meta": {"pile_set_name": "FreeLaw", "doc_id": "f7", "id": 1234}}]
    write_jsonl_zst(tmp_path / "00.jsonl.zst", records)
    examples = list(read_jsonl(tmp_path / "00.jsonl.zst", tokenizer=None))
    for e in examples:
        e.token_ids = np.arange(len(e.text))
    shards = [write_meta_shard(tmp_path / "work", 0, examples[:2]), write_meta_shard(tmp_path / "work", 1,
                                                                                      examples[2:])]
    for shard in shards:
        verify_shard(shard)
        assert pq.read_schema(shard / "meta.parquet").equals(SCHEMA)
    build_duckdb(shards, tmp_path / "metadata.duckdb")
    texts = DuckTexts(tmp_path / "metadata.duckdb")
    ids, metadata = load_metadata(texts.cursor())
    assert ids.tolist() == [0, 1, 2]
    assert metadata[0] == {"source": "00.jsonl.zst", "row": 0, "step": None, "batch_pos": None,
                           "pile_set_name": "ArXiv", "token_count": 5, "doc_id": "a1", "span": [3, 9]}
    assert "doc_id" not in metadata[1] and metadata[1]["pile_set_name"] == "Github"
    assert metadata[2]["doc_id"] == "f7" and "id" not in metadata[2]  # the column wins over a meta "id"
    row = texts.by_ids([2])[0]
    assert row["id"] == 2 and row["text"] == "third" and row["doc_id"] == "f7" and "extra" not in row
    stored = duckdb.connect(str(tmp_path / "metadata.duckdb"), read_only=True)
    extra = stored.execute("SELECT extra FROM examples ORDER BY id").fetchall()
    assert [r[0] for r in extra] == ['{"doc_id": "a1", "span": [3, 9]}', None, '{"doc_id": "f7", "id": 1234}']


def test_by_step_returns_one_step_in_batch_order(tmp_path: Path) -> None:
    def row(i: int, step: int, pos: int) -> Example:
        return Example(i, np.zeros(i + 1, np.int64), f"t{i}", {"source": "d", "row": i, "step": step,
                                                                 "batch_pos": pos, "pile_set_name": "S"})
    shard = write_meta_shard(tmp_path / "work", 0, [row(0, 0, 0), row(1, 1, 1), row(2, 1, 0), row(3, 2, 0)])
    build_duckdb([shard], tmp_path / "metadata.duckdb")
    texts = DuckTexts(tmp_path / "metadata.duckdb")
    assert texts.by_step(1) == [{"id": 2, "batch_pos": 0, "pile_set_name": "S", "token_count": 3},
                                {"id": 1, "batch_pos": 1, "pile_set_name": "S", "token_count": 2}]
    assert texts.by_step(7) == []
    assert texts[1] == "t1"


def test_schema_lists_every_column_once() -> None:
    assert SCHEMA.names == [c.value for c in Column]
    assert SCHEMA.names[:8] == ["id", "source", "row", "step", "batch_pos", "pile_set_name", "token_count", "text"]


def test_many_texts_in_one_query_keep_the_order_given(tiny_index: Path) -> None:
    from indexer.manifest import resolve_build

    texts = DuckTexts(resolve_build(tiny_index) / "metadata.duckdb")
    assert texts.many([5, 1, 5]) == [texts[5], texts[1], texts[5]] and texts.many([]) == []
