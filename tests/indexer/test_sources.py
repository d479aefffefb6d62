"""The data-source registry: each kind of spec resolves to its reader, and readers fill what they declare."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import CorruptShardError, UnknownSourceError
from indexer.hf_stream import HFSource
from indexer.megatron import labels_path, write_dataset, write_row_labels
from indexer.metadata import FROM_METADATA, Column
from indexer.sources import READERS, open_source
from indexer.textfiles import JsonlSource, TxtSource, write_jsonl_zst
from indexer.training_rows import MegatronSource

UNKNOWN = ("cannot tell what {spec!r} is: expected a Megatron prefix (PREFIX.idx), a .parquet file, directory or glob "
           "(Pythia's preshuffled train-N.parquet), a .jsonl/.jsonl.zst or .txt file or glob, or hf:DATASET")
NO_STEPS = "--steps and --rows apply to Megatron and Parquet training data only; {spec!r} is neither"


@pytest.fixture
def data(tmp_path: Path) -> dict[str, str]:
    """One small spec of every kind: 12 Megatron rows (batch 4, labelled), 3 jsonl records, 3 txt lines."""
    write_dataset(tmp_path / "document", np.arange(12 * 5, dtype=np.uint16).reshape(12, 5))
    write_row_labels(tmp_path / "document", {"pile_set_name": [f"set{r % 3}" for r in range(12)]})
    (tmp_path / "layout.json").write_text('{"batch_size": 4}')
    records = [{"text": f"doc {i}", "meta": {"pile_set_name": "ArXiv", "doc_id": f"d{i}"}} for i in range(3)]
    write_jsonl_zst(tmp_path / "00.jsonl.zst", records)
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n")
    return {"megatron": str(tmp_path / "document"), "jsonl": str(tmp_path / "*.jsonl.zst"),
            "txt": str(tmp_path / "a.txt"), "hf": f"hf:{tmp_path / '00.jsonl.zst'}"}


def test_each_kind_of_spec_resolves_to_its_reader(data: dict[str, str]) -> None:
    readers = {"megatron": MegatronSource, "jsonl": JsonlSource, "txt": TxtSource, "hf": HFSource}
    for kind, spec in data.items():
        source = open_source(spec)
        assert type(source) is readers[kind] and source.kind == kind
    for name in ("a.jsonl", "a.json", "a.json.zst", "data/*.jsonl.zst"):
        assert isinstance(open_source(name), JsonlSource)
    assert isinstance(open_source("a.txt.zst"), TxtSource)
    assert [r.kind for r in READERS] == ["hf", "parquet", "megatron", "jsonl", "txt"]


def test_unknown_specs_and_misplaced_steps_are_refused(data: dict[str, str]) -> None:
    for spec in ("corpus.csv", "no/such/prefix"):
        with pytest.raises(UnknownSourceError, match=f"^{re.escape(UNKNOWN.format(spec=spec))}$"):
            open_source(spec)
    for spec in (data["jsonl"], data["txt"], "corpus.csv"):
        with pytest.raises(UnknownSourceError, match=f"^{re.escape(NO_STEPS.format(spec=spec))}$"):
            open_source(spec, steps="0:1")


def test_megatron_source_selects_steps_and_keeps_global_ids(data: dict[str, str]) -> None:
    whole = open_source(data["megatron"], batch_rows=1024)  # layout.json's batch size wins
    assert whole.count == 12 and whole.first_row == 0 and whole.global_ids and whole.batch_rows == 4
    source = open_source(data["megatron"], steps="1:3")
    assert source.count == 8 and source.first_row == 4
    got = list(source.read(2, 6, tokenizer=None))
    assert [e.example_id for e in got] == [6, 7, 8, 9]
    assert [(e.metadata["step"], e.metadata["batch_pos"]) for e in got] == [(1, 2), (1, 3), (2, 0), (2, 1)]
    assert [e.metadata["pile_set_name"] for e in got] == ["set0", "set1", "set2", "set0"]
    assert list(source.read(8, 12, tokenizer=None)) == []


def test_streamed_sources_count_from_zero_and_are_offset_when_appended(data: dict[str, str]) -> None:
    for kind in ("jsonl", "txt", "hf"):
        source = open_source(data[kind])
        assert source.count is None and source.first_row == 0 and not source.global_ids
        assert [e.example_id for e in source.read(1, 5, tokenizer=None)] == [1, 2]


def test_every_reader_declares_schema_columns_and_fills_only_those(data: dict[str, str]) -> None:
    for reader in READERS:
        assert reader.columns and all(isinstance(c, Column) for c in reader.columns), reader
        assert not reader.columns & {Column.ID, Column.TOKEN_COUNT, Column.TEXT}  # filled by the shard writer
    for spec in data.values():
        source = open_source(spec)
        for example in source.read(0, 4, tokenizer=None):
            filled = {c for c in FROM_METADATA if example.metadata.get(c) is not None}
            if set(example.metadata) - set(FROM_METADATA):
                filled.add(Column.EXTRA)
            assert filled <= source.columns, (source.kind, filled - source.columns)


def test_row_labels_sidecar(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d", np.zeros((3, 2), np.uint16))
    with pytest.raises(ValueError, match="2 'pile_set_name' labels for 3 items"):
        write_row_labels(tmp_path / "d", {"pile_set_name": ["a", "b"]})
    assert not labels_path(tmp_path / "d").exists()
    assert [e.metadata["pile_set_name"] for e in open_source(str(tmp_path / "d"), batch_rows=1).read(0, 3, None)] \
        == [None] * 3  # no sidecar: unlabelled, as before
    write_row_labels(tmp_path / "d", {"pile_set_name": ["a", None, "c"], "license": ["x", "y", "z"]})
    assert labels_path(tmp_path / "d") == tmp_path / "d.labels.json"
    got = list(open_source(str(tmp_path / "d"), batch_rows=1).read(0, 3, None))
    assert [(e.metadata["pile_set_name"], e.metadata["license"]) for e in got] == [("a", "x"), (None, "y"),
                                                                                    ("c", "z")]
    labels_path(tmp_path / "d").write_text('{"pile_set_name": ["a"]}')
    with pytest.raises(CorruptShardError, match="one label per item"):
        list(open_source(str(tmp_path / "d"), batch_rows=1).read(0, 3, None))
