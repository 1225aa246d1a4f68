"""Benchmark: ``fame evaluate`` on the real BGL sample at K=100, then ``fame detect`` alone.

Writes one JSON file with the metrics, setup wall time and peak memory, and detection
lines/s and peak memory (cache on, and cache off), each measured in its own process.

    .venv/bin/python benchmarks/bench_evaluate.py --out benchmarks/results/bgl_sample_k100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOG = ROOT.parent / "shared" / "data" / "bgl" / "bgl_sample.log"
FAME = [sys.executable, "-m", "fame.cli"]


def run_measured(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd`` in a fresh wrapper process; return its wall time and peak RSS (MiB)."""
    wrapper = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "rc = subprocess.run(sys.argv[1:]).returncode\n"
        "s = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': rc, 'seconds': s, 'peak_rss_mb': rss}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], check=True, stdout=subprocess.PIPE, text=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"command failed with exit code {result['rc']}: {' '.join(cmd)}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", default=str(DEFAULT_LOG))
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    parser.add_argument("--work", default=None, help="directory for bundle and detections")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="extra fame evaluate option, e.g. --setting proposer=llm (repeatable)",
    )
    parser.add_argument(
        "--skip-detect", action="store_true", help="skip the separate detection-speed runs"
    )
    args = parser.parse_args()
    extra = []
    for item in args.setting:
        name, _, value = item.partition("=")
        extra += [f"--{name.replace('_', '-')}", value] if value else [f"--{name}"]

    work = Path(args.work or tempfile.mkdtemp(prefix="fame-bench-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    evaluate = run_measured(
        [*FAME, "evaluate", args.log, "--format", "bgl", "--k", str(args.k),
         "--test-fraction", str(args.test_fraction), "--out", str(work), "--quiet", *extra]
    )  # fmt: skip
    metrics = json.loads((work / "metrics.json").read_text())

    # Detection alone, in its own process, on the test region replayed from a file.
    lines = Path(args.log).read_bytes().splitlines(keepends=True)
    n_offline = int(len(lines) * (1.0 - args.test_fraction))
    test_file = work / "test_region.log"
    test_file.write_bytes(b"".join(lines[n_offline:]))
    n_test = len(lines) - n_offline
    detect = {}
    runs = () if args.skip_detect else (("cache_on", "100000"), ("cache_off", "0"))
    for name, cache in runs:
        m = run_measured(
            [*FAME, "detect", "--bundle", str(work / "bundle"), str(test_file),
             "--output", str(work / f"detect_{name}.jsonl"), "--cache-size", cache, "--quiet"]
        )  # fmt: skip
        detect[name] = {
            "seconds": round(m["seconds"], 2),
            "lines_per_second": round(n_test / m["seconds"], 1),
            "peak_rss_mb": round(m["peak_rss_mb"]),
        }

    figures = {
        "command": " ".join(sys.argv),
        "started": started,
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "log": args.log,
        "k": args.k,
        "metrics": {
            k: metrics[k]
            for k in (
                "precision",
                "recall",
                "f1",
                "auroc",
                "tp",
                "fp",
                "fn",
                "tn",
                "labeled_lines",
                "anomalies",
                "unseen_anomaly_share",
                "unseen_recall",
            )
        },
        "by_route": metrics["by_route"],
        "setup": {
            "seconds": metrics["setup_seconds"],
            "stages": metrics["setup_stages"],
            "evaluate_process_peak_rss_mb": round(evaluate["peak_rss_mb"]),
        },
        "detect": {"test_lines": n_test, **detect},
        "settings": extra,
        "partition": _partition_summary(work / "bundle"),
        # The novelty path's cross-validated figures on held-out offline templates.
        "novelty": json.loads((work / "bundle" / "report.json").read_text()).get("novelty"),
        "work_dir": str(work),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def _partition_summary(bundle: Path) -> dict[str, object]:
    """The proposed and certified domains, and the proposer's own figures (LLM: calls, time)."""
    proposed = json.loads((bundle / "partition.json").read_text())
    report = json.loads((bundle / "report.json").read_text())
    details = {k: v for k, v in proposed.get("details", {}).items() if k != "repairs"}
    audit = bundle / "llm_audit.json"
    if audit.exists():
        calls = [c for c in json.loads(audit.read_text())["calls"] if not c["cached"]]
        tokens = [c["usage"].get("prompt_tokens", 0) for c in calls]
        details["prompt_tokens"] = sum(tokens)
        details["largest_prompt_tokens"] = max(tokens, default=0)
        details["completion_tokens"] = sum(c["usage"].get("completion_tokens", 0) for c in calls)
    kinds = report["domains"]
    return {
        "proposer": proposed["proposer"],
        "proposed_domains": sorted(d for d in proposed["domains"] if d != "UNIVERSAL_NORMAL"),
        "certified": kinds,
        "pure_domains": sum(1 for k in kinds.values() if k == "pure_anomaly"),
        "mixed_domains": sum(1 for k in kinds.values() if k == "mixed"),
        "details": details,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
