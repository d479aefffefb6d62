"""Raw-text sources: Pile ``jsonl.zst`` shards, plain ``jsonl`` and ``txt`` files.

Files are streamed line by line (a zstd stream is never decompressed whole), in
sorted path order, so example ids are stable for a given set of files.
:class:`JsonlSource` and :class:`TxtSource` are their data sources (see :mod:`indexer.sources`).
"""

from __future__ import annotations

import glob
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import zstandard

from attribution.records import Example
from indexer.errors import CorruptShardError, DataFormatError, MissingFieldError, UnknownSourceError
from indexer.metadata import Column


class Tokenizer(Protocol):
    """The tokenizer methods readers need (a Hugging Face tokenizer has them)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...


def expand_paths(spec: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand a path, a glob or a list of them into sorted existing files."""
    specs = [spec] if isinstance(spec, str | Path) else list(spec)
    found: set[Path] = set()
    for item in specs:
        matches = glob.glob(str(item), recursive=True)
        if not matches:
            raise UnknownSourceError(f"{item}: no such file (and no glob match)")
        found.update(Path(m) for m in matches if Path(m).is_file())
    return sorted(found)


def _zstd_blocks(path: Path, block_size: int = 1 << 20) -> Iterator[bytes]:
    """Decompress a (possibly multi-frame) zstd file, failing loudly on truncation.

    ``stream_reader`` silently stops at a truncated frame; a decompression object
    tells us whether the last frame ended, so a cut-off shard is an error.
    """
    dctx = zstandard.ZstdDecompressor()
    dobj, in_frame = dctx.decompressobj(), False
    try:
        with path.open("rb") as raw:
            while block := raw.read(block_size):
                while block:
                    in_frame = True
                    yield dobj.decompress(block)
                    if not dobj.eof:
                        break
                    block, in_frame = dobj.unused_data, False
                    dobj = dctx.decompressobj()
    except zstandard.ZstdError as err:
        raise CorruptShardError(f"{path}: corrupt zstd stream ({err})") from err
    if in_frame:
        raise CorruptShardError(f"{path}: corrupt zstd stream (truncated: the last frame does not end)")


def _split_lines(path: Path, blocks: Iterable[bytes]) -> Iterator[str]:
    pending = b""
    for block in blocks:
        *lines, pending = (pending + block).split(b"\n")
        for line in lines:
            yield _decode(path, line)
    if pending:
        yield _decode(path, pending)


def _decode(path: Path, line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text ({err})") from err


def iter_lines(path: Path) -> Iterator[str]:
    """Yield the text lines (without newline) of a plain or zstd-compressed file."""
    if path.suffix == ".zst":
        yield from _split_lines(path, _zstd_blocks(path))
        return
    with path.open("rb") as f:
        yield from _split_lines(path, iter(lambda: f.read(1 << 20), b""))


def _parse_record(path: Path, line_no: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{line_no + 1}: not valid JSON ({err.msg})") from err
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise MissingFieldError(f"{path}:{line_no + 1}: record has no string field 'text'")
    return record


def encode_text(tokenizer: Tokenizer | None, text: str) -> np.ndarray | None:
    if tokenizer is None:
        return None
    return np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)


def read_jsonl(
    spec: str | Path | Iterable[str | Path], tokenizer: Tokenizer | None = None, first_id: int = 0
) -> Iterator[Example]:
    """Stream Pile-style records ``{"text": ..., "meta": {"pile_set_name": ...}}``.

    Works for ``.jsonl`` and ``.jsonl.zst``; other ``meta`` keys are kept in the metadata.
    """
    example_id = first_id
    for path in expand_paths(spec):
        for line_no, line in enumerate(iter_lines(path)):
            if not line.strip():
                continue
            record = _parse_record(path, line_no, line)
            meta = record.get("meta") or {}
            metadata = {**meta, "source": path.name, "row": line_no}
            metadata.setdefault("pile_set_name", None)
            yield Example(example_id, encode_text(tokenizer, record["text"]), record["text"], metadata)
            example_id += 1


def read_txt(
    spec: str | Path | Iterable[str | Path], tokenizer: Tokenizer | None = None, first_id: int = 0
) -> Iterator[Example]:
    """Stream plain text files, one example per non-empty line."""
    example_id = first_id
    for path in expand_paths(spec):
        for line_no, line in enumerate(iter_lines(path)):
            text = line.rstrip("\r")
            if not text.strip():
                continue
            metadata = {"source": path.name, "row": line_no, "pile_set_name": None}
            yield Example(example_id, encode_text(tokenizer, text), text, metadata)
            example_id += 1


@dataclass(frozen=True)
class _FileSource:
    """What the line-file sources share: a path or glob, streamed from its first line, ids from 0."""

    takes_steps: ClassVar[bool] = False
    global_ids: ClassVar[bool] = False
    first_row: ClassVar[int] = 0
    count: ClassVar[None] = None
    suffixes: ClassVar[tuple[str, ...]] = ()
    spec: str

    @classmethod
    def matches(cls, spec: str) -> bool:
        return Path(spec).name.endswith(cls.suffixes)

    @classmethod
    def open(cls, spec: str, steps: str | None, batch_rows: int) -> Self:
        return cls(spec)


class JsonlSource(_FileSource):
    """Pile-format ``jsonl``/``jsonl.zst`` files or a glob of them; every ``meta`` key is kept."""

    kind: ClassVar[str] = "jsonl"
    columns: ClassVar[frozenset[Column]] = frozenset({Column.SOURCE, Column.ROW, Column.PILE_SET_NAME, Column.EXTRA})
    suffixes: ClassVar[tuple[str, ...]] = (".jsonl", ".jsonl.zst", ".json", ".json.zst")

    def read(self, start: int, stop: int, tokenizer: Tokenizer) -> Iterator[Example]:
        return itertools.islice(read_jsonl(self.spec, tokenizer), start, stop)


class TxtSource(_FileSource):
    """Plain ``txt``/``txt.zst`` files or a glob of them, one example per non-empty line."""

    kind: ClassVar[str] = "txt"
    columns: ClassVar[frozenset[Column]] = frozenset({Column.SOURCE, Column.ROW})
    suffixes: ClassVar[tuple[str, ...]] = (".txt", ".txt.zst")

    def read(self, start: int, stop: int, tokenizer: Tokenizer) -> Iterator[Example]:
        return itertools.islice(read_txt(self.spec, tokenizer), start, stop)


def write_jsonl_zst(path: str | Path, records: Iterable[dict[str, Any]], level: int = 10) -> int:
    """Write records as one zstd-compressed JSON line each; atomic (temp name, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("wb") as raw, zstandard.ZstdCompressor(level=level).stream_writer(raw) as out:
        for record in records:
            if not isinstance(record.get("text"), str):
                raise MissingFieldError(f"record {count} for {path} has no string field 'text'")
            out.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
            count += 1
    os.replace(tmp, path)
    return count
