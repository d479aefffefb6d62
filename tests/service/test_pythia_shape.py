"""Pythia's real shape, end to end with default settings: a random GPT-NeoX of Pythia-14m's config (6 layers, width
128, a 50,304-token vocabulary, 2,048-token context) and 2,049-token Megatron rows; index build → uvicorn → attribute
(every method) → an ablation job. What this guards: the B × T × V logits (13 GB for a default batch) never exist,
every row of a dataset without a layout is indexed, and nothing answers 500."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from typer.testing import CliRunner

from attribution.models import load_tokenizer
from attribution.retrievers import Query
from headwater.cli import app
from indexer.megatron import write_dataset
from indexer.store import open_index
from tests.service.conftest import run_ablation_job, uvicorn_server

PYTHIA_14M = dict(vocab_size=50304, hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
                  intermediate_size=512, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
                  tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
ROWS = 3


@pytest.fixture(scope="module")
def pythia_index(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of 3 rows of 2,049 tokens (no layout.json: 990-row Pythia-style data has none) on the random model,
    built with every index setting at its default."""
    root = tmp_path_factory.mktemp("pythia-shape")
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_14M))
    model.save_pretrained(root / "model")
    shutil.copytree(tiny_demo / "tokenizer", root / "model", dirs_exist_ok=True)  # ids below its vocabulary
    vocab = len(load_tokenizer(tiny_demo / "tokenizer"))
    rows = np.random.default_rng(0).integers(1, vocab, size=(ROWS, 2049)).astype(np.uint16)
    (root / "data").mkdir()
    write_dataset(root / "data" / "document", list(rows), dtype=np.uint16)
    result = CliRunner().invoke(app, ["index", "build", "--model", str(root / "model"), "--data",
                                      str(root / "data" / "document"), "--out", str(root / "index")])
    assert result.exit_code == 0, result.output
    return root / "index"


def test_every_row_is_indexed_at_the_default_settings(pythia_index: Path) -> None:
    session = open_index(pythia_index)
    config = session.manifest.config
    assert session.ids.tolist() == list(range(ROWS))  # 3 rows at 1,024 per step: one partial step, all of it
    assert config.attribution.sketch.k == 16 and config.attribution.curvature.kind.value == "block"
    assert session.encoder.dim == 6 * 4 * 16 * 16
    assert [m["step"] for m in session.metadata] == [0] * ROWS


def test_long_rows_are_embedded_whole_as_chunks_and_found_by_their_last(pythia_index: Path) -> None:
    """MiniLM reads ~256 word pieces: a 2,049-token row is embedded as 11 chunks, and text from its end finds it,
    with that chunk's token span (before chunking, only its first tenth was embedded)."""
    session = open_index(pythia_index)
    chunks = np.load(next(pythia_index.glob("current/embeddings.npy")), mmap_mode="r")
    assert chunks.shape == (ROWS, 11, 384)
    tokenizer = session.encoder.tokenizer
    row_tokens = tokenizer.encode(session.texts[2], add_special_tokens=False)
    tail = tokenizer.decode(row_tokens[-150:])
    hits = session.retriever("embedding").search(Query(tail[:-10], tail[-10:]), 1)
    assert hits[0].row == 2 and hits[0].token_span is not None and hits[0].token_span[0] > 1800


def test_served_at_pythia_shape_every_method_answers_and_an_ablation_runs(pythia_index: Path,
                                                                          tmp_path: Path) -> None:
    texts = open_index(pythia_index).texts
    query = {"prompt": texts[0][:80], "completion": texts[0][80:90]}  # words of a row, so BM25 has terms to match
    unrelated = [{"prompt": texts[1][:80], "completion": texts[1][80:90]}]
    with uvicorn_server(pythia_index, tmp_path / "uvicorn.log", env={"HEADWATER_MAX_BODY_BYTES": "200000"}) as url:
        reason = httpx.get(f"{url}/v1/index").json()["default_method_reason"]
        assert reason.startswith("auto: an unlearning query re-scores up to 3 rows of ~2,048 tokens")  # timed at load
        for method in ("gradient", "bm25", "embedding", "hybrid", "unlearning"):
            response = httpx.post(f"{url}/v1/attribute", json={**query, "k": 2, "method": method}, timeout=300)
            assert response.status_code == 200, (method, response.text)
            assert len(response.json()["results"]) == 2, (method, response.json())
        body = {"targets": [{**query, "unrelated": unrelated}], "k": 1, "budgets": [0.5],
                "random_draws": 1, "methods": ["gradient", "random"]}
        job = run_ablation_job(url, body, seconds=600)
        assert job["status"] == "done", job
