"""Task queries: each method's aggregation checked against its definition, instances named per row, controls taken
out as a task, and bad tasks refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attribution.ascent import Probe, flat_gradient, trainable
from attribution.batching import training_batch
from attribution.config import AttributionConfig, CurvatureConfig, UnlearningConfig
from attribution.errors import ConfigError
from attribution.retrievers import RRF_OFFSET, Method, Query
from attribution.session import AttributionSession
from attribution.sketch import SketchConfig
from attribution.tasks import MAX_INSTANCES, Instance
from evaluation.demo_session import demo_session
from indexer.groundtruth import Fact, load_facts


@pytest.fixture(scope="module")
def session(tiny_demo: Path) -> AttributionSession:
    return demo_session(tiny_demo, AttributionConfig(sketch=SketchConfig(k=6), curvature=CurvatureConfig(sample=64)))


@pytest.fixture(scope="module")
def facts(tiny_demo: Path) -> list[Fact]:
    return [f for f in load_facts(tiny_demo) if f.gold_rows]


def instances(facts: list[Fact]) -> list[Instance]:
    return [Instance(f.prompt, f.completion) for f in facts]


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_the_gradient_task_direction_is_the_mean_of_unit_instance_directions(session: AttributionSession,
                                                                             facts: list[Fact]) -> None:
    task = instances(facts[:3])
    units = np.stack([unit(session.encoder.encode_query(i.prompt, i.completion).vector.numpy()) for i in task])
    direction = unit(units.mean(axis=0))
    results = session.attribute_task(task, k=8, method="gradient")
    stored = session.gradient.store
    by_hand = stored.score_all(direction)
    assert [r.example_id for r in results] == [int(session.ids[i]) for i in np.argsort(-by_hand, kind="stable")[:8]]
    for result in results:
        row = int(np.flatnonzero(session.ids == result.example_id)[0])
        assert result.score == pytest.approx(by_hand[row], abs=1e-5)
        # three instances: every contribution is named, and they add up to the row's share of the (unscaled) mean
        assert len(result.instances) == 3 and sorted(i for i, _ in result.instances) == [0, 1, 2]
        total = sum(c for _, c in result.instances)
        assert total == pytest.approx(result.score * np.linalg.norm(units.mean(axis=0)), abs=1e-5)
    # one instance repeated is that instance's own query
    single = session.attribute(task[0].prompt, task[0].completion, k=8, method="gradient")
    assert [r.example_id for r in session.attribute_task([task[0]] * 3, k=8)] == [r.example_id for r in single]


def test_a_task_names_the_instance_each_gold_row_states(session: AttributionSession, facts: list[Fact]) -> None:
    chosen = facts[:4]
    results = session.attribute_task(instances(chosen), k=20, method="gradient")
    named = 0
    for result in results:
        row = int(np.flatnonzero(session.ids == result.example_id)[0])
        stating = [i for i, f in enumerate(chosen) if row in f.gold_rows]
        if stating:
            named += result.instances[0][0] in stating
    assert named >= 2  # gold rows found for the task, each credited to the fact it states


def test_the_control_task_direction_is_taken_out(session: AttributionSession, facts: list[Fact]) -> None:
    task, controls = instances(facts[:3]), instances(facts[3:6])
    query = Query(task[0].prompt, task[0].completion, [(c.prompt, c.completion) for c in controls],
                  more=[(i.prompt, i.completion) for i in task[1:]])
    direction, _ = session.gradient.task_vectors(query)
    control = np.stack([unit(session.encoder.encode_query(c.prompt, c.completion).vector.numpy())
                        for c in controls]).mean(axis=0)
    assert abs(float(direction @ control)) < 1e-5 and np.linalg.norm(direction) == pytest.approx(1.0)
    contrasted = session.attribute_task(task, k=5, control_task=controls)
    assert len(contrasted) == 5


def test_lexical_tasks_are_rank_fusions_of_their_instances(session: AttributionSession, facts: list[Fact]) -> None:
    task = instances(facts[:3])
    results = session.attribute_task(task, k=10, method="bm25")
    fused: dict[int, float] = {}
    for one in task:
        for rank, hit in enumerate(session.attribute(one.prompt, one.completion, k=100, method="bm25")):
            fused[hit.example_id] = fused.get(hit.example_id, 0.0) + 1 / (RRF_OFFSET + rank + 1)
    expected = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:10]
    assert [(r.example_id, round(r.score, 9)) for r in results] == [(e, round(s, 9)) for e, s in expected]
    assert all(r.instances and r.instances[0][1] >= r.instances[-1][1] for r in results)


def test_unlearning_ascends_on_the_whole_task(session: AttributionSession, facts: list[Fact]) -> None:
    every_row = UnlearningConfig(exhaustive_rows=10_000)
    found = 0
    for group in (facts[:3], facts[3:6], facts[6:9]):
        results = session.attribute_task(instances(group), k=10, method="unlearning", unlearning=every_row)
        gold = {int(session.ids[r]) for f in group for r in f.gold_rows}
        found += sum(r.example_id in gold for r in results)
    assert found >= 8  # of 18 gold rows in all (measured 10; BM25 14, gradient 9)
    # an instance given twice is that instance's query: the summed loss has the single loss's direction
    one = facts[0]
    single = session.attribute(one.prompt, one.completion, k=10, method="unlearning", unlearning=every_row)
    twice = session.attribute_task(instances([one, one]), k=10, method="unlearning", unlearning=every_row)
    assert [r.example_id for r in twice] == [r.example_id for r in single]
    hybrid = session.attribute_task(instances(facts[:3]), k=5, method=Method.HYBRID)
    assert len(hybrid) == 5


def test_unlearning_names_the_instances_by_their_first_order_share(session: AttributionSession,
                                                                    facts: list[Fact]) -> None:
    settings = UnlearningConfig(exhaustive_rows=10_000, budget=0.01)
    task = instances(facts[:3])
    results = session.attribute_task(task, k=4, method="unlearning", unlearning=settings)
    retriever = session.retriever("unlearning")
    model = retriever.model
    with trainable(model):
        instance_grads = [flat_gradient(model, retriever.meter.probe_batch([Probe(i.prompt, i.completion)]))
                          for i in task]
    for result in results:
        row = int(np.flatnonzero(session.ids == result.example_id)[0])
        ids = retriever.tokens(row).tolist()
        with trainable(model):  # the row's mean per-token loss, as row_score takes it
            row_grad = flat_gradient(model, training_batch([ids])) / (len(ids) - 1)
        parts = np.array([float(row_grad @ g) for g in instance_grads])
        shares = parts / np.abs(parts).sum()
        assert len(result.instances) == 3 and sorted(i for i, _ in result.instances) == [0, 1, 2]
        assert [i for i, _ in result.instances] == list(np.argsort(-shares, kind="stable"))
        for instance, share in result.instances:
            assert share == pytest.approx(shares[instance], abs=2e-3)
        assert sum(abs(c) for _, c in result.instances) == pytest.approx(1.0, abs=1e-9)
    # one-instance queries name no instances
    assert session.attribute(task[0].prompt, task[0].completion, k=2, method="unlearning")[0].instances is None


def test_bad_tasks_are_refused(session: AttributionSession, facts: list[Fact]) -> None:
    task = instances(facts[:2])
    for bad, message in (([], "1 to 256 instances, got 0"),
                         ([task[0]] * (MAX_INSTANCES + 1), "1 to 256 instances, got 257"),
                         ([Instance("  ")], "instance 1: the prompt must be non-blank"),
                         ([task[0], Instance("x", " ")], "instance 2: the completion is blank")):
        with pytest.raises(ConfigError, match=message):
            session.attribute_task(bad)
    with pytest.raises(ConfigError, match="the control task is the task itself"):
        session.attribute_task(task, control_task=list(reversed(task)))
    with pytest.raises(ConfigError, match="method bm25 ignores controls"):
        session.attribute_task(task, method="bm25", control_task=instances(facts[2:3]))
