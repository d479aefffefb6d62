"""``POST /v1/ablations`` (API key) starts an unlearning check; ``GET /v1/ablations/{id}`` reports on it.

What can be known before the job starts is said then: a bad target is refused (400), a request whose every
selection of every target is known to be empty (``bm25`` sharing no word with the target, ``given`` without
example_ids, ``oracle`` without gold rows) is refused (422), and checks that cannot run with these targets and
settings (too few targets or random draws for the test against random to reach p < 0.01, one budget, no paraphrases,
…) are listed in ``warnings``: the job still runs, since its measurements stand, but those checks read *not run* and
the verdict is at best *inconclusive*. When done, ``verdicts`` holds the one verdict per tested selection.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, field_validator

from attribution.ascent import Probe
from attribution.retrievers import k_error
from evaluation.ablation_plan import (
    AblationSettings,
    NothingToAblateError,
    check_runnable,
    known_empty,
    request_warnings,
)
from evaluation.selections import Selection
from evaluation.targets import Target, check_targets
from indexer.groundtruth import Fact, facts_file, load_facts
from service.deps import AdminDep, SessionDep
from service.jobs import JobManager
from service.schemas import AblationVerdict, ErrorBody, Strict

router = APIRouter(prefix="/v1", tags=["ablations"])
JOB_ID = r"^[0-9a-f]{12}$"


MAX_TASK_INSTANCES = 32
"""Most instances of a task target in a job (every instance is measured after every ascent)."""
MAX_BUDGET = 10.0
"""Largest ‖Δθ‖ a job may ask for: the calibrated budgets are near 1, and far larger steps overflow the losses."""
Text = Annotated[str, Field(min_length=1, max_length=2000, strict=True)]
Budget = Annotated[float, Field(gt=0, le=MAX_BUDGET, allow_inf_nan=False, strict=True)]
Count = Annotated[int, Field(strict=True)]


def non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain non-whitespace text")
    return value


class PromptPair(Strict):
    prompt: Text
    completion: Annotated[str, Field(min_length=1, max_length=500, strict=True)]

    _non_blank = field_validator("prompt", "completion")(non_blank)

    def to_probe(self) -> Probe:
        return Probe(self.prompt, self.completion)


class TargetSpec(PromptPair):
    paraphrases: list[Text] = Field(default_factory=list, max_length=8,
                                    description="Other wordings of the prompt (the completion stays).")
    related: list[PromptPair] = Field(default_factory=list, max_length=8,
                                      description="Prompts of the same relation, other subjects (specificity).")
    unrelated: list[PromptPair] = Field(default_factory=list, max_length=8,
                                        description="Prompts of other relations (default: other demo facts).")
    example_ids: list[Annotated[int, Field(ge=0, strict=True)]] = Field(
        default_factory=list, max_length=100, description="Rows to check as the 'given' selection, e.g. a result list.")
    instances: list[PromptPair] = Field(default_factory=list, max_length=MAX_TASK_INSTANCES - 1,
                                        description="A task target: its further instances (prompt and completion "
                                        "are the first); its loss change is their mean, its selections come from "
                                        "task queries, and related should be the other tasks' instances.")

    @field_validator("paraphrases")
    @classmethod
    def paraphrases_not_blank(cls, value: list[str]) -> list[str]:
        return [non_blank(p) for p in value]

    def to_target(self) -> Target:
        return Target(self.prompt, self.completion, list(self.paraphrases), [p.to_probe() for p in self.related],
                      [p.to_probe() for p in self.unrelated], example_ids=list(self.example_ids),
                      more=[p.to_probe() for p in self.instances])


class AblationRequest(Strict):
    """An ablation job; every field is checked here, and every prompt against the model before the job starts."""

    targets: list[TargetSpec] | None = Field(None, min_length=1, max_length=50,
                                             description="Default: the demo's planted facts (with gold rows).")
    limit: Count = Field(5, ge=1, le=50)
    k: Count = Field(10, ge=1, le=100)
    budgets: list[Budget] = Field([0.5, 1.0, 2.0], min_length=1, max_length=6,
                                  description=f"‖Δθ‖ of each ascent: finite, > 0 and at most {MAX_BUDGET}, distinct.")
    seeds: Count = Field(1, ge=1, le=5)
    random_draws: Count = Field(19, ge=1, le=50)
    methods: list[Selection] = Field([s for s in Selection if s != Selection.GIVEN], min_length=1,
                                     description="Selections to ascend on; 'given' needs example_ids.")

    @field_validator("budgets")
    @classmethod
    def distinct_budgets(cls, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError("budgets must be distinct")
        return value


class JobStatus(BaseModel):
    id: str
    status: str
    progress: float
    targets: int
    error: str | None = None
    warnings: list[str] = Field([], description="Checks this request cannot run (they will read 'not run'), and "
                                "why; said when the job is accepted.")
    verdicts: dict[str, AblationVerdict] = Field({}, description="When done: per tested selection (gradient, "
                                                 "gradient_contrastive, unlearning, given), the one verdict from the "
                                                 "full checklist, each check's status and reason.")
    report: dict | None = None
    plots: list[str] = []


def manager(request: Request) -> JobManager:
    return request.app.state.jobs


def status_of(job) -> JobStatus:
    report = job.report or {}
    plots = [f"/v1/ablations/{job.id}/plots/{name}" for name in report.get("plots", [])]
    return JobStatus(id=job.id, status=job.status, progress=job.done / job.targets if job.targets else 0.0,
                     targets=job.targets, error=job.error, warnings=job.warnings,
                     verdicts=report.get("verdicts", {}), report=job.report, plots=plots)


def demo_facts(session) -> list[Fact] | None:
    """The planted facts (with gold rows) of the index's facts file, else None."""
    path = facts_file(session.manifest) if session.manifest is not None else None
    return None if path is None else [f for f in load_facts(path) if f.gold_rows]


