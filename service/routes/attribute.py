"""``POST /v1/attribute``: the influential training examples for a prompt and completion."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from service import queries
from service.deps import ServedDep, SettingsDep
from service.schemas import AttributeRequest, AttributeResponse, ErrorBody

router = APIRouter(prefix="/v1", tags=["attribution"])


@router.post("/attribute", response_model=AttributeResponse,
             responses={400: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def attribute(body: AttributeRequest, served: ServedDep, settings: SettingsDep) -> AttributeResponse:
    """Rank training examples by influence on (gradient) or similarity to (embedding, bm25) the query."""
    return await run_in_threadpool(queries.attribute, served, body, settings)
