"""LogLead (PyPI ``loglead`` 2.0.0) line-level detectors on a split given by fame.

This script runs in LogLead's own virtual environment (``scripts/loglead_env.sh``) and
imports nothing from fame, so that LogLead's pins never touch fame's. It reads a JSON spec
that fame's benchmark writes (the log, the chronological split point and the K-shot lines
with their labels), drives LogLead's own loader, enhancers and detectors, and writes one
JSON document of counts per detector::

    python loglead_runner.py SPEC.json OUT.json

Known pitfalls of driving LogLead that this runner avoids:

* its BGL loader leaves empty messages null: they are filled with "";
* its Drain step maps over the frame chunk by chunk, which can feed lines out of order: the
  frame is rechunked first, and Drain is fed only the offline region (test lines are
  matched against the frozen templates, never mined), with the one miner of this process;
* its split helper re-sorts the frame: the split is set explicitly, by position.

Run one data set per process: LogLead keeps one Drain miner per process.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("loglead_runner")

#: Supervised detectors (trained on the K-shot labelled lines only).
SUPERVISED = ("LR", "DT", "LSVM", "RF", "XGB")
#: Unsupervised detectors (trained on every offline line, without labels).
UNSUPERVISED = ("IsolationForest", "KMeans", "RarityModel", "OOVDetector")


def _confusion(labels: list[bool], predicted: list[bool]) -> dict[str, Any]:
    tp = sum(1 for y, p in zip(labels, predicted, strict=True) if y and p)
    fp = sum(1 for y, p in zip(labels, predicted, strict=True) if not y and p)
    fn = sum(1 for y, p in zip(labels, predicted, strict=True) if y and not p)
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall,
            "f1": f1}  # fmt: skip


def _auroc(labels: list[bool], scores: list[float] | None) -> float | None:
    from sklearn.metrics import roc_auc_score

    if scores is None or len(set(labels)) < 2:
        return None
    return float(roc_auc_score([int(y) for y in labels], scores))


def load_frame(log: str, n_lines: int) -> Any:
    """LogLead's BGL loader on ``log``; null messages filled, one row per line, in order."""
    import polars as pl
    from loglead.loaders import BGLLoader

    loader = BGLLoader(filename=log)
    df = loader.execute()
    df = df.with_columns(pl.col("m_message").fill_null("")).rechunk()
    if df.height != n_lines:
        raise SystemExit(
            f"LogLead's BGL loader read {df.height} rows from {log}, fame counted {n_lines} "
            "lines: the split would not line up; check the file for lines the loader drops"
        )
    return df


def enhance(df: Any, n_offline: int) -> tuple[Any, Any]:
    """Words and Drain EventIDs; Drain learns on the offline rows only, in order."""
    import polars as pl
    from loglead.enhancers import EventLogEnhancer
    from loglead.parsers import DrainTemplateMinerNoMasking as miner

    enhancer = EventLogEnhancer(df)
    enhancer.mask()
    enhancer.words()
    df = enhancer.df.rechunk()
    offline, test = df.head(n_offline).rechunk(), df.tail(df.height - n_offline).rechunk()
    offline_enhancer = EventLogEnhancer(offline)
    offline = offline_enhancer.parse_drain()

    def match(message: str) -> str:
        cluster = miner.match(message)
        return "e_unknown" if cluster is None else f"e{cluster.cluster_id}"

    test_ids = [match(m) for m in test["e_message_normalized"].to_list()]
    test = test.with_columns(pl.Series("e_event_drain_id", test_ids, dtype=pl.Utf8))
    offline = offline.with_columns(pl.col("e_event_drain_id").cast(pl.Utf8))
    return offline, test


def run_detector(
    train: Any, test: Any, feature: str, name: str, *, supervised: bool
) -> dict[str, Any]:
    """Train one LogLead detector and count its test predictions."""
    from loglead import AnomalyDetector

    started = time.perf_counter()
    detector = AnomalyDetector(item_list_col=feature, print_scores=False, auc_roc=True)
    detector.train_df, detector.test_df = train, test
    detector.prepare_train_test_data()
    trainers: dict[str, Callable[[], None]] = {
        "IsolationForest": lambda: detector.train_IsolationForest(filter_anos=False),
        "KMeans": lambda: detector.train_KMeans(filter_anos=False),
        "RarityModel": lambda: detector.train_RarityModel(filter_anos=False),
        "OOVDetector": lambda: detector.train_OOVDetector(filter_anos=False),
    }
    trainer = trainers.get(name) or getattr(detector, f"train_{name}")
    trainer()
    out = detector.predict()
    labels = [bool(v) for v in test["anomaly"].to_list()]
    predicted = [bool(v) for v in out["pred_ano"].to_list()]
    scores = out["pred_ano_proba"].to_list() if "pred_ano_proba" in out.columns else None
    row = _confusion(labels, predicted)
    row.update(
        method=f"loglead_{name}_{feature}",
        detector=name,
        features=feature,
        supervision="supervised" if supervised else "unsupervised",
        auroc=_auroc(labels, scores),
        seconds=round(time.perf_counter() - started, 2),
        train_lines=int(train.height),
    )
    logger.info("%s: F1 %.3f (%.1f s)", row["method"], row["f1"], row["seconds"])
    return row


def main(argv: list[str]) -> int:
    """Entry point: ``loglead_runner.py SPEC.json OUT.json``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s loglead: %(message)s")
    if len(argv) != 2:
        sys.stderr.write("usage: loglead_runner.py SPEC.json OUT.json\n")
        return 2
    from importlib.metadata import version

    import polars as pl

    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    started = time.perf_counter()
    df = load_frame(spec["log"], int(spec["n_lines"]))
    offline, test = enhance(df, int(spec["n_offline"]))
    logger.info("split: %d offline rows, %d test rows", offline.height, test.height)

    # The K-shot lines (fame's sample: same indices, same labels) are the labelled set.
    kshot = {int(i): bool(label) for i, label in spec["kshot"]}
    index = pl.Series("row", list(range(offline.height)))
    labelled = offline.with_columns(index).filter(pl.col("row").is_in(list(kshot)))
    labelled = labelled.with_columns(
        pl.Series("anomaly", [kshot[i] for i in labelled["row"].to_list()])
    ).drop("row")

    rows = []
    features = spec.get("features", ["e_words", "e_event_drain_id"])
    for feature in features:
        for name in SUPERVISED:
            rows.append(run_detector(labelled, test, feature, name, supervised=True))
        for name in UNSUPERVISED:
            rows.append(run_detector(offline, test, feature, name, supervised=False))
    document = {
        "loglead_version": version("loglead"),
        "offline_lines": offline.height,
        "test_lines": test.height,
        "labelled_lines": labelled.height,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    Path(argv[1]).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
