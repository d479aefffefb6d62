"""Gradient queries that arrive together are sketched together.

Every gradient query needs a pass of the shared model, and passes take turns (its hooks attach to the one
model). Without batching, eight concurrent queries make eight passes in a row. The batcher's one worker thread
takes the first waiting query, gathers whatever else arrives within ``window_s`` (up to ``max_batch``), and
answers them all with one sketch pass (``AttributionSession.attribute_many``): the same results as one at a
time, up to float rounding. A batch that fails is retried query by query, so one bad query fails alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from attribution.filters import Filters
from attribution.records import Result
from service.state import ServedIndex

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """One query waiting for its batch."""

    prompt: str
    completion: str
    k: int
    filters: Filters | None
    future: Future = field(default_factory=Future)


class GradientBatcher:
    """One worker thread answering queued gradient queries in batches under the model lock."""

    def __init__(self, served: ServedIndex, window_s: float = 0.004, max_batch: int = 16) -> None:
        self.served, self.window_s, self.max_batch = served, window_s, max_batch
        self.queue: queue.Queue[Pending | None] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.start_lock = threading.Lock()
        self.batches: deque[int] = deque(maxlen=1024)
        """Sizes of the last 1,024 batches answered (bounded: a server runs for weeks)."""

    def submit(self, prompt: str, completion: str, k: int, filters: Filters | None) -> list[Result]:
        """The query's results, once its batch is answered (blocking: call it from a worker thread)."""
        with self.start_lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="gradient-batcher", daemon=True)
                self.thread.start()
        pending = Pending(prompt, completion, k, filters)
        self.queue.put(pending)
        return pending.future.result()

    def close(self) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._answer(batch)

    def _answer(self, batch: list[Pending]) -> None:
        self.batches.append(len(batch))
        try:
            session = self.served.current()
            with self.served.model_lock:
                found = session.attribute_many([(p.prompt, p.completion) for p in batch], max(p.k for p in batch),
                                               [p.filters for p in batch])
        except Exception as err:  # noqa: BLE001 - isolate the failing query: retry each alone
            if len(batch) == 1:
                batch[0].future.set_exception(err)
                return
            log.info("a batch of %d gradient queries failed (%s); answering them one by one", len(batch), err)
            for pending in batch:
                self._answer([pending])
            return
        for pending, results in zip(batch, found, strict=True):
            pending.future.set_result(results[: pending.k])
