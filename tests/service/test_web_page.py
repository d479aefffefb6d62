"""The web page in real headless Chromium (Debian's package): it renders results from the live API."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")


def chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000", "--window-size=1200,1400"]
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
