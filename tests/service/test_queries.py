"""The application layer without HTTP: the model-lock policy, request limits, steps and examples."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from attribution.config import AttributionConfig
from attribution.records import Result
from attribution.retrievers import Method
from service import queries
from service.errors import NotFoundError, RequestLimitError
from service.schemas import AttributeRequest
from service.settings import Settings
from service.state import ServedIndex

SETTINGS = Settings(max_k=5, max_controls=2)


class FakeTexts:
    def by_ids(self, ids: list[int]) -> list[dict]:
        row = {"id": 7, "text": "Ilse Varga was born in Tarnow.", "source": "document", "row": 7, "step": 1,
               "batch_pos": 3, "pile_set_name": "Planted Facts", "token_count": 9}
        return [row] if list(ids) == [7] else []

    def by_step(self, step: int) -> list[dict]:
        if step != 1:
            return []
        return [{"id": 4, "batch_pos": 0, "pile_set_name": "Planted Facts", "token_count": 9},
                {"id": 5, "batch_pos": 1, "pile_set_name": None, "token_count": 12},
                {"id": 6, "batch_pos": 2, "pile_set_name": "Planted Facts", "token_count": 3}]


class FakeSession:
    """Records, per query, whether the served model lock was held while it ran."""

    def __init__(self, lock) -> None:
        self.lock, self.held, self.texts = lock, [], FakeTexts()

    def __len__(self) -> int:
        return 10

    config = AttributionConfig()

    def retriever(self, method):
        return SimpleNamespace(timings={"target": 1.5, "rows": 3.0})

    def attribute(self, prompt, completion=None, k=10, method=Method.GRADIENT, filters=None, controls=(),
                  unlearning=None):
        self.held.append(self.lock.locked())
        self.unlearning = unlearning
        completion = completion if completion is not None else " Tarnow"
        return [Result(rank=1, example_id=7, score=0.5, text="Ilse Varga was born in Tarnow.",
                       metadata={"step": 1, "pile_set_name": "Planted Facts"}, completion=completion)]


@pytest.fixture
def served() -> ServedIndex:
    served = ServedIndex(Path("unused"))
    served.session = FakeSession(served.model_lock)
    return served


def test_the_methods_that_run_the_model() -> None:
    assert {m for m in Method if m.uses_model} == {Method.GRADIENT, Method.HYBRID, Method.UNLEARNING}


def test_unlearning_settings_come_from_the_request(served: ServedIndex) -> None:
    request = AttributeRequest(prompt="Ilse Varga was born in", completion=" Tarnow", k=1, method="unlearning",
                               steps=2, budget=1.25)
    response = queries.attribute(served, request, SETTINGS)
    assert served.session.unlearning == replace(AttributionConfig().unlearning, steps=2, budget=1.25)
    assert response.timings_ms["unlearning_target"] == 1.5 and "unlearning_rows" not in response.timings_ms
    queries.attribute(served, AttributeRequest(prompt="x", completion=" y", k=1), SETTINGS)
    assert served.session.unlearning is None  # other methods get no unlearning settings


@pytest.mark.parametrize("completion", [" Tarnow", None])
@pytest.mark.parametrize("method", list(Method))
def test_the_model_lock_follows_the_method(served: ServedIndex, method: Method, completion: str | None) -> None:
    request = AttributeRequest(prompt="Ilse Varga was born in", completion=completion, k=1, method=method)
    response = queries.attribute(served, request, SETTINGS)
    expected = method.uses_model or completion is None  # a greedy completion runs the model too
    assert served.session.held == [expected]
    assert queries.needs_model_lock(method, completion) is expected
    assert not served.model_lock.locked()  # released after the query
    assert response.method == method.value and response.completion == " Tarnow"
    assert response.results[0].example_id == 7 and response.results[0].span.start == 23


def test_limits(served: ServedIndex) -> None:
    with pytest.raises(RequestLimitError, match="k must be between 1 and 5"):
        queries.attribute(served, AttributeRequest(prompt="x", k=6), SETTINGS)
    with pytest.raises(RequestLimitError, match="at most 2 control prompts"):
        queries.attribute(served, AttributeRequest(prompt="x", k=1, controls=["a", "b", "c"]), SETTINGS)
    assert served.session.held == []


def test_the_request_schema_takes_the_method_names_from_the_enum() -> None:
    schema = AttributeRequest.model_json_schema()
    assert schema["$defs"]["Method"]["enum"] == [m.value for m in Method]


def test_step_and_example(served: ServedIndex) -> None:
    step = queries.step(served.session, 1)
    assert [e.example_id for e in step.examples] == [4, 5, 6] and [e.batch_pos for e in step.examples] == [0, 1, 2]
    assert step.subsets == {"Planted Facts": 2, "unknown": 1}
    with pytest.raises(NotFoundError, match="no indexed examples at step 2"):
        queries.step(served.session, 2)
    example = queries.example(served.session, 7)
    assert example.example_id == 7 and example.step == 1 and example.token_count == 9
    with pytest.raises(NotFoundError, match="no example 8"):
        queries.example(served.session, 8)
