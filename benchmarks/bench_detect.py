"""Benchmark: detection speed, memory, latency and int8 accuracy on the BGL sample's test region.

Needs a bundle trained on the offline region (``fame evaluate ... --out RUN`` writes
``RUN/bundle``). Every measurement runs in a fresh child process, so peak memory is that
of detection alone. What it measures (issue 4):

- end to end (reading, parsing, routing, experts, JSON output) on the test region replayed
  as a stream, cache on, for the onnx engine in int8 and fp32 and for the torch engine;
- cache off on lines that are all distinct (one line per distinct model-visible text);
- throughput against the share of repeated lines (0%, 50%, 90%), cache on;
- the paper's architecture as written (``--engine reference``: a full fp32 model per stage,
  one line at a time, no cache) on the test region (or its first ``--reference-lines``
  lines), and whether its verdicts equal the onnx fp32 engine's on the same lines;
- latency from a line's arrival to its result at 1,000 lines/s offered to ``fame detect -``;
- F1 of int8 against fp32 (``fame evaluate --bundle``, the same replay as the results).

    .venv/bin/python benchmarks/bench_detect.py runs/k100 --out benchmarks/results/detect_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOG = ROOT.parent / "shared" / "data" / "bgl" / "bgl_sample.log"
PYTHON = sys.executable

# Runs in the child: load a bundle, replay a file through the CLI's detection loop.
CHILD = r"""
import json, resource, sys, time
from fame.config import Settings
from fame.detector import Detector
from fame.follow import run_detection_loop
from fame.logs import ReadStats, read_records

bundle, path, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
settings = Settings.from_dict(options)
t0 = time.perf_counter()
detector = Detector.from_settings(bundle, settings)
loaded = time.perf_counter() - t0
stats = ReadStats()
records = read_records(path, detector.format, stats=stats)
sink = open(sys.argv[4], "w") if len(sys.argv) > 4 else open("/dev/null", "w")
t1 = time.perf_counter()
loop = run_detection_loop(detector, records, sink, batch_size=settings.batch_size,
                          flush_ms=settings.flush_ms)
