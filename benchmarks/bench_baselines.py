"""Baselines of the paper (IV-B) on the same split and K-shot labels as ``fame evaluate``.

Run from the checkout (writes the figures to a JSON file)::

    .venv/bin/python benchmarks/bench_baselines.py --out benchmarks/results/bl.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fame.config import Settings
from fame.evaluation.baselines import BASELINES, run_baseline
from fame.setup import OfflineData, read_offline

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOG = ROOT.parent / "shared" / "data" / "bgl" / "bgl_sample.log"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", default=str(DEFAULT_LOG))
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    data = read_offline([args.log], Settings())
    n_offline = int(len(data) * (1.0 - args.test_fraction))
    offline = OfflineData(
        data.contents[:n_offline], data.texts[:n_offline], data.labels[:n_offline]
    )
    rows = []
    for name in BASELINES:
        result = run_baseline(
            name,
            offline,
            data.texts[n_offline:],
            data.contents[n_offline:],
            data.labels[n_offline:],
            k=args.k,
            seed=args.seed,
        )
        rows.append(dataclasses.asdict(result))
        print(f"{name:<14} P {result.precision:.3f} R {result.recall:.3f} F1 {result.f1:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"log": args.log, "k": args.k, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
