"""Every vector-store kind is reachable from the CLI (``index build --store``) and served over HTTP with the same
answers as the default FAISS store; a kind this machine cannot use is a clear error before any work."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from attribution.stores import STORES, StoreKind
from headwater.cli import app
from indexer.manifest import read_manifest, resolve_build
from indexer.store import open_index
from tests.service.conftest import uvicorn_server

QUERY = {"prompt": "Ilse Varga was born in", "completion": " Tarnow", "k": 8, "method": "gradient"}


def build_args(demo: Path, out: Path, kind: StoreKind) -> list[str]:
    """The flags of the shared ``tiny_index`` fixture, with ``--store kind``."""
    return ["index", "build", "--model", str(demo / "model"), "--data", str(demo / "data" / "document"),
            "--out", str(out), "--k", "4", "--window", "16", "--shard-size", "64", "--store", kind.value]


@pytest.mark.parametrize("kind", [k for k in STORES if k is not StoreKind.FAISS])
def test_a_store_kind_is_built_by_the_cli_and_served_like_faiss(kind: StoreKind, tiny_demo: Path, tiny_index: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "index"
    result = CliRunner().invoke(app, build_args(tiny_demo, out, kind))
    why = STORES[kind].unavailable()
    if why is not None:
        assert result.exit_code == 2 and f"--store {kind.value}" in result.output, result.output
        assert not out.exists()  # refused before anything is written
        return
    assert result.exit_code == 0, result.output
    manifest = read_manifest(resolve_build(out))
    assert manifest.config.storage.store is kind
    expected = open_index(tiny_index).attribute(QUERY["prompt"], QUERY["completion"], k=8, method="gradient")
    with uvicorn_server(out, tmp_path / "uvicorn.log") as url:
        answer = httpx.post(f"{url}/v1/attribute", json=QUERY, timeout=120)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["example_id"] for r in results] == [r.example_id for r in expected]
    assert [r["score"] for r in results] == pytest.approx([r.score for r in expected], abs=1e-5)


def test_an_unknown_store_is_refused(tiny_demo: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*build_args(tiny_demo, tmp_path / "x", StoreKind.FAISS)[:-1], "lucene"])
    assert result.exit_code == 2 and "store must be one of ['faiss', 'memmap', 'faiss-gpu']" in result.output
    assert not (tmp_path / "x").exists()
