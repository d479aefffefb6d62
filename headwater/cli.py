"""The ``headwater`` command line: thin wrappers over the importable library.

Every command turns a ``HeadwaterError`` into a one-line message on stderr and exit
code 2, so scripts can tell bad input from a crash.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attribution.config import AttributionConfig, CurvatureConfig, ScoringConfig, field_help
from attribution.errors import ConfigError, HeadwaterError
from attribution.kinds import SketchConfig
from evaluation.selections import DEFAULT_SELECTIONS
from headwater.attribute_cli import attribute
from headwater.common import StepLog, clean_errors, command_group, setup_logging
from headwater.eval_cli import eval_app
from indexer.config import IndexConfig, StorageConfig

if TYPE_CHECKING:
    from evaluation.behaviour_case import BehaviourCase

app = command_group("headwater: which training examples drive this language model's output?",
                    pretty_exceptions_enable=False)
demo_app = command_group("Build the embedded demo (corpus, tokenizer, data, mini-Pythia).")
data_app = command_group("Inspect training data.")
app.add_typer(demo_app, name="demo")
index_app = command_group("Build, merge, inspect and verify attribution indices.")
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
app.command("attribute")(attribute)

@demo_app.command("build")
@clean_errors
def demo_build(
    out: Annotated[Path, typer.Option(help="Directory to build the demo in.")] = Path("demo-data"),
    preset: Annotated[str, typer.Option(help="Settings preset: 'default' (the demo, minutes), 'second' (the second "
                                             "case: other text, fact templates, names, size and seed; minutes), "
                                             "'behaviours' (three unusual ways to speak taught among real text, "
                                             "each under two phrasings; minutes), or 'tiny' / 'tiny-second' / "
                                             "'tiny-behaviours' (seconds, for tests).")] = "default",
    seed: Annotated[int | None, typer.Option(help="Seed for every random choice.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    people: Annotated[int | None, typer.Option(help="Fictional people with planted facts.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Build corpus, tokenizer, Megatron data and the mini-Pythia; skip what is built and valid."""
    from tqdm import tqdm

    from demo.build import build_demo
    from evaluation.behaviour_case import PRESETS as BEHAVIOUR_PRESETS
    from evaluation.demo_config import preset as make_preset

    setup_logging(verbose)
    if preset in BEHAVIOUR_PRESETS:
        build_behaviours(out, BEHAVIOUR_PRESETS[preset], preset, seed, steps, people)
        return
    config = make_preset(preset, seed=seed, steps=steps, people=people)
    with tqdm(total=config.steps, desc="training", unit="step", disable=None) as bar:
        log_line = StepLog(config.steps, "training") if bar.disable else None

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if log_line is not None:  # no terminal (a log file, CI): a line every 5 % instead of the bar
                log_line.step(loss)

        info = build_demo(out, config, on_step)
    acc = info["fact_accuracy"]
    typer.echo(f"demo built in {out} (final revision {info['final_revision']}, trained in {info['train_seconds']}s)")
    for split, scores in acc.items():
        typer.echo(f"  fact accuracy on {split.replace('_', ' ')}: first token {scores['first_token']:.1%}, "
                   f"whole completion {scores['whole_completion']:.1%}")


def build_behaviours(out: Path, case: BehaviourCase, preset: str, seed: int | None, steps: int | None,
                     people: int | None) -> None:
    """``demo build --preset behaviours``: the behaviour case (:mod:`evaluation.behaviour_case`) built into ``out``."""
    from dataclasses import replace

    from evaluation.behaviour_case import build_behaviour_case, row_labels

    if steps is not None or people is not None:
        raise ConfigError(f"--steps and --people are the planted-fact demo's; the {preset} preset takes --seed only")
    case = case if seed is None else replace(case, seed=seed)
    build_behaviour_case(out, case, directory=out)
    demos = sum(label is not None for label in row_labels(out))
    typer.echo(f"behaviour case built in {out}: {case.rows} rows, {demos} demonstrations (rows.json names each "
               f"row's task and phrasing); index it with: headwater index build --model {out}/model --data "
               f"{out}/data/document --out {out}/index")


