"""Regenerate ``bench/RESULTS.md``: every benchmark and evaluation, with the machine, versions and date.

    python -m bench.results [--demo demo-data] [--out bench-out] [--only a,b] [--reuse] [--lds-subsets M]

Each section runs as its own process (so timings and peak memory are its own) and leaves its
markdown (and JSON where it has one) in ``--out``; ``--reuse`` keeps sections already there
(resume after an interruption), ``--only`` reruns some. ``make bench`` runs everything. A section neither run
nor saved in this pass keeps its text from the ``RESULTS.md`` being replaced, labelled with the pass it came
from, so a partial pass never erases older measurements silently. The evidence table at the top is built from
``bench/evidence.json`` (``bench.evidence_store``): each of its columns as last measured, with the pass that measured
it, so a pass that reruns some sections updates their columns and keeps the others.
The bergson section needs the bench-only environment (``bench/bergson_env.sh``); without it
the section says so instead of failing the run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import evidence, evidence_store
from bench.evidence import TITLE as EVIDENCE_TITLE
from evaluation.selections import FIELD_LDS_ESTIMATORS

log = logging.getLogger("bench.results")
ROOT = Path(__file__).resolve().parent.parent
SUMMARY_TITLE = "Attribution vs influence"  # bench.summary writes this section ahead of the others
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
LDS_PEERS = ("kronfluence-ekfac,kronfluence-ekfac-head,kronfluence-identity,bergson-trackstar,bergson-ekfac,"
             "bergson-identity,bergson-shampoo,bergson-ekfac-cg")
"""The peers of the LDS sections: every EK-FAC-class estimator (Kronfluence's also with the output head tracked:
headwater's ``newton`` moves every parameter), and bergson's EK-FAC + CG (its board's best non-replay row; ~30 s a
query on one thread). ASTRA is left out: its step size must be tuned per case (``bench.peers_lds --astra-lr``)."""

SCRATCH_ESTIMATORS = ",".join((*FIELD_LDS_ESTIMATORS, "magic@s100"))
"""The from-scratch case's estimators: the defaults and the replay over its last two of three epochs (steps 100-299),
its ceiling (the replay over every step is swamped by the warm-up steps there: docs/RESULTS.md, session 16)."""
LARGER_PEERS = "kronfluence-ekfac,bergson-ekfac"
"""The larger case's peers: the unprojected EK-FAC of both (~7 minutes together here). bergson's EK-FAC + CG is left
out: ~24 minutes on the first case's 2×64 model, several times that at 4×128 (name it to ``bench.peers_lds`` to run
it)."""
LARGER_ESTIMATORS = ("gradient-ip/none,gradient-ip/ekfac,gradient/block,gradient-ip/ekfac_basis,"
                     "gradient-ip/ekfac_basis@64,bm25,unlearning,newton,newton@c100@bm25,newton@c300@bm25,"
                     "unlearning@newton")
"""The larger case's headwater estimators: the served methods, the index default and the largest sketch that fits
(``ekfac_basis@256`` holds ~786 K numbers a row here, every weight: its 2,000 rows with their fit ran out of 24 GB)."""

REMOVAL_METHODS = "gradient,bm25,embedding,unlearning,unlearning@newton"
"""The removal sections' selections: the served methods and the served Newton step (~5 s of CG a query on the second
case, quiet; ~17-20 s on the demo at d10, busy)."""


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    about: str
    argv: list[str]
    python: Path | None = None
    """Interpreter to run with (default: this one)."""


def sections(demo: Path, out: Path, lds_subsets: int | None, second: Path | None = None) -> list[Section]:
    index = demo / "index"
    second = second or demo.parent / "second-data"
    second_index = second / "index-all"
    demo_index_all = demo / "index-all"
    headwater = [sys.executable, "-m", "headwater.cli"]
    lds = ["--subsets", str(lds_subsets)] if lds_subsets else []  # retrains one per core (the command's default)
    return [
        Section("facts", "Fact tracing (attribution)",
                "Recall and MRR of the first gold row (a training row stating the fact whole), known facts only.",
                headwater + ["eval", "facts", "--index", str(index), "--contrastive", "--out", str(out / "facts")]),
        Section("tailpatch", "Tail-patch (influence)",
                "One training step on each top-k row from the final checkpoint; increase in completion log-prob.",
                headwater + ["eval", "tailpatch", "--index", str(index), "--out", str(out / "tailpatch")]),
        Section("ablation", "Unlearning ablation (influence)",
                "Gradient ascent on each selection to a fixed ‖Δθ‖; 20 targets, 3 seeds, 19 random draws per seed.",
                [sys.executable, "-m", "bench.ablation", "--index", str(index), "--out", str(out / "ablation"),
                 "--json", str(out / "ablation.json")]),
        Section("lds", "Linear datamodeling score (influence)",
                "Retrain on random halves of the training rows; Spearman of predicted vs actual completion loss.",
                headwater + ["eval", "lds", "--demo", str(demo), "--index", str(index), "--out", str(out / "lds")]
                + lds),
        Section("bergson", "Side by side with bergson",
                "Same model, data and projection size: throughput, bytes per example, fact-tracing quality.",
                ["-m", "bench.compare_bergson", "--demo", str(demo), "--steps", "0:150",
                 "--json", str(out / "bergson.json")], python=BENCH_PYTHON),
        Section("estimators", "Every estimator, fact tracing on the demo",
                "2,400 rows (steps 0-150), k=8, 16-token windows, 60 known facts: each gradient curvature kind "
                "(cosine and inner product), TracIn-CP, unlearning, hybrid, BM25, embedding.",
                [sys.executable, "-m", "bench.quality", "--demo", str(demo), "--steps", "0:150", "--limit", "60"]),
        Section("unlearning-pools", "The served unlearning's candidate pool on the demo index",
                "The demo index (6,400 rows, k=8): fact tracing by `unlearning` re-ranking 30 (the default) or 100 "
                "candidates per source, with seconds per query; then the pool's recall of exhaustive scoring's top 10 "
                "at 30 / 100 / 300 per source (10 facts, training-style prompts: exhaustive scoring re-scores every "
                "row).",
                [sys.executable, "-m", "bench.unlearning", "--index", str(index), "--variants",
                 "default,candidates=100", "--pools", "30,100,300", "--exhaustive-limit", "10"]),
        Section("second-demo", "The second case",
                "Built unlike the demo (stdlib and NumPy docstrings, other templates, size and seed).",
                headwater + ["demo", "build", "--preset", "second", "--out", str(second)]),
        Section("unlearning-pools-second", "The served unlearning's candidate pool on the second case",
                "The second case's rows of steps 0-200 (2,400, sketched in memory as the demo index is: k=8, 16-token "
                "windows), 40 known facts: the same two tables as on the demo.",
                [sys.executable, "-m", "bench.unlearning", "--demo", str(second), "--steps", "0:200", "--limit", "40",
                 "--variants", "default,candidates=100", "--pools", "30,100,300", "--exhaustive-limit", "10"]),
        Section("estimators-second", "Every estimator, fact tracing on the second case",
                "Same table on the second model and corpus: 2,400 rows (steps 0-200), 60 known facts.",
                [sys.executable, "-m", "bench.quality", "--demo", str(second), "--steps", "0:200", "--limit",
                 "60"]),
        Section("peers-lds", "Kronfluence and bergson on the field-LDS case",
                "Their influence scores of every training chunk for every held-out query chunk (same model, "
                "data and modules), for the LDS table below.",
                ["-m", "bench.peers_lds", "--out", str(out / "field-lds"), "--peers", LDS_PEERS], python=BENCH_PYTHON),
        Section("field-lds", "LDS on the field's protocol (influence)",
                "Real-text chunks; retrains without 1 % of the rows, on halves, without the same 1 % from another "
                "seed and with it weighted 0 in place; linear influence scores of every headwater estimator beside "
                "Kronfluence and bergson, and the exact-replay ceiling (MAGIC-style).",
                headwater + ["eval", "field-lds", "--out", str(out / "field-lds"), "--reseeded", "50",
                             "--zeroed", "50", "--estimators", SCRATCH_ESTIMATORS]),
        Section("peers-lds-finetune", "Kronfluence and bergson on the fine-tuning LDS case",
                "The same peers on the fine-tuning variant (the field-LDS model fine-tuned on 200 chunks of "
                "stdlib docstrings).",
                ["-m", "bench.peers_lds", "--out", str(out / "field-lds-finetune"), "--finetune", "200", "--peers",
                 LDS_PEERS],
                python=BENCH_PYTHON),
        Section("field-lds-finetune", "LDS on the field's protocol, fine-tuning variant (influence)",
                "The field-LDS model fine-tuned on 200 stdlib chunks; retrains fine-tune the same weights "
                "without 1 %, on halves, without the same 1 % in another order and with it weighted 0 in place; "
                "queries are held-out stdlib chunks.",
                headwater + ["eval", "field-lds", "--out", str(out / "field-lds-finetune"), "--finetune", "200",
                             "--halves", "50", "--reseeded", "50", "--zeroed", "50"]),
        Section("peers-lds-larger", "Kronfluence and bergson on the larger LDS case",
                "The EK-FAC-class peers on the third case (GPT-NeoX 4×128, 2,000 chunks of 129 tokens).",
                ["-m", "bench.peers_lds", "--out", str(out / "field-lds-larger"), "--case", "larger", "--peers",
                 LARGER_PEERS],
                python=BENCH_PYTHON),
        Section("field-lds-larger", "LDS on the field's protocol, larger case (influence)",
                "A 4-layer, 128-wide GPT-NeoX trained 2 epochs on 2,000 chunks of 129 tokens (4× the parameters, 2× "
                "the rows and the context of the first case); 50 retrains without 1 %, 20 on halves (about 40 "
                "minutes of retrains on 2 cores).",
                headwater + ["eval", "field-lds", "--out", str(out / "field-lds-larger"), "--case", "larger",
                             "--estimators", LARGER_ESTIMATORS]),
        Section("behaviours", "Which data teaches a behaviour (task queries)",
                "Tasks of unusual ways to speak taught under two phrasings among real text; every method as a task "
                "query and per instance; the unlearning check of each task; removal and retrain of each task, and "
                "of each phrasing's demonstrations alone.",
                headwater + ["eval", "behaviours", "--out", str(out / "behaviours"), "--removal",
                             "--removal-by-phrasing"]),
        Section("behaviours-seeds", "Behaviours over three case seeds",
                "The unlearning check's ratios on three builds of the behaviour case (seeds 0-2: text layout, "
                "demonstrations, queries and model each their own): one build's ratios move a lot.",
                headwater + ["eval", "behaviours", "--out", str(out / "behaviours-seeds"), "--seeds", "3"]),
        Section("behaviour-phrasings", "Task queries that name one phrasing, both, or neither",
                "Per method, on the three seeds' builds above: a task query of the first phrasing, one of both "
                "phrasings, and one whose instruction no training row holds; which phrasing's rows each finds.",
                [sys.executable, "-m", "bench.behaviour_phrasings", "--out", str(out / "behaviours-seeds"),
                 "--seeds", "0,1,2"]),
        Section("second-index", "Index of every row of the second case", "CLI defaults (the removal test needs "
                "every training row).",
                headwater + ["index", "build", "--model", str(second / "model"), "--data",
                             str(second / "data" / "document"), "--out", str(second_index)]),
        Section("removal", "Removal and retrain (influence)",
                "Each method's top-40 rows for 40 known facts removed at once (a fact has ~38 stating rows), the "
                "model retrained from scratch from 3 initializations.",
                headwater + ["eval", "removal", "--index", str(second_index), "--out", str(out / "removal-k40"),
                             "--methods", REMOVAL_METHODS, "--train-seeds", "3", "--k", "40"]),
        Section("demo-index-all", "Index of every row of the demo", "CLI defaults, all 19,200 rows (24 passes "
                "over the corpus; removal needs every training row).",
                headwater + ["index", "build", "--model", str(demo / "model"), "--data",
                             str(demo / "data" / "document"), "--out", str(demo_index_all)]),
        Section("removal-demo", "Removal and retrain on the demo (influence)",
                "Each method's top-64 rows for 40 known facts removed at once (a demo fact has ~64 stating rows: "
                "3 documents × 24 passes), the model retrained from scratch from 3 initializations.",
                headwater + ["eval", "removal", "--index", str(demo_index_all), "--out", str(out / "removal-demo"),
                             "--methods", REMOVAL_METHODS, "--train-seeds", "3", "--k", "64"]),
        Section("sketch", "Sketch throughput", "Per-example gradient sketches vs a plain forward+backward pass.",
                [sys.executable, "-m", "bench.sketch", "--demo", str(demo)]),
        Section("index", "Index build and search at scale",
                "Demo build per stage; FAISS (exact, 4-bit fast-scan IVF-PQ, OPQ + IVF-PQ; candidates re-ranked "
                "exactly) and DuckDB on synthetic sketches at 1e5 and 1e6 rows, the queries drawn like the data.",
                [sys.executable, "-m", "bench.index", "--demo", str(demo)]),
        Section("store-scale", "The vector store at 10^7 (synthetic)",
                "10^7 synthetic unit vectors of dim 256 around 1,000 fixed centres, the queries drawn like the data; "
                "4-bit fast-scan IVF-PQ candidates re-ranked exactly from the float16 memmap; the issue's goal: "
                "p50 ≤ 20 ms with recall@10 ≥ 0.95.",
                [sys.executable, "-m", "bench.index", "--skip-demo", "--sizes", "10000000", "--dims", "256",
                 "--factories", "IVF{lists},PQ{m}x4fs", "--searches", "16x100,1024x100,16x400,64x400,16x1000,64x1000",
                 "--work", str(out)]),
        Section("store-real", "The vector store on real sketches",
                "The second case's stored sketches (every row, 3,072 dims; 200 held out as queries) beside synthetic "
                "vectors of the same number and dimension.",
                [sys.executable, "-m", "bench.index", "--skip-demo", "--real",
                 str(second_index / "current" / "vectors.npy"), "--factories", "IVF{lists},PQ{m}x4fs",
                 "--searches", "4x100,16x100,64x100", "--work", str(out)]),
        Section("lexical", "The lexical index at scale",
                "bm25s (in memory) and tantivy (on disk) on synthetic Zipf documents of 300 words at 1e5 and 1e6 "
                "rows: build time, peak RSS, bytes on disk, query p50/p95.",
                [sys.executable, "-m", "bench.lexical", "--sizes", "100000,1000000"]),
        Section("pythia-shape", "At Pythia's real shapes",
                "A random GPT-NeoX of Pythia-14m's and -70m's configs, 4 rows of 2,049 tokens, vocabulary 50,304: "
                "plain forward+backward, headwater's sketch pass at the index defaults, bergson's build of the same "
                "rows, the parts of an unlearning query and of its Newton step (fit, solve, rows).",
                [sys.executable, "-m", "bench.pythia_shape", "--shapes", "14m,70m", "--rows", "4", "--bergson",
                 "--unlearning", "--newton"]),
        Section("service", "Service latency", "POST /v1/attribute on a real uvicorn server.",
                [sys.executable, "-m", "bench.service", "--index", str(index), "--demo", str(demo)]),
        Section("cost-estimate", "The cost estimate that method auto decides by",
                "service.catalog's estimate of an uncached unlearning query (timed at load) against such a query "
                "timed in the same process, 3 fresh opens an index; the aim: within 0.5-2×.",
                [sys.executable, "-m", "bench.cost_estimate", "--index", str(index), "--index", str(second_index),
                 "--repeats", "3"]),
    ]


def run_section(section: Section, out: Path) -> dict:
    """Run one section; its stdout is the markdown. Returns {seconds, ok, markdown}."""
    python = section.python
    if python is not None and not python.exists():
        text = (f"_Not run: the bench-only environment {python.parent.parent.name}/ is missing; "
                "create it with `bench/bergson_env.sh`._\n")
        return {"seconds": 0.0, "ok": False, "markdown": text}
    argv = ([str(python)] + section.argv) if python is not None else section.argv
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    log.info("running %s: %s", section.name, " ".join(argv))
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    load = f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end ({os.cpu_count()} cores)"
    (out / f"{section.name}.log").write_text(done.stderr)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        text = f"_Failed (exit {done.returncode}) after {seconds:.0f} s:_\n\n```\n{tail}\n```\n"
        return {"seconds": seconds, "ok": False, "markdown": text, "load": load}
    return {"seconds": seconds, "ok": True, "markdown": done.stdout, "load": load}


def git(*args: str) -> str:
    """``git ARGS``' output in the repository ("unknown" when git cannot tell)."""
    found = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


