"""The served index: loaded once, swapped whole on reload, queried one model pass at a time."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol

from attribution.errors import HeadwaterError
from attribution.filters import Filters
from attribution.records import Result
from attribution.retrievers import Method
from attribution.session import AttributionSession
from indexer.store import open_index
from service.catalog import describe
from service.errors import IndexUnavailableError

log = logging.getLogger(__name__)


class QueryBatcher(Protocol):
    """Answers gradient queries that arrive together in shared passes (``service.batcher.GradientBatcher``)."""

    def submit(self, prompt: str, completion: str, k: int, filters: Filters | None) -> list[Result]: ...

    def close(self) -> None: ...


class ServedIndex:
    """Holds the current session; a reload builds a complete new one before swapping it in."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.path, self.device = path, device
        self.session: AttributionSession | None = None
        self.model_lock = threading.Lock()  # sketching hooks the shared model: one pass at a time
        self.reload_lock = threading.Lock()
        self.batcher: QueryBatcher | None = None
        """Answers concurrent gradient queries in one pass each batch (set by the app; None: one at a time)."""

    def load(self) -> AttributionSession:
        """Open the published build and serve it; on failure the previous build (if any) stays served.

        Any failure to open it is the index's (or model's) fault, not the caller's: even a config mismatch
        (``IndexMismatchError``) is raised as :class:`IndexUnavailableError`, with the cause chained."""
        with self.reload_lock:
            try:
                fresh = open_index(self.path, self.device)
                fresh.retriever(Method.BM25)  # build lazily-made retrievers now, not on the first request
                fresh.retriever(Method.EMBEDDING)
                describe(fresh)  # subsets, steps and the default query, before it serves (its model is private)
            except (HeadwaterError, OSError) as err:
                kept = "; still serving the previous build" if self.session is not None else ""
                raise IndexUnavailableError(f"could not load the index at {self.path}: {err}{kept}") from err
            self.session = fresh
            log.info("serving %s (%d examples)", fresh.manifest.created if fresh.manifest else None, len(fresh))
            return fresh

    def current(self) -> AttributionSession:
        """The session being served; :class:`IndexUnavailableError` until the first load finished."""
        session = self.session
        if session is None:
            raise IndexUnavailableError("the index is still loading; retry shortly")
        return session

    @property
    def ready(self) -> bool:
        return self.session is not None
