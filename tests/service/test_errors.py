"""Errors map to a status by kind: the client's fault 4xx, an index or model failure 503, anything else 500."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from attribution.batching import ContextLengthError, EmptyCompletionError
from attribution.errors import ConfigError, ModelLoadError, OutOfMemoryError
from indexer.config import IndexMismatchError
from indexer.errors import CorruptShardError, IndexWriteError, MissingFieldError, StepRangeError, UnknownSourceError
from service.errors import IndexUnavailableError, NoMatchError, NotFoundError, RequestLimitError
from service.jobs import JobBusyError
from service.main import INTERNAL, create_app, status_for
from service.settings import Settings
from tests.service.conftest import API_KEY, uvicorn_server

KINDS = [
    (ConfigError("k must be positive"), 400),
    (ContextLengthError("the model takes at most 64 tokens"), 400),
    (EmptyCompletionError("the completion is empty"), 400),
    (StepRangeError("step_min 5 is past step_max 2"), 400),
    (UnknownSourceError("no such data"), 400),
    (IndexMismatchError("built with tokenizer a, now b"), 400),  # at request time; a reload wraps it (503)
    (RequestLimitError("k must be between 1 and 10"), 422),
    (NoMatchError("unknown pile_set_name 'x'; this index holds 'Planted Facts'"), 422),
    (NotFoundError("no example 7 in this index"), 404),
    (JobBusyError("ablation job abc is still running"), 409),
    (IndexUnavailableError("could not load the index"), 503),
    (ModelLoadError("no model at /nowhere"), 503),
    (CorruptShardError("vectors.npy is truncated"), 503),
    (MissingFieldError("a record lacks 'text'"), 503),
    (IndexWriteError("disk full"), 503),
    (OutOfMemoryError("out of memory opening the index (MemoryError: ); give the process more memory"), 503),
    (RuntimeError("a bug"), 500),
    (KeyError("model"), 500),
]


@pytest.mark.parametrize(("err", "status"), KINDS, ids=[type(e).__name__ for e, _ in KINDS])
def test_status_table(err: Exception, status: int) -> None:
    assert status_for(err) == status


@pytest.fixture
def app(tmp_path: Path):
    """An app that loads nothing, with one route per error kind."""
    app = create_app(Settings(index=tmp_path / "no-index", api_key=API_KEY, allowed_hosts=["testserver"]), load=False)
    for number, (err, _) in enumerate(KINDS):
        app.add_api_route(f"/fail/{number}", raiser(err))
    return app


def raiser(err: Exception):
    def fail() -> None:
        raise err
    return fail


@pytest.mark.parametrize("number", range(len(KINDS)), ids=[type(e).__name__ for e, _ in KINDS])
def test_every_kind_is_a_json_error(app, number: int, caplog: pytest.LogCaptureFixture) -> None:
    err, status = KINDS[number]
    with caplog.at_level(logging.INFO, logger="service.main"), TestClient(app) as client:
        response = client.get(f"/fail/{number}")
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"} and "Traceback" not in response.text
    if status == 500:  # no internals to the client; the traceback goes to the log
        assert body["error"] == INTERNAL
        assert any(r.exc_info and r.exc_info[1] is err for r in caplog.records)
    else:
        assert str(err) in body["error"]
    if status == 503:  # the cause is logged
        assert any(str(err) in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_not_loaded_yet_is_503(app) -> None:
    with TestClient(app) as client:
        for path in ("/v1/index", "/v1/examples/1", "/v1/steps/1"):
            response = client.get(path)
            assert response.status_code == 503 and "still loading" in response.json()["error"]
        response = client.post("/v1/attribute", json={"prompt": "Ilse Varga was born in"})
        assert response.status_code == 503 and "still loading" in response.json()["error"]


def test_a_mismatch_on_reload_is_503(app, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    def mismatched(path, device):
        raise IndexMismatchError(f"{path}: built with tokenizer aaaa, but the model now has bbbb; rebuild the index")

    monkeypatch.setattr("service.state.open_index", mismatched)
    with caplog.at_level(logging.ERROR, logger="service.main"), TestClient(app) as client:
        response = client.post("/v1/admin/reload", headers={"X-API-Key": API_KEY})
    assert response.status_code == 503
    assert "could not load the index" in response.json()["error"] and "tokenizer aaaa" in response.json()["error"]
    assert any("IndexMismatchError" in r.getMessage() for r in caplog.records)  # the cause, by kind


@pytest.fixture(scope="module")
def reloadable(tiny_index: Path, tmp_path_factory) -> tuple[str, Path, Path]:
    """Its own server on a copy of the tiny index (the shared one must stay intact): URL, manifest, log."""
    copy = tmp_path_factory.mktemp("reloadable") / "index"
    shutil.copytree(tiny_index, copy, symlinks=True)
    log = copy.parent / "uvicorn.log"
    with uvicorn_server(copy, log) as url:
        yield url, (copy / "current" / "manifest.json"), log


def test_a_broken_index_on_reload_is_503_and_the_old_build_keeps_serving(reloadable) -> None:
    url, manifest_path, log = reloadable
    original = manifest_path.read_text()
    reload = {"url": f"{url}/v1/admin/reload", "headers": {"X-API-Key": API_KEY}, "timeout": 120}
    try:
        manifest = json.loads(original)
        manifest_path.write_text(json.dumps({**manifest, "tokenizer_hash": "0000"}))
        mismatch = httpx.post(**reload)
        assert mismatch.status_code == 503, mismatch.text
        assert "tokenizer 0000" in mismatch.json()["error"] and "still serving" in mismatch.json()["error"]
        manifest_path.write_text("{not json")
        corrupt = httpx.post(**reload)
        assert corrupt.status_code == 503, corrupt.text
        assert "manifest.json" in corrupt.json()["error"] and "still serving" in corrupt.json()["error"]
        assert httpx.get(f"{url}/v1/health").json() == {"status": "ok", "ready": True, "examples": 192}
        served = httpx.post(f"{url}/v1/attribute", json={"prompt": "Ilse Varga was born in", "completion": " Tarnow",
                                                         "k": 3, "method": "bm25"}, timeout=120)
        assert served.status_code == 200 and len(served.json()["results"]) == 3
        logged = log.read_text()
        assert "IndexMismatchError" in logged and "CorruptShardError" in logged  # the causes, in the log
    finally:
        manifest_path.write_text(original)
    assert httpx.post(**reload).status_code == 200  # fixed: the next reload serves it again
