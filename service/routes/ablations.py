"""``POST /v1/ablations`` (API key) starts an unlearning check; ``GET /v1/ablations/{id}`` reports on it (the work:
``service.ablations``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import FileResponse

from service import ablations
from service.deps import AdminDep, SessionDep
from service.jobs import JobManager
from service.schemas import AblationRequest, ErrorBody, JobStatus

router = APIRouter(prefix="/v1", tags=["ablations"])
JOB_ID = r"^[0-9a-f]{12}$"


def manager(request: Request) -> JobManager:
    return request.app.state.jobs


@router.post("/ablations", response_model=JobStatus, status_code=202,
             responses={401: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}})
def start_ablation(body: AblationRequest, _: AdminDep, session: SessionDep, request: Request) -> JobStatus:
    """Start an ablation job on a private copy of the model; 409 while another job runs, 422 when nothing could be
    ascended on; ``warnings`` lists the checks that cannot run."""
    return ablations.start(body, session, manager(request))


@router.get("/ablations/{job_id}", response_model=JobStatus, responses={404: {"model": ErrorBody}})
def get_ablation(job_id: Annotated[str, Path(pattern=JOB_ID)], request: Request) -> JobStatus:
    """Status, progress and, when done, the report and plot URLs."""
    return ablations.status(manager(request), job_id)


@router.get("/ablations/{job_id}/plots/{name}", responses={404: {"model": ErrorBody}})
def get_plot(job_id: Annotated[str, Path(pattern=JOB_ID)], name: Annotated[str, Path(pattern=r"^[a-z_]+\.png$")],
             request: Request) -> FileResponse:
    """One PNG plot of a finished job (names come from the report, never from a client path)."""
    job = manager(request).jobs.get(job_id)
    if job is None or job.report is None or name not in job.report.get("plots", []):
        raise HTTPException(status_code=404, detail="no such plot")
    return FileResponse(job.directory / name, media_type="image/png")
