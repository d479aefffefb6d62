"""Step-addressed reading of Pythia-style rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.errors import StepRangeError
from indexer.megatron import write_dataset
from indexer.training_rows import MegatronSource, RowRange, parse_range, read_training_rows, rows_for_steps


def test_step_s_is_rows_bs_to_bs_plus_b() -> None:
    assert rows_for_steps(num_rows=40, batch_size=8, start_step=2, stop_step=4) == RowRange(16, 32)
    assert rows_for_steps(40, 8, None, None) == RowRange(0, 40)
    assert rows_for_steps(2048 * 1024, 1024, 3, 4) == RowRange(3072, 4096)  # Pythia: step 3 = items 3072..4095


@pytest.mark.parametrize(("start", "stop"), [(0, 6), (5, 6), (3, 3), (-1, 2)])
def test_unknown_step_ranges_are_refused(start: int, stop: int) -> None:
    with pytest.raises(StepRangeError, match="holds steps 0:5"):
        rows_for_steps(40, 8, start, stop)


def test_parse_range() -> None:
    assert parse_range("3:7") == (3, 7)
    assert parse_range(":7") == (None, 7)
    assert parse_range("4") == (4, 5)
    with pytest.raises(StepRangeError, match="not of the form"):
        parse_range("a:b")


def test_rows_carry_step_and_batch_position(tmp_path: Path) -> None:
    rows = np.arange(10 * 5, dtype=np.uint16).reshape(10, 5)
    write_dataset(tmp_path / "d", rows, dtype=np.uint16)
    got = list(read_training_rows(tmp_path / "d", rows_for_steps(10, 4, 1, 2), batch_size=4))
    assert [e.example_id for e in got] == [4, 5, 6, 7]
    assert [(e.metadata["step"], e.metadata["batch_pos"]) for e in got] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    np.testing.assert_array_equal(got[2].token_ids, rows[6])
    with pytest.raises(StepRangeError):
        list(read_training_rows(tmp_path / "d", RowRange(8, 12), batch_size=4))


def test_a_partial_last_step_is_a_step_and_every_row_is_read(tmp_path: Path) -> None:
    """990 rows at Pythia's 1,024 per step: one (partial) step, all 990 rows; without a layout, every row."""
    assert rows_for_steps(990, 1024, None, None) == RowRange(0, 990)
    assert rows_for_steps(37, 16, 2, 3) == RowRange(32, 37)
    write_dataset(tmp_path / "d", np.zeros((37, 5), dtype=np.uint16), dtype=np.uint16)
    source = MegatronSource.open(str(tmp_path / "d"), None, 16)
    assert (source.count, source.batch_rows) == (37, 16)
    assert MegatronSource.open(str(tmp_path / "d"), "2:3", 16).rows == RowRange(32, 37)


def test_row_ranges_and_rows_per_step(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d", np.zeros((37, 5), dtype=np.uint16), dtype=np.uint16)
    picked = MegatronSource.open(str(tmp_path / "d"), None, 8, rows="5:9")
    assert picked.rows == RowRange(5, 9)
    assert [(e.example_id, e.metadata["step"]) for e in picked.read(0, 10, None)] == [(5, 0), (6, 0), (7, 0), (8, 1)]
    with pytest.raises(StepRangeError, match="not both"):
        MegatronSource.open(str(tmp_path / "d"), "0:1", 8, rows="5:9")
    with pytest.raises(StepRangeError, match="holds rows 0:37"):
        MegatronSource.open(str(tmp_path / "d"), None, 8, rows="30:40")
    (tmp_path / "layout.json").write_text('{"batch_size": 4}')  # a layout, when present, says
    assert MegatronSource.open(str(tmp_path / "d"), "9:10", 1024).rows == RowRange(36, 37)
