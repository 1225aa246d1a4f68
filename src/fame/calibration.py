"""Decision-threshold calibration and gate fusion (paper Section III-E).

Every mixed expert turns its continuous anomaly score into a decision with a threshold chosen
on the held-out 20% K-shot calibration subset: the threshold maximising F1 over 1,000 score
percentiles (or over all unique scores when there are fewer than 1,000), subject to a recall of
at least 0.90. For UNIVERSAL_NORMAL the expert score is first fused with the gate output
(Eq. 4), and the fusion weight and threshold are chosen together by grid search.

:func:`to_calibrated_score` then maps any raw score onto ``[0, 1]`` so that the calibrated
threshold lands on 0.5, letting every inference path report a score whose decision point is 0.5.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fame.errors import BundleError, ConfigError, InputError

logger = logging.getLogger(__name__)

#: Recall floor of the threshold search (paper Section III-E: "subject to recall >= 0.90").
DEFAULT_MIN_RECALL = 0.90

#: Number of score percentiles searched (paper Section III-E: "1,000 score percentiles").
DEFAULT_N_CANDIDATES = 1000

#: Threshold used when the calibration set cannot calibrate (empty, or one class missing): the
#: decision point of a sigmoid output, the same value the paper fixes for the gate (III-C1).
FALLBACK_THRESHOLD = 0.5

# How calibrate_threshold picks among thresholds that tie on F1 (the paper does not say).
TieBreak = Literal["middle", "highest"]

#: Fusion weights ``w`` searched for Eq. 4. The paper grid-searches ``w`` without listing the
#: grid; 0 (expert alone) to 2 (gate twice as loud as the expert) in steps of 0.25.
DEFAULT_FUSION_WEIGHTS: tuple[float, ...] = tuple(step * 0.25 for step in range(9))

#: Scores are clipped to ``[LOGIT_EPSILON, 1 - LOGIT_EPSILON]`` before the logit of Eq. 4, so
#: that saturated probabilities of exactly 0 or 1 stay finite.
LOGIT_EPSILON = 1e-6

#: Slack when comparing a recall with the floor, against floating-point noise.
_RECALL_TOLERANCE = 1e-12


@dataclass(frozen=True)
class ThresholdResult:
    """A calibrated decision threshold and its quality on the calibration set.

    Attributes:
        threshold: Predict anomalous when ``score >= threshold``.
        precision: Precision at the threshold on the calibration set (0 when undefined).
        recall: Recall at the threshold on the calibration set (0 when undefined).
        f1: F1 at the threshold on the calibration set (0 when undefined).
        n: Number of calibration lines.
        n_anomalous: Number of anomalous calibration lines.
        reason: How the threshold was chosen, in words.
    """

    threshold: float
    precision: float
    recall: float
    f1: float
    n: int
    n_anomalous: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        """Serialise as a plain JSON-compatible dictionary.

        Returns:
            The dataclass fields by name.
        """
        return {
            "threshold": self.threshold,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "n": self.n,
            "n_anomalous": self.n_anomalous,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ThresholdResult:
        """Rebuild a result from :meth:`to_json` output.

        Args:
            data: The dictionary written by :meth:`to_json`.

        Returns:
            The restored result.

        Raises:
            BundleError: If a field is missing or has the wrong type.
        """
        try:
            return cls(
                threshold=float(data["threshold"]),
                precision=float(data["precision"]),
                recall=float(data["recall"]),
                f1=float(data["f1"]),
                n=int(data["n"]),
                n_anomalous=int(data["n_anomalous"]),
                reason=str(data["reason"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"threshold result is malformed ({type(exc).__name__}: {exc}); expected the "
                "fields written by ThresholdResult.to_json; rebuild the bundle"
            ) from exc


@dataclass(frozen=True)
class FusionResult:
    """The chosen fusion weight ``w`` of Eq. 4 and the threshold calibrated with it.

    Attributes:
        weight: The gate weight ``w``.
        threshold: The threshold calibrated on the fused scores with this weight.
        searched: ``(weight, F1, recall)`` for every weight tried, ascending weight.
    """

    weight: float
    threshold: ThresholdResult
    searched: tuple[tuple[float, float, float], ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """Serialise as a plain JSON-compatible dictionary.

        Returns:
            ``{"weight", "threshold", "searched"}``.
        """
        return {
            "weight": self.weight,
            "threshold": self.threshold.to_json(),
            "searched": [list(row) for row in self.searched],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FusionResult:
        """Rebuild a result from :meth:`to_json` output.

        Args:
            data: The dictionary written by :meth:`to_json`.

        Returns:
            The restored result.

        Raises:
            BundleError: If a field is missing or has the wrong type.
        """
        try:
            searched = tuple(
                (float(w), float(f1), float(recall)) for w, f1, recall in data.get("searched", [])
            )
            return cls(
                weight=float(data["weight"]),
                threshold=ThresholdResult.from_json(data["threshold"]),
                searched=searched,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"fusion result is malformed ({type(exc).__name__}: {exc}); expected the "
                "fields written by FusionResult.to_json; rebuild the bundle"
            ) from exc


def _as_scores(values: ArrayLike, what: str) -> NDArray[np.float64]:
    """Convert scores to a finite 1-D float array.

    Args:
        values: The scores.
        what: Their name, for error messages.

    Returns:
        The float64 array.

    Raises:
        InputError: If the values are not a 1-D sequence of finite numbers.
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be numbers, got {exc}; pass a 1-D float array") from exc
    if array.ndim != 1:
        raise InputError(f"{what} must be 1-D, got shape {array.shape}; flatten them first")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{what} contain NaN or infinite values; expected finite scores")
    return array


