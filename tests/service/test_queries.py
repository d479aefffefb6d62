"""The application layer without HTTP: the model-lock policy, request limits, steps and examples, and why a
query matches nothing."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from attribution.batching import ContextLengthError
from attribution.config import AttributionConfig
from attribution.filters import Filters, subsets_of
from attribution.methods import METHODS
from attribution.records import Evidence, Hit, Result
from attribution.retrievers import Method
from attribution.rows import allowed_rows
from service import catalog, queries
from service.catalog import Catalog, UnlearningCost
from service.defaults import AUTO_SECONDS, MethodChoice, default_method
from service.errors import NoMatchError, NotFoundError, RequestLimitError
from service.main import status_for
from service.schemas import AttributeRequest, FilterSpec
from service.schemas import Result as Response
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


class FakeEncoder:
    max_length = 16
    tokenizer = None

    def encode_ids(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def greedy_completion(self, prompt: str) -> str:
        return " Tarnow"


class FakeSession:
    """Records, per query, whether the served model lock was held while it ran."""

    manifest = None  # not the demo's: no default query
    metadata = [{"step": 1, "pile_set_name": "Planted Facts"},
                {"step": 3, "pile_set_names": ["Bible (KJV)", "Planted Facts"]}]

    def __init__(self, lock) -> None:
        self.lock, self.held, self.texts, self.encoder = lock, [], FakeTexts(), FakeEncoder()

    def __len__(self) -> int:
        return 10

    def texts_of(self, rows: list[int]) -> list[str]:
        return ["short"] * len(rows)  # too short to draw a default query from

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


CHEAP = UnlearningCost(rows=10, row_tokens=9, row_seconds=0.01)
"""What an unlearning query costs on the fake index: 0.3 s uncached (so ``auto`` keeps unlearning the default)."""


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> ServedIndex:
    monkeypatch.setattr(catalog, "unlearning_cost", lambda session: CHEAP)  # the fake session has no model to time
    served = ServedIndex(Path("unused"))
    served.session = FakeSession(served.model_lock)
    return served


def test_the_methods_that_run_the_model() -> None:
    assert {m for m, spec in METHODS.items() if spec.uses_model} == {Method.GRADIENT, Method.HYBRID, Method.UNLEARNING}


def test_unlearning_settings_come_from_the_request(served: ServedIndex) -> None:
    request = AttributeRequest(prompt="Ilse Varga was born in", completion=" Tarnow", k=1, method="unlearning",
                               steps=2, budget=1.25)
    response = queries.attribute(served, request, SETTINGS)
    assert served.session.unlearning == replace(AttributionConfig().unlearning, steps=2, budget=1.25)
    assert response.timings_ms["unlearning_target"] == 1.5 and "unlearning_rows" not in response.timings_ms
    queries.attribute(served, AttributeRequest(prompt="x", completion=" y", k=1, method="gradient"), SETTINGS)
    assert served.session.unlearning is None  # other methods get no unlearning settings
    response = queries.attribute(served, AttributeRequest(prompt="x", completion=" y", k=1), SETTINGS)
    assert served.session.unlearning == AttributionConfig().unlearning  # unlearning is cheap here: the default
    assert response.method == "unlearning"


def test_auto_makes_unlearning_the_default_only_where_it_answers_quickly() -> None:
    fast = Catalog({}, None, None, UnlearningCost(rows=90, row_tokens=129, row_seconds=0.01))
    slow = Catalog({}, None, None, UnlearningCost(rows=90, row_tokens=2048, row_seconds=1.2))  # Pythia-14m on CPU
    assert default_method("auto", fast).method is Method.UNLEARNING
    chosen = default_method("auto", slow)
    assert chosen.method is Method.GRADIENT
    assert "up to 90 rows of ~2,048 tokens, ~324.0 s here uncached" in chosen.reason and "over 30 s" in chosen.reason
    assert slow.unlearning.seconds() == pytest.approx(3 * 90 * 1.2)  # uncached: 3 passes a row
    assert fast.unlearning.seconds() < AUTO_SECONDS < slow.unlearning.seconds()
    for _ in range(3):  # real queries measured 10 ms a row and pass: the estimate follows them
        slow.observed.add(0.9, 90)
    chosen = default_method("auto", slow)
    assert chosen.method is Method.UNLEARNING and "measured on the last 3 unlearning queries" in chosen.reason
    assert "~2.7 s here uncached" in chosen.reason
    untimed = Catalog({}, None, None, UnlearningCost(rows=90, row_tokens=129, row_seconds=float("inf")))
    assert default_method("auto", untimed).method is Method.GRADIENT  # a pass that failed at load decides nothing
    assert default_method("unlearning", slow).method is Method.UNLEARNING  # the operator's choice wins
    assert default_method("bm25", fast) == MethodChoice(Method.BM25, "set by the server (default_method)")


def test_the_servers_default_method_answers_queries_that_name_none(served: ServedIndex) -> None:
    request = AttributeRequest(prompt="x", completion=" y", k=1)
    assert request.method is None
    settings = Settings(max_k=5, default_method="gradient")
    assert queries.attribute(served, request, settings).method == "gradient"
    assert served.session.unlearning is None
    with pytest.raises(RequestLimitError, match="only method unlearning takes them.*default is gradient"):
        queries.attribute(served, AttributeRequest(prompt="x", completion=" y", k=1, steps=2), settings)
    with pytest.raises(RequestLimitError, match="ignores control prompts.*default is bm25"):
        queries.attribute(served, AttributeRequest(prompt="x", completion=" y", k=1, controls=["a"]),
                          Settings(max_k=5, default_method="bm25"))
    # the same options pass where the default is unlearning (this fake index's auto), as a named method would
    queries.attribute(served, AttributeRequest(prompt="x", completion=" y", k=1, steps=2, controls=["a"]), SETTINGS)
    assert served.session.unlearning.steps == 2


def test_a_default_method_that_is_no_method_is_refused() -> None:
    with pytest.raises(ValueError, match="default_method must be one of auto, gradient"):
        Settings(default_method="influence")


@pytest.mark.parametrize("completion", [" Tarnow", None])
@pytest.mark.parametrize("method", list(Method))
def test_the_model_lock_follows_the_method(served: ServedIndex, method: Method, completion: str | None) -> None:
    request = AttributeRequest(prompt="Ilse Varga was born in", completion=completion, k=1, method=method)
    response = queries.attribute(served, request, SETTINGS)
    expected = METHODS[method].uses_model or completion is None  # a greedy completion runs the model too
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


CATALOG = Catalog(subsets={"Bible (KJV)": 3, "Planted Facts": 5}, steps=(0, 47), default_query=None, unlearning=CHEAP)


@pytest.mark.parametrize(("filters", "message"), [
    ({"pile_set_name": "planted facts"}, "unknown pile_set_name 'planted facts' (did you mean 'Planted Facts'?); "
                                         "this index holds 'Bible (KJV)', 'Planted Facts'"),
    ({"pile_set_name": "ArXiv"}, "unknown pile_set_name 'ArXiv'; this index holds 'Bible (KJV)', 'Planted Facts'"),
    ({"step_min": 48}, "no indexed rows in steps from 48: this index holds steps 0-47"),
    ({"step_min": 50, "step_max": 60}, "no indexed rows in steps 50-60: this index holds steps 0-47"),
])
def test_filters_that_match_nothing_say_why(filters: dict, message: str) -> None:
    with pytest.raises(NoMatchError) as caught:
        queries.check_filters(FilterSpec(**filters), CATALOG)
    assert str(caught.value) == message
    assert status_for(caught.value) == 422


def test_filters_inside_the_index_pass() -> None:
    for filters in ({"pile_set_name": "Planted Facts"}, {"step_min": 47}, {"step_max": 0}, {}):
        queries.check_filters(FilterSpec(**filters), CATALOG)
    with pytest.raises(NoMatchError, match="records no subsets"):
        queries.check_filters(FilterSpec(pile_set_name="x"), Catalog({}, None, None, CHEAP))
    with pytest.raises(NoMatchError, match="no training steps"):
        queries.check_filters(FilterSpec(step_max=3), Catalog({}, None, None, CHEAP))


def test_a_row_is_labelled_by_every_subset_it_holds() -> None:
    mixed = {"pile_set_name": "Bible (KJV)", "pile_set_names": ["Bible (KJV)", "Planted Facts"],
             "subset_spans": [[0, 10, "Bible (KJV)"], [10, 65, "Planted Facts"]]}
    assert subsets_of(mixed) == ["Bible (KJV)", "Planted Facts"]
    assert subsets_of({"pile_set_name": "Python Docs"}) == ["Python Docs"] and subsets_of({}) == []
    metadata = [mixed, {"pile_set_name": "Planted Facts"}, {"pile_set_name": "Bible (KJV)"}]
    assert allowed_rows(metadata, Filters(pile_set_name="Planted Facts")).tolist() == [0, 1]
    assert allowed_rows(metadata, Filters(pile_set_name="Bible (KJV)")).tolist() == [0, 2]
    # the matched span's subset: the piece a token window overlaps most
    assert queries.span_subset(None, "", mixed, (0, 8), None) == "Bible (KJV)"
    assert queries.span_subset(None, "", mixed, (8, 24), None) == "Planted Facts"
    assert queries.span_subset(None, "", {"pile_set_names": ["A", "B"]}, (0, 8), None) is None  # where is unknown
    assert queries.span_subset(None, "", {"pile_set_name": "A"}, None, None) == "A"  # one subset: the span's too


def test_a_record_carries_its_hits_evidence_to_the_response() -> None:
    hit = Hit(3, 0.5, token_span=(0, 4), loss_increase=[0.5], row_tokens=[" y"], instances=[(1, 0.25)])
    record = Result.from_hit(hit, rank=1, example_id=7, text="x y", metadata={"step": 2}, completion=" y")
    assert record.evidence() == hit.evidence() and (record.rank, record.score) == (1, 0.5)
    shown = Response.from_record(record, None, None, token_evidence=True)
    assert shown.loss_increase == [0.5] and shown.instances[0].model_dump() == {"instance": 1, "contribution": 0.25}
    assert Response.from_record(record, None, None).row_tokens is None  # a float per token: only when asked
    # every evidence field reaches the response (token_span as span: characters of the text, not tokens)
    assert {f.name for f in fields(Evidence)} - {"token_span"} <= set(Response.model_fields)


def test_bm25_rows_sharing_no_term_are_dropped_and_the_answer_says_why() -> None:
    hit = Result(rank=1, example_id=7, score=0.0, text="x", metadata={}, completion=" y")
    assert queries.meaningful(Method.BM25, [hit], FilterSpec()) == ([], "no indexed row contains any of the "
                                                                        "query's terms")
    assert queries.meaningful(Method.GRADIENT, [hit], FilterSpec()) == ([hit], None)  # a score of 0 is a score
    assert queries.meaningful(Method.GRADIENT, [], FilterSpec(step_max=3))[1] == ("no indexed row matches these "
                                                                                   "filters together")
    with pytest.raises(NoMatchError, match="no query terms left once English stop-words are removed"):
        queries.check_terms(Method.BM25, "the of and in was")
    queries.check_terms(Method.BM25, "Ilse Varga was born in")
    queries.check_terms(Method.EMBEDDING, "the of")


def test_a_prompt_too_long_for_a_continuation_is_refused_without_echoing_it(served: ServedIndex) -> None:
    prompt = "word " * 3000
    with pytest.raises(ContextLengthError) as caught:
        queries.attribute(served, AttributeRequest(prompt=prompt, k=1), SETTINGS)
    message = str(caught.value)
    assert message.startswith("the prompt is too long: 3000 tokens (15000 characters)") and len(message) < 300
    assert served.session.held == [] and not served.model_lock.locked()


def test_the_openapi_example_is_a_fact_of_the_demo() -> None:
    from evaluation.demo_config import DemoConfig
    from evaluation.planted_facts import plant_facts
    from service.schemas import AttributeRequest

    config = DemoConfig()
    facts, _ = plant_facts(config.people, config.docs_per_fact, config.related_prompts, config.seed)
    fields = AttributeRequest.model_fields
    example = (fields["prompt"].examples[0], fields["completion"].examples[0])
    assert example in {(f.prompt, f.completion) for f in facts}
