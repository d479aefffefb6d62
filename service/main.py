"""The FastAPI application: lifespan loads the index once; routers per resource; JSON errors only.

Run it with ``headwater serve --index DIR`` (uvicorn) or ``uvicorn service.main:app``
with ``HEADWATER_INDEX`` set.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from attribution.errors import HeadwaterError
from service.jobs import JobManager
from service.routes import ablations, admin, attribute, data
from service.settings import Settings
from service.state import ServedIndex

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


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


def create_app(settings: Settings | None = None, load: bool = True) -> FastAPI:
    """Build the app; with ``load`` the lifespan loads the index before the first request."""
    settings = settings or Settings()
    served = ServedIndex(settings.index, settings.device)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load:
            served.load()
        yield

    app = FastAPI(title="headwater", version="0.1.0", lifespan=lifespan,
                  description="Which training examples drive this language model's output?")
    app.state.settings, app.state.served, app.state.jobs = settings, served, JobManager()
    app.include_router(attribute.router)
    app.include_router(data.router)
    app.include_router(admin.router)
    app.include_router(ablations.router)

    @app.exception_handler(HeadwaterError)
    async def headwater_error(request: Request, err: HeadwaterError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": str(err)})

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
    return app


def app() -> FastAPI:  # uvicorn --factory service.main:app
    return create_app()
