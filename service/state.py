"""The served index: loaded once, swapped whole on reload, queried one model pass at a time."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from attribution.session import AttributionSession
from indexer.store import open_index

log = logging.getLogger(__name__)


class ServedIndex:
    """Holds the current session; a reload builds a complete new one before swapping it in."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.path, self.device = path, device
        self.session: AttributionSession | None = None
        self.model_lock = threading.Lock()  # sketching hooks the shared model: one pass at a time
        self.reload_lock = threading.Lock()

    def load(self) -> AttributionSession:
        with self.reload_lock:
            fresh = open_index(self.path, self.device)
            fresh.retriever("bm25")  # build lazily-made retrievers now, not on the first request
            fresh.retriever("embedding")
            self.session = fresh
            log.info("serving %s (%d examples)", fresh.manifest and fresh.manifest.get("created"), len(fresh))
            return fresh

    @property
    def ready(self) -> bool:
        return self.session is not None
