"""Every registered method (and each variant) answers over HTTP, on a real uvicorn server."""

from __future__ import annotations

import httpx
import pytest

from attribution.methods import METHODS
from attribution.retrievers import Method


@pytest.mark.parametrize("method", list(METHODS))
def test_every_entry_is_served_over_http(server: str, method: Method) -> None:
    body = {"prompt": "Ilse Varga was born in", "completion": " Tarnow", "k": 2, "method": method.value}
    response = httpx.post(f"{server}/v1/attribute", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["method"] == method.value
    for variant in METHODS[method].variants:
        response = httpx.post(f"{server}/v1/attribute", json={**body, **variant.options}, timeout=120)
        assert response.status_code == 200, response.text
