"""What the ablation routes call: targets completed from the index's ground truth, checked before a job starts.

What can be known before the job starts is said then: a bad target is refused (400), a request whose every
selection of every target is known to be empty (``bm25`` sharing no word with the target, ``given`` without
example_ids, ``oracle`` without gold rows) is refused (422), and checks that cannot run with these targets and
settings (too few targets or random draws for the test against random to reach p < 0.01, one budget, no paraphrases,
…) are listed in ``warnings``: the job still runs, since its measurements stand, but those checks read *not run* and
the verdict is at best *inconclusive*. When done, ``verdicts`` holds the one verdict per tested selection.
"""

from __future__ import annotations

from dataclasses import replace

from attribution.retrievers import k_error
from attribution.session import AttributionSession
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
from service.errors import NotFoundError, RequestLimitError
from service.jobs import JobManager
from service.schemas import AblationRequest, JobStatus


def start(body: AblationRequest, session: AttributionSession, jobs: JobManager) -> JobStatus:
    """Start an ablation job on a private copy of the model (JobBusyError while another runs); RequestLimitError
    (422) when nothing could be ascended on or the request cannot be measured as asked, ConfigError (400) for a
    target the model cannot measure; the status lists the checks that cannot run."""
    if body.k > len(session):
        raise RequestLimitError(k_error(body.k, len(session)))
    try:
        settings = AblationSettings(k=body.k, budgets=tuple(body.budgets), seeds=body.seeds,
                                    random_draws=body.random_draws, methods=tuple(body.methods))
    except ValueError as err:
        raise RequestLimitError(str(err)) from err
    targets, controls = resolve_targets(body, session)
    check_targets(session, targets)  # bad targets fail now (400), not minutes later inside the job
    try:
        check_runnable(known_empty(session, targets, settings), targets, settings)
    except NothingToAblateError as err:
        raise RequestLimitError(str(err)) from err
    job = jobs.start(session, targets, settings, controls=controls, warnings=request_warnings(targets, settings))
    return status_of(job)


def status(jobs: JobManager, job_id: str) -> JobStatus:
    """A job's status, progress and, when done, its report and plot URLs (NotFoundError: no such job)."""
    job = jobs.jobs.get(job_id)
    if job is None:
        raise NotFoundError(f"no ablation job {job_id}")
    return status_of(job)


def status_of(job) -> JobStatus:
    report = job.report or {}
    plots = [f"/v1/ablations/{job.id}/plots/{name}" for name in report.get("plots", [])]
    return JobStatus(id=job.id, status=job.status, progress=job.done / job.targets if job.targets else 0.0,
                     targets=job.targets, error=job.error, warnings=job.warnings,
                     verdicts=report.get("verdicts", {}), report=job.report, plots=plots)


def demo_facts(session: AttributionSession) -> list[Fact] | None:
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


def resolve_targets(body: AblationRequest, session: AttributionSession) -> tuple[list[Target], list[Target] | None]:
    """The request's targets (completed from the planted facts they name) or the demo's, and the pool of unrelated
    prompts; 422 when they cannot be measured as asked."""
    facts = demo_facts(session)
    controls = [Target.from_fact(f) for f in facts] if facts is not None else None
    if body.targets:
        targets = [with_ground_truth(t.to_target(), facts or []) for t in body.targets]
    elif controls is None:
        raise RequestLimitError("give targets: this index was not built from the demo")
    else:
        targets = controls
    targets = targets[: body.limit]
    if Selection.GIVEN in body.methods and not any(t.example_ids for t in targets):
        raise RequestLimitError("method 'given' needs example_ids on a target")
    if len(targets) == 1 and not targets[0].unrelated and not facts:
        raise RequestLimitError("one target needs 'unrelated' prompts to compare with")
    return targets, controls