@data_app.command("show")
@clean_errors
def data_show(
    prefix: Annotated[Path, typer.Argument(help="Megatron data prefix (PREFIX.idx + PREFIX.bin or pieces).")],
    rows: Annotated[str | None, typer.Option(help="Row range A:B (half-open).")] = None,
    step: Annotated[int | None, typer.Option(help="Show the rows consumed at this training step.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per step (default: layout.json, else 1024).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer dir or hub id, to decode text.")] = None,
) -> None:
    """Print training rows as JSON lines: {"row", "step", "batch_pos", "tokens", "text"}."""
    from indexer.batches import show_rows

    for record in show_rows(prefix, rows=rows, step=step, batch_size=batch_size, tokenizer=tokenizer):
        typer.echo(json.dumps(record))


S, C, R, A, X, ST = SketchConfig, CurvatureConfig, ScoringConfig, AttributionConfig, IndexConfig, StorageConfig
"""The records whose fields (defaults and docstrings) are the index-build flags."""


def check_rows_per_step(data: str, rows_per_step: int | None) -> None:
    """--rows-per-step must be positive and agree with the layout.json beside the data, when there is one."""
    from indexer.training_rows import read_layout

    if rows_per_step is None:
        return
    if rows_per_step <= 0:
        raise ConfigError(f"--rows-per-step must be positive, got {rows_per_step}")
    layout = read_layout(data) if not data.startswith("hf:") else None
    if layout is not None and int(layout["batch_size"]) != rows_per_step:
        raise ConfigError(f"--rows-per-step {rows_per_step} disagrees with the layout.json beside {data}, which "
                          f"records {layout['batch_size']} rows per step; drop the flag or fix the file")


