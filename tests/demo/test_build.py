"""The staged demo build: layout, ground truth, checkpoints, skipping and resuming."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from attribution.models import load_model
from demo.build import build_demo
from evaluation.demo_config import TINY, DemoConfig, preset
from indexer.groundtruth import gold_rows, load_facts
from indexer.megatron import MegatronDataset
from indexer.textfiles import read_jsonl


def test_layout_and_training_record(tiny_demo: Path) -> None:
    for rel in ("corpus/00.jsonl.zst", "corpus/01.jsonl.zst", "facts.jsonl", "tokenizer/tokenizer.json",
                "data/document.bin", "data/document.idx", "data/layout.json", "model/model.safetensors",
                "model/adam_state.safetensors", "model/training.json", "model/revisions/step0/config.json"):
        assert (tiny_demo / rel).exists(), rel
    info = json.loads((tiny_demo / "model" / "training.json").read_text())
    assert info["final_revision"] == f"step{TINY.steps}"
    assert sorted(p.name for p in (tiny_demo / "model" / "revisions").iterdir()) == sorted(
        r for r in info["revisions"] if r != info["final_revision"])
    for split in ("train_prompts", "heldout_paraphrases"):
        assert 0.0 <= info["fact_accuracy"][split]["whole_completion"] <= info["fact_accuracy"][split]["first_token"]
    assert info["loss_last_50"] < info["loss_first"]
    assert not (tiny_demo / ".staging").exists()


def test_corpus_has_real_sources_and_planted_facts(tiny_demo: Path) -> None:
    names = {e.metadata["pile_set_name"] for e in read_jsonl(tiny_demo / "corpus" / "*.jsonl.zst")}
    assert names == {"Gutenberg (PG-19)", "Bible (KJV)", "Python Docs", "Planted Facts"}
    facts = load_facts(tiny_demo)
    assert len(facts) == TINY.people * 4
    assert all(len(f.doc_ids) == TINY.docs_per_fact and len(f.paraphrases) >= 2 for f in facts)


def test_rows_are_megatron_data_and_gold_rows_state_the_fact(tiny_demo: Path) -> None:
    layout = json.loads((tiny_demo / "data" / "layout.json").read_text())
    data = MegatronDataset(tiny_demo / "data" / "document")
    assert len(data) == layout["num_rows"] == TINY.steps * TINY.batch_size
    assert {len(data[i]) for i in range(len(data))} == {TINY.seq_len + 1}
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_demo / "tokenizer"))
    row_docs = json.loads((tiny_demo / "data" / "row_docs.json").read_text())
    checked = 0
    for fact in load_facts(tiny_demo):
        for row in gold_rows(fact.doc_ids, row_docs):
            text = tokenizer.decode(data[row].tolist())
            assert fact.person in text and fact.value in text
            checked += 1
    assert checked > 10


def test_checkpoints_load_by_revision(tiny_demo: Path) -> None:
    final = load_model(tiny_demo / "model")
    same = load_model(tiny_demo / "model", revision=f"step{TINY.steps}")
    early = load_model(tiny_demo / "model", revision="step0")
    name, weight = next(iter(final.state_dict().items()))
    assert torch.equal(weight, same.state_dict()[name])
    assert not torch.equal(weight, early.state_dict()[name])
    assert final.config.use_parallel_residual and final.config.rope_parameters["partial_rotary_factor"] == 0.25
    assert not final.config.tie_word_embeddings and not final.training


def test_adam_state_matches_the_model(tiny_demo: Path) -> None:
    state = load_file(str(tiny_demo / "model" / "adam_state.safetensors"))
    model = load_model(tiny_demo / "model")
    for name, param in model.named_parameters():
        assert state[f"{name}.exp_avg_sq"].shape == param.shape
        assert (state[f"{name}.exp_avg_sq"] >= 0).all()


def test_rerun_skips_everything(tiny_demo: Path) -> None:
    weights = tiny_demo / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    build_demo(tiny_demo, TINY)
    assert weights.stat().st_mtime_ns == before


def test_killed_build_resumes_to_the_same_model_and_config_changes_rebuild(tmp_path: Path, tiny_demo: Path) -> None:
    class Killed(Exception):
        pass

    def die(step: int, loss: float) -> None:
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        build_demo(tmp_path, TINY, on_step=die)
    assert not (tmp_path / "model").exists()  # nothing half-written under the final name
    corpus_mtime = (tmp_path / "corpus" / "00.jsonl.zst").stat().st_mtime_ns
    build_demo(tmp_path, TINY)
    assert (tmp_path / "corpus" / "00.jsonl.zst").stat().st_mtime_ns == corpus_mtime
    ours = load_file(str(tmp_path / "model" / "model.safetensors"))
    reference = load_file(str(tiny_demo / "model" / "model.safetensors"))
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)  # deterministic given the seed

    build_demo(tmp_path, replace(TINY, steps=TINY.steps + 4))
    assert (tmp_path / "corpus" / "00.jsonl.zst").stat().st_mtime_ns == corpus_mtime
    assert json.loads((tmp_path / "data" / "layout.json").read_text())["num_steps"] == TINY.steps + 4


@pytest.mark.parametrize(
    "overrides",
    [{"steps": 0}, {"people": -1}, {"docs_per_fact": 5}, {"vocab_size": 100}, {"hidden_size": 30, "num_heads": 4}],
)
def test_bad_settings_are_refused(overrides: dict) -> None:
    from attribution.errors import ConfigError

    with pytest.raises(ConfigError):
        DemoConfig(**overrides)


def test_unknown_preset() -> None:
    from attribution.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown demo preset 'huge'"):
        preset("huge")
