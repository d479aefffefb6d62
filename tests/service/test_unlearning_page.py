"""The web page with method ``unlearning`` in headless Chromium: cards show the per-token loss increase."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

from tests.service.test_web_page import chromium, pytestmark  # noqa: F401 - the same Chromium skip


def test_unlearning_cards_show_the_loss_increase_strip(server: str, tmp_path: Path) -> None:
    query = urlencode({"prompt": "Ilse Varga was born in", "completion": " Tarnow", "k": "3", "method": "unlearning",
                       "run": "1"})
    dom = chromium(["--dump-dom", f"{server}/?{query}"], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout.split('<div id="results">', 1)[1].split("<script>", 1)[0]  # the cards, not the page's script
    assert re.findall(r'<span class="rank">#(\d+)</span>', html) == ["1", "2", "3"]
    assert "by unlearning in" in dom.stdout
    strips = re.findall(r'<div class="losses"', html)
    assert len(strips) == 3
    red_or_blue = r"rgba\((180,35,24|31,111,235),"
    tokens = re.findall(r'<span class="loss" title="(-?\d+\.\d{4})" style="background: ' + red_or_blue, html)
    assert len(tokens) > 3 * 10
    assert '<span class="tok"' not in html  # no completion-token heat strip: that is the gradient's evidence


def test_the_newton_step_is_offered_and_sent(server: str, tmp_path: Path) -> None:
    query = urlencode({"prompt": "Ilse Varga was born in", "completion": " Tarnow", "k": "3",
                       "method": "unlearning:newton", "run": "1"})
    dom = chromium(["--dump-dom", f"{server}/?{query}"], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "by unlearning (newton) in" in dom.stdout
    html = dom.stdout.split('<div id="results">', 1)[1].split("<script>", 1)[0]
    assert re.findall(r'<span class="rank">#(\d+)</span>', html) == ["1", "2", "3"]
    assert len(re.findall(r'<div class="losses"', html)) == 3
