"""Load test of ``fame serve`` on loopback: lines/s and request latency, written to JSON.

Starts the service in its own process (model loading not timed), then several clients post
batches of real log lines, in the log's order, for a fixed number of lines; each request's
latency is measured from send to answer. A benchmark, not a test: it asserts nothing.

    .venv/bin/python benchmarks/bench_serve.py --bundle runs/x/bundle \\
        --log ../shared/data/bgl/bgl_sample.log --out benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

TOKEN = "bench-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(bundle: str, work: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = dict(os.environ, FAME_SERVE_TOKEN=TOKEN)
    command = [
        sys.executable,
        "-m",
        "fame.cli",
        "serve",
        "--bundle",
        bundle,
        "--port",
        str(port),
        "--database-url",
        f"sqlite:///{work / 'bench.sqlite'}",
        "-q",
        *extra,
    ]
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"fame serve exited: {(work / 'serve.log').read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("fame serve did not become ready")


def _load(url: str, batches: list[list[str]], clients: int) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    next_batch = iter(range(len(batches)))

    def client() -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300
        ) as http:
            while True:
                with lock:
                    index = next(next_batch, None)
                if index is None:
                    return
                started = time.perf_counter()
                answer = http.post("/v1/detect", json=batches[index])
                elapsed = time.perf_counter() - started
                with lock:
                    if answer.status_code == 200 and len(answer.json()) == len(batches[index]):
                        latencies.append(elapsed)
                    else:
                        errors.append(answer.status_code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--log", required=True, help="log file whose lines are posted, in order")
    parser.add_argument("--out", required=True, help="JSON file of the figures")
    parser.add_argument("--lines", type=int, default=10_000, help="lines posted in all")
    parser.add_argument("--skip", type=int, default=0, help="start at this line of the log")
    parser.add_argument("--batch", type=int, default=100, help="lines per request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="extra option for fame serve"
    )
    args = parser.parse_args()

    with Path(args.log).open(encoding="utf-8", errors="replace") as handle:
        lines = [line.rstrip("\n") for line in itertools.islice(handle, args.skip + args.lines)]
    lines = lines[args.skip :]
    batches = [lines[i : i + args.batch] for i in range(0, len(lines), args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        process, url = _start(args.bundle, Path(tmp), args.serve_arg)
        try:
            load_before = os.getloadavg()
            latencies, errors, seconds = _load(url, batches, args.clients)
            load_after = os.getloadavg()
            metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=300)
    ms = np.array(latencies) * 1000.0
    hit_ratio = next(
        (float(m.split()[1]) for m in metrics.splitlines() if m.startswith("fame_cache_hit_ratio")),
        None,
    )
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "bundle": args.bundle,
        "log": args.log,
        "lines": len(lines),
        "batch_lines": args.batch,
        "clients": args.clients,
        "requests_ok": len(latencies),
        "errors": errors,
        "seconds": round(seconds, 3),
        "lines_per_s": round(len(lines) / seconds, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p95": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
            "p99": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "max": round(float(ms.max()), 1) if len(ms) else None,
        },
        "cache_hit_ratio": hit_ratio,
        "serve_args": args.serve_arg,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            # Other work on the machine shows here: the figures are only as good as it was idle.
            "load_avg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "note": "loopback; service and clients share the machine's CPUs",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
