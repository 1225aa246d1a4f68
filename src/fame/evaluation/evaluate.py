"""``fame evaluate``: the paper's protocol (IV-A) on one labelled log.

The log is split chronologically: the first lines form the offline region that setup sees
(with its K-shot labels only), the last ``test_fraction`` of lines are detected as a stream
and compared with their labels. Nothing from the test region reaches setup.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

from fame.config import Settings
from fame.detector import Detector
from fame.errors import InputError
from fame.evaluation.metrics import Evaluation
from fame.logs import LogRecord, ReadStats, count_lines, load_label_csv, read_records
from fame.setup import OfflineData, build_bundle, make_format
from fame.stages import StageTimer, peak_rss_mb
from fame.triage import build_triage

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
    bundle: str | Path | None = None,
) -> EvaluationResult:
    """Set up on the offline region of ``log`` and detect on its test region.

    Writes ``OUT/bundle/``, ``OUT/detections.jsonl`` (one result per test line, with its
    label) and ``OUT/metrics.json``. With ``bundle``, setup is skipped and that bundle (built
    by an earlier evaluation of the same log and split) detects: detection settings can then
    be compared on one bundle.

    The test region is replayed in time order in batches of ``batch_size`` lines. With
    triage on, the questions a batch raises are answered after that batch, so the first
    lines of every new template are judged before its verdict exists, as in production.

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

    # Offline region -> bundle (or an existing bundle of the same split).
    timer = StageTimer()
    if bundle is None:
        data = OfflineData(categorical_fields=fmt.categorical_fields)
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
        bundle = setup.bundle
        setup_info = {
            "labeled_lines": setup.sample.labeled_count,
            "templates": setup.report["templates"],
            "domains": setup.report["domains"],
            "setup_seconds": round(setup_seconds, 2),
            "setup_peak_rss_mb": round(setup_peak),
            "setup_stages": timer.stages,
        }
    else:
        setup_info = _bundle_info(Path(bundle), n_offline)
        for _ in islice(records, n_offline):
            pass

    # Test region, streamed through the detector in time order.
    triage = build_triage(bundle, settings, background=False) if settings.triage else None
    detector = Detector.from_settings(bundle, settings, triage=triage)
    with (out_dir / "detections.jsonl").open("w", encoding="utf-8") as sink:
        replay = replay_stream(detector, records, batch_size=settings.batch_size, sink=sink)
    evaluation, n_test, detect_seconds = replay.evaluation, replay.lines, replay.seconds
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
        **setup_info,
        "offline_lines": n_offline,
        "test_lines": n_test,
        "k": settings.k,
        "detection": {
            "route_known_templates": settings.route_known_templates,
            "novelty": detector.novelty is not None,
            "triage": triage is not None,
        },
        "triage": replay.triage,
        "detect_seconds": round(detect_seconds, 2),
        "detect_lines_per_second": round(n_test / detect_seconds, 1) if detect_seconds else None,
        "cache_hits": detector.cache_hits,
        "cache_misses": detector.cache_misses,
        "read": stats.to_json(),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return EvaluationResult(metrics=metrics, out=out_dir)


@dataclass
class Replay:
    """What :func:`replay_stream` measured."""

    evaluation: Evaluation
    lines: int
    seconds: float
    triage: dict[str, Any] | None


def replay_stream(
    detector: Detector,
    records: Iterable[LogRecord],
    *,
    batch_size: int,
    sink: TextIO | None = None,
) -> Replay:
    """Detect labelled records in time order, batch by batch, and score the results.

    With triage on the detector, its queued questions are answered between batches (on
    this thread, so the replay is repeatable), and their number and wall time are reported.
    """
    evaluation = Evaluation()
    triage = detector.triage
    lines = 0
    start = time.perf_counter()
    batch: list[LogRecord] = []

    def flush() -> None:
        nonlocal lines
        for record, detection in zip(batch, detector.detect_batch(batch), strict=True):
            evaluation.add(detection, record.label)
            if sink is not None:
                row = detection.to_json()
                row["label"] = record.label
                sink.write(json.dumps(row) + "\n")
            lines += 1
        batch.clear()
        if triage is not None:
            triage.process_pending()

    for record in records:
        batch.append(record)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    seconds = time.perf_counter() - start
    triage_info = None
    if triage is not None:
        every = triage.client.calls if triage.client is not None else []
        calls = [c for c in every if not c["purpose"].startswith("triage validation")]
        triage_info = {
            "trusted": triage.trusted,
            "validation": triage.state.validation,
            "new_templates": len(triage.state.templates),
            "verdicts": len(triage.state.verdicts),
            "anomalous_verdicts": sum(v.anomalous for v in triage.state.verdicts.values()),
            "llm_calls": sum(1 for c in calls if not c["cached"]),
            "llm_cached_answers": sum(1 for c in calls if c["cached"]),
            "llm_seconds": round(sum(c["seconds"] for c in calls if not c["cached"]), 1),
            "failures": triage.failures,
        }
    return Replay(evaluation, lines, seconds, triage_info)


def _bundle_info(bundle: Path, n_offline: int) -> dict[str, Any]:
    """Setup figures of an existing bundle, checked to come from the same split."""
    from fame import bundle as bundle_io

    bundle_io.check_bundle(bundle)
    manifest = bundle_io.read_json(bundle / "manifest.json")
    offline = manifest.get("provenance", manifest).get("offline_lines")
    if offline is not None and int(offline) != n_offline:
        raise InputError(
            f"bundle {bundle} was set up on {offline} offline lines, but this split has "
            f"{n_offline}; use the same log and --test-fraction, or drop --bundle"
        )
    report = bundle_io.read_json(bundle / "report.json")
    sample = bundle_io.read_json(bundle / "kshot.json")
    return {
        "labeled_lines": sample["labeled_count"],
        "templates": report["templates"],
        "domains": report["domains"],
        "setup_seconds": None,
        "setup_peak_rss_mb": None,
        "setup_stages": report.get("stages", {}),
        "bundle": str(bundle),
    }


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
        (
            "setup",
            "reused bundle"
            if metrics.get("setup_seconds") is None
            else f"{metrics['setup_seconds']:.0f} s, peak {metrics['setup_peak_rss_mb']} MiB",
        ),
        ("detection", f"{metrics['detect_lines_per_second']} lines/s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {value}" for name, value in rows]
    unseen = metrics.get("unseen_by_route", {})
    if unseen:
        lines.append("  unseen-template lines per mechanism (recall, tp fn / fp):")
        for route, m in unseen.items():
            lines.append(f"    {route:<18} {m['recall']:.3f}  {m['tp']} {m['fn']} / {m['fp']}")
    if metrics.get("triage"):
        t = metrics["triage"]
        lines.append(
            f"  triage: {t['llm_calls']} LLM calls ({t['llm_seconds']} s), "
            f"{t['verdicts']} verdicts on {t['new_templates']} new templates"
        )
    by_route = metrics.get("by_route", {})
    if by_route:
        lines.append("  per route (precision / recall / f1, tp fp fn):")
        for route, m in by_route.items():
            lines.append(
                f"    {route:<18} {m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f}"
                f"  {m['tp']} {m['fp']} {m['fn']}"
            )
    return "\n".join(lines)
