"""The application layer: what each read-only endpoint does, as plain functions the routes call.

Routes validate the HTTP input and return what these give; these hold the service's policies (request
limits, when a query must take the model lock) and turn the library's records into response schemas.
They raise typed errors (``service.errors``, the library's own), never HTTP exceptions.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, replace

from attribution.batching import ContextLengthError, EmptyCompletionError
from attribution.config import UnlearningConfig
from attribution.errors import ConfigError
from attribution.filters import Filters, subsets_of
from attribution.methods import METHODS
from attribution.records import Result as Attributed
from attribution.retrievers import Method, k_error
from attribution.session import AttributionSession
from attribution.tasks import AGGREGATION, Instance
from indexer.manifest import indexed_data
from service.catalog import Catalog, describe
from service.defaults import default_method
from service.errors import IndexUnavailableError, NoMatchError, NotFoundError, RequestLimitError
from service.schemas import (
    AttributeRequest,
    AttributeResponse,
    DefaultQuery,
    Example,
    FilterSpec,
    IndexInfo,
    MethodInfo,
    MethodVariantInfo,
    Result,
    Span,
    StepExample,
    StepResponse,
    TaskInstance,
    UnlearningCostInfo,
    check_method_options,
)
from service.settings import Settings
from service.state import ServedIndex


def needs_model_lock(method: Method, completion: str | None) -> bool:
    """Whether a query runs the shared model: a method that uses it (its hooks attach to the one model, so
    passes take turns), or any method when the model must generate the greedy completion first."""
    return METHODS[method].uses_model or completion is None


def batched(served: ServedIndex, method: Method, request: AttributeRequest) -> bool:
    """Whether the query goes to the batcher: a gradient query with its completion given and no controls."""
    return (served.batcher is not None and method is Method.GRADIENT and request.completion is not None
            and not request.controls)


def check_limits(request: AttributeRequest, session: AttributionSession, settings: Settings) -> None:
    """Refuse (422) a k or a number of control prompts past this server's limits."""
    largest = min(settings.max_k, len(session))
    if request.k > largest:
        limit = "the server's max_k" if settings.max_k < len(session) else "the number of indexed examples"
        raise RequestLimitError(k_error(request.k, largest, limit))
    if len(request.controls) > settings.max_controls:
        raise RequestLimitError(f"at most {settings.max_controls} control prompts")


def attribute(served: ServedIndex, request: AttributeRequest, settings: Settings) -> AttributeResponse:
    """Rank the served index's training examples for one query (blocking: call it from a worker thread)."""
    session = served.current()
    check_limits(request, session, settings)
    catalog = describe(session, served.model_lock)
    check_filters(request.filters, catalog)
    method = query_method(request, catalog, settings)
    if request.task is not None:
        return attribute_task(served, request, method, catalog)
    started = time.perf_counter()
    filters = Filters(**request.filters.model_dump())
    if batched(served, method, request):  # sketched in one pass with the gradient queries arriving with it
        completion = request.completion or ""
        found, stages = served.batcher.submit(request.prompt, completion, request.k, filters), {}
    else:
        lock = served.model_lock if needs_model_lock(method, request.completion) else nullcontext()
        with lock:
            completion = (request.completion if request.completion is not None
                          else model_completion(session, request.prompt))
            check_terms(method, request.prompt + completion)
            found = session.attribute(request.prompt, completion, k=request.k, method=method, filters=filters,
                                      controls=[(c, None) for c in request.controls],
                                      unlearning=unlearning_settings(session, request, method))
            stages = stage_timings(session, method)  # inside the lock: the next query overwrites them
            observe_cost(session, method, catalog)
    searched = time.perf_counter()
    completion = (found[0].completion if found else completion) or ""
    found, note = meaningful(method, found, request.filters)
    results = [to_result(session, hit, completion, request.token_evidence) for hit in found]
    timings = {"search": (searched - started) * 1e3, "format": (time.perf_counter() - searched) * 1e3, **stages}
    return AttributeResponse(prompt=request.prompt, completion=completion, method=method.value, results=results,
                             timings_ms={name: round(ms, 2) for name, ms in timings.items()}, note=note)


