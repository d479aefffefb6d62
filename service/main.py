"""The FastAPI application: lifespan loads the index once; routers per resource; JSON errors only.

Run it with ``headwater serve --index DIR`` (uvicorn) or ``uvicorn service.main:app``
with ``HEADWATER_INDEX`` set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from attribution.batching import BatchMemoryError
from attribution.errors import ConfigError, DataFormatError, HeadwaterError, ModelLoadError
from indexer.errors import IndexWriteError, StepRangeError, UnknownSourceError
from service.batcher import GradientBatcher
from service.errors import IndexUnavailableError, NoMatchError, NotFoundError, RequestLimitError
from service.jobs import JobBusyError, JobManager
from service.routes import ablations, admin, attribute, data
from service.settings import Settings
from service.state import ServedIndex

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
INTERNAL = "internal error; see the server log"

STATUS: dict[type[Exception], int] = {
    # The client's fault: a bad setting or range (ContextLengthError, EmptyCompletionError, ... are
    # ConfigErrors), more than this server allows, or a query that can match nothing in this index.
    RequestLimitError: 422,
    NoMatchError: 422,
    ConfigError: 400,
    StepRangeError: 400,
    UnknownSourceError: 400,
    NotFoundError: 404,
    JobBusyError: 409,
    # The served index or model failed (CorruptShardError and MissingFieldError are DataFormatErrors). A load
    # or reload raises every failure, IndexMismatchError included, as IndexUnavailableError.
    IndexUnavailableError: 503,
    ModelLoadError: 503,
    DataFormatError: 503,
    IndexWriteError: 503,
    BatchMemoryError: 503,  # a query or job ran out of memory: the server keeps serving
}
"""Status of each error kind; an error takes the entry of its nearest class. Any other exception is a 500."""


def status_for(err: Exception) -> int:
    """The HTTP status an error maps to (500 for a kind not in :data:`STATUS`)."""
    return next((STATUS[cls] for cls in type(err).__mro__ if cls in STATUS), 500)


def causes(err: BaseException) -> str:
    """The error and the chain of errors that caused it, for the log."""
    parts = []
    while err is not None:
        parts.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return " <- ".join(parts)


class InternalErrors:
    """ASGI middleware turning an unexpected exception into a logged traceback and a JSON 500.

    (Starlette's own 500 handler re-raises after answering, so the server would log it twice.)"""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for a JSON answer: let the server close the connection
                raise
            await JSONResponse(status_code=500, content={"error": INTERNAL})(scope, receive, send)


class BodyLimit:
    """ASGI middleware refusing request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(status_code=413, detail="request body too large")
            return message

        return await self.app(scope, limited_receive, send)

    async def _refuse(self, send) -> None:
        body = f'{{"error": "request body too large (limit {self.limit} bytes)"}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None, load: bool = True,
               on_ready: Callable[[ServedIndex], None] | None = None) -> FastAPI:
    """Build the app; with ``load`` the lifespan loads the index before the first request, then calls
    ``on_ready`` (``headwater serve`` prints a query to try). On shutdown the ablation jobs' files are removed."""
    settings = settings or Settings()
    served = ServedIndex(settings.index, settings.device)
    if settings.batch_window_ms > 0:
        served.batcher = GradientBatcher(served, window_s=settings.batch_window_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load:
            served.load()
            if on_ready is not None:
                on_ready(served)
        try:
            yield
        finally:
            app.state.jobs.close()
            if served.batcher is not None:
                served.batcher.close()

    # API docs (/docs, /redoc) with Swagger UI and ReDoc served from the fastapi-offline package, not a CDN
    app = FastAPIOffline(title="headwater", version="0.1.0", lifespan=lifespan,
                         description="Which training examples drive this language model's output?")
    app.state.settings, app.state.served, app.state.jobs = settings, served, JobManager()
    app.include_router(attribute.router)
    app.include_router(data.router)
    app.include_router(admin.router)
    app.include_router(ablations.router)

    @app.exception_handler(HeadwaterError)
    @app.exception_handler(JobBusyError)
    async def known_error(request: Request, err: Exception) -> JSONResponse:
        status = status_for(err)
        if status == 500:
            log.error("unmapped error on %s %s", request.method, request.url.path, exc_info=err)
            return JSONResponse(status_code=500, content={"error": INTERNAL})
        message = str(err)
        if status >= 500:
            log.error("%s %s -> %d: %s", request.method, request.url.path, status, causes(err))
            if not isinstance(err, IndexUnavailableError):
                message = f"the served index or model failed ({type(err).__name__}): {err}"
        return JSONResponse(status_code=status, content={"error": message})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=err.status_code, content={"error": str(err.detail)})

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return JSONResponse(status_code=422, content={"error": problems or "invalid request"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (STATIC / "index.html").read_text(encoding="utf-8")

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(InternalErrors)
    return app


def app() -> FastAPI:  # uvicorn --factory service.main:app
    return create_app()
