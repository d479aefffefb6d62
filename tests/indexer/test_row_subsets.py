"""A packed row holds several documents: it is labelled by every subset it holds, and where each one is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attribution.records import Example
from demo.build import subset_spans
from indexer.groundtruth import load_row_docs
from indexer.megatron import write_dataset, write_row_labels
from indexer.metadata import metadata_table, with_extra
from indexer.textfiles import read_jsonl
from indexer.training_rows import read_training_rows


def test_subset_spans_split_a_row_after_each_end_of_text() -> None:
    subset_of = {"a": "Bible (KJV)", "b": "Planted Facts", "c": "Planted Facts", "d": "Python Docs"}
    row = [5, 6, 0, 7, 0, 8, 9, 0, 4, 4]  # a's tail, b, c, then d's head
    assert subset_spans(row, ["a", "b", "c", "d"], subset_of, eos_id=0) == [
        [0, 3, "Bible (KJV)"], [3, 8, "Planted Facts"], [8, 10, "Python Docs"]]
    assert subset_spans([5, 6, 0], ["a"], subset_of, eos_id=0) == [[0, 3, "Bible (KJV)"]]  # ends on its eos
    assert subset_spans([5, 0, 6], ["a"], subset_of, eos_id=0) is None  # pieces and documents disagree


def test_the_demo_labels_each_row_by_every_subset_it_holds(tiny_demo: Path) -> None:
    labels = json.loads((tiny_demo / "data" / "document.labels.json").read_text())
    row_docs = load_row_docs(tiny_demo)
    subset_of = {}
    for shard in sorted((tiny_demo / "corpus").glob("*.jsonl.zst")):
        subset_of |= {ex.metadata["doc_id"]: ex.metadata["pile_set_name"] for ex in read_jsonl(shard)}
    width = json.loads((tiny_demo / "data" / "layout.json").read_text())["seq_len"] + 1
    for row, docs in enumerate(row_docs):
        names = labels["pile_set_names"][row]
        assert names == list(dict.fromkeys(subset_of[d] for d in docs["docs"]))
        assert labels["pile_set_name"][row] in names  # the compatible single label is one of them
        spans = labels["subset_spans"][row]
        assert spans[0][0] == 0 and spans[-1][1] == width and spans[0][2] == names[0]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # contiguous, whole row
    assert any(len(names) > 1 for names in labels["pile_set_names"])
    rows = list(read_training_rows(tiny_demo / "data" / "document", batch_size=4))
    assert [r.metadata["pile_set_names"] for r in rows] == labels["pile_set_names"]  # the reader applies them


def test_list_labels_survive_into_the_index_metadata(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d", np.zeros((2, 3), np.uint16))
    write_row_labels(tmp_path / "d", {"pile_set_name": ["A", "B"], "pile_set_names": [["A"], ["B", "A"]],
                                      "subset_spans": [[[0, 3, "A"]], [[0, 1, "B"], [1, 3, "A"]]]})
    rows = list(read_training_rows(tmp_path / "d", batch_size=1))
    table = metadata_table([Example(r.example_id, r.token_ids, "t", r.metadata) for r in rows], ["t", "t"])
    stored = [with_extra(row) for row in table.to_pylist()]
    assert [s["pile_set_names"] for s in stored] == [["A"], ["B", "A"]]
    assert stored[1]["subset_spans"] == [[0, 1, "B"], [1, 3, "A"]] and stored[1]["pile_set_name"] == "B"
