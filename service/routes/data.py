"""``GET /v1/examples/{id}``, ``GET /v1/steps/{step}``, ``GET /v1/index``: what the index holds."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service import queries
from service.deps import SessionDep, SettingsDep
from service.schemas import ErrorBody, Example, IndexInfo, StepResponse

router = APIRouter(prefix="/v1", tags=["data"])
MAX_ID = 2**62


@router.get("/examples/{example_id}", response_model=Example, responses={404: {"model": ErrorBody}})
def get_example(example_id: Annotated[int, Path(ge=0, le=MAX_ID)], session: SessionDep) -> Example:
    """One training example in full, with its provenance."""
    return queries.example(session, example_id)


@router.get("/steps/{step}", response_model=StepResponse, responses={404: {"model": ErrorBody}})
def get_step(step: Annotated[int, Path(ge=0, le=MAX_ID)], session: SessionDep) -> StepResponse:
    """The indexed examples the model saw at one training step, as Pythia's batch viewer shows them."""
    return queries.step(session, step)


@router.get("/index", response_model=IndexInfo, responses={503: {"model": ErrorBody}})
def index_info(session: SessionDep, settings: SettingsDep) -> IndexInfo:
    """Manifest summary of the served build, with the method a query without one gets and why."""
    return queries.index_info(session, settings)
