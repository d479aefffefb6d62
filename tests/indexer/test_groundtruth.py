"""An index records the ground truth it answers for; facts read back with their gold rows."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

from indexer.groundtruth import facts_file, gold_rows, index_facts, load_facts
from indexer.manifest import read_manifest, resolve_build


def test_a_build_of_the_demo_records_its_facts_file(tiny_index: Path, tiny_demo: Path) -> None:
    manifest = read_manifest(resolve_build(tiny_index))
    assert manifest.config.facts == str((tiny_demo / "facts.jsonl").absolute())
    facts = index_facts(manifest)
    assert facts and facts == load_facts(tiny_demo)
    assert any(f.gold_rows for f in facts)
    assert index_facts(None) == []


def test_an_index_without_the_record_finds_the_demo_by_its_layout(tiny_index: Path, tiny_demo: Path,
                                                                   tmp_path: Path) -> None:
    manifest = read_manifest(resolve_build(tiny_index))
    older = replace(manifest, config=replace(manifest.config, facts=None))  # built before the field
    assert facts_file(older) == (tiny_demo / "facts.jsonl").absolute()
    other = str(tmp_path / "other" / "document")
    foreign = replace(older, config=replace(older.config, data=other),
                      counts=replace(older.counts, parts=[{"data": other, "steps": None}]))
    assert facts_file(foreign) is None  # the demo's model over other data: its rows state no facts


def test_a_recorded_file_elsewhere_is_used_and_a_missing_one_is_none(tiny_index: Path, tiny_demo: Path,
                                                                     tmp_path: Path, caplog) -> None:
    manifest = read_manifest(resolve_build(tiny_index))
    copy = tmp_path / "mine.jsonl"
    shutil.copy(tiny_demo / "facts.jsonl", copy)
    elsewhere = replace(manifest, config=replace(manifest.config, facts=str(copy)))
    facts = index_facts(elsewhere)
    assert [f.fact_id for f in facts] == [f.fact_id for f in load_facts(tiny_demo)]
    assert not any(f.gold_rows for f in facts)  # no data/row_docs.json beside it: no gold rows
    gone = replace(manifest, config=replace(manifest.config, facts=str(tmp_path / "gone.jsonl")))
    with caplog.at_level(logging.WARNING):
        assert facts_file(gone) is None and index_facts(gone) == []
    assert "is gone" in caplog.text


def test_gold_rows_are_the_rows_stating_a_document_whole() -> None:
    row_docs = [{"docs": ["a", "b"], "stated": ["a"]}, {"docs": ["b"], "stated": []}, {"docs": ["c"], "stated": ["c"]}]
    assert gold_rows(["a"], row_docs) == [0]
    assert gold_rows(["b"], row_docs) == []  # touched but never whole
    assert gold_rows(["a", "c"], row_docs) == [0, 2]
