"""Which header fields should the models see? A cheap probe on the real BGL sample.

For each candidate field set: K=100 labelled lines per Drain EventID from the offline region
(first 85%), a TF-IDF + logistic-regression classifier on the chosen fields, and its F1 and
AUROC on the test region (last 15%). This only compares field sets; it is not a detector.

    .venv/bin/python benchmarks/model_fields.py --out benchmarks/results/model_fields.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

from fame.logs import get_format, read_records
from fame.parsing import TemplateParser

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOG = ROOT.parent / "shared" / "data" / "bgl" / "bgl_sample.log"
CANDIDATES = (
    ("Content",),
    ("Level", "Content"),
    ("Component", "Level", "Content"),
    ("Type", "Component", "Level", "Content"),
    ("Node", "Component", "Level", "Content"),
    ("Timestamp", "Node", "Time", "Type", "Component", "Level", "Content"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", default=str(DEFAULT_LOG))
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    records = list(read_records(args.log, get_format("bgl")))
    n_offline = int(len(records) * 0.85)
    event_ids = TemplateParser().learn(r.content for r in records[:n_offline])
    by_event: dict[str, list[int]] = defaultdict(list)
    for i, eid in enumerate(event_ids):
        if records[i].label is not None:
            by_event[eid].append(i)
    kshot = [i for rows in by_event.values() for i in rows[-args.k :]]
    y = np.array([bool(r.label) for r in records])
    test = slice(n_offline, len(records))

    rows = []
    for fields in CANDIDATES:
        texts = [" ".join(r.fields.get(f, "") for f in fields) for r in records]
        vectorizer = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b").fit([texts[i] for i in kshot])
        model = LogisticRegression(max_iter=2000, class_weight="balanced")
        model.fit(vectorizer.transform([texts[i] for i in kshot]), y[kshot])
        p = model.predict_proba(vectorizer.transform(texts[test]))[:, 1]
        rows.append(
            {
                "fields": list(fields),
                "f1": round(float(f1_score(y[test], p >= 0.5)), 4),
                "auroc": round(float(roc_auc_score(y[test], p)), 4),
            }
        )
        print(f"{' '.join(fields):<55} F1 {rows[-1]['f1']:.3f}  AUROC {rows[-1]['auroc']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"log": args.log, "k": args.k, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
