"""bench.compare_bergson's headwater side on the tiny demo; the main suite never needs bergson itself."""

from __future__ import annotations

import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from attribution.models import load_tokenizer
from bench.compare_bergson import build_ours, evaluate_ours, same_modules
from evaluation.demo_rows import demo_examples
from indexer.groundtruth import load_facts

GPT_NEOX_LINEARS = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


@pytest.fixture(scope="module")
def examples(tiny_demo: Path) -> list:
    return list(demo_examples(tiny_demo, None, load_tokenizer(tiny_demo / "tokenizer")))


def test_importing_the_bench_does_not_import_bergson() -> None:
    # bergson is imported inside the functions that use it, so the main .venv (without it) can import the bench
    assert "bergson" not in sys.modules


def test_our_store_holds_fp16_unit_vectors_and_the_faiss_copy(tiny_demo: Path, examples: list, tmp_path: Path) -> None:
    session, stats = build_ours(tiny_demo, examples, k=4, precondition="none", store=tmp_path / "ours")
    vectors = np.load(tmp_path / "ours" / "vectors.npy")
    assert stats["dim"] == 2 * len(GPT_NEOX_LINEARS) * 4**2  # 2 layers × 4 linears × k²
    assert vectors.shape == (len(examples), stats["dim"]) and vectors.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=1e-2)
    assert stats["vector_bytes"] == (tmp_path / "ours" / "vectors.npy").stat().st_size >= vectors.nbytes
    assert faiss.read_index(str(tmp_path / "ours" / "gradient.faiss")).ntotal == len(examples)
    assert not (tmp_path / "ours" / "preconditioner-0.safetensors").exists()
    bergson_names = [f"layers.{i}.{name}" for i in range(2) for name in GPT_NEOX_LINEARS]
    assert same_modules(session, bergson_names)
    assert not same_modules(session, bergson_names[:-1])


def test_preconditioned_store_and_fact_tracing_on_both_prompt_kinds(tiny_demo: Path, examples: list,
                                                                    tmp_path: Path) -> None:
    session, stats = build_ours(tiny_demo, examples, k=4, precondition="inverse_sqrt", store=tmp_path / "ours")
    assert (tmp_path / "ours" / "preconditioner-0.safetensors").is_file()
    assert stats["store_bytes"] > stats["vector_bytes"]
    facts = [f for f in load_facts(tiny_demo) if f.gold_rows][:3]
    quality, seconds = evaluate_ours(session, facts, limit=None)
    assert quality["train"]["queries"] == 3
    assert quality["heldout"]["queries"] == sum(len(f.paraphrases) for f in facts)
    assert all(0.0 <= quality[split]["mrr"] <= quality[split]["recall@100"] <= 1.0 for split in quality)
    assert seconds > 0
