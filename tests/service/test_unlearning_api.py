"""``method: "unlearning"`` over HTTP (a real uvicorn server): evidence per hit, per-request ascent settings and
their bounds, and the model lock — concurrent unlearning queries, which change the shared weights while they run,
answer as serial ones do and leave the other methods' answers unchanged."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

QUERY = {"prompt": "Ilse Varga was born in", "completion": " Tarnow", "k": 5, "method": "unlearning"}


def post(server: str, body) -> httpx.Response:
    return httpx.post(f"{server}/v1/attribute", json=body, timeout=120)


def test_per_token_evidence_only_when_asked(server: str) -> None:
    data = post(server, QUERY).json()
    assert all(r["loss_increase"] is None and r["row_tokens"] is None for r in data["results"])
    assert post(server, {**QUERY, "token_evidence": "yes"}).status_code == 422


def test_results_show_where_the_model_got_more_perplexed(server: str) -> None:
    response = post(server, {**QUERY, "filters": {"pile_set_name": "Planted Facts"}, "token_evidence": True})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["method"] == "unlearning" and [r["rank"] for r in data["results"]] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True)
    for r in data["results"]:
        assert "Planted Facts" in (r.get("pile_set_names") or [r["pile_set_name"]])  # rows may mix subsets
        assert len(r["loss_increase"]) == len(r["row_tokens"]) > 0
        assert sum(r["loss_increase"]) / len(r["loss_increase"]) == pytest.approx(r["score"], abs=1e-4)
        assert r["span"] is not None and 0 <= r["span"]["start"] < r["span"]["end"] <= len(r["text"])
        assert r["token_contributions"] is None
    assert {"unlearning_candidates", "unlearning_reference", "unlearning_target"} <= data["timings_ms"].keys()


def test_ascent_settings_per_request(server: str) -> None:
    default = post(server, QUERY).json()["results"]
    same = post(server, {**QUERY, "steps": 3, "budget": 0.5, "candidates": 30}).json()["results"]
    assert [r["score"] for r in same] == pytest.approx([r["score"] for r in default], abs=1e-6)
    other = post(server, {**QUERY, "steps": 1, "budget": 2.0})
    assert other.status_code == 200, other.text
    assert [r["score"] for r in other.json()["results"]] != [r["score"] for r in default]


def test_the_newton_direction_per_request(server: str) -> None:
    response = post(server, {**QUERY, "direction": "newton", "token_evidence": True})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for r in results:
        assert sum(r["loss_increase"]) / len(r["loss_increase"]) == pytest.approx(r["score"], abs=1e-4)
    default = post(server, QUERY).json()["results"]
    assert [r["score"] for r in results] != pytest.approx([r["score"] for r in default], abs=1e-6)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"steps": 0}, "steps"), ({"steps": 11}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": "3"}, "steps"),
        ({"budget": 0}, "budget"), ({"budget": -1}, "budget"), ({"budget": 1e9}, "budget"),
        ({"budget": "lots"}, "budget"), ({"candidates": 0}, "candidates"), ({"candidates": 100_000}, "candidates"),
        ({"method": "gradient", "steps": 2}, "only method unlearning"),
        ({"method": "bm25", "budget": 1.0, "candidates": 5}, "budget, candidates"),
        ({"direction": "sideways"}, "direction"), ({"method": "embedding", "direction": "newton"}, "direction"),
    ],
)
def test_bad_ascent_settings_are_422(server: str, extra: dict, fragment: str) -> None:
    response = post(server, {**QUERY, **extra})
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]


def test_non_finite_budgets_are_refused(server: str) -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"prompt": "Ilse Varga was born in", "completion": " Tarnow", "method": "unlearning", "budget": '
        response = httpx.post(f"{server}/v1/attribute", content=body + literal + b"}",
                              headers={"Content-Type": "application/json"})
        assert 400 <= response.status_code < 500, response.text


def test_concurrent_unlearning_queries_match_serial_ones(server: str) -> None:
    prompts = ["Ilse Varga was born in", "Marek Holloway works for", "Odile Strand studied at"]
    bodies = [{"prompt": p, "completion": " X", "k": 4, "method": m}
              for p in prompts for m in ("unlearning", "gradient")]

    def ranked(body: dict) -> list[tuple[int, float]]:
        response = post(server, body)
        assert response.status_code == 200, response.text
        return [(r["example_id"], round(r["score"], 4)) for r in response.json()["results"]]

    serial = [ranked(b) for b in bodies]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(ranked, bodies * 3))
    assert together == serial * 3
    assert [ranked(b) for b in bodies] == serial  # the weights came back bit for bit


def test_the_index_shows_the_estimated_and_the_measured_cost(server: str) -> None:
    before = httpx.get(f"{server}/v1/index").json()["unlearning_cost"]
    assert before["rows"] == 192 and before["estimate_seconds"] > 0
    assert post(server, QUERY).status_code == 200
    after = httpx.get(f"{server}/v1/index").json()["unlearning_cost"]
    assert after["measured_queries"] == min(before["measured_queries"] + 1, 50)
    assert after["measured_seconds"] > 0 and after["estimate_seconds"] == before["estimate_seconds"]
