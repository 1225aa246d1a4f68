"""The dashboard in headless Chromium (Debian's ``chromium`` driven by Playwright).

The page must show, grouped by failure domain, the detections just posted to the API, with
their lines, templates and scores, a chart, and a working domain filter; it loads nothing
from outside the service. Skipped without Chromium or Playwright, except in CI
(``FAME_REQUIRE_SERVE=1``). With ``FAME_SCREENSHOT=PATH`` the page is also saved as a PNG
(the README's screenshot: ``docs/dashboard.png``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("httpx", reason="the serve extra is not installed")

from serve_harness import CHROMIUM, REQUIRE_SERVE, TOKEN, Service

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        reason = f"playwright is not installed ({exc})"
    if reason is None and not Path(CHROMIUM).exists():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if reason:
        if REQUIRE_SERVE:
            pytest.fail(f"FAME_REQUIRE_SERVE=1 but {reason}")
        pytest.skip(reason)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_page_shows_posted_detections_by_domain(
    fame_service: Service, bgl_2k: Path, browser: Any
) -> None:
    lines = bgl_2k.read_text(encoding="utf-8").splitlines()
    shot = os.environ.get("FAME_SCREENSHOT")
    # Requests of 400 lines (the service's limit is 1,000); for the screenshot a minute apart,
    # so that the chart has several bars.
    chunks = [lines[i : i + 400] for i in range(0, len(lines), 400)]
    results = []
    with fame_service.client() as client:
        for n, chunk in enumerate(chunks):
            if n and shot:
                time.sleep(61)
            source = f"bgl-node-{n + 1}" if shot else "browser-test"
            answer = client.post("/v1/detect", params={"source": source}, json=chunk)
            assert answer.status_code == 200, answer.text
            results.extend(answer.json())
    anomalies = [r for r in results if r["anomaly"]]
    domains = {r["domain"] or "(none)" for r in anomalies}
    assert anomalies

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []
    page.on(
        "request",
        lambda r: None if r.url.startswith(fame_service.url) else outside.append(r.url),
    )
    page.goto(fame_service.url + "/")
    assert page.url.endswith("/login")  # the token is on: sign in first
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("section.domain")

    # Grouped by domain, with the posted lines, their templates and scores.
    shown = set(
        page.locator("section.domain").evaluate_all("els => els.map(e => e.dataset.domain)")
    )
    assert domains <= shown
    first = next(r for r in anomalies if r["template"])
    section = page.locator(f'section.domain[data-domain="{first["domain"] or "(none)"}"]')
    assert first["template"] in section.inner_text()
    assert ("bgl-node-" if shot else "browser-test") in section.inner_text()
    assert page.locator("svg rect.bar").count() > 0
    total = int(page.inner_text("#total"))
    assert total >= len(anomalies)

    if shot:
        page.goto(fame_service.url + "/?range=15m")
        page.wait_for_selector("section.domain")
        page.screenshot(path=shot, full_page=False)
        page.goto(fame_service.url + "/")

    # The domain filter narrows the page to one domain.
    domain = first["domain"] or "(none)"
    page.select_option("#domain", domain)
    page.wait_for_url(re.compile(r".*domain=.*"))
    page.wait_for_selector("section.domain")
    remaining = page.locator("section.domain").evaluate_all("els => els.map(e => e.dataset.domain)")
    assert remaining == [domain]
    assert outside == []  # nothing came from a CDN or anywhere else
    page.close()
