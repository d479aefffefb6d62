"""Build the embedded demo in four stages: corpus → tokenizer → data → model.

Layout of ``OUT``::

    corpus/NN.jsonl.zst      Pile-format shards (real text + planted facts)
    facts.jsonl              ground truth, one planted fact a line
    tokenizer/               Hugging Face tokenizer (byte-level BPE)
    data/document.bin, .idx  Megatron rows; data/layout.json; data/row_docs.json;
                             data/document.labels.json (each row's pile_set_name, every
                             subset it holds and the token range of each)
    model/                   final checkpoint, adam_state.safetensors, training.json
    model/revisions/stepN/   earlier checkpoints

A stage is built in ``OUT/.staging/STAGE`` and moved into place only when complete;
its stamp in ``OUT/.stages/STAGE.json`` (written last) records the config key, so a
rerun skips stages that are built and valid and rebuilds the rest.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from demo.packing import TokenizedDoc, pack_rows
from evaluation.corpus import PLANTED, real_documents, to_pile_records
from evaluation.demo_config import STAGES, DemoConfig
from evaluation.planted_facts import plant_facts
from evaluation.tokenizer import train_tokenizer
from evaluation.training import fact_accuracy, pythia_checkpoint_steps, settings_for, train
from indexer.groundtruth import load_facts
from indexer.megatron import write_dataset, write_row_labels
from indexer.textfiles import expand_paths, read_jsonl, write_jsonl_zst

log = logging.getLogger(__name__)

OUTPUTS = {
    "corpus": ("corpus", "facts.jsonl"),
    "tokenizer": ("tokenizer",),
    "data": ("data",),
    "model": ("model",),
}
StepCallback = Callable[[int, float], None]


def build_corpus(config: DemoConfig, out: Path, staging: Path) -> None:
    """Write the mini-pile shards and the planted-fact ground truth."""
    facts, planted = plant_facts(config.people, config.docs_per_fact, config.related_prompts, config.seed,
                                 config.facts)
    docs = real_documents(config.chars_per_source, config.doc_chars, config.seed, config.sources)
    docs += [{**d, "pile_set_name": PLANTED} for d in planted]
    random.Random(config.seed).shuffle(docs)
    records = to_pile_records(docs)
    for record, doc in zip(records, docs, strict=True):
        if "span" in doc:
            record["meta"]["key_span"] = doc["span"]
    (staging / "corpus").mkdir(parents=True)
    for shard in range(config.shards):
        write_jsonl_zst(staging / "corpus" / f"{shard:02d}.jsonl.zst", records[shard :: config.shards])
    with (staging / "facts.jsonl").open("w") as f:
        for fact in facts:
            f.write(json.dumps(fact.to_json()) + "\n")
    log.info("corpus: %d documents (%d planted) in %d shards, %d facts", len(docs), len(planted),
             config.shards, len(facts))


def build_tokenizer(config: DemoConfig, out: Path, staging: Path) -> None:
    """Train the BPE on the corpus shards."""
    texts = (ex.text for ex in read_jsonl(out / "corpus" / "*.jsonl.zst"))
    train_tokenizer(texts, config.vocab_size, staging / "tokenizer")


def tokenize_corpus(out: Path) -> list[TokenizedDoc]:
    """Tokenize every corpus document, locating the token range of its planted statement."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    docs = []
    for ex in read_jsonl(expand_paths(out / "corpus" / "*.jsonl.zst")):
        enc = tokenizer(ex.text, add_special_tokens=False, return_offsets_mapping=True)
        key_start = key_end = 0
        if "key_span" in ex.metadata:
            lo, hi = ex.metadata["key_span"]
            inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < hi and b > lo]
            key_start, key_end = inside[0], inside[-1] + 1
        docs.append(TokenizedDoc(ex.metadata["doc_id"], enc["input_ids"], key_start, key_end,
                                 ex.metadata["pile_set_name"]))
    return docs


def build_data(config: DemoConfig, out: Path, staging: Path) -> None:
    """Pack the tokenized corpus into shuffled rows and write them as Megatron data."""
    docs = tokenize_corpus(out)
    packed = pack_rows(docs, eos_id=0, seq_len=config.seq_len, num_rows=config.steps * config.batch_size,
                       seed=config.seed)
    (staging / "data").mkdir(parents=True)
    write_dataset(staging / "data" / "document", packed.rows, dtype=np.uint16)
    layout = {
        "seq_len": config.seq_len,
        "batch_size": config.batch_size,
        "num_rows": len(packed.rows),
        "num_steps": config.steps,
        "epochs": packed.epochs,
        "tokens_per_epoch": sum(len(d.ids) + 1 for d in docs),
    }
    (staging / "data" / "layout.json").write_text(json.dumps(layout, indent=2))
    (staging / "data" / "row_docs.json").write_text(json.dumps(packed.row_docs))  # gold rows of the facts
    subset_of = {d.doc_id: d.subset for d in docs}
    rows = zip(packed.rows.tolist(), packed.row_docs, strict=True)
    spans = [subset_spans(row, r["docs"], subset_of, eos_id=0) for row, r in rows]
    write_row_labels(staging / "data" / "document", {
        "pile_set_name": [r["pile_set_name"] for r in packed.row_docs],  # the subset filling most of the row
        "pile_set_names": [list(dict.fromkeys(subset_of[d] for d in r["docs"])) for r in packed.row_docs],
        "subset_spans": spans})
    log.info("data: %d rows of %d tokens, %d epochs over %d corpus tokens", layout["num_rows"],
             config.seq_len + 1, packed.epochs, layout["tokens_per_epoch"])


