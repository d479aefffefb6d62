"""The FastAPI application: lifespan loads the index once; routers per resource; JSON errors only.

Run it with ``headwater serve --index DIR`` (uvicorn) or ``uvicorn service.main:app``
with ``HEADWATER_INDEX`` set.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from attribution.batching import BatchMemoryError
from attribution.errors import ConfigError, DataFormatError, HeadwaterError, ModelLoadError, OutOfMemoryError
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
    OutOfMemoryError: 503,
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


async def refuse(send, status: int, message: str) -> None:
    """Answer ``{"error": message}`` straight from a middleware, closing the connection after it."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware refusing request bodies over ``limit`` bytes with 413, declared or streamed, and bodies not
    fully arrived ``timeout_s`` seconds after the headers with 408 (a stalled body would hold its connection open).

    A response sent before the body has fully arrived closes the connection: what is left of it is never read."""

    def __init__(self, app, limit: int, timeout_s: float) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await refuse(send, 413, f"request body too large (limit {self.limit} bytes)")
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        received, done = 0, declared in (None, b"0") and b"transfer-encoding" not in headers

        async def limited_receive():
            nonlocal received, done
            if done:  # after the body only http.disconnect comes, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                raise HTTPException(status_code=408, detail=f"request body did not arrive within {self.timeout_s:g} "
                                                            "s (body_timeout_s)") from None
            done = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(status_code=413, detail="request body too large")
            return message

        async def closing_send(message) -> None:
            if message["type"] == "http.response.start" and not done:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        return await self.app(scope, limited_receive, closing_send)


class AllowedHosts:
    """ASGI middleware answering 400 to a Host header not in ``allowed_hosts``: a page elsewhere whose name was made
    to point at this machine (DNS rebinding) reaches the server with its own name, and is refused."""

    def __init__(self, app, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if self.settings.serves_host(host):
            return await self.app(scope, receive, send)
        await refuse(send, 400, f"host {host[:100]!r} is not served here: add it to allowed_hosts "
                                "(HEADWATER_ALLOWED_HOSTS, comma-separated; '*' serves any)")


FIXED_HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff")]
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.DOTALL | re.IGNORECASE)


def content_policy(html: bytes) -> bytes:
    """The Content-Security-Policy of an HTML page: everything from this origin only, no framing, and of inline
    scripts only the page's own (by hash). Inline styles stay allowed: the page sets bar widths and heat colours in
    style attributes, and ReDoc injects its styles; so do workers made from a blob (ReDoc's search)."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'"
                      for s in INLINE_SCRIPT.findall(html))
    return (f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'").encode()


class SecurityHeaders:
    """ASGI middleware adding X-Frame-Options and X-Content-Type-Options to every response and a
    Content-Security-Policy (:func:`content_policy`) to every HTML page, which it holds until complete to hash."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict | None = None
        chunks: list[bytes] = []

        async def secured_send(message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *FIXED_HEADERS]}
                if dict(message["headers"]).get(b"content-type", b"").startswith(b"text/html"):
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = b"".join(chunks)
                await send({**held, "headers": [*held["headers"], (b"content-security-policy", content_policy(body))]})
                message = {"type": "http.response.body", "body": body}
            await send(message)

        return await self.app(scope, receive, secured_send)


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
    app.state.model_queries = attribute.ClientSlots(settings.max_model_queries_per_client)
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

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(AllowedHosts, settings=settings)
    app.add_middleware(InternalErrors)
    app.add_middleware(SecurityHeaders)  # outermost: on every answer, a 500 or a refused host's included
    return app


def app() -> FastAPI:  # uvicorn --factory service.main:app
    return create_app()
