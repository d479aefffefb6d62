"""Ablation jobs: a failure says why in the job's status; the jobs' folder goes when the server stops."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from evaluation.ablation import AblationSettings
from evaluation.targets import Target
from service.jobs import JobBusyError, JobManager


def wait(manager: JobManager, job_id: str) -> None:
    deadline = time.time() + 60
    while manager.jobs[job_id].status in ("queued", "running") and time.time() < deadline:
        time.sleep(0.05)


def test_a_job_that_fails_says_why(tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "jobs")
    job = manager.start(object(), [Target("p", " c")], AblationSettings(k=1))  # no model to copy: it fails
    wait(manager, job.id)
    assert job.status == "failed" and job.error.startswith("AttributeError: ") and job.finished is not None
    assert manager.running() is None  # a failed job does not block the next one


def test_close_removes_every_job_folder_and_refuses_new_jobs(tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "jobs")
    (manager.root / "0123456789ab").mkdir(parents=True)
    (manager.root / "0123456789ab" / "report.json").write_text("{}")
    manager.close()
    assert not manager.root.exists()
    with pytest.raises(JobBusyError, match="shutting down"):
        manager.start(object(), [Target("p", " c")], AblationSettings(k=1))
