"""Threshold calibration and gate fusion (paper III-E) on scores with known optima."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from fame.calibration import (
    DEFAULT_FUSION_WEIGHTS,
    FALLBACK_THRESHOLD,
    FusionResult,
    ThresholdResult,
    calibrate_fusion,
    calibrate_threshold,
    fuse,
    to_calibrated_score,
)
from fame.errors import BundleError, ConfigError, InputError


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# -- calibrate_threshold -----------------------------------------------------------------------


def test_separable_scores_tie_break_highest_by_default() -> None:
    scores = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    result = calibrate_threshold(scores, [0, 0, 0, 1, 1, 1])
    assert result.threshold == pytest.approx(0.7)  # the top edge: the weakest anomaly
    assert result.f1 == 1.0


def test_perfectly_separable_scores_put_the_threshold_mid_gap() -> None:
    scores = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    labels = [0, 0, 0, 1, 1, 1]
    result = calibrate_threshold(scores, labels, tie_break="middle")
    # Every threshold in (0.3, 0.7] separates the classes: the middle, 0.5, keeps the widest
    # margin to both (the highest, 0.7, would miss any anomaly scored a little lower).
    assert result.threshold == pytest.approx(0.5)
    assert (result.precision, result.recall, result.f1) == (1.0, 1.0, 1.0)
    assert (result.n, result.n_anomalous) == (6, 3)
    assert "all 6 unique scores" in result.reason


# Anomalies 0.2 0.6 0.7 0.8 0.9; normals 0.1 0.3 0.4 0.5 0.65.
OVERLAP_SCORES = [0.2, 0.6, 0.7, 0.8, 0.9, 0.1, 0.3, 0.4, 0.5, 0.65]
OVERLAP_LABELS = [True] * 5 + [False] * 5


def test_recall_floor_binds_on_overlapping_scores() -> None:
    # Recall 0.9 needs all 5 anomalies, so t <= 0.2: TP 5, FP 4 -> P 5/9, F1 10/14.
    result = calibrate_threshold(OVERLAP_SCORES, OVERLAP_LABELS, min_recall=0.9, tie_break="middle")
    # Any threshold in (0.1, 0.2] makes the same decisions; the middle of that band is taken.
    assert result.threshold == pytest.approx(0.15)
    assert result.recall == 1.0
    assert result.precision == pytest.approx(5 / 9)
    assert result.f1 == pytest.approx(10 / 14)


def test_without_the_floor_the_f1_optimum_wins() -> None:
    # t = 0.6: TP 4, FP 1 -> P 0.8, R 0.8, F1 0.8 (t = 0.7 gives 0.75, t = 0.2 gives 0.714).
    result = calibrate_threshold(OVERLAP_SCORES, OVERLAP_LABELS, min_recall=0.0, tie_break="middle")
    assert result.threshold == pytest.approx(0.55)  # middle of (0.5, 0.6]
    assert result.f1 == pytest.approx(0.8)


def test_many_unique_scores_search_one_thousand_percentiles() -> None:
    normals = np.linspace(0.0, 0.4, 600)
    anomalies = np.linspace(0.6, 1.0, 600)
    scores = np.concatenate([normals, anomalies])
    labels = np.array([False] * 600 + [True] * 600)
    result = calibrate_threshold(scores, labels)
    # Brute force over the same percentile candidates (a percentile may fall in no gap).
    best: tuple[float, float] = (-1.0, 0.0)
    for t in np.unique(np.percentile(scores, np.linspace(0, 100, 1000))):
        tp = int(np.sum(anomalies >= t))
        fp = int(np.sum(normals >= t))
        f1 = 2 * tp / (2 * tp + fp + (600 - tp))
        if tp / 600 >= 0.9 and f1 >= best[0]:
            best = (f1, float(t))
    assert result.f1 == pytest.approx(best[0])
    assert result.threshold == best[1]
    assert result.recall >= 0.9
    assert "1000 score percentiles" in result.reason


def test_f1_ties_go_to_the_higher_threshold() -> None:
    # t = 0.8: TP 2, FP 0, FN 2 -> F1 2/3; t = 0.2: TP 4, FP 4, FN 0 -> F1 2/3 as well.
    scores = [0.2, 0.3, 0.8, 0.9, 0.4, 0.5, 0.6, 0.7]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    result = calibrate_threshold(scores, labels, min_recall=0.0)
    assert result.f1 == pytest.approx(2 / 3)
    assert result.threshold == 0.8
    assert result.precision == 1.0


def test_fewer_unique_scores_than_candidates_searches_the_scores_themselves() -> None:
    scores = [0.25, 0.25, 0.5, 0.75, 0.75, 0.75]
    labels = [0, 0, 1, 1, 1, 0]
    result = calibrate_threshold(scores, labels)
    assert result.threshold == 0.5  # TP 3, FP 1: F1 6/7, recall 1
    assert result.f1 == pytest.approx(6 / 7)
    assert "all 3 unique scores" in result.reason


@pytest.mark.parametrize(
    ("scores", "labels", "problem"),
    [
        ([], [], "empty"),
        ([0.1, 0.9], [0, 0], "no anomalous line"),
        ([0.1, 0.9], [1, 1], "no normal line"),
    ],
)
def test_degenerate_sets_fall_back_with_a_reason(
    scores: list[float], labels: list[int], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fame.calibration"):
        result = calibrate_threshold(scores, labels)
    assert result.threshold == FALLBACK_THRESHOLD
    assert problem in result.reason and "fell back" in result.reason
    assert problem in caplog.text


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(InputError, match="one entry per score"):
        calibrate_threshold([0.1, 0.2], [1])
    with pytest.raises(InputError, match="NaN"):
        calibrate_threshold([0.1, float("nan")], [1, 0])
    with pytest.raises(InputError, match="True/False"):
        calibrate_threshold([0.1, 0.2], [1, 2])
    with pytest.raises(ConfigError, match="min_recall"):
        calibrate_threshold([0.1, 0.2], [1, 0], min_recall=1.5)
    with pytest.raises(ConfigError, match="n_candidates"):
        calibrate_threshold([0.1, 0.2], [1, 0], n_candidates=1)


def test_threshold_result_json_round_trip() -> None:
    result = calibrate_threshold(OVERLAP_SCORES, OVERLAP_LABELS)
    assert ThresholdResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    with pytest.raises(BundleError):
        ThresholdResult.from_json({"threshold": 0.5})


# -- fusion ------------------------------------------------------------------------------------


def test_fuse_is_equation_four() -> None:
    fused = fuse([0.5, 0.3, 0.0], [0.9, 0.5, 1.0], 1.0)
    assert fused[0] == pytest.approx(0.9)  # logit(0.5) = 0, so s~ = g when w = 1
    assert fused[1] == pytest.approx(0.3)  # logit(0.5) = 0 for the gate
    # 0 and 1 are clipped to 1e-6 and 1 - 1e-6, whose logits cancel: finite, exactly 0.5.
    assert fused[2] == pytest.approx(0.5)
    eps_logit = math.log(1e-6 / (1 - 1e-6))
    assert fuse([0.0], [0.5], 1.0)[0] == pytest.approx(_sigmoid(eps_logit))
    assert fuse([0.2], [0.9], 0.0)[0] == pytest.approx(0.2)
    with pytest.raises(InputError, match="aligned"):
        fuse([0.1, 0.2], [0.5], 1.0)


def test_fusion_picks_the_smallest_weight_at_which_the_gate_separates() -> None:
    # Expert scores overlap (normals 0.4..0.7, anomalies 0.5..0.8); the gate separates them
    # (0.1 vs 0.9). Fused logits separate when 2 * w * logit(0.9) > logit(0.7) - logit(0.5),
    # i.e. w > 0.193, so 0.25 is the smallest grid weight reaching F1 = 1.
    normals = np.linspace(0.4, 0.7, 20)
    anomalies = np.linspace(0.5, 0.8, 10)
    expert = np.concatenate([normals, anomalies])
    gate = np.array([0.1] * 20 + [0.9] * 10)
    labels = np.array([False] * 20 + [True] * 10)
    result = calibrate_fusion(expert, gate, labels)
    assert result.weight == 0.25
    assert result.threshold.f1 == 1.0
    assert [w for w, _, _ in result.searched] == list(DEFAULT_FUSION_WEIGHTS)
    assert result.searched[0][1] < 1.0  # the expert alone does not separate them
    restored = FusionResult.from_json(json.loads(json.dumps(result.to_json())))
    assert restored == result


def test_uninformative_gate_keeps_weight_zero() -> None:
    gate = [0.5] * len(OVERLAP_SCORES)
    result = calibrate_fusion(OVERLAP_SCORES, gate, OVERLAP_LABELS)
    assert result.weight == 0.0
    assert result.threshold.threshold == pytest.approx(0.2)


def test_fusion_on_a_degenerate_set_uses_the_smallest_weight_and_fallback() -> None:
    result = calibrate_fusion([0.1, 0.2], [0.9, 0.8], [0, 0], weights=[1.0, 0.5])
    assert result.weight == 0.5
    assert result.threshold.threshold == FALLBACK_THRESHOLD
    with pytest.raises(ConfigError, match="weights"):
        calibrate_fusion([0.1], [0.9], [1], weights=[])


# -- calibrated scores -------------------------------------------------------------------------


def test_calibrated_score_maps_the_threshold_to_one_half() -> None:
    assert to_calibrated_score(0.2, 0.2) == 0.5
    assert to_calibrated_score(0.1, 0.2) == pytest.approx(0.25)
    assert to_calibrated_score(0.6, 0.2) == pytest.approx(0.75)
    assert to_calibrated_score(1.0, 0.2) == 1.0
    assert to_calibrated_score(0.0, 0.2) == 0.0
    assert isinstance(to_calibrated_score(0.3, 0.2), float)
    mapped = to_calibrated_score(np.array([0.0, 0.1, 0.2, 1.0]), 0.2)
    assert isinstance(mapped, np.ndarray)
    assert mapped.tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])


def test_calibrated_score_edge_thresholds() -> None:
    assert to_calibrated_score(0.0, 0.0) == 0.5
    assert to_calibrated_score(1.0, 0.0) == 1.0
    assert to_calibrated_score(0.99, 1.0) < 0.5
    assert to_calibrated_score(1.0, 1.0) == 0.5
    with pytest.raises(InputError):
        to_calibrated_score(0.5, float("nan"))


@pytest.mark.parametrize("threshold", [0.0, 1e-9, 0.137, 0.5, 0.93, 1 - 1e-12, 1.0])
def test_calibrated_score_is_monotone_and_keeps_every_decision(threshold: float) -> None:
    rng = np.random.default_rng(0)
    raw = np.sort(np.concatenate([rng.random(500), [0.0, 1.0, threshold]]))
    raw = np.concatenate([raw, [np.nextafter(threshold, 0.0), np.nextafter(threshold, 1.0)]])
    raw = np.sort(np.clip(raw, 0.0, 1.0))
    mapped = to_calibrated_score(raw, threshold)
    assert np.all(np.diff(mapped) >= 0)
    assert np.array_equal(mapped >= 0.5, raw >= threshold)
