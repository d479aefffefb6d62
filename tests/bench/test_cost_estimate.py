import sys
from pathlib import Path

import pytest

from bench.cost_estimate import HEADER, EstimateCheck, check, main


def test_the_check_estimates_and_times_an_uncached_query_per_repeat(tiny_index: Path) -> None:
    result = check(tiny_index, repeats=2)
    assert result.rows == 192  # the tiny index is small: every row is re-scored
    assert len(result.estimates) == len(result.measured) == 2
    assert all(e > 0 for e in result.estimates) and all(m > 0 for m in result.measured)
    row = result.row()
    assert row.startswith(f"| {tiny_index} | 192 |") and row.count("|") == HEADER.splitlines()[0].count("|")


def test_the_row_reads_medians_and_the_range_of_ratios() -> None:
    result = EstimateCheck("idx", 10, estimates=[1.0, 2.0, 6.0], measured=[2.0, 2.0, 2.0])
    assert result.ratios() == [0.5, 1.0, 3.0]
    assert result.row() == "| idx | 10 | 2.00 | 2.00 | 1.00 | 0.50-3.00 |"


def test_repeats_below_one_are_refused(tiny_index: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        check(tiny_index, repeats=0)


@pytest.mark.parametrize("flags", [["--repeats", "0"], ["--index", "no-such-index"]])
def test_bad_flags_are_a_usage_error(tmp_path: Path, flags: list[str], monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cost_estimate", *flags])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2 and "error:" in capsys.readouterr().err