@index_app.command("build")
@clean_errors
def index_build(
    model: Annotated[str, typer.Option(help=field_help(X, "model"))],
    data: Annotated[str, typer.Option(help=field_help(X, "data"))],
    out: Annotated[Path, typer.Option(help="Index directory (shards in work/, builds in builds/, current).")],
    revision: Annotated[list[str] | None, typer.Option(help=field_help(A, "revisions"))] = None,
    revision_weights: Annotated[str | None, typer.Option(help=field_help(A, "revision_weights") + " 'lr': the "
                                                         "learning rate after each revision (the demo's "
                                                         "training.json or Pythia's schedule), else numbers.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help=field_help(X, "tokenizer"))] = X.tokenizer,
    steps: Annotated[str | None, typer.Option(help=field_help(X, "steps"))] = X.steps,
    rows: Annotated[str | None, typer.Option(help=field_help(X, "rows"))] = X.rows,
    rows_per_step: Annotated[int | None, typer.Option(help=field_help(X, "batch_rows") + " Default 1024.")] = None,
    k: Annotated[int, typer.Option(help=field_help(S, "k"))] = S.k,
    seed: Annotated[int, typer.Option(help=field_help(S, "seed"))] = S.seed,
    window: Annotated[int | None, typer.Option(help=field_help(A, "window") + " 0: whole rows.")] = A.window,
    mode: Annotated[str, typer.Option(help=field_help(R, "mode"))] = R.mode.value,
    curvature: Annotated[str, typer.Option("--curvature", "--precondition",
                                           help=field_help(C, "kind") + " (--precondition: its old name)")
                         ] = C.kind.value,
    damping: Annotated[float | None, typer.Option(help=field_help(C, "damping"))] = None,
    curvature_sample: Annotated[int, typer.Option("--curvature-sample", "--precondition-sample",
                                                  help=field_help(C, "sample") + " (--precondition-sample: its old "
                                                  "name)")] = C.sample,
    fisher: Annotated[str, typer.Option(help=field_help(C, "fisher"))] = C.fisher.value,
    curvature_rows: Annotated[int, typer.Option(help=field_help(C, "sample_rows"))] = C.sample_rows,
    factor_limit: Annotated[int, typer.Option(help=field_help(C, "factor_limit"))] = C.factor_limit,
    normalizer: Annotated[Path | None, typer.Option(help=field_help(A, "normalizer"))] = None,
    embedding_model: Annotated[str | None, typer.Option(help=field_help(X, "embedding_model"))] = X.embedding_model,
    store: Annotated[str, typer.Option(help=field_help(ST, "store"))] = ST.store.value,
    faiss_factory: Annotated[str, typer.Option(help=field_help(ST, "faiss_factory"))] = ST.faiss_factory,
    nprobe: Annotated[int, typer.Option(help=field_help(ST, "nprobe"))] = ST.nprobe,
    rerank: Annotated[int, typer.Option(help=field_help(ST, "rerank"))] = ST.rerank,
    train_sample: Annotated[int, typer.Option(help=field_help(ST, "train_sample"))] = ST.train_sample,
    lexical: Annotated[str, typer.Option(help=field_help(ST, "lexical"))] = ST.lexical.value,
    modules: Annotated[str, typer.Option(help="Comma-separated. " + field_help(S, "groups"))] = ",".join(S.groups),
    include_head: Annotated[bool, typer.Option(help="Also sketch the output head (same as adding 'head' to "
                                                    "--modules).")] = False,
    max_tokens: Annotated[int | None, typer.Option(help=field_help(X, "max_tokens"))] = X.max_tokens,
    facts: Annotated[Path | None, typer.Option(help=field_help(X, "facts"))] = None,
    shard_size: Annotated[int, typer.Option(help=field_help(ST, "shard_size"))] = ST.shard_size,
    batch_size: Annotated[int, typer.Option(help="At most this many rows per forward/backward pass.")] = 32,
    token_batch_size: Annotated[int, typer.Option(help="At most this many padded tokens per forward/backward "
                                                       "pass (rows × the longest): peak memory follows it.")] = 8192,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or float64.")] = "float32",
    rank: Annotated[int | None, typer.Option(help="This process's rank (default: torchrun/Slurm env, else 0).")] = None,
    world: Annotated[int | None, typer.Option(help="Number of ranks (default: torchrun/Slurm env, else 1).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Rebuild even if --out holds an index with other settings.")] = False,
    append: Annotated[bool, typer.Option(help="Add --data/--steps to the existing index (same settings).")] = False,
    merge: Annotated[bool, typer.Option(help="Merge and publish when this process finishes the last shard.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Sketch, embed and index training data (resumable; sharded across ranks)."""
    from tqdm import tqdm

    from attribution.batching import Batching
    from attribution.errors import ConfigError
    from evaluation.schedules import revision_weights as schedule_weights
    from indexer.build import build_index
    from indexer.runner import detect_rank

    setup_logging(verbose)
    batching = Batching(rows=batch_size, tokens=token_batch_size)
    check_rows_per_step(data, rows_per_step)
    if normalizer is not None and not normalizer.is_file():
        raise ConfigError(f"--normalizer {normalizer}: no such file")
    revisions = tuple(revision) if revision else (None,)
    groups = tuple(g.strip() for g in modules.split(",") if g.strip())
    # The flags fill the record field by field, in its own shape (config.json is this record).
    config = IndexConfig(
        model, data, tokenizer=tokenizer, steps=steps, rows=rows, batch_rows=rows_per_step or X.batch_rows,
        max_tokens=max_tokens, embedding_model=embedding_model, facts=str(facts) if facts else None,
        attribution=AttributionConfig(
            sketch=SketchConfig(k=k, seed=seed, groups=(*groups, "head") if include_head and "head" not in groups
                                else groups),
            curvature=CurvatureConfig(kind=curvature, damping=damping, sample=curvature_sample, fisher=fisher,
                                      sample_rows=curvature_rows, factor_limit=factor_limit),
            scoring=ScoringConfig(mode=mode),
            revisions=revisions, revision_weights=schedule_weights(revision_weights, model, revisions),
            window=window or None, normalizer=str(normalizer) if normalizer else None),
        storage=StorageConfig(store=store, faiss_factory=faiss_factory, shard_size=shard_size, nprobe=nprobe,
                              train_sample=train_sample, rerank=rerank, lexical=lexical),
    )
    who = detect_rank(rank, world)
    with tqdm(desc=f"rank {who.rank}/{who.world}", unit="ex", disable=None) as bar:
        def progress(kind: str, count: int) -> None:
            if kind == "total":
                bar.reset(total=count)
            elif kind == "examples":
                bar.update(count)

        build = build_index(config, out, who, overwrite=overwrite, batching=batching, device=device,
                            dtype=dtype, merge_after=merge, append=append, progress=progress)
    if build is not None:
        typer.echo(f"published {build} as {out / 'current'}")
        _print_info(out)


def _print_info(path: Path) -> None:
    from indexer.manifest import indexed_data, read_manifest, resolve_build

    build = resolve_build(path)
    manifest = read_manifest(build)
    counts, config = manifest.counts, manifest.config
    size = sum(f["bytes"] for f in manifest.files.values())
    typer.echo(f"index {build}")
    data = indexed_data(manifest)
    typer.echo(f"  model {config.model} revisions {list(config.attribution.revisions)}; "
               f"data {{'spec': {data['spec']!r}, 'steps': {data['steps']!r}}}")
    if len(data["parts"]) > 1:
        typer.echo("  parts " + "; ".join(f"{p['data']} steps {p['steps']}" for p in data["parts"]))
    typer.echo(f"  {counts.examples} examples in {counts.shards} shards; ids {counts.first_id}.."
               f"{counts.last_id}; vector dim {counts.dim}, windows {counts.windows}")
    typer.echo(f"  projection k={manifest.projection.k} seed={manifest.projection.seed}; "
               f"preconditioner {manifest.preconditioner}; normalizer {config.attribution.normalizer}")
    typer.echo(f"  {len(manifest.files)} files, {size / 1e6:.1f} MB; created {manifest.created}")


@index_app.command("merge")
@clean_errors
def index_merge(out: Annotated[Path, typer.Argument(help="Index directory whose shards are finished.")],
                device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu") -> None:
    """Merge finished shards into a new build and publish it as OUT/current."""
    from indexer.build import merge_index

    setup_logging(False)
    build = merge_index(out, device)
    typer.echo(f"published {build} as {out / 'current'}")


@index_app.command("info")
@clean_errors
def index_info(path: Annotated[Path, typer.Argument(help="Index directory or build.")]) -> None:
    """Print the manifest summary: model, data, counts, sizes."""
    _print_info(path)


@index_app.command("discard")
@clean_errors
def index_discard(out: Annotated[Path, typer.Argument(help="Index directory.")],
                  part: Annotated[str, typer.Option(help="The unfinished appended part to remove (NN of "
                                                         "OUT/work/parts/NN), as a failed append names it.")]) -> None:
    """Remove an append that did not finish, so that other data can be appended; the published index is untouched."""
    from indexer.parts import discard_part

    setup_logging(False)
    removed = discard_part(out, part)
    typer.echo(f"discarded {removed}; the published index is unchanged")


@index_app.command("verify")
@clean_errors
def index_verify(path: Annotated[Path, typer.Argument(help="Index directory or build.")],
                 weights: Annotated[bool, typer.Option(help="Also load the model and check its weights against the "
                                                            "fingerprint the index recorded.")] = True) -> None:
    """Check every file of the published build (and finished shards) against its checksums, and the model's weights
    against the index's fingerprint."""
    from indexer.manifest import check_weights, read_manifest, resolve_build, verify_build
    from indexer.runner import make_encoder
    from indexer.shards import verify_shard

    setup_logging(False)
    problems = verify_build(path)
    if weights:
        try:
            manifest = read_manifest(path)
            check_weights(resolve_build(path), manifest, make_encoder(manifest.config))
        except HeadwaterError as err:
            problems.append(str(err))
    work = Path(path) / "work"
    for shard in sorted(work.glob("shard-*")) if work.is_dir() else []:
        try:
            verify_shard(shard)
        except HeadwaterError as err:
            problems.append(str(err))
    if problems:
        for problem in problems:
            typer.echo(f"FAILED {problem}", err=True)
        raise typer.Exit(code=1)
    checked = " and the model's weights match its fingerprint" if weights else ""
    typer.echo(f"OK {resolve_build(path)}: every file matches the manifest{checked}")


ABLATE_METHODS = ",".join(DEFAULT_SELECTIONS)
"""``headwater ablate``'s selections: every one but ``given``, which only targets with example ids have."""


@app.command("ablate")
@clean_errors
def ablate(
    index: Annotated[Path, typer.Option(help="Index directory to take selections from.")] = Path("demo-data/index"),
    out: Annotated[Path, typer.Option(help="Report directory (report.json, report.md, PNG plots).")] = Path(
        "ablation-report"),
    targets: Annotated[Path | None, typer.Option(help="JSONL of {prompt, completion, paraphrases?, related?, "
                                                      "unrelated?, gold_rows?, example_ids?}; default: the demo's "
                                                      "planted facts.")] = None,
    methods: Annotated[str, typer.Option(help="Comma-separated selection methods (given: each target's "
                                              "example_ids; it and unlearning_contrastive not by default).")]
    = ABLATE_METHODS,
    budgets: Annotated[str, typer.Option(help="Comma-separated ‖Δθ‖ budgets.")] = "0.5,1,2",
    k: Annotated[int, typer.Option(help="Rows per selection.")] = 10,
    seeds: Annotated[int, typer.Option(help="Seeds (random draws and oracle samples).")] = 3,
    random_draws: Annotated[int, typer.Option(help="Random selections per seed.")] = 19,
    limit: Annotated[int, typer.Option(help="At most this many targets.")] = 20,
    removal_report: Annotated[Path | None, typer.Option(help="A removal-and-retrain report (headwater eval removal's "
                                                             "removal.json) whose per-fact results join the "
                                                             "report for the targets it measured.")] = None,
) -> None:
    """Unlearning ablation: ascend on each selection and measure target, related and general damage."""
    from tqdm import tqdm

    from attribution.errors import ConfigError
    from evaluation.ablation import AblationSettings, run_ablation
    from evaluation.ablation_report import write_report
    from evaluation.removal_column import load_removal, removal_column
    from evaluation.targets import Target
    from indexer.groundtruth import facts_file, load_facts
    from indexer.store import open_index

    setup_logging(False)
    try:
        settings = AblationSettings(k=k, budgets=tuple(float(b) for b in budgets.split(",")), seeds=seeds,
                                    random_draws=random_draws, methods=tuple(m.strip() for m in methods.split(",")))
    except ValueError as err:
        raise ConfigError(f"--budgets must be comma-separated numbers: {err}") from err
    if limit <= 0:
        raise ConfigError(f"--limit must be positive, got {limit}")
    removal = load_removal(removal_report) if removal_report is not None else None  # refused before the work
    session = open_index(index)
    demo = facts_file(session.manifest)
    if targets is None:
        if demo is None:
            raise ConfigError("--targets is required: the index records no facts file (it was not built from the demo)")
        chosen = [Target.from_fact(f) for f in load_facts(demo) if f.gold_rows]
    else:
        if not targets.is_file():
            raise ConfigError(f"--targets {targets}: no such file")
        try:
            lines = [json.loads(line) for line in targets.read_text().splitlines() if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"--targets {targets}: not JSON lines ({err})") from err
        if not all(isinstance(t, dict) for t in lines):
            raise ConfigError(f"--targets {targets}: every line must be a JSON object")
        chosen = [Target.from_dict(t, number) for number, t in enumerate(lines, 1)]
    chosen = chosen[:limit]
    with tqdm(total=len(chosen), desc="targets", disable=None) as bar:
        report = run_ablation(session, chosen, settings, progress=lambda done: bar.update(1))
    if removal is not None:
        report["removal"] = removal_column(removal, chosen, [m.value for m in settings.methods])
    write_report(report, out)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"report written to {out}/report.json, report.md and plots")


@app.command("serve")
@clean_errors
def serve(
    index: Annotated[Path, typer.Option(help="Index directory to serve (its 'current' build).")] = Path(
        "demo-data/index"),
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="HEADWATER_API_KEY", help="Key for admin endpoints.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    default_method: Annotated[str, typer.Option(
        envvar="HEADWATER_DEFAULT_METHOD", help="Method of a query that names none: auto (unlearning where an uncached "
        "query re-scores its rows within 30 s here, else gradient) or gradient, bm25, embedding, hybrid, unlearning.",
    )] = "auto",
) -> None:
    """Serve the HTTP API and the web page for an index (uvicorn)."""
    import uvicorn
    from pydantic import ValidationError

    from attribution.errors import ConfigError
    from indexer.manifest import resolve_build
    from service.catalog import describe
    from service.defaults import choice_error
    from service.defaults import default_method as default_method_of
    from service.main import create_app
    from service.settings import Settings

    error = choice_error(default_method)
    if error is not None:
        raise typer.BadParameter(error, param_hint="--default-method")
    setup_logging(False)
    resolve_build(index)  # fail fast, with a clear message, before uvicorn starts
    check_port_free(host, port)
    if api_key is None:
        api_key = secrets.token_urlsafe(12)
        typer.echo(f"admin/ablation API key for this run (set HEADWATER_API_KEY to choose one): {api_key}")
    try:
        settings = Settings(index=index, host=host, port=port, api_key=api_key, device=device,
                            default_method=default_method)
    except ValidationError as err:  # a HEADWATER_* variable out of range: one line, not a traceback
        raise ConfigError("; ".join(f"setting {'.'.join(map(str, e['loc']))} (HEADWATER_"
                                    f"{'_'.join(map(str, e['loc'])).upper()}): {e['msg']}" for e in err.errors())
                          ) from None
    typer.echo(f"serving {index} at http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")

    def ready(served) -> None:  # once loaded: a query to try (a planted fact of the demo) and the default method
        catalog = describe(served.current())
        chosen = default_method_of(settings.default_method, catalog)
        typer.echo(f"queries that name no method get {chosen.method.value}: {chosen.reason}")
        typer.echo(try_line(host, port, catalog.default_query))

    uvicorn.run(create_app(settings, on_ready=ready), host=host, port=port, log_level="info")


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another program listens on now, before loading the index and printing what to try."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        message = f"{host}: not an address of this machine ({err.strerror})"
        raise typer.BadParameter(message, param_hint="--host") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as err:
            raise typer.BadParameter(f"cannot listen on {host}:{port} ({err.strerror}): another server is using it; "
                                     "stop it or choose another --port", param_hint="--port") from None


def try_line(host: str, port: int, query) -> str:
    """The ``curl`` line ``serve`` prints: the index's default query, else the model's own continuation of a prompt."""
    body = {"prompt": query.prompt, "completion": query.completion, "k": 3} if query else {"prompt": "The", "k": 3}
    return (f"try: curl -s http://{host}:{port}/v1/attribute -H 'Content-Type: application/json' "
            f"-d '{json.dumps(body)}'")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
