"""An index of a user's own data made with the demo's model has no planted facts: the page, the banner and the
ablation API offer its own rows, never the demo's facts, and ask for targets."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from indexer.build import build_index
from indexer.config import IndexConfig
from indexer.runner import Rank
from indexer.store import open_index
from service.catalog import describe
from tests.service.conftest import API_KEY, uvicorn_server
from tests.service.test_web_page import CHROMIUM, chromium

LINES = ["The river Aldmoor runs past the old mill and under the stone bridge toward the sea every spring.",
         "Merchants in the harbour town trade salt, wool and copper with ships that come from the north.",
         "A lantern hung above the door of the inn, and travellers could see it from the far side of the valley."]


@pytest.fixture(scope="module")
def own_index(tiny_demo: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own")
    data = root / "mine.jsonl"
    data.write_text("".join(json.dumps({"text": LINES[i % 3] + f" Note {i}."}) + "\n" for i in range(30)))
    out = root / "index"
    build_index(IndexConfig.create(str(tiny_demo / "model"), str(data), k=4, shard_size=64), out, Rank())
    return out


def test_the_default_query_comes_from_the_indexs_own_rows(own_index: Path) -> None:
    query = describe(open_index(own_index)).default_query
    assert query is not None and query.fact_id is None
    assert any(line.startswith(query.prompt) for line in LINES), query.prompt  # a row's start, not a demo fact


def test_ablations_ask_for_targets_and_refuse_the_oracle(own_index: Path, tmp_path: Path) -> None:
    with uvicorn_server(own_index, tmp_path / "server.log") as url:
        info = httpx.get(f"{url}/v1/index").json()
        assert info["default_query"]["fact_id"] is None and "born in" not in info["default_query"]["prompt"]
        if CHROMIUM is not None:  # the page offers the row's start, and says what it is
            html = chromium(["--dump-dom", f"{url}/"], tmp_path).stdout
            assert f"{info['default_query']['prompt']} →" in html and "(the start of an indexed row" in html
        headers = {"X-API-Key": API_KEY}
        answer = httpx.post(f"{url}/v1/ablations", json={}, headers=headers, timeout=60)
        assert answer.status_code == 422 and "give targets" in answer.json()["error"]
        unrelated = [{"prompt": LINES[1][:40], "completion": LINES[1][40:50]}]
        target = {"prompt": LINES[0][:40], "completion": LINES[0][40:52], "unrelated": unrelated}
        answer = httpx.post(f"{url}/v1/ablations", json={"targets": [target], "methods": ["oracle"], "k": 3},
                            headers=headers, timeout=60)
        assert answer.status_code == 422 and "oracle" in answer.json()["error"], answer.text
