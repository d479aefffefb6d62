"""Pile jsonl.zst, plain jsonl and txt readers, and the jsonl.zst writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

from indexer.errors import CorruptShardError, DataFormatError, MissingFieldError, UnknownSourceError
from indexer.textfiles import read_jsonl, read_txt, write_jsonl_zst


def pile_records(n: int, set_name: str = "Pile-CC") -> list[dict]:
    return [{"text": f"document {i} ünïcode", "meta": {"pile_set_name": set_name, "doc": i}} for i in range(n)]


def test_jsonl_zst_round_trip_keeps_order_ids_and_meta(tmp_path: Path) -> None:
    write_jsonl_zst(tmp_path / "00.jsonl.zst", pile_records(3, "ArXiv"))
    write_jsonl_zst(tmp_path / "01.jsonl.zst", pile_records(2, "Github"))
    got = list(read_jsonl(tmp_path / "*.jsonl.zst"))
    assert [e.example_id for e in got] == [0, 1, 2, 3, 4]
    assert [e.metadata["pile_set_name"] for e in got] == ["ArXiv"] * 3 + ["Github"] * 2
    assert got[3].metadata["source"] == "01.jsonl.zst" and got[3].metadata["row"] == 0
    assert got[1].text == "document 1 ünïcode" and got[1].metadata["doc"] == 1
    assert got[0].token_ids is None


def test_tokenizer_fills_token_ids(tmp_path: Path) -> None:
    class Chars:
        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return [ord(c) for c in text]

        def decode(self, ids: list[int]) -> str:
            return "".join(map(chr, ids))

    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "hi"}) + "\n\n")
    (example,) = read_jsonl(tmp_path / "a.jsonl", tokenizer=Chars())
    assert example.token_ids.tolist() == [104, 105] and example.metadata["pile_set_name"] is None


def test_corrupt_zst_names_the_file(tmp_path: Path) -> None:
    blob = zstandard.ZstdCompressor().compress(b"".join(json.dumps(r).encode() + b"\n" for r in pile_records(200)))
    path = tmp_path / "bad.jsonl.zst"
    path.write_bytes(blob[: len(blob) // 2] + b"\x00garbage" * 8)
    with pytest.raises(CorruptShardError, match="bad.jsonl.zst: corrupt zstd stream"):
        list(read_jsonl(path))


def test_line_without_text_and_bad_json(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"meta": {}}\n')
    with pytest.raises(MissingFieldError, match=r"a.jsonl:2: record has no string field 'text'"):
        list(read_jsonl(tmp_path / "a.jsonl"))
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataFormatError, match=r"b.jsonl:2: not valid JSON"):
        list(read_jsonl(tmp_path / "b.jsonl"))


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(UnknownSourceError, match="no such file"):
        list(read_jsonl(tmp_path / "nope-*.jsonl.zst"))


def test_txt_one_example_per_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\n")
    got = list(read_txt(tmp_path / "a.txt", first_id=10))
    assert [(e.example_id, e.text, e.metadata["row"]) for e in got] == [(10, "first line", 0), (11, "second line", 2)]


def test_writer_refuses_records_without_text_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFieldError):
        write_jsonl_zst(tmp_path / "x.jsonl.zst", [{"text": "a"}, {"meta": {}}])
    assert not (tmp_path / "x.jsonl.zst").exists()


def test_truncated_zst_is_detected(tmp_path: Path) -> None:
    write_jsonl_zst(tmp_path / "00.jsonl.zst", pile_records(500))
    path = tmp_path / "00.jsonl.zst"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CorruptShardError, match="truncated"):
        list(read_jsonl(path))


def test_multi_frame_zst_reads_every_frame(tmp_path: Path) -> None:
    compress = zstandard.ZstdCompressor().compress
    lines = [json.dumps(r).encode() + b"\n" for r in pile_records(4)]
    (tmp_path / "m.jsonl.zst").write_bytes(compress(b"".join(lines[:2])) + compress(b"".join(lines[2:])))
    assert len(list(read_jsonl(tmp_path / "m.jsonl.zst"))) == 4


def test_non_utf8_is_a_format_error(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "\xff\xfe"}\n')
    with pytest.raises(DataFormatError, match="not UTF-8"):
        list(read_jsonl(tmp_path / "a.jsonl"))
