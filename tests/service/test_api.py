"""The HTTP API end to end against a real uvicorn process, including bad input."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.service.conftest import API_KEY

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
    assert all(r["pile_set_name"] == "Planted Facts" and r["step"] is not None for r in data["results"])
    if method == "gradient":
        top = data["results"][0]
        assert len(top["token_contributions"]) == len(top["completion_tokens"])
        assert top["span"] is not None and 0 <= top["span"]["start"] < top["span"]["end"] <= len(top["text"])
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
                                  "token_count"}
        assert example["step"] == 2 and example["batch_pos"] == listed["batch_pos"]
        assert example["token_count"] == listed["token_count"] > 0
    missing = httpx.get(f"{server}/v1/examples/999999")
    assert missing.json() == {"error": "no example 999999 in this index"}
    assert httpx.get(f"{server}/v1/steps/5000").json() == {"error": "no indexed examples at step 5000"}


def test_index_info_shape(server: str) -> None:
    info = httpx.get(f"{server}/v1/index").json()
    assert info.keys() == {"build", "model", "revisions", "examples", "data", "projection", "preconditioner",
                           "embedding_model", "created"}
    assert info["data"].keys() == {"spec", "steps"} and info["data"]["spec"].endswith("document")
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
        ({**QUERY, "filters": {"step_min": 5, "step_max": 2}}, 400, "step_min"),
        ({**QUERY, "k": "many"}, 422, "k"),
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
    assert job["report"]["schema_version"] == 2 and job["progress"] == 1.0
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