def _as_labels(values: ArrayLike, n: int) -> NDArray[np.bool_]:
    """Convert labels to a 1-D boolean array aligned with ``n`` scores.

    Args:
        values: Labels: True/1 anomalous, False/0 normal.
        n: Number of scores.

    Returns:
        The boolean array.

    Raises:
        InputError: On a length mismatch or a value other than 0/1/True/False.
    """
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != n:
        raise InputError(
            f"labels must be 1-D with one entry per score ({n}), got shape {array.shape}"
        )
    if array.size and not np.all(np.isin(array, (0, 1))):
        raise InputError("labels must be True/False or 1/0 (1 = anomalous); found other values")
    return array.astype(bool)


def _metrics_at(
    thresholds: NDArray[np.float64],
    positives: NDArray[np.float64],
    negatives: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Precision, recall and F1 of ``score >= t`` for every threshold ``t``.

    Args:
        thresholds: Candidate thresholds.
        positives: Sorted scores of the anomalous lines.
        negatives: Sorted scores of the normal lines.

    Returns:
        Arrays of precision, recall and F1 (0 where undefined).
    """
    tp = (positives.size - np.searchsorted(positives, thresholds, side="left")).astype(float)
    fp = (negatives.size - np.searchsorted(negatives, thresholds, side="left")).astype(float)
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = tp / positives.size if positives.size else np.zeros_like(tp)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return precision, recall, f1


def calibrate_threshold(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    min_recall: float = DEFAULT_MIN_RECALL,
    n_candidates: int = DEFAULT_N_CANDIDATES,
    tie_break: TieBreak = "highest",
) -> ThresholdResult:
    """Choose the decision threshold maximising F1 subject to a recall floor (III-E).

    Candidates are ``n_candidates`` evenly spaced score percentiles (``np.percentile`` at
    ``linspace(0, 100, n_candidates)``), or all unique scores when there are fewer than
    ``n_candidates`` of them. A line is predicted anomalous when ``score >= threshold``. Among
    candidates reaching ``min_recall`` the highest F1 wins; ties go to the highest threshold
    (fewer false alarms), or with ``tie_break="middle"`` to the middle of the band the tied
    thresholds span (the widest margin to both classes) where that keeps the same F1. If none
    reaches the floor, the highest recall wins (then F1, then the higher threshold) and the
    reason says so.

    A calibration set that is empty or lacks one class cannot calibrate: the result then uses
    :data:`FALLBACK_THRESHOLD` (0.5), states why in ``reason`` and logs a WARNING.

    Args:
        scores: Anomaly scores of the calibration lines.
        labels: Their labels (True/1 anomalous).
        min_recall: Recall floor in ``[0, 1]``.
        n_candidates: Number of percentiles searched (at least 2).
        tie_break: ``"highest"`` tied candidate (the default: fewest alarms on the
            calibration set), or the ``"middle"`` of the band of equally good thresholds.

    Returns:
        The chosen threshold with precision, recall and F1 on the calibration set.

    Raises:
        ConfigError: If ``min_recall`` or ``n_candidates`` is out of range.
        InputError: If scores and labels are not aligned or not valid.
    """
    if not 0.0 <= min_recall <= 1.0:
        raise ConfigError(
            f"min_recall must be in [0, 1], got {min_recall!r}; the paper uses {DEFAULT_MIN_RECALL}"
        )
    if n_candidates < 2:
        raise ConfigError(
            f"n_candidates must be at least 2, got {n_candidates!r}; the paper uses "
            f"{DEFAULT_N_CANDIDATES}"
        )
    values = _as_scores(scores, "scores")
    truth = _as_labels(labels, values.size)
    positives = np.sort(values[truth])
    negatives = np.sort(values[~truth])
    n, n_pos = int(values.size), int(positives.size)

    if n == 0 or n_pos == 0 or negatives.size == 0:
        problem = (
            "the calibration set is empty"
            if n == 0
            else "the calibration set has no anomalous line"
            if n_pos == 0
            else "the calibration set has no normal line"
        )
        precision, recall, f1 = _metrics_at(np.array([FALLBACK_THRESHOLD]), positives, negatives)
        reason = (
            f"{problem} ({n} lines, {n_pos} anomalous), so no threshold can be calibrated; "
            f"fell back to {FALLBACK_THRESHOLD} (the sigmoid decision point); label more lines "
            "of this domain or raise K to calibrate"
        )
        logger.warning("threshold calibration: %s", reason)
        return ThresholdResult(
            threshold=FALLBACK_THRESHOLD,
            precision=float(precision[0]),
            recall=float(recall[0]),
            f1=float(f1[0]),
            n=n,
            n_anomalous=n_pos,
            reason=reason,
        )

    unique = np.unique(values)
    if unique.size < n_candidates:
        candidates, source = unique, f"all {unique.size} unique scores"
    else:
        points = np.linspace(0.0, 100.0, n_candidates)
        candidates = np.unique(np.percentile(values, points))
        source = f"{n_candidates} score percentiles"
    precision, recall, f1 = _metrics_at(candidates, positives, negatives)
    feasible = recall >= min_recall - _RECALL_TOLERANCE
    if np.any(feasible):
        best_f1 = f1[feasible].max()
        tied = np.flatnonzero(feasible & (f1 == best_f1))
        index = int(tied[-1])
        how = f"maximises F1 subject to recall >= {min_recall:.2f}"
        margin = (
            _widest_margin(values, candidates[tied], positives, negatives, best_f1)
            if tie_break == "middle"
            else None
        )
        if margin is not None and margin[2] >= min_recall - _RECALL_TOLERANCE:
            threshold, p, r, f = margin
            result = ThresholdResult(
                threshold=threshold,
                precision=p,
                recall=r,
                f1=f,
                n=n,
                n_anomalous=n_pos,
                reason=(
                    f"threshold {threshold:.6g} {how} (precision {p:.3f}, recall {r:.3f}, F1 "
                    f"{f:.3f}) over {source} of {n} calibration lines ({n_pos} anomalous); "
                    "middle of the band of equally good thresholds"
                ),
            )
            logger.debug("threshold calibration: %s", result.reason)
            return result
    else:
        # lexsort sorts by the last key first: recall, then F1, then threshold, all ascending.
        index = int(np.lexsort((candidates, f1, recall))[-1])
        how = f"has the highest recall; no candidate reaches the recall floor {min_recall:.2f}"
    result = ThresholdResult(
        threshold=float(candidates[index]),
        precision=float(precision[index]),
        recall=float(recall[index]),
        f1=float(f1[index]),
        n=n,
        n_anomalous=n_pos,
        reason=(
            f"threshold {float(candidates[index]):.6g} {how} (precision "
            f"{float(precision[index]):.3f}, recall {float(recall[index]):.3f}, F1 "
            f"{float(f1[index]):.3f}) over {source} of {n} calibration lines ({n_pos} anomalous)"
        ),
    )
    logger.debug("threshold calibration: %s", result.reason)
    return result


def _widest_margin(
    values: NDArray[np.float64],
    tied: NDArray[np.float64],
    positives: NDArray[np.float64],
    negatives: NDArray[np.float64],
    best_f1: float,
) -> tuple[float, float, float, float] | None:
    """The middle of the band of thresholds that all reach the best F1, if it keeps it.

    Calibration sets are small (20% of at most K lines per EventID) and often separable, so
    many thresholds tie. The paper does not say which to take; the highest one puts the
    boundary on the weakest calibration anomaly and misses every test anomaly scored a little
    lower. The band runs from the highest score below the lowest tied candidate to the
    highest tied candidate; its middle leaves the widest margin to both classes.
    """
    below = values[values < tied.min()]
    low = float(below.max()) if below.size else 0.0
    threshold = (low + float(tied.max())) / 2.0
    if threshold <= low:
        return None
    precision, recall, f1 = _metrics_at(np.array([threshold]), positives, negatives)
    if f1[0] < best_f1 - 1e-12:
        return None
    return threshold, float(precision[0]), float(recall[0]), float(f1[0])


def _logit(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Logit of probabilities clipped to ``[LOGIT_EPSILON, 1 - LOGIT_EPSILON]``.

    Args:
        values: Probabilities.

    Returns:
        Their log-odds.
    """
    clipped = np.clip(values, LOGIT_EPSILON, 1.0 - LOGIT_EPSILON)
    return np.asarray(np.log(clipped) - np.log1p(-clipped), dtype=np.float64)


def fuse(expert_scores: ArrayLike, gate_scores: ArrayLike, weight: float) -> NDArray[np.float64]:
    """Fuse the UNIVERSAL_NORMAL expert score with the gate output (paper Eq. 4).

    ``s~_u = sigmoid(logit(s_u) + w * logit(g))``, with both scores clipped to
    ``[LOGIT_EPSILON, 1 - LOGIT_EPSILON]`` before the logit.

    Args:
        expert_scores: UNIVERSAL_NORMAL expert scores ``s_u`` in ``[0, 1]``.
        gate_scores: Gate outputs ``g`` in ``[0, 1]``, aligned with ``expert_scores``.
        weight: The gate weight ``w``.

    Returns:
        The fused scores.

    Raises:
        InputError: If the inputs are not aligned 1-D finite arrays or ``weight`` is not finite.
    """
    expert = _as_scores(expert_scores, "expert_scores")
    gate = _as_scores(gate_scores, "gate_scores")
    if expert.shape != gate.shape:
        raise InputError(
            f"expert_scores and gate_scores must be aligned, got {expert.size} and {gate.size} "
            "values; score the same lines with both models"
        )
    if not math.isfinite(weight):
        raise InputError(f"fusion weight must be finite, got {weight!r}")
    fused_logit = _logit(expert) + weight * _logit(gate)
    return np.asarray(1.0 / (1.0 + np.exp(-fused_logit)), dtype=np.float64)


def calibrate_fusion(
    expert_scores: ArrayLike,
    gate_scores: ArrayLike,
    labels: ArrayLike,
    *,
    weights: Sequence[float] = DEFAULT_FUSION_WEIGHTS,
    min_recall: float = DEFAULT_MIN_RECALL,
    tie_break: TieBreak = "highest",
) -> FusionResult:
    """Grid-search the fusion weight and threshold of Eq. 4 on the calibration set (III-E).

    For every weight the fused scores are calibrated with :func:`calibrate_threshold`; the
    weight whose threshold reaches the recall floor with the highest F1 wins, ties going to
    the smaller weight (the expert alone is preferred unless the gate adds something). When no
    weight reaches the floor, the highest recall (then F1) wins. A calibration set lacking a
    class selects the smallest weight with the fallback threshold.

    Args:
        expert_scores: UNIVERSAL_NORMAL expert scores of the calibration lines.
        gate_scores: Gate outputs of the same lines.
        labels: Their labels (True/1 anomalous).
        weights: Candidate weights ``w`` (finite; duplicates ignored).
        min_recall: Recall floor in ``[0, 1]``.
        tie_break: How :func:`calibrate_threshold` breaks threshold ties.

    Returns:
        The chosen weight and its threshold result.

    Raises:
        ConfigError: If ``weights`` is empty or not finite, or ``min_recall`` is out of range.
        InputError: If the inputs are not aligned or not valid.
    """
    grid = sorted({float(w) for w in weights})
    if not grid or not all(math.isfinite(w) for w in grid):
        raise ConfigError(
            f"weights must be a non-empty list of finite numbers, got {list(weights)!r}; the "
            f"default is {list(DEFAULT_FUSION_WEIGHTS)}"
        )
    expert = _as_scores(expert_scores, "expert_scores")
    truth = _as_labels(labels, expert.size)
    degenerate = truth.size == 0 or bool(np.all(truth)) or not bool(np.any(truth))
    best: tuple[float, ThresholdResult] | None = None
    best_key: tuple[bool, float, float] | None = None
    searched: list[tuple[float, float, float]] = []
    for weight in grid:
        result = calibrate_threshold(
            fuse(expert, gate_scores, weight), truth, min_recall=min_recall, tie_break=tie_break
        )
        searched.append((weight, result.f1, result.recall))
        if degenerate:
            best = best or (weight, result)
            continue
        feasible = result.recall >= min_recall - _RECALL_TOLERANCE
        key = (
            (feasible, result.f1, result.recall) if feasible else (False, result.recall, result.f1)
        )
        if best_key is None or key > best_key:
            best, best_key = (weight, result), key
    if best is None:  # unreachable: the grid is non-empty
        raise ConfigError("weights must not be empty")
    weight, result = best
    logger.info(
        "fusion calibration: weight %s, threshold %.6g, F1 %.3f, recall %.3f",
        weight,
        result.threshold,
        result.f1,
        result.recall,
    )
    return FusionResult(weight=weight, threshold=result, searched=tuple(searched))


@overload
def to_calibrated_score(raw: float, threshold: float) -> float: ...


@overload
def to_calibrated_score(raw: NDArray[Any], threshold: float) -> NDArray[np.float64]: ...


def to_calibrated_score(raw: float | NDArray[Any], threshold: float) -> float | NDArray[np.float64]:
    """Map raw scores in ``[0, 1]`` monotonically so that ``threshold`` lands on 0.5.

    Piecewise linear: ``0.5 * raw / threshold`` below the threshold and
    ``0.5 + 0.5 * (raw - threshold) / (1 - threshold)`` at or above it. Hence
    ``calibrated >= 0.5`` exactly when ``raw >= threshold``. A threshold of 0 maps every score
    into ``[0.5, 1]``; a threshold of 1 maps ``[0, 1]`` onto ``[0, 0.5]`` with only 1 reaching
    0.5. Raw scores and the threshold are clipped to ``[0, 1]`` first.

    Args:
        raw: A raw score or an array of them.
        threshold: The calibrated threshold of the raw score.

    Returns:
        The calibrated score(s), a float for a float input.

    Raises:
        InputError: If ``threshold`` is not finite.
    """
    if not math.isfinite(threshold):
        raise InputError(f"threshold must be a finite number, got {threshold!r}")
    t = min(max(float(threshold), 0.0), 1.0)
    values = np.clip(np.asarray(raw, dtype=np.float64), 0.0, 1.0)
    below = values < t
    if t >= 1.0:
        mapped = 0.5 * values
    elif t <= 0.0:
        mapped = 0.5 + 0.5 * values
    else:
        low = 0.5 * values / t
        high = 0.5 + 0.5 * (values - t) / (1.0 - t)
        mapped = np.where(below, low, high)
    # Rounding must never lift a below-threshold score onto the decision point.
    mapped = np.where(below, np.minimum(mapped, np.nextafter(0.5, 0.0)), mapped)
    if np.ndim(raw) == 0:
        return float(mapped)
    return np.asarray(mapped, dtype=np.float64)
