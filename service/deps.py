"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from attribution.session import AttributionSession
from service.settings import Settings
from service.state import ServedIndex


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_served(request: Request) -> ServedIndex:
    return request.app.state.served


def get_session(served: Annotated[ServedIndex, Depends(get_served)]) -> AttributionSession:
    return served.current()  # IndexUnavailableError (503) until the index is loaded


def require_api_key(settings: Annotated[Settings, Depends(get_settings)],
                    x_api_key: Annotated[str | None, Header()] = None) -> None:
    """403 when the server has no key, 401 unless the X-API-Key header is the key."""
    if settings.api_key is None:
        raise HTTPException(status_code=403, detail="admin endpoints are disabled: set HEADWATER_API_KEY")
    # Starlette decodes header bytes as latin-1, so this gives back the bytes sent; the key is compared as UTF-8
    # (compare_digest refuses a str that is not ASCII).
    if x_api_key is None or not hmac.compare_digest(x_api_key.encode("latin-1"), settings.api_key.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServedDep = Annotated[ServedIndex, Depends(get_served)]
SessionDep = Annotated[AttributionSession, Depends(get_session)]
AdminDep = Annotated[None, Depends(require_api_key)]
