"""``headwater eval``: the evaluations of docs/EVALUATION.md as commands (facts, lds, field-lds, removal, tailpatch).

Each command is a thin wrapper over a module of ``evaluation/`` and writes a markdown table and JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attribution.errors import ConfigError
from evaluation.selections import FIELD_LDS_ESTIMATORS as FIELD_ESTIMATORS
from evaluation.selections import TAILPATCH_SELECTIONS
from headwater.common import clean_errors, command_group, setup_logging

eval_app = command_group("Evaluate attributions: fact tracing, LDS, tail-patch.")

# --- eval facts ---
@eval_app.command("facts")
@clean_errors
def eval_facts(
    index: Annotated[Path, typer.Option(help="Index directory to query.")] = Path("demo-data/index"),
    methods: Annotated[str, typer.Option(help="Comma-separated retrievers.")] = "gradient,embedding,bm25,hybrid",
    contrastive: Annotated[bool, typer.Option(help="Also 'gradient+contrastive': the fact's related prompts as "
                                                   "controls.")] = True,
    limit: Annotated[int | None, typer.Option(help="At most this many facts (default: every usable one).")] = None,
    out: Annotated[Path, typer.Option(help="Report directory (facts.json, facts.md).")] = Path("eval-report"),
    demo: Annotated[Path | None, typer.Option(help="Demo directory with facts.jsonl (default: the one the index's "
                                                   "model was built in).")] = None,
    all_facts: Annotated[bool, typer.Option("--all-facts", help="Also query facts the model gets wrong.")] = False,
) -> None:
    """Fact tracing: recall@1/10/100 and MRR per retriever on the demo's planted facts (training prompts and
    held-out paraphrases)."""
    from evaluation.facts import check_methods, load_demo_facts, markdown, select_facts, trace_facts, write_report
    from indexer.store import open_index

    setup_logging(False)
    chosen = check_methods(methods.split(","))
    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit must be positive, got {limit}")
    session = open_index(index)
    selection = select_facts(session, load_demo_facts(session, demo), known_only=not all_facts)
    report = trace_facts(session, selection, chosen, contrastive=contrastive, limit=limit)
    write_report(report, out)
    typer.echo(markdown(report))
    typer.echo(f"report written to {out}/facts.json and facts.md")


# --- eval lds ---
@eval_app.command("lds")
@clean_errors
def eval_lds(
    demo: Annotated[Path, typer.Option(help="Built demo directory (headwater demo build).")] = Path("demo-data"),
    subsets: Annotated[int | None, typer.Option(help="Models retrained on random halves of the rows (default 20: "
                                                     "about 30 min for the default demo on 2 quiet CPU cores, plus "
                                                     "~15 min once to score every row).")] = None,
    index: Annotated[Path | None, typer.Option(help="Index whose gradient settings (sketch, windows, "
                                                    "preconditioner) score every row (default: DEMO/index).")] = None,
    out: Annotated[Path, typer.Option(help="Report directory (lds.json, lds.md, scores/, subsets/); rerun the same "
                                           "command to resume.")] = Path("eval-report/lds"),
    workers: Annotated[int | None, typer.Option(help="Subsets retrained at once, one torch thread each when > 1 "
                                                     "(default: one per usable CPU core).")] = None,
    queries: Annotated[int, typer.Option(help="At most this many planted facts as queries.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the subsets, the shuffled control and the bootstrap.")] = 0,
    shuffles: Annotated[int, typer.Option(help="Row permutations of each method's scores (permutation p).")] = 500,
    top_k: Annotated[int, typer.Option(help="The second table sums only each method's this many top rows.")] = 100,
    all_facts: Annotated[bool, typer.Option("--all-facts", help="Also query facts the model gets wrong.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Linear datamodeling score: retrain on random halves of the rows; does the summed attribution score of a
    half predict (Spearman) the query's loss under the model trained on it? gradient, bm25, embedding and a
    shuffled-score control."""
    from tqdm import tqdm

    from evaluation.lds import LDSSettings, markdown, run_lds

    setup_logging(verbose)
    settings = LDSSettings(queries=queries, all_facts=all_facts, seed=seed, shuffles=shuffles, top_k=top_k,
                           **({"subsets": subsets} if subsets is not None else {}),
                           **({"workers": workers} if workers is not None else {}))
    with tqdm(total=settings.subsets, desc="subset models", unit="model", disable=None) as bar:
        report = run_lds(demo, index or demo / "index", out, settings, on_subset=lambda _: bar.update(1))
    typer.echo(markdown(report))
    typer.echo(f"report written to {out}/lds.json and lds.md")


