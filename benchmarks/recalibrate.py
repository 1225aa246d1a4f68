"""Recompute a bundle's thresholds with other calibration settings, without retraining.

Calibration (III-E) only needs the heads' scores on the K-shot calibration lines, which the
bundle holds; this writes a copy of the bundle with a new ``calibration.json`` so that a
calibration choice can be compared on the same trained models:

    .venv/bin/python benchmarks/recalibrate.py runs/bench_k100/bundle \\
        --threshold-tie-break highest --out runs/bench_k100_highest/bundle
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from fame import bundle as bundle_io
from fame.config import Settings
from fame.detector import Detector
from fame.models.training import StateCache
from fame.sampling import KShotSample
from fame.setup import _calibrate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--threshold-tie-break", choices=("middle", "highest"), required=True)
    parser.add_argument("--out", required=True, help="directory for the recalibrated copy")
    args = parser.parse_args()

    source = Path(args.bundle)
    detector = Detector.load(source)
    settings = Settings.from_dict(
        {
            **bundle_io.read_json(source / "settings.json"),
            "threshold_tie_break": args.threshold_tie_break,
        }
    )
    sample = KShotSample.from_json(bundle_io.read_json(source / "kshot.json"))
    states = StateCache(detector.trunk, detector.tokenizer, detector.max_tokens)
    router_states = (
        states
        if detector.router_trunk is detector.trunk
        else StateCache(detector.router_trunk, detector.router_tokenizer, detector.max_tokens)
    )
    calibration = _calibrate(
        sample,
        detector.partition,
        detector.heads,
        states,
        router_states,
        detector.routing,
        settings,
    )

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    bundle_io.write_json(out / "calibration.json", calibration)
    bundle_io.write_json(out / "settings.json", settings.to_dict())
    manifest = bundle_io.read_json(source / "manifest.json")
    bundle_io.write_manifest(
        out, {**manifest["provenance"], "recalibrated_from": str(source), **vars(args)}
    )
    print(json.dumps({d: v["threshold"] for d, v in calibration["experts"].items()}, indent=2))


if __name__ == "__main__":
    main()
