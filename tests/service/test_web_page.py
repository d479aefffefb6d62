"""The web page in real headless Chromium (Debian's package): it renders results from the live API."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from attribution.methods import METHODS
from tests.service.conftest import uvicorn_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")


def chromium(args: list[str], tmp_path: Path, virtual_ms: int = 30_000) -> subprocess.CompletedProcess:
    """Headless Chromium; virtual time runs only while no fetch is pending, so polling pages need a large budget."""
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
            f"--user-data-dir={tmp_path / 'profile'}", f"--virtual-time-budget={virtual_ms}", "--window-size=1200,1400"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=180)


def test_page_runs_a_query_and_shows_result_cards(server: str, tmp_path: Path) -> None:
    query = urlencode({"prompt": "Ilse Varga was born in", "completion": " Tarnow", "k": "4", "run": "1"})
    url = f"{server}/?{query}"
    dom = chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert re.findall(r'<span class="rank">#(\d+)</span>', html) == ["1", "2", "3", "4"]
    assert "4 examples for" in html and "<mark>" in html
    assert re.search(r'<span class="tok" style="background: rgba', html)
    assert re.search(r'href="/v1/examples/\d+"', html)
    shot = tmp_path / "page.png"
    done = chromium([f"--screenshot={shot}", url], tmp_path)
    assert done.returncode == 0 and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_shows_errors_from_the_api(server: str, tmp_path: Path) -> None:
    query = urlencode({"prompt": "Ilse Varga was born in", "completion": " word" * 400, "run": "1"})
    html = chromium(["--dump-dom", f"{server}/?{query}"], tmp_path).stdout
    assert "Error:" in html and "context" in html


def test_api_docs_render_offline(server: str, tmp_path: Path) -> None:
    for path in ("/docs", "/redoc"):
        page = httpx.get(f"{server}{path}").text
        assert "https://" not in page.replace("https://github.com", ""), page  # no CDN: every asset is ours
        for asset in re.findall(r'(?:src|href)="(/[^"]+)"', page):
            assert httpx.get(f"{server}{asset}").status_code == 200, asset
    docs = chromium(["--dump-dom", f"{server}/docs"], tmp_path).stdout
    paths = set(re.findall(r'<span class="opblock-summary-path" data-path="([^"]+)">', docs))  # rendered operations
    assert {"/v1/attribute", "/v1/index", "/v1/ablations"} <= paths, docs[-3000:]
    redoc = chromium(["--dump-dom", f"{server}/redoc"], tmp_path).stdout
    assert "/v1/attribute" in redoc and "Which training examples drive" in redoc


def test_page_offers_the_index_subsets_and_its_default_query(server: str, tmp_path: Path) -> None:
    info = httpx.get(f"{server}/v1/index").json()
    default = info["default_query"]
    html = chromium(["--dump-dom", f"{server}/?run=1"], tmp_path).stdout
    subsets = html.split('<datalist id="subsets">', 1)[1].split("</datalist>", 1)[0]
    assert re.findall(r'<option value="([^"$]+)">', subsets) == list(info["subsets"])
    assert f'{default["prompt"]} → {default["completion"]}</a>' in html
    assert f"examples for “{default['prompt']}” → “{default['completion']}” by unlearning" in html  # the default


def test_the_method_list_is_the_registrys(server: str, tmp_path: Path) -> None:
    """The page lists every method (and variant) ``GET /v1/index`` gives, which are ``attribution.methods.METHODS``."""
    info = httpx.get(f"{server}/v1/index").json()
    assert [m["name"] for m in info["methods"]] == [m.value for m in METHODS]
    html = chromium(["--dump-dom", f"{server}/"], tmp_path).stdout
    select = html.split('<select id="method">', 1)[1].split("</select>", 1)[0]
    offered = re.findall(r'<option( value="[^"]*")?[^>]*>([^<]*)</option>', select)
    values = [attribute[len(' value="'):-1] if attribute else label for attribute, label in offered]
    expected = [""] + [v for m in info["methods"] for v in [m["name"], *(f"{m['name']}:{x['name']}"
                                                                         for x in m["variants"])]]
    assert values == expected
    newton = next(m for m in info["methods"] if m["name"] == "unlearning")["variants"][0]
    assert newton["options"] == {"direction": "newton"}


def test_a_link_without_a_completion_attributes_the_models_own(server: str, tmp_path: Path) -> None:
    prompt = httpx.get(f"{server}/v1/index").json()["default_query"]["prompt"]
    own = httpx.post(f"{server}/v1/attribute", json={"prompt": prompt, "k": 1}, timeout=120).json()["completion"]
    html = chromium(["--dump-dom", f"{server}/?{urlencode({'prompt': prompt, 'k': '2', 'run': '1'})}"], tmp_path).stdout
    assert f"2 examples for “{prompt}” → “{own}” by unlearning" in html


def test_page_says_why_a_filter_matches_nothing(server: str, tmp_path: Path) -> None:
    query = urlencode({"prompt": "Ilse Varga was born in", "completion": " Tarnow", "subset": "planted facts",
                       "run": "1"})
    html = chromium(["--dump-dom", f"{server}/?{query}"], tmp_path).stdout
    assert "Error: unknown pile_set_name 'planted facts' (did you mean 'Planted Facts'?); this index holds" in html


def test_page_preselects_the_servers_default_method(served_index: Path, tmp_path: Path) -> None:
    with uvicorn_server(served_index, tmp_path / "uvicorn.log", env={"HEADWATER_DEFAULT_METHOD": "bm25"}) as url:
        info = httpx.get(f"{url}/v1/index").json()
        assert info["default_method"] == "bm25"
        assert info["default_method_reason"] == "set by the server (default_method)"
        query = urlencode({"prompt": "Ilse Varga was born in", "completion": " Tarnow", "k": "2", "run": "1"})
        html = chromium(["--dump-dom", f"{url}/?{query}"], tmp_path).stdout
    assert "2 examples for “Ilse Varga was born in” → “ Tarnow” by bm25" in html
    option = '<option value="" id="server_default" title="set by the server (default_method)">server default: bm25'
    assert option in html


def test_page_answers_a_pasted_task(server: str, tmp_path: Path) -> None:
    lines = ("Ilse Varga was born in\t Tarnow\nMarek Holloway was born in\n"
             '{"prompt": "Joachim Fairweather was born in"}')
    query = urlencode({"task": lines, "method": "gradient", "k": "3", "run": "1"})
    html = chromium(["--dump-dom", f"{server}/?{query}"], tmp_path).stdout
    assert re.findall(r'<span class="rank">#(\d+)</span>', html) == ["1", "2", "3"]
    assert "3 examples for a task of 3 instances by gradient" in html and "mean of the instances' unit" in html
    assert len(re.findall(r'<div class="meta instances">serves most: instance \d', html)) == 3
    assert '<section id="check" aria-label="check this attribution" style="display: none;">' in html
