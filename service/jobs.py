"""Ablation jobs: one at a time, on a copy of the model, never touching the one that serves queries.

A second job while one runs is refused with 409 (clients retry later) rather than queued:
a job takes minutes of both cores, and a queue would hide that cost.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from attribution.retrievers import GradientRetriever, Method
from attribution.session import AttributionSession
from evaluation.ablation import run_ablation
from evaluation.ablation_plan import AblationSettings
from evaluation.ablation_report import write_report
from evaluation.targets import Target

log = logging.getLogger(__name__)


class JobBusyError(RuntimeError):
    """A job is already running."""


@dataclass
class Job:
    id: str
    status: str = "queued"
    targets: int = 0
    done: int = 0
    error: str | None = None
    report: dict | None = None
    warnings: list[str] = field(default_factory=list)
    """What the request cannot measure (checks that will not run), said when it is accepted."""
    directory: Path | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None


def private_session(session: AttributionSession) -> AttributionSession:
    """A session sharing the read-only index but with its own copy of the model(s)."""
    encoder = copy.deepcopy(session.encoder)
    served = session.retriever(Method.GRADIENT)
    gradient = GradientRetriever(encoder, served.store, session.metadata, served.window)
    builders = {Method.BM25: lambda: session.retriever(Method.BM25),
                Method.EMBEDDING: lambda: session.retriever(Method.EMBEDDING)}
    private = AttributionSession(encoder, session.ids, session.metadata, gradient, session.texts, builders,
                                 session.config)
    private.manifest = session.manifest
    return private


class JobManager:
    """The server's jobs, each writing its report under ``root`` (a fresh temporary folder by default, removed by
    :meth:`close` when the server shuts down)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="headwater-jobs-"))
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        """Remove every job's files; a job still running then fails instead of writing them."""
        with self.lock:
            self.closed = True
            shutil.rmtree(self.root, ignore_errors=True)

    def running(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.status in ("queued", "running")), None)

    def start(self, session: AttributionSession, targets: list[Target], settings: AblationSettings,
              controls: list[Target] | None = None, warnings: list[str] | None = None) -> Job:
        """Start a job in a thread (JobBusyError while another runs); ``warnings`` are kept with it."""
        with self.lock:
            busy = self.running()
            if busy is not None:
                raise JobBusyError(f"ablation job {busy.id} is still running; retry when it is done")
            if self.closed:
                raise JobBusyError("the server is shutting down; retry when it is back")
            job = Job(id=uuid.uuid4().hex[:12], targets=len(targets), warnings=list(warnings or []))
            self.jobs[job.id] = job
        thread = threading.Thread(target=self._run, args=(job, session, targets, settings, controls), daemon=True)
        thread.start()
        return job

    def _run(self, job: Job, session: AttributionSession, targets: list[Target], settings: AblationSettings,
             controls: list[Target] | None) -> None:
        job.status = "running"
        try:
            private = private_session(session)

            def progress(done: int) -> None:
                job.done = done

            report = run_ablation(private, targets, settings, progress=progress, controls=controls)
            with self.lock:
                if self.closed:
                    raise RuntimeError("the server shut down before the job's report was written")
                job.directory = self.root / job.id
                write_report(report, job.directory)
            job.report, job.status = report, "done"
        except Exception as err:  # a failed job reports why instead of dying silently
            log.exception("ablation job %s failed", job.id)
            job.status, job.error = "failed", f"{type(err).__name__}: {err}"
        finally:
            job.finished = time.time()
