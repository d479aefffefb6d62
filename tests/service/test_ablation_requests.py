"""``POST /v1/ablations`` through a real server (issue 24): what cannot be measured is said up front (422 when
nothing could be ascended on, ``warnings`` for checks that cannot run), an empty selection is *not run* while the
other targets complete, and a finished job carries the one verdict that the page and ``headwater ablate`` show."""

from __future__ import annotations

import time

import httpx
import pytest

from evaluation.ablation_report import markdown
from tests.service.conftest import API_KEY

NONSENSE = {"prompt": "qzxv wkjh", "completion": " plmn"}
"""Issue 24's target: bm25 finds no row sharing a word with it."""


@pytest.fixture(scope="module")
def fact(server: str) -> dict:
    """A planted fact of the served demo (completed with its paraphrases, related prompts and gold rows)."""
    query = httpx.get(f"{server}/v1/index", timeout=60).json()["default_query"]
    return {"prompt": query["prompt"], "completion": query["completion"]}


def post(server: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server}/v1/ablations", json=body, headers={"X-API-Key": API_KEY}, timeout=60)


def finished(server: str, job: dict, seconds: float = 300) -> dict:
    """The job's status once it has ended (or after ``seconds``)."""
    deadline = time.time() + seconds
    while job["status"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.5)
        job = httpx.get(f"{server}/v1/ablations/{job['id']}", timeout=60).json()
    return job


def test_a_request_whose_every_selection_is_empty_is_refused_before_the_job(server: str) -> None:
    response = post(server, {"targets": [NONSENSE], "methods": ["bm25"], "budgets": [1.0], "k": 3})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "nothing to ablate" in error and "bm25 found no indexed row sharing a word" in error


def test_an_empty_selection_is_not_run_while_the_other_targets_complete(server: str, fact: dict) -> None:
    body = {"targets": [NONSENSE, fact], "methods": ["bm25", "random"], "budgets": [1.0], "k": 3, "random_draws": 2}
    started = post(server, body)
    assert started.status_code == 202, started.text
    assert any("no selection under test" in w for w in started.json()["warnings"])
    job = finished(server, started.json())
    assert job["status"] == "done" and job["error"] is None, job
    nonsense, planted = job["report"]["targets"]
    assert nonsense["status"] == "partly run" and "bm25 found no indexed row" in nonsense["not_run"]["bm25"]
    assert planted["status"] == "run"
    assert {r["target"] for r in job["report"]["rows"] if r["method"] == "bm25"} == {1}
    assert job["warnings"] == started.json()["warnings"]  # repeated while and after it runs


def test_the_pages_check_hears_what_cannot_run_and_gets_one_verdict(server: str, fact: dict) -> None:
    """The page's request (one target, its result rows, 19 random draws, one budget): beats random cannot reach
    p < 0.01, so it is not run (never failed) and the verdict is at best inconclusive — as the CLI prints it."""
    rows = httpx.post(f"{server}/v1/attribute", json={**fact, "k": 3, "method": "gradient"}, timeout=120).json()
    target = {**fact, "example_ids": [r["example_id"] for r in rows["results"]]}
    body = {"targets": [target], "k": 3, "budgets": [1.0], "seeds": 1, "random_draws": 19,
            "methods": ["given", "oracle", "bottom", "random"]}
    started = post(server, body)
    assert started.status_code == 202, started.text
    said = " | ".join(started.json()["warnings"])
    assert "≥ 2 budgets" in said and "beats random will not run" in said and "needs ≥ 100" in said
    job = finished(server, started.json())
    assert job["status"] == "done", job
    verdict = job["verdicts"]["given"]
    assert verdict == job["report"]["verdicts"]["given"]
    assert verdict["verdict"] in ("not supported", "inconclusive")
    checks = {c["name"]: c for c in verdict["checks"]}
    assert list(checks) == ["beats_random", "specificity_z_ge_2", "related_ratio_le_0_5", "carries_to_paraphrases",
                            "not_worse_than_bm25_embedding", "bottom_no_worse_than_random"]
    assert checks["beats_random"]["status"] == "not run" and "≥ 100 random draws" in checks["beats_random"]["reason"]
    assert all(c["status"] in ("passed", "failed", "not run") and c["reason"] for c in checks.values())
    assert "by construction" in verdict["explanation"]
    assert f"- **given: {verdict['verdict']}** — {verdict['reason']}" in markdown(job["report"])  # the CLI's text


def test_a_task_target_is_ablated_as_one(server: str) -> None:
    task = {"prompt": "Ilse Varga was born in", "completion": " Tarnow",
            "instances": [{"prompt": "Marek Holloway was born in", "completion": " Ostrava"}],
            "related": [{"prompt": "Ilse Varga works for", "completion": " Redcliff Mining"}],
            "unrelated": [{"prompt": "In the beginning God created", "completion": " the"}]}
    body = {"targets": [task], "methods": ["gradient", "random"], "budgets": [1.0], "k": 3, "random_draws": 2}
    started = post(server, body)
    assert started.status_code == 202, started.text
    job = finished(server, started.json())
    assert job["status"] == "done" and job["error"] is None, job
    assert {r["method"] for r in job["report"]["rows"]} == {"gradient", "random"}
    too_many = {**task, "instances": [task["instances"][0]] * 32}
    refused = post(server, {**body, "targets": [too_many]})
    assert refused.status_code == 422 and "instances" in refused.text
    blank = {**task, "instances": [{"prompt": " ", "completion": " x"}]}
    assert post(server, {**body, "targets": [blank]}).status_code == 422
