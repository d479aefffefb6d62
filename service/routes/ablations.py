"""``POST /v1/ablations`` (API key) starts an unlearning check; ``GET /v1/ablations/{id}`` reports on it."""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from attribution.ablation import METHODS, AblationSettings
from service.deps import AdminDep, SessionDep
from service.jobs import JobBusyError, JobManager
from service.schemas import ErrorBody, Strict

router = APIRouter(prefix="/v1", tags=["ablations"])
JOB_ID = r"^[0-9a-f]{12}$"


class TargetSpec(Strict):
    prompt: str = Field(..., min_length=1, max_length=2000)
    completion: str = Field(..., min_length=1, max_length=500)
    paraphrases: list[str] = Field(default_factory=list, max_length=8)
    related: list[dict[str, str]] = Field(default_factory=list, max_length=8,
                                          description="[{prompt, completion}] with the same relation")


class AblationRequest(Strict):
    targets: list[TargetSpec] | None = Field(None, max_length=50,
                                             description="Default: the demo's planted facts (with gold rows).")
    limit: int = Field(5, ge=1, le=50)
    k: int = Field(10, ge=1, le=100)
    budgets: list[float] = Field([0.5, 1.0, 2.0], min_length=1, max_length=6)
    seeds: int = Field(1, ge=1, le=5)
    random_draws: int = Field(19, ge=1, le=50)
    methods: list[str] = Field(list(METHODS), min_length=1)


class JobStatus(BaseModel):
    id: str
    status: str
    progress: float
    targets: int
    error: str | None = None
    report: dict | None = None
    plots: list[str] = []


def manager(request: Request) -> JobManager:
    return request.app.state.jobs


def status_of(job) -> JobStatus:
    plots = [f"/v1/ablations/{job.id}/plots/{name}" for name in (job.report or {}).get("plots", [])]
    return JobStatus(id=job.id, status=job.status, progress=job.done / job.targets if job.targets else 0.0,
                     targets=job.targets, error=job.error, report=job.report, plots=plots)


def default_targets(session) -> list[dict]:
    from demo.groundtruth import load_facts

    demo = FsPath(session.manifest["model"]).parent
    if not (demo / "facts.jsonl").is_file():
        raise HTTPException(status_code=422, detail="give targets: this index was not built from the demo")
    return [f for f in load_facts(demo) if f.get("gold_rows")]


@router.post("/ablations", response_model=JobStatus, status_code=202,
             responses={401: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}})
def start_ablation(body: AblationRequest, _: AdminDep, session: SessionDep, request: Request) -> JobStatus:
    """Start an ablation job on a private copy of the model; 409 while another job runs."""
    if any(b <= 0 for b in body.budgets):
        raise HTTPException(status_code=422, detail="budgets must be positive")
    if body.k > len(session):
        raise HTTPException(status_code=422, detail=f"k must be at most the index size {len(session)}")
    try:
        settings = AblationSettings(k=body.k, budgets=tuple(body.budgets), seeds=body.seeds,
                                    random_draws=body.random_draws, methods=tuple(body.methods))
    except ValueError as err:
        raise HTTPException(status_code=422, detail=str(err)) from err
    targets = [t.model_dump() for t in body.targets] if body.targets else default_targets(session)
    tokenizer = session.encoder.tokenizer
    rows = list(range(0, len(session), max(1, len(session) // 16)))[:16]
    general = [tokenizer.encode(session.texts[r], add_special_tokens=False) for r in rows]
    try:
        job = manager(request).start(session, targets[: body.limit], settings, general)
    except JobBusyError as err:
        raise HTTPException(status_code=409, detail=str(err)) from err
    return status_of(job)


@router.get("/ablations/{job_id}", response_model=JobStatus, responses={404: {"model": ErrorBody}})
def get_ablation(job_id: Annotated[str, Path(pattern=JOB_ID)], request: Request) -> JobStatus:
    """Status, progress and, when done, the report and plot URLs."""
    job = manager(request).jobs.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no ablation job {job_id}")
    return status_of(job)


@router.get("/ablations/{job_id}/plots/{name}", responses={404: {"model": ErrorBody}})
def get_plot(job_id: Annotated[str, Path(pattern=JOB_ID)], name: Annotated[str, Path(pattern=r"^[a-z_]+\.png$")],
             request: Request) -> FileResponse:
    """One PNG plot of a finished job (names come from the report, never from a client path)."""
    job = manager(request).jobs.get(job_id)
    if job is None or job.report is None or name not in job.report.get("plots", []):
        raise HTTPException(status_code=404, detail="no such plot")
    return FileResponse(job.directory / name, media_type="image/png")