def pass_stamp(lds_subsets: int | None = None) -> str:
    """This pass, as ``RESULTS.md`` and the evidence store name it: ``DATE; commit SHA``, marked when tracked files
    differ from the commit or the LDS retrains were cut (a quick pass must not pass for a full one)."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                            text=True)
    dirty = " with uncommitted changes" if status.returncode == 0 and status.stdout.strip() else ""
    quick = f"; a quick pass of {lds_subsets} LDS retrains" if lds_subsets is not None else ""
    return f"{datetime.date.today().isoformat()}; commit {git('rev-parse', '--short', 'HEAD')}{dirty}{quick}"


def versions(stamp: str) -> str:
    import duckdb
    import faiss
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    memory = next((int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0.0) if Path("/proc/meminfo").exists() else 0.0
    return (f"- date: {stamp}\n"
            f"- machine: {cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, no GPU used\n"
            f"- Python {platform.python_version()}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, faiss {faiss.__version__}, duckdb {duckdb.__version__}\n")


def compose(chosen: list[Section], results: dict[str, dict], out: Path, summary: str, stamp: str) -> str:
    parts = ["# headwater benchmark and evaluation results", "",
             "Regenerated by `make bench` (`python -m bench.results`); every number below was measured in the run "
             "that wrote this file, on this machine. Shared machines are noisy: compare ratios within a table, "
             "not absolute times across runs.", "", versions(stamp), summary]
    for section in chosen:
        result = results[section.name]
        if result.get("carried"):  # the earlier text already says what the section is
            parts += [f"## {section.title}", "", result["markdown"].strip(), ""]
            continue
        took = f" ({result['seconds']:.0f} s; {result['load']})" if result.get("load") else ""
        parts += [f"## {section.title}", "", f"{section.about}{took}", "",
                  result["markdown"].strip(), ""]
    return "\n".join(parts) + "\n"


def previous_sections(text: str, titles: list[str]) -> dict[str, str]:
    """The body of each known section title in an earlier ``RESULTS.md`` (a section's own ``##`` subheadings stay
    inside it), and that file's date and commit line."""
    found: dict[str, str] = {}
    starts = sorted((text.find(f"\n## {t}\n"), t) for t in titles if f"\n## {t}\n" in text)
    for (start, title), (end, _) in zip(starts, [*starts[1:], (len(text), "")][: len(starts)], strict=True):
        found[title] = text[start + len(f"\n## {title}\n") : end].strip()
    return found


