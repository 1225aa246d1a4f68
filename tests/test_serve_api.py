"""The detection service's HTTP API against a real ``fame serve`` process on 127.0.0.1.

One service (fixture ``fame_service``: token on, small request limits, webhook alerts to a
local receiver) serves most tests; shutdown, reload and the token rule start their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")

from fame.cli import main  # noqa: E402
from fame.serve.storage import DetectionStore, database_url  # noqa: E402
from serve_harness import (  # noqa: E402
    POSTGRES_URL,
    REQUIRE_SERVE,
    TOKEN,
    Service,
    postgres_available,
    start_service,
)

TEST_REGION = slice(1700, 2000)  # the lines bgl_2k_run held out (its last 15%)


@pytest.fixture(scope="module")
def test_lines(bgl_2k: Path) -> list[str]:
    """BGL_2k's test region, as raw lines (label token included, as a file holds them)."""
    return bgl_2k.read_text(encoding="utf-8").splitlines()[TEST_REGION]


@pytest.fixture(scope="module")
def detect_cli(serve_bundle: Path, test_lines: list[str], tmp_path_factory: Any) -> list[dict]:
    """What ``fame detect`` writes for the test region."""
    work = tmp_path_factory.mktemp("detect")
    log = work / "test.log"
    log.write_text("\n".join(test_lines) + "\n", encoding="utf-8")
    out = work / "out.jsonl"
    assert (
        main(["detect", "--bundle", str(serve_bundle), str(log), "--output", str(out), "-q"]) == 0
    )
    return [json.loads(line) for line in out.read_text().splitlines()]


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


