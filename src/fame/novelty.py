"""The novelty path: a calibrated decision for lines of templates never seen offline.

Beyond the paper (issue: "lines from templates never seen offline"). The paper routes a line
of a new template to the nearest known domain and lets that domain decide; on BGL the
largest family of new anomalies is closest to normal templates, so that is not enough. Here
a line that matches no frozen template is *novel* and gets its own decision, learned from
the offline K-shot labels alone:

Signals (per line):
    * its similarity to the known templates in the encoder's space (the mean-pooled trunk
      state the detector computes anyway): the largest cosine to any template centroid, the
      anomaly rate of the K-shot lines of the nearest template, a similarity-weighted anomaly
      rate over the five nearest, and the gap between the nearest anomalous and the nearest
      normal template;
    * the message's own categorical fields: the format's model fields other than the parsed
      text (for BGL the component and the severity level), one-hot over the values seen
      offline.

Calibration data by simulated novelty (template-level cross-validation): the EventIDs with
K-shot lines are split into folds; the lines of each held-out fold get their similarity
signals from the centroids of the *other* folds only, exactly as a never-seen template sees
the known ones at detection time. A logistic regression is fitted on these out-of-fold
signals with every EventID weighted equally (a new failure message is one template, however
many lines it has). Its threshold is chosen on a second cross-validation over EventIDs:
among the thresholds whose template-weighted recall on held-out anomalous templates reaches
``min_recall`` (operators usually prefer recall on new failure messages), the one with the
best template-weighted F1, the highest on ties. Nothing of the test region is used. When
the cross-validated precision at that point stays under ``min_precision`` the path is kept
in the bundle but disabled: on Loghub's BGL_2k (10 anomalous templates offline) it reached
0.17 and flagged most new lines, which is how this floor came to exist.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fame.errors import BundleError

logger = logging.getLogger(__name__)

NOVELTY_FORMAT = "fame-novelty/1"
#: Number of nearest templates in the weighted anomaly rate.
TOP_TEMPLATES = 5
#: Most distinct values one-hot encoded per categorical field (the rest share "other").
MAX_FIELD_VALUES = 30
#: Folds of the template-level cross-validation (fewer when there are fewer templates).
FOLDS = 5
#: Shown when no template of one kind exists (no anomalous or no normal template).
_NO_SIMILARITY = -1.0

NUMERIC_FEATURES = ("max_similarity", "nearest_rate", "weighted_rate", "anomaly_minus_normal")


def mean_pool(states: Sequence[Any]) -> NDArray[np.float32]:
    """L2-normalised mean of each line's trunk state (``[n_tokens, H]`` tensors)."""
    rows = [np.asarray(s.float().mean(dim=0).numpy(), dtype=np.float32) for s in states]
    matrix = np.vstack(rows) if rows else np.zeros((0, 1), dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def pooled_from_batch(hidden: Any, mask: Any) -> NDArray[np.float32]:
    """L2-normalised masked mean of a padded batch of trunk states ``[B, S, H]``."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    matrix = np.asarray(summed.float().numpy(), dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def template_table(
    embeddings: NDArray[np.float32], event_ids: Sequence[str], labels: Sequence[bool]
) -> tuple[list[str], NDArray[np.float32], NDArray[np.float64]]:
    """Per-EventID centroid (normalised mean embedding) and anomaly rate of its lines."""
    order = list(dict.fromkeys(event_ids))
    index = {e: i for i, e in enumerate(order)}
    dim = embeddings.shape[1] if embeddings.size else 1
    sums = np.zeros((len(order), dim), dtype=np.float64)
    counts = np.zeros(len(order))
    anomalies = np.zeros(len(order))
    for row, (event_id, label) in enumerate(zip(event_ids, labels, strict=True)):
        i = index[event_id]
        sums[i] += embeddings[row]
        counts[i] += 1
        anomalies[i] += bool(label)
    centroids = sums / np.maximum(counts[:, None], 1)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return order, centroids.astype(np.float32), anomalies / np.maximum(counts, 1)


def similarity_features(
    embeddings: NDArray[np.float32], centroids: NDArray[np.float32], rates: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The four similarity signals of each line against a table of known templates."""
    n = embeddings.shape[0]
    out = np.zeros((n, len(NUMERIC_FEATURES)))
    if n == 0 or centroids.shape[0] == 0:
        out[:, 0] = _NO_SIMILARITY
        return out
    sims = embeddings.astype(np.float64) @ centroids.T.astype(np.float64)
    nearest = sims.argmax(axis=1)
    out[:, 0] = sims[np.arange(n), nearest]
    out[:, 1] = rates[nearest]
    k = min(TOP_TEMPLATES, sims.shape[1])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1)
    weights = np.exp((top_sims - top_sims.max(axis=1, keepdims=True)) * 20.0)
    out[:, 2] = (weights * rates[top]).sum(axis=1) / weights.sum(axis=1)
    anomalous = rates >= 0.5
    best_anomalous = sims[:, anomalous].max(axis=1) if anomalous.any() else _NO_SIMILARITY
    best_normal = sims[:, ~anomalous].max(axis=1) if (~anomalous).any() else _NO_SIMILARITY
    out[:, 3] = np.asarray(best_anomalous) - np.asarray(best_normal)
    return out


