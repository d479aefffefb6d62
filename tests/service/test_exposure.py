"""What a server reachable by others must refuse: foreign Host headers, framing, links that start jobs, stalled
bodies, one client hogging the model, odd keys; through a real uvicorn server, the page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from fastapi import HTTPException
from pydantic import ValidationError

from service.deps import require_api_key
from service.settings import Settings
from tests.service.conftest import API_KEY, uvicorn_server
from tests.service.test_web_page import CHROMIUM

QUERY = {"prompt": "Ilse Varga was born in", "completion": " Tarnow"}
ABSENT = {"prompt": "The capital of Australia is", "completion": " Canberra"}
"""A fact the tiny demo's corpus never states."""
GUARDED = {"HEADWATER_BODY_TIMEOUT_S": "1", "HEADWATER_MAX_MODEL_QUERIES_PER_CLIENT": "1",
           "HEADWATER_ALLOWED_HOSTS": "headwater.test, 127.0.0.1", "HEADWATER_BATCH_WINDOW_MS": "1000"}
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")


@pytest.fixture(scope="module")
def guarded(served_index: Path, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A server with the settings of this module set by environment (:data:`GUARDED`), and its log."""
    log = tmp_path_factory.mktemp("guarded-log") / "uvicorn.log"
    with uvicorn_server(served_index, log, env=GUARDED) as url:
        yield url, log


# 1. API key


def test_a_non_ascii_api_key_is_refused_with_401(server: str) -> None:
    for key in ("clé".encode(), "ключ".encode(), b"\xff\xfe"):
        response = httpx.post(f"{server}/v1/admin/reload", headers={"X-API-Key": key})
        assert response.status_code == 401, response.text
        assert response.json() == {"error": "missing or wrong X-API-Key header"}


def test_a_non_ascii_key_matches_its_utf8_bytes() -> None:
    settings = Settings(api_key="clé")
    require_api_key(settings, "clé".encode().decode("latin-1"))  # what Starlette makes of the header's bytes
    with pytest.raises(HTTPException) as refused:
        require_api_key(settings, "cle")
    assert refused.value.status_code == 401


# 2. Allowed hosts


def test_allowed_hosts_default_to_this_machine_and_the_listen_address() -> None:
    assert Settings().allowed_hosts == ["localhost", "127.0.0.1", "::1"]
    assert Settings(host="0.0.0.0").allowed_hosts == ["localhost", "127.0.0.1", "::1"]
    assert Settings(host="::").allowed_hosts == ["localhost", "127.0.0.1", "::1"]
    assert Settings(host="10.1.2.3").allowed_hosts == ["localhost", "127.0.0.1", "::1", "10.1.2.3"]
    local = Settings()
    assert all(local.serves_host(h) for h in ("localhost", "LOCALHOST:8000", "127.0.0.1:80", "[::1]:8000", "[::1]"))
    assert not any(local.serves_host(h) for h in ("evil.test", "evil.test:8000", "localhost.evil.test", "", None))
    assert Settings(allowed_hosts="*").serves_host("anything.test:1")


def test_allowed_hosts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_ALLOWED_HOSTS", "api.example.org, [::1] ,10.0.0.7")
    assert Settings().allowed_hosts == ["api.example.org", "::1", "10.0.0.7"]
    monkeypatch.setenv("HEADWATER_ALLOWED_HOSTS", '["api.example.org", "localhost"]')
    assert Settings().allowed_hosts == ["api.example.org", "localhost"]


def test_a_foreign_host_header_is_refused_with_json(server: str) -> None:
    port = urlsplit(server).port
    for host in ("evil.test", f"evil.test:{port}", "127.0.0.1.evil.test"):
        response = httpx.get(f"{server}/v1/health", headers={"Host": host})
        assert response.status_code == 400, host
        assert "allowed_hosts" in response.json()["error"] and "HEADWATER_ALLOWED_HOSTS" in response.json()["error"]
    assert httpx.post(f"{server}/v1/attribute", json=QUERY, headers={"Host": "evil.test"}).status_code == 400
    assert httpx.get(f"{server}/", headers={"Host": "evil.test"}).status_code == 400
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(f"{server}/v1/health", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_set_by_environment_replace_the_defaults(guarded: tuple[str, Path]) -> None:
    url, _ = guarded
    assert httpx.get(f"{url}/v1/health", headers={"Host": "headwater.test"}).status_code == 200
    assert httpx.get(f"{url}/v1/health", headers={"Host": "HEADWATER.test:443"}).status_code == 200
    assert httpx.get(f"{url}/v1/health", headers={"Host": "localhost"}).status_code == 400


# 3. Security headers


def test_every_response_forbids_framing_and_sniffing(server: str) -> None:
    for response in (httpx.get(f"{server}/"), httpx.get(f"{server}/v1/health"), httpx.get(f"{server}/v1/examples/x"),
                     httpx.get(f"{server}/v1/health", headers={"Host": "evil.test"}), httpx.get(f"{server}/docs")):
        assert response.headers["x-frame-options"] == "DENY", response.url
        assert response.headers["x-content-type-options"] == "nosniff", response.url


def test_html_pages_have_a_content_security_policy(server: str) -> None:
    for path in ("/", "/docs", "/redoc"):
        policy = dict(p.strip().split(" ", 1) for p in httpx.get(f"{server}{path}").headers["content-security-policy"]
                      .split(";"))
        assert policy["default-src"] == "'self'" and policy["frame-ancestors"] == "'none'", path
        assert policy["object-src"] == "'none'" and policy["base-uri"] == "'none'"
        assert "unsafe-inline" not in policy["script-src"] and "unsafe-eval" not in policy["script-src"]
        assert "http" not in " ".join(policy.values())  # nothing from elsewhere
    assert "content-security-policy" not in httpx.get(f"{server}/v1/health").headers  # JSON is no document


@needs_chromium
def test_the_page_and_the_api_docs_run_under_the_policy(server: str, tmp_path: Path) -> None:
    with Browser(tmp_path) as browser:
        browser.open(f"{server}/?{urlencode({**QUERY, 'k': '2', 'run': '1'})}")
        assert browser.wait_for("document.querySelectorAll('#results .card').length") == 2
        browser.open(f"{server}/docs")
        assert browser.wait_for("document.querySelectorAll('.opblock-summary-path').length") >= 5
        browser.open(f"{server}/redoc")
        assert browser.wait_for("document.body.innerText.includes('/v1/attribute')")
        # blocked: only what would come from elsewhere (ReDoc's logo from its CDN), never the pages' own scripts
        assert all(v.split(" ", 1)[1].startswith("https://") for v in browser.violations()), browser.violations()


# 4. The page: a link never starts a job


@needs_chromium
def test_a_link_with_check_1_only_points_at_the_check_button(guarded: tuple[str, Path], tmp_path: Path) -> None:
    url, log = guarded
    query = urlencode({**QUERY, "k": "3", "run": "1", "check": "1"})
    with Browser(tmp_path) as browser:
        browser.open(f"{url}/?{query}#api_key={API_KEY}")  # a key in the tab: the old page started the job with it
        assert browser.wait_for("document.querySelectorAll('#results .card').length") == 3  # run=1 still queries
        time.sleep(3)
        assert "POST /v1/ablations" not in log.read_text()  # no job started
        assert browser.evaluate("document.getElementById('check_go').classList.contains('suggested')")
        assert browser.evaluate("document.activeElement.id") != "check_go"  # a stray key press must not start it
        assert "click “Check this attribution”" in browser.evaluate("document.getElementById('check_status').innerText")
        browser.evaluate("document.getElementById('check_go').click()")  # a click does start it
        assert browser.wait_for("/Job [0-9a-f]{12}/.test(document.getElementById('check_status').innerText)")
    assert "POST /v1/ablations" in log.read_text()


@needs_chromium
@pytest.mark.parametrize(("query", "method"), [(QUERY, "gradient"), (ABSENT, "gradient"), (ABSENT, "embedding")])
def test_a_click_runs_the_check_and_shows_the_apis_verdict(query: dict, method: str, server: str,
                                                            tmp_path: Path) -> None:
    """The page shows the one verdict of the API (the report's and the CLI's), its whole checklist and what it does
    not show; a fact the corpus never states is never 'Supported' (a negative control), whoever picked the rows."""
    link = urlencode({**query, "method": method, "k": "3", "run": "1", "check": "1"})
    with Browser(tmp_path) as browser:
        browser.open(f"{server}/?{link}#api_key={API_KEY}")
        browser.wait_for("document.getElementById('check_go').classList.contains('suggested')")
        browser.evaluate("document.getElementById('check_go').click()")
        browser.wait_for("/Job [0-9a-f]{12} done[.]/.test(document.getElementById('check_status').innerText)", 900)
        html = browser.evaluate("document.getElementById('check_result').innerHTML")
        job = browser.evaluate("document.querySelector('#check_result a').href")
    verdict = httpx.get(job, timeout=30).json()["verdicts"]["given"]
    css = {"supported": "yes", "not supported": "no", "inconclusive": "none"}[verdict["verdict"]]
    assert f'<div class="verdict {css}">{verdict["verdict"].capitalize()}: ' in html, html
    if query is ABSENT:
        assert verdict["verdict"] != "supported" and "Supported:" not in html
    for check in verdict["checks"]:
        assert f"{check['label']}: <b>{check['status']}</b>" in html
    assert "beats random: <b>not run</b>" in html  # one target: the paired test cannot run, and says so
    assert "specificity z ≥ 2" in html and "related ratio ≤ 0.5" in html
    assert not re.search(r"z ge 2|ratio le 0 5|_ge_|_le_", html), html
    assert "by construction" in html  # what a verdict does not show
    assert "<td>these examples</td>" in html and "<td>random (mean of draws)</td>" in html
    assert re.search(r'<img alt="target vs related damage" src="/v1/ablations/[0-9a-f]{12}/plots/'
                     r'target_vs_related.png">', html)


@needs_chromium
def test_a_click_without_a_key_says_why(server: str, tmp_path: Path) -> None:
    with Browser(tmp_path) as browser:
        browser.open(f"{server}/?{urlencode({**QUERY, 'k': '3', 'run': '1'})}")
        browser.wait_for("document.querySelectorAll('#results .card').length")
        browser.evaluate("document.getElementById('api_key').value = ''; document.getElementById('check_go').click()")
        status = browser.wait_for("document.getElementById('check_status').innerText.includes('failed') && "
                                  "document.getElementById('check_status').innerText")
    assert status == "Check failed: missing or wrong X-API-Key header"


# 5. Slow bodies


def test_a_stalled_body_gets_408_and_the_connection_closes(guarded: tuple[str, Path]) -> None:
    url, _ = guarded
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/attribute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n" + b'{"prompt":')
        started = time.monotonic()
        answer = read_until_closed(sock, seconds=8)
        took = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in head.lower()
    assert "body_timeout_s" in json.loads(body)["error"]
    assert 0.9 < took < 5, took  # the 1 s of HEADWATER_BODY_TIMEOUT_S, then closed


def test_a_body_arriving_in_time_is_served(guarded: tuple[str, Path]) -> None:
    url, _ = guarded
    address = urlsplit(url)
    body = json.dumps({**QUERY, "k": 2, "method": "bm25"}).encode()
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/attribute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.5)
        sock.sendall(body[10:])
        answer = read_until_closed(sock, seconds=30)
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def read_until_closed(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends until it closes the connection (at most ``seconds``)."""
    chunks, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    raise AssertionError(f"connection still open after {seconds} s: {b''.join(chunks)[:300]!r}")


# 6. Queries that run the model, per client


def test_a_client_gets_429_past_its_model_queries(guarded: tuple[str, Path]) -> None:
    url, _ = guarded
    # a gradient query waits 1 s for others to share its pass (HEADWATER_BATCH_WINDOW_MS): that long in flight
    slow = {**QUERY, "k": 2, "method": "gradient"}
    first: list[httpx.Response] = []
    running = threading.Thread(target=lambda: first.append(httpx.post(f"{url}/v1/attribute", json=slow, timeout=300)))
    started = time.monotonic()
    running.start()
    try:
        time.sleep(0.3)
        second = httpx.post(f"{url}/v1/attribute", json={**QUERY, "k": 2, "method": "unlearning"}, timeout=60)
        assert running.is_alive(), f"the first query ended in {time.monotonic() - started:.1f} s"
        assert second.status_code == 429, second.text
        assert "max_model_queries_per_client" in second.json()["error"]
        lexical = httpx.post(f"{url}/v1/attribute", json={**QUERY, "k": 2, "method": "bm25"}, timeout=60)
        assert lexical.status_code == 200  # runs no model: not counted
    finally:
        running.join(timeout=300)
    assert first[0].status_code == 200, first[0].text
    again = httpx.post(f"{url}/v1/attribute", json={**QUERY, "k": 2, "method": "unlearning"}, timeout=300)
    assert again.status_code == 200, again.text


def test_a_failed_model_query_frees_its_slot(guarded: tuple[str, Path]) -> None:
    url, _ = guarded
    for _ in range(3):  # too long for the model: fails inside the query (400)
        too_long = {**QUERY, "completion": " word" * 400, "method": "unlearning"}
        response = httpx.post(f"{url}/v1/attribute", json=too_long, timeout=60)
        assert response.status_code == 400, response.text
    response = httpx.post(f"{url}/v1/attribute", json={**QUERY, "k": 2, "method": "gradient"}, timeout=60)
    assert response.status_code == 200, response.text


# 7. HEAD /v1/health


def test_head_health_is_200_without_a_body(server: str) -> None:
    response = httpx.head(f"{server}/v1/health")
    assert response.status_code == 200 and response.content == b""


# Settings are checked at start-up


@pytest.mark.parametrize(("name", "value", "why"), [
    ("body_timeout_s", 0, "greater than 0"), ("body_timeout_s", float("inf"), "finite number"),
    ("max_model_queries_per_client", 0, "greater than or equal to 1"), ("allowed_hosts", " , ", "is empty"),
    ("allowed_hosts", "http://example.org", "not a host name"), ("allowed_hosts", "a.test:80", "not a host name")])
def test_bad_settings_are_refused(name: str, value: Any, why: str) -> None:
    with pytest.raises(ValidationError, match=f"(?s){name}.*{why}"):
        Settings(**{name: value})


def test_a_bad_setting_stops_the_server_at_start(served_index: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="body_timeout_s") as stopped:
        with uvicorn_server(served_index, tmp_path / "uvicorn.log", env={"HEADWATER_BODY_TIMEOUT_S": "0"}):
            pass
    assert "greater than 0" in str(stopped.value)


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3 reads
    commands, fd 4 writes answers), for what ``--dump-dom`` cannot do: wait for a state, click, read a function's
    result. Content-Security-Policy violations of every page are recorded (:meth:`violations`)."""

    RECORD = ("window.__violations = []; document.addEventListener('securitypolicyviolation', "
              "(e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));")

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path, self.last_id, self.pending = tmp_path, 0, b""
        self.seen: list[str] = []

    def __enter__(self) -> Browser:
        to_chromium, self.commands = os.pipe()
        self.answers, from_chromium = os.pipe()

        def as_fd_3_and_4() -> None:
            os.dup2(to_chromium, 3)
            os.dup2(from_chromium, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             "--remote-debugging-pipe", f"--user-data-dir={self.tmp_path / 'cdp-profile'}", "about:blank"],
            preexec_fn=as_fd_3_and_4, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chromium)
        os.close(from_chromium)
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session=self.session)
        self.send("Page.addScriptToEvaluateOnNewDocument", session=self.session, source=self.RECORD)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self.commands)
        os.close(self.answers)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict:
        """Send one command and return its result (events arriving meanwhile are dropped)."""
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = self.read(deadline - time.monotonic())
            if answer.get("id") == self.last_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
        raise TimeoutError(f"no answer to {method} from Chromium")

    def read(self, seconds: float) -> dict:
        while b"\0" not in self.pending:
            ready, _, _ = select.select([self.answers], [], [], seconds)
            chunk = os.read(self.answers, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError("Chromium sent nothing")
            self.pending += chunk
        message, _, self.pending = self.pending.partition(b"\0")
        return json.loads(message)

    def open(self, url: str) -> None:
        """Load ``url`` and wait until its document is ready (the page's own fetches may still be running)."""
        self.seen += self.evaluate("window.__violations || []")  # the page left
        self.send("Page.navigate", session=self.session, url=url)
        self.wait_for(f"location.pathname === {json.dumps(urlsplit(url).path)} && document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.send("Runtime.evaluate", session=self.session, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 120) -> Any:
        """The first truthy value of ``expression``, polled for at most ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"not true after {seconds} s: {expression}")

    def violations(self) -> list[str]:
        """Policy violations of the pages opened so far."""
        return self.seen + self.evaluate("window.__violations || []")
