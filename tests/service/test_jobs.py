"""Ablation jobs: a failure says why in the job's status; the jobs' folder goes when the server stops."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from evaluation.ablation_plan import AblationSettings, NothingToAblateError
from evaluation.targets import Target
from service import jobs
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


def test_a_job_keeps_its_warnings_and_says_when_there_was_nothing_to_ablate(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def nothing(*args, **kwargs):
        raise NothingToAblateError("nothing to ablate: every selection of every target is empty (target 1, bm25: "
                                   "bm25 found no indexed row sharing a word with the prompt and completion)")

    monkeypatch.setattr(jobs, "private_session", lambda session: session)
    monkeypatch.setattr(jobs, "run_ablation", nothing)
    manager = JobManager(tmp_path / "jobs")
    job = manager.start(object(), [Target("qzxv wkjh", " plmn")], AblationSettings(k=1, methods=("bm25",)),
                        warnings=["beats random will not run: needs ≥ 100 random draws"])
    wait(manager, job.id)
    assert job.status == "failed" and job.error.startswith("NothingToAblateError: nothing to ablate: ")
    assert job.warnings == ["beats random will not run: needs ≥ 100 random draws"]
