"""bench.fidelity's measurement on the tiny demo: sketches approach the exact gradient's scores as k grows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attribution.models import load_model, load_tokenizer
from bench.fidelity import ALL, exact_scores, group_modules, query_batches, sketch_scores
from evaluation.demo_rows import demo_examples
from indexer.groundtruth import load_facts


def test_sketch_scores_approach_exact_scores_as_k_grows(tiny_demo: Path) -> None:
    torch.manual_seed(0)
    model = load_model(tiny_demo / "model")
    tokenizer = load_tokenizer(tiny_demo / "tokenizer")
    rows = [e.token_ids.tolist() for e in demo_examples(tiny_demo, None, tokenizer)][:48]
    queries = query_batches(tokenizer, load_facts(tiny_demo)[:6], "train", 64)
    names = group_modules(model)
    assert set(names) == {"blocks", "embed", "head", ALL} and len(names[ALL]) == sum(
        len(v) for g, v in names.items() if g != ALL)
    exact = exact_scores(model, names, rows, queries)
    errors = {k: {g: float(np.abs(sketch_scores(model, k, names, rows, queries)[g] - exact[g]).mean())
                  for g in names} for k in (2, 32)}
    for group in names:
        assert errors[32][group] < errors[2][group], (group, errors)
