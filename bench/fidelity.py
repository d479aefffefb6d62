"""Sketch fidelity per parameter group: fact recall of k×k sketches against the exact, unprojected gradient.

    python -m bench.fidelity --demo demo-data --steps 0:150 --limit 60 --ks 4,8,16,32

For every known planted fact (the model gets it right, a gold row is among the rows) the
query is the gradient of the completion's loss; every training row's gradient is its whole
row's loss. Scores are cosines, rows ranked exhaustively. "exact" uses the full weight
gradients of the group's modules (autograd, one row at a time); "k=K" the factored sketches
``P_outᵀ dW P_in`` of the same modules at that k. Groups: ``blocks`` (every Linear in the
transformer blocks), ``embed`` (input embedding), ``head`` (output head), ``all``.
Bytes per example are the float16 vector a published index stores for that group and k.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from attribution.batching import collate, query_tokens, training_batch
from attribution.models import load_model, load_tokenizer
from attribution.modules import ModuleGroup, sketched_modules
from attribution.sketch import SketchConfig, Sketcher
from evaluation.demo_rows import demo_examples, load_layout
from evaluation.metrics import first_gold_rank, mean_reciprocal_rank, recall_at
from evaluation.training import completion_hits
from indexer.groundtruth import Fact, load_facts
from indexer.training_rows import parse_range, rows_for_steps

ALL = "all"


def group_modules(model: torch.nn.Module) -> dict[str, list[str]]:
    """Module names per group, and every one of them under ``all``."""
    groups = {g.value: list(sketched_modules(model, [g])) for g in ModuleGroup}
    groups[ALL] = [name for names in groups.values() for name in names]
    return groups


def query_batches(tokenizer, facts: list[Fact], split: str, max_length: int) -> list[tuple[Fact, list, list]]:
    """(fact, ids, loss mask) for the training-style prompt or each held-out paraphrase."""
    out = []
    for fact in facts:
        prompts = [fact.prompt] if split == "train" else fact.paraphrases
        for prompt in prompts:
            ids, mask = query_tokens(tokenizer.encode(prompt, add_special_tokens=False),
                                     tokenizer.encode(fact.completion, add_special_tokens=False), max_length)
            out.append((fact, ids, mask))
    return out


def exact_gradients(model: torch.nn.Module, names: list[str], ids: list[int], mask: list[int]) -> torch.Tensor:
    """The flattened weight gradients of ``names`` for one example's masked loss."""
    modules = dict(model.named_modules())
    weights = [modules[n].weight for n in names]
    batch = collate([ids], [mask])
    logits = model(input_ids=batch.input_ids).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits.float(), batch.input_ids[0, 1:], reduction="none")
    grads = torch.autograd.grad((nll * batch.loss_mask[0, 1:].to(nll)).sum(), weights)
    return torch.cat([g.reshape(-1) for g in grads])


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def ranks_of(scores: np.ndarray, queries: list, row_ids: np.ndarray) -> list[int | None]:
    """First gold rank of each query from a (queries, rows) score matrix."""
    out = []
    for q, (fact, _, _) in enumerate(queries):
        order = row_ids[np.argsort(-scores[q], kind="stable")]
        out.append(first_gold_rank(order.tolist(), fact.gold_rows))
    return out


def exact_scores(model, names_by_group: dict[str, list[str]], rows: list[list[int]], queries: list) -> dict:
    """Exact cosine scores per group: ``{group: (queries, rows)}``."""
    all_names = names_by_group[ALL]
    sizes = {n: dict(model.named_modules())[n].weight.numel() for n in all_names}
    offsets, at = {}, 0
    for n in all_names:
        offsets[n] = (at, at + sizes[n])
        at += sizes[n]

    def select(vector: torch.Tensor, group: str) -> torch.Tensor:
        return torch.cat([vector[slice(*offsets[n])] for n in names_by_group[group]])

    q_full = [exact_gradients(model, all_names, ids, mask) for _, ids, mask in queries]
    q = {g: unit(torch.stack([select(v, g) for v in q_full])) for g in names_by_group}
    scores = {g: np.empty((len(queries), len(rows)), dtype=np.float32) for g in names_by_group}
    for r, row in enumerate(rows):
        g_full = exact_gradients(model, all_names, row, [0] + [1] * (len(row) - 1))
        for g in names_by_group:
            scores[g][:, r] = (q[g] @ unit(select(g_full, g))).numpy()
    return scores


