"""Typed errors shared by every headwater package.

Each error says what went wrong *and* what to do about it; callers catch
``HeadwaterError`` to turn any of them into a clean CLI or HTTP error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class HeadwaterError(Exception):
    """Base class of every error headwater raises on purpose."""


class ConfigError(HeadwaterError, ValueError):
    """A user-supplied setting is out of range or inconsistent."""


class ModelLoadError(HeadwaterError):
    """A model or tokenizer could not be loaded from a hub id or a local path."""


class DataFormatError(HeadwaterError):
    """A data file is unreadable, truncated or not in the format it claims."""


class OutOfMemoryError(HeadwaterError, MemoryError):
    """A stage ran out of memory (or could not start a thread); the message names the stage and what to lower."""


OUT_OF_MEMORY_MARKERS = ("out of memory", "can't start new thread", "std::bad_alloc", "cannot allocate memory",
                         "failed to allocate", "unable to allocate")
"""Texts of the errors that torch, FAISS, DuckDB, numpy and the threading module raise when memory runs out."""
FAILED_WITHOUT_ERROR = "error return without exception set"
"""CPython's SystemError when a C extension's allocation fails and it returns without setting MemoryError: seen
importing sentence-transformers under a capped address space (tests/headwater/test_memory.py)."""
FAILED_TO_MAP = "failed to map segment from shared object"
"""The dynamic loader's ImportError when mapping a C extension fails: under a capped address space, a lazy import
(scipy, through sklearn) that runs out of room (seen in tests/headwater/test_memory.py in a full suite run)."""


def is_out_of_memory(err: BaseException) -> bool:
    """True for any library's out-of-memory error (a MemoryError, torch's, DuckDB's, a C++ bad_alloc, a thread that
    could not start, a C extension the loader had no room to map)."""
    if isinstance(err, MemoryError) or type(err).__name__ in ("OutOfMemoryError", "OutOfMemoryException"):
        return True
    if isinstance(err, SystemError) and str(err) == FAILED_WITHOUT_ERROR:
        return True
    if isinstance(err, ImportError) and FAILED_TO_MAP in str(err):
        return True
    return isinstance(err, RuntimeError | OSError) and any(m in str(err).lower() for m in OUT_OF_MEMORY_MARKERS)


@contextmanager
def memory_guard(stage: str, advice: str) -> Iterator[None]:
    """Turn running out of memory inside ``stage`` into an :class:`OutOfMemoryError` saying what to lower."""
    try:
        yield
    except HeadwaterError:
        raise
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        raise OutOfMemoryError(f"out of memory {stage} ({type(err).__name__}: {first_line(err)}); "
                               f"{advice}") from err


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an error's message, shortened (libraries' memory errors run to paragraphs of advice)."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else ""
