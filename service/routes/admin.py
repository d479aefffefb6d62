"""``GET``/``HEAD /v1/health`` and ``POST /v1/admin/reload`` (API key)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from service import queries
from service.deps import AdminDep, ServedDep, SettingsDep
from service.schemas import ErrorBody, Health, IndexInfo

router = APIRouter(prefix="/v1", tags=["admin"])


@router.get("/health", response_model=Health)
def health(served: ServedDep) -> Health:
    """Liveness (the process answers) and readiness (an index is loaded)."""
    session = served.session
    return Health(status="ok", ready=session is not None, examples=len(session) if session else None)


@router.head("/health", include_in_schema=False)
def health_head() -> Response:
    """Liveness for probes that send HEAD: 200, no body (GET says whether an index is loaded)."""
    return Response(media_type="application/json")


@router.post("/admin/reload", response_model=IndexInfo,
             responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def reload(_: AdminDep, served: ServedDep, settings: SettingsDep) -> IndexInfo:
    """Load the newly published build; requests keep being served by the old one until it is ready, and
    by the old one still when the new one fails to load (503)."""
    session = await run_in_threadpool(served.load)
    return queries.index_info(session, settings)
