"""Typed errors shared by every headwater package.

Each error says what went wrong *and* what to do about it; callers catch
``HeadwaterError`` to turn any of them into a clean CLI or HTTP error.
"""

from __future__ import annotations


class HeadwaterError(Exception):
    """Base class of every error headwater raises on purpose."""


class ConfigError(HeadwaterError, ValueError):
    """A user-supplied setting is out of range or inconsistent."""


class ModelLoadError(HeadwaterError):
    """A model or tokenizer could not be loaded from a hub id or a local path."""


class DataFormatError(HeadwaterError):
    """A data file is unreadable, truncated or not in the format it claims."""
