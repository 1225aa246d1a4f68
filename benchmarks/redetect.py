"""Re-run detection of an earlier ``fame evaluate`` run with other detection settings.

Setup is the expensive half of an evaluation; detection-time choices (routing of known
templates, cache) can be compared on the same bundle and the same test region:

    .venv/bin/python benchmarks/redetect.py runs/sample_k100 \\
        --log ../shared/data/bgl/bgl_sample.log --no-route-known-templates \\
        --out runs/sample_k100/metrics_router_only.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fame.detector import Detector
from fame.evaluation.metrics import Evaluation
from fame.logs import count_lines, read_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="directory written by fame evaluate (holds bundle/)")
    parser.add_argument("--log", required=True, help="the log that run evaluated")
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument(
        "--route-known-templates", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    detector = Detector.load(
        Path(args.run) / "bundle", route_known_templates=args.route_known_templates
    )
    n_offline = int(count_lines(args.log) * (1.0 - args.test_fraction))
    records = [r for r in read_records(args.log, detector.format) if r.line_no > n_offline]
    evaluation = Evaluation()
    start = time.perf_counter()
    for record, detection in zip(records, detector.detect_records(records), strict=True):
        evaluation.add(detection, record.label)
    seconds = time.perf_counter() - start
    metrics = {
        **evaluation.summary(),
        "route_known_templates": args.route_known_templates,
        "detect_lines_per_second": round(len(records) / seconds, 1),
    }
    Path(args.out).write_text(json.dumps(metrics, indent=2) + "\n")
    keys = ("precision", "recall", "f1", "auroc", "tp", "fp", "fn", "unseen_recall")
    print(json.dumps({k: metrics[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
