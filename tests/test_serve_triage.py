"""Novelty and triage in the service, wired as in ``fame detect`` (issue 6).

The service loads its bundle through the same settings: the novelty path is on by default
and ``--triage`` asks the configured LLM once per new template in the background. The LLM
is played by a scripted provider (``fame.llm.client_from_settings`` replaced), so this runs
offline and fast; the server is a real uvicorn on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")

import uvicorn  # noqa: E402

from fame.config import Settings  # noqa: E402
from fame.llm import RecordingClient  # noqa: E402
from fame.llm.providers import LLMResponse, Message  # noqa: E402
from fame.serve.app import create_app  # noqa: E402
from fame.serve.runtime import Runtime  # noqa: E402
from serve_harness import free_port  # noqa: E402

ANOMALOUS = '{"verdict": "anomalous", "domain": "tree network", "reason": "packet errors"}'


class Scripted:
    """Answers every question with one verdict."""

    name = "local"
    model = "scripted.gguf"
    remote = False

    def __init__(self) -> None:
        self.asked = 0
        self.release = threading.Event()  # the model answers only once this is set

    def complete(
        self, messages: Sequence[Message], *, schema: Mapping[str, Any] | None = None, **_: Any
    ) -> LLMResponse:
        self.asked += 1
        self.release.wait(timeout=120)
        return LLMResponse(ANOMALOUS, "local", self.model, seconds=0.0)


@pytest.fixture
def serving(
    serve_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Runtime, Scripted]]:
    model = Scripted()
    monkeypatch.setattr(
        "fame.llm.client_from_settings", lambda settings, **_: RecordingClient(model, None)
    )
    port = free_port()
    settings = Settings(
        port=port,
        triage=True,
        triage_min_precision=0.0,  # no offline validation of the scripted model
        triage_state=str(tmp_path / "triage.json"),
        database_url=f"sqlite:///{tmp_path / 'd.sqlite'}",
    )
    runtime = Runtime(settings, str(serve_bundle))
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    yield url, runtime, model
    server.should_exit = True
    thread.join(timeout=120)


def test_novel_lines_take_the_novelty_path_then_the_triage_verdict(
    serving: tuple[str, Runtime, Scripted], bgl_2k: Path
) -> None:
    url, runtime, model = serving
    lines = bgl_2k.read_text(encoding="utf-8").splitlines()[1700:]
    first = httpx.post(url + "/v1/detect", json=lines, timeout=300).json()
    novel = [i for i, r in enumerate(first) if r["novel"]]
    assert novel, "the test region has lines of never-seen templates"
    # Before a verdict exists, the calibrated novelty path decides (or the routing, when the
    # bundle disabled it); detection never waits on the model.
    assert "triage" not in {first[i]["route"] for i in novel}
    deadline = time.monotonic() + 60
    while not model.asked and time.monotonic() < deadline:  # asked in the background
        time.sleep(0.05)
    assert model.asked >= 1
    model.release.set()
    current = runtime.worker.current
    assert current is not None and current.triage is not None
    assert current.triage.wait_idle(timeout=120)
    again = httpx.post(url + "/v1/detect", json=[lines[i] for i in novel], timeout=300).json()
    assert {r["route"] for r in again} == {"triage"}
    assert {r["verdict_source"] for r in again} == {"llm"}
    assert all(r["anomaly"] and r["domain"] for r in again)
