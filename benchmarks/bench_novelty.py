"""Benchmark: lines of never-seen templates, with and without the novelty path and triage.

On one bundle built by ``fame evaluate`` (the offline region of the log), the test region is
replayed in time order under five detection settings:

- ``paper routing``: the paper's design as written (gate and selector route every line);
- ``(a) partition routing``: known templates routed by the certified partition, new ones
  by the gate and selector (our default before the novelty path);
- ``(b) + novelty path``;
- ``(c) + LLM triage`` (no novelty path: lines before a verdict take the routing);
- ``(d) novelty path + LLM triage`` (the answers of (c) are reused from the answer cache);
- ``(c')`` and ``(d')``: as (c) and (d), but the model's verdicts are applied even when it
  failed its validation on offline templates (``--triage-min-precision 0``).

Writes a JSON file with every row's metrics and a Markdown table beside it::

    .venv/bin/python benchmarks/bench_novelty.py runs/bench_k100 \\
        --log ../shared/data/bgl/bgl_sample.log --out benchmarks/results/novelty_k100.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fame.config import Settings
from fame.evaluation.evaluate import run_evaluate

ROWS = [
    ("paper routing", {"route_known_templates": False, "novelty": False, "triage": False}),
    ("(a) partition routing", {"novelty": False, "triage": False}),
    ("(b) + novelty path", {"novelty": True, "triage": False}),
    ("(c) + LLM triage", {"novelty": False, "triage": True}),
    ("(d) novelty path + LLM triage", {"novelty": True, "triage": True}),
    (
        "(c') + LLM triage, verdicts applied unvalidated",
        {"novelty": False, "triage": True, "triage_min_precision": 0.0},
    ),
    (
        "(d') novelty path + LLM triage, unvalidated",
        {"novelty": True, "triage": True, "triage_min_precision": 0.0},
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="directory of an earlier fame evaluate (holds bundle/)")
    parser.add_argument("--log", required=True)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--out", required=True, help="JSON file; a .md table is written beside")
    parser.add_argument("--llm-model", default=None, help="GGUF for the local triage model")
    parser.add_argument("--skip-triage", action="store_true", help="rows (a), (b) only")
    args = parser.parse_args()

    run = Path(args.run)
    rows = []
    for name, changes in ROWS:
        if args.skip_triage and changes.get("triage"):
            continue
        settings = Settings(llm_model=args.llm_model, **changes)
        if changes.get("triage"):
            # A fresh state per row: verdicts must be earned during the replay.
            state = run / f"triage-{_slug(name)}.json"
            state.unlink(missing_ok=True)
            settings = settings.replace(triage_state=str(state))
        started = time.perf_counter()
        result = run_evaluate(
            args.log,
            settings,
            run / f"rows/{_slug(name)}",
            test_fraction=args.test_fraction,
            progress=False,
            bundle=run / "bundle",
        )
        m = result.metrics
        rows.append(
            {
                "name": name,
                "settings": changes,
                "precision": m["precision"],
                "recall": m["recall"],
                "f1": m["f1"],
                "auroc": m["auroc"],
                "tp": m["tp"],
                "fp": m["fp"],
                "fn": m["fn"],
                "unseen_anomalies": m["unseen_anomalies"],
                "unseen_recall": m["unseen_recall"],
                "unseen_by_route": m["unseen_by_route"],
                "triage": m["triage"],
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"command": " ".join(sys.argv), "log": args.log, "run": str(run), "rows": rows}
    out.write_text(json.dumps(document, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


def _slug(name: str) -> str:
    """A file-name-safe short name of a row ("(c')" -> "c_")."""
    head = name.split(")")[0] if name.startswith("(") else name
    return "".join(ch if ch.isalnum() else "_" for ch in head.strip("( ")) or "row"


def markdown(rows: list[dict[str, object]]) -> str:
    """The rows as a Markdown table (precision, recall, F1, unseen recall, LLM calls)."""
    lines = [
        "| setting | precision | recall | F1 | recall on unseen-template anomalies | LLM calls "
        "(wall s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        triage = row["triage"]
        calls = "-"
        if isinstance(triage, dict):
            calls = f"{triage['llm_calls']} ({triage['llm_seconds']})"
            if triage["llm_cached_answers"]:
                calls += f" + {triage['llm_cached_answers']} cached"
        lines.append(
            f"| {row['name']} | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{row['f1']:.3f} | {row['unseen_recall']:.3f} | {calls} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