def attribute_task(served: ServedIndex, request: AttributeRequest, method: Method,
                   catalog: Catalog) -> AttributeResponse:
    """A task query: its instances answered as one (blocking: call it from a worker thread)."""
    session = served.current()
    started = time.perf_counter()
    task = [Instance(i.prompt, i.completion) for i in request.task]
    controls = [Instance(i.prompt, i.completion) for i in request.control_task or []]
    missing = any(i.completion is None for i in [*task, *controls])
    lock = served.model_lock if METHODS[method].uses_model or missing else nullcontext()
    with lock:
        task = [Instance(i.prompt, i.completion if i.completion is not None else model_completion(session, i.prompt))
                for i in task]
        check_terms(method, " ".join(i.prompt + i.completion for i in task))
        found = session.attribute_task(task, k=request.k, method=method,
                                       filters=Filters(**request.filters.model_dump()), control_task=controls,
                                       unlearning=unlearning_settings(session, request, method))
        stages = stage_timings(session, method)
    searched = time.perf_counter()
    found, note = meaningful(method, found, request.filters)
    results = [to_result(session, hit, "", request.token_evidence) for hit in found]
    timings = {"search": (searched - started) * 1e3, "format": (time.perf_counter() - searched) * 1e3, **stages}
    return AttributeResponse(prompt=task[0].prompt, completion=task[0].completion or "", method=method.value,
                             results=results, task=[TaskInstance(prompt=i.prompt, completion=i.completion)
                                                    for i in task],
                             aggregation=AGGREGATION[method],
                             timings_ms={name: round(ms, 2) for name, ms in timings.items()}, note=note)


def query_method(request: AttributeRequest, catalog: Catalog, settings: Settings) -> Method:
    """The request's method, else the server's default; options the default method does not take are refused (422)
    as they would be had the request named it."""
    if request.method is not None:
        return Method(request.method)
    method = default_method(settings.default_method, catalog).method
    try:
        check_method_options(method, request.controls or request.control_task or [], request.options_given())
    except ValueError as err:
        raise RequestLimitError(f"{err} (the request names no method, and this server's default is {method.value})"
                                ) from err
    return method


def unlearning_settings(session: AttributionSession, request: AttributeRequest,
                        method: Method) -> UnlearningConfig | None:
    """The session's ``unlearning`` settings with the request's steps, budget, candidates and direction (None:
    another method)."""
    if method is not Method.UNLEARNING:
        return None
    given = {name: getattr(request, name) for name in METHODS[method].options if getattr(request, name) is not None}
    return replace(session.config.unlearning, **given)


def stage_timings(session: AttributionSession, method: Method) -> dict[str, float]:
    """Milliseconds per stage of an ``unlearning`` query (candidates, reference, target, evidence)."""
    if method is not Method.UNLEARNING:
        return {}
    timings = getattr(session.retriever(method), "timings", {})
    return {f"unlearning_{name}": ms for name, ms in timings.items() if name != "rows"}


def observe_cost(session: AttributionSession, method: Method, catalog: Catalog) -> None:
    """Record what an ``unlearning`` query's pass over its rows cost, for ``auto`` and ``GET /v1/index``."""
    if method is Method.UNLEARNING:
        timings = getattr(session.retriever(method), "timings", {})
        if "target" in timings and "rows" in timings:
            catalog.observed.add(timings["target"] / 1e3, int(timings["rows"]))


def model_completion(session: AttributionSession, prompt: str) -> str:
    """The model's greedy continuation of ``prompt``; a prompt that leaves it no room is refused as too long, and
    no error echoes the prompt back."""
    encoder = session.encoder
    tokens = len(encoder.encode_ids(prompt))
    if tokens >= encoder.max_length:
        raise ContextLengthError(f"the prompt is too long: {tokens} tokens ({len(prompt)} characters) leave no room "
                                 f"for a continuation in the model's context of {encoder.max_length}; shorten it")
    try:
        return encoder.greedy_completion(prompt)
    except ConfigError as err:
        raise EmptyCompletionError(f"the model's greedy continuation of the prompt ({len(prompt)} characters) is "
                                   "empty; give a completion") from err


