"""Task queries over HTTP on a real uvicorn server: answered as one, instances named per row, bad tasks a 422."""

from __future__ import annotations

import httpx
import pytest

TASK = [{"prompt": "Ilse Varga was born in", "completion": " Tarnow"},
        {"prompt": "Joachim Fairweather was born in"},
        {"prompt": "Marek Holloway was born in"}]
CONTROL = [{"prompt": "The river runs past the"}, {"prompt": "In the beginning God created the"}]


def post(server: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server}/v1/attribute", json=body, timeout=300)


@pytest.mark.parametrize("method", ["gradient", "bm25", "embedding", "unlearning"])
def test_a_task_is_answered_as_one(server: str, method: str) -> None:
    answer = post(server, {"task": TASK, "k": 5, "method": method})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["method"] == method and data["aggregation"] and len(data["results"]) == 5
    assert [i["prompt"] for i in data["task"]] == [t["prompt"] for t in TASK]
    assert data["task"][0]["completion"] == " Tarnow" and all(i["completion"] for i in data["task"])  # filled in
    assert data["prompt"] == TASK[0]["prompt"]
    if method != "unlearning":  # the summed-loss ascent does not split a row's score by instance
        for result in data["results"]:
            shares = result["instances"]
            assert 1 <= len(shares) <= 3 and all(0 <= s["instance"] < len(TASK) for s in shares)
            assert [s["contribution"] for s in shares] == sorted((s["contribution"] for s in shares), reverse=True)


def test_a_control_task_changes_the_gradient_answer(server: str) -> None:
    plain = post(server, {"task": TASK, "k": 10, "method": "gradient"}).json()["results"]
    contrasted = post(server, {"task": TASK, "control_task": CONTROL, "k": 10, "method": "gradient"})
    assert contrasted.status_code == 200, contrasted.text
    assert [r["example_id"] for r in contrasted.json()["results"]] != [r["example_id"] for r in plain]


@pytest.mark.parametrize(("body", "fragment"), [
    ({"task": []}, "task"),
    ({"task": [TASK[0]] * 257}, "task"),
    ({"task": [{"prompt": "  "}]}, "non-whitespace"),
    ({"task": [{"prompt": "x", "completion": ""}]}, "completion"),
    ({"task": TASK, "control_task": list(reversed(TASK))}, "control_task is the task itself"),
    ({"task": TASK, "prompt": "x"}, "not both and not neither"),
    ({"k": 5}, "not both and not neither"),
    ({"prompt": "x", "control_task": CONTROL}, "control_task goes with task"),
    ({"task": TASK, "controls": ["y"]}, "drop completion and controls"),
    ({"task": TASK, "control_task": CONTROL, "method": "bm25"}, "method bm25 ignores control prompts"),
    ({"task": [{"prompt": "x", "colour": "red"}]}, "colour"),
])
def test_bad_tasks_are_a_422(server: str, body: dict, fragment: str) -> None:
    answer = post(server, body)
    assert answer.status_code == 422, answer.text
    assert fragment in answer.text
