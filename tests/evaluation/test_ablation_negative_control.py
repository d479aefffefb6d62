"""Negative control of the unlearning verdict (issue 24.5): facts the tiny demo's corpus never states ("The capital
of Australia is" → " Canberra") must never be called *supported*, whichever retriever chose the rows checked.

Nine such targets, two paraphrases and two related prompts each, two budgets: enough for every check of the
checklist to run (the paired test against random reaches p < 0.01 from 9 targets with 4 baselines), so a
*supported* verdict was possible and the test is not passed by checks that could not run. Each retriever's top-k
is checked as the web page checks a result list: the ``given`` selection."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from attribution.ascent import Probe
from attribution.config import AttributionConfig, CurvatureConfig
from attribution.retrievers import Query
from attribution.session import AttributionSession
from attribution.sketch import SketchConfig
from evaluation.ablation import run_ablation
from evaluation.ablation_plan import AblationSettings
from evaluation.demo_session import demo_session
from evaluation.targets import Target
from indexer.groundtruth import load_facts

CAPITALS = [("Australia", "Canberra"), ("Japan", "Tokyo"), ("France", "Paris"), ("Canada", "Ottawa"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"), ("Egypt", "Cairo"), ("Chile", "Santiago")]
K = 3
BUDGETS = (0.5, 1.0)
BASELINES = ("random", "bottom", "bm25", "embedding")


def absent(index: int) -> Target:
    """A capital the corpus never mentions, with paraphrases and two other capitals as related prompts."""
    country, capital = CAPITALS[index]
    others = [CAPITALS[(index + step) % len(CAPITALS)] for step in (1, 2)]
    return Target(f"The capital of {country} is", f" {capital}",
                  [f"{country}'s capital city is", f"The capital city of {country} is"],
                  [Probe(f"The capital of {c} is", f" {cap}") for c, cap in others], attribute="capital")


@pytest.fixture(scope="module")
def session(tiny_demo: Path) -> AttributionSession:
    return demo_session(tiny_demo, AttributionConfig(sketch=SketchConfig(k=4), curvature=CurvatureConfig(sample=64)))


@pytest.fixture(scope="module")
def controls(tiny_demo: Path) -> list[Target]:
    """The planted facts: other relations, the targets' unrelated prompts."""
    return [Target.from_fact(f) for f in load_facts(tiny_demo) if f.gold_rows]


def test_the_facts_are_absent_from_the_corpus(session: AttributionSession) -> None:
    text = " ".join(session.texts).lower()
    assert not any(capital.lower() in text or f"capital of {country.lower()}" in text
                   for country, capital in CAPITALS)


@pytest.mark.slow
@pytest.mark.parametrize("retriever", ["gradient", "bm25", "embedding", "unlearning"])
def test_an_absent_fact_is_never_supported_whichever_retriever_chose_the_rows(
        session: AttributionSession, controls: list[Target], retriever: str) -> None:
    search = session.retriever(retriever)
    targets = [replace(t, example_ids=[int(session.ids[h.row]) for h in search.search(Query(t.prompt, t.completion),
                                                                                      K)])
               for t in (absent(i) for i in range(len(CAPITALS)))]
    checked = sum(1 for t in targets if t.example_ids)
    if not checked:  # nothing retrieved: the page offers no check, and the API refuses 'given' without example_ids
        assert retriever == "bm25"
        return
    settings = AblationSettings(k=K, budgets=BUDGETS, random_draws=3, seeds=1, methods=("given", *BASELINES))
    report = run_ablation(session, targets, settings, controls=controls)
    verdict = report["verdicts"]["given"]
    assert verdict["verdict"] != "supported", verdict
    if checked == len(targets):  # every check could run: the verdict rests on measurements, not on missing ones
        assert verdict["verdict"] == "not supported"
        assert {c["name"]: c["status"] for c in verdict["checks"]}["beats_random"] != "not run"


@pytest.mark.slow
def test_an_absent_fact_is_never_supported_by_the_tested_selections(session: AttributionSession,
                                                                    controls: list[Target]) -> None:
    targets = [absent(i) for i in range(len(CAPITALS))]
    settings = AblationSettings(k=K, budgets=BUDGETS, random_draws=3, seeds=1,
                                methods=("gradient", "gradient_contrastive", "unlearning", *BASELINES))
    report = run_ablation(session, targets, settings, controls=controls)
    assert set(report["verdicts"]) == {"gradient", "gradient_contrastive", "unlearning"}
    for method, verdict in report["verdicts"].items():
        assert verdict["verdict"] == "not supported", (method, verdict)
