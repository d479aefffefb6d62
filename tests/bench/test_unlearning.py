import argparse

import pytest

from bench.unlearning import pool_sizes


def test_pool_sizes_read_a_comma_list() -> None:
    assert pool_sizes("30, 100,300") == [30, 100, 300]
    assert pool_sizes("") == []


@pytest.mark.parametrize("text", ["abc", "0,3", "30,-1"])
def test_bad_pool_sizes_are_a_usage_error(text: str) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pools", type=pool_sizes)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--pools", text])
    assert stop.value.code == 2