def check_filters(filters: FilterSpec, catalog: Catalog) -> None:
    """Refuse (422) a subset this index does not hold (listing those it does) or a step range outside its rows."""
    name = filters.pile_set_name
    if name is not None and name not in catalog.subsets:
        if not catalog.subsets:
            raise NoMatchError(f"unknown pile_set_name {name!r}: this index records no subsets; drop the filter")
        near = [s for s in catalog.subsets if s.casefold() == name.casefold()]
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise NoMatchError(f"unknown pile_set_name {name!r}{hint}; this index holds "
                           + ", ".join(map(repr, catalog.subsets)))
    if filters.step_min is None and filters.step_max is None:
        return
    if catalog.steps is None:
        raise NoMatchError("this index's rows have no training steps; drop step_min and step_max")
    first, last = catalog.steps
    low, high = filters.step_min if filters.step_min is not None else first, filters.step_max
    if low > last or (high is not None and high < first):
        asked = f"steps {low}-{high}" if high is not None else f"steps from {low}"
        raise NoMatchError(f"no indexed rows in {asked}: this index holds steps {first}-{last}")


def check_terms(method: Method, text: str) -> None:
    """Refuse (422) a BM25 query left with no terms once English stop-words are removed (it would rank nothing)."""
    if method is not Method.BM25:
        return
    import bm25s

    if not bm25s.tokenize([text], stopwords="en", show_progress=False, return_ids=False)[0]:
        raise NoMatchError("bm25 has no query terms left once English stop-words are removed; add content words "
                           "or use another method")


def meaningful(method: Method, found: list[Attributed], filters: FilterSpec) -> tuple[list[Attributed], str | None]:
    """Drop BM25 rows that share no term with the query (score 0: an arbitrary order), and say why when that or
    the filters leave no result."""
    if method is Method.BM25:  # the lexical indices return only rows sharing a term (bm25s once padded with 0s)
        kept = [hit for hit in found if hit.score > 0]
        if not kept and not filters.model_dump(exclude_none=True):
            return [], "no indexed row contains any of the query's terms"
        found = kept
    if not found and filters.model_dump(exclude_none=True):
        return [], "no indexed row matches these filters together"
    return found, None


def to_result(session: AttributionSession, hit: Attributed, completion: str, token_evidence: bool = False) -> Result:
    """One response row: the record, and the character span to highlight in its text (its token window, else where
    the completion occurs) with that span's subset (with ``token_evidence``, an unlearning row's tokens and their
    loss increases)."""
    tokenizer = session.encoder.tokenizer
    if hit.token_span:
        span = token_span_to_chars(tokenizer, hit.text, hit.token_span)
    else:
        span = overlap_span(hit.text, completion) if completion else None
    return Result.from_record(hit, span, span_subset(tokenizer, hit.text, hit.metadata, hit.token_span, span),
                              token_evidence)