seconds = time.perf_counter() - t1
sink.close()
print(json.dumps({
    "lines": loop.lines, "anomalies": loop.anomalies, "load_seconds": loaded,
    "detect_seconds": seconds, "lines_per_s": loop.lines / seconds,
    "lines_per_s_with_load": loop.lines / (seconds + loaded),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "cache_hits": detector.cache_hits, "cache_misses": detector.cache_misses,
    "engine": detector.backend.name,
}))
"""


def run_child(bundle: Path, path: Path, options: dict[str, Any], sink: Path | None = None) -> Any:
    """Detection in a fresh process; returns its figures."""
    cmd = [PYTHON, "-c", CHILD, str(bundle), str(path), json.dumps(options)]
    if sink is not None:
        cmd.append(str(sink))
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def model_text(line: str) -> str:
    """What the BGL models see of a raw line: Component, Level and Content."""
    parts = line.rstrip("\n").split(" ", 9)
    return " ".join(parts[7:]) if len(parts) >= 10 else line


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines))
    return path


def latency_run(
    bundle: Path, lines: list[str], rate: float, options: dict[str, str]
) -> dict[str, Any]:
    """Offer ``lines`` to ``fame detect -`` at ``rate`` lines/s; arrival-to-result latency."""
    cmd = [PYTHON, "-m", "fame.cli", "detect", "--bundle", str(bundle), "-", "--quiet"]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", value]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdin is not None and proc.stdout is not None
    # Warm up: one line, wait for its result, so model loading is not counted.
    proc.stdin.write(lines[0])
    proc.stdin.flush()
    proc.stdout.readline()
    sent: list[float] = []
    received: list[float] = []

    def read() -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            received.append(time.perf_counter())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.perf_counter()
    for i, line in enumerate(lines):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent.append(time.perf_counter())
        proc.stdin.write(line)
        if i % 10 == 9:
            proc.stdin.flush()
    proc.stdin.flush()
    proc.stdin.close()
    reader.join(timeout=120)
    proc.wait(timeout=60)
    n = min(len(sent), len(received))
    latencies = sorted(received[i] - sent[i] for i in range(n))

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return {
        "offered_lines_per_s": rate,
        "lines": len(lines),
        "results": len(received),
        "p50_ms": round(pct(0.50) * 1000, 1),
        "p99_ms": round(pct(0.99) * 1000, 1),
        "max_ms": round((latencies[-1] if latencies else 0.0) * 1000, 1),
    }


def evaluate_f1(run_dir: Path, log: Path, work: Path, precision: str) -> dict[str, Any]:
    """F1 of the test region with the bundle of ``run_dir`` at one precision."""
    out = work / f"eval-{precision}"
    cmd = [
        PYTHON,
        "-m",
        "fame.cli",
        "evaluate",
        str(log),
        "--format",
        "bgl",
        "--test-fraction",
        "0.15",
        "--bundle",
        str(run_dir / "bundle"),
        "--out",
        str(out),
        "--precision",
        precision,
        "--quiet",
    ]
    subprocess.run(cmd, check=True)
    m = json.loads((out / "metrics.json").read_text())
    keys = ("precision", "recall", "f1", "auroc", "tp", "fp", "fn", "tn")
    return {k: m[k] for k in keys if k in m}


def verdicts(path: Path) -> list[bool]:
    return [json.loads(line)["anomaly"] for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a fame evaluate output folder (has bundle/)")
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument(
        "--reference-lines",
        type=int,
        default=0,
        help="test lines for the per-line reference run (0: the whole test region, about "
        "2 minutes here; it is slow)",
    )
    parser.add_argument("--skip-f1", action="store_true", help="skip the int8/fp32 F1 runs")
    args = parser.parse_args()

    bundle = args.run / "bundle"
    lines = args.log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    test = lines[int(len(lines) * (1.0 - args.test_fraction)) :]
    seen: set[str] = set()
    distinct = []
    for line in test:
        text = model_text(line)
        if text not in seen:
            seen.add(text)
            distinct.append(line)
    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m_before": os.getloadavg()[0],
        },
        "log": str(args.log),
        "test_lines": len(test),
        "distinct_model_texts": len(distinct),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        test_file = write_lines(work / "test.log", test)
        distinct_file = write_lines(work / "distinct.log", distinct)
        stream: dict[str, Any] = {}
        for name, options in {
            "onnx_int8": {"engine": "onnx", "precision": "int8"},
            "onnx_fp32": {"engine": "onnx", "precision": "fp32"},
            "torch_fp32": {"engine": "torch"},
        }.items():
            on = run_child(bundle, test_file, options)
            off = run_child(bundle, distinct_file, {**options, "cache_size": 0})
            stream[name] = {"test_region_cache_on": on, "all_distinct_cache_off": off}
            print(name, round(on["lines_per_s"]), round(off["lines_per_s"]), file=sys.stderr)
        figures["stream"] = stream

        # Throughput against the share of repeated lines (cache on), on the distinct pool.
        rng = random.Random(0)
        n = min(len(distinct), 3000)
        repeats: dict[str, Any] = {}
        for share in (0.0, 0.5, 0.9):
            fresh = distinct[: max(1, round(n * (1 - share)))]
            mix = list(fresh)
            while len(mix) < n:
                mix.append(rng.choice(fresh))
            rng.shuffle(mix)
            path = write_lines(work / f"repeat-{share}.log", mix)
            for name, options in {
                "int8": {"precision": "int8"},
                "fp32": {"precision": "fp32"},
            }.items():
                r = run_child(bundle, path, options)
                repeats.setdefault(f"{int(share * 100)}%", {})[name] = {
                    "lines": r["lines"],
                    "lines_per_s": round(r["lines_per_s"], 1),
                }
        figures["repeated_share"] = repeats

        # The paper's architecture as written, on a slice; verdicts against onnx fp32.
        slice_file = write_lines(work / "slice.log", test[: args.reference_lines or None])
        ref_out, eng_out = work / "ref.jsonl", work / "eng.jsonl"
        ref = run_child(
            bundle, slice_file, {"engine": "reference", "cache_size": 0, "batch_size": 1}, ref_out
        )
        eng = run_child(bundle, slice_file, {"engine": "onnx", "precision": "fp32"}, eng_out)
        same = sum(a == b for a, b in zip(verdicts(ref_out), verdicts(eng_out), strict=True))
        figures["reference"] = {
            "lines": ref["lines"],
            "lines_per_s": round(ref["lines_per_s"], 2),
            "identical_verdicts_vs_onnx_fp32": same,
            "of": ref["lines"],
            "engine_on_same_slice_lines_per_s": round(eng["lines_per_s"], 1),
        }
        base = ref["lines_per_s"]
        figures["speedup_vs_reference"] = {
            f"{name}_{kind}": round(stream[name][kind]["lines_per_s"] / base, 1)
            for name in stream
            for kind in stream[name]
        }

        # Latency at 1,000 lines/s offered, for each precision.
        figures["latency"] = {
            p: latency_run(bundle, test, 1000.0, {"precision": p}) for p in ("int8", "fp32")
        }
        if not args.skip_f1:
            figures["f1"] = {p: evaluate_f1(args.run, args.log, work, p) for p in ("fp32", "int8")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(figures), encoding="utf-8")
    print(json.dumps(figures, indent=2))


def render(f: dict[str, Any]) -> str:
    """The README's tables, from the figures alone."""
    out = [
        "| engine | test region, cache on (lines/s) | all distinct, cache off (lines/s) "
        "| peak memory (MiB) | x reference |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in (
        ("onnx_int8", "onnx int8 (default)"),
        ("onnx_fp32", "onnx fp32"),
        ("torch_fp32", "torch fp32, batched"),
    ):
        on = f["stream"][name]["test_region_cache_on"]
        off = f["stream"][name]["all_distinct_cache_off"]
        peak = max(on["peak_rss_mb"], off["peak_rss_mb"])
        speedup = f["speedup_vs_reference"][f"{name}_test_region_cache_on"]
        out.append(
            f"| {label} | {on['lines_per_s']:,.0f} | {off['lines_per_s']:,.0f} "
            f"| {peak:,.0f} | {speedup} |"
        )
    ref = f["reference"]
    out.append(
        f"| reference: the paper's architecture (full fp32 model per stage, one line at a "
        f"time, no cache; {ref['lines']} lines) | {ref['lines_per_s']:,.1f} | | | 1 |"
    )
    out += [
        "",
        f"Reference and onnx fp32 verdicts identical on {ref['identical_verdicts_vs_onnx_fp32']}"
        f" of {ref['of']} lines.",
        "",
        "| repeated lines | int8 lines/s | fp32 lines/s |",
        "|---:|---:|---:|",
    ]
    for share, row in f["repeated_share"].items():
        out.append(
            f"| {share} | {row['int8']['lines_per_s']:,.0f} | {row['fp32']['lines_per_s']:,.0f} |"
        )
    out += [
        "",
        "| precision | latency p50 at 1,000 lines/s | p99 | max |",
        "|---|---:|---:|---:|",
    ]
    for p, row in f["latency"].items():
        out.append(
            f"| {p} | {row['p50_ms']:,.0f} ms | {row['p99_ms']:,.0f} ms | {row['max_ms']:,.0f} ms |"
        )
    if "f1" in f:
        out += ["", "| precision | P | R | F1 | AUROC |", "|---|---:|---:|---:|---:|"]
        for p, m in f["f1"].items():
            out.append(
                f"| {p} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.4f} "
                f"| {m['auroc']:.4f} |"
            )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