def earlier_sections(text: str, titles: list[str]) -> dict[str, str]:
    """``previous_sections`` of the two summaries and every section: looked up alone, a summary (the first
    sections) would run to the end of the file and carry every later section along with it."""
    return previous_sections(text, [EVIDENCE_TITLE, SUMMARY_TITLE, *titles])


def has_rows(markdown: str) -> bool:
    """Whether a markdown table in ``markdown`` has a data row (not only its header and separator)."""
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    return len(table) > 2


def measured_before(body: str) -> bool:
    """Whether an earlier ``RESULTS.md`` section holds a measurement: not when its text (after the section's own
    description and any carried-over label) is only "_Not run…_"."""
    last = next((line for line in reversed(body.strip().splitlines()) if line.strip()), "")
    return not body.startswith("_Not run") and not last.startswith("_Not run")


def carried_over(body: str, stamp: str) -> dict:
    """An earlier pass's section, labelled (once: a section carried over before keeps its first label)."""
    label = "_Not rerun in this pass: carried over from the pass of"
    text = body if body.startswith(label) else f"{label} {stamp}._\n\n{body}"
    return {"seconds": 0.0, "ok": True, "carried": True, "markdown": text + "\n"}


def evidence_headline(table: str, before: dict[str, str], stamp: str) -> str:
    """The evidence table's ``RESULTS.md`` section; with no table (no column ever stored), the earlier file's
    section, labelled with its pass."""
    headline = evidence.section(table)
    if not headline and EVIDENCE_TITLE in before:
        headline = f"## {EVIDENCE_TITLE}\n\n" + carried_over(before[EVIDENCE_TITLE], stamp)["markdown"]
    return headline