# --- eval removal ---
@eval_app.command("removal")
@clean_errors
def eval_removal(
    index: Annotated[Path, typer.Option(help="Index of every training row of a built demo.")],
    out: Annotated[Path, typer.Option(help="Report directory (removal/, removal.json, removal.md); rerun the same "
                                           "command to resume.")] = Path("eval-report/removal"),
    demo: Annotated[Path | None, typer.Option(help="Demo directory (default: the one the index's model was "
                                                   "built in).")] = None,
    queries: Annotated[int, typer.Option(help="Known facts whose top-k rows are removed at once.")] = 40,
    controls: Annotated[int, typer.Option(help="Known facts about other people, for specificity.")] = 40,
    k: Annotated[int, typer.Option(help="Rows removed per fact and method (about a fact's number of stating rows: "
                                        "at 10 of ~38 the test could not rank methods).")] = 40,
    methods: Annotated[str, typer.Option(help="Comma-separated selections: served methods (gradient, bm25, "
                                              "embedding, hybrid, unlearning) or unlearning@newton (the served "
                                              "unlearning along the query's Newton direction; @dD, @iN, @rN, "
                                              "@kfac|@ekfac as in eval field-lds).")] = "gradient,bm25,embedding",
    workers: Annotated[int | None, typer.Option(help="Retrains at once, one torch thread each (default: one per "
                                                     "usable CPU core).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random selection and the bootstrap.")] = 0,
    train_seeds: Annotated[int, typer.Option(help="Retrain every selection from this many initializations (the "
                                                  "demo's seed, +1, …); Δ is their mean.")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Removal and retrain: remove each method's top-k rows for a batch of facts, retrain from scratch, and
    measure how much more the model loses on those facts (against random rows, the gold rows, and control facts)."""
    from evaluation.facts import demo_dir
    from evaluation.removal import RemovalSettings, markdown, run_removal
    from indexer.store import open_index

    setup_logging(verbose)
    settings = RemovalSettings(queries=queries, controls=controls, k=k, seed=seed, train_seeds=train_seeds,
                               methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                               **({"workers": workers} if workers is not None else {}))
    session = open_index(index)
    report = run_removal(demo_dir(session, demo), session, out, settings,
                         on_done=lambda name: typer.echo(f"retrained without the {name} selection", err=True))
    typer.echo(markdown(report))
    typer.echo(f"report written to {out}/removal.json and removal.md")


# --- eval field-lds ---
@eval_app.command("field-lds")
@clean_errors
def eval_field_lds(
    out: Annotated[Path, typer.Option(help="Report directory (case/, retrains/, scores/, field_lds.json, "
                                           "field_lds.md); rerun the same command to resume.")]
    = Path("eval-report/field-lds"),
    retrains: Annotated[int, typer.Option(help="Models retrained without a random --removed share of the rows.")] = 50,
    removed: Annotated[float, typer.Option(help="Share of the training rows each retrain drops.")] = 0.01,
    halves: Annotated[int, typer.Option(help="Models retrained on random halves (second column; 0: none).")] = 20,
    reseeded: Annotated[int, typer.Option(help="Models retrained without the first column's first N drops but from "
                                               "another training seed: the second-seed column (0: none).")] = 0,
    zeroed: Annotated[int, typer.Option(help="Models retrained with the first column's first N drops kept in place at "
                                             "loss weight 0 (same batches and steps; 0: none).")] = 0,
    case_name: Annotated[str, typer.Option("--case", help="The text case: small (GPT-NeoX 2x64, 1,000 chunks of 65 "
                                                          "tokens) or larger (4x128, 2,000 chunks of 129 tokens).")]
    = "small",
    rows: Annotated[int | None, typer.Option(help="Training chunks of real text (default: the case's).")] = None,
    queries: Annotated[int, typer.Option(help="Held-out query chunks.")] = 50,
    k: Annotated[int, typer.Option(help="Sketch projection per side.")] = 16,
    modules: Annotated[str, typer.Option(help="Comma-separated parameter groups every sketch covers, as the index's "
                                              "--modules: blocks (the transformer blocks' Linear layers), embed (the "
                                              "input embedding), head (the output head).")] = "blocks",
    estimators: Annotated[str, typer.Option(help="Comma-separated: gradient-ip/KIND, gradient/KIND, tracin-ip/KIND, "
                                            "tracin/KIND (each optionally @K, @dD), bm25, unlearning, "
                                            "unlearning@newton, newton[@dD][@iN][@rN][@kfac|@ekfac][@warm]"
                                            "[@astra][@lrX][@cN[@bm25]][@sketch][@blocks][@embed][@head] "
                                            "(damping, steps, sample rows, factored preconditioner, warm start, "
                                            "ASTRA and its learning rate; two stages: only the index default's top "
                                            "N rows scored, half from BM25 with @bm25; @sketch: the direction "
                                            "read through the stored sketches, alone or as the recall stage; "
                                            "@blocks, @embed, @head: the direction moves those weights only), "
                                            "magic[@sN] (the exact "
                                            "replay from step N).")]
    = ",".join(FIELD_ESTIMATORS),
    workers: Annotated[int | None, typer.Option(help="Retrains at once, one torch thread each (default: one per "
                                                     "usable CPU core).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the text case, the dropped rows and the statistics.")] = 0,
    finetune: Annotated[int, typer.Option(help="The fine-tuning variant: the case's model fine-tuned on this many "
                                               "chunks of another source (stdlib docstrings), queries from that "
                                               "source, retrains fine-tune again (0: train from scratch).")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """LDS on the field's protocol: a small GPT-NeoX trained on chunks of real text, retrained without 1 % of the
    rows (and on halves); do the linear influence scores of the dropped rows predict (Spearman) each held-out
    chunk's loss? Every headwater estimator, BM25 and a shuffled control (and external scores in OUT/external)."""
    from tqdm import tqdm

    from evaluation.field_lds import FieldLDSSettings, markdown, run_field_lds
    from evaluation.finetune_case import FinetuneCase
    from evaluation.text_case import preset_case

    setup_logging(verbose)
    if finetune < 0:
        raise ConfigError(f"--finetune must be 0 (off) or a number of chunks, got {finetune}")
    case = preset_case(case_name, rows=rows, queries=queries, seed=seed)
    if finetune:
        case = FinetuneCase(base=case, rows=finetune, queries=queries, seed=seed)
    settings = FieldLDSSettings(retrains=retrains, removed=removed, halves=halves, reseeded=reseeded, zeroed=zeroed,
                                k=k, seed=seed, groups=tuple(g.strip() for g in modules.split(",") if g.strip()),
                                estimators=tuple(e.strip() for e in estimators.split(",") if e.strip()),
                                **({"workers": workers} if workers is not None else {}))
    with tqdm(total=retrains + halves + reseeded + zeroed, desc="retrains", unit="model", disable=None) as bar:
        report = run_field_lds(out, case, settings, on_retrain=lambda *_: bar.update(1))
    typer.echo(markdown(report))
    typer.echo(f"report written to {out}/field_lds.json and field_lds.md")


@eval_app.command("behaviours")
@clean_errors
def eval_behaviours(
    out: Annotated[Path, typer.Option(help="Report directory (case/, behaviours.json, behaviours.md); a rerun "
                                           "reuses the built case.")] = Path("eval-report/behaviours"),
    rows: Annotated[int, typer.Option(help="Training rows (real text with the demonstrations in).")] = 3000,
    demos: Annotated[int, typer.Option(help="Rows demonstrating each task under each of its two phrasings.")] = 300,
    epochs: Annotated[int, typer.Option(help="Training passes.")] = 30,
    queries: Annotated[int, typer.Option(help="Held-out instances in a task query.")] = 8,
    methods: Annotated[str, typer.Option(help="Comma-separated served methods to measure.")]
    = "gradient,unlearning,bm25,embedding",
    ablate: Annotated[bool, typer.Option(help="Also the unlearning check of each task.")] = True,
    removal: Annotated[bool, typer.Option(help="Also removal and retrain of each task: each method's top rows (and "
                                               "gold, random) removed, the model retrained from scratch.")] = False,
    removal_k: Annotated[int, typer.Option(help="Rows removed per task and selection (0: the task's "
                                                "demonstration rows, both phrasings).")] = 0,
    removal_by_phrasing: Annotated[bool, typer.Option(
        "--removal-by-phrasing", help="With --removal: also retrain without each phrasing's demonstration rows "
                                      "alone (does the other phrasing's data teach the asked one?).")] = False,
    workers: Annotated[int | None, typer.Option(help="Removal retrains at once, one torch thread each (default: one "
                                                     "per usable CPU core).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the case.")] = 0,
    seeds: Annotated[int, typer.Option(help="Cases to build and measure (seeds --seed, --seed + 1, ...; each in "
                                            "OUT/seed-S), summarized in OUT/behaviours_seeds.md.")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Which data teaches a behaviour: tasks of unusual ways to speak (say each word twice, spell each word out,
    reverse the words), each taught under two phrasings among real text; every method as a task query and as
    single-instance queries, and the unlearning check of each task."""
    from attribution.session import parse_method
    from evaluation.behaviour_case import BehaviourCase
    from evaluation.behaviours import (
        BehaviourSettings,
        markdown,
        run_behaviour_seeds,
        run_behaviours,
        seeds_markdown,
    )
    from evaluation.task_removal import TaskRemovalSettings

    setup_logging(verbose)
    if queries < 1:
        raise ConfigError(f"--queries must be at least 1, got {queries}")
    chosen = tuple(parse_method(m.strip()).value for m in methods.split(",") if m.strip())
    if not chosen:
        raise ConfigError("--methods names no method")
    case = BehaviourCase(rows=rows, demos=demos, epochs=epochs, seed=seed)
    pool = {"workers": workers} if workers is not None else {}
    if removal_by_phrasing and not removal:
        raise ConfigError("--removal-by-phrasing adds retrains to --removal; give both or neither")
    # checked even when not run
    removal_settings = TaskRemovalSettings(k=removal_k, seed=seed, by_phrasing=removal_by_phrasing, **pool)
    settings = BehaviourSettings(queries=queries, methods=chosen, ablate=ablate,
                                 removal=removal_settings if removal else None)
    if seeds != 1:
        summary = run_behaviour_seeds(out, case, settings, seeds)
        typer.echo(seeds_markdown(summary))
        typer.echo(f"reports written to {out}/seed-*/ and {out}/behaviours_seeds.json, behaviours_seeds.md")
        return
    report = run_behaviours(out, case, settings)
    typer.echo(markdown(report))
    typer.echo(f"report written to {out}/behaviours.json and behaviours.md")


# --- eval tailpatch ---
@eval_app.command("tailpatch")
@clean_errors
def eval_tailpatch(
    index: Annotated[Path, typer.Option(help="Index directory to take rows from.")] = Path("demo-data/index"),
    k: Annotated[int, typer.Option(help="Rows per method and query.")] = 10,
    methods: Annotated[str, typer.Option(help="Comma-separated selections (gradient, gradient_contrastive, bm25, "
                                              "embedding, oracle, random).")] = ",".join(TAILPATCH_SELECTIONS),
    limit: Annotated[int, typer.Option(help="At most this many queries (known demo facts).")] = 40,
    random_draws: Annotated[int, typer.Option(help="Random selections of k rows per query.")] = 3,
    lr: Annotated[float | None, typer.Option(help="Step size (default: the demo's final training learning "
                                                  "rate; required for other models).")] = None,
    clip: Annotated[float, typer.Option(help="Clip each row's gradient to this norm, as training did (0: off).")] = 1.0,
    out: Annotated[Path, typer.Option(help="Report directory (tailpatch.json, tailpatch.md).")] = Path("eval-report"),
    demo: Annotated[Path | None, typer.Option(help="Demo directory with facts.jsonl (default: the one the index's "
                                                   "model was built in).")] = None,
    all_facts: Annotated[bool, typer.Option("--all-facts", help="Also query facts the model gets wrong.")] = False,
) -> None:
    """Tail-patch (TrackStar): one SGD step on each retrieved row; how much does the query's log-probability rise?"""
    from tqdm import tqdm

    from evaluation.facts import load_demo_facts, select_facts
    from evaluation.tailpatch import TailPatchSettings, final_learning_rate, markdown, run_tailpatch, write_report
    from indexer.store import open_index

    setup_logging(False)
    if limit <= 0 or clip < 0:
        raise ConfigError(f"--limit must be positive and --clip non-negative, got {limit} and {clip}")
    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    TailPatchSettings(lr=lr or 1.0, k=k, methods=names, random_draws=random_draws)  # bad input fails before loading
    session = open_index(index)
    if lr is None:
        lr = final_learning_rate(Path(session.manifest.config.model), session.encoder.checkpoints[-1].revision)
    settings = TailPatchSettings(lr=lr, k=k, methods=names, random_draws=random_draws, max_grad_norm=clip or None)
    queries = select_facts(session, load_demo_facts(session, demo), known_only=not all_facts).facts[:limit]
    if not queries:
        raise ConfigError("no usable facts to tail-patch (none the model gets right has a gold row in the index); "
                          "try --all-facts")
    with tqdm(desc="rows stepped on", unit="row", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = run_tailpatch(session, queries, settings, progress)
    write_report(report, out)
    typer.echo(markdown(report))
    typer.echo(f"report written to {out}/tailpatch.json and tailpatch.md")
