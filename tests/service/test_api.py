"""The HTTP API end to end against a real uvicorn process, including bad input."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from evaluation.demo_session import demo_session
from headwater.cli import try_line
from indexer.groundtruth import load_facts
from indexer.training_rows import RowRange
from service.catalog import MAX_FACTS, correct_prefix, describe
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import API_KEY, run_ablation_job, uvicorn_server

QUERY = {"prompt": "Ilse Varga was born in", "completion": " Tarnow", "k": 5}


def post(server: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{server}/v1/attribute", json=body, timeout=120, **kwargs)


def test_health_and_index(server: str) -> None:
    health = httpx.get(f"{server}/v1/health").json()
    assert health == {"status": "ok", "ready": True, "examples": 192}
    info = httpx.get(f"{server}/v1/index").json()
    assert info["examples"] == 192 and info["projection"]["k"] == 4


@pytest.mark.parametrize("method", ["gradient", "bm25", "embedding", "hybrid"])
def test_attribute_every_method(server: str, method: str) -> None:
    response = post(server, {**QUERY, "method": method, "filters": {"pile_set_name": "Planted Facts"}})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["method"] == method and len(data["results"]) == 5
    assert [r["rank"] for r in data["results"]] == [1, 2, 3, 4, 5]
    assert all("Planted Facts" in r["pile_set_names"] and r["step"] is not None for r in data["results"])
    assert all(r["pile_set_name"] in r["pile_set_names"] for r in data["results"])
    if method == "gradient":
        top = data["results"][0]
        assert len(top["token_contributions"]) == len(top["completion_tokens"])
        assert top["span"] is not None and 0 <= top["span"]["start"] < top["span"]["end"] <= len(top["text"])
        assert all(r["span_pile_set_name"] in r["pile_set_names"] for r in data["results"])
    assert data["timings_ms"]["search"] > 0


def test_greedy_completion_when_none_is_given(server: str) -> None:
    data = post(server, {"prompt": "Ilse Varga was born in", "k": 2}).json()
    assert data["completion"] and len(data["results"]) == 2


def test_contrastive_query(server: str) -> None:
    response = post(server, {**QUERY, "controls": ["Marek Holloway was born in", "Odile Strand was born in"]})
    assert response.status_code == 200, response.text


def test_examples_and_steps(server: str) -> None:
    example = httpx.get(f"{server}/v1/examples/5").json()
    assert example["example_id"] == 5 and example["step"] == 1 and example["text"]
    assert httpx.get(f"{server}/v1/examples/999999").status_code == 404
    step = httpx.get(f"{server}/v1/steps/2").json()
    assert [e["batch_pos"] for e in step["examples"]] == [0, 1, 2, 3] and sum(step["subsets"].values()) == 4
    assert httpx.get(f"{server}/v1/steps/5000").status_code == 404


def test_steps_and_examples_agree(server: str) -> None:
    step = httpx.get(f"{server}/v1/steps/2").json()
    assert step.keys() == {"step", "examples", "subsets"} and step["step"] == 2
    for listed in step["examples"]:
        assert listed.keys() == {"example_id", "batch_pos", "pile_set_name", "token_count"}
        example = httpx.get(f"{server}/v1/examples/{listed['example_id']}").json()
        assert example.keys() == {"example_id", "text", "source", "row", "step", "batch_pos", "pile_set_name",
                                  "pile_set_names", "token_count"}
        assert listed["pile_set_name"] in example["pile_set_names"]
        assert example["step"] == 2 and example["batch_pos"] == listed["batch_pos"]
        assert example["token_count"] == listed["token_count"] > 0
    missing = httpx.get(f"{server}/v1/examples/999999")
    assert missing.json() == {"error": "no example 999999 in this index"}
    assert httpx.get(f"{server}/v1/steps/5000").json() == {"error": "no indexed examples at step 5000"}


def test_index_info_shape(server: str) -> None:
    info = httpx.get(f"{server}/v1/index").json()
    assert info.keys() == {"build", "model", "revisions", "examples", "data", "projection", "preconditioner",
                           "embedding_model", "created", "subsets", "steps", "default_query", "default_method",
                           "default_method_reason", "unlearning_cost", "methods"}
    # 192 short rows, every one re-scored by an unlearning query: auto's estimate is far under 30 s
    assert info["default_method"] == "unlearning"
    assert info["default_method_reason"].startswith("auto: an unlearning query re-scores up to 192 rows")
    assert post(server, QUERY).json()["method"] == "unlearning"  # what a query without a method gets
    assert set(info["subsets"]) == {"Bible (KJV)", "Gutenberg (PG-19)", "Planted Facts", "Python Docs"}
    assert sum(info["subsets"].values()) > info["examples"]  # packed rows hold several subsets
    assert info["steps"] == [0, 47]
    assert info["data"].keys() == {"spec", "steps", "parts"} and info["data"]["spec"].endswith("document")
    assert info["projection"].keys() == {"seed", "k", "modules", "dim_per_checkpoint"}
    assert info["revisions"] == [None] and info["model"].endswith("model") and info["build"] == info["created"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({**QUERY, "prompt": ""}, 422, "prompt"),
        ({**QUERY, "prompt": "   \n"}, 422, "non-whitespace"),
        ({**QUERY, "k": 0}, 422, "k"),
        ({**QUERY, "k": 10_000}, 422, "k must be between"),
        ({**QUERY, "method": "tea-leaves"}, 422, "method"),
        ({**QUERY, "filters": {"colour": "red"}}, 422, "colour"),
        ({**QUERY, "filters": {"step_min": 5, "step_max": 2}}, 422, "step_min 5 is greater than step_max 2"),
        ({**QUERY, "filters": {"step_min": "5"}}, 422, "step_min"),
        ({**QUERY, "k": "many"}, 422, "k"),
        ({**QUERY, "k": "10"}, 422, "body.k: Input should be a valid integer"),
        ({**QUERY, "k": True}, 422, "body.k: Input should be a valid integer"),
        ({**QUERY, "k": 3.0}, 422, "body.k: Input should be a valid integer"),
        ({**QUERY, "method": "bm25", "controls": ["Marek Holloway was born in"]}, 422,
         "method bm25 ignores control prompts; drop them or use unlearning, gradient, hybrid"),
        ({**QUERY, "filters": {"pile_set_name": "planted facts"}}, 422,
         "unknown pile_set_name 'planted facts' (did you mean 'Planted Facts'?); this index holds 'Bible (KJV)', "
         "'Gutenberg (PG-19)', 'Planted Facts', 'Python Docs'"),
        ({**QUERY, "filters": {"pile_set_name": "ArXiv"}}, 422, "unknown pile_set_name 'ArXiv'; this index holds"),
        ({**QUERY, "filters": {"step_min": 5000}}, 422, "no indexed rows in steps from 5000: this index holds steps "
                                                        "0-47"),
        ({**QUERY, "method": "bm25", "prompt": "the of and in was", "completion": " it"}, 422,
         "bm25 has no query terms left once English stop-words are removed"),
        ({**QUERY, "completion": ""}, 422, "completion"),
        ({**QUERY, "completion": " word" * 400}, 400, "context"),
        ({**QUERY, "controls": [""]}, 422, "control"),
        ({**QUERY, "surprise": 1}, 422, "surprise"),
        ([1, 2, 3], 422, ""),
    ],
)
def test_bad_input_is_a_4xx_json_error(server: str, body, status: int, fragment: str) -> None:
    response = post(server, body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_raw_bodies(server: str) -> None:
    url = f"{server}/v1/attribute"
    headers = {"Content-Type": "application/json"}
    garbled = httpx.post(url, content=b"\xff\xfe{not json", headers=headers)
    assert garbled.status_code == 400 and "error parsing the body" in garbled.json()["error"]
    huge = httpx.post(url, content=b'{"prompt": "' + b"a" * 50_000 + b'"}', headers=headers)
    assert huge.status_code == 413 and "too large" in huge.json()["error"]


def test_admin_reload_needs_the_key(server: str) -> None:
    assert httpx.post(f"{server}/v1/admin/reload").status_code == 401
    assert httpx.post(f"{server}/v1/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 401
    response = httpx.post(f"{server}/v1/admin/reload", headers={"X-API-Key": API_KEY}, timeout=120)
    assert response.status_code == 200 and response.json()["examples"] == 192


@pytest.mark.parametrize("method", ["gradient", "bm25", "embedding"])
def test_concurrent_requests_match_serial_ones(server: str, method: str) -> None:
    prompts = ["Ilse Varga was born in", "Marek Holloway works for", "Odile Strand studied at"]
    body = {"completion": " X", "k": 4, "method": method}
    serial = {p: [r["example_id"] for r in post(server, {**body, "prompt": p}).json()["results"]] for p in prompts}
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [(p, pool.submit(post, server, {**body, "prompt": p})) for p in prompts * 4]
        for prompt, future in futures:
            response = future.result()
            assert response.status_code == 200
            assert [r["example_id"] for r in response.json()["results"]] == serial[prompt]


def test_openapi_documents_the_endpoints(server: str) -> None:
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/attribute", "/v1/examples/{example_id}", "/v1/steps/{step}", "/v1/index", "/v1/health",
            "/v1/admin/reload"} <= spec["paths"].keys()


def test_ablation_job_runs_on_a_copy_and_refuses_a_second(server: str) -> None:
    url = f"{server}/v1/ablations"
    body = {"targets": [{"prompt": "Ilse Varga was born in", "completion": " Tarnow",
                         "related": [{"prompt": "Marek Holloway was born in", "completion": " Brixholm"}]}],
            "k": 3, "budgets": [1.0], "random_draws": 3, "methods": ["gradient", "gradient_contrastive", "random"]}
    assert httpx.post(url, json=body).status_code == 401
    before = post(server, QUERY).json()["results"]
    started = httpx.post(url, json=body, headers={"X-API-Key": API_KEY}, timeout=60)
    assert started.status_code == 202, started.text
    job = started.json()
    second = httpx.post(url, json=body, headers={"X-API-Key": API_KEY}, timeout=60)
    assert second.status_code in (202, 409)  # 409 while the first still runs
    if second.status_code == 409:
        assert "still running" in second.json()["error"]
    jobs = [job] + ([second.json()] if second.status_code == 202 else [])
    deadline = time.time() + 300
    for index, pending in enumerate(jobs):  # wait for every job, so none runs on into later tests
        while pending["status"] in ("queued", "running") and time.time() < deadline:
            time.sleep(0.5)
            pending = httpx.get(f"{url}/{pending['id']}").json()
        jobs[index] = pending
    job = jobs[0]
    assert all(j["status"] == "done" for j in jobs), jobs
    assert job["report"]["schema_version"] == 3 and job["progress"] == 1.0
    # one target: no paired test against random, no interval over paraphrases: not run, so not passed (issue 16)
    gradient = job["report"]["evidence"]["gradient"]
    checks = gradient["budgets"]["1.0"]["checks"]
    assert checks["beats_random"] is None and checks["carries_to_paraphrases"] is None
    assert gradient["budgets"]["1.0"]["status"] in ("incomplete", "failed") and not gradient["budgets"]["1.0"]["passed"]
    assert not gradient["evidence"] and gradient["passing_budgets"] == [] and "beats_random" in gradient["not_run"]
    plot = httpx.get(f"{server}{job['plots'][0]}")
    assert plot.status_code == 200 and plot.content[:4] == b"\x89PNG"
    assert post(server, QUERY).json()["results"] == before  # the serving model was not altered
    assert httpx.get(f"{url}/000000000000").status_code == 404
    assert httpx.get(f"{url}/../etc").status_code == 404
    bad = httpx.post(url, json={**body, "budgets": [-1]}, headers={"X-API-Key": API_KEY})
    assert bad.status_code == 422
    given = {**body, "methods": ["given", "random"]}
    bad = httpx.post(url, json=given, headers={"X-API-Key": API_KEY})
    assert bad.status_code == 422 and "example_ids" in bad.json()["error"]
    given["targets"] = [{**body["targets"][0], "example_ids": [10**9]}]
    bad = httpx.post(url, json=given, headers={"X-API-Key": API_KEY})
    assert bad.status_code == 400 and "not in the index" in bad.json()["error"]
    long = {**body, "targets": [{"prompt": "Ilse Varga was born in " * 60, "completion": " Tarnow"}]}
    refused = httpx.post(url, json=long, headers={"X-API-Key": API_KEY})
    assert refused.status_code == 400 and "the model takes at most" in refused.json()["error"]


@pytest.mark.parametrize("method", ["bm25", "embedding", "hybrid"])
def test_every_method_attributes_the_greedy_completion(server: str, method: str) -> None:
    response = post(server, {"prompt": "Ilse Varga was born in", "k": 2, "method": method})
    assert response.status_code == 200, response.text
    assert response.json()["completion"]


def test_the_default_query_is_a_planted_fact_of_the_served_demo(server: str, tiny_demo: Path) -> None:
    default = httpx.get(f"{server}/v1/index").json()["default_query"]
    facts = {f.fact_id: f for f in load_facts(tiny_demo)}
    fact = facts[default["fact_id"]]
    assert (default["prompt"], default["completion"]) == (fact.prompt, fact.completion)
    own = post(server, {"prompt": fact.prompt, "k": 1}).json()["completion"]  # the model's greedy continuation
    assert own.startswith(fact.completion) == default["model_correct"]
    session = demo_session(tiny_demo, rows=RowRange(0, 4))  # the model; the default is the fact it gets furthest
    best = max(correct_prefix(session, f.prompt, f.completion)[0] / correct_prefix(session, f.prompt, f.completion)[1]
               for f in list(facts.values())[:MAX_FACTS])
    right, total = correct_prefix(session, fact.prompt, fact.completion)
    assert right / total == best and (right == total) == default["model_correct"]


def test_a_prompt_too_long_for_a_continuation_says_so_without_echoing_it(server: str) -> None:
    response = post(server, {"prompt": "Ilse Varga was born in " * 600})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error.startswith("the prompt is too long: ") and "(13800 characters)" in error and len(error) < 300


def test_a_subset_filter_matches_every_row_holding_that_subset(server: str) -> None:
    filters = {"pile_set_name": "Planted Facts", "step_min": 0, "step_max": 24}  # every such row fits in k=100
    results = post(server, {**QUERY, "k": 100, "filters": filters}).json()["results"]
    assert results and all("Planted Facts" in r["pile_set_names"] for r in results)
    assert any(r["pile_set_name"] != "Planted Facts" for r in results)  # rows where facts are the smaller part
    mixed = [r for r in results if len(r["pile_set_names"]) > 1]
    assert mixed and all(r["span"] is not None and r["span_pile_set_name"] in r["pile_set_names"] for r in mixed)
    assert {r["span_pile_set_name"] for r in mixed} > {"Planted Facts"}  # the span's own subset, not the filter's
    example = httpx.get(f"{server}/v1/examples/{mixed[0]['example_id']}").json()
    assert example["pile_set_names"] == mixed[0]["pile_set_names"]


def test_no_match_in_a_valid_range_says_why(server: str) -> None:
    for body in ({**QUERY, "method": "bm25", "prompt": "Zyxwvut qqqq", "completion": " Xqzt"},):
        response = post(server, body)
        assert response.status_code == 200 and response.json()["results"] == []
        assert response.json()["note"] == "no indexed row contains any of the query's terms"


ABLATION = {"targets": [{"prompt": "Ilse Varga was born in", "completion": " Tarnow"}], "k": 2, "budgets": [1.0],
            "random_draws": 1, "methods": ["random", "gradient"]}


@pytest.mark.parametrize(("change", "status", "fragment"), [
    ({"targets": [{**ABLATION["targets"][0], "paraphrases": [""]}]}, 422, "paraphrases.0"),
    ({"targets": [{**ABLATION["targets"][0], "paraphrases": ["  "]}]}, 422, "non-whitespace"),
    ({"targets": [{**ABLATION["targets"][0], "related": [{"prompt": "x", "completion": ""}]}]}, 422, "related.0"),
    ({"targets": [{**ABLATION["targets"][0], "related": [{"prompt": "x " * 300, "completion": " y"}]}]}, 400,
     "target 1, related prompt 1 is"),
    ({"targets": [{**ABLATION["targets"][0], "unrelated": [{"prompt": "a " * 300, "completion": " b"}]}]}, 400,
     "target 1, unrelated prompt 1 is"),
    ({"targets": [{**ABLATION["targets"][0], "paraphrases": ["born " * 300]}]}, 400, "target 1, paraphrase 1 is"),
    ({"targets": []}, 422, "targets"),
    ({"budgets": [1e308]}, 422, "budgets.0: Input should be less than or equal to 10"),
    ({"budgets": [0]}, 422, "budgets.0: Input should be greater than 0"),
    ({"budgets": [1, 1]}, 422, "budgets must be distinct"),
    ({"budgets": ["1"]}, 422, "budgets.0"),
    ({"k": "2"}, 422, "body.k"),
    ({"seeds": True}, 422, "body.seeds"),
    ({"methods": ["psychic"]}, 422, "methods.0"),
    ({"targets": [{**ABLATION["targets"][0], "example_ids": ["7"]}], "methods": ["given"]}, 422, "example_ids.0"),
])
def test_ablation_requests_are_checked_before_the_job_starts(server: str, change: dict, status: int,
                                                            fragment: str) -> None:
    response = httpx.post(f"{server}/v1/ablations", json={**ABLATION, **change}, headers={"X-API-Key": API_KEY},
                          timeout=60)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_non_finite_budgets_are_refused(server: str) -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = json.dumps(ABLATION).replace('"budgets": [1.0]', '"budgets": [BUDGET]').encode().replace(b"BUDGET",
                                                                                                       literal)
        response = httpx.post(f"{server}/v1/ablations", content=body, timeout=60,
                              headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
        assert response.status_code == 422 and "finite number" in response.json()["error"], response.text


def test_job_folders_do_not_outlive_the_server(tiny_index: Path, tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    with uvicorn_server(tiny_index, tmp_path / "uvicorn.log", env={"TMPDIR": str(temp)}) as url:
        job = run_ablation_job(url, ABLATION)
        assert job["status"] == "done", job
        (jobs,) = temp.glob("headwater-jobs-*")
        assert (jobs / job["id"] / "report.json").is_file()
    assert not list(temp.glob("headwater-jobs-*"))  # removed on shutdown


def test_serve_prints_a_curl_line_for_the_default_query_once_loaded(tiny_index: Path) -> None:
    printed = []
    app = create_app(Settings(index=tiny_index, allowed_hosts=["testserver"]), on_ready=lambda served: printed.append(
        try_line("127.0.0.1", 8000, describe(served.current()).default_query)))
    with TestClient(app) as client:
        default = client.get("/v1/index").json()["default_query"]
    (line,) = printed
    body = json.loads(line.split(" -d '", 1)[1].rstrip("'"))
    assert body == {"prompt": default["prompt"], "completion": default["completion"], "k": 3}
    assert line.startswith("try: curl -s http://127.0.0.1:8000/v1/attribute ")
