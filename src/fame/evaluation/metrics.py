"""Message-level metrics (paper IV-A): precision, recall, F1, AUROC, counts.

Counts are accumulated one line at a time so that evaluation streams like detection does;
only the scores and labels (two numbers per line) are kept for AUROC.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from fame.result import Detection


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall (0 when both are 0)."""
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@dataclass
class Confusion:
    """A confusion matrix with the derived rates."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, predicted: bool, actual: bool) -> None:
        """Count one line."""
        if predicted and actual:
            self.tp += 1
        elif predicted:
            self.fp += 1
        elif actual:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 0 when nothing was flagged."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 0 when there were no anomalies."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        """F1 of precision and recall."""
        return f1_score(self.precision, self.recall)

    def to_json(self) -> dict[str, Any]:
        """Counts and rates on a 0-1 scale."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
        }


@dataclass
class Evaluation:
    """Accumulates detections against labels; :meth:`summary` gives ``metrics.json``."""

    overall: Confusion = field(default_factory=Confusion)
    unseen: Confusion = field(default_factory=Confusion)
    by_route: dict[str, Confusion] = field(default_factory=dict)
    by_domain: dict[str, Confusion] = field(default_factory=dict)
    unseen_anomaly_routes: Counter[str] = field(default_factory=Counter)
    unseen_by_route: dict[str, Confusion] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    unlabelled: int = 0

    def add(self, detection: Detection, label: bool | None) -> None:
        """Count one detection; lines without a label are counted but not scored."""
        if label is None:
            self.unlabelled += 1
            return
        self.overall.add(detection.anomaly, label)
        self.scores.append(detection.score)
        self.labels.append(label)
        route = detection.route.value
        self.by_route.setdefault(route, Confusion()).add(detection.anomaly, label)
        self.by_domain.setdefault(detection.domain or "(none)", Confusion()).add(
            detection.anomaly, label
        )
        if detection.event_id is None:
            self.unseen.add(detection.anomaly, label)
            self.unseen_by_route.setdefault(route, Confusion()).add(detection.anomaly, label)
            if label:
                self.unseen_anomaly_routes[detection.domain or route] += 1

    @property
    def auroc(self) -> float | None:
        """Area under the ROC curve of the emitted scores; None with one class only."""
        if len(set(self.labels)) < 2:
            return None
        return float(roc_auc_score(np.array(self.labels), np.array(self.scores)))

    def summary(self) -> dict[str, Any]:
        """Metrics on a 0-1 scale, with the unseen-template breakdown."""
        anomalies = self.overall.tp + self.overall.fn
        unseen_anomalies = self.unseen.tp + self.unseen.fn
        return {
            **self.overall.to_json(),
            "auroc": self.auroc,
            "lines": len(self.labels) + self.unlabelled,
            "unlabelled_lines": self.unlabelled,
            "anomalies": anomalies,
            "unseen_anomalies": unseen_anomalies,
            "unseen_anomaly_share": unseen_anomalies / anomalies if anomalies else 0.0,
            "unseen_recall": self.unseen.recall,
            "unseen_anomaly_routes": dict(self.unseen_anomaly_routes.most_common()),
            # Recall on unseen-template anomalies under each mechanism that decided them.
            "unseen_by_route": {k: v.to_json() for k, v in sorted(self.unseen_by_route.items())},
            "by_route": {k: v.to_json() for k, v in sorted(self.by_route.items())},
            "by_domain": {k: v.to_json() for k, v in sorted(self.by_domain.items())},
        }
