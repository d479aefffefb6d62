"""A real uvicorn server on a free local port, serving a small index built in the test session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key-123"


@pytest.fixture(scope="session")
def served_index(tiny_index: Path) -> Path:
    return tiny_index


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def uvicorn_server(index: Path, log_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Base URL of a uvicorn process serving ``index`` (with ``env`` added to its environment), stopped on exit.

    Its log goes to ``log_path`` (a pipe nobody reads would fill up and block the server); on a clean exit
    the log must show no traceback (no unhandled errors)."""
    port = free_port()
    log = log_path.open("w")
    env = {**os.environ, "HEADWATER_INDEX": str(index), "HEADWATER_API_KEY": API_KEY,
           "HEADWATER_MAX_BODY_BYTES": "20000",
           # the concurrency tests send up to 8 model-running queries at once, all from 127.0.0.1
           "HEADWATER_MAX_MODEL_QUERIES_PER_CLIENT": "32", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.main:app", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).json().get("ready"):
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise RuntimeError("uvicorn did not become ready in 120 s")
        yield url
        assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]  # no unhandled errors
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_ablation_job(url: str, body: dict, seconds: float = 300) -> dict:
    """POST an ablation job, wait for it to end (at most ``seconds``), and return its last status."""
    started = httpx.post(f"{url}/v1/ablations", json=body, headers={"X-API-Key": API_KEY}, timeout=60)
    assert started.status_code == 202, started.text
    job, deadline = started.json(), time.time() + seconds
    while job["status"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.5)
        job = httpx.get(f"{url}/v1/ablations/{job['id']}").json()
    return job


@pytest.fixture(scope="session")
def server(served_index: Path, tmp_path_factory) -> Iterator[str]:
    """Base URL of a uvicorn process serving ``served_index``; stopped at the end of the session."""
    with uvicorn_server(served_index, tmp_path_factory.mktemp("server-log") / "uvicorn.log") as url:
        yield url