def sketch_scores(model, k: int, names_by_group: dict[str, list[str]], rows: list[list[int]], queries: list,
                  batch_size: int = 32) -> dict:
    """Sketched cosine scores per group at projection size ``k``."""
    sketcher = Sketcher(model, SketchConfig(k=k, groups=tuple(ModuleGroup)))
    width = k * k
    position = {name: i for i, name in enumerate(sketcher.module_names)}

    def select(s: torch.Tensor, group: str) -> torch.Tensor:
        return torch.cat([s[:, position[n] * width : (position[n] + 1) * width] for n in names_by_group[group]], 1)

    raw = torch.cat([sketcher.sketch(training_batch(rows[i : i + batch_size]))
                     for i in range(0, len(rows), batch_size)])
    qs = torch.cat([sketcher.sketch(collate([ids for _, ids, _ in queries[i : i + batch_size]],
                                            [m for _, _, m in queries[i : i + batch_size]]))
                    for i in range(0, len(queries), batch_size)])
    return {g: (unit(select(qs, g)) @ unit(select(raw, g)).T).numpy() for g in names_by_group}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-data"))
    parser.add_argument("--steps", default="0:150")
    parser.add_argument("--limit", type=int, default=60, help="at most this many known facts")
    parser.add_argument("--ks", default="4,8,16,32")
    parser.add_argument("--all-facts", action="store_true", help="also facts the model gets wrong")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    layout = load_layout(args.demo)
    start, stop = parse_range(args.steps, "steps")
    tokenizer = load_tokenizer(args.demo / "tokenizer")
    model = load_model(args.demo / "model")
    examples = list(demo_examples(args.demo, rows_for_steps(layout["num_rows"], layout["batch_size"], start, stop),
                                  tokenizer))
    row_ids = np.asarray([e.example_id for e in examples])
    rows = [e.token_ids.tolist() for e in examples]
    indexed = set(row_ids.tolist())
    with torch.no_grad():
        facts = [f for f in load_facts(args.demo) if indexed.intersection(f.gold_rows)
                 and (args.all_facts or completion_hits(model, tokenizer, f.prompt, f.completion)[1])][: args.limit]
    if not facts:
        raise SystemExit("no known facts with a gold row among these rows (--all-facts includes the others)")
    names = group_modules(model)
    max_length = int(model.config.max_position_embeddings)
    print(f"\n## Sketch fidelity per parameter group ({args.demo}, {len(rows)} rows of steps {args.steps}, "
          f"{len(facts)} known facts; cosine, exhaustive)\n")
    train = query_batches(tokenizer, facts, "train", max_length)
    queries = train + query_batches(tokenizer, facts, "heldout", max_length)
    splits = {"train": slice(0, len(train)), "heldout": slice(len(train), len(queries))}

    def ranks(scores: np.ndarray) -> dict[str, list]:
        return {s: ranks_of(scores[part], queries[part], row_ids) for s, part in splits.items()}

    started = time.perf_counter()
    exact = exact_scores(model, names, rows, queries)
    exact_seconds = time.perf_counter() - started
    results = {(g, "exact"): (ranks(exact[g]), sum(dict(model.named_modules())[n].weight.numel()
                                                   for n in names[g]) * 2) for g in names}
    for k in (int(x) for x in args.ks.split(",")):
        sketched = sketch_scores(model, k, names, rows, queries)
        results.update({(g, f"k={k}"): (ranks(sketched[g]), len(names[g]) * k * k * 2) for g in names})
    print("| group | projection | bytes/example | recall@10 train | MRR train | recall@10 held-out | MRR held-out |")
    print("|---|---|---|---|---|---|---|")
    for group in names:
        for (g, projection), (r, size) in results.items():
            if g == group:
                print(f"| {group} | {projection} | {size:,} | {recall_at(r['train'], 10):.3f} | "
                      f"{mean_reciprocal_rank(r['train']):.3f} | {recall_at(r['heldout'], 10):.3f} | "
                      f"{mean_reciprocal_rank(r['heldout']):.3f} |")
    print(f"\nexact gradients: {exact_seconds:.0f} s (one row at a time); 'exact' bytes are a float16 copy of the "
          "full gradient, which no index stores")

if __name__ == "__main__":
    main()
