"""Megatron / GPT-NeoX ``MMapIndexedDataset`` files: the format of Pythia's pre-tokenized Pile.

Layout (little-endian), as in docs/DESIGN.md:

``.idx``: 9-byte magic ``MMIDIDX\\x00\\x00``; uint64 version (1); uint8 dtype code;
uint64 N (items); uint64 M (length of ``doc_idx``); int32[N] sizes; int64[N] byte
pointers into ``.bin``; int64[M] ``doc_idx``.

``.bin``: the items' tokens back to back, no header. Pythia ships it split into
``document-00000-of-00020.bin`` … ``document-00020-of-00020.bin``; those pieces
are read in place as if concatenated.

Optional sidecar ``PREFIX.labels.json`` (ours, not Megatron's): per-row labels as one JSON
object mapping a metadata name to a list with one JSON value per item (a string, null, or a
list), e.g. ``{"pile_set_name": ["Pile-CC", "ArXiv", ...], "pile_set_names": [["Pile-CC"],
["ArXiv", "Github"], ...]}``. Pre-tokenized rows carry no provenance; a writer that knows it
(the demo knows each row's documents) records it here, and the Megatron reader copies it into
every row's metadata (a name outside the metadata schema lands in its ``extra`` column).
Written with :func:`write_row_labels`, read with :func:`read_row_labels`.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import CorruptShardError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float32),
    7: np.dtype(np.float64),
    8: np.dtype(np.uint16),
}
CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}
_PIECE = re.compile(r"-(\d{5})-of-(\d{5})\.bin$")


@dataclass(frozen=True)
class MegatronIndex:
    """The parsed ``.idx`` file; arrays are read-only memory maps."""

    path: Path
    dtype: np.dtype
    sizes: np.ndarray
    pointers: np.ndarray
    doc_idx: np.ndarray

    def __len__(self) -> int:
        return int(self.sizes.shape[0])


def read_index(path: str | Path) -> MegatronIndex:
    """Parse an ``.idx`` file, checking magic, version, dtype code and length."""
    path = Path(path)
    if not path.is_file():
        raise CorruptShardError(f"{path}: index file not found")
    total = path.stat().st_size
    if total < HEADER_BYTES:
        raise CorruptShardError(f"{path}: {total} bytes is shorter than the {HEADER_BYTES}-byte header")
    with path.open("rb") as f:
        header = f.read(HEADER_BYTES)
    if header[: len(MAGIC)] != MAGIC:
        raise CorruptShardError(f"{path}: bad magic {header[:len(MAGIC)]!r}, expected {MAGIC!r}")
    version, code, n, m = struct.unpack("<QBQQ", header[len(MAGIC) :])
    if version != VERSION:
        raise CorruptShardError(f"{path}: unsupported version {version}, expected {VERSION}")
    if code not in DTYPE_CODES:
        raise CorruptShardError(f"{path}: unknown dtype code {code}, expected one of {sorted(DTYPE_CODES)}")
    expected = HEADER_BYTES + 4 * n + 8 * n + 8 * m
    if total != expected:
        raise CorruptShardError(
            f"{path}: {total} bytes but the header promises {expected} (N={n} items, M={m} doc_idx entries); "
            "the file is truncated or not an MMapIndexedDataset index"
        )
    sizes = np.memmap(path, dtype="<i4", mode="r", offset=HEADER_BYTES, shape=(n,)) if n else np.zeros(0, "<i4")
    ptr_off = HEADER_BYTES + 4 * n
    pointers = np.memmap(path, dtype="<i8", mode="r", offset=ptr_off, shape=(n,)) if n else np.zeros(0, "<i8")
    doc_off = ptr_off + 8 * n
    doc_idx = np.memmap(path, dtype="<i8", mode="r", offset=doc_off, shape=(m,)) if m else np.zeros(0, "<i8")
    return MegatronIndex(path, DTYPE_CODES[code], sizes, pointers, doc_idx)


def find_bin_pieces(prefix: str | Path) -> list[Path]:
    """Return ``PREFIX.bin``, or Pythia-style pieces ``PREFIX-000KK-of-000NN.bin`` in order."""
    prefix = Path(prefix)
    single = prefix.with_name(prefix.name + ".bin")
    if single.is_file():
        return [single]
    pieces: dict[int, Path] = {}
    last_seen: set[int] = set()
    for candidate in prefix.parent.glob(prefix.name + "-*-of-*.bin"):
        match = _PIECE.search(candidate.name)
        if match and candidate.name == f"{prefix.name}{match.group(0)}":
            pieces[int(match.group(1))] = candidate
            last_seen.add(int(match.group(2)))
    if not pieces:
        raise CorruptShardError(f"{prefix}: no {single.name} and no {prefix.name}-NNNNN-of-NNNNN.bin pieces")
    if len(last_seen) != 1:
        raise CorruptShardError(f"{prefix}: pieces disagree on their count: -of-{sorted(last_seen)}")
    last = last_seen.pop()
    missing = sorted(set(range(last + 1)) - set(pieces))
    if missing:
        raise CorruptShardError(f"{prefix}: missing .bin pieces {missing} of 0..{last}")
    return [pieces[i] for i in range(last + 1)]


class BinFile:
    """Byte-addressable view of one ``.bin`` or of its pieces, concatenated without copying."""

    def __init__(self, pieces: list[Path]) -> None:
        self.pieces = pieces
        self._maps = [np.memmap(p, dtype=np.uint8, mode="r") if p.stat().st_size else None for p in pieces]
        sizes = [p.stat().st_size for p in pieces]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.nbytes = int(self.starts[-1])

    def read(self, offset: int, nbytes: int) -> np.ndarray:
        """Return ``nbytes`` bytes starting at ``offset`` as a uint8 array."""
        chunks = []
        piece = int(np.searchsorted(self.starts, offset, side="right")) - 1
        while nbytes > 0:
            local = offset - int(self.starts[piece])
            take = min(nbytes, int(self.starts[piece + 1]) - offset)
            chunks.append(self._maps[piece][local : local + take])
            offset, nbytes, piece = offset + take, nbytes - take, piece + 1
        if len(chunks) == 1:
            return chunks[0]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)


class MegatronDataset:
    """Random access to the items of an ``MMapIndexedDataset`` (single or split ``.bin``)."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        self.index = read_index(self.prefix.with_name(self.prefix.name + ".idx"))
        self.bin = BinFile(find_bin_pieces(self.prefix))
        self._check_bounds()

    def _check_bounds(self) -> None:
        sizes = self.index.sizes.astype(np.int64)
        if len(sizes) == 0:
            return
        if (sizes < 0).any() or (self.index.pointers < 0).any():
            raise CorruptShardError(f"{self.index.path}: negative item size or pointer")
        ends = self.index.pointers + sizes * self.index.dtype.itemsize
        worst = int(np.argmax(ends))
        if int(ends[worst]) > self.bin.nbytes:
            raise CorruptShardError(
                f"{self.prefix}: item {worst} ends at byte {int(ends[worst])} but the .bin data has only "
                f"{self.bin.nbytes} bytes; the .bin is truncated or belongs to another .idx"
            )

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dtype(self) -> np.dtype:
        return self.index.dtype

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range 0..{len(self) - 1}")
        size = int(self.index.sizes[i])
        raw = self.bin.read(int(self.index.pointers[i]), size * self.dtype.itemsize)
        return raw.view(self.dtype.newbyteorder("<"))

    def iter_items(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(item_index, tokens)`` for items ``[start, stop)``."""
        for i in range(start, stop):
            yield i, self[i]


def write_dataset(
    prefix: str | Path,
    items: Iterable[np.ndarray],
    dtype: np.dtype | type = np.uint16,
    doc_starts: Iterable[int] | None = None,
) -> int:
    """Write items as ``PREFIX.bin`` + ``PREFIX.idx``; return the item count.

    Both files are written under temporary names and renamed when complete, ``.idx``
    last, so a reader never sees a half-written pair. ``doc_starts`` lists the first
    item of each document (default: every item is its own document).
    """
    prefix = Path(prefix)
    dtype = np.dtype(dtype)
    if dtype not in CODE_OF_DTYPE:
        raise ValueError(f"dtype {dtype} has no Megatron code; use one of {sorted(map(str, CODE_OF_DTYPE))}")
    bin_path, idx_path = prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")
    tmp_bin, tmp_idx = bin_path.with_suffix(".bin.tmp"), idx_path.with_suffix(".idx.tmp")
    sizes: list[int] = []
    with tmp_bin.open("wb") as f:
        for item in items:
            arr = np.asarray(item)
            if arr.ndim != 1:
                raise ValueError(f"item {len(sizes)} has shape {arr.shape}; items must be 1-D")
            f.write(arr.astype(dtype.newbyteorder("<"), copy=False).tobytes())
            sizes.append(arr.shape[0])
    sizes_arr = np.asarray(sizes, dtype="<i4")
    lengths = sizes_arr.astype(np.int64)
    pointers = (np.cumsum(lengths) - lengths) * dtype.itemsize
    starts = list(range(len(sizes))) if doc_starts is None else list(doc_starts)
    doc_idx = np.asarray(starts + [len(sizes)], dtype="<i8")
    with tmp_idx.open("wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<QBQQ", VERSION, CODE_OF_DTYPE[dtype], len(sizes), len(doc_idx)))
        f.write(sizes_arr.tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(doc_idx.tobytes())
    os.replace(tmp_bin, bin_path)
    os.replace(tmp_idx, idx_path)
    return len(sizes)


def labels_path(prefix: str | Path) -> Path:
    """Where the per-row labels sidecar of a dataset lives: ``PREFIX.labels.json``."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".labels.json")


def write_row_labels(prefix: str | Path, labels: Mapping[str, Sequence[Any]]) -> Path:
    """Write per-row labels (name → one JSON value per item) beside an existing dataset, atomically."""
    count = len(read_index(Path(prefix).with_name(Path(prefix).name + ".idx")))
    for name, values in labels.items():
        if len(values) != count:
            raise ValueError(f"{len(values)} {name!r} labels for {count} items of {prefix}; give one per item")
    path = labels_path(prefix)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({name: list(values) for name, values in labels.items()}))
    os.replace(tmp, path)
    return path


def read_row_labels(prefix: str | Path, count: int) -> dict[str, list[Any]]:
    """The per-row labels of a dataset of ``count`` items (``{}`` when it has no sidecar)."""
    path = labels_path(prefix)
    if not path.is_file():
        return {}
    try:
        labels = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptShardError(f"{path}: not a JSON labels file ({err}); rewrite it or delete it") from err
    if not isinstance(labels, dict) or any(not isinstance(v, list) or len(v) != count for v in labels.values()):
        raise CorruptShardError(f"{path}: expected {{name: [one label per item]}} for {count} items; "
                                "rewrite it with write_row_labels or delete it")
    return labels
