"""Typed errors for data readers, writers and index files."""

from __future__ import annotations

from attribution.errors import DataFormatError, HeadwaterError


class CorruptShardError(DataFormatError):
    """A data or index file is truncated, has a bad header, or points past its end."""


class MissingFieldError(DataFormatError):
    """A JSON record lacks a required field such as ``text``."""


class StepRangeError(HeadwaterError, ValueError):
    """A requested training-step or row range lies outside the data."""


class UnknownSourceError(HeadwaterError, ValueError):
    """A ``--data`` spec matches no reader (no such file, glob or dataset)."""


class IndexWriteError(HeadwaterError):
    """Writing index files failed (disk full, permissions); finished shards are kept for a rerun."""
