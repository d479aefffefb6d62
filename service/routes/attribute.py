"""``POST /v1/attribute``: the influential training examples for a prompt and completion."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from attribution.filters import Filters
from service.deps import ServedDep, SessionDep, SettingsDep
from service.schemas import AttributeRequest, AttributeResponse, ErrorBody, Result, Span

router = APIRouter(prefix="/v1", tags=["attribution"])


def token_span_to_chars(tokenizer, text: str, token_span: list[int]) -> Span | None:
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


@router.post("/attribute", response_model=AttributeResponse,
             responses={400: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def attribute(body: AttributeRequest, session: SessionDep, served: ServedDep,
                    settings: SettingsDep) -> AttributeResponse:
    """Rank training examples by influence on (gradient) or similarity to (embedding, bm25) the query."""
    if body.k > min(settings.max_k, len(session)):
        raise HTTPException(status_code=422, detail=f"k must be between 1 and {min(settings.max_k, len(session))}")
    if len(body.controls) > settings.max_controls:
        raise HTTPException(status_code=422, detail=f"at most {settings.max_controls} control prompts")
    filters = Filters(**body.filters.model_dump())
    started = time.perf_counter()

    def search() -> list[dict]:
        return session.attribute(body.prompt, body.completion, k=body.k, method=body.method, filters=filters,
                                 controls=[(c, None) for c in body.controls])

    def run() -> list[dict]:
        # Gradient queries run the shared model with hooks attached: one at a time. Lexical and
        # embedding queries never touch it (unless a greedy completion must be generated).
        if body.method in ("gradient", "hybrid") or body.completion is None:
            with served.model_lock:
                return search()
        return search()

    rows = await run_in_threadpool(run)
    searched = time.perf_counter()
    completion = rows[0]["completion"] if rows else (body.completion or "")
    completion = completion or ""
    results = []
    for row in rows:
        meta = row["metadata"]
        span = None
        if row.get("token_span"):
            span = token_span_to_chars(session.encoder.tokenizer, row["text"], row["token_span"])
        elif completion:
            span = overlap_span(row["text"], completion)
        results.append(Result(
            rank=row["rank"], example_id=row["example_id"], score=row["score"], text=row["text"], span=span,
            source=meta.get("source"), row=meta.get("row"), step=meta.get("step"), batch_pos=meta.get("batch_pos"),
            pile_set_name=meta.get("pile_set_name"), token_contributions=row.get("token_contributions"),
            completion_tokens=row.get("completion_tokens"),
        ))
    timings = {"search": (searched - started) * 1e3, "format": (time.perf_counter() - searched) * 1e3}
    return AttributeResponse(prompt=body.prompt, completion=completion, method=body.method, results=results,
                             timings_ms={k: round(v, 2) for k, v in timings.items()})