@dataclass
class NoveltyModel:
    """The learned decision for novel lines (see the module docstring).

    Attributes:
        fields: Categorical field names used, in order.
        vocab: Per field, the values one-hot encoded.
        event_ids: Known templates, in the order of ``centroids``.
        centroids: Normalised centroid embedding per known template.
        rates: Anomaly rate of each known template's K-shot lines.
        mean: Mean of each numeric feature (for scaling).
        scale: Standard deviation of each numeric feature.
        coef: Logistic-regression weights over the feature vector.
        intercept: Its intercept.
        threshold: Probability at or above which a novel line is anomalous.
        report: Cross-validated figures of the calibration (for the bundle report).
        enabled: Whether detection uses it: False when its cross-validated precision on
            held-out templates stayed under the setup's floor (it would raise more false
            alarms than it finds new failures; the paper's routing then decides).
    """

    fields: list[str]
    vocab: dict[str, list[str]]
    event_ids: list[str]
    centroids: NDArray[np.float32]
    rates: NDArray[np.float64]
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    coef: NDArray[np.float64]
    intercept: float
    threshold: float
    report: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True

    def feature_names(self) -> list[str]:
        """Names of the feature vector's columns."""
        names = list(NUMERIC_FEATURES)
        for name in self.fields:
            names += [f"{name}={v}" for v in self.vocab[name]] + [f"{name}=<other>"]
        return names

    def features(
        self,
        embeddings: NDArray[np.float32],
        field_values: Sequence[Sequence[str]],
        numeric: NDArray[np.float64] | None = None,
    ) -> NDArray[np.float64]:
        """Feature matrix of lines; ``numeric`` overrides the similarity signals (for CV)."""
        if numeric is None:
            numeric = similarity_features(embeddings, self.centroids, self.rates)
        scaled = (numeric - self.mean) / self.scale
        return np.hstack([scaled, one_hot(field_values, self.fields, self.vocab)])

    def probability(
        self, embeddings: NDArray[np.float32], field_values: Sequence[Sequence[str]]
    ) -> NDArray[np.float64]:
        """Probability that each novel line is anomalous."""
        x = self.features(embeddings, field_values)
        return _sigmoid(x @ self.coef + self.intercept)

    def nearest(self, embeddings: NDArray[np.float32], *, anomalous_only: bool) -> list[str | None]:
        """The nearest known template of each line (optionally among anomalous ones)."""
        if self.centroids.shape[0] == 0:
            return [None] * embeddings.shape[0]
        sims = embeddings.astype(np.float64) @ self.centroids.T.astype(np.float64)
        if anomalous_only:
            if not (self.rates >= 0.5).any():
                return [None] * embeddings.shape[0]
            sims[:, self.rates < 0.5] = -np.inf
        return [self.event_ids[int(i)] for i in sims.argmax(axis=1)]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (arrays as lists; centroids as float32 lists)."""
        return {
            "format": NOVELTY_FORMAT,
            "fields": self.fields,
            "vocab": self.vocab,
            "event_ids": self.event_ids,
            "centroids": self.centroids.round(6).tolist(),
            "rates": self.rates.tolist(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "threshold": self.threshold,
            "report": self.report,
            "enabled": self.enabled,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NoveltyModel:
        """Inverse of :meth:`to_json`.

        Raises:
            BundleError: If the structure is malformed or of another format.
        """
        if data.get("format") != NOVELTY_FORMAT:
            raise BundleError(
                f"novelty model format {data.get('format')!r}, expected {NOVELTY_FORMAT!r}; "
                "rebuild the bundle with this version of fame"
            )
        try:
            model = cls(
                fields=[str(f) for f in data["fields"]],
                vocab={str(k): [str(v) for v in vs] for k, vs in data["vocab"].items()},
                event_ids=[str(e) for e in data["event_ids"]],
                centroids=np.asarray(data["centroids"], dtype=np.float32).reshape(
                    len(data["event_ids"]), -1
                ),
                rates=np.asarray(data["rates"], dtype=np.float64),
                mean=np.asarray(data["mean"], dtype=np.float64),
                scale=np.asarray(data["scale"], dtype=np.float64),
                coef=np.asarray(data["coef"], dtype=np.float64),
                intercept=float(data["intercept"]),
                threshold=float(data["threshold"]),
                report=dict(data.get("report") or {}),
                enabled=bool(data.get("enabled", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"novelty.json is malformed ({exc}); rebuild the bundle") from exc
        if model.coef.shape[0] != len(model.feature_names()):
            raise BundleError("novelty.json: weights do not match its features; rebuild it")
        return model


def one_hot(
    field_values: Sequence[Sequence[str]], fields: Sequence[str], vocab: Mapping[str, list[str]]
) -> NDArray[np.float64]:
    """One-hot columns per field (known values, then one ``<other>`` column)."""
    width = sum(len(vocab[f]) + 1 for f in fields)
    out = np.zeros((len(field_values), width))
    offset = 0
    for position, name in enumerate(fields):
        index = {v: i for i, v in enumerate(vocab[name])}
        for row, values in enumerate(field_values):
            value = values[position] if position < len(values) else ""
            out[row, offset + index.get(value, len(vocab[name]))] = 1.0
        offset += len(vocab[name]) + 1
    return out


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -50, 50))), dtype=np.float64)


def _folds(groups: Sequence[str], n_folds: int, seed: int) -> list[NDArray[np.int64]]:
    """Row indices of each fold, whole EventIDs per fold, EventIDs shuffled by ``seed``."""
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    fold_of = {g: i % n_folds for i, g in enumerate(unique)}
    assignment = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(assignment == f) for f in range(n_folds)]


def _template_weights(groups: Sequence[str]) -> NDArray[np.float64]:
    """Weight 1 / (lines of its EventID) per row: every EventID counts once."""
    counts: dict[str, int] = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    return np.array([1.0 / counts[g] for g in groups])


def pick_threshold(
    probabilities: NDArray[np.float64],
    labels: NDArray[np.bool_],
    weights: NDArray[np.float64],
    min_recall: float,
) -> tuple[float, dict[str, float]]:
    """The best-F1 threshold among those with weighted recall >= ``min_recall``.

    Ties go to the highest threshold. Falls back to the F1-best threshold when no threshold
    reaches the recall floor (``recall_floor_met`` is then False).
    """
    candidates = np.unique(probabilities)
    positives = float(weights[labels].sum())
    best: tuple[float, float, float, float] | None = None  # (f1, threshold, recall, precision)
    fallback: tuple[float, float, float, float] | None = None
    for t in candidates[::-1]:
        predicted = probabilities >= t
        tp = float(weights[predicted & labels].sum())
        fp = float(weights[predicted & ~labels].sum())
        recall = tp / positives if positives else 0.0
        precision = tp / (tp + fp) if tp + fp else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        entry = (f1, float(t), recall, precision)
        if fallback is None or f1 > fallback[0]:
            fallback = entry
        if recall >= min_recall and (best is None or f1 > best[0]):
            best = entry
    chosen = best or fallback or (0.0, 0.5, 0.0, 0.0)
    figures = {
        "cv_template_f1": round(chosen[0], 4),
        "cv_template_recall": round(chosen[2], 4),
        "cv_template_precision": round(chosen[3], 4),
        "recall_floor_met": best is not None,
    }
    return chosen[1], figures


def fit_novelty(
    embeddings: NDArray[np.float32],
    event_ids: Sequence[str],
    labels: Sequence[bool],
    field_values: Sequence[Sequence[str]],
    fields: Sequence[str],
    *,
    min_recall: float = 0.9,
    min_precision: float = 0.5,
    seed: int = 0,
) -> NoveltyModel | None:
    """Learn the novelty decision from the K-shot lines by template-level cross-validation.

    Args:
        embeddings: Normalised embedding of each K-shot line.
        event_ids: Its EventID.
        labels: Its label (True anomalous).
        field_values: Its categorical field values, in ``fields`` order.
        fields: The categorical field names.
        min_recall: The operating point: template-weighted recall floor on held-out
            anomalous templates.
        min_precision: The model is kept but disabled when its cross-validated
            template-weighted precision at that operating point is lower.
        seed: Fold assignment seed.

    Returns:
        The model, or None when there are too few templates of each kind to simulate
        novelty (then novel lines keep the paper's routing, with a warning).
    """
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels, dtype=bool)
    groups = list(event_ids)
    anomalous_templates = {g for g, label in zip(groups, y, strict=True) if label}
    normal_templates = {g for g, label in zip(groups, y, strict=True) if not label}
    if len(anomalous_templates) < 2 or len(normal_templates) < 2:
        logger.warning(
            "novelty path not trained: it needs at least two templates with anomalous and two "
            "with normal K-shot lines (found %d and %d); novel lines use the paper's routing",
            len(anomalous_templates),
            len(normal_templates),
        )
        return None
    n_folds = min(FOLDS, len(set(groups)))
    folds = _folds(groups, n_folds, seed)

    # Out-of-fold similarity signals: held-out EventIDs see only the other folds' centroids.
    numeric = np.zeros((len(groups), len(NUMERIC_FEATURES)))
    for rows in folds:
        train = np.setdiff1d(np.arange(len(groups)), rows)
        ids, centroids, rates = template_table(
            embeddings[train], [groups[i] for i in train], y[train].tolist()
        )
        numeric[rows] = similarity_features(embeddings[rows], centroids, rates)

    vocab: dict[str, list[str]] = {}
    for position, name in enumerate(fields):
        counts: dict[str, int] = {}
        for values in field_values:
            value = values[position] if position < len(values) else ""
            counts[value] = counts.get(value, 0) + 1
        ranked = sorted(counts, key=lambda v: (-counts[v], v))
        vocab[name] = ranked[:MAX_FIELD_VALUES]
    mean = numeric.mean(axis=0)
    scale = np.maximum(numeric.std(axis=0), 1e-6)
    ids, centroids, rates = template_table(embeddings, groups, y.tolist())
    model = NoveltyModel(
        fields=list(fields),
        vocab=vocab,
        event_ids=ids,
        centroids=centroids,
        rates=rates,
        mean=mean,
        scale=scale,
        coef=np.zeros(0),
        intercept=0.0,
        threshold=0.5,
    )
    x = model.features(embeddings, field_values, numeric=numeric)
    weights = _template_weights(groups)

    def fit(rows: NDArray[np.int64]) -> Any:
        # Balance the classes by template weight, so both kinds of template count alike.
        w = weights[rows].copy()
        for cls in (True, False):
            mask = y[rows] == cls
            total = w[mask].sum()
            if total > 0:
                w[mask] *= 0.5 * len(rows) / total
        classifier = LogisticRegression(C=1.0, max_iter=2000)
        classifier.fit(x[rows], y[rows], sample_weight=w)
        return classifier

    # Threshold on a second cross-validation over EventIDs (out-of-fold probabilities).
    oof = np.zeros(len(groups))
    for rows in folds:
        train = np.setdiff1d(np.arange(len(groups)), rows)
        if len(set(y[train].tolist())) < 2:
            oof[rows] = 0.5
            continue
        oof[rows] = fit(train).predict_proba(x[rows])[:, 1]
    threshold, figures = pick_threshold(oof, y, weights, min_recall)
    final = fit(np.arange(len(groups)))
    model.coef = np.asarray(final.coef_[0], dtype=np.float64)
    model.intercept = float(final.intercept_[0])
    model.threshold = threshold
    model.enabled = figures["cv_template_precision"] >= min_precision
    model.report = {
        **figures,
        "min_precision": min_precision,
        "enabled": model.enabled,
        "folds": n_folds,
        "templates": len(ids),
        "anomalous_templates": len(anomalous_templates),
        "min_recall": min_recall,
        "lines": len(groups),
    }
    logger.info(
        "novelty path: threshold %.3f; cross-validated over held-out templates: F1 %.3f, "
        "recall %.3f, precision %.3f",
        threshold,
        figures["cv_template_f1"],
        figures["cv_template_recall"],
        figures["cv_template_precision"],
    )
    if not model.enabled:
        logger.warning(
            "novelty path disabled: its cross-validated precision on held-out templates "
            "(%.2f) is under --novel-min-precision %.2f, so it would raise more false alarms "
            "than it finds; lines of new templates keep the paper's routing. More labelled "
            "templates (a larger offline region or K) may change that.",
            figures["cv_template_precision"],
            min_precision,
        )
    return model
