"""Megatron .bin/.idx reading and writing, checked against hand-computed bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.errors import CorruptShardError
from indexer.megatron import DTYPE_CODES, MAGIC, MegatronDataset, read_index, write_dataset


def hand_index(code: int, sizes: list[int], pointers: list[int], doc_idx: list[int], version: int = 1) -> bytes:
    """The exact bytes docs/DESIGN.md specifies, assembled by hand."""
    head = MAGIC + struct.pack("<Q", version) + struct.pack("<B", code)
    head += struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(doc_idx))
    body = b"".join(struct.pack("<i", s) for s in sizes) + b"".join(struct.pack("<q", p) for p in pointers)
    return head + body + b"".join(struct.pack("<q", d) for d in doc_idx)


def write_raw(tmp_path: Path, idx: bytes, bin_bytes: bytes, name: str = "data") -> Path:
    (tmp_path / f"{name}.idx").write_bytes(idx)
    (tmp_path / f"{name}.bin").write_bytes(bin_bytes)
    return tmp_path / name


ITEMS = [[5, -1, 70000], [2], [], [1 << 30, 7]]  # variable lengths, an empty item, values past int16


def int32_file(tmp_path: Path) -> Path:
    bin_bytes = b"".join(struct.pack("<i", v) for item in ITEMS for v in item)
    sizes = [len(item) for item in ITEMS]
    pointers = [4 * sum(sizes[:i]) for i in range(len(sizes))]
    return write_raw(tmp_path, hand_index(4, sizes, pointers, [0, 2, 4]), bin_bytes)


def test_reads_hand_built_variable_length_int32(tmp_path: Path) -> None:
    data = MegatronDataset(int32_file(tmp_path))
    assert len(data) == 4 and data.dtype == np.int32
    assert [data[i].tolist() for i in range(4)] == ITEMS
    assert data.index.doc_idx.tolist() == [0, 2, 4]


def test_writer_produces_the_hand_computed_bytes(tmp_path: Path) -> None:
    expected = int32_file(tmp_path)
    out = tmp_path / "written"
    write_dataset(out, [np.array(i, dtype=np.int32) for i in ITEMS], dtype=np.int32, doc_starts=[0, 2])
    assert Path(f"{out}.idx").read_bytes() == Path(f"{expected}.idx").read_bytes()
    assert Path(f"{out}.bin").read_bytes() == Path(f"{expected}.bin").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def split_into_pieces(prefix: Path, cuts: list[int]) -> list[Path]:
    """Split PREFIX.bin at byte offsets into Pythia-style document-000KK-of-000NN.bin pieces."""
    blob = Path(f"{prefix}.bin").read_bytes()
    bounds = [0, *cuts, len(blob)]
    last = len(bounds) - 2
    paths = []
    for k in range(last + 1):
        path = prefix.with_name(f"{prefix.name}-{k:05d}-of-{last:05d}.bin")
        path.write_bytes(blob[bounds[k] : bounds[k + 1]])
        paths.append(path)
    Path(f"{prefix}.bin").unlink()
    return paths


def test_pythia_style_uint16_rows_split_across_pieces(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 50304, size=(6, 2049), dtype=np.uint16)
    prefix = tmp_path / "document"
    write_dataset(prefix, rows, dtype=np.uint16)
    # Hand-check the header before splitting: dtype code 8, 6 items of 2049 tokens.
    raw = Path(f"{prefix}.idx").read_bytes()
    assert raw[:9] == MAGIC and raw[17] == 8 and struct.unpack("<Q", raw[18:26])[0] == 6
    # Cut at odd byte offsets so rows (and even single tokens) straddle pieces.
    pieces = split_into_pieces(prefix, [1, 4099, 4100, 9001, 20000])
    assert pieces[-1].name == "document-00005-of-00005.bin"
    data = MegatronDataset(prefix)
    assert len(data.bin.pieces) == 6
    for i in range(6):
        np.testing.assert_array_equal(data[i], rows[i])


def test_missing_piece_is_reported(tmp_path: Path) -> None:
    prefix = tmp_path / "document"
    write_dataset(prefix, np.zeros((3, 8), np.uint16), dtype=np.uint16)
    pieces = split_into_pieces(prefix, [10, 20])
    pieces[1].unlink()
    with pytest.raises(CorruptShardError, match=r"missing \.bin pieces \[1\]"):
        MegatronDataset(prefix)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda idx: b"NOTMMIDX\x00" + idx[9:], "bad magic"),
        (lambda idx: idx[:9] + struct.pack("<Q", 2) + idx[17:], "unsupported version 2"),
        (lambda idx: idx[:17] + bytes([9]) + idx[18:], "unknown dtype code 9"),
        (lambda idx: idx[:-3], "truncated"),
        (lambda idx: idx[:40], "truncated"),
        (lambda idx: idx[:10], "shorter than"),
    ],
)
def test_bad_index_files(tmp_path: Path, mutate, message: str) -> None:
    prefix = int32_file(tmp_path)
    idx = Path(f"{prefix}.idx")
    idx.write_bytes(mutate(idx.read_bytes()))
    with pytest.raises(CorruptShardError, match=message) as info:
        MegatronDataset(prefix)
    assert str(idx) in str(info.value) or str(prefix) in str(info.value)


def test_truncated_bin_is_reported(tmp_path: Path) -> None:
    prefix = int32_file(tmp_path)
    binf = Path(f"{prefix}.bin")
    binf.write_bytes(binf.read_bytes()[:-4])
    with pytest.raises(CorruptShardError, match="item 3 ends at byte 24 but the .bin data has only 20"):
        MegatronDataset(prefix)


def test_sizes_that_overrun_the_bin(tmp_path: Path) -> None:
    sizes, pointers = [2, 1000], [0, 8]
    prefix = write_raw(tmp_path, hand_index(4, sizes, pointers, [0, 2]), b"\x00" * 12)
    with pytest.raises(CorruptShardError, match="item 1 ends at byte 4008"):
        MegatronDataset(prefix)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CorruptShardError, match="index file not found"):
        read_index(tmp_path / "nothing.idx")
    prefix = int32_file(tmp_path)
    Path(f"{prefix}.bin").unlink()
    with pytest.raises(CorruptShardError, match="no data.bin"):
        MegatronDataset(prefix)


@settings(max_examples=40, deadline=None)
@given(
    code=st.sampled_from(sorted(DTYPE_CODES)),
    lengths=st.lists(st.integers(0, 40), min_size=0, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_round_trip_every_dtype(tmp_path_factory, code: int, lengths: list[int], seed: int) -> None:
    dtype = DTYPE_CODES[code]
    rng = np.random.default_rng(seed)
    items = [(rng.random(n) * 100).astype(dtype) for n in lengths]
    prefix = tmp_path_factory.mktemp("rt") / "d"
    assert write_dataset(prefix, items, dtype=dtype) == len(items)
    data = MegatronDataset(prefix)
    assert data.dtype == dtype and len(data) == len(items)
    for i, item in enumerate(items):
        np.testing.assert_array_equal(data[i], item)
