"""``fame evaluate``: the paper's protocol (IV-A) on one labelled log.

The log is split chronologically: the first lines form the offline region that setup sees
(with its K-shot labels only), the last ``test_fraction`` of lines are detected as a stream
and compared with their labels. Nothing from the test region reaches setup.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from fame.config import Settings
from fame.detector import Detector
from fame.errors import InputError
from fame.evaluation.metrics import Evaluation
from fame.logs import LogRecord, ReadStats, count_lines, load_label_csv, read_records
from fame.setup import OfflineData, build_bundle, make_format
from fame.stages import StageTimer, peak_rss_mb

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Metrics (as written to ``metrics.json``) and where the outputs are."""

    metrics: dict[str, Any]
    out: Path


def run_evaluate(
    log: str | Path,
    settings: Settings,
    out: str | Path,
    *,
    test_fraction: float = 0.15,
    progress: bool = True,
) -> EvaluationResult:
    """Set up on the offline region of ``log`` and detect on its test region.

    Writes ``OUT/bundle/``, ``OUT/detections.jsonl`` (one result per test line, with its
    label) and ``OUT/metrics.json``.

    Raises:
        InputError: the file is missing, the split leaves a region empty, or the test
            region has no labels.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"--test-fraction must lie strictly between 0 and 1, got {test_fraction}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = count_lines(log)
    n_offline = int(total * (1.0 - test_fraction))
    if n_offline < 1 or n_offline >= total:
        raise InputError(
            f"{log} has {total} lines: a test fraction of {test_fraction} leaves an empty "
            "offline or test region; use a longer log or another --test-fraction"
        )

    fmt = make_format(settings)
    labels = load_label_csv(settings.labels_csv) if settings.labels_csv else None
    stats = ReadStats()
    records = read_records(
        log, fmt, labels=labels, max_line_chars=settings.max_line_chars, stats=stats
    )

    # Offline region -> bundle.
    timer = StageTimer()
    data = OfflineData()
    with timer.stage("read"):
        for record in islice(records, n_offline):
            data.append(record)
    start = time.perf_counter()
    setup = build_bundle(
        data,
        settings,
        out_dir / "bundle",
        progress=progress,
        timer=timer,
        provenance={"evaluate": str(log), "offline_lines": n_offline},
    )
    setup_seconds = time.perf_counter() - start + timer.stages["read"]["seconds"]
    setup_peak = peak_rss_mb()
    del data

    # Test region, streamed through the detector in time order.
    detector = Detector.load(
        setup.bundle,
        cache_size=settings.cache_size,
        route_known_templates=settings.route_known_templates,
    )
    evaluation = Evaluation()
    pending: deque[bool | None] = deque()

    def labelled(stream: Iterator[LogRecord]) -> Iterator[LogRecord]:
        for record in stream:
            pending.append(record.label)
            yield record

    start = time.perf_counter()
    n_test = 0
    with (out_dir / "detections.jsonl").open("w", encoding="utf-8") as sink:
        for detection in detector.detect_records(labelled(records), batch_size=settings.batch_size):
            label = pending.popleft()
            evaluation.add(detection, label)
            row = detection.to_json()
            row["label"] = label
            sink.write(json.dumps(row) + "\n")
            n_test += 1
    detect_seconds = time.perf_counter() - start
    stats.warn_summary(logger)
    if (
        evaluation.overall.tp
        + evaluation.overall.fn
        + evaluation.overall.tn
        + evaluation.overall.fp
        == 0
    ):
        raise InputError(
            f"the test region of {log} has no labelled lines: evaluation needs labels "
            "(inline in Loghub formats, or --labels-csv)"
        )

    metrics = {
        **evaluation.summary(),
        "labeled_lines": setup.sample.labeled_count,
        "offline_lines": n_offline,
        "test_lines": n_test,
        "k": settings.k,
        "templates": setup.report["templates"],
        "domains": setup.report["domains"],
        "setup_seconds": round(setup_seconds, 2),
        "setup_peak_rss_mb": round(setup_peak),
        "setup_stages": timer.stages,
        "detect_seconds": round(detect_seconds, 2),
        "detect_lines_per_second": round(n_test / detect_seconds, 1) if detect_seconds else None,
        "cache_hits": detector.cache_hits,
        "cache_misses": detector.cache_misses,
        "read": stats.to_json(),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return EvaluationResult(metrics=metrics, out=out_dir)


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """A readable summary of ``metrics.json`` for the terminal."""
    auroc = metrics.get("auroc")
    rows = [
        ("precision", f"{metrics['precision']:.4f}"),
        ("recall", f"{metrics['recall']:.4f}"),
        ("f1", f"{metrics['f1']:.4f}"),
        ("auroc", "n/a" if auroc is None else f"{auroc:.4f}"),
        (
            "tp / fp / fn / tn",
            f"{metrics['tp']} / {metrics['fp']} / {metrics['fn']} / {metrics['tn']}",
        ),
        ("labelled lines (K-shot)", str(metrics["labeled_lines"])),
        (
            "unseen-template anomalies",
            f"{metrics['unseen_anomaly_share']:.1%} of {metrics['anomalies']}",
        ),
        ("recall on them", f"{metrics['unseen_recall']:.4f}"),
        ("setup", f"{metrics['setup_seconds']:.0f} s, peak {metrics['setup_peak_rss_mb']} MiB"),
        ("detection", f"{metrics['detect_lines_per_second']} lines/s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {value}" for name, value in rows]
    by_route = metrics.get("by_route", {})
    if by_route:
        lines.append("  per route (precision / recall / f1, tp fp fn):")
        for route, m in by_route.items():
            lines.append(
                f"    {route:<18} {m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f}"
                f"  {m['tp']} {m['fp']} {m['fn']}"
            )
    return "\n".join(lines)
