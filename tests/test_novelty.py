"""The novelty path's pieces: template table, similarity signals, threshold, CV, persistence.

The whole path on real data (setup trains it, detection uses it) is covered by
``test_end_to_end.py``; these tests pin down the parts whose mistakes would hide there.
"""

from __future__ import annotations

import numpy as np
import pytest

from fame.errors import BundleError
from fame.novelty import (
    NUMERIC_FEATURES,
    NoveltyModel,
    fit_novelty,
    one_hot,
    pick_threshold,
    similarity_features,
    template_table,
)


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_template_table_gives_centroid_and_anomaly_rate() -> None:
    emb = np.vstack([_unit([1, 0]), _unit([1, 0]), _unit([0, 1]), _unit([0, 1])])
    ids, centroids, rates = template_table(emb, ["A", "A", "B", "B"], [True, False, True, True])
    assert ids == ["A", "B"]
    assert rates.tolist() == [0.5, 1.0]
    assert np.allclose(centroids, [[1, 0], [0, 1]])


def test_similarity_features_of_a_line_next_to_an_anomalous_template() -> None:
    centroids = np.vstack([_unit([1, 0, 0]), _unit([0, 1, 0])])
    rates = np.array([1.0, 0.0])
    line = _unit([0.9, 0.1, 0.0])[None, :]
    features = similarity_features(line, centroids, rates)[0]
    named = dict(zip(NUMERIC_FEATURES, features, strict=True))
    assert named["max_similarity"] == pytest.approx(float(line[0] @ centroids[0]))
    assert named["nearest_rate"] == 1.0
    assert named["weighted_rate"] > 0.9
    assert named["anomaly_minus_normal"] > 0


def test_pick_threshold_takes_the_best_f1_among_thresholds_meeting_the_floor() -> None:
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    y = np.array([True, True, False, False, False, True])
    w = np.ones(6)
    threshold, figures = pick_threshold(p, y, w, min_recall=0.6)
    assert threshold == 0.8  # recall 2/3, precision 1: F1 0.8, the best of all
    assert figures["recall_floor_met"]
    floor, figures = pick_threshold(p, y, w, min_recall=1.0)
    assert floor == 0.1  # the only threshold catching every anomaly
    assert figures["cv_template_recall"] == 1.0
    assert figures["cv_template_precision"] == 0.5


def test_one_hot_has_an_other_column_per_field() -> None:
    matrix = one_hot([("KERNEL", "FATAL"), ("APP", "INFO")], ["c", "l"], {"c": ["KERNEL"], "l": []})
    assert matrix.tolist() == [[1, 0, 1], [0, 1, 1]]


def _clusters(seed: int = 0) -> tuple[np.ndarray, list[str], list[bool], list[tuple[str]]]:
    """Twelve templates in two regions of an embedding space: anomalous ones near one axis,
    normal ones near another; severity agrees with the label most of the time."""
    rng = np.random.default_rng(seed)
    rows, ids, labels, fields = [], [], [], []
    for t in range(12):
        anomalous = t % 2 == 0
        base = np.array([1.0, 0.0, 0.0, 0.0]) if anomalous else np.array([0.0, 1.0, 0.0, 0.0])
        centre = base + rng.normal(0, 0.3, 4)
        for _ in range(10):
            rows.append(_unit((centre + rng.normal(0, 0.05, 4)).tolist()))
            ids.append(f"E{t}")
            labels.append(anomalous)
            fields.append(("FATAL" if anomalous ^ (t == 11) else "INFO",))
    return np.vstack(rows), ids, labels, fields


def test_fit_novelty_learns_from_held_out_templates_and_round_trips() -> None:
    emb, ids, labels, fields = _clusters()
    model = fit_novelty(emb, ids, labels, fields, ["Level"], min_recall=0.9, seed=0)
    assert model is not None
    report = model.report
    assert report["templates"] == 12 and report["anomalous_templates"] == 6
    assert report["cv_template_recall"] >= 0.9
    # A new line near the anomalous region with a FATAL level is anomalous; one near the
    # normal region with INFO is not.
    new_anomaly = _unit([1.0, 0.1, 0.2, 0.0])[None, :]
    new_normal = _unit([0.1, 1.0, 0.0, 0.2])[None, :]
    assert model.probability(new_anomaly, [("FATAL",)])[0] >= model.threshold
    assert model.probability(new_normal, [("INFO",)])[0] < model.threshold
    again = NoveltyModel.from_json(model.to_json())
    assert np.allclose(
        again.probability(new_anomaly, [("FATAL",)]),
        model.probability(new_anomaly, [("FATAL",)]),
        atol=1e-5,
    )


def test_held_out_templates_never_see_their_own_centroid() -> None:
    # Each template's lines are identical: a leak of its own centroid would give similarity 1.
    rows = [_unit([1, i, 0]) for i in range(6) for _ in range(3)]
    ids = [f"E{i}" for i in range(6) for _ in range(3)]
    labels = [i % 2 == 0 for i in range(6) for _ in range(3)]
    model = fit_novelty(np.vstack(rows), ids, labels, [()] * len(ids), [], seed=1)
    assert model is not None
    # The mean of the out-of-fold max similarity is below 1 (own centroid excluded).
    assert model.mean[0] < 0.999


def test_too_few_templates_of_a_kind_skip_the_path(caplog: pytest.LogCaptureFixture) -> None:
    emb = np.vstack([_unit([1, 0]), _unit([0, 1]), _unit([1, 1])])
    assert fit_novelty(emb, ["A", "B", "C"], [True, False, False], [()] * 3, []) is None
    assert "novelty path not trained" in caplog.text


def test_a_corrupt_novelty_file_is_a_bundle_error() -> None:
    emb, ids, labels, fields = _clusters()
    model = fit_novelty(emb, ids, labels, fields, ["Level"])
    assert model is not None
    data = model.to_json()
    with pytest.raises(BundleError, match="format"):
        NoveltyModel.from_json({**data, "format": "other"})
    with pytest.raises(BundleError, match="do not match"):
        NoveltyModel.from_json({**data, "coef": data["coef"][:-1]})
    with pytest.raises(BundleError, match="malformed"):
        NoveltyModel.from_json({k: v for k, v in data.items() if k != "rates"})
