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

from attribution.config import UnlearningConfig
from attribution.filters import Filters
from attribution.records import Result as Attributed
from attribution.retrievers import Method
from attribution.session import AttributionSession
from service.errors import IndexUnavailableError, NotFoundError, RequestLimitError
from service.schemas import (
    AttributeRequest,
    AttributeResponse,
    Example,
    IndexInfo,
    Result,
    Span,
    StepExample,
    StepResponse,
)
from service.settings import Settings
from service.state import ServedIndex


def needs_model_lock(method: Method, completion: str | None) -> bool:
    """Whether a query runs the shared model: a method that uses it (its hooks attach to the one model, so
    passes take turns), or any method when the model must generate the greedy completion first."""
    return method.uses_model or completion is None


def check_limits(request: AttributeRequest, session: AttributionSession, settings: Settings) -> None:
    """Refuse (422) a k or a number of control prompts past this server's limits."""
    largest = min(settings.max_k, len(session))
    if request.k > largest:
        raise RequestLimitError(f"k must be between 1 and {largest}")
    if len(request.controls) > settings.max_controls:
        raise RequestLimitError(f"at most {settings.max_controls} control prompts")


def attribute(served: ServedIndex, request: AttributeRequest, settings: Settings) -> AttributeResponse:
    """Rank the served index's training examples for one query (blocking: call it from a worker thread)."""
    session = served.current()
    check_limits(request, session, settings)
    method = Method(request.method)
    started = time.perf_counter()
    lock = served.model_lock if needs_model_lock(method, request.completion) else nullcontext()
    with lock:
        found = session.attribute(request.prompt, request.completion, k=request.k, method=method,
                                  filters=Filters(**request.filters.model_dump()),
                                  controls=[(c, None) for c in request.controls],
                                  unlearning=unlearning_settings(session, request))
        stages = stage_timings(session, method)  # inside the lock: the next query overwrites them
    searched = time.perf_counter()
    completion = (found[0].completion if found else request.completion) or ""
    results = [to_result(session, hit, completion) for hit in found]
    timings = {"search": (searched - started) * 1e3, "format": (time.perf_counter() - searched) * 1e3, **stages}
    return AttributeResponse(prompt=request.prompt, completion=completion, method=method.value, results=results,
                             timings_ms={name: round(ms, 2) for name, ms in timings.items()})


def unlearning_settings(session: AttributionSession, request: AttributeRequest) -> UnlearningConfig | None:
    """The session's ``unlearning`` settings with the request's steps, budget and candidates (None: another method)."""
    if Method(request.method) is not Method.UNLEARNING:
        return None
    given = {name: getattr(request, name) for name in ("steps", "budget", "candidates")
             if getattr(request, name) is not None}
    return replace(session.config.unlearning, **given)


def stage_timings(session: AttributionSession, method: Method) -> dict[str, float]:
    """Milliseconds per stage of an ``unlearning`` query (candidates, reference, target, evidence)."""
    if method is not Method.UNLEARNING:
        return {}
    timings = getattr(session.retriever(method), "timings", {})
    return {f"unlearning_{name}": ms for name, ms in timings.items() if name != "rows"}


def to_result(session: AttributionSession, hit: Attributed, completion: str) -> Result:
    """One response row: the record, its provenance, and the character span to highlight in its text."""
    meta = hit.metadata
    if hit.token_span:
        span = token_span_to_chars(session.encoder.tokenizer, hit.text, hit.token_span)
    else:
        span = overlap_span(hit.text, completion) if completion else None
    return Result(rank=hit.rank, example_id=hit.example_id, score=hit.score, text=hit.text, span=span,
                  source=meta.get("source"), row=meta.get("row"), step=meta.get("step"),
                  batch_pos=meta.get("batch_pos"), pile_set_name=meta.get("pile_set_name"),
                  token_contributions=hit.token_contributions, completion_tokens=hit.completion_tokens,
                  loss_increase=hit.loss_increase, row_tokens=hit.row_tokens)


def token_span_to_chars(tokenizer, text: str, token_span: tuple[int, int]) -> Span | None:
    """Character range of a token window in ``text`` (re-tokenized: byte-level BPE round-trips)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    start, end = (min(max(t, 0), len(ids)) for t in token_span)
    if start >= end:
        return None
    return Span(start=len(tokenizer.decode(ids[:start])), end=len(tokenizer.decode(ids[:end])))


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
                   batch_pos=row["batch_pos"], pile_set_name=row["pile_set_name"], token_count=row["token_count"])


def step(session: AttributionSession, number: int) -> StepResponse:
    """The indexed examples of one training step in batch order, and how many came from each subset."""
    rows = session.texts.by_step(number)
    if not rows:
        raise NotFoundError(f"no indexed examples at step {number}")
    examples = [StepExample(example_id=r["id"], batch_pos=r["batch_pos"], pile_set_name=r["pile_set_name"],
                            token_count=r["token_count"]) for r in rows]
    subsets = Counter(r["pile_set_name"] or "unknown" for r in rows)
    return StepResponse(step=number, examples=examples, subsets=dict(subsets))


def index_info(session: AttributionSession) -> IndexInfo:
    """The served build's manifest, summarized."""
    manifest = session.manifest
    if manifest is None:
        raise IndexUnavailableError("the served session has no manifest (it was not opened from an index)")
    config = manifest.config
    return IndexInfo(build=manifest.created, model=config.model, revisions=list(config.attribution.revisions),
                     examples=manifest.counts.examples, data={"spec": config.data, "steps": config.steps},
                     projection=asdict(manifest.projection), preconditioner=manifest.preconditioner,
                     embedding_model=manifest.embedding_model, created=manifest.created)