def token_span_to_chars(tokenizer, text: str, token_span: tuple[int, int]) -> Span | None:
    """Character range of a token window in ``text`` (re-tokenized: byte-level BPE round-trips)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    start, end = (min(max(t, 0), len(ids)) for t in token_span)
    if start >= end:
        return None
    return Span(start=len(tokenizer.decode(ids[:start])), end=len(tokenizer.decode(ids[:end])))


def span_subset(tokenizer, text: str, meta: dict, token_span: tuple[int, int] | None, span: Span | None) -> str | None:
    """The subset of the matched span: the row's only one, else the piece of ``subset_spans`` (row token ranges,
    see ``demo.build``) it overlaps most; None when that is not known."""
    names = subsets_of(meta)
    if len(names) == 1:
        return names[0]
    pieces = meta.get("subset_spans")
    if not pieces or (token_span is None and span is None):
        return None
    if token_span is None:  # a character span: the tokens it covers
        try:
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        except (NotImplementedError, TypeError, KeyError):  # a slow tokenizer has no offsets
            return None
        covered = [i for i, (a, b) in enumerate(offsets) if a < span.end and b > span.start]
        if not covered:
            return None
        token_span = (covered[0], covered[-1] + 1)
    start, end = token_span
    overlap, name = max((min(end, b) - max(start, a), subset) for a, b, subset in pieces)
    return name if overlap > 0 else None


def overlap_span(text: str, completion: str) -> Span | None:
    """Where the completion itself occurs in the text, if it does."""
    needle = completion.strip().lower()
    at = text.lower().find(needle) if needle else -1
    return Span(start=at, end=at + len(needle)) if at >= 0 else None


def example(session: AttributionSession, example_id: int) -> Example:
    """One training example in full, with its provenance."""
    rows = session.texts.by_ids([example_id])
    if not rows:
        raise NotFoundError(f"no example {example_id} in this index")
    row = rows[0]
    return Example(example_id=row["id"], text=row["text"], source=row["source"], row=row["row"], step=row["step"],
                   batch_pos=row["batch_pos"], pile_set_name=row["pile_set_name"], pile_set_names=subsets_of(row),
                   token_count=row["token_count"])


def step(session: AttributionSession, number: int) -> StepResponse:
    """The indexed examples of one training step in batch order, and how many came from each subset."""
    rows = session.texts.by_step(number)
    if not rows:
        raise NotFoundError(f"no indexed examples at step {number}")
    examples = [StepExample(example_id=r["id"], batch_pos=r["batch_pos"], pile_set_name=r["pile_set_name"],
                            token_count=r["token_count"]) for r in rows]
    subsets = Counter(r["pile_set_name"] or "unknown" for r in rows)
    return StepResponse(step=number, examples=examples, subsets=dict(subsets))


def index_info(session: AttributionSession, settings: Settings) -> IndexInfo:
    """The served build's manifest, summarized, with what it holds (subsets, steps), a query to try first and the
    method a query without one gets."""
    manifest = session.manifest
    if manifest is None:
        raise IndexUnavailableError("the served session has no manifest (it was not opened from an index)")
    config, catalog = manifest.config, describe(session)
    chosen = default_method(settings.default_method, catalog)
    return IndexInfo(build=manifest.created, model=config.model, revisions=list(config.attribution.revisions),
                     examples=manifest.counts.examples, data=indexed_data(manifest),
                     projection=asdict(manifest.projection), preconditioner=manifest.preconditioner,
                     embedding_model=manifest.embedding_model, created=manifest.created,
                     subsets=catalog.subsets, steps=list(catalog.steps) if catalog.steps else None,
                     default_query=default_query(catalog), default_method=chosen.method,
                     default_method_reason=chosen.reason, unlearning_cost=cost_info(catalog),
                     methods=method_infos())


def method_infos() -> list[MethodInfo]:
    """Every registered method as ``GET /v1/index`` lists it (the page builds its method list from it)."""
    return [MethodInfo(name=method, score=spec.score, uses_model=spec.uses_model, takes_controls=spec.takes_controls,
                       options=list(spec.options),
                       variants=[MethodVariantInfo(name=v.name, label=v.label, options=v.options)
                                 for v in spec.variants])
            for method, spec in METHODS.items()]


def cost_info(catalog: Catalog) -> UnlearningCostInfo:
    """The estimate of an uncached unlearning query at load and from the queries measured since."""
    cost, measured = catalog.unlearning, catalog.observed.row_seconds()
    timed = cost.seconds() if cost.row_seconds != float("inf") else None
    return UnlearningCostInfo(rows=cost.rows, row_tokens=cost.row_tokens,
                              estimate_seconds=None if timed is None else round(timed, 3),
                              measured_queries=catalog.observed.queries,
                              measured_seconds=None if measured is None else round(cost.seconds(measured), 3))


def default_query(catalog: Catalog) -> DefaultQuery | None:
    """The catalog's query to try first, as the response schema."""
    found = catalog.default_query
    if found is None:
        return None
    return DefaultQuery(prompt=found.prompt, completion=found.completion, fact_id=found.fact_id,
                        model_correct=found.model_correct)