def stored_evidence(path: Path, out: Path, results: dict[str, dict]) -> str:
    """Put the columns measured by the sections in ``results`` that ran and succeeded into the store at ``path``, and
    return the table of every stored column. A result without the pass that measured it (saved before passes were
    recorded) is left out, and no column is replaced by one measured on an earlier date. Returns "" when the store
    or a report cannot be read (logged; the store left as it was)."""
    try:
        stored = evidence_store.load(path)
        for name, result in results.items():
            if not result.get("ok") or result.get("carried"):
                continue
            if "measured" not in result:
                log.warning("%s: its saved result does not say which pass measured it; its columns are not stored",
                            name)
                continue
            columns = [(column, found) for column, found in evidence.report_columns(out, {name})
                       if not evidence_store.older(result["measured"], stored.get(column.title))]
            stored = evidence_store.update(stored, columns, result["measured"])
        table = evidence_store.table(stored)  # raises on a stored cell of the wrong type (a file edited by hand)
    except (evidence_store.StoreError, OSError, ValueError, KeyError, TypeError) as err:
        log.error("the evidence table was not regenerated (%s); restore %s with git checkout if it is at fault",
                  err, path)
        return ""
    try:
        evidence_store.save(path, stored)
    except OSError as err:  # the table is still right for this pass; say that the store did not keep it
        log.error("%s: the evidence store was not updated (%s); the table below is this pass's only", path, err)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-data"))
    parser.add_argument("--second", type=Path, default=Path("second-data"), help="the second case's demo directory")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="where each section's output goes")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--readme", type=Path, default=None,
                        help="a README whose evidence table (between its markers) is regenerated (make bench: ours)")
    parser.add_argument("--evidence", type=Path, default=evidence_store.STORE,
                        help="the evidence table's stored columns, each with the pass that measured it")
    parser.add_argument("--only", default=None, help="comma-separated sections to (re)run")
    parser.add_argument("--reuse", action="store_true", help="keep sections already in --out")
    parser.add_argument("--lds-subsets", type=int, default=None, help="LDS retrains (default: the command's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    demo, out = args.demo.absolute(), args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    every = sections(demo, out, args.lds_subsets, args.second.absolute())
    only = set(args.only.split(",")) if args.only else {s.name for s in every}
    unknown = only - {s.name for s in every}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {[s.name for s in every]}")
    results: dict[str, dict] = {}
    earlier = args.results.read_text() if args.results.is_file() else ""
    stamp = next((line.removeprefix("- date: ") for line in earlier.splitlines() if line.startswith("- date: ")),
                 "an earlier pass")
    before = earlier_sections(earlier, [s.title for s in every])
    this_pass = pass_stamp(args.lds_subsets)
    for section in every:
        saved = out / f"{section.name}.result.json"
        if section.name not in only or (args.reuse and saved.exists()):
            if saved.exists():
                results[section.name] = json.loads(saved.read_text())
            elif section.title in before and measured_before(before[section.title]):
                results[section.name] = carried_over(before[section.title], stamp)
            else:
                results[section.name] = {"seconds": 0.0, "ok": False, "markdown": "_Not run in this pass._\n"}
            continue
        results[section.name] = {**run_section(section, out), "measured": this_pass}
        saved.write_text(json.dumps(results[section.name]))
        log.info("%s: %s in %.0f s", section.name, "ok" if results[section.name]["ok"] else "FAILED",
                 results[section.name]["seconds"])
    from bench.summary import attribution_vs_influence

    try:  # a summary that cannot be made must not lose the sections measured above
        summary = attribution_vs_influence(out)
    except Exception:
        log.exception("the summary could not be made from %s; writing the sections without it", out)
        summary = ""
    if not has_rows(summary) and SUMMARY_TITLE in before:  # its evaluations not rerun
        summary = f"## {SUMMARY_TITLE}\n\n" + carried_over(before[SUMMARY_TITLE], stamp)["markdown"]
    table = stored_evidence(args.evidence, out, results)
    headline = evidence_headline(table, before, stamp)
    args.results.write_text(compose(every, results, out, headline + "\n" + summary if headline else summary,
                                    this_pass))
    log.info("wrote %s", args.results)
    if table and args.readme is not None:
        try:
            args.readme.write_text(evidence.replace_between_markers(args.readme.read_text(), table))
            log.info("evidence table written into %s", args.readme)
        except (OSError, ValueError) as err:  # RESULTS.md is written: say what to mend, lose nothing
            log.error("%s: the README's evidence table was not regenerated", err)


if __name__ == "__main__":
    main()