def test_health_ready_and_openapi(fame_service: Service) -> None:
    assert httpx.get(fame_service.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(fame_service.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    spec = httpx.get(fame_service.url + "/openapi.json").json()
    body = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-ndjson", "text/plain"}


def test_results_equal_fame_detect(
    fame_service: Service, test_lines: list[str], detect_cli: list[dict]
) -> None:
    """The same lines as plain text, a JSON array or NDJSON get ``fame detect``'s answer.

    Sent as one request each, so that they are scored in the batches ``fame detect`` makes
    of the same file (batch composition can move scores of the ONNX engine slightly).
    """
    objects = "\n".join(json.dumps({"message": line, "source": "node-7"}) for line in test_lines)
    with fame_service.client() as client:
        plain = client.post(
            "/v1/detect",
            content="\n".join(test_lines) + "\n",
            headers={"Content-Type": "text/plain"},
        )
        as_json = client.post("/v1/detect", json=test_lines)
        ndjson = client.post(
            "/v1/detect",
            content=objects.encode(),
            headers={"Content-Type": "application/x-ndjson", "Accept": "application/x-ndjson"},
        )
    assert plain.status_code == as_json.status_code == ndjson.status_code == 200
    assert plain.json() == detect_cli
    assert as_json.json() == detect_cli
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in ndjson.text.splitlines()] == detect_cli
    assert any(r["anomaly"] for r in detect_cli) and any(r["novel"] for r in detect_cli)


def test_empty_batches(fame_service: Service) -> None:
    with fame_service.client() as client:
        for content, kind in (
            (b"", "application/json"),
            (b"[]", "application/json"),
            (b"", "text/plain"),
        ):
            answer = client.post("/v1/detect", content=content, headers={"Content-Type": kind})
            assert (answer.status_code, answer.json()) == (200, [])


@pytest.mark.parametrize(
    ("content", "kind", "status", "says"),
    [
        (b'["unterminated', "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "application/json", 422, "item 0"),
        (b'{"msg": "no message"}', "application/json", 422, "'message'"),
        (b'["\xff\xfe"]', "application/json", 400, "UTF-8"),
        (b"<log/>", "application/xml", 415, "text/plain"),
        (b"x\n" * 1001, "text/plain", 413, "1001 lines"),
        (b"x" * 400_001, "text/plain", 413, "limit of 400000"),
        (b"y" * 5001 + b"\n", "text/plain", 422, "more than 5000 characters"),
    ],
)
def test_bad_requests_say_what_is_wrong(
    fame_service: Service, content: bytes, kind: str, status: int, says: str
) -> None:
    with fame_service.client() as client:
        answer = client.post("/v1/detect", content=content, headers={"Content-Type": kind})
    assert answer.status_code == status
    assert says in answer.json()["error"]


def test_non_utf8_lines_are_scored(fame_service: Service, test_lines: list[str]) -> None:
    raw = test_lines[0].encode() + b" \xff\xfe\xc3(\n" + b"\x00\x01 binary\n"
    with fame_service.client() as client:
        answer = client.post("/v1/detect", content=raw, headers={"Content-Type": "text/plain"})
    assert answer.status_code == 200
    assert [r["line"] for r in answer.json()] == [1, 2]


def test_wrong_or_missing_token(fame_service: Service) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = httpx.post(fame_service.url + "/v1/detect", json=["x"], headers=headers)
        assert answer.status_code == 401
        assert "Bearer" in answer.json()["error"]
        assert answer.headers["www-authenticate"].startswith("Bearer")
    for path in ("/metrics", "/v1/anomalies"):
        assert httpx.get(fame_service.url + path).status_code == 401
    assert httpx.post(fame_service.url + "/admin/reload").status_code == 401
    assert httpx.get(fame_service.url + "/", follow_redirects=False).status_code == 303
    assert TOKEN not in fame_service.log_text()


def test_anomalies_are_stored_metrics_and_webhook(
    fame_service: Service, test_lines: list[str], detect_cli: list[dict], webhook: Any
) -> None:
    with fame_service.client() as client:
        answer = client.post("/v1/detect", params={"source": "stored-test"}, json=test_lines).json()
        expected = [r for r in answer if r["anomaly"]]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the writer stores in the background
            stored = client.get("/v1/anomalies", params={"limit": 1000}).json()["detections"]
            mine = [s for s in stored if s["source"] == "stored-test"]
            if len(mine) >= len(expected):
                break
            time.sleep(0.2)
        metrics = client.get("/metrics").text
    assert len(mine) == len(expected) > 0
    first = min(mine, key=lambda s: s["line_no"])
    assert first["line"] == test_lines[expected[0]["line"] - 1]
    assert first["template"] == expected[0]["template"]
    assert first["score"] == pytest.approx(expected[0]["score"], abs=1e-6)
    # Metrics: lines, anomalies per domain, latency, cache, queue.
    assert _metric(metrics, "fame_lines_total") >= len(test_lines)
    assert "fame_anomalies_total{domain=" in metrics
    assert "fame_detect_latency_seconds_bucket" in metrics
    assert _metric(metrics, "fame_cache_hit_ratio") > 0  # the test region was posted before
    assert _metric(metrics, "fame_queue_depth") == 0
    # The webhook: the domain with the most anomalies passed the threshold of 3.
    bodies = webhook.wait(1, timeout=60)
    assert bodies and bodies[0]["version"] == "4" and bodies[0]["status"] == "firing"
    domains = [b["alerts"][0]["labels"]["domain"] for b in bodies]
    assert len(domains) == len(set(domains))  # one alert per domain within the cooldown
    assert "secret-path" not in fame_service.log_text()


def test_admin_reload_keeps_answering(fame_service: Service, test_lines: list[str]) -> None:
    failures: list[int] = []
    stop = threading.Event()

    def post_lines() -> None:
        with fame_service.client() as client:
            while not stop.is_set():
                answer = client.post("/v1/detect", json=test_lines[:20])
                if answer.status_code != 200 or len(answer.json()) != 20:
                    failures.append(answer.status_code)

    poster = threading.Thread(target=post_lines)
    poster.start()
    try:
        with fame_service.client() as client:
            reloaded = client.post("/admin/reload")
            bad = client.post("/admin/reload", json={"bundle": "/no/such/bundle"})
            fame_service.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 300
            reloads = 0.0
            while time.monotonic() < deadline:
                metrics = client.get("/metrics").text
                reloads = _metric(metrics, 'fame_reloads_total{result="ok"}')
                if reloads >= 3:  # start, admin endpoint, SIGHUP
                    break
                time.sleep(0.5)
    finally:
        stop.set()
        poster.join()
    assert reloaded.status_code == 200 and reloaded.json()["bundle"] == str(fame_service.bundle)
    assert bad.status_code == 422 and "/no/such/bundle" in bad.json()["error"]
    assert reloads >= 3
    assert failures == []


def test_non_loopback_needs_a_token(serve_bundle: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FAME_SERVE_TOKEN"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fame.cli",
            "serve",
            "--bundle",
            str(serve_bundle),
            "--host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2
    assert "FAME_SERVE_TOKEN" in done.stderr and "127.0.0.1" in done.stderr


def test_graceful_shutdown_answers_and_stores(
    serve_bundle: Path, test_lines: list[str], tmp_path: Path
) -> None:
    """SIGTERM while requests wait: every accepted one is answered and its anomalies stored.

    Runs on PostgreSQL where one is available (required in CI), else on SQLite.
    """
    url = None
    if postgres_available() is None:
        url = database_url(POSTGRES_URL, tmp_path)
    elif REQUIRE_SERVE:
        pytest.fail(f"FAME_REQUIRE_SERVE=1 but {postgres_available()}")
    service = start_service(serve_bundle, tmp_path, "--cache-size", "0", database_url=url)
    source = f"shutdown-{time.time_ns()}"
    answers: list[httpx.Response] = []

    def post(chunk: list[str]) -> None:
        with service.client() as client:
            answers.append(client.post("/v1/detect", params={"source": source}, json=chunk))

    threads = [threading.Thread(target=post, args=(test_lines,)) for _ in range(4)]
    for t in threads:
        t.start()
    with service.client() as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until all four are accepted and some still wait
            metrics = client.get("/metrics").text
            queued = _metric(metrics, "fame_queue_depth")
            if queued and queued + _metric(metrics, "fame_lines_total") >= 4 * len(test_lines):
                break
            time.sleep(0.05)
    assert service.stop(signal.SIGTERM, timeout=300) == 0
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200] * 4
    assert all(len(a.json()) == len(test_lines) for a in answers)
    anomalies = sum(r["anomaly"] for a in answers for r in a.json())
    store = DetectionStore(service.database_url)
    try:
        stored = [r for r in store.recent(limit=10_000) if r.source == source]
    finally:
        store.close()
    assert len(stored) == anomalies > 0
    assert "service stopped" in service.log_text()
