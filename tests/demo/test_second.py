"""The second case: built differently from the demo (text, fact templates, names, size, seed), yet as usable."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, replace
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from attribution.errors import ConfigError
from demo.build import build_demo
from evaluation.corpus import SOURCES
from evaluation.demo_config import FORMAT_VERSION, SECOND, TINY_SECOND, DemoConfig, preset
from evaluation.planted_facts import TEMPLATE_SETS, plant_facts
from indexer.groundtruth import load_facts
from indexer.megatron import MegatronDataset
from indexer.textfiles import read_jsonl

DEFAULT = DemoConfig()


@pytest.fixture(scope="module")
def tiny_second(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-second")
    build_demo(out, TINY_SECOND)
    return out


def corpus_text(out: Path) -> str:
    return "\n".join(e.text for e in read_jsonl(out / "corpus" / "*.jsonl.zst"))


def test_second_case_builds_with_its_own_settings(tiny_second: Path) -> None:
    info = json.loads((tiny_second / "model" / "training.json").read_text())
    assert DemoConfig(**info["config"]) == TINY_SECOND  # the sources tuple survives the JSON round trip
    data = MegatronDataset(tiny_second / "data" / "document")
    assert len(data) == TINY_SECOND.steps * TINY_SECOND.batch_size
    assert {len(data[i]) for i in range(len(data))} == {TINY_SECOND.seq_len + 1}
    assert info["loss_last_50"] < info["loss_first"]
    facts = load_facts(tiny_second)
    assert len(facts) == TINY_SECOND.people * 4
    assert {f.attribute for f in facts} == {"instrument", "pet", "river", "colour"}
    assert all(len(f.doc_ids) == 2 and len(f.paraphrases) == 3 for f in facts)
    assert preset("second") == SECOND and preset("tiny-second", steps=8).steps == 8


def test_sources_templates_names_and_sizes_differ_from_the_demo(tiny_second: Path) -> None:
    subsets = {e.metadata["pile_set_name"] for e in read_jsonl(tiny_second / "corpus" / "*.jsonl.zst")}
    assert subsets == {"Python Stdlib Docstrings", "NumPy Docs", "Planted Facts"}
    assert not {SOURCES[s].pile_set_name for s in DEFAULT.sources} & subsets
    assert not set(DEFAULT.sources) & set(SECOND.sources)
    ours, theirs = TEMPLATE_SETS[SECOND.facts], TEMPLATE_SETS[DEFAULT.facts]
    sentences = {t for group in (ours.train, ours.heldout) for ts in group.values() for t in ts}
    assert not sentences & {t for group in (theirs.train, theirs.heldout) for ts in group.values() for t in ts}
    assert not {v for vs in ours.values.values() for v in vs} & {v for vs in theirs.values.values() for v in vs}
    assert not set(ours.fillers) & set(theirs.fillers) and not set(ours.values) & set(theirs.values)
    second, _ = plant_facts(SECOND.people, SECOND.docs_per_fact, 1, SECOND.seed, SECOND.facts)
    default, _ = plant_facts(DEFAULT.people, DEFAULT.docs_per_fact, 1, DEFAULT.seed, DEFAULT.facts)
    name_parts = {part for f in default for part in f.person.split()}
    assert not name_parts & {part for f in second for part in f.person.split()}
    assert len({f.person for f in second}) == SECOND.people != DEFAULT.people
    assert SECOND.docs_per_fact < DEFAULT.docs_per_fact
    for name in ("seed", "vocab_size", "seq_len", "steps", "hidden_size", "num_layers", "num_heads"):
        assert getattr(SECOND, name) != getattr(DEFAULT, name), name


def test_facts_have_gold_rows_that_state_them(tiny_second: Path) -> None:
    data = MegatronDataset(tiny_second / "data" / "document")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_second / "tokenizer"))
    facts = load_facts(tiny_second)
    assert all(f.gold_rows for f in facts)
    for fact in facts:
        for row in fact.gold_rows:
            text = tokenizer.decode(data[row].tolist())
            assert fact.person in text and fact.value in text


def test_heldout_paraphrases_never_occur_in_the_corpus(tiny_second: Path) -> None:
    corpus = corpus_text(tiny_second)
    for fact in load_facts(tiny_second):
        assert all(p not in corpus for p in fact.paraphrases)
        assert fact.prompt + fact.completion in corpus
    facts, docs = plant_facts(SECOND.people, SECOND.docs_per_fact, SECOND.related_prompts, SECOND.seed, SECOND.facts)
    planted = "\n".join(d["text"] for d in docs)
    heldout = TEMPLATE_SETS[SECOND.facts].heldout
    # not even the wording around the name: no paraphrase is a training sentence with another name
    pieces = {piece.strip() for ts in heldout.values() for t in ts for piece in t.split("{name}") if piece.strip()}
    assert all(f" {piece} " not in f" {planted} " for piece in pieces if len(piece.split()) > 2)
    assert all(p not in planted for f in facts for p in f.paraphrases)
    assert all(len(f.related) == SECOND.related_prompts and f.person not in r.prompt for f in facts for r in f.related)


def test_two_builds_give_the_same_facts_and_model(tiny_second: Path, tmp_path: Path) -> None:
    build_demo(tmp_path, TINY_SECOND)
    for rel in ("facts.jsonl", "model/model.safetensors", "data/document.bin", "tokenizer/tokenizer.json"):
        assert (tmp_path / rel).read_bytes() == (tiny_second / rel).read_bytes(), rel


def test_new_fields_key_the_corpus_only_when_changed() -> None:
    old_fields = [f for f in fields(DemoConfig) if f.name not in ("sources", "facts")]
    values = {f.name: getattr(DEFAULT, f.name) for f in old_fields if f.metadata["stage"] == "corpus"}
    values["format_version"] = FORMAT_VERSION
    before = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    assert DEFAULT.stage_key("corpus") == before  # demos built before these fields existed stay valid
    assert replace(DEFAULT, sources=("stdlib",)).stage_key("corpus") != before
    assert replace(DEFAULT, facts="pastimes").stage_key("corpus") != before
    assert replace(DEFAULT, facts="pastimes").stage_key("model") != DEFAULT.stage_key("model")


@pytest.mark.parametrize("overrides", [{"sources": ("gutenberg",)}, {"sources": ()}, {"facts": "limericks"}])
def test_unknown_sources_and_template_sets_are_refused(overrides: dict) -> None:
    with pytest.raises(ConfigError, match="demo setting"):
        DemoConfig(**overrides)