def with_ground_truth(target: Target, facts: list[Fact]) -> Target:
    """A client's target, completed from the planted fact it names (paraphrases, related, gold rows, attribute):
    what the client gave wins."""
    known = next((f for f in facts if f.prompt == target.prompt and f.completion == target.completion), None)
    if known is None:
        return target
    planted = Target.from_fact(known)
    return replace(target, **{key: getattr(planted, key) for key in ("paraphrases", "related", "gold_rows", "attribute")
                              if not getattr(target, key)})


@router.post("/ablations", response_model=JobStatus, status_code=202,
             responses={401: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}})
def start_ablation(body: AblationRequest, _: AdminDep, session: SessionDep, request: Request) -> JobStatus:
    """Start an ablation job on a private copy of the model; 409 while another job runs, 422 when nothing could be
    ascended on; ``warnings`` lists the checks that cannot run."""
    if body.k > len(session):
        raise HTTPException(status_code=422, detail=k_error(body.k, len(session)))
    try:
        settings = AblationSettings(k=body.k, budgets=tuple(body.budgets), seeds=body.seeds,
                                    random_draws=body.random_draws, methods=tuple(body.methods))
    except ValueError as err:
        raise HTTPException(status_code=422, detail=str(err)) from err
    targets, controls = resolve_targets(body, session)
    check_targets(session, targets)  # bad targets fail now (400), not minutes later inside the job
    try:
        check_runnable(known_empty(session, targets, settings), targets, settings)
    except NothingToAblateError as err:
        raise HTTPException(status_code=422, detail=str(err)) from err
    job = manager(request).start(session, targets, settings, controls=controls,
                                 warnings=request_warnings(targets, settings))  # JobBusyError: 409
    return status_of(job)


def resolve_targets(body: AblationRequest, session) -> tuple[list[Target], list[Target] | None]:
    """The request's targets (completed from the planted facts they name) or the demo's, and the pool of unrelated
    prompts; 422 when they cannot be measured as asked."""
    facts = demo_facts(session)
    controls = [Target.from_fact(f) for f in facts] if facts is not None else None
    if body.targets:
        targets = [with_ground_truth(t.to_target(), facts or []) for t in body.targets]
    elif controls is None:
        raise HTTPException(status_code=422, detail="give targets: this index was not built from the demo")
    else:
        targets = controls
    targets = targets[: body.limit]
    if Selection.GIVEN in body.methods and not any(t.example_ids for t in targets):
        raise HTTPException(status_code=422, detail="method 'given' needs example_ids on a target")
    if len(targets) == 1 and not targets[0].unrelated and not facts:
        raise HTTPException(status_code=422, detail="one target needs 'unrelated' prompts to compare with")
    return targets, controls


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
