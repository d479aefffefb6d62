"""``POST /v1/attribute``: the influential training examples for a prompt and completion."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from attribution.methods import METHODS
from attribution.retrievers import Method
from service import queries
from service.defaults import AUTO
from service.deps import ServedDep, SettingsDep
from service.schemas import AttributeRequest, AttributeResponse, ErrorBody
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["attribution"])


def runs_model(body: AttributeRequest, settings: Settings) -> bool:
    """Whether the query runs the shared model: its method uses it (``auto`` picks gradient or unlearning, both do),
    or the model must first write the completion."""
    method = body.method or (None if settings.default_method == AUTO else Method(settings.default_method))
    return body.completion is None or method is None or METHODS[method].uses_model


class ClientSlots:
    """Queries that run the model, in flight per client address, held to ``max_model_queries_per_client``: they
    take turns on one model lock and need no key, so one client could otherwise keep the CPU busy for everyone.

    Used from the event loop only, so the counts need no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight: Counter[str] = Counter()

    @contextmanager
    def hold(self, client: str) -> Iterator[None]:
        """One slot of ``client`` while the block runs (released however it ends); 429 when none is free."""
        if self.in_flight[client] >= self.limit:
            raise HTTPException(status_code=429, detail=f"this client already has {self.limit} queries running the "
                                f"model (max_model_queries_per_client): wait for one to finish")
        self.in_flight[client] += 1
        try:
            yield
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]


def client_slots(request: Request) -> ClientSlots:
    """The app's :class:`ClientSlots` (``create_app`` makes it)."""
    return request.app.state.model_queries


@router.post("/attribute", response_model=AttributeResponse,
             responses={400: {"model": ErrorBody}, 422: {"model": ErrorBody}, 429: {"model": ErrorBody},
                        503: {"model": ErrorBody}})
async def attribute(body: AttributeRequest, served: ServedDep, settings: SettingsDep,
                    request: Request) -> AttributeResponse:
    """Rank training examples by influence on (gradient) or similarity to (embedding, bm25) the query."""
    if not runs_model(body, settings):
        return await run_in_threadpool(queries.attribute, served, body, settings)
    client = request.client.host if request.client else "unknown"
    with client_slots(request).hold(client):
        return await run_in_threadpool(queries.attribute, served, body, settings)
