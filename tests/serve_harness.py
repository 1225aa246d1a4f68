"""Helpers for the service tests: a real ``fame serve`` process, a webhook receiver, ports.

Used by ``tests/test_serve_*.py`` through the fixtures in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

TOKEN = "test-token-0123456789abcdef"
READY_TIMEOUT_S = 600.0  # model loading on a busy 2-core machine
POSTGRES_URL = os.environ.get(
    "FAME_TEST_POSTGRES_URL", "postgresql://fame:fame@127.0.0.1:5432/fame_test"
)
#: Set by .ci/run: PostgreSQL and Chromium tests must run there, not be skipped.
REQUIRE_SERVE = os.environ.get("FAME_REQUIRE_SERVE") == "1"
CHROMIUM = os.environ.get("FAME_TEST_CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A running ``fame serve`` process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    token: str | None
    database_url: str
    bundle: Path

    def headers(self, **extra: str) -> dict[str, str]:
        """Headers with the bearer token."""
        out = dict(extra)
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        return out

    def client(self, timeout: float = 120.0) -> httpx.Client:
        """A client with the token set."""
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=timeout)

    def log_text(self) -> str:
        """What the process wrote so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        """Signal the process and wait for it; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_service(
    bundle: Path,
    workdir: Path,
    *args: str,
    token: str | None = TOKEN,
    database_url: str | None = None,
    wait: bool = True,
) -> Service:
    """Start ``fame serve`` on a free loopback port and wait until it is ready."""
    port = free_port()
    db = database_url or f"sqlite:///{workdir / f'detections-{port}.sqlite'}"
    log = workdir / f"serve-{port}.log"
    env = dict(os.environ)
    env.pop("FAME_SERVE_TOKEN", None)
    if token:
        env["FAME_SERVE_TOKEN"] = token
    command = [
        sys.executable,
        "-m",
        "fame.cli",
        "serve",
        "--bundle",
        str(bundle),
        "--port",
        str(port),
        "--database-url",
        db,
        "--threads",
        "1",
        *args,
    ]
    handle = log.open("wb")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    service = Service(f"http://127.0.0.1:{port}", process, log, token, db, bundle)
    if wait:
        wait_ready(service)
    return service


def wait_ready(service: Service, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll ``/readyz`` until it answers 200; fail with the process log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise AssertionError(f"fame serve exited early:\n{service.log_text()}")
        try:
            if httpx.get(service.url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    service.stop(signal.SIGKILL)
    raise AssertionError(f"fame serve not ready after {timeout} s:\n{service.log_text()}")


@dataclass
class Receiver:
    """A local HTTP server that records the JSON bodies posted to it."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    received: threading.Event = field(default_factory=threading.Event)

    def wait(self, count: int = 1, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until ``count`` bodies arrived."""
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count and time.monotonic() < deadline:
            self.received.wait(0.2)
        return list(self.bodies)

    def close(self) -> None:
        """Stop the server."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def start_receiver(status: int = 200) -> Receiver:
    """Start a webhook receiver on a free loopback port."""
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            receiver.bodies.append(json.loads(body))
            receiver.received.set()
            self.send_response(status)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.server = server
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook/secret-path"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


def postgres_available(url: str = POSTGRES_URL) -> str | None:
    """None when PostgreSQL answers at ``url``, else the reason."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg not installed ({exc})"
    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {url}: {exc}"
