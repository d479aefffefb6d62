"""Running out of memory outside the sketch pass: a clear error naming the stage and what to lower, never a traceback
or an abort; and no stray debug lines from libraries."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from attribution.errors import ConfigError, OutOfMemoryError, memory_guard
from headwater.common import quiet_libraries
from headwater.entry import ADDRESS_SPACE_FLOOR, SKIP_CHECK, THREAD_ADDRESS_SPACE, usable_cores


def capped_build(demo: Path, out: Path, cap: int, skip_check: bool) -> subprocess.CompletedProcess:
    """``headwater index build`` in a child whose address space is capped at ``cap`` bytes."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", SKIP_CHECK: "1" if skip_check else "0"}
    command = [str(Path(sys.executable).parent / "headwater"), "index", "build", "--model", str(demo / "model"),
               "--data", str(demo / "data" / "document"), "--out", str(out), "--k", "4", "--steps", "0:8"]
    return subprocess.run(command, preexec_fn=limit, capture_output=True, text=True, env=env, timeout=300)


def test_a_cap_too_small_to_start_is_refused_at_once(tiny_demo: Path, tmp_path: Path) -> None:
    needed = ADDRESS_SPACE_FLOOR + THREAD_ADDRESS_SPACE * usable_cores()
    done = capped_build(tiny_demo, tmp_path / "index", needed - 512 * 2**20, skip_check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "address space is capped" in done.stderr and "ulimit -v" in done.stderr
    assert not (tmp_path / "index").exists()


def test_running_out_past_the_check_names_the_stage(tiny_demo: Path, tmp_path: Path) -> None:
    """1.75 GiB imports torch and loads the tiny model, and runs out soon after (here: loading the embedding
    model); wherever it runs out, the error is one line, not a traceback or an abort."""
    done = capped_build(tiny_demo, tmp_path / "index", 1_800 * 2**20, skip_check=True)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])  # not -6 (abort) nor 1 (traceback)
    assert "Traceback" not in done.stderr and "error: out of memory" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("raised", [MemoryError(), RuntimeError("std::bad_alloc"),
                                    RuntimeError("can't start new thread"),
                                    type("OutOfMemoryException", (Exception,), {})("Out of Memory Error: block\nmore"),
                                    OSError(12, "Cannot allocate memory"),
                                    SystemError("error return without exception set"),
                                    ImportError("/x/_biasedurn.so: failed to map segment from shared object")])
def test_memory_guard_names_the_stage_and_advice(raised: Exception) -> None:
    with pytest.raises(OutOfMemoryError, match=r"^out of memory fitting the curvature \(.*\); lower --curvature-rows$"):
        with memory_guard("fitting the curvature", "lower --curvature-rows"):
            raise raised


@pytest.mark.parametrize("raised", [RuntimeError("shape mismatch"), ConfigError("bad"), KeyError("x"),
                                    SystemError("another internal error"), ImportError("No module named 'x'")])
def test_memory_guard_lets_other_errors_through(raised: Exception) -> None:
    with pytest.raises(type(raised)) as caught:
        with memory_guard("stage", "advice"):
            raise raised
    assert caught.value is raised


def test_library_debug_lines_are_filtered_whenever_the_library_was_imported() -> None:
    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "message", None, None)

    assert not quiet_libraries(record("bm25s", logging.DEBUG))
    assert not quiet_libraries(record("sentence_transformers.SentenceTransformer", logging.INFO))
    assert quiet_libraries(record("bm25s", logging.WARNING))
    assert quiet_libraries(record("indexer.build", logging.INFO))


def test_a_build_prints_no_library_debug_lines(tiny_demo: Path, tmp_path: Path) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "headwater"), "index", "build", "--model",
                           str(tiny_demo / "model"), "--data", str(tiny_demo / "data" / "document"), "--out",
                           str(tmp_path / "index"), "--k", "4", "--steps", "0:8"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DEBUG" not in done.stderr and "published" in done.stdout