def subset_spans(row: list[int], doc_ids: list[str], subset_of: dict[str, str | None],
                 eos_id: int) -> list[list] | None:
    """``[start, end, subset]`` token ranges of a packed row, one per run of documents of one subset.

    Each document ends with ``eos_id``, so the row splits after each one; None when the pieces do not
    match the row's documents (then only the row's subsets are known, not where each one is)."""
    cuts = [i + 1 for i, token in enumerate(row) if token == eos_id and i + 1 < len(row)]
    bounds = list(zip([0, *cuts], [*cuts, len(row)], strict=True))
    if len(bounds) != len(doc_ids):
        return None
    spans: list[list] = []
    for (start, end), doc in zip(bounds, doc_ids, strict=True):
        if spans and spans[-1][2] == subset_of[doc]:
            spans[-1][1] = end
        else:
            spans.append([start, end, subset_of[doc]])
    return spans


def build_model(config: DemoConfig, out: Path, staging: Path, on_step: StepCallback | None = None) -> None:
    """Train the mini-Pythia and report its accuracy on the planted facts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    settings = settings_for(config, len(tokenizer))
    model_dir = staging / "model"
    started = time.perf_counter()
    model, losses = train(settings, out / "data" / "document", len(tokenizer), model_dir, on_step)
    seconds = time.perf_counter() - started
    facts = load_facts(out)
    accuracy = {
        "train_prompts": fact_accuracy(model, tokenizer, [(f.prompt, f.completion) for f in facts]),
        "heldout_paraphrases": fact_accuracy(
            model, tokenizer, [(p, f.completion) for f in facts for p in f.paraphrases]
        ),
    }
    tokenizer.save_pretrained(str(model_dir))
    info = {
        "final_revision": f"step{config.steps}",
        "revisions": [f"step{s}" for s in pythia_checkpoint_steps(config.steps)],
        "config": config.to_dict(),
        "train_seconds": round(seconds, 1),
        "loss_first": losses[0],
        "loss_last_50": float(np.mean(losses[-50:])),
        "fact_accuracy": accuracy,
    }
    (model_dir / "training.json").write_text(json.dumps(info, indent=2))
    log.info("model: trained %d steps in %.0fs, loss %.3f -> %.3f", config.steps, seconds, losses[0],
             info["loss_last_50"])


def stage_is_valid(out: Path, stage: str, config: DemoConfig) -> bool:
    """True when the stage's stamp matches the config and all its outputs exist."""
    stamp = out / ".stages" / f"{stage}.json"
    if not stamp.is_file():
        return False
    recorded = json.loads(stamp.read_text()).get("key")
    return recorded == config.stage_key(stage) and all((out / p).exists() for p in OUTPUTS[stage])


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_stage(out: Path, stage: str, config: DemoConfig, builder: Callable[[Path], None]) -> None:
    """Build one stage in a staging dir, then move its outputs into place and stamp it."""
    stamp = out / ".stages" / f"{stage}.json"
    stamp.unlink(missing_ok=True)
    staging = out / ".staging" / stage
    _remove(staging)
    staging.mkdir(parents=True)
    builder(staging)
    for rel in OUTPUTS[stage]:
        _remove(out / rel)
        os.replace(staging / rel, out / rel)
    stamp.parent.mkdir(exist_ok=True)
    stamp.write_text(json.dumps({"stage": stage, "key": config.stage_key(stage), "config": config.to_dict()}))
    shutil.rmtree(staging)


def build_demo(out: Path, config: DemoConfig, on_step: StepCallback | None = None) -> dict:
    """Build every stage that is missing or stale; return the model's ``training.json``."""
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "corpus": lambda s: build_corpus(config, out, s),
        "tokenizer": lambda s: build_tokenizer(config, out, s),
        "data": lambda s: build_data(config, out, s),
        "model": lambda s: build_model(config, out, s, on_step),
    }
    rebuild = False
    for stage in STAGES:
        if not rebuild and stage_is_valid(out, stage, config):
            log.info("%s: up to date, skipped", stage)
            continue
        rebuild = True  # everything after a rebuilt stage is rebuilt too
        log.info("%s: building", stage)
        run_stage(out, stage, config, builders[stage])
    shutil.rmtree(out / ".staging", ignore_errors=True)
    return json.loads((out / "model" / "training.json").read_text())
