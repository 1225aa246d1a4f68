"""K-shot sampling of labelled lines per EventID (paper Section III-A).

The offline region is a chronologically ordered list of log lines, each with a parser-derived
EventID, a model-visible text and an optional label. FAME labels at most ``K`` lines per
EventID: it deterministically takes the ``K`` most recent *labelled* lines of every EventID,
splits them chronologically 80/20 into a training subset (Phase 2 fine-tuning, III-D) and a
calibration subset (threshold calibration, III-E), and derives per EventID the two binary
signals HasNormalSignal / HasAnomalySignal plus at most one representative normal and one
representative anomalous line. These statistics are the only input of the partition proposer
(III-B1) and of certification (III-B2).

The PU-normal pool ``I_normal`` (paper Section III notation) contains every offline line that
is *not* labelled anomalous in the K-shot sample; labels outside the sample are treated as
unknown, exactly as under a real K-shot annotation budget.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fame.errors import BundleError, ConfigError, InputError, TrainingDataError

logger = logging.getLogger(__name__)

#: Share of each EventID's K-shot sample held out for threshold calibration: the paper splits
#: every EventID's sample chronologically 80/20 into train / calibration (Section III-A).
DEFAULT_CALIBRATION_FRACTION = 0.2

#: Added before ``floor`` so that products such as ``15 * 0.2`` (= 3.0000000000000004) or
#: ``n * 0.2`` landing a hair below an integer still round to the intended whole number.
_FLOOR_TOLERANCE = 1e-9

#: Format tag written by :meth:`KShotSample.to_json` and checked by :meth:`KShotSample.from_json`.
KSHOT_FORMAT = "fame-kshot/1"


@dataclass(frozen=True)
class LabeledLine:
    """One labelled offline line chosen by K-shot sampling.

    Attributes:
        index: 0-based position of the line in the offline region.
        event_id: The line's parser EventID.
        text: The model-visible text of the line (label token already stripped).
        label: True when the line is anomalous, False when it is normal.
    """

    index: int
    event_id: str
    text: str
    label: bool


@dataclass
class EventStats:
    """Per-EventID statistics derived from the offline region and its K-shot sample.

    Attributes:
        event_id: The parser EventID.
        template: The EventID's template text ("" when the parser gave none).
        count: Number of offline lines with this EventID.
        n_labeled: Number of this EventID's lines in the K-shot sample (at most K).
        has_normal: HasNormalSignal: the K-shot sample holds at least one normal line.
        has_anomaly: HasAnomalySignal: the K-shot sample holds at least one anomalous line.
        normal_example: The most recent normal line of the K-shot sample, if any.
        anomaly_example: The most recent anomalous line of the K-shot sample, if any.
    """

    event_id: str
    template: str
    count: int
    n_labeled: int
    has_normal: bool
    has_anomaly: bool
    normal_example: str | None = None
    anomaly_example: str | None = None


@dataclass
class KShotSample:
    """The result of K-shot sampling over one offline region.

    Attributes:
        k: The per-EventID labelling budget K.
        train: Labelled lines for Phase 2 training (first 80% of each EventID's sample),
            in offline order.
        calibration: Labelled lines held out for threshold calibration (last 20% of each
            EventID's sample), in offline order.
        events: Statistics of every EventID seen offline, keyed by EventID, in order of
            first appearance.
        pu_normal: Offline indices not labelled anomalous in the K-shot sample (the PU-normal
            pool ``I_normal``), ascending.
    """

    k: int
    train: list[LabeledLine]
    calibration: list[LabeledLine]
    events: dict[str, EventStats]
    pu_normal: list[int]

    @property
    def labeled_count(self) -> int:
        """Number of labelled lines in the sample (train plus calibration)."""
        return len(self.train) + len(self.calibration)

    @property
    def n_offline(self) -> int:
        """Number of lines in the offline region the sample was drawn from."""
        return sum(stats.count for stats in self.events.values())

    def lines(self) -> list[LabeledLine]:
        """Return every labelled line of the sample (train and calibration) in offline order.

        Returns:
            The union of :attr:`train` and :attr:`calibration`, sorted by offline index.
        """
        return sorted([*self.train, *self.calibration], key=lambda line: line.index)

    def to_json(self, *, include_lines: bool = True) -> dict[str, Any]:
        """Serialise the sample as a plain JSON-compatible dictionary.

        The PU-normal pool is stored as half-open ``[start, stop)`` index ranges, which keeps it
        compact: it is the whole offline region minus a few thousand anomalous lines.

        Args:
            include_lines: Also store the labelled train / calibration lines (their text
                included). Without them :meth:`from_json` restores empty line lists.

        Returns:
            A dictionary that :func:`json.dumps` accepts and :meth:`from_json` reads back.
        """
        data: dict[str, Any] = {
            "format": KSHOT_FORMAT,
            "k": self.k,
            "labeled_count": self.labeled_count,
            "events": [
                {
                    "event_id": s.event_id,
                    "template": s.template,
                    "count": s.count,
                    "n_labeled": s.n_labeled,
                    "has_normal": s.has_normal,
                    "has_anomaly": s.has_anomaly,
                    "normal_example": s.normal_example,
                    "anomaly_example": s.anomaly_example,
                }
                for s in self.events.values()
            ],
            "pu_normal_ranges": _to_ranges(self.pu_normal),
        }
        if include_lines:
            data["train"] = [_line_to_json(line) for line in self.train]
            data["calibration"] = [_line_to_json(line) for line in self.calibration]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KShotSample:
        """Rebuild a sample from :meth:`to_json` output.

        Args:
            data: The dictionary written by :meth:`to_json` (after a JSON round trip).

        Returns:
            The restored sample.

        Raises:
            BundleError: If the structure is not a K-shot sample written by this version.
        """
        try:
            if data.get("format") != KSHOT_FORMAT:
                raise BundleError(
                    f"K-shot sample has format {data.get('format')!r}, expected "
                    f"{KSHOT_FORMAT!r}; rebuild the bundle with this version of fame"
                )
            events: dict[str, EventStats] = {}
            for item in data["events"]:
                stats = EventStats(
                    event_id=str(item["event_id"]),
                    template=str(item["template"]),
                    count=int(item["count"]),
                    n_labeled=int(item["n_labeled"]),
                    has_normal=bool(item["has_normal"]),
                    has_anomaly=bool(item["has_anomaly"]),
                    normal_example=_optional_str(item.get("normal_example")),
                    anomaly_example=_optional_str(item.get("anomaly_example")),
                )
                events[stats.event_id] = stats
            pu_normal = [
                i for start, stop in data["pu_normal_ranges"] for i in range(int(start), int(stop))
            ]
            train = [_line_from_json(item) for item in data.get("train", [])]
            calibration = [_line_from_json(item) for item in data.get("calibration", [])]
            return cls(
                k=int(data["k"]),
                train=train,
                calibration=calibration,
                events=events,
                pu_normal=pu_normal,
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(
                f"K-shot sample JSON is malformed ({type(exc).__name__}: {exc}); expected the "
                "structure written by KShotSample.to_json; rebuild the bundle"
            ) from exc


def sample_kshot(
    event_ids: Sequence[str],
    texts: Sequence[str],
    labels: Sequence[bool | None],
    templates: Mapping[str, str],
    k: int,
    *,
    calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION,
) -> KShotSample:
    """Draw the K-shot labelled sample of an offline region (paper Section III-A).

    For every EventID the ``k`` most recent lines *that carry a label* are taken (``None``
    marks an unlabelled line, which is never eligible). Each EventID's ``n`` selected lines are
    split chronologically: the last ``n_cal = floor(n * calibration_fraction)`` go to
    calibration and the rest to training. With the default fraction 0.2, EventIDs with fewer
    than 5 labelled lines therefore contribute no calibration lines.

    Args:
        event_ids: EventID of every offline line, in chronological order.
        texts: Model-visible text of every offline line (same length).
        labels: Label of every offline line: True anomalous, False normal, None unlabelled.
        templates: Template text per EventID; a missing EventID gets an empty template.
        k: Labelling budget per EventID (at least 1).
        calibration_fraction: Share of each EventID's sample held out for calibration, in
            ``[0, 1)``.

    Returns:
        The K-shot sample with per-EventID statistics and the PU-normal pool.

    Raises:
        ConfigError: If ``k < 1`` or ``calibration_fraction`` is outside ``[0, 1)``.
        InputError: If the three sequences differ in length.
        TrainingDataError: If the offline labels (or the K-shot sample) contain no anomalous
            or no normal line.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(
            f"k must be a whole number of at least 1 (labelled lines per EventID), got {k!r}; "
            "pass e.g. k=100"
        )
    if not 0.0 <= calibration_fraction < 1.0:
        raise ConfigError(
            f"calibration_fraction must be in [0, 1), got {calibration_fraction!r}; the paper "
            f"uses {DEFAULT_CALIBRATION_FRACTION}"
        )
    n = len(event_ids)
    if len(texts) != n or len(labels) != n:
        raise InputError(
            f"event_ids, texts and labels must have one entry per offline line, got lengths "
            f"{n}, {len(texts)} and {len(labels)}; pass aligned sequences"
        )

    n_anomalous = sum(1 for label in labels if label is True)
    n_normal = sum(1 for label in labels if label is False)
    _require_both_classes(n_anomalous, n_normal, where="the offline labels", hint_k=None)

    counts: dict[str, int] = {}
    for event_id in event_ids:
        counts[event_id] = counts.get(event_id, 0) + 1

    # Walk backwards so that the first k labelled lines met per EventID are its k most recent.
    chosen: dict[str, list[int]] = {event_id: [] for event_id in counts}
    for index in range(n - 1, -1, -1):
        if labels[index] is None:
            continue
        picked = chosen[event_ids[index]]
        if len(picked) < k:
            picked.append(index)

    missing_templates = [event_id for event_id in counts if event_id not in templates]
    if missing_templates:
        logger.warning(
            "%s EventIDs have no template (e.g. %s); using an empty template for them",
            len(missing_templates),
            missing_templates[0],
        )

    train: list[LabeledLine] = []
    calibration: list[LabeledLine] = []
    events: dict[str, EventStats] = {}
    anomalous_in_sample: set[int] = set()
    for event_id, count in counts.items():
        indices = sorted(chosen[event_id])
        lines = [
            LabeledLine(index=i, event_id=event_id, text=texts[i], label=bool(labels[i]))
            for i in indices
        ]
        n_cal = math.floor(len(lines) * calibration_fraction + _FLOOR_TOLERANCE)
        split = len(lines) - n_cal
        train.extend(lines[:split])
        calibration.extend(lines[split:])
        normals = [line for line in lines if not line.label]
        anomalies = [line for line in lines if line.label]
        anomalous_in_sample.update(line.index for line in anomalies)
        events[event_id] = EventStats(
            event_id=event_id,
            template=templates.get(event_id, ""),
            count=count,
            n_labeled=len(lines),
            has_normal=bool(normals),
            has_anomaly=bool(anomalies),
            normal_example=normals[-1].text if normals else None,
            anomaly_example=anomalies[-1].text if anomalies else None,
        )

    sample_anomalous = len(anomalous_in_sample)
    sample_normal = sum(stats.n_labeled for stats in events.values()) - sample_anomalous
    _require_both_classes(sample_anomalous, sample_normal, where="the K-shot sample", hint_k=k)

    train.sort(key=lambda line: line.index)
    calibration.sort(key=lambda line: line.index)
    pu_normal = [i for i in range(n) if i not in anomalous_in_sample]
    sample = KShotSample(
        k=k, train=train, calibration=calibration, events=events, pu_normal=pu_normal
    )
    logger.info(
        "K-shot sample (K=%s): %s labelled lines (%s anomalous) over %s EventIDs; "
        "%s train, %s calibration, PU-normal pool %s of %s lines",
        k,
        sample.labeled_count,
        sample_anomalous,
        len(events),
        len(train),
        len(calibration),
        len(pu_normal),
        n,
    )
    return sample


def _require_both_classes(
    n_anomalous: int, n_normal: int, *, where: str, hint_k: int | None
) -> None:
    """Raise TrainingDataError when one label class is absent.

    Args:
        n_anomalous: Number of anomalous labels found.
        n_normal: Number of normal labels found.
        where: What was counted, for the message.
        hint_k: The K used, when the sample (not the raw labels) was counted.

    Raises:
        TrainingDataError: If either count is zero.
    """
    for missing, count in (("anomalous", n_anomalous), ("normal", n_normal)):
        if count:
            continue
        if hint_k is None:
            fix = (
                f"label at least one {missing} line, and check the label column or the log "
                "format option (a wrong format can make every label read the same)"
            )
        else:
            fix = (
                f"the {missing} labels lie outside the {hint_k} most recent labelled lines of "
                f"every EventID; increase k or label a more recent {missing} line"
            )
        raise TrainingDataError(
            f"{where} contain no {missing} line ({n_anomalous} anomalous, {n_normal} normal); "
            f"FAME needs both classes to train; {fix}"
        )


def _to_ranges(indices: Sequence[int]) -> list[list[int]]:
    """Compress ascending integers into half-open ``[start, stop)`` ranges.

    Args:
        indices: Ascending, distinct integers.

    Returns:
        The list of ``[start, stop)`` pairs covering exactly ``indices``.
    """
    ranges: list[list[int]] = []
    for i in indices:
        if ranges and ranges[-1][1] == i:
            ranges[-1][1] = i + 1
        else:
            ranges.append([i, i + 1])
    return ranges


def _line_to_json(line: LabeledLine) -> list[Any]:
    """Encode a labelled line compactly as ``[index, event_id, label, text]``.

    Args:
        line: The line to encode.

    Returns:
        The JSON-compatible list.
    """
    return [line.index, line.event_id, line.label, line.text]


def _line_from_json(item: Sequence[Any]) -> LabeledLine:
    """Decode a labelled line written by :func:`_line_to_json`.

    Args:
        item: The ``[index, event_id, label, text]`` list.

    Returns:
        The labelled line.

    Raises:
        ValueError: If the item does not have four fields.
    """
    if len(item) != 4:
        raise ValueError(f"a labelled line needs 4 fields, got {len(item)}")
    index, event_id, label, text = item
    return LabeledLine(index=int(index), event_id=str(event_id), text=str(text), label=bool(label))


def _optional_str(value: Any) -> str | None:
    """Return ``value`` as a string, keeping None.

    Args:
        value: A JSON value.

    Returns:
        None or the string form of ``value``.
    """
    return None if value is None else str(value)
