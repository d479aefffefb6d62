"""``GET /v1/examples/{id}``, ``GET /v1/steps/{step}``, ``GET /v1/index``: what the index holds."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from service.deps import SessionDep
from service.schemas import ErrorBody, Example, IndexInfo, StepExample, StepResponse

router = APIRouter(prefix="/v1", tags=["data"])
MAX_ID = 2**62


@router.get("/examples/{example_id}", response_model=Example, responses={404: {"model": ErrorBody}})
def get_example(example_id: Annotated[int, Path(ge=0, le=MAX_ID)], session: SessionDep) -> Example:
    """One training example in full, with its provenance."""
    rows = session.texts.by_ids([example_id])
    if not rows:
        raise HTTPException(status_code=404, detail=f"no example {example_id} in this index")
    row = rows[0]
    return Example(example_id=row["id"], text=row["text"], source=row["source"], row=row["row"], step=row["step"],
                   batch_pos=row["batch_pos"], pile_set_name=row["pile_set_name"], token_count=row["token_count"])


@router.get("/steps/{step}", response_model=StepResponse, responses={404: {"model": ErrorBody}})
def get_step(step: Annotated[int, Path(ge=0, le=MAX_ID)], session: SessionDep) -> StepResponse:
    """The indexed examples the model saw at one training step, as Pythia's batch viewer shows them."""
    cursor = session.texts.cursor()
    rows = cursor.execute("SELECT id, batch_pos, pile_set_name, token_count FROM examples WHERE step = ? "
                          "ORDER BY batch_pos, id", [step]).fetchall()
    if not rows:
        raise HTTPException(status_code=404, detail=f"no indexed examples at step {step}")
    examples = [StepExample(example_id=r[0], batch_pos=r[1], pile_set_name=r[2], token_count=r[3]) for r in rows]
    subsets = Counter(r[2] or "unknown" for r in rows)
    return StepResponse(step=step, examples=examples, subsets=dict(subsets))


@router.get("/index", response_model=IndexInfo)
def index_info(session: SessionDep) -> IndexInfo:
    """Manifest summary of the served build."""
    m = session.manifest or {}
    return IndexInfo(build=str(m.get("created")), model=m["model"], revisions=m["revisions"],
                     examples=m["counts"]["examples"], data=m["data"], projection=m["projection"],
                     preconditioner=m["preconditioner"], embedding_model=m["embedding_model"], created=m["created"])
